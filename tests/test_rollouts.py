"""Seeded rollouts: same seed, same batch; the Batch bookkeeping is consistent."""
import numpy as np
import pytest

from metacpo_ref.envs import make_env, sample_tasks
from metacpo_ref.envs.rollouts import batch_seed, collect, concat_batches
from metacpo_ref.envs.rollouts import random_act


@pytest.fixture(scope="module")
def env():
    return make_env("point-circle", sample_tasks("point-circle", 1, seed=0)[0])


def test_same_seed_same_batch(env):
    a = collect(env, random_act, 2, seed=batch_seed(3, iteration=1, task=2, step=0), max_steps=60)
    # another batch in between must not matter
    collect(env, random_act, 1, seed=99, max_steps=30)
    b = collect(env, random_act, 2, seed=batch_seed(3, iteration=1, task=2, step=0), max_steps=60)
    for k in ("obs", "act", "rew", "cost", "ep_return"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    c = collect(env, random_act, 2, seed=batch_seed(3, iteration=1, task=2, step=1), max_steps=60)
    assert not np.array_equal(a.act, c.act)


def test_batch_bookkeeping(env):
    b = collect(env, random_act, 3, seed=5, max_steps=40)
    assert len(b) == 120 and b.obs.shape == (120, 28) and b.act.shape == (120, 2)
    ends = np.flatnonzero(b.episode_ends)
    np.testing.assert_array_equal(ends, [39, 79, 119])
    np.testing.assert_array_equal(b.ep_len, [40, 40, 40])
    np.testing.assert_allclose(b.ep_return, b.rew.reshape(3, 40).sum(1))
    np.testing.assert_allclose(b.ep_cost, b.cost.reshape(3, 40).sum(1))
    # bootstrap_obs is the next observation exactly at the time-limit cuts
    assert np.all(b.bootstrap_obs[~b.truncated] == 0) and np.all(np.any(b.bootstrap_obs[b.truncated] != 0, axis=1))
    np.testing.assert_array_equal(b.obs[1:40], collect(env, random_act, 1, seed=5, max_steps=40).obs[1:40])
    two = concat_batches([b, b])
    assert len(two) == 240 and len(two.ep_len) == 6


def test_bad_episode_count(env):
    with pytest.raises(ValueError):
        collect(env, random_act, 0, seed=0)
