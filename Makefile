# Two commands set everything up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train test bench mutation clean

install: $(STAMP)

$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23" wheel setuptools
	$(PY) -m pip install --quiet -e ".[test,ray]"
	$(PY) -m pip install --quiet --no-deps "gymnasium-robotics==1.2.2" "safety-gymnasium==1.0.0"
	$(PY) -c "import numpy; assert numpy.__version__ == '1.26.4', numpy.__version__"
	touch $(STAMP)

RUN := runs/point-button-meta-cpo-seed0

train: $(STAMP)
	$(PY) cli.py train point-button $(if $(wildcard $(RUN)/checkpoint.npz),--resume --finished-ok,)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) cli.py bench

# Mutation testing (not part of `make test` or CI; ~2 h on 2 cores): mutmut 3 over the
# modules and the fast test subset in setup.cfg [mutmut], each mutant run only against
# the tests that reach its function. MUTANTS narrows it, e.g.
# `make mutation MUTANTS='metacpo_ref.model.advantages*'`; results stay in mutants/
# (`$(VENV)/bin/mutmut results`, `$(VENV)/bin/mutmut show NAME`).
MUTMUT := mutmut==3.8.1
MUTANTS ?=

mutation: $(STAMP)
	$(PY) -m pip install --quiet "$(MUTMUT)"
	OPENBLAS_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children 2 $(MUTANTS)
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) *.egg-info mutants
