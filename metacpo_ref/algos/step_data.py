"""A step's data: one batch collected with ``phi`` and its estimates, as the update sees it
(Algorithm 1, lines 7-8; the cost measures D37, D38), and the policy and value shapes of a
config's family."""
import time
from dataclasses import dataclass

import numpy as np

from metacpo_ref.envs.families import FAMILIES
from metacpo_ref.envs.rollouts import collect
from metacpo_ref.model.advantages import (ValueSpec, advantages, constraint_value, measured_cost,
                                          weight_cost_advantages)
from metacpo_ref.model.policy import PolicySpec, act_fn


@dataclass(frozen=True, eq=False)
class StepData:
    """One batch as the update sees it (Algorithm 1, lines 7-8).

    ``phi`` are the parameters that collected the batch (``phi_k^collected``),
    ``logp_beh`` their stored log-probabilities, ``adv_r`` the standardised
    reward and ``adv_c`` the centred cost advantages (in the weights of the run's cost
    measure, D38), ``b_hat`` the per-step constraint value (D37); ``beta`` is the accepted line-search fraction of the
    step taken from ``phi`` (1.0 until the line search has run) and ``b_shift``
    the constant :func:`~metacpo_ref.algos.step_problem.recovery_shift` added to ``b`` (0.0 until
    the update has run). ``solved``: the pairs ``(v, H(phi)^{-1} v)`` the step taken solved
    (with ``config.replay_warm_start``; else empty), the warm starts of its replay
    (:func:`~metacpo_ref.algos.local_step.local_step`).
    """

    obs: np.ndarray
    act: np.ndarray
    logp_beh: np.ndarray
    adv_r: np.ndarray
    adv_c: np.ndarray
    b_hat: float
    phi: np.ndarray
    beta: float = 1.0
    b_shift: float = 0.0
    solved: tuple = ()


@dataclass(frozen=True, eq=False)
class Collected:
    """A batch collected with ``phi``, its estimates (an
    :class:`~metacpo_ref.model.advantages.AdvantageResult`), and the seconds spent in
    the env and in estimation."""

    batch: object
    data: StepData
    adv: object
    env_time: float
    learner_time: float

    @property
    def vf(self):
        """The refitted value-function parameters ``(vf_r, vf_c)``."""
        return self.adv.vf_params_r, self.adv.vf_params_c


def collect_step_data(env, spec, vspec, phi, vf, config, seed, cost_limit):
    """Algorithm 1 lines 7-8: collect ``config.n_episodes`` episodes with ``pi_phi``,
    then estimate advantages (value functions ``vf = (vf_r, vf_c)``
    refitted once, warm-started) and ``b_hat`` (per-step units), both in
    ``config.cost_measure`` (D37, D38)."""
    t0 = time.perf_counter()
    batch = collect(env, act_fn(spec, phi), config.n_episodes, seed)
    env_time = time.perf_counter() - t0
    adv = advantages(vspec, batch, vf[0], vf[1], config.gamma, config.gae_lambda, config.vf_iters, config.vf_ftol)
    data = StepData(batch.obs, batch.act, batch.logp, adv.adv_r,
                    weight_cost_advantages(adv.adv_c, batch, config.cost_measure, config.gamma),
                    constraint_value(batch, cost_limit, config.cost_measure, config.gamma),
                    np.array(phi, dtype=np.float64))
    return Collected(batch, data, adv, env_time, time.perf_counter() - t0 - env_time)


def batch_cost(batch, config):
    """The mean cost of a batch's episodes in ``config.cost_measure`` (what the limit is on)."""
    return measured_cost(batch, config.cost_measure, config.gamma)[0]


def specs(config):
    """``(PolicySpec, ValueSpec)`` of a config's family (its observation and action sizes)."""
    family = FAMILIES[config.family]
    return PolicySpec(family.obs_dim, family.act_dim, tuple(config.hidden)), ValueSpec(family.obs_dim)
