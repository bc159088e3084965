"""Task families: sizes, Table 1 ranges, seeding, set_task, fast reset, bad input."""
import numpy as np
import pytest

from metacpo_ref.envs.families import FAMILIES
from metacpo_ref.envs import FAMILY_NAMES, Task, make_env, sample_tasks
from metacpo_ref.envs.rollouts import collect
from metacpo_ref.envs.rollouts import random_act

OBS = {"point-circle": 28, "car-circle-hazard": 56, "point-button": 60}
EP_LEN = {"point-circle": 500, "car-circle-hazard": 500, "point-button": 1000}


@pytest.fixture(scope="module")
def envs():
    return {f: make_env(f) for f in FAMILY_NAMES}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sizes_and_episode_length(envs, family):
    env = envs[family]
    obs, _ = env.reset(seed=0)
    assert obs.shape == (OBS[family],) == env.observation_space.shape
    assert env.action_space.shape == (2,) == (FAMILIES[family].act_dim,)   # the policy's act_dim (update.specs)
    b = collect(env, random_act, 1, seed=0)
    assert b.ep_len[0] == EP_LEN[family] and b.truncated[-1] and not b.terminated.any()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_one_definition_per_family(envs, family):
    """A family's definition (envs/families.py) builds its env: its robot, its Safety-Gymnasium
    task and episode length; its defaults (episodes, cost limits) are config.FAMILY_DEFAULTS'."""
    from metacpo_ref.config import FAMILY_DEFAULTS, Config

    fam = FAMILIES[family]
    assert tuple(FAMILIES) == tuple(FAMILY_DEFAULTS) == FAMILY_NAMES
    assert (fam.episodes, fam.cost_limit_train, fam.cost_limit_test) == (
        Config(family=family).n_episodes, Config(family=family).train_cost_limit, FAMILY_DEFAULTS[family].cost_limit_test)
    builder = envs[family].unwrapped
    assert type(builder.task.agent).__name__ == fam.robot and builder.task.num_steps == fam.episode_len == EP_LEN[family]
    assert fam.obs_dim == OBS[family] and set(fam.train) == set(fam.test)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_table1_ranges(family, split):
    fam = FAMILIES[family]
    ranges = fam.train if split == "train" else fam.test
    tasks = sample_tasks(family, 200, split, seed=4)
    for name, (lo, hi) in ranges.items():
        vals = np.array([t.params[name] for t in tasks])
        assert vals.min() >= lo and vals.max() <= hi
        if name in fam.int_params:
            assert set(vals.astype(int)) == set(range(int(lo), int(hi) + 1))  # inclusive
        else:
            assert vals.max() - vals.min() > 0.8 * (hi - lo)


def test_tasks_seeded():
    a = sample_tasks("point-button", 5, "train", seed=7)
    assert a == sample_tasks("point-button", 5, "train", seed=7)
    assert a != sample_tasks("point-button", 5, "train", seed=8)
    assert a != sample_tasks("point-button", 5, "test", seed=7)


def test_button_draws_buttons_and_hazards_independently():
    tasks = sample_tasks("point-button", 300, "train", seed=0)
    nb = np.array([t.params["num_buttons"] for t in tasks])
    nh = np.array([t.params["num_hazards"] for t in tasks])
    assert (nb != nh).mean() > 0.5


def _geom_count(env, prefix):
    m = env.unwrapped.task.model
    return sum(m.geom(i).name.startswith(prefix) for i in range(m.ngeom))


def test_set_task_changes_layout(envs):
    env = envs["point-button"]
    for nb, nh in [(3, 5), (6, 3)]:
        env.set_task(Task("point-button", {"num_buttons": nb, "num_hazards": nh, "extent": 1.8}))
        env.reset(seed=0)
        assert _geom_count(env, "hazard") == nh and _geom_count(env, "button") == nb
        xy = np.array([env.unwrapped.task.data.body(f"hazard{i}").xpos[:2] for i in range(nh)])
        assert np.abs(xy).max() <= 1.8
    env = envs["car-circle-hazard"]
    env.set_task(Task("car-circle-hazard", {"radius": 1.3, "num_hazards": 9}))
    env.reset(seed=0)
    assert _geom_count(env, "hazard") == 9
    assert env.unwrapped.task.model.geom("circle").size[0] == pytest.approx(1.3)
    env = envs["point-circle"]
    env.set_task(Task("point-circle", {"radius": 2.2, "wall_factor": 0.6}))
    env.reset(seed=0)
    data = env.unwrapped.task.data
    assert env.unwrapped.task.model.geom("circle").size[0] == pytest.approx(2.2)
    assert abs(data.geom("sigwall0").xpos[0]) == pytest.approx(2.2 * 0.6)


def test_circle_wall_cost_follows_task(envs):
    """The out-of-bounds cost uses the moved walls: x beyond s*r_c costs 1."""
    env = envs["point-circle"]
    env.set_task(Task("point-circle", {"radius": 1.0, "wall_factor": 0.65}))
    env.reset(seed=0)
    task = env.unwrapped.task
    assert task.sigwalls.locate_factor == pytest.approx(0.65)
    b = collect(env, lambda o, r: (np.array([1.0, 0.0]), 0.0), 1, seed=0, max_steps=300)
    assert b.cost.sum() > 0   # driving straight ahead leaves the walls at |x| = 0.65


@pytest.mark.parametrize("family", ["point-circle", "car-circle-hazard"])
def test_only_the_x_walls_cost(envs, family):
    """The circle tasks have two walls, at x = +-s*r_c: beyond them in x costs, the same
    distance out in y does not (the stock task's sigwalls, num = 2)."""
    import mujoco

    env = envs[family]
    env.set_task(sample_tasks(family, 1, seed=3)[0])
    env.reset(seed=0)
    task = env.unwrapped.task
    d = task.sigwalls.locate_factor
    assert task.sigwalls.num == 2
    assert sorted(abs(task.data.geom(f"sigwall{i}").xpos[0]) for i in range(2)) == pytest.approx([d, d])

    def cost_at(x, y):
        qpos = task.data.qpos.copy()
        for _ in range(10):   # the agent body sits off its joints' origin: move it until it is there
            task.data.qpos[:2] += np.array([x, y]) - task.agent.pos[:2]
            mujoco.mj_forward(task.model, task.data)
        assert task.agent.pos[:2] == pytest.approx([x, y], abs=0.05)
        cost = bool(task.sigwalls.cal_cost()["cost_out_of_boundary"])
        task.data.qpos[:] = qpos
        mujoco.mj_forward(task.model, task.data)
        return cost

    assert cost_at(1.3 * d, 0.0) and cost_at(-1.3 * d, 0.0)
    assert not cost_at(0.0, 1.3 * d) and not cost_at(0.0, -1.3 * d) and not cost_at(0.0, 0.0)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_fast_reset_equivalent_to_stock(family):
    task = sample_tasks(family, 1, "test", seed=2)[0]
    # the fast reset alone is bit-identical; the lean step is compared in test_lean_step.py
    fast, stock = make_env(family, task, fast=True, lean=False), make_env(family, task, fast=False)
    a = collect(fast, random_act, 1, seed=11)
    b = collect(stock, random_act, 1, seed=11)
    for name in ("obs", "rew", "cost", "terminated", "truncated"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("family, fast", [(f, True) for f in FAMILY_NAMES] + [("car-circle-hazard", False)])
def test_batch_does_not_depend_on_what_the_env_simulated_before(family, fast):
    """Same task, policy and seed: a fresh env, an env that first ran another task's
    episode, and that env once more give the same batch, bit for bit. (Stock builds
    the first world one mj_forward short of a rebuilt one; where the car starts in
    contact, that moved the solver's warm start and the last bits of the episode.)"""
    task, other = sample_tasks(family, 2, "test", seed=0)
    n = 2 if fast else 1                      # a stock reset takes ~1 s
    with make_env(family, task, fast=fast) as fresh:
        a = collect(fresh, random_act, n, seed=5, max_steps=60)
        if family == "car-circle-hazard":     # the case that differed: the car starts in contact
            first_reset_seed = np.random.SeedSequence(5).spawn(2)[0].generate_state(1)[0]   # as collect
            fresh.reset(seed=int(first_reset_seed))
            assert fresh.unwrapped.task.data.nefc > 0
    with make_env(family, other, fast=fast) as used:
        collect(used, random_act, 1, seed=9, max_steps=60)
        used.set_task(task)
        batches = [collect(used, random_act, n, seed=5, max_steps=60) for _ in range(2 if fast else 1)]
    for b in batches:
        for name in ("obs", "act", "rew", "cost", "terminated", "truncated", "bootstrap_obs", "ep_return", "ep_cost"):
            np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)


def test_bad_input_refused():
    with pytest.raises(ValueError, match="valid names: point-circle, car-circle-hazard, point-button"):
        make_env("point-circel")
    with pytest.raises(ValueError, match="outside the train range"):
        Task("point-circle", {"radius": 3.0, "wall_factor": 0.7})
    with pytest.raises(ValueError, match="integer"):
        Task("car-circle-hazard", {"radius": 0.8, "num_hazards": 4.5})
    with pytest.raises(ValueError, match="exactly the parameters"):
        Task("point-circle", {"radius": 1.2})
    with pytest.raises(ValueError, match="finite"):
        Task("point-circle", {"radius": float("nan"), "wall_factor": 0.7})
    with pytest.raises(ValueError, match="split"):
        sample_tasks("point-circle", 2, "val")
    env = make_env("point-circle")
    with pytest.raises(ValueError, match="cannot take"):
        env.set_task(sample_tasks("point-button", 1)[0])
    # a value between the train and the test range is refused too, never clipped
    with pytest.raises(ValueError, match="test range"):
        Task("point-circle", {"radius": 1.75, "wall_factor": 0.7})
