"""The lean step (envs/lean.py) gives the stock step's results over whole seeded episodes.

Each episode runs in lockstep in two envs with the same fast reset (itself
bit-identical to stock, test_envs.py): one stepping with ``LeanStep``, one
with stock ``Builder.step``. Every step must give the same observation (atol
1e-12), reward (atol 1e-12), cost, terminated, truncated and info, and leave
the same simulation state (qpos, qvel bit for bit), builder bookkeeping, task
state (button goal, timer, last goal distance) and random stream.
"""
import math

import mujoco
import numpy as np
import pytest

from metacpo_ref.envs import FAMILY_NAMES, make_env, sample_tasks
from metacpo_ref.envs.lean import LeanStep
from metacpo_ref.envs.lidar import pseudo_lidar

ATOL = 1e-12


# --- controllers: act(task, t, rng) -> action, reading the true state ----------

def random_policy(task, t, rng):
    return rng.uniform(-1.0, 1.0, 2)


def steer(task, target):
    """Drive the Point or Car agent towards the world point ``target`` (x, y)."""
    data = task.data
    pos, mat = data.body("agent").xpos, data.body("agent").xmat.reshape(3, 3)
    ex, ey, _ = (np.array([target[0], target[1], pos[2]]) - pos) @ mat
    car = type(task.agent).__name__ == "Car"
    angle = math.atan2(ex, -ey) if car else math.atan2(ey, ex)   # the car drives along its -y axis
    turn = float(np.clip(3 * angle, -1, 1))
    forward = 1.0 if abs(angle) < 0.5 else 0.05
    return np.clip([forward + turn, forward - turn], -1, 1) if car else np.array([forward, turn])


def into_walls(task, t, rng):
    """Point-circle: back and forth between points beyond the left and right walls."""
    return steer(task, (2.5 if (t // 120) % 2 == 0 else -2.5, 0.0))


def into_hazards(task, t, rng):
    """Car-circle-hazard: visit three hazards, 100 steps each, then drive out through a wall."""
    if t >= 300:
        return steer(task, (2.5, 0.0))
    return steer(task, task.data.body(f"hazard{t // 100}").xpos[:2])


def hazards_then_goals(task, t, rng):
    """Point-button: through two hazards, then press goal buttons (new goal after each press)."""
    if t < 200:
        return steer(task, task.data.body(f"hazard{t // 100}").xpos[:2])
    return steer(task, task.data.body("goal").xpos[:2])


SCRIPTED = {"point-circle": into_walls, "car-circle-hazard": into_hazards, "point-button": hazards_then_goals}


# --- lockstep comparison -------------------------------------------------------

def task_state(env):
    """What the stock step reads or writes besides MuJoCo: builder, task and random stream."""
    b, task = env.unwrapped, env.unwrapped.task
    rs = task.random_generator.random_generator.get_state()
    state = {"steps": b.steps, "terminated": b.terminated, "truncated": b.truncated, "cost": b.cost,
             "rng": (rs[1].tobytes(), rs[2:])}
    if hasattr(task, "buttons"):
        state.update(goal_button=task.buttons.goal_button, timer=task.buttons.timer,
                     goal_pos=task.data.body("goal").xpos.tolist())
    return state


def assert_same_step(lean_out, stock_out, lean, stock):
    obs, rew, cost, term, trunc, info = lean_out
    s_obs, s_rew, s_cost, s_term, s_trunc, s_info = stock_out
    np.testing.assert_allclose(obs, s_obs, rtol=0, atol=ATOL)
    assert abs(rew - s_rew) <= ATOL
    assert (cost, term, trunc, info) == (s_cost, s_term, s_trunc, s_info)
    ld, sd = lean.unwrapped.task.data, stock.unwrapped.task.data
    assert np.array_equal(ld.qpos, sd.qpos) and np.array_equal(ld.qvel, sd.qvel)
    assert task_state(lean) == task_state(stock)
    if hasattr(stock.unwrapped.task, "last_dist_goal"):
        assert abs(lean.unwrapped.task.last_dist_goal - stock.unwrapped.task.last_dist_goal) <= ATOL


def run_lockstep(family, task, seed, act):
    """One whole episode of ``act`` in a lean and a stock-step env; returns the summed info."""
    lean = make_env(family, task, fast=True, lean=True)
    stock = make_env(family, task, fast=True, lean=False)
    lean_obs, _ = lean.reset(seed=seed)
    stock_obs, _ = stock.reset(seed=seed)
    np.testing.assert_array_equal(lean_obs, stock_obs)
    rng = np.random.default_rng(seed)
    totals = {}
    for t in range(100_000):
        a = act(stock.unwrapped.task, t, rng)
        out = lean.step(a)
        assert_same_step(out, stock.step(a), lean, stock)
        for k, v in out[5].items():
            totals[k] = totals.get(k, 0) + float(v)
        if out[3] or out[4]:
            break
    totals["steps"] = t + 1
    with pytest.raises(AssertionError, match="must be reset"):
        lean.step(a)
    return totals


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_random_policy_episode(family, split):
    task = sample_tasks(family, 1, split, seed=21)[0]
    totals = run_lockstep(family, task, seed=5, act=random_policy)
    assert totals["steps"] == (1000 if family == "point-button" else 500)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_scripted_episode_with_costs_and_goals(family, split):
    task = sample_tasks(family, 1, split, seed=3)[0]
    totals = run_lockstep(family, task, seed=7, act=SCRIPTED[family])
    assert totals["cost_sum"] > 0
    if family != "point-button":
        assert totals["cost_out_of_boundary"] > 0
    if family != "point-circle":
        assert totals["cost_hazards"] > 0
    if family == "point-button":
        assert totals.get("goal_met", 0) >= 2      # goal pressed, a new goal drawn, pressed again


def test_lean_equals_fully_stock_env():
    """End to end: fast reset + lean step against the fully stock code (stock reset and step)."""
    task = sample_tasks("point-circle", 1, "test", seed=2)[0]
    lean, stock = make_env("point-circle", task), make_env("point-circle", task, fast=False)
    assert lean.lean and not stock.lean and not stock.fast
    rng = np.random.default_rng(0)
    o1, _ = lean.reset(seed=4)
    o2, _ = stock.reset(seed=4)
    np.testing.assert_array_equal(o1, o2)
    for t in range(500):
        a = into_walls(stock.unwrapped.task, t, rng)
        (o1, r1, c1, *e1), (o2, r2, c2, *e2) = lean.step(a), stock.step(a)
        np.testing.assert_allclose(o1, o2, rtol=0, atol=ATOL)
        assert abs(r1 - r2) <= ATOL and c1 == c2 and e1 == e2
    assert e1[1]   # truncated at the end of the episode


def test_switches():
    assert make_env("point-circle").lean
    assert not make_env("point-circle", fast=False).lean
    env = make_env("point-circle", fast=True, lean=False)
    assert env.fast and not env.lean
    env.reset(seed=0)
    assert env._lean_step is None


def test_bad_use_raises_like_stock():
    env = make_env("point-button")
    with pytest.raises(AssertionError, match="must be reset"):
        env.step([0.0, 0.0])
    env.reset(seed=0)
    with pytest.raises(ValueError, match="Action dimension mismatch"):
        env.step([0.0, 0.0, 0.0])
    env.unwrapped.task.action_noise = 0.1      # a stock feature the lean step does not cover
    with pytest.raises(NotImplementedError, match="action noise"):
        LeanStep(env.unwrapped)


def test_lidar_matches_stock_loop():
    """pseudo_lidar against stock _obs_lidar_pseudo: random poses, objects and lidar settings."""
    env = make_env("point-button")
    env.reset(seed=0)
    task = env.unwrapped.task
    rng = np.random.default_rng(1)
    settings = [(16, 3.0, 1.0, True), (16, None, 0.7, True), (8, 3.0, 1.0, False)]
    for _ in range(150):
        task.data.qpos[:3] = rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(-np.pi, np.pi)
        mujoco.mj_forward(task.model, task.data)
        points = rng.uniform(-4, 4, (rng.integers(0, 12), 3))
        for conf in settings:
            c = task.lidar_conf
            c.num_bins, c.max_dist, c.exp_gain, c.alias = conf
            expected = task._obs_lidar_pseudo(points)
            got = pseudo_lidar(points[:, :2].tolist(), task.agent.pos.tolist(), task.agent.mat.ravel().tolist(), *conf)
            np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
