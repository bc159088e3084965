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

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from metacpo_ref.run import evaluation
from metacpo_ref.run import training as training_module
from metacpo_ref.config import Config
from metacpo_ref.run.rundir import (CheckpointError, RunBusy, load_checkpoint, read_metrics, run_lock, save_checkpoint,
                                    scan_metrics)
from metacpo_ref.run.training import prepare_run

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
        from metacpo_ref.run.rundir import run_lock
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


# --- upper bounds for every number, checked before any work ------------------------------------

TOO_BIG = [("train", "--cost-limit", "1e160"), ("train", "--episodes", "1000000000"),
           ("train", "--tasks", "1000000000"), ("train", "--iterations", "1000000000"),
           ("train", "--local-steps", "1000000000"), ("train", "--workers", "1000000"),
           ("test", "--tasks", "1000000000"), ("test", "--episodes", "1000000000"),
           ("test", "--eval-episodes", "1000000000"), ("test", "--adapt-steps", "1000000000"),
           ("test", "--cost-limit", "1e308"), ("test", "--workers", "1000000"),
           ("rollout", "--tasks", "1000000000"), ("rollout", "--episodes", "1000000000"),
           ("plot", "--smooth", "1000000000")]
REQUIRED = {"train": ["point-circle"], "test": ["point-circle", "--checkpoint", "ckpt.npz"],
            "rollout": ["point-circle"], "plot": ["--out", "x.png"]}


@pytest.mark.parametrize("command, flag, value", TOO_BIG)
def test_numbers_above_their_bound_are_refused_while_parsing_and_the_bound_is_in_help(tmp_path, monkeypatch,
                                                                                       command, flag, value):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    [param] = [p for p in cli.main.commands[command].params if flag in p.opts]
    valid = param.type.valid
    assert valid.high is not None and not valid.contains(float(value))
    res = runner.invoke(cli.main, [command, *REQUIRED[command], flag, value])
    assert res.exit_code == 2 and f"Invalid value for '{flag}'" in res.output and valid.describe() in res.output
    assert list(tmp_path.iterdir()) == []   # nothing written
    helps = runner.invoke(cli.main, [command, "--help"]).output
    assert f"{flag} {param.type.get_metavar(param)}" in helps and f",{valid.high:g}]" in helps


def test_config_refuses_an_overflowing_cost_limit_and_takes_minus_zero_as_zero():
    with pytest.raises(ValueError, match=r"cost_limit must be a finite number in \[0, 1e\+06\], got 1e\+160"):
        Config(cost_limit=1e160)
    assert str(Config(cost_limit=-0.0).cost_limit) == "0.0"


def test_worker_count_is_capped_by_the_tasks_and_for_processes_the_cores():
    from metacpo_ref.envs.workers import worker_count

    assert worker_count(1000, 1, "process", cores=2) == (1, "1 task")
    assert worker_count(8, 5, "process", cores=2) == (2, "2 cores")
    assert worker_count(8, 5, "ray", cores=2) == (5, "5 tasks")
    assert worker_count(8, 2, "process", cores=2) == (2, "2 tasks and 2 cores")
    assert worker_count(2, 5, "process", cores=4) == (2, None)


def test_train_caps_workers_with_a_note_says_limit_0_and_prints_a_line_per_iteration(tmp_path, monkeypatch):
    """Under a redirect (CliRunner's stdout is not a terminal) every iteration prints a line;
    --workers 5 for one task runs one worker, with a note; --cost-limit -0 is limit 0."""
    made = []
    real = training_module.Workers
    monkeypatch.setattr(training_module, "Workers", lambda *a, **k: made.append(a[2]) or real(*a, **k))
    small = SMALL[:-2]   # without --workers 1
    res = CliRunner().invoke(cli.main, ["train", "point-circle", "--iterations", "2", *small, "--tasks", "1",
                                        "--workers", "5", "--cost-limit", "-0", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert made == [1] and "note: --workers 5 capped to 1 (1 task" in res.output
    progress = [line for line in lines(res.output) if line.startswith("it ")]
    assert [line.split()[1] for line in progress] == ["0", "1"], res.output
    assert all("(limit 0, discounted)" in line and line.endswith(" s") for line in progress)
    assert "limit -0" not in res.output and "cost limit 0 (" in res.output


def test_ctrl_c_while_setting_up_is_one_line_and_leaves_no_directory(tmp_path, monkeypatch):
    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(training_module, "initial_state", interrupted)
    out = tmp_path / "r"
    res = CliRunner().invoke(cli.main, ["train", "point-circle", *SMALL, "--out", str(out)])
    assert res.exit_code == 130 and "Traceback" not in res.output
    assert len(lines(res.output)) == 1 and lines(res.output)[0].startswith("interrupted;")
    assert not out.exists()   # created for the lock, nothing written: removed


def test_ctrl_c_while_worker_processes_start_is_the_parents_alone():
    """Ctrl-C to the whole process group while the pool's processes are still importing:
    before, each printed its KeyboardInterrupt traceback (~30-60 lines); now they start with
    SIGINT blocked and ignore it, and the parent alone is interrupted. The child sends the
    Ctrl-C itself once both pool processes (CPython 3.11 spawns one per submit) run Python
    with its own SIGINT handler, i.e. are importing (Linux /proc); a timer in the test (as
    before) could miss that window on a loaded machine, and the run then ended normally.
    The kernel gives a process's Ctrl-C to any thread not blocking it (OpenBLAS's, or the
    idle one here): its handler raised KeyboardInterrupt in the parent at once, which then
    killed the processes mid-import (CI once saw glfw's version probe, a grandchild, print
    a BrokenPipeError traceback); now the parent takes it only once both have answered."""
    code = textwrap.dedent("""
        import concurrent.futures as cf, os, signal, sys, threading, time, traceback
        from metacpo_ref.envs.workers import Workers
        submit = cf.ProcessPoolExecutor.submit

        def importing(pid):   # exec'd (not the fork before it), and Python's SIGINT handler (or ours) set
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"spawn_main" not in f.read():
                    return False
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            return (int(status["SigCgt"], 16) | int(status["SigIgn"], 16)) >> (signal.SIGINT - 1) & 1

        def submit_then_ctrl_c(self, *args, **kwargs):
            future = submit(self, *args, **kwargs)
            if len(self._processes) == 2:
                deadline = time.monotonic() + 60
                while not all(map(importing, self._processes)) and time.monotonic() < deadline:
                    time.sleep(0.001)
                print("ctrl-c", flush=True)
                os.killpg(0, signal.SIGINT)   # the whole group, as a terminal sends it
                time.sleep(0.5)
            return future

        cf.ProcessPoolExecutor.submit = submit_then_ctrl_c
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()   # takes a Ctrl-C
        try:
            with Workers("point-circle", None, 2):
                print("started", flush=True)
        except KeyboardInterrupt as e:
            early = "submit_then_ctrl_c" in [f.name for f in traceback.extract_tb(e.__traceback__)]
            print("interrupted" + " before the workers answered" * early, file=sys.stderr)
            sys.exit(130)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          start_new_session=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, "ctrl-c\n", "interrupted\n")


# --- test --out, OS errors on stdout, make train on a finished run, the Ray address ------------

QUICK_TEST = ["--tasks", "1", "--adapt-steps", "0", "--episodes", "1", "--eval-episodes", "1", "--workers", "1"]


def test_test_out_is_written_whole_or_not_at_all(tiny_run, tmp_path, monkeypatch):
    ckpt = str(tiny_run / "checkpoint.npz")
    out = tmp_path / "test.json"
    runner = CliRunner()
    res = runner.invoke(cli.main, ["test", "point-circle", "--checkpoint", ckpt, *QUICK_TEST, "--json",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text()) == json.loads(res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.json"]   # no temporary left

    def fails(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "meta_test", fails)
    again = tmp_path / "again.json"
    res = runner.invoke(cli.main, ["test", "point-circle", "--checkpoint", ckpt, *QUICK_TEST, "--out", str(again)])
    assert res.exit_code == 130 and lines(res.output) == ["interrupted; nothing written"]
    monkeypatch.undo()
    res = runner.invoke(cli.main, ["test", "point-circle", "--checkpoint", str(tmp_path / "none.npz"), *QUICK_TEST,
                                   "--out", str(again)])
    one_line_error(res, "no checkpoint")
    res = runner.invoke(cli.main, ["test", "point-circle", "--checkpoint", ckpt, *QUICK_TEST,
                                   "--out", str(tmp_path / "no" / "dir.json")])
    one_line_error(res, str(tmp_path / "no" / "dir.json.tmp"), "No such file or directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.json"]


@pytest.mark.parametrize("argv", [["rollout", "point-circle", "--tasks", "1"], ["gradcheck", "--json"]])
def test_a_full_stdout_is_one_line(argv):
    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, "cli.py", *argv], cwd=ROOT, stdout=full, stderr=subprocess.PIPE,
                             text=True, timeout=600)
    assert res.returncode == 1 and res.stderr == "Error: cannot write to standard output: No space left on device\n"


def test_make_train_on_a_finished_run_says_how_to_continue(run_copy):
    before = {p.name: p.read_bytes() for p in run_copy.iterdir()}
    res = CliRunner().invoke(cli.main, ["train", "point-circle", "--resume", "--finished-ok", "--out", str(run_copy)])
    assert res.exit_code == 0, res.output
    assert lines(res.output) == [f"{run_copy} is finished (1 iterations); continue it with `cli.py train point-circle "
                                 f"--resume --iterations N --out {run_copy}` (N > 1), or meta-test it with "
                                 f"`cli.py test point-circle --checkpoint {run_copy}/checkpoint.npz`"]
    assert {p.name: p.read_bytes() for p in run_copy.iterdir()} == before
    res = CliRunner().invoke(cli.main, ["train", "point-circle", "--resume", "--out", str(run_copy)])
    one_line_error(res, "already has 1 iterations")   # without the flag: still an error
    recipe = (ROOT / "Makefile").read_text().split("\ntrain:", 1)[1].split("\n\n", 1)[0]
    assert "--resume --finished-ok" in recipe


@pytest.mark.parametrize("address", ["garbage", "host:0", "host:65536", ":6379", "http://host:1", "host:port"])
def test_a_bad_ray_address_is_refused_while_parsing(tmp_path, monkeypatch, address):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli.main, ["train", "point-circle", "--backend", "ray", "--ray-address", address,
                                        "--out", "run"])
    assert res.exit_code == 2 and f"Invalid value for '--ray-address': {address!r} is not HOST:PORT" in res.output
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_ray_address_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(cli.main, ["train", "point-circle", *SMALL, "--backend", "ray",
                                        "--ray-address", "127.0.0.1:1", "--out", str(out)])
    one_line_error(res, "cannot reach the Ray cluster at 127.0.0.1:1")
    assert "checkpoint" not in res.output and not out.exists()


# --- plot pools runs only when their settings agree ----------------------------------------------

def plot_run(path, algo, seed, row_limit=10.0, **settings):
    from metacpo_ref.run import plots

    config = {"family": "point-circle", "algo": algo, "seed": seed, "iterations": 2, "tasks": 3, **settings}
    rows = [{"iteration": i, "env_steps": 100 * (i + 1), "return": float(i), "cost": 5.0, "cost_limit": row_limit}
            for i in range(2)]
    return plots.Run(str(path), config, rows)


def test_plot_pools_only_runs_whose_settings_agree_apart_from_the_seed_and_labels_each_limit():
    from metacpo_ref.run import plots

    runs = [plot_run("a", "meta-cpo", 0, inner_metric="fisher"), plot_run("b", "meta-cpo", 1, inner_metric="fisher"),
            plot_run("c", "meta-cpo", 0, inner_metric="identity"), plot_run("d", "cpo", 0),
            plot_run("e", "cpo", 0, row_limit=25.0, cost_limit=25.0)]
    groups = plots.group(runs)
    assert {label: [r.path for r in rs] for label, rs in groups.items()} == {
        "meta-cpo (inner_metric=fisher)": ["a", "b"], "meta-cpo (inner_metric=identity)": ["c"],
        "cpo (cost_limit=None)": ["d"], "cpo (cost_limit=25.0)": ["e"]}
    assert list(plots.group(runs[:2])) == ["meta-cpo"]   # one curve per algorithm: labelled as before
    # a run from before a setting was added agrees with one that states the value it used
    assert len(plots.group([plot_run("f", "cpo", 0), plot_run("g", "cpo", 1, cost_measure="episode")])) == 1
    fig = plots.figure(runs)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "cost limit 10" in labels and "cost limit 25" in labels
    assert {f"{label} (n={len(rs)})" for label, rs in groups.items()} <= set(labels)
    palette = plots.colors(list(groups))
    assert len(set(palette.values())) == len(groups) and plots.colors(["cpo"]) == {"cpo": plots.COLORS["cpo"]}


# --- the Python API adapts as the run did ---------------------------------------------------------

def readme_python_api():
    """The code of the README's "Python API" snippet."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n", text.index("Python API:")) + len("```python\n")
    return text[start:text.index("```", start)]


def test_the_readme_snippet_runs_twice_and_adapts_as_meta_test_does(tmp_path, monkeypatch):
    """The README's snippet (a tiny config, k = 1) run twice: the second call returns the finished
    run; ``adapt(run, task, k)`` is meta_test's adaptation of that task (adapt_on with the run's
    normaliser, value functions, config, the family's test limit, seed 0), for a run directory,
    its checkpoint and its State alike, and differs from the bare theta's old default."""
    from metacpo_ref.envs.families import FAMILIES
    from metacpo_ref.envs import make_env
    from metacpo_ref.envs.rollouts import NormalizedEnv
    from metacpo_ref.run.evaluation import adapt, adapt_on

    code = readme_python_api()
    tiny = 'Config(family="point-circle", iterations=1, tasks=1, local_steps=1, episodes=1, hidden=(8,))'
    for old, new in [('Config(family="point-circle", iterations=10)', tiny), ("k=5", "k=1")]:
        assert old in code
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    first, second = {}, {}
    exec(code, first)
    exec(code, second)   # today: "runs/pc already has a checkpoint: pass --resume ..."
    np.testing.assert_array_equal(first["phi"], second["phi"])
    state = load_checkpoint(tmp_path / "runs/pc/checkpoint.npz")
    assert state.iteration == 1 and len(read_metrics(tmp_path / "runs/pc")) == 1
    task = second["task"]
    env = NormalizedEnv(make_env("point-circle"), state.obs_norm)   # as the workers build it for meta_test
    limit = FAMILIES["point-circle"].cost_limit_test
    ref = adapt_on(env, task, state.theta, 1, state.config, state.vf, 0, limit, False, state.config.n_episodes)[0]
    np.testing.assert_array_equal(second["phi"], ref)
    for run in (tmp_path / "runs/pc/checkpoint.npz", state):
        np.testing.assert_array_equal(adapt(run, task, k=1), ref)
    bare = adapt(state.theta, task, k=1, config=state.config)   # as given: raw observations, fresh vf
    assert not np.array_equal(bare, ref)


def test_python_train_on_a_run_with_a_checkpoint_names_resume_true_and_adapt_refuses_mixed_arguments(tmp_path):
    from metacpo_ref.envs import sample_tasks
    from metacpo_ref.run.evaluation import adapt
    from metacpo_ref.run.training import train

    config = Config(**{**TINY, "tasks": 1, "iterations": 2})
    state = train(config, tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"already has a checkpoint: call train\(\.\.\., resume=True\) to "
                                              r"continue it, or choose another out_dir"):
        train(config, tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"give a Config with iterations=N > 2 to continue"):
        train(dataclasses.replace(config, iterations=1), tmp_path / "run", resume=True)
    task = sample_tasks("point-circle", 1, "test", seed=0)[0]
    with pytest.raises(TypeError, match="takes config, vf and obs_norm from the run"):
        adapt(state, task, 1, vf=state.vf)
    with pytest.raises(ValueError, match="a 'point-button' task cannot adapt a 'point-circle' policy"):
        adapt(state, sample_tasks("point-button", 1, "test", seed=0)[0], 1)


# --- rough edges ---------------------------------------------------------------------------------

def test_metrics_lines_of_random_bytes_move_to_bad_with_their_own_bytes(run_copy):
    state = load_checkpoint(run_copy / "checkpoint.npz")
    good = (run_copy / "metrics.jsonl").read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes().replace(b"\n", b"x")
    lines = [noise[:100] + b"\r", noise[100:], b"\xff\xfe{}"]
    (run_copy / "metrics.jsonl").write_bytes(good + b"\n".join(lines) + b"\n")
    said = []
    prepare_run(dataclasses.replace(state.config, iterations=2), run_copy, resume=True, warn=said.append)
    assert (run_copy / "metrics.jsonl.bad").read_bytes() == b"".join(line + b"\n" for line in lines)
    assert (run_copy / "metrics.jsonl").read_bytes() == good
    assert any("3 damaged" in w for w in said)


def test_plot_reads_a_missing_config_json_from_the_checkpoint_with_a_warning(run_copy, tmp_path):
    from metacpo_ref.run import plots

    stored = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").unlink()
    run, said = plots.load_run(run_copy)
    assert run.config == stored and run.algo == "meta-cpo"
    assert any(f"{run_copy} has no config.json; its settings are read from {run_copy}/checkpoint.npz" in w
               for w in said)
    res = CliRunner().invoke(cli.main, ["plot", str(run_copy), "--out", str(tmp_path / "p.png")])
    assert res.exit_code == 0 and (tmp_path / "p.png").exists(), res.output
    (run_copy / "checkpoint.npz").unlink()
    with pytest.raises(plots.PlotError, match="has neither config.json nor checkpoint.npz"):
        plots.load_run(run_copy)


def test_plot_refuses_two_copies_of_one_run_naming_both(run_copy, tmp_path):
    import shutil

    from metacpo_ref.run import plots

    twin = tmp_path / "twin"
    shutil.copytree(run_copy, twin)
    res = CliRunner().invoke(cli.main, ["plot", str(run_copy), str(twin), "--out", str(tmp_path / "p.png")])
    assert res.exit_code == 1 and not (tmp_path / "p.png").exists()
    assert f"{run_copy} and {twin} are one run twice (the same settings, seed 0 and numbers)" in res.output
    rows = [json.loads(line) for line in (twin / "metrics.jsonl").read_text().splitlines()]
    (twin / "metrics.jsonl").write_text("".join(json.dumps({**r, "return": r["return"] + 1}) + "\n" for r in rows))
    runs, said = plots.load_runs([run_copy, twin])   # other code, same settings and seed: said, pooled
    assert f"{run_copy} and {twin} have the same settings and seed 0 but different numbers" in said[-1]
    config = json.loads((twin / "config.json").read_text())
    (twin / "config.json").write_text(json.dumps({**config, "seed": 1}))   # another seed: pooled, n=2
    runs, _ = plots.load_runs([run_copy, twin])
    assert [len(rs) for rs in plots.group(runs).values()] == [2]


def test_the_readme_plot_commands_write_where_git_ignores(tmp_path):
    import re

    outs = re.findall(r"cli\.py plot .*?--out (\S+)", (ROOT / "README.md").read_text())
    assert len(outs) >= 2
    for out in outs + ["curves.png", "pc.png"]:
        r = subprocess.run(["git", "check-ignore", "-q", "--no-index", out], cwd=ROOT)
        assert r.returncode == 0, f"{out} (a plot of the README's commands) is not ignored by git"


# --- the README: make train's time for its real worker count, make test's, what follows done ----

def test_train_ends_with_the_next_steps_and_the_readme_states_them_and_make_trains_workers(tmp_path):
    from metacpo_ref.envs.workers import worker_count

    out = tmp_path / "run"
    res = CliRunner().invoke(cli.main, ["train", "point-circle", "--iterations", "1", *SMALL, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert lines(res.output)[-1] == (
        f"next: meta-test it with `cli.py test point-circle --checkpoint {out}/checkpoint.npz --out "
        f"{out}/test.json`, then plot it with `cli.py plot {out} --out {out}/curves.png`")
    quickstart = " ".join((ROOT / "README.md").read_text().split("## ")[1].split())
    assert "cli.py train point-button $(if" in (ROOT / "Makefile").read_text()   # default --workers: the cores
    n, _ = worker_count(2, Config(family="point-button").tasks, cores=2)   # make train's on 2 cores
    assert f"so {n} workers there (~23 s per default point-button meta-iteration with {n} workers" in quickstart
    assert "At the end it prints `done:`" in quickstart
    assert "meta-test the run on unseen tasks (`cli.py test`" in quickstart
    assert "`make test` runs the whole suite: about" in quickstart


def test_test_cost_measure_sets_what_the_limit_and_the_rows_cost_are_on(tiny_run, tmp_path):  # noqa: F811
    """--cost-measure: the rows' limit and ``cost`` are in the given measure (the run trained in
    the default, discounted); every measure is still reported. For an algorithm that never reads
    the cost (trpo) the adaptation, and so every reported number, is the same in both."""
    def rows(extra, ckpt):
        res = CliRunner().invoke(cli.main, ["test", "point-circle", "--checkpoint", str(ckpt), "--tasks", "1",
                                            "--adapt-steps", "1", "--episodes", "1", "--eval-episodes", "1",
                                            "--workers", "1", "--json", *extra])
        assert res.exit_code == 0, res.output
        return json.loads(res.output)["rows"]

    own, episode = rows([], tiny_run / "checkpoint.npz"), rows(["--cost-measure", "episode"], tiny_run / "checkpoint.npz")
    assert {r["cost_measure"] for r in own} == {"discounted"} and {r["cost_measure"] for r in episode} == {"episode"}
    assert all(r["cost"] == r["cost_episode"] for r in episode) and all(r["cost"] == r["cost_discounted"] for r in own)
    trpo = tmp_path / "trpo"
    res = CliRunner().invoke(cli.main, ["train", "point-circle", "--algo", "trpo", "--iterations", "1", *SMALL,
                                        "--out", str(trpo)])
    assert res.exit_code == 0, res.output
    a, b = rows([], trpo / "checkpoint.npz"), rows(["--cost-measure", "episode"], trpo / "checkpoint.npz")
    def measures(r):   # every number but the one named by the measure
        drop = ("cost", "cost_se", "cost_measure", "tasks")
        return {**{k: v for k, v in r.items() if k not in drop},
                "tasks": [{k: v for k, v in t.items() if k != "cost"} for t in r["tasks"]]}

    assert [measures(r) for r in a] == [measures(r) for r in b]
    bad = CliRunner().invoke(cli.main, ["test", "point-circle", "--checkpoint", str(trpo / "checkpoint.npz"),
                                        "--cost-measure", "per-step"])
    assert bad.exit_code == 2 and "per-step" in bad.output
