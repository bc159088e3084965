"""Seeded rollouts: any policy ``act(obs, rng) -> (action, logp)`` on any safe env.

The env follows the safe-env protocol of :mod:`metacpo_ref.envs`:
``reset(seed) -> (obs, info)`` and ``step(a) -> (obs, reward, cost, terminated,
truncated, info)``. Rewards and costs stay separate; nothing is shaped.

Seeding (fixed for the whole project): every batch is driven by one
``numpy.random.SeedSequence`` spawned from ``(seed, iteration, task, step)``
(see :func:`batch_seed`), so the numbers never depend on the order or on the
process in which batches are collected.
"""
from dataclasses import dataclass, fields

import numpy as np


@dataclass
class Batch:
    """Transitions of whole episodes, concatenated in time order.

    Per step (length T): ``obs (T, obs_dim)``, ``act (T, act_dim)``,
    ``logp (T,)`` behaviour log-probabilities at collection, ``rew``, ``cost``,
    ``terminated``, ``truncated`` (bool), and ``bootstrap_obs (T, obs_dim)``:
    the observation after step t, meaningful where the episode was cut by the
    time limit (``truncated``) and used to bootstrap the value there; zeros
    elsewhere.
    Per episode (length E): ``ep_return``, ``ep_cost`` (undiscounted sums),
    ``ep_len``.
    """

    obs: np.ndarray
    act: np.ndarray
    logp: np.ndarray
    rew: np.ndarray
    cost: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    bootstrap_obs: np.ndarray
    ep_return: np.ndarray
    ep_cost: np.ndarray
    ep_len: np.ndarray

    def __len__(self):
        return len(self.rew)

    @property
    def n_steps(self):
        return len(self.rew)

    @property
    def episode_ends(self):
        """Boolean mask of the last step of each episode."""
        return self.terminated | self.truncated


@dataclass(frozen=True, eq=False)
class ObsNorm:
    """A frozen observation normaliser: ``clip((obs - mean) / std, -clip, clip)``.

    Fitted once per run (:func:`fit_obs_norm`) and saved with the policy: the
    policy, the value functions and every batch see normalised observations,
    so ``theta`` and this normaliser together define the policy.
    """

    mean: np.ndarray
    std: np.ndarray
    clip: float = 10.0

    def __call__(self, obs):
        return np.clip((np.asarray(obs, dtype=np.float64) - self.mean) / self.std, -self.clip, self.clip)


def fit_obs_norm(obs, std_floor):
    """Per-feature mean and standard deviation of ``obs``; the deviation floored at
    ``std_floor`` so that near-constant features (gravity in the accelerometer)
    are centred but never magnified."""
    obs = np.asarray(obs, dtype=np.float64)
    return ObsNorm(obs.mean(axis=0), np.maximum(obs.std(axis=0), std_floor))


class NormalizedEnv:
    """A safe env whose observations pass through an :class:`ObsNorm`
    (``reset``, ``step``; everything else, e.g. ``set_task``, is the wrapped env's)."""

    def __init__(self, env, norm):
        self.env, self.norm = env, norm

    def reset(self, seed=None):
        obs, info = self.env.reset(seed=seed)
        return self.norm(obs), info

    def step(self, action):
        obs, r, c, term, trunc, info = self.env.step(action)
        return self.norm(obs), r, c, term, trunc, info

    def __getattr__(self, name):
        return getattr(self.env, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.env.close()


def concat_batches(batches):
    """One Batch holding the episodes of several batches, in the given order."""
    return Batch(**{f.name: np.concatenate([getattr(b, f.name) for b in batches])
                    for f in fields(Batch)})


def batch_seed(seed, iteration=0, task=0, step=0):
    """The SeedSequence of one batch, keyed by (seed, iteration, task, step)."""
    return np.random.SeedSequence([int(seed), int(iteration), int(task), int(step)])


LOG_UNIFORM_2D = float(np.log(0.25))   # log-density of the uniform law on [-1, 1]^2


def random_act(obs, rng):
    """A uniformly random policy on the action box [-1, 1]^2 in the ``act(obs, rng)``
    form: the action and its log-density log(1/4)."""
    return rng.uniform(-1.0, 1.0, 2), LOG_UNIFORM_2D


def task_seed(seed, iteration):
    """The integer seed of the tasks sampled at ``iteration`` (Algorithm 1, line 4)."""
    return int(np.random.SeedSequence([int(seed), int(iteration), 2**31 - 1]).generate_state(1)[0])


def collect(env, act, n_episodes, seed, max_steps=None):
    """Run ``n_episodes`` whole episodes of ``act`` in ``env``.

    ``seed`` is an int or a ``numpy.random.SeedSequence``; it spawns one seed
    for the env resets and one generator for the action noise, so the same
    seed gives the same batch. ``max_steps`` optionally cuts each episode
    (counted as a time-limit truncation) for tiny test batches.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    reset_ss, act_ss = ss.spawn(2)
    reset_seeds = reset_ss.generate_state(n_episodes, dtype=np.uint32)
    rng = np.random.default_rng(act_ss)
    cols = {k: [] for k in ("obs", "act", "logp", "rew", "cost", "terminated", "truncated", "bootstrap_obs")}
    ep_return, ep_cost, ep_len = [], [], []
    for e in range(n_episodes):
        obs, _ = env.reset(seed=int(reset_seeds[e]))
        ret = cst = 0.0
        t = 0
        while True:
            a, lp = act(obs, rng)
            nobs, r, c, term, trunc, _ = env.step(a)
            t += 1
            if max_steps is not None and t >= max_steps:
                trunc = True
            cols["obs"].append(obs)
            cols["act"].append(np.asarray(a, dtype=np.float64))
            cols["logp"].append(float(lp))
            cols["rew"].append(float(r))
            cols["cost"].append(float(c))
            cols["terminated"].append(bool(term))
            cols["truncated"].append(bool(trunc) and not term)
            cols["bootstrap_obs"].append(nobs if (trunc and not term) else np.zeros_like(nobs))
            ret += float(r)
            cst += float(c)
            obs = nobs
            if term or trunc:
                break
        ep_return.append(ret)
        ep_cost.append(cst)
        ep_len.append(t)
    arr = {k: np.asarray(v, dtype=bool if k in ("terminated", "truncated") else np.float64)
           for k, v in cols.items()}
    return Batch(**arr, ep_return=np.asarray(ep_return), ep_cost=np.asarray(ep_cost),
                 ep_len=np.asarray(ep_len, dtype=np.int64))
