# Two commands set everything up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train test bench clean

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
	$(PY) cli.py train point-button $(if $(wildcard $(RUN)/checkpoint.npz),--resume,)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) cli.py bench

clean:
	rm -rf $(VENV) *.egg-info
