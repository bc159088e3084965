"""The cost measure (docs/derivations.md, section 12): the paper's discounted J_C and the
undiscounted cost per episode, wherever the limit meets the data; Car-Circle-Hazard's
walls as Table 1 has them; old runs load with what they ran with."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from metacpo_ref.model.advantages import (authors_cost, center, constraint_value, episode_measures, measured_cost,
                                    step_weights, weight_cost_advantages)
from metacpo_ref.algos.baselines import pooled_data
from metacpo_ref.config import Config
from metacpo_ref.envs.families import FAMILIES
from metacpo_ref.envs import Task, make_env, parse_task, sample_tasks
from metacpo_ref.checks.gradcheck import check_discounted_constraint_value, check_discounted_first_order, discounted_by_loop
from metacpo_ref.algos.iteration import Trace
from metacpo_ref.envs.rollouts import Batch, batch_seed, collect, random_act
from metacpo_ref.run.rundir import CheckpointError, config_from_dict, config_to_json
from metacpo_ref.run.training import resume_config
from metacpo_ref.algos.step_data import StepData

GAMMA = 0.9


def batch_of(lengths, seed=0, terminated_last=False):
    """A Batch of whole episodes of the given lengths, random 0/1 costs, the last step of the
    last episode a termination if asked (time-limit cuts otherwise)."""
    rng = np.random.default_rng(seed)
    T = sum(lengths)
    ends = np.cumsum(lengths) - 1
    term, trunc = np.zeros(T, bool), np.zeros(T, bool)
    trunc[ends] = True
    if terminated_last:
        term[ends[-1]], trunc[ends[-1]] = True, False
    cost = rng.integers(0, 2, T).astype(float)
    starts = np.concatenate([[0], ends[:-1] + 1])
    z = np.zeros((T, 2))
    return Batch(obs=z, act=z, logp=np.zeros(T), rew=np.zeros(T), cost=cost, terminated=term, truncated=trunc,
                 bootstrap_obs=z, ep_return=np.zeros(len(lengths)), ep_cost=np.add.reduceat(cost, starts),
                 ep_len=np.array(lengths))


def loop_measures(batch, gamma):
    """(J, W) of the discounted measure, and the authors' measure, by plain loops from the
    definitions: the discount restarts at every episode's first step (not for the authors')."""
    J, W, _, authors = discounted_by_loop(batch.ep_len, batch.cost, gamma)
    return J, W, authors


def test_discounted_measure_restarts_the_discount_at_every_episode():
    batch = batch_of([5, 3, 7], terminated_last=True)
    w = step_weights(batch, "discounted", GAMMA)
    np.testing.assert_allclose(w, np.concatenate([GAMMA ** np.arange(n) for n in (5, 3, 7)]), rtol=1e-15)
    J, W, authors = loop_measures(batch, GAMMA)
    assert measured_cost(batch, "discounted", GAMMA) == pytest.approx((J, W), rel=1e-14)
    assert authors_cost(batch, GAMMA) == pytest.approx(authors, rel=1e-14)
    assert authors != pytest.approx(J * 3, rel=1e-3)
    undiscounted, discounted = episode_measures(batch, GAMMA)
    np.testing.assert_array_equal(undiscounted, batch.ep_cost)
    assert discounted.mean() == pytest.approx(J, rel=1e-14) and len(discounted) == 3
    assert constraint_value(batch, 0.7, "discounted", GAMMA) == pytest.approx((J - 0.7) / W, rel=1e-14)


def test_episode_measure_is_the_undiscounted_formula_to_the_bit():
    """The episode measure is (D16) exactly as before the setting existed: the same floats."""
    batch = batch_of([4, 6, 6], seed=3)
    assert constraint_value(batch, 2.0, "episode") == float((np.mean(batch.ep_cost) - 2.0) / np.mean(batch.ep_len))
    assert constraint_value(batch, 2.0) == constraint_value(batch, 2.0, "episode")
    adv = center(np.random.default_rng(1).standard_normal(len(batch)))[0]
    np.testing.assert_array_equal(weight_cost_advantages(adv, batch, "episode"), adv)
    with pytest.raises(ValueError, match="unknown cost measure 'x'; valid: discounted, episode"):
        constraint_value(batch, 2.0, "x")


def test_weighted_cost_surrogate_is_the_discount_weighted_mean():
    """(D38): mean_t rho_t Atilde_t equals sum_t w_t rho_t A_t / sum_t w_t for any ratios."""
    batch = batch_of([6, 4], seed=2)
    rng = np.random.default_rng(0)
    adv, rho = rng.standard_normal(len(batch)), rng.uniform(0.5, 1.5, len(batch))
    w = np.concatenate([GAMMA ** np.arange(6), GAMMA ** np.arange(4)])
    weighted = weight_cost_advantages(adv, batch, "discounted", GAMMA)
    assert np.mean(rho * weighted) == pytest.approx(np.sum(w * rho * adv) / np.sum(w), rel=1e-13)


@pytest.mark.parametrize("check", [check_discounted_constraint_value, check_discounted_first_order])
def test_gradcheck_of_the_discounted_constraint_passes(check):
    r = check()
    assert r["passed"] and r["max_rel_error"] <= r["tol"], r


def test_discounted_constraint_check_fails_when_the_discount_is_not_restarted(monkeypatch):
    """The loop check can fail: weights that run on across episode ends (the authors'
    measure) break (D37)."""
    import metacpo_ref.model.advantages as adv_mod

    monkeypatch.setattr(adv_mod, "step_weights",
                        lambda batch, measure, gamma=0.99: float(gamma) ** np.arange(len(batch), dtype=float))
    assert not check_discounted_first_order()["passed"]


def test_pooled_baseline_surrogate_is_the_pooled_weighted_mean():
    """CPO/TRPO pool tasks whose batches have different mean weights: the pooled cost
    surrogate is (D38) on the pooled batch, and b_hat is (D37) on the pooled episodes."""
    from types import SimpleNamespace

    config = Config(family="point-circle", algo="cpo")
    rng = np.random.default_rng(5)
    runs, raw = [], []
    for lengths in ([5, 5], [3, 9, 2]):
        b = batch_of(lengths, seed=len(lengths))
        T = len(b)
        a = center(rng.standard_normal(T))[0]
        raw.append((b, a))
        d = StepData(rng.standard_normal((T, 2)), rng.standard_normal((T, 2)), np.zeros(T), np.zeros(T),
                     weight_cost_advantages(a, b, "discounted", config.gamma), 0.0, np.zeros(3))
        runs.append(SimpleNamespace(trace=Trace((), d), batch0=b))
    pooled = pooled_data(runs, np.zeros(3), 1.0, config)
    w = np.concatenate([step_weights(b, "discounted", config.gamma) for b, _ in raw])
    A = np.concatenate([a for _, a in raw])
    rho = np.random.default_rng(9).uniform(0.5, 1.5, len(A))
    assert np.mean(rho * pooled.adv_c) == pytest.approx(np.sum(w * rho * A) / np.sum(w), rel=1e-13)
    J = (sum(loop_measures(b, config.gamma)[0] * len(b.ep_len) for b, _ in raw)) / 5
    W = np.sum(w) / 5
    assert pooled.b_hat == pytest.approx((J - 1.0) / W, rel=1e-13)


def test_default_is_the_paper_and_old_configs_load_as_they_ran():
    assert Config().cost_measure == "discounted" and Config().car_walls == "paper"
    for algo in ("meta-cpo", "meta-trpo", "cpo", "trpo"):
        assert Config(algo=algo).cost_measure == "discounted"
    old = json.loads(config_to_json(Config(family="car-circle-hazard")))
    del old["cost_measure"], old["car_walls"]
    back = config_from_dict(old)
    assert (back.cost_measure, back.car_walls) == ("episode", "stock")
    with pytest.raises(ValueError, match="unknown cost measure 'J'; valid: discounted, episode"):
        Config(cost_measure="J")
    with pytest.raises(ValueError, match="unknown car walls"):
        Config(car_walls="none")


def test_committed_first_campaign_checkpoint_loads_as_episode_with_stock_walls():
    from pathlib import Path

    from metacpo_ref.run.rundir import load_checkpoint

    ckpt = Path(__file__).resolve().parents[1] / "results/campaign/car-circle-hazard/meta-cpo-s0/checkpoint.npz"
    config = load_checkpoint(ckpt).config
    assert (config.cost_measure, config.car_walls) == ("episode", "stock")


def test_car_circle_hazard_has_the_paper_walls_and_stock_tasks_draw_as_before():
    """Table 1's caption: the car's walls at s x r_c with Point-Circle's s. Stock-walls tasks
    (the first campaign's) lack wall_factor and draw their other parameters exactly as the
    sampler did before (an independent re-implementation of it)."""
    fam = FAMILIES["car-circle-hazard"]
    pc = FAMILIES["point-circle"]
    assert fam.train["wall_factor"] == pc.train["wall_factor"] and fam.test["wall_factor"] == pc.test["wall_factor"]
    paper = sample_tasks("car-circle-hazard", 4, "test", seed=3)
    assert all(set(t.params) == {"radius", "num_hazards", "wall_factor"} for t in paper)
    assert all(0.55 <= t.params["wall_factor"] <= 0.65 for t in paper)
    stock = sample_tasks("car-circle-hazard", 4, "test", seed=3, walls="stock")
    rng = np.random.default_rng(np.random.SeedSequence([3, 1]))
    old = [{"radius": float(rng.uniform(1.2, 1.5)), "num_hazards": int(rng.integers(7, 13))} for _ in range(4)]
    assert [t.params for t in stock] == old
    assert sample_tasks("point-circle", 2, seed=1, walls="stock") == sample_tasks("point-circle", 2, seed=1)
    assert "wall_factor" not in parse_task("car-circle-hazard", "radius=0.8", "stock").params
    assert parse_task("car-circle-hazard", "radius=0.8").params["wall_factor"] == pytest.approx(0.7)


def test_car_walls_move_with_the_task():
    """The car env's walls sit at s x r_c for a paper task and stay stock (1.125) otherwise;
    a car outside the walls collects cost in the paper task only."""
    paper = Task("car-circle-hazard", {"radius": 1.0, "num_hazards": 3, "wall_factor": 0.65})
    with make_env("car-circle-hazard", paper) as env:
        env.reset(seed=0)
        assert env.unwrapped.task.sigwalls.locate_factor == pytest.approx(0.65)
        stock = Task("car-circle-hazard", {"radius": 1.0, "num_hazards": 3})
        env.set_task(stock)   # back to the stock walls in an env built with the paper's
        env.reset(seed=0)
        assert env.unwrapped.task.sigwalls.locate_factor == 1.125
        stock_after_paper = collect(env, random_act, 1, 3)
    with make_env("car-circle-hazard", stock) as env:
        assert env.unwrapped.task.sigwalls.locate_factor == 1.125
        np.testing.assert_array_equal(collect(env, random_act, 1, 3).obs, stock_after_paper.obs)


def test_random_policy_costs_more_per_episode_than_its_discounted_measure():
    """On a real car task the three measures differ as section 12 says: the discounted J_C
    and the authors' measure count mostly the first ~100 steps of 500."""
    task = sample_tasks("car-circle-hazard", 1, "test", seed=0)[0]
    with make_env("car-circle-hazard", task) as env:
        batch = collect(env, random_act, 2, batch_seed(0, 1, 2, 3))
    J, W = measured_cost(batch, "discounted", 0.99)
    assert W == pytest.approx((1 - 0.99 ** 500) / 0.01, rel=1e-12)
    assert np.mean(batch.ep_cost) > J


def test_cli_refuses_an_unknown_measure_and_a_changed_one_on_resume(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "point-circle", "--cost-measure", "per-step", "--out", str(out)])
    assert r.exit_code == 2 and "'per-step' is not one of 'discounted', 'episode'" in r.output
    assert not out.exists()
    args = ["train", "point-circle", "--iterations", "1", "--tasks", "1", "--local-steps", "1", "--episodes", "1",
            "--workers", "1", "--out", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "(discounted J_C per episode)" in r.output and "limit 10, discounted" in r.output
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["cost_measure"] == "discounted" and row["cost_episode"] >= row["cost"] >= 0
    assert len(row["tasks"][0]["costs"]) == len(row["tasks"][0]["costs_episode"]) == 2
    for flag in (["--cost-measure", "episode"], ["--car-walls", "stock"]):
        with pytest.raises(CheckpointError, match="cannot resume"):
            resume_config(out, {"family": "point-circle", "iterations": 2,
                                flag[0][2:].replace("-", "_"): flag[1]})
    r = CliRunner().invoke(main, ["train", "point-circle", "--resume", "--iterations", "2", "--cost-measure",
                                  "episode", "--workers", "1", "--out", str(out)])
    assert r.exit_code == 1 and "cost_measure 'discounted' -> 'episode'" in r.output
    r = CliRunner().invoke(main, ["test", "point-circle", "--checkpoint", str(out / "checkpoint.npz"),
                                  "--adapt-steps", "1", "--tasks", "1", "--workers", "1"])
    assert r.exit_code == 0, r.output
    head, columns, *rows = r.output.splitlines()
    assert "cost limit 10 on the discounted J_C per episode; 1 evaluation episode per task and step" in head
    assert columns.split() == ["step", "return", "+-se", "episode", "+-se", "discntd", "+-se", "authors",
                               "cost/step"]
    assert [row.split()[0] for row in rows] == ["0", "1"]
