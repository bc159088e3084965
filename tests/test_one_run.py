"""One run, one directory, no silent mixing (issue 32): a run directory's lock, resume
refusing another run's checkpoint or rows, bounds on every number, progress without a
terminal, one line for Ctrl-C and OS errors on stdout, an atomic test --out."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from metacpo_ref import training as training_module
from metacpo_ref.config import Config
from metacpo_ref.training import (CheckpointError, RunBusy, load_checkpoint, prepare_run, read_metrics, run_lock,
                                  save_checkpoint, scan_metrics)

from tests.test_robust import SMALL, TINY, lines, one_line_error, run_copy, tiny_run  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]


# --- a run directory belongs to one process ----------------------------------------------------

def test_a_locked_run_directory_refuses_a_second_holder_naming_it_and_the_pid(tmp_path):
    out = tmp_path / "run"
    with run_lock(out):
        assert (out / ".lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunBusy, match=f"{out} is in use by another training process \\(pid {os.getpid()}\\)"):
            with run_lock(out):
                pass
        assert (out / ".lock").read_text() == f"{os.getpid()}\n"   # the holder keeps it
    assert not out.exists()   # created by the lock, nothing written: removed again


@pytest.mark.parametrize("exc", [KeyboardInterrupt, ValueError, SystemExit])
def test_the_lock_is_released_on_every_exit(tmp_path, exc):
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(exc):
        with run_lock(out):
            (out / "config.json").write_text("{}")
            raise exc()
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]   # no lock file left, nothing else removed
    with run_lock(out):
        pass


def hold_lock(out, then):
    """A child process that takes ``out``'s lock, prints ready, then runs ``then``."""
    code = textwrap.dedent(f"""
        import os, sys
        from metacpo_ref.training import run_lock
        with run_lock({str(out)!r}):
            print("ready", flush=True)
            {then}
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_dead_process_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    proc = hold_lock(out, "os._exit(9)")   # killed while holding it: no cleanup
    assert proc.wait() == 9
    assert (out / ".lock").read_text() == f"{proc.pid}\n"   # the stale lock file is there
    with run_lock(out):
        assert (out / ".lock").read_text() == f"{os.getpid()}\n"


def test_a_second_train_into_one_out_refuses_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = hold_lock(out, "sys.stdin.read()")
    try:
        res = CliRunner().invoke(cli.main, ["train", "point-circle", "--iterations", "1", *SMALL,
                                            "--out", str(out)])
        one_line_error(res, str(out), f"pid {proc.pid}", "in use by another training process")
        with pytest.raises(RunBusy, match=f"pid {proc.pid}"):
            training_module.train(Config(**TINY), out)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        proc.stdin.close()
        proc.wait()
    assert not out.exists()


# --- resume refuses another run's checkpoint, and rows that do not continue ------------------

@pytest.mark.parametrize("field, value", [("algo", "cpo"), ("cost_measure", "episode")])
def test_resume_refuses_a_checkpoint_of_another_run_than_config_json(run_copy, field, value):
    """A checkpoint of another algorithm or cost measure than config.json's: two runs in one
    directory; resume refuses (before: resumed as the checkpoint's with a warning)."""
    state = load_checkpoint(run_copy / "checkpoint.npz")
    other = dataclasses.replace(state.config, **{field: value})
    save_checkpoint(run_copy / "checkpoint.npz", dataclasses.replace(state, config=other))
    before = {p.name: p.read_bytes() for p in run_copy.iterdir()}
    with pytest.raises(CheckpointError, match=f"{run_copy} mixes two runs: checkpoint.npz is of {field} "
                                              f"'{value}', config.json of '{getattr(state.config, field)}'"):
        prepare_run(dataclasses.replace(other, iterations=2), run_copy, resume=True, warn=lambda m: None)
    res = CliRunner().invoke(cli.main, ["train", "point-circle", "--resume", "--iterations", "2",
                                        "--out", str(run_copy)])
    one_line_error(res, "mixes two runs")
    assert {p.name: p.read_bytes() for p in run_copy.iterdir()} == before   # nothing touched


def test_duplicated_and_out_of_order_rows_are_moved_to_bad(run_copy):
    state = load_checkpoint(run_copy / "checkpoint.npz")
    save_checkpoint(run_copy / "checkpoint.npz", dataclasses.replace(state, iteration=4))
    row = read_metrics(run_copy)[0]
    text = [json.dumps({**row, "iteration": i, "env_steps": 10 * (i + 1)}) for i in range(4)]
    dup, backwards = text[1], json.dumps({**row, "iteration": 3, "env_steps": 5})
    text = [text[0], text[1], dup, text[2], backwards, text[3]]   # lines 3 and 5 do not continue
    (run_copy / "metrics.jsonl").write_text("\n".join(text) + "\n")
    good, bad = scan_metrics(run_copy)
    assert [r["iteration"] for r in good] == [0, 1, 2, 3] and [n for n, _ in bad] == [3, 5]
    said = []
    prepare_run(dataclasses.replace(state.config, iterations=5), run_copy, resume=True, warn=said.append)
    assert [r["iteration"] for r in read_metrics(run_copy)] == [0, 1, 2, 3]
    assert (run_copy / "metrics.jsonl.bad").read_text() == dup + "\n" + backwards + "\n"
    assert len(said) == 1 and "duplicated or out-of-order" in said[0] and "line 3, 5" in said[0]
