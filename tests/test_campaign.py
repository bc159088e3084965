"""results/campaign.py: the plan (runs, order, iteration counts at equal env steps),
resume and meta-test detection on hand-made run directories, the dry run, status,
and two end-to-end runs on a tiny budget (equal env steps checked against real
training, reruns that do nothing, a failed run beside a working one, SIGTERM)."""
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from metacpo_ref.config import Config
from metacpo_ref.envs.families import FAMILIES
from metacpo_ref.run.rundir import load_checkpoint, read_metrics

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "results" / "campaign.py"
_spec = importlib.util.spec_from_file_location("campaign", SCRIPT)
campaign = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(campaign)

TINY = ["--tasks", "1", "--local-steps", "1", "--episodes", "1", "--test-tasks", "2", "--adapt-steps", "1"]


def invoke(*args):
    r = CliRunner().invoke(campaign.main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


# --- the plan ---------------------------------------------------------------------------

def test_plan_is_the_papers_setting_at_equal_env_steps(tmp_path):
    runs = campaign.plan(root=tmp_path)
    assert len(runs) == 36
    assert [r.config.family for r in runs[::12]] == ["car-circle-hazard", "point-button", "point-circle"]
    assert [(r.config.seed, r.config.algo) for r in runs[:5]] == [
        (0, "meta-cpo"), (0, "meta-trpo"), (0, "cpo"), (0, "trpo"), (1, "meta-cpo")]
    for r in runs:
        c = r.config
        # everything but the iteration count is config.py's default
        assert c == Config(family=c.family, algo=c.algo, seed=c.seed, iterations=c.iterations)
        assert (c.tasks, c.local_steps, c.hidden) == (5, 5, (32, 16))
        assert c.iterations == (50 if c.meta else 300)
        # 5 tasks x 6 batches x ~3000 steps per meta-iteration: 4.5M env steps for every run
        assert c.iterations * campaign.steps_per_iteration(c) == 4_500_000
        assert r.path == tmp_path / c.family / f"{c.algo}-s{c.seed}"
        assert r.log == tmp_path / c.family / f"{c.algo}-s{c.seed}.log"


def test_plan_selection_and_budget(tmp_path):
    budget = campaign.Budget(meta_iterations=100, local_steps=2)
    runs = campaign.plan(("point-circle", "car-circle-hazard"), ("trpo", "meta-trpo"), (2,), budget, tmp_path)
    assert [(r.config.family, r.config.algo, r.config.iterations) for r in runs] == [
        ("car-circle-hazard", "meta-trpo", 100), ("car-circle-hazard", "trpo", 300),
        ("point-circle", "meta-trpo", 100), ("point-circle", "trpo", 300)]
    steps = {r.config.algo: r.config.iterations * campaign.steps_per_iteration(r.config) for r in runs}
    assert steps["trpo"] == steps["meta-trpo"]


def test_meta_test_is_issue_29s_at_the_test_limit():
    for family in FAMILIES:   # the family's test limit (car-circle-hazard: 5), 4x evaluation episodes
        assert campaign.meta_tests(family) == (("test-eval.json", None, 4),)
    assert FAMILIES["car-circle-hazard"].cost_limit_test == 5.0


def test_the_meta_test_adapts_at_the_runs_batch_size_and_evaluates_on_4x():
    run, = campaign.plan(families=("car-circle-hazard",), algos=("cpo",), seeds=(0,),
                         budget=campaign.Budget(episodes=2))
    (name, limit, factor), = run.tests
    argv = campaign.test_argv(run, limit, factor, campaign.Budget(), "python")
    assert "--episodes" not in argv and "--cost-limit" not in argv
    assert argv[argv.index("--eval-episodes") + 1] == "8"


# --- hand-made run directories ------------------------------------------------------------

def make_run(root, family, algo, seed, iteration, steps_per_it, tests=(), time_total=3.0, config={}):
    d = root / family / f"{algo}-s{seed}"
    d.mkdir(parents=True)
    its = iteration if algo.startswith("meta-") else 300
    (d / "config.json").write_text(json.dumps(dataclasses.asdict(
        Config(family=family, algo=algo, seed=seed, iterations=its, **config))))
    np.savez(d / "checkpoint.npz", iteration=iteration, env_steps=iteration * steps_per_it)
    with open(d / "metrics.jsonl", "w") as f:
        for i in range(iteration):
            f.write(json.dumps({"iteration": i, "env_steps": (i + 1) * steps_per_it, "steps": steps_per_it,
                                "return": 1.0, "cost": 2.0, "cost_limit": 10.0, "time_total": time_total}) + "\n")
    for name, it in tests:
        (d / name).write_text(json.dumps({"family": family, "rows": [{"step": 0}], "iteration": it}))
    return d


def sleeper(run_dir):
    """A process whose command line names ``run_dir`` (as a campaign child's does),
    returned once its command line is readable (it is empty for a moment after exec)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(run_dir)])
    deadline = time.time() + 10
    while str(run_dir).encode() not in Path(f"/proc/{child.pid}/cmdline").read_bytes() and time.time() < deadline:
        time.sleep(0.01)
    return child


@pytest.fixture
def handmade(tmp_path):
    """car-circle-hazard seed 0: meta-trpo finished and meta-tested (both limits, big batch),
    trpo stopped at 7 of 300, cpo finished but tested only at limit 5 and on an older
    checkpoint and with another gamma than today's default, meta-cpo not started."""
    make_run(tmp_path, "car-circle-hazard", "meta-trpo", 0, 50, 90_000, [("test-eval.json", 50)])
    make_run(tmp_path, "car-circle-hazard", "trpo", 0, 7, 15_000)
    make_run(tmp_path, "car-circle-hazard", "cpo", 0, 300, 15_000, [("test-eval.json", 200)], config={"gamma": 0.9})
    return tmp_path


def test_resume_and_meta_test_detection(handmade):
    runs = {r.config.algo: r for r in campaign.plan(("car-circle-hazard",), seeds=(0,), root=handmade)}
    budget, py = campaign.Budget(), "python"
    todo = {a: [(s.phase, s.argv) for s in campaign.steps(r, budget, py)] for a, r in runs.items()}
    assert not campaign.needs_work(runs["meta-trpo"]) and todo["meta-trpo"] == []
    assert [p for p, _ in todo["trpo"]] == ["train", "test"]
    train = todo["trpo"][0][1]
    assert train[-1] == "--resume" and train[train.index("--iterations") + 1] == "300"
    assert train[train.index("--workers") + 1] == "1"
    assert [p for p, _ in todo["cpo"]] == ["test"]             # trained; test-eval.json is of iteration 200
    assert "--cost-limit" not in todo["cpo"][0][1]               # the family's test limit (5)
    assert [p for p, _ in todo["meta-cpo"]] == ["train", "test"]
    assert "--resume" not in todo["meta-cpo"][0][1]
    # nothing but algorithm, seed, iterations, workers and the directory: config.py decides the rest
    opts = [a for a in todo["meta-cpo"][0][1] if a.startswith("--")]
    assert opts == ["--algo", "--seed", "--iterations", "--workers", "--out"]


def test_write_test_keeps_the_older_meta_test(handmade):
    run = {r.config.algo: r for r in campaign.plan(("car-circle-hazard",), seeds=(0,), root=handmade)}["cpo"]
    old = json.loads((run.path / "test-eval.json").read_text())
    old["env_steps"] = 3_000_000
    (run.path / "test-eval.json").write_text(json.dumps(old))
    (run.path / "test-eval.json.tmp").write_text(json.dumps({"family": "car-circle-hazard", "rows": [{"step": 0}]}))
    campaign.write_test(run, "test-eval.json", 300, 4_500_000)
    new = json.loads((run.path / "test-eval.json").read_text())
    assert (new["iteration"], new["env_steps"]) == (300, 4_500_000)
    assert json.loads((run.path / "test-eval_3000k.json").read_text())["iteration"] == 200
    assert not (run.path / "test-eval.json.tmp").exists()
    assert campaign.tested(run.path, "test-eval.json", 300) and not campaign.tested(run.path, "test-eval.json", 301)


def test_dry_run(handmade):
    out = invoke("run", "--dry-run", "--families", "car-circle-hazard", "--seeds", "0", "--root", handmade)
    lines = out.splitlines()
    assert "# car-circle-hazard/meta-trpo-s0: 50/50 iterations, 90,000 env steps per iteration, done" in lines
    assert "# car-circle-hazard/trpo-s0: 7/300 iterations, 15,000 env steps per iteration" in lines
    trpo = lines[lines.index("# car-circle-hazard/trpo-s0: 7/300 iterations, 15,000 env steps per iteration") + 1]
    assert " cli.py train car-circle-hazard --algo trpo --seed 0 --iterations 300 --workers 1 --out " in trpo
    assert trpo.endswith("--resume >> " + str(handmade / "car-circle-hazard" / "trpo-s0.log") + " 2>&1")
    assert sum(" cli.py train " in ln for ln in lines) == 2      # trpo and meta-cpo
    assert sum(" cli.py test " in ln for ln in lines) == 3       # 1 each for trpo, cpo, meta-cpo
    assert any("--eval-episodes 24 > " in ln and "test-eval.json.tmp" in ln for ln in lines)
    assert any("results/summarize.py" in ln and ln.rstrip().split(">")[0].endswith("test-eval.json ") for ln in lines)
    assert any(" cli.py plot " in ln and "--test test-eval.json" in ln for ln in lines)
    assert not (handmade / "campaign.log").exists()              # a dry run writes nothing


def test_status(handmade):
    run_dir = handmade / "car-circle-hazard" / "trpo-s0"
    child = sleeper(run_dir)
    try:
        (handmade / "car-circle-hazard" / "trpo-s0.pid").write_text(f"{child.pid} train\n")
        (handmade / "car-circle-hazard" / "cpo-s0.pid").write_text(f"{os.getpid()} test\n")   # not its cmdline
        out = invoke("status", "--families", "car-circle-hazard", "--seeds", "0", "--root", handmade)
    finally:
        child.kill()
        child.wait()
    rows = {ln.split()[0]: ln for ln in out.splitlines()[2:-1]}
    assert out.splitlines()[0] == f"campaign on {handmade}: not running"
    assert rows["car-circle-hazard/meta-trpo-s0"].split()[1:5] == ["50/50", "4,500,000", "4,500,000", "yes"]
    assert rows["car-circle-hazard/meta-trpo-s0"].endswith("done")
    assert rows["car-circle-hazard/trpo-s0"].split()[1:4] == ["7/300", "105,000", "4,500,000"]
    assert rows["car-circle-hazard/trpo-s0"].endswith(f"running (train, pid {child.pid})")
    assert "test-eval@200" in rows["car-circle-hazard/cpo-s0"]
    assert rows["car-circle-hazard/cpo-s0"].endswith(
        "trained, not meta-tested; config.json differs from today's defaults in gamma")
    assert rows["car-circle-hazard/meta-cpo-s0"].endswith("not started")
    # ETA: 3 s per 15,000-step iteration (2e-4 s per step) for trpo; meta-trpo's 3 s per 90,000 steps;
    # left: trpo 4,395,000 steps + cpo's meta-test + meta-cpo's 4.5M steps + its meta-test; a meta-test
    # is per test task 5 adaptation batches and 6 evaluations of 4x the batch (test-eval.json)
    test_steps = 5 * (5 + 6 * 4) * 6 * 500
    rate_meta = 3.0 / 90_000
    left = 2e-4 * (4_395_000 + test_steps) + 2e-4 * test_steps + rate_meta * (4_500_000 + test_steps)
    assert out.splitlines()[-1].startswith(
        f"2 of 4 runs trained, 1 meta-tested; ETA {campaign.fmt_duration(left / 2)} at 2 jobs")


def test_a_run_still_worked_on_is_skipped(handmade):
    """A child of an earlier (killed) campaign still running on trpo-s0: not started twice."""
    run_dir = handmade / "car-circle-hazard" / "trpo-s0"
    child = sleeper(run_dir)
    try:
        (handmade / "car-circle-hazard" / "trpo-s0.pid").write_text(f"{child.pid} train\n")
        r = CliRunner().invoke(campaign.main, ["run", "--families", "car-circle-hazard", "--algos", "trpo",
                                               "--seeds", "0", "--root", str(handmade)])
    finally:
        child.kill()
        child.wait()
    assert r.exit_code == 1, r.output
    assert f"skip car-circle-hazard/trpo-s0: pid {child.pid} of an earlier campaign still works on it" in r.output
    assert "start " not in r.output and len(read_metrics(run_dir)) == 7


def test_bad_selection_is_one_line():
    r = CliRunner().invoke(campaign.main, ["status", "--algos", "ppo"])
    assert r.exit_code == 2 and "ppo is not valid; choose from meta-cpo, meta-trpo, cpo, trpo" in r.output


# --- end to end on a tiny budget ------------------------------------------------------------

def run_campaign(root, *args, **kw):
    return subprocess.run([sys.executable, str(SCRIPT), "run", "--root", str(root), *TINY, *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120, **kw)


def test_end_to_end_tiny(tmp_path):
    sel = ["--families", "point-circle", "--algos", "meta-trpo,trpo", "--seeds", "0", "--meta-iterations", "1"]
    r = run_campaign(tmp_path, *sel)
    assert r.returncode == 0, r.stdout + r.stderr
    fam = tmp_path / "point-circle"
    meta, base = load_checkpoint(fam / "meta-trpo-s0" / "checkpoint.npz"), load_checkpoint(fam / "trpo-s0" /
                                                                                          "checkpoint.npz")
    # equal env steps, measured: 1 meta-iteration (1 task x 2 batches) = 2 TRPO iterations (1 batch each)
    assert (meta.iteration, base.iteration) == (1, 2)
    assert meta.env_steps == base.env_steps == 2 * 500
    assert sum(row["steps"] for row in read_metrics(fam / "trpo-s0")) == 1000
    assert meta.config.tasks == 1 and meta.config.local_steps == 1 and meta.config.episodes == 1
    for algo in ("meta-trpo", "trpo"):
        doc = json.loads((fam / f"{algo}-s0" / "test-eval.json").read_text())
        assert (doc["iteration"], doc["env_steps"], len(doc["rows"]), len(doc["rows"][0]["tasks"])) == \
            ((1 if algo == "meta-trpo" else 2), 1000, 2, 2)
    assert (tmp_path / "point-circle.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "point-circle.md").read_text()
    assert "| meta-trpo | 1 | 1,000 |" in table and "| trpo | 1 | 1,000 |" in table
    # the training table once, then one meta-test table per file (test-eval.json)
    assert table.count("| algorithm | seeds | env steps |") == 1
    sections = table.split("### ")[1:]
    assert [sec.splitlines()[0] for sec in sections] == ["test-eval.json"]
    for sec in sections:
        assert "| meta-trpo | 1 | " in sec and "| trpo | 1 | " in sec
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.pid"))
    assert (fam / "trpo-s0.log").is_file()
    # run again: nothing to train or test
    dry = subprocess.run([sys.executable, str(SCRIPT), "run", "--dry-run", "--root", str(tmp_path), *TINY, *sel],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert " cli.py train " not in dry and " cli.py test " not in dry and dry.count(", done") == 2
    # a larger budget extends the finished runs with --resume
    dry = subprocess.run([sys.executable, str(SCRIPT), "run", "--dry-run", "--root", str(tmp_path), *TINY,
                          *sel[:-1], "2"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert dry.count("--resume >> ") == 2 and "--iterations 4 " in dry


def test_failed_run_and_sigterm(tmp_path):
    """trpo-s0 has a broken checkpoint: reported, while trpo-s1 trains; `stop` (SIGTERM)
    then stops trpo-s1 with its checkpoint intact, and a rerun resumes it."""
    bad = tmp_path / "point-circle" / "trpo-s0"
    bad.mkdir(parents=True)
    (bad / "checkpoint.npz").write_bytes(b"not a checkpoint")
    good = tmp_path / "point-circle" / "trpo-s1"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "run", "--root", str(tmp_path), *TINY, "--families",
                             "point-circle", "--algos", "trpo", "--seeds", "0,1", "--meta-iterations", "100"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 90
        log = tmp_path / "campaign.log"
        ready = lambda: len(read_metrics(good)) >= 2 and log.is_file() and "FAILED" in log.read_text()
        while time.time() < deadline and not ready():
            time.sleep(0.2)
        assert ready(), "trpo-s0 did not fail or trpo-s1 did not train"
        running = invoke("status", "--root", tmp_path, *TINY, "--families", "point-circle", "--algos", "trpo",
                         "--seeds", "0,1", "--meta-iterations", "100")
        assert f"running (pid {proc.pid})" in running.splitlines()[0]
        assert "running (train, pid " in running, running
        assert f"(pid {proc.pid})" in invoke("stop", "--root", tmp_path)    # SIGTERM to the campaign
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "FAILED point-circle/trpo-s0: train exited with 1" in out and "not a valid checkpoint" in out
    assert "stopped point-circle/trpo-s1 at iteration" in out
    log = (tmp_path / "campaign.log").read_text()
    assert "FAILED point-circle/trpo-s0" in log and "SIGTERM: stopping 1 children" in log
    state = load_checkpoint(good / "checkpoint.npz")
    assert 2 <= state.iteration < 200 and len(read_metrics(good)) >= state.iteration
    assert not list(tmp_path.rglob("*.pid")) and not list(tmp_path.rglob("*.tmp"))
    status = subprocess.run([sys.executable, str(SCRIPT), "status", "--root", str(tmp_path), *TINY,
                             "--families", "point-circle", "--algos", "trpo", "--seeds", "0,1",
                             "--meta-iterations", "100"], cwd=REPO, capture_output=True, text=True).stdout
    assert "checkpoint unreadable" in status and f"{state.iteration}/200" in status and "stopped" in status
    assert status.splitlines()[0].endswith("not running")
    assert CliRunner().invoke(campaign.main, ["stop", "--root", str(tmp_path)]).exit_code == 1
    dry = subprocess.run([sys.executable, str(SCRIPT), "run", "--dry-run", "--root", str(tmp_path), *TINY,
                          "--families", "point-circle", "--algos", "trpo", "--seeds", "1",
                          "--meta-iterations", "100"], cwd=REPO, capture_output=True, text=True).stdout
    assert "--iterations 200 " in dry and "--resume >> " in dry


def test_summarize_gives_each_metric_pair_of_meta_cpo_its_own_row():
    """Issue 15's 2 x 2 comparison: runs of Meta-CPO that differ only in their local
    or meta step's metric are summarised as different rows, the baselines by algorithm."""
    spec = importlib.util.spec_from_file_location("summarize", REPO / "results" / "summarize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    labels = {mod.label({"algo": "meta-cpo", "inner_metric": i, "outer_metric": o})
              for i in ("identity", "fisher") for o in ("identity", "fisher")}
    assert len(labels) == 4
    assert mod.label({"algo": "cpo", "inner_metric": "fisher", "outer_metric": "fisher"}) == "cpo"
    assert mod.label({"algo": "meta-cpo", "outer_metric": "identity"}) == "meta-cpo"   # before issue 15


def test_status_does_not_report_fields_a_run_predates(tmp_path):
    """A run whose config.json was written before a field existed (it ran with the value
    training.BEFORE_FIELD or the default gives) is not reported as differing in it; a
    real difference still is."""
    d = make_run(tmp_path, "car-circle-hazard", "trpo", 0, 7, 15_000)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["split_meta_gradient"], cfg["vf_ftol"]
    (d / "config.json").write_text(json.dumps(cfg))
    run = next(r for r in campaign.plan(("car-circle-hazard",), ("trpo",), (0,), root=tmp_path))
    assert campaign.config_changes(run) == []
    (d / "config.json").write_text(json.dumps({**cfg, "gae_lambda": 0.5}))
    assert campaign.config_changes(run) == ["gae_lambda"]


def test_summarize_local_step_table_is_the_cost_change_per_step_case():
    """What a meta algorithm's local steps did to the batch cost: batch k+1's cost minus
    batch k's, by the case step k solved, over the second half of each run's rows (a
    reference computed by hand on two seeds), and an `all` row once there are two cases."""
    spec = importlib.util.spec_from_file_location("summarize", REPO / "results" / "summarize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    early = {"tasks": [{"costs": [0.0, 100.0, 0.0], "cases": ["trust", "recovery"]}]}
    seed0 = [early, {"tasks": [{"costs": [10.0, 4.0, 6.0], "cases": ["recovery", "trust"]},
                               {"costs": [1.0, 2.0, 3.0], "cases": ["trust", "trust"]}]}]
    seed1 = [early, {"tasks": [{"costs": [5.0, 2.0, 1.0], "cases": ["recovery", "recovery"]}]}]
    assert dict(mod.local_step_changes(seed0[1:])) == {"recovery": [-6.0], "trust": [2.0, 1.0, 1.0]}
    lines = mod.local_step_table({"meta-cpo": [seed0, seed1], "cpo": [[{"tasks": [{"params": {}}]}]]})
    rows = {tuple(c.strip() for c in ln.split("|")[1:3]): [c.strip() for c in ln.split("|")[3:6]]
            for ln in lines if ln.startswith("| meta-cpo")}
    # recovery: seed 0 mean -6 (1 of 1 falls), seed 1 mean -2 (2 of 2): -4 ± 2
    assert rows[("meta-cpo", "recovery")] == ["3", "-4.00 ± 2.00", "1.00 ± 0.00"]
    assert rows[("meta-cpo", "trust")] == ["3", "1.33", "0.00"]            # seed 0 only
    # all: seed 0 [2, 1, 1, -6] mean -0.5, 1 of 4 falls; seed 1 [-3, -1] mean -2, 2 of 2
    assert rows[("meta-cpo", "all")] == ["6", "-1.25 ± 0.75", mod.mean_se([0.25, 1.0])]
    assert not any(ln.startswith("| cpo") for ln in lines)


def test_summarize_counts_test_tasks_within_the_limit():
    """Per adaptation step, the (seed, task) pairs whose batch cost is at or under that
    row's limit (a hand count: a cost equal to the limit is within it)."""
    spec = importlib.util.spec_from_file_location("summarize", REPO / "results" / "summarize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def rows(*costs_per_step, limit=5.0):
        return [{"cost_limit": limit, "tasks": [{"cost": c} for c in costs]} for costs in costs_per_step]

    seed0 = rows([4.0, 5.0, 6.0], [7.0, 8.0, 9.0])
    seed1 = rows([0.0, 10.0, 10.0], [1.0, 2.0, 5.5])
    assert mod.tasks_within([seed0, seed1], 1) == [(3, 6), (2, 6)]
    assert mod.tasks_within([rows([9.0], [11.0], limit=10.0)], 1) == [(1, 1), (0, 1)]


def test_summarize_measures_table_has_every_measure_at_k0_and_kK_and_the_random_row(tmp_path, capsys):
    """Issue 29's table: per algorithm, k = 0 and k = K, return and the three cost measures,
    mean ± s.e. over seeds (a hand computation), and a random policy's row with its s.e.
    over test tasks; meta-tests of the old protocol (no discounted measure) give no table."""
    spec = importlib.util.spec_from_file_location("summarize", REPO / "results" / "summarize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    keys = ("return", "cost_episode", "cost_discounted", "cost_authors")

    def doc(values_per_step):   # one task per row, with the row's values; limit 4.5
        return {"rows": [{**{k: v + i for i, k in enumerate(keys)}, **{k + "_se": 0.5 for k in keys},
                          "cost_limit": 4.5, "tasks": [{k: v + i for i, k in enumerate(keys)}]}
                         for v in values_per_step]}

    dirs = []
    for seed, values in enumerate(([1.0, 2.0, 3.0], [3.0, 4.0, 9.0])):
        d = tmp_path / f"cpo-s{seed}"
        d.mkdir()
        (d / "test-eval.json").write_text(json.dumps(doc(values)))
        dirs.append(d)
    (tmp_path / "random.json").write_text(json.dumps(doc([7.0])))
    mod.measures_table({"cpo": dirs}, "test-eval.json", tmp_path / "random.json")
    out = capsys.readouterr().out
    first, second = out.split("(Seed, task) pairs at or under the limit 4.5")
    lines = [ln for ln in first.splitlines() if ln.startswith("| ")]
    cells = {ln.split("|")[1].strip() + "/" + ln.split("|")[3].strip(): [c.strip() for c in ln.split("|")[4:8]]
             for ln in lines[1:]}
    # pairs under 4.5: k = 0 episode costs 2 and 4 (both), discounted 3 and 5 (one), authors' 4 and 6 (one)
    within = {ln.split("|")[1].strip() + "/" + ln.split("|")[2].strip(): [c.strip() for c in ln.split("|")[3:6]]
              for ln in second.splitlines()[3:] if ln.startswith("| ")}
    assert within["cpo/0"] == ["2 of 2", "1 of 2", "1 of 2"]
    assert within["cpo/2"] == ["1 of 2", "0 of 2", "0 of 2"]   # k = 2: episode costs 4 and 10
    assert within["uniformly random policy/-"] == ["0 of 1", "0 of 1", "0 of 1"]
    # k = 0: seeds 1 and 3 -> 2 ± 1; k = 2: 3 and 9 -> 6 ± 3 (each measure offset by its index)
    assert cells["cpo/0"] == ["2.00 ± 1.00", "3.00 ± 1.00", "4.00 ± 1.00", "5.00 ± 1.00"]
    assert cells["cpo/2"] == ["6.00 ± 3.00", "7.00 ± 3.00", "8.00 ± 3.00", "9.00 ± 3.00"]
    assert cells["uniformly random policy/-"] == ["7.00 ± 0.50*", "8.00 ± 0.50*", "9.00 ± 0.50*", "10.00 ± 0.50*"]
    (dirs[0] / "old.json").write_text(json.dumps({"rows": [{"return": 1.0, "cost": 2.0}]}))
    mod.measures_table({"cpo": dirs[:1]}, "old.json")
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("name, field, value, flag", [("meta-cpo-fs5", "fisher_subsample", 5, "--fisher-subsample"),
                                                      ("meta-cpo-vf3", "vf_ftol", 1e-3, "--vf-ftol"),
                                                      ("meta-cpo-warm", "replay_warm_start", True, None)])
def test_the_speed_variants_differ_from_ours_in_their_setting_alone(tmp_path, name, field, value, flag):
    """Issue 34's learning comparisons: ``meta-cpo-fs5`` is ``meta-cpo`` with
    ``--fisher-subsample 5``, ``meta-cpo-vf3`` with ``--vf-ftol 1e-3``, ``meta-cpo-warm`` with
    ``--replay-warm-start``, and nothing else, so
    their runs compare with the campaign's; the CLI parses the flag back to the value."""
    ours, variant = campaign.plan(("point-circle",), ("meta-cpo", name), (2,), root=tmp_path)
    assert variant.path == tmp_path / "point-circle" / f"{name}-s2"
    assert getattr(variant.config, field) == value
    assert dataclasses.replace(variant.config, **{field: getattr(ours.config, field)}) == ours.config
    a, b = campaign.train_argv(ours, "python"), campaign.train_argv(variant, "python")
    if flag is None:   # a boolean: one flag, --replay-warm-start
        i = b.index("--" + field.replace("_", "-"))
        b = b[:i] + b[i + 1:]
    else:
        i = b.index(flag)
        assert type(value)(b[i + 1]) == value
        b = b[:i] + b[i + 2:]
    b[b.index("--out") + 1] = a[a.index("--out") + 1]
    assert b == a


def test_the_papers_meta_cpo_is_a_campaign_algorithm(tmp_path):
    """Issue 30: ``meta-cpo-paper`` runs Meta-CPO with the paper's Euclidean steps and the
    exact eq. 9 step above the limit, in its own directory, trained with those flags and
    today's defaults otherwise (the discounted cost measure, the paper's car walls)."""
    runs = campaign.plan(("car-circle-hazard",), ("meta-cpo", "meta-cpo-paper"), (1,), root=tmp_path)
    ours, paper = runs
    assert paper.path == tmp_path / "car-circle-hazard" / "meta-cpo-paper-s1"
    assert (paper.config.inner_metric, paper.config.outer_metric, paper.config.recover_above_limit) == \
        ("identity", "identity", False)
    assert (ours.config.inner_metric, ours.config.recover_above_limit) == ("fisher", True)
    assert (paper.config.cost_measure, paper.config.car_walls) == ("discounted", "paper")
    argv = campaign.train_argv(paper, "python")
    assert argv[argv.index("--algo") + 1] == "meta-cpo"
    assert {"--inner-metric", "--outer-metric", "--exact-cpo-above-limit"} <= set(argv)
    assert argv[argv.index("--inner-metric") + 1] == argv[argv.index("--outer-metric") + 1] == "identity"
    assert campaign.variant_flags(ours.config) == []
    # the CLI builds the same config from those flags: the campaign sees no difference
    from click.testing import CliRunner

    from cli import main
    out = tmp_path / "cli-run"
    flags = argv[argv.index("--algo"):argv.index("--workers")]   # a later --iterations wins
    r = CliRunner().invoke(main, ["train", "car-circle-hazard", *flags,
                                  "--iterations", "1", "--tasks", "1", "--local-steps", "1",
                                  "--episodes", "1", "--workers", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    stored = json.loads((out / "config.json").read_text())
    assert (stored["inner_metric"], stored["outer_metric"], stored["recover_above_limit"]) == \
        ("identity", "identity", False)
    spec = importlib.util.spec_from_file_location("summarize", REPO / "results" / "summarize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.label(stored) == "meta-cpo, paper's setting (H = I, exact eq. 9)"


def test_summarize_welch_is_the_two_sided_unequal_variance_test_over_seed_means(tmp_path, capsys):
    """Welch's t from its definition (t = (ma - mb) / sqrt(va/na + vb/nb), Welch-Satterthwaite
    degrees of freedom, two-sided p), and the table compares Meta-CPO with CPO and Meta-TRPO
    at k = 0 and K over the seeds' row values."""
    from scipy.stats import t as student

    spec = importlib.util.spec_from_file_location("summarize", REPO / "results" / "summarize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a, b = [1.0, 2.0, 3.0], [4.0, 6.0, 8.0]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    diff, p = mod.welch(a, b)
    assert diff == -4.0 and p == pytest.approx(2 * student.sf(abs(t), df), rel=1e-9) and 0.04 < p < 0.07
    assert np.isnan(mod.welch([1.0], b)[1])

    def seed(values):   # k = 0 and k = 1 rows with every measure = values[k]
        return {"rows": [{"return": v, "cost_episode": v, "cost_discounted": v / 10} for v in values]}

    dirs = {}
    for algo, seeds in (("meta-cpo", [[1, 1], [2, 2], [3, 3]]), ("cpo", [[4, 4], [6, 6], [8, 8]]),
                        ("meta-cpo (x=2)", [[4, 4], [6, 6], [8, 8]])):
        dirs[algo] = []
        for i, values in enumerate(seeds):
            d = tmp_path / f"{algo}-s{i}"
            d.mkdir()
            (d / "t.json").write_text(json.dumps(seed(values)))
            dirs[algo].append(d)
    mod.welch_table(dirs, "t.json")
    out = capsys.readouterr().out.splitlines()
    lines = [ln for ln in out if ln.startswith("| meta-cpo vs cpo")]
    assert len(lines) == 2 and all(f"-4.00 (p = {p:.2g})" in ln for ln in lines)
    assert "-0.40" in lines[0]
    # Meta-CPO's variants against each other, in the order their runs are listed
    lines = [ln for ln in out if ln.startswith("| meta-cpo vs meta-cpo (x=2)")]
    assert len(lines) == 2 and all(f"-4.00 (p = {p:.2g})" in ln for ln in lines)


def test_the_results_page_carries_the_second_campaigns_tables_as_summarize_prints_them():
    """docs/results.md's tables of a finished second-campaign family are summarize.py's output
    on the committed run directories, row for row (no number typed by hand)."""
    page = (REPO / "docs" / "results.md").read_text()
    for family, start, end, n in (("car-circle-hazard", "### Car-Circle-Hazard, the paper's walls",
                                   "**Verdict (car, the paper's", 30),
                                  ("point-button", "### Point-Button (train and test", "**Verdict (point-button", 11),
                                  ("point-circle", "### Point-Circle (train and test", "**Verdict (point-circle", 11)):
        out = subprocess.run([sys.executable, "results/summarize.py", f"results/campaign2/{family}",
                              "test-eval.json"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        section = page[page.index(start):page.index(end)]
        rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
        assert len(rows) >= n, family
        assert [r for r in rows if r not in out.splitlines()] == [], family


def test_the_results_pages_glance_table_is_summarize_glance_of_the_three_families():
    """The verdicts-at-a-glance rows at the top of docs/results.md are ``summarize.py
    --glance`` of the committed second-campaign runs, cell for cell but the verdict."""
    page = (REPO / "docs" / "results.md").read_text()
    start = page.index("**Verdicts at a glance, under the paper's definitions**")
    table = [ln for ln in page[start:page.index("**The campaign**")].splitlines() if ln.startswith("| ")]
    expected = []
    for family in ("car-circle-hazard", "point-button", "point-circle"):
        out = subprocess.run([sys.executable, "results/summarize.py", f"results/campaign2/{family}", "--glance",
                              "test-eval.json"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        rows = [ln for ln in out.splitlines() if ln.startswith("| ")]
        expected += rows[1:] if expected else rows   # one header
    assert len(table) == len(expected) == 7
    cut = [ln.rsplit(" | ", 1)[0] for ln in table]   # without the verdict column
    assert cut == [ln.rsplit(" | ", 1)[0] for ln in expected]
    assert all(ln.rsplit(" | ", 1)[1].strip(" |") for ln in table)   # and every row has its verdict


def test_summarize_names_the_measure_of_runs_trained_under_another(tmp_path, capsys):
    """The training table's cost of an algorithm whose runs were trained under another cost
    measure than most (the first campaign's TRPO beside the second's runs) says which."""
    spec = importlib.util.spec_from_file_location("summarize", REPO / "results" / "summarize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for algo, measure in (("meta-cpo", "discounted"), ("cpo", "discounted"), ("trpo", None)):
        d = tmp_path / f"{algo}-s0"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"family": "point-circle", "algo": algo, "seed": 0}))
        row = {"iteration": 0, "env_steps": 100, "return": 1.0, "cost": 2.0, "cost_limit": 10.0, "steps": 100}
        (d / "metrics.jsonl").write_text(json.dumps({**row, **({"cost_measure": measure} if measure else {})}) + "\n")
    mod.main(str(tmp_path), "none.json")
    out = capsys.readouterr().out.splitlines()
    rows = {ln.split(" | ")[0].strip("| "): ln for ln in out if ln.startswith("| ") and "env steps" not in ln}
    assert rows["trpo"].rstrip(" |").endswith("2.00 (undiscounted cost)")
    assert rows["cpo"].rstrip(" |").endswith("2.00") and rows["meta-cpo"].rstrip(" |").endswith("2.00")


def test_the_glance_rows_are_the_means_pairs_under_and_welch_of_the_run_directories(tmp_path, capsys):
    """``summarize.py ROOT --glance``: per measure, each algorithm's k = 0 -> K mean over
    seeds with the (seed, task) pairs under the test limit at K, TRPO / Meta-TRPO at K,
    each Meta-CPO minus CPO at K with Welch's p, the returns at K."""
    spec = importlib.util.spec_from_file_location("summarize", REPO / "results" / "summarize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fisher = {"inner_metric": "fisher", "outer_metric": "fisher", "recover_above_limit": True}
    paper = {"inner_metric": "identity", "outer_metric": "identity", "recover_above_limit": False}
    base = {"meta-cpo-s": ("meta-cpo", fisher, 2.0), "meta-cpo-paper-s": ("meta-cpo", paper, 6.0),
            "cpo-s": ("cpo", {}, 4.0), "trpo-s": ("trpo", {}, 20.0), "meta-trpo-s": ("meta-trpo", {}, 30.0)}
    for name, (algo, extra, v) in base.items():
        for seed in (0, 1):
            d = tmp_path / f"{name}{seed}"
            d.mkdir()
            (d / "config.json").write_text(json.dumps({"family": "point-circle", "algo": algo, "seed": seed,
                                                       **extra}))
            (d / "metrics.jsonl").write_text(json.dumps({"iteration": 0, "env_steps": 1, "return": 0.0, "cost": 0.0,
                                                         "cost_limit": 10.0, "steps": 1}) + "\n")
            rows = [{"return": v + k, "cost_discounted": v + seed + k, "cost_episode": 10 * (v + seed), "cost_limit": 5.0,
                     "tasks": [{"cost_discounted": v + seed + k, "cost_episode": 0.0}]} for k in (0, 1)]
            (d / "test-eval.json").write_text(json.dumps({"rows": rows}))
    mod.main(str(tmp_path), "--glance", "test-eval.json")
    rows = [ln.split(" | ") for ln in capsys.readouterr().out.splitlines() if ln.startswith("| point-circle")
            or ln.startswith("|  |")]
    assert len(rows) == 2
    jc, ep = rows
    assert jc[0] == "| point-circle (10 / 5)" and jc[1] == "discounted J_C"
    # ours: seeds 2.5 at k = 0 and 3.5 at k = 1; pairs (2 + 1, 3 + 1) under 5: both
    assert jc[2:5] == ["2.50 -> 3.50 (2 of 2)", "6.50 -> 7.50 (0 of 2)", "4.50 -> 5.50 (1 of 2)"]
    assert jc[5:7] == ["21.5 / 31.5", "-"]
    p = mod.welch([3.0, 4.0], [5.0, 6.0])[1]   # k = 1, per-seed means of ours and CPO
    assert jc[7] == f"-2.00 (p = {p:.2g})" and jc[8] == f"+2.00 (p = {p:.2g})" and 0.05 < p < 0.2
    assert jc[9] == "3.00 / 7.00 / 5.00"
    assert ep[2] == "25.0 -> 25.0 (2 of 2)"   # each task's cost per episode is 0


def test_summarize_names_a_compared_setting_only_where_a_run_differs_from_the_default():
    """The fisher-subsample comparison's rows: ``meta-cpo-fs5`` runs get their own row,
    named by the setting; the campaign's runs (default, or predating the field) do not."""
    spec = importlib.util.spec_from_file_location("summarize", REPO / "results" / "summarize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ours = {"algo": "meta-cpo", "inner_metric": "fisher", "outer_metric": "fisher", "recover_above_limit": True}
    assert mod.label(ours) == mod.label({**ours, "fisher_subsample": 1}) == "meta-cpo, ours (Fisher metric, recover rule)"
    assert mod.label({**ours, "fisher_subsample": 5}) == "meta-cpo, ours (Fisher metric, recover rule), fisher_subsample 5"
    assert mod.label({**ours, "vf_ftol": 1e-4}).endswith(", vf_ftol 0.0001")
    assert mod.label({"algo": "cpo", "fisher_subsample": 5}) == "cpo, fisher_subsample 5"
    assert mod.label({"algo": "cpo"}) == "cpo"


def test_summarize_without_a_family_folder_says_what_to_give():
    """No argument: usage (exit 2); a path that is not a folder: one line naming it (exit 1),
    not a traceback; --help: the module's text (exit 0)."""
    def run(*args):
        return subprocess.run([sys.executable, "results/summarize.py", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
    res = run()
    assert res.returncode == 2 and res.stdout.startswith("usage: python results/summarize.py")
    res = run("results/no-such-family")
    assert res.returncode == 1 and res.stderr.splitlines() == [
        "Error: results/no-such-family is not a directory; give a family's folder of run directories, "
        "e.g. results/campaign2/point-circle"]
    res = run("--help")
    assert res.returncode == 0 and "Markdown tables" in res.stdout
