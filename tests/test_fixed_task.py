"""Training on one fixed task (``--task``).

References are independent of the training code: the tasks a run trains on
are read back from its metrics rows, the normaliser is refitted here from
random-policy episodes of the fixed task.
"""
import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from metacpo_ref.config import OBS_NORM_EPISODES, OBS_STD_FLOOR, Config
from metacpo_ref.envs.families import FAMILIES
from metacpo_ref.envs import Task, make_env, parse_task, train_tasks
from metacpo_ref.envs.rollouts import batch_seed, collect, fit_obs_norm, random_act
from metacpo_ref.run.rundir import load_checkpoint, read_metrics
from metacpo_ref.run.training import NORM_ITERATION, initial_state, train


STOCK = {"radius": 1.5, "wall_factor": 0.75}     # Safety-Gymnasium's SafetyPointCircle1-v0
TINY = dict(family="point-circle", tasks=2, local_steps=1, episodes=1, iterations=2, hidden=(8,))


def test_parse_task_full_and_partial():
    assert parse_task("point-circle", "radius=1.5,wall_factor=0.75").params == STOCK
    # unnamed parameters: the middle of their train range
    t = parse_task("point-button", " num_buttons = 4 ")
    assert t.params == {"num_buttons": 4, "num_hazards": 4, "extent": 1.875}
    assert isinstance(t.params["num_buttons"], int)
    assert parse_task("car-circle-hazard", "num_hazards=10,radius=1.3").params == {
        "radius": 1.3, "num_hazards": 10, "wall_factor": 0.7}
    assert parse_task("car-circle-hazard", "num_hazards=10,radius=1.3", "stock").params == {
        "radius": 1.3, "num_hazards": 10}


@pytest.mark.parametrize("text, words", [
    ("radius=1.5,colour=2", ["no task parameter 'colour'", "radius", "wall_factor"]),
    ("radius=9", ["radius=9.0 is outside", "[1.0, 1.5]"]),
    ("radius", ["KEY=VALUE"]),
    ("radius=1.5,,", ["KEY=VALUE"]),
    ("=1.5", ["KEY=VALUE"]),
    ("radius=abc", ["'abc' is not a number"]),
    ("radius=nan", ["must be finite"]),
    ("radius=inf", ["must be finite"]),
])
def test_parse_task_refuses_bad_text(text, words):
    with pytest.raises(ValueError) as e:
        parse_task("point-circle", text)
    for w in words:
        assert w in str(e.value)


def test_parse_task_refuses_fractional_integer():
    with pytest.raises(ValueError, match="must be an integer"):
        parse_task("point-button", "num_hazards=3.5")


def test_train_tasks_fixed_and_sampled():
    fixed = train_tasks("point-circle", 3, seed=5, fixed=STOCK)
    assert [t.params for t in fixed] == [STOCK] * 3
    sampled = train_tasks("point-circle", 3, seed=5)
    fam = FAMILIES["point-circle"]
    for t in sampled:
        for k, (lo, hi) in fam.train.items():
            assert lo <= t.params[k] <= hi
    assert len({t.params["radius"] for t in sampled}) == 3


@pytest.mark.parametrize("algo", ["cpo", "meta-cpo"])
def test_run_trains_on_the_fixed_task_only(tmp_path, algo):
    cfg = Config(algo=algo, task=STOCK, **TINY)
    state = train(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    assert len(rows) == 2
    assert all(t["params"] == STOCK for r in rows for t in r["tasks"])
    assert load_checkpoint(tmp_path / "checkpoint.npz").config.task == STOCK
    assert json.loads((tmp_path / "config.json").read_text())["task"] == STOCK
    # the normaliser is fitted on the fixed task: refit it here from the same seeded episodes
    env = make_env("point-circle", Task("point-circle", STOCK))
    obs = [collect(env, random_act, OBS_NORM_EPISODES, batch_seed(cfg.seed, NORM_ITERATION, i, 0)).obs
           for i in range(cfg.tasks)]
    ref = fit_obs_norm(np.concatenate(obs), OBS_STD_FLOOR)
    np.testing.assert_array_equal(state.obs_norm.mean, ref.mean)
    np.testing.assert_array_equal(state.obs_norm.std, ref.std)


def test_sampled_run_normaliser_differs_from_fixed():
    # (point-circle's observations do not see radius or walls: a family with hazards tells the fits apart)
    tiny = {**TINY, "family": "car-circle-hazard"}
    a = initial_state(Config(**tiny))
    b = initial_state(Config(task={"radius": 0.7, "num_hazards": 3}, **tiny))
    assert not np.array_equal(a.obs_norm.mean, b.obs_norm.mean)


def test_cli_task_option(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    base = ["train", "point-circle", "--algo", "trpo", "--iterations", "1", "--tasks", "1", "--episodes", "1",
            "--workers", "1", "--out", str(out)]
    r = runner.invoke(cli.main, base + ["--task", "radius=1.5,bogus=1"])
    assert r.exit_code == 2 and "no task parameter 'bogus'" in r.output
    assert not out.exists()                      # refused before any work
    r = runner.invoke(cli.main, base + ["--task", "radius=3"])
    assert r.exit_code == 2 and "outside" in r.output and not out.exists()
    r = runner.invoke(cli.main, base + ["--task", "radius=1.5,wall_factor=0.75"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["task"] == STOCK
