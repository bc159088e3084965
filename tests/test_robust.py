"""A run that survives the user (issue 17): resume from the run directory alone,
every bad number refused before any work, OS failures in one line, nothing lost
from a damaged metrics.jsonl, and documentation that matches the commands."""
import dataclasses
import errno
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from metacpo_ref.run import plots
from metacpo_ref.run import rundir
from metacpo_ref.run import training as training_module
from metacpo_ref.config import Config, field_doc, field_range
from metacpo_ref.envs import make_env
from metacpo_ref.run.rundir import CheckpointError, State, load_checkpoint, read_metrics, save_checkpoint
from metacpo_ref.run.training import prepare_run, resume_config

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--tasks", "2", "--local-steps", "1", "--episodes", "1", "--workers", "1"]
TINY = dict(family="point-circle", tasks=2, local_steps=1, episodes=1, iterations=1, hidden=(8,))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished one-iteration run of the CLI's tiny settings (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    res = CliRunner().invoke(cli.main, ["train", "point-circle", "--iterations", "1", *SMALL, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def lines(text):
    return [line for line in text.splitlines() if line.strip()]


# --- resume is the run directory ---------------------------------------------------------

def test_resume_uses_the_stored_config(run_copy):
    runner = CliRunner()
    res = runner.invoke(cli.main, ["train", "point-circle", "--resume", "--iterations", "2", "--out", str(run_copy)])
    assert res.exit_code == 0, res.output
    assert "done: iteration 1" in res.output
    stored = load_checkpoint(run_copy / "checkpoint.npz").config
    assert (stored.tasks, stored.local_steps, stored.episodes, stored.iterations) == (2, 1, 1, 2)
    assert json.loads((run_copy / "config.json").read_text())["tasks"] == 2
    assert [r["iteration"] for r in read_metrics(run_copy)] == [0, 1]
    # explicit options that differ are refused, with every difference listed
    res = runner.invoke(cli.main, ["train", "point-circle", "--resume", "--iterations", "3", "--tasks", "5",
                                   "--seed", "3", "--out", str(run_copy)])
    assert res.exit_code == 1
    assert "tasks 2 -> 5" in res.output and "seed 0 -> 3" in res.output and len(lines(res.output)) == 1
    # explicit options equal to the stored ones (also a family default spelled out) are fine
    cfg = resume_config(run_copy, {"family": "point-circle", "tasks": 2, "cost_limit": 10.0, "iterations": 7})
    assert cfg == dataclasses.replace(stored, iterations=7)


def test_resume_accepts_a_default_spelled_out_and_refuses_another_value(tmp_path):
    """A run stored with ``episodes=None`` (the family's default) and hidden sizes as a tuple
    resumes when the command line spells the same values out (the family's episode count,
    the sizes as a list), and refuses another episode count."""
    from metacpo_ref.model.advantages import init_value
    from metacpo_ref.envs.families import FAMILIES
    from metacpo_ref.model.policy import init_theta
    from metacpo_ref.envs.rollouts import ObsNorm
    from metacpo_ref.algos.step_data import specs
    config = Config(family="point-circle", hidden=(8,), tasks=1, local_steps=1, iterations=1)
    assert config.episodes is None
    spec, vspec = specs(config)
    save_checkpoint(tmp_path / "checkpoint.npz", State(config, init_theta(spec, 0), (
        init_value(vspec, 1), init_value(vspec, 2)), ObsNorm(np.zeros(spec.obs_dim), np.ones(spec.obs_dim)), 1, 0))
    default = FAMILIES["point-circle"].episodes
    cfg = resume_config(tmp_path, {"family": "point-circle", "episodes": default, "hidden": [8], "iterations": 2})
    assert cfg == dataclasses.replace(config, iterations=2)
    with pytest.raises(CheckpointError, match=f"episodes {default} -> {default + 1}"):
        resume_config(tmp_path, {"episodes": default + 1})


def test_finished_run_says_so_in_one_line(run_copy):
    before = (run_copy / "config.json").read_bytes()
    runner = CliRunner()
    for extra in ([], ["--iterations", "1"]):
        res = runner.invoke(cli.main, ["train", "point-circle", "--resume", "--out", str(run_copy), *extra])
        assert res.exit_code == 1
        assert lines(res.output) == [f"Error: run {run_copy} already has 1 iterations; "
                                     "pass --iterations N > 1 to continue"]
    assert (run_copy / "config.json").read_bytes() == before


@pytest.mark.parametrize("damage", ["missing", "unreadable", "disagrees"])
def test_config_copy_rewritten_from_checkpoint_with_a_warning(run_copy, damage):
    path = run_copy / "config.json"
    if damage == "missing":
        path.unlink()
    elif damage == "unreadable":
        path.write_text('{"family": "point-circle", "tasks": ')
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), "tasks": 9, "seed": 4}))
    said = []
    stored = load_checkpoint(run_copy / "checkpoint.npz").config
    state = prepare_run(dataclasses.replace(stored, iterations=2), run_copy, resume=True, warn=said.append)
    assert state.config.tasks == 2
    assert len(said) == 1 and damage.replace("disagrees", "disagrees with the checkpoint") in said[0]
    assert "checkpoint" in said[0] and "\n" not in said[0]
    assert json.loads(path.read_text()) == {**dataclasses.asdict(stored), "iterations": 2,
                                            "hidden": list(stored.hidden)}


def test_an_intact_run_resumes_without_a_warning_and_keeps_its_files(run_copy):
    """Nothing to repair, nothing said: an intact run directory resumes with no warning,
    its metrics rows and config.json kept (only ``iterations`` updated), no .bad file."""
    rows = read_metrics(run_copy)
    stored = load_checkpoint(run_copy / "checkpoint.npz").config
    said = []
    state = prepare_run(dataclasses.replace(stored, iterations=3), run_copy, resume=True, warn=said.append)
    assert said == []
    assert state.config == dataclasses.replace(stored, iterations=3) and state.iteration == 1
    assert read_metrics(run_copy) == rows and len(rows) == 1
    assert json.loads((run_copy / "config.json").read_text())["iterations"] == 3
    assert not (run_copy / "metrics.jsonl.bad").exists()


@pytest.mark.parametrize("text, error", [("[1]", "TypeError"), ("{}", "KeyError"), ('"x"', "ValueError"),
                                         (b"\xff\xfe", "UnicodeDecodeError"), (None, "PermissionError")])
def test_any_unreadable_config_copy_is_rewritten_from_the_checkpoint(run_copy, monkeypatch, text, error):
    """Whatever makes config.json unusable (not an object, a missing field, not JSON, not
    UTF-8, not readable) is one warning naming the error, and the file is rewritten from
    the checkpoint; the resume goes on."""
    path = run_copy / "config.json"
    if text is None:
        real = Path.read_text

        def read_text(self, *a, **k):
            if self == path:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self, *a, **k)

        monkeypatch.setattr(Path, "read_text", read_text)
    else:
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    stored = load_checkpoint(run_copy / "checkpoint.npz").config
    said = []
    state = prepare_run(dataclasses.replace(stored, iterations=2), run_copy, resume=True, warn=said.append)
    monkeypatch.undo()
    assert state.config == dataclasses.replace(stored, iterations=2)
    assert len(said) == 1 and f"unreadable ({error})" in said[0]
    assert json.loads(path.read_text()) == {**dataclasses.asdict(stored), "iterations": 2,
                                            "hidden": list(stored.hidden)}


def test_damaged_metrics_lose_no_rows(run_copy):
    """Line 11 of 40 rows damaged (the issue's sed): resume keeps the other 39, the
    damaged line goes to metrics.jsonl.bad, and plot and summarize name it."""
    state = load_checkpoint(run_copy / "checkpoint.npz")
    save_checkpoint(run_copy / "checkpoint.npz", dataclasses.replace(state, iteration=40))
    row = read_metrics(run_copy)[0]
    text = [json.dumps({**row, "iteration": i, "env_steps": 10 * (i + 1)}) for i in range(40)]
    text[10] = '{"iteration": 10, garbage'
    (run_copy / "metrics.jsonl").write_text("\n".join(text) + "\n")
    said = []
    prepare_run(dataclasses.replace(state.config, iterations=41), run_copy, resume=True, warn=said.append)
    assert [r["iteration"] for r in read_metrics(run_copy)] == [i for i in range(40) if i != 10]
    assert (run_copy / "metrics.jsonl.bad").read_text() == '{"iteration": 10, garbage\n'
    assert any("line 11" in w and "metrics.jsonl.bad" in w for w in said)
    assert any("no rows for iteration(s) 10" in w for w in said)

    (run_copy / "metrics.jsonl").write_text("\n".join(text) + "\n")   # damaged again: plot names the line
    run, warnings = plots.load_run(run_copy)
    assert len(run.rows) == 39 and any("line 11" in w for w in warnings)
    summary = subprocess.run([sys.executable, str(ROOT / "results" / "summarize.py"), str(run_copy.parent)],
                             capture_output=True, text=True)
    assert "line 11" in summary.stderr and "no test.json" in summary.stderr


# --- every bad number refused before any work ---------------------------------------------

BAD = ["nan", "inf", "-inf", "-1", "0"]
# (command, option, value) that are valid, documented meanings
VALID = {("test", "--adapt-steps", "0"),   # meta-test k = 0 only
         ("train", "--cost-limit", "0"), ("test", "--cost-limit", "0"),   # no cost at all
         ("train", "--seed", "0"), ("test", "--seed", "0"), ("rollout", "--seed", "0"),
         ("train", "--gae-lambda", "0"),   # TD(0) advantages
         ("train", "--cg-damping", "0")}   # undamped Fisher-vector products
REQUIRED = {"train": ["point-circle"], "test": ["point-circle", "--checkpoint", "ckpt.npz"],
            "rollout": ["point-circle"], "plot": ["--out", "x.png"], "export-fixtures": ["d"],
            "verify-fixtures": ["d"]}


def numeric_options():
    for name, command in cli.main.commands.items():
        for p in command.params:
            if isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType, cli.Number)):
                yield name, p


def test_numbers_are_checked_while_parsing():
    found = list(numeric_options())
    assert {(c, p.opts[0]) for c, p in found} >= {
        ("train", "--iterations"), ("train", "--tasks"), ("train", "--local-steps"), ("train", "--episodes"),
        ("train", "--cost-limit"), ("train", "--seed"), ("train", "--workers"), ("test", "--adapt-steps"),
        ("test", "--tasks"), ("test", "--episodes"), ("test", "--cost-limit"), ("test", "--seed"),
        ("test", "--workers"), ("plot", "--smooth"), ("rollout", "--tasks"), ("rollout", "--episodes"),
        ("rollout", "--seed")}
    for command, p in found:
        assert isinstance(p.type, cli.Number), f"{command} {p.opts[0]}: a plain click number takes NaN / inf"


@pytest.mark.parametrize("value", BAD)
def test_every_numeric_option_refuses_bad_values(tmp_path, value, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for command, p in numeric_options():
        flag = p.opts[0]
        if (command, flag, value) in VALID:
            assert p.type.convert(value, p, None) == 0
            continue
        res = runner.invoke(cli.main, [command, *REQUIRED.get(command, []), f"{flag}={value}"])
        assert res.exit_code == 2, (command, flag, value, res.output)
        assert f"Invalid value for '{flag}'" in res.output and p.type.valid.describe() in res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)
    assert list(tmp_path.iterdir()) == []   # no run directory, nothing written


@pytest.mark.parametrize("bad", [dict(cost_limit=math.nan), dict(cost_limit=math.inf), dict(cost_limit=-1.0),
                                 dict(seed=-1), dict(tasks=0), dict(episodes=0), dict(inner_delta=math.nan),
                                 dict(gamma=1.5), dict(ls_decay=1.0), dict(ls_kl=-math.inf)])
def test_config_refuses_the_same(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"{name} must be .*{re.escape(field_range(name).describe())}"):
        Config(**bad)
    assert Config(cost_limit=0.0).train_cost_limit == 0.0


# --- settings documented once ----------------------------------------------------------------

def test_every_option_has_help_and_config_defaults_come_from_config():
    for name, command in cli.main.commands.items():
        for p in command.params:
            if isinstance(p, click.Option):
                assert p.help and p.help.strip(), f"{name} {p.opts[0]} has no help line"
    for f in dataclasses.fields(Config):
        assert field_doc(f.name).strip().endswith("."), f.name
    options = {p.name: p for p in cli.main.commands["train"].params}
    for name in ("algo", "iterations", "tasks", "local_steps", "episodes", "cost_limit", "outer_metric", "seed"):
        assert options[name].default == getattr(Config, name) and options[name].help == field_doc(name)
    assert "default=Config." not in (ROOT / "cli.py").read_text()
    helps = CliRunner().invoke(cli.main, ["train", "--help"]).output
    assert "--tasks INTEGER[1,1000]" in helps and "--cost-limit NUMBER[0,1e+06]" in helps and "--seed INTEGER>=0" in helps


def test_every_config_field_is_a_train_option_declared_from_config():
    """Each field but the family (the argument) is an option of its name (--task: the text parse_task
    reads), with Config's default, help line, range or names; given nothing, the options make Config()."""
    params = {p.name: p for p in cli.main.commands["train"].params}
    for f in dataclasses.fields(Config):
        p = params["task_text" if f.name == "task" else f.name]
        if f.name == "family":
            assert isinstance(p, click.Argument) and list(p.type.choices) == list(f.metadata["choices"])
            continue
        assert p.default == f.default, f.name
        if f.name != "task":
            assert p.help == field_doc(f.name) and "\n" not in p.help, f.name
        if f.metadata["range"] is not None:
            assert p.type.valid == f.metadata["range"], f.name
        if f.metadata["choices"] is not None:
            assert list(p.type.choices) == list(f.metadata["choices"]), f.name
    ctx = cli.main.commands["train"].make_context("train", ["point-circle"])
    settings = {k: v for k, v in ctx.params.items() if k in Config.__dataclass_fields__}
    assert Config(**cli.config_values(settings, family="point-circle", task=None)) == Config(family="point-circle")
    ctx = cli.main.commands["train"].make_context("train", ["point-circle", "--hidden", "64,32", "--gamma", "0.95",
                                                            "--whole-meta-gradient"])
    assert (ctx.params["hidden"], ctx.params["gamma"], ctx.params["split_meta_gradient"]) == ((64, 32), 0.95, False)
    for bad in ("0,3", "a", "", "1.5"):
        res = CliRunner().invoke(cli.main, ["train", "point-circle", "--hidden", bad])
        assert res.exit_code == 2 and "Invalid value for '--hidden'" in res.output, bad


# --- operating-system failures are one line ------------------------------------------------

def one_line_error(res, *needles):
    """Exit code 1, no traceback, and one error line (after any progress lines) naming every needle."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    errors = [line for line in lines(res.output) if line.startswith("Error: ")]
    assert len(errors) == 1 and lines(res.output)[-1] == errors[0], res.output
    for n in needles:
        assert n in errors[0], (n, res.output)


def test_full_disk_keeps_the_checkpoint_and_leaves_no_tmp(run_copy, monkeypatch):
    def full(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(run_copy / "checkpoint.npz.tmp"))

    monkeypatch.setattr(np, "savez", full)
    res = CliRunner().invoke(cli.main, ["train", "point-circle", "--resume", "--iterations", "2",
                                        "--out", str(run_copy)])
    monkeypatch.undo()
    one_line_error(res, "No space left on device", "checkpoint.npz.tmp", "intact")
    assert load_checkpoint(run_copy / "checkpoint.npz").iteration == 1
    assert not (run_copy / "checkpoint.npz.tmp").exists()
    # a kill during the write leaves a .tmp: the next start removes it
    (run_copy / "checkpoint.npz.tmp").write_bytes(b"PK\x03\x04 torn")
    prepare_run(dataclasses.replace(load_checkpoint(run_copy / "checkpoint.npz").config, iterations=2),
                run_copy, resume=True, warn=lambda m: None)
    assert not (run_copy / "checkpoint.npz.tmp").exists()


def test_a_write_killed_before_its_rename_leaves_nothing_after_the_next_start(run_copy, monkeypatch):
    """What write_atomic writes before its rename is what the next start cleans up: with the
    rename lost (a kill at that instant), the run directory holds the same files after
    prepare_run as before the write."""
    before = sorted(p.name for p in run_copy.iterdir())
    state = load_checkpoint(run_copy / "checkpoint.npz")
    monkeypatch.setattr(os, "replace", lambda src, dst: None)
    save_checkpoint(run_copy / "checkpoint.npz", state)
    monkeypatch.undo()
    assert sorted(p.name for p in run_copy.iterdir()) != before     # the temporary is there
    prepare_run(dataclasses.replace(state.config, iterations=2), run_copy, resume=True, warn=lambda m: None)
    assert sorted(p.name for p in run_copy.iterdir()) == before


def test_metrics_with_blank_lines_and_undecodable_bytes_keep_every_good_row(tmp_path):
    """scan_metrics skips blank lines anywhere (not stopping at them) and reports a line of
    bytes that are not UTF-8 as damaged instead of failing on it."""
    (tmp_path / "metrics.jsonl").write_bytes(b'{"iteration": 0}\n\n\xff\xfe junk\n{"iteration": 1}\n   \n'
                                             b'{"iteration": 2}\n')
    good, bad = rundir.scan_metrics(tmp_path)
    assert [r["iteration"] for r in good] == [0, 1, 2]
    assert [n for n, _ in bad] == [3]


def test_read_only_directory(tmp_path, monkeypatch):
    real_open = open

    def read_only(path, *a, **k):
        if str(path).startswith(str(tmp_path)) and (a[:1] or [k.get("mode", "r")])[0][0] in "wa":
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(rundir, "open", read_only, raising=False)
    monkeypatch.setattr(plots, "open", read_only, raising=False)
    runner = CliRunner()
    res = runner.invoke(cli.main, ["train", "point-circle", *SMALL, "--iterations", "1",
                                   "--out", str(tmp_path / "run")])
    one_line_error(res, "Read-only file system", str(tmp_path / "run"))
    assert not list((tmp_path / "run").glob("*.tmp"))
    res = runner.invoke(cli.main, ["plot", str(ROOT / "results" / "point-circle" / "cpo-s0"),
                                   "--out", str(tmp_path / "x.png")])
    one_line_error(res, "Read-only file system", "x.png")


def test_unwritable_paths_are_one_line(tmp_path):
    runner = CliRunner()
    afile = tmp_path / "afile"
    afile.write_text("")
    res = runner.invoke(cli.main, ["train", "point-circle", *SMALL, "--out", "/dev/full"])
    one_line_error(res, "/dev/full", "not a directory")
    res = runner.invoke(cli.main, ["train", "point-circle", *SMALL, "--out", str(afile / "run")])
    one_line_error(res, str(afile / "run"), "Not a directory")
    res = runner.invoke(cli.main, ["export-fixtures", str(afile / "fixtures")])
    one_line_error(res, str(afile / "fixtures"), "Not a directory")
    res = runner.invoke(cli.main, ["plot", str(ROOT / "results" / "point-circle" / "cpo-s0"), "--out", "/dev/full"])
    one_line_error(res, "/dev/full", "No space left on device")
    assert "wrote" not in res.output


# --- what the user reads matches what happens ---------------------------------------------------

def test_plot_takes_a_results_glob_and_names_missing_test_json(tmp_path, run_copy):
    family = ROOT / "results" / "point-circle"
    paths = sorted(str(p) for p in family.iterdir())
    assert any(p.endswith(".log") for p in paths)
    res = CliRunner().invoke(cli.main, ["plot", *paths, "--out", str(tmp_path / "pc.png")])
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and ".log" in res.output and "wrote" in res.output
    res = CliRunner().invoke(cli.main, ["plot", str(run_copy), "--out", str(tmp_path / "one.png")])
    assert res.exit_code == 0, res.output
    assert f"{run_copy} has no test.json" in res.output
    assert f"--json > {run_copy}/test.json" in res.output


def test_progress_line_and_hint_show_limit_and_resume_command(tmp_path):
    res = CliRunner().invoke(cli.main, ["train", "point-circle", "--iterations", "1", *SMALL, "--cost-limit", "0",
                                        "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "cost limit 0 (discounted J_C per episode)," in res.output and "(limit 0, discounted)" in res.output
    src = (ROOT / "cli.py").read_text()
    assert "cli.py train {family} --resume --out {out_dir}" in src


def test_readme_matches_the_commands():
    readme = (ROOT / "README.md").read_text()
    outs = set(re.findall(r"cli\.py train .*--out (\S+)", readme))
    plots_ = re.findall(r"cli\.py plot (\S+) --out", readme)
    assert outs and plots_
    for pattern in plots_:
        if not pattern.startswith("results/"):
            assert any(re.fullmatch(pattern.replace("*", ".*"), o) for o in outs), (pattern, outs)
    for pattern in re.findall(r"cli\.py test \S+ --checkpoint (\S+)/checkpoint\.npz", readme):
        assert pattern in outs
    from metacpo_ref.checks.bench import DURATION
    bench_help = CliRunner().invoke(cli.main, ["bench", "--help"]).output
    flat = " ".join(readme.split())
    for how_long in DURATION.values():
        assert how_long in " ".join(bench_help.split()) and how_long in flat
    # make train's duration: the README's seconds per default iteration are the ones --iterations' help
    # quotes, and the default iterations of them are the minutes the README announces
    secs = re.search(r"~(\d+) s per default point-button meta-iteration", flat)
    minutes = re.search(r"It takes about (\d+) minutes", flat)
    assert secs and minutes and f"~{secs.group(1)} s per default point-button" in " ".join(field_doc("iterations").split())
    assert abs(Config().iterations * int(secs.group(1)) / 60 - int(minutes.group(1))) <= 2
    results = " ".join((ROOT / "docs" / "results.md").read_text().split())
    assert "reproduces each `test.json` exactly" not in results
    assert "bit for bit on the same machine with the same BLAS kernel" in results


def test_env_close_and_context_manager():
    with make_env("point-circle") as env:
        env.reset(seed=0)
        env.step(np.zeros(2))
        assert not env.closed
    assert env.closed
    env.close()   # idempotent


def test_declared_runtime_requirements_are_used():
    setup = (ROOT / "setup.py").read_text()
    code = "\n".join(p.read_text() for p in [ROOT / "cli.py", *sorted((ROOT / "metacpo_ref").rglob("*.py"))])
    for name, module in [("tqdm", "tqdm"), ("click", "click"), ("scipy", "scipy"), ("autograd", "autograd"),
                         ("matplotlib", "matplotlib")]:
        if f'"{name}' in setup:
            assert re.search(rf"^\s*(import|from) {module}\b", code, re.M), f"{name} declared but never imported"


@pytest.mark.skipif(sys.platform != "linux", reason="OpenBLAS kernel names are x86 Linux")
def test_committed_meta_test_reproduces_bit_for_bit_with_the_kernel_pinned(tmp_path):
    """docs/results.md: with the BLAS kernel the runs were made with (Prescott), k = 0
    of results/point-circle/meta-cpo-s0/test.json is reproduced to the last digit. That file
    predates the separate evaluation episodes: its k = 0 row is the adaptation batch of
    theta under the seed key (seed, TEST_ITERATION, task key, 0), collected here through the
    package's pieces (checkpoint, normaliser, test tasks, rollouts)."""
    run = ROOT / "results" / "point-circle" / "meta-cpo-s0"
    env = {**os.environ, "OPENBLAS_CORETYPE": "Prescott", "OPENBLAS_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-c", "import numpy, threadpoolctl; "
                            "print(threadpoolctl.threadpool_info()[0].get('architecture'))"],
                           env=env, capture_output=True, text=True)
    if probe.stdout.strip() != "Prescott":
        pytest.skip(f"cannot pin OpenBLAS to Prescott here ({probe.stdout.strip() or probe.stderr[-200:]})")
    script = (
        "import json, sys, numpy as np\n"
        "from metacpo_ref.run.rundir import load_checkpoint\n"
        "from metacpo_ref.run.evaluation import TEST_ITERATION, _task_key\n"
        "from metacpo_ref.envs import make_env, sample_tasks\n"
        "from metacpo_ref.model.policy import act_fn\n"
        "from metacpo_ref.envs.rollouts import NormalizedEnv, batch_seed, collect\n"
        "from metacpo_ref.algos.step_data import specs\n"
        "s = load_checkpoint(sys.argv[1]); spec, _ = specs(s.config)\n"
        "tasks = sample_tasks('point-circle', 5, 'test', seed=0, walls=s.config.car_walls)\n"
        "env = NormalizedEnv(make_env('point-circle'), s.obs_norm); out = []\n"
        "for t in tasks:\n"
        "    env.set_task(t)\n"
        "    b = collect(env, act_fn(spec, s.theta), 2, batch_seed(0, TEST_ITERATION, _task_key(t), 0))\n"
        "    out.append((float(np.mean(b.ep_return)), float(np.mean(b.ep_cost))))\n"
        "v = np.array(out)\n"
        "print(json.dumps({'return': float(v[:, 0].mean()), 'cost': float(v[:, 1].mean()),\n"
        "                  'tasks': [{'return': r} for r, _ in out]}))\n")
    res = subprocess.run([sys.executable, "-c", script, str(run / "checkpoint.npz")], env=env, capture_output=True,
                         text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    stored = json.loads((run / "test.json").read_text())["rows"][0]
    assert got["return"] == stored["return"] and got["cost"] == stored["cost"]
    assert [t["return"] for t in got["tasks"]] == [t["return"] for t in stored["tasks"]]


def test_a_fresh_run_directory_holds_the_initial_state_and_is_not_reopened_by_default(tmp_path):
    """prepare_run without ``resume`` creates the directory (parents too), removes a
    temporary left by a first checkpoint write that was killed, and writes config.json,
    an empty metrics.jsonl and the checkpoint of :func:`initial_state`, which it returns;
    called again (``resume`` defaults to False) it refuses the directory; a file in the
    way is an ``ENOTDIR`` error naming it."""
    config = Config(**TINY)
    out = tmp_path / "a" / "b" / "run"
    out.mkdir(parents=True)
    (out / "checkpoint.npz.tmp").write_bytes(b"PK\x03\x04 torn")
    state = prepare_run(config, out)
    ref = training_module.initial_state(config)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "config.json", "metrics.jsonl"]
    assert (out / "config.json").read_text() == rundir.config_to_json(config)
    assert (out / "metrics.jsonl").read_bytes() == b""
    for got in (state, load_checkpoint(out / "checkpoint.npz")):
        assert got.config == config and (got.iteration, got.env_steps) == (0, 0)
        np.testing.assert_array_equal(got.theta, ref.theta)
        for a, b in zip(got.vf, ref.vf):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(got.obs_norm.mean, ref.obs_norm.mean)
    with pytest.raises(CheckpointError, match="already has a checkpoint"):
        prepare_run(config, out)
    fresh = prepare_run(config, tmp_path / "c" / "d" / "run")   # parents created
    np.testing.assert_array_equal(fresh.theta, ref.theta)
    (tmp_path / "afile").write_text("")
    with pytest.raises(NotADirectoryError) as e:
        prepare_run(config, tmp_path / "afile")
    assert e.value.errno == errno.ENOTDIR and e.value.filename == str(tmp_path / "afile")
