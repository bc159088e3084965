"""End to end: tiny training runs of every algorithm, exact resume, safe checkpoints,
meta-testing, and clear errors."""
import dataclasses
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from metacpo_ref.config import Config
from metacpo_ref.envs import make_env, sample_tasks, train_tasks
from metacpo_ref.algos.iteration import TaskJob, inner_loop
from metacpo_ref.envs.rollouts import NormalizedEnv, task_seed
from metacpo_ref.run.evaluation import load_policy, meta_test
from metacpo_ref.run.rundir import CheckpointError, State, load_checkpoint, read_metrics, save_checkpoint
from metacpo_ref.run.training import initial_state, prepare_run, train

TINY = dict(family="point-circle", tasks=2, local_steps=1, episodes=1, iterations=1, hidden=(8,))


def _strip(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


@pytest.mark.parametrize("algo", ["meta-cpo", "meta-trpo", "cpo", "trpo"])
def test_one_iteration_each_algorithm(tmp_path, algo):
    cfg = Config(algo=algo, **TINY)
    state = train(cfg, tmp_path)
    assert state.iteration == 1
    rows = read_metrics(tmp_path)
    assert len(rows) == 1
    row = rows[0]
    assert row["iteration"] == 0 and row["env_steps"] == row["steps"] > 0
    assert np.isfinite(row["return"]) and row["cost"] >= 0 and row["cost_limit"] == 10.0
    assert row["time_env"] > 0 and row["time_learner"] > 0
    # the time split of issue 18: each task's inner loop, the tasks' wall time, the main
    # process's step and the value refit, which the learner time adds up
    assert len(row["time_per_task"]) == cfg.tasks and min(row["time_per_task"]) > 0
    assert sum(row["time_per_task"]) == pytest.approx(row["time_env"] + row["time_learner"]
                                                      - row["time_step"] - row["time_refit"], rel=1e-9)
    assert 0 < row["time_tasks"] < row["time_total"]
    assert 0 < row["time_step"] < row["time_total"] and 0 < row["time_refit"] < row["time_total"]
    assert sum(row["cases"].values()) == (2 if algo.startswith("meta") else 1)
    if algo in ("meta-trpo", "trpo"):
        assert set(row["cases"]) == {"trust"}
    # what every step decided: case, multipliers lam and nu (None: recovery has no nu)
    if algo.startswith("meta"):
        for t in row["tasks"]:
            assert len(t["cases"]) == len(t["lams"]) == len(t["nus"]) == len(t["betas"]) == 1
            assert t["lams"][0] > 0 and (t["nus"][0] is None) == (t["cases"][0] == "recovery")
        assert row["outer_lam"] > 0 and (row["outer_nu"] is None) == (row["outer_case"] == "recovery")
        assert sorted(c for t in row["tasks"] for c in t["cases"]) == sorted(
            c for c, n in row["cases"].items() for _ in range(n))
    else:
        assert row["lam"] > 0 and (row["nu"] is None) == ("recovery" in row["cases"])
        assert 0 <= row["beta"] <= 1   # the baselines' accepted line-search fraction is recorded
        assert all(set(t) == {"params", "returns", "costs", "costs_episode"} for t in row["tasks"])
    if algo.endswith("trpo"):
        assert (row["outer_nu"] if algo == "meta-trpo" else row["nu"]) == 0.0
    assert json.loads((tmp_path / "config.json").read_text())["algo"] == algo
    np.testing.assert_array_equal(state.theta, train(cfg, tmp_path / "again").theta)   # seeded


def test_resume_equals_uninterrupted(tmp_path):
    cfg = Config(**{**TINY, "iterations": 2})
    full = train(cfg, tmp_path / "full")
    train(Config(**{**TINY, "iterations": 1}), tmp_path / "split")
    # an interrupted iteration may have left a metrics row past the checkpoint: it is dropped
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": 1, "stale": True}) + "\n{torn")
    resumed = train(cfg, tmp_path / "split", resume=True)
    np.testing.assert_array_equal(full.theta, resumed.theta)
    np.testing.assert_array_equal(full.vf[0], resumed.vf[0])
    assert _strip(read_metrics(tmp_path / "full")) == _strip(read_metrics(tmp_path / "split"))


RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.mark.parametrize("run", ["point-circle/cpo-s0", "point-circle/meta-cpo-s0"])
def test_committed_run_from_before_the_kl_delta_split_loads_and_resumes(tmp_path, run):
    """Every committed run's config has "kl_delta", which did two jobs; it loads into
    both fields that took them over, so the run resumes with the same settings."""
    src = RESULTS / run
    old = json.loads((src / "config.json").read_text())
    assert "kl_delta" in old and "baseline_delta" not in old
    state = load_checkpoint(src / "checkpoint.npz")
    assert state.config.baseline_delta == state.config.ls_kl == old["kl_delta"]
    assert not hasattr(state.config, "kl_delta")
    shutil.copytree(src, tmp_path / "run")
    cfg = Config(family="point-circle", algo=old["algo"], tasks=old["tasks"], local_steps=old["local_steps"],
                 episodes=old["episodes"], seed=old["seed"], iterations=old["iterations"] + 1,
                 recover_above_limit=False, inner_metric="identity", outer_metric=old["outer_metric"],
                 split_meta_gradient=False, cost_measure="episode", car_walls="stock")
    # (what runs before those fields ran with: training.BEFORE_FIELD)
    assert state.config.recover_above_limit is False and state.config.task is None
    assert state.config.split_meta_gradient is False
    assert (state.config.cost_measure, state.config.car_walls) == ("episode", "stock")
    resumed = prepare_run(cfg, tmp_path / "run", resume=True)   # refuses any config change but iterations
    np.testing.assert_array_equal(resumed.theta, state.theta)
    assert resumed.iteration == state.iteration == old["iterations"]
    new = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "kl_delta" not in new and new["baseline_delta"] == new["ls_kl"] == old["kl_delta"]
    with pytest.raises(CheckpointError, match="ls_kl 0.01 -> 0.02"):
        prepare_run(Config(**{**cfg.__dict__, "ls_kl": 0.02}), tmp_path / "run", resume=True)


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    cfg = Config(**TINY)
    state = train(cfg, tmp_path)
    path = tmp_path / "checkpoint.npz"

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, State(cfg, state.theta + 1, state.vf, state.obs_norm, 5, 0))
    monkeypatch.undo()
    again = load_checkpoint(path)
    np.testing.assert_array_equal(again.theta, state.theta)
    assert again.iteration == 1


def test_bad_checkpoints_and_names(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a valid checkpoint"):
        load_checkpoint(tmp_path / "bad.npz")
    cfg = Config(**TINY)
    state = train(cfg, tmp_path / "run")
    with pytest.raises(CheckpointError, match="'point-circle' checkpoint, not 'point-button'"):
        load_checkpoint(tmp_path / "run" / "checkpoint.npz", family="point-button")
    wrong = State(Config(**{**TINY, "hidden": (4,)}), state.theta, state.vf, state.obs_norm, 1, 0)
    save_checkpoint(tmp_path / "wrong.npz", wrong)
    with pytest.raises(CheckpointError, match="parameters"):
        load_checkpoint(tmp_path / "wrong.npz")
    with pytest.raises(CheckpointError, match="already has a checkpoint"):
        train(cfg, tmp_path / "run")
    with pytest.raises(CheckpointError, match="different config: seed 0 -> 1"):
        train(Config(**{**TINY, "seed": 1}), tmp_path / "run", resume=True)
    with pytest.raises(ValueError, match="valid: meta-cpo, meta-trpo, cpo, trpo"):
        Config(algo="ppo")
    with pytest.raises(ValueError, match="valid names"):
        Config(family="ant-circle")
    runner = CliRunner()
    res = runner.invoke(cli.main, ["train", "ant-circle"])
    assert res.exit_code == 2 and "point-circle" in res.output
    res = runner.invoke(cli.main, ["test", "point-button", "--checkpoint", str(tmp_path / "run" / "checkpoint.npz")])
    assert res.exit_code == 1 and "not 'point-button'" in res.output


def test_meta_test_rows_and_api(tmp_path):
    cfg = Config(**TINY)
    train(cfg, tmp_path)
    ckpt = tmp_path / "checkpoint.npz"
    rows = meta_test(ckpt, "point-circle", n_tasks=2, adapt_steps=2, episodes=1)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert np.isfinite(r["return"]) and r["cost"] >= 0 and 0 <= r["cost_rate"] <= 1
        assert len(r["tasks"]) == 2 and r["cost_limit"] == 10.0
        test_params = [t.params for t in sample_tasks("point-circle", 2, "test", seed=0)]
        assert [t["params"] for t in r["tasks"]] == test_params
    assert meta_test(ckpt, "point-circle", 2, 1, 1)[1] == meta_test(ckpt, "point-circle", 2, 1, 1)[1]
    act = load_policy(ckpt)
    assert act(np.zeros(28)).shape == (2,)
    res = CliRunner().invoke(cli.main, ["test", "point-circle", "--checkpoint", str(ckpt), "--adapt-steps", "1",
                                        "--tasks", "2", "--episodes", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output)["rows"]) == 2


def test_cli_train_and_resume(tmp_path):
    runner = CliRunner()
    args = ["train", "point-circle", "--tasks", "2", "--local-steps", "1", "--episodes", "1",
            "--out", str(tmp_path / "run")]
    res = runner.invoke(cli.main, args + ["--iterations", "1"])
    assert res.exit_code == 0, res.output
    assert "done: iteration 0" in res.output
    res = runner.invoke(cli.main, args + ["--iterations", "1"])
    assert res.exit_code == 1 and "--resume" in res.output
    res = runner.invoke(cli.main, args + ["--iterations", "2", "--resume"])
    assert res.exit_code == 0 and "done: iteration 1" in res.output
    assert len(read_metrics(tmp_path / "run")) == 2


# A committed run made with each OpenBLAS kernel (docs/results.md: the kernels round
# differently, so a run's batches are reproduced to the last digit with its own kernel only).
RUN_BY_KERNEL = {"Haswell": "campaign/point-button/meta-cpo-s0", "Prescott": "point-circle/meta-cpo-s0"}


def test_initial_state_reproduces_a_committed_runs_start():
    """A committed run starts from its seed's initial state: ``initial_state`` of its
    config gives the normaliser frozen in its checkpoint, and the first task's first local
    step from that ``theta`` and those value functions reproduces the returns and costs its
    first metrics row recorded for the pre-adaptation batch and the batch after the step
    (exactly, with the run made with this machine's BLAS kernel; the normaliser, which
    uses no BLAS, of both runs)."""
    import threadpoolctl
    starts = {}
    for name in RUN_BY_KERNEL.values():
        stored = load_checkpoint(RESULTS / name / "checkpoint.npz")
        starts[name] = start = initial_state(stored.config)
        np.testing.assert_array_equal(start.obs_norm.mean, stored.obs_norm.mean)
        np.testing.assert_array_equal(start.obs_norm.std, stored.obs_norm.std)
        assert (start.iteration, start.env_steps) == (0, 0)
    kernel = threadpoolctl.threadpool_info()[0].get("architecture")
    if kernel not in RUN_BY_KERNEL:   # this machine's kernel made no committed run: pin Haswell's, in a child
        assert "OPENBLAS_CORETYPE" not in os.environ, f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} " \
                                                      f"gave the {kernel} kernel, not one of {sorted(RUN_BY_KERNEL)}"
        test = f"{Path(__file__).resolve()}::{inspect.currentframe().f_code.co_name}"
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                             env={**os.environ, "OPENBLAS_CORETYPE": "Haswell"}, capture_output=True, text=True,
                             cwd=RESULTS.parent)
        assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]
        return
    src = RESULTS / RUN_BY_KERNEL[kernel]
    start = starts[RUN_BY_KERNEL[kernel]]
    config = start.config
    row = read_metrics(src)[0]["tasks"][0]
    task = train_tasks(config.family, config.tasks, task_seed(config.seed, 0), config.task)[0]
    assert task.params == row["params"]
    run = inner_loop(NormalizedEnv(make_env(config.family), start.obs_norm),
                     TaskJob(task, 0, start.theta, start.vf, config, 0, 1))
    np.testing.assert_allclose(run.returns, row["returns"][:2], rtol=1e-9)
    np.testing.assert_allclose(run.costs, row["costs"][:2], rtol=0, atol=1e-9)


@pytest.mark.parametrize("algo", ["meta-cpo", "cpo"])
def test_each_iteration_appends_its_row_then_checkpoints_the_next_state(tmp_path, algo):
    """run_iterations from a state with env steps already counted: each yielded row is
    appended to metrics.jsonl (which then holds every row so far), and the checkpoint then
    holds the next iteration, the env steps so far (the state's plus every row's ``steps``),
    and the theta and value functions of the algorithm's iteration (meta_iteration or
    baseline_iteration, called here on the previous checkpoint's)."""
    from metacpo_ref.algos.baselines import baseline_iteration
    from metacpo_ref.algos.meta import meta_iteration
    from metacpo_ref.run.training import run_iterations
    from metacpo_ref.envs.workers import Workers
    cfg = Config(**{**TINY, "algo": algo, "iterations": 2})
    start = dataclasses.replace(prepare_run(cfg, tmp_path), env_steps=1000)
    iterate = meta_iteration if cfg.meta else baseline_iteration
    prev, steps, rows = start, 1000, []
    with Workers(cfg.family, start.obs_norm, 1) as w:
        for row in run_iterations(start, tmp_path):
            rows.append(row)
            steps += row["steps"]
            assert read_metrics(tmp_path) == json.loads(json.dumps(rows))   # appended, none lost
            ck = load_checkpoint(tmp_path / "checkpoint.npz")
            assert (ck.iteration, ck.env_steps, row["env_steps"]) == (row["iteration"] + 1, steps, steps)
            theta, vf, _ = iterate(prev.theta, prev.vf, cfg, row["iteration"], w)
            np.testing.assert_array_equal(ck.theta, theta)
            for a, b in zip(ck.vf, vf):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(ck.obs_norm.mean, start.obs_norm.mean)
            prev = ck
    assert [r["iteration"] for r in rows] == [0, 1] and rows[0]["steps"] > 0


def test_training_runs_on_the_workers_it_is_given(tmp_path, monkeypatch):
    """train hands its worker count, backend and Ray address, the family and the run's
    normaliser to the workers that run its iterations (results do not depend on them,
    test_workers, so only this shows they arrive)."""
    import metacpo_ref.run.training as training_module
    from metacpo_ref.envs.workers import Workers
    made = []

    class Spy(Workers):
        def __init__(self, *args, **kwargs):
            made.append((args, kwargs))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(training_module, "Workers", Spy)
    cfg = Config(**TINY)
    state = train(cfg, tmp_path, workers=2, backend="process", ray_address="127.0.0.1:1")   # ignored by processes
    [(args, kwargs)] = made
    got = inspect.signature(Workers).bind(*args, **kwargs).arguments
    assert {k: got.get(k) for k in ("family", "n", "backend", "ray_address")} == {
        "family": "point-circle", "n": 2, "backend": "process", "ray_address": "127.0.0.1:1"}
    np.testing.assert_array_equal(got["obs_norm"].mean, state.obs_norm.mean)
    np.testing.assert_array_equal(got["obs_norm"].std, state.obs_norm.std)
