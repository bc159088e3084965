"""One CPO (or TRPO) policy update on one batch: eq. 9 on the surrogates, then a
backtracking line search (Algorithm 1, lines 8-9; CPO notes, section 3).

Shared by Meta-CPO's inner loop and meta-testing (:mod:`metacpo_ref.meta`)
and by the CPO and TRPO baselines (:mod:`metacpo_ref.baselines`).
"""
import time
from dataclasses import dataclass

import numpy as np
from autograd import grad

from metacpo_ref.advantages import advantages, constraint_value, surrogates
from metacpo_ref.cpo import cg, solve_step
from metacpo_ref.policy import act_fn, fvp, mean_kl
from metacpo_ref.rollouts import collect


@dataclass(frozen=True, eq=False)
class StepData:
    """One batch as the update sees it (Algorithm 1, lines 7-8).

    ``phi`` are the parameters that collected the batch (``phi_k^collected``),
    ``logp_beh`` their stored log-probabilities, ``adv_r`` the standardised
    reward and ``adv_c`` the centred cost advantages, ``b_hat`` the per-step
    constraint value; ``beta`` is the accepted line-search fraction of the
    step taken from ``phi`` (1.0 until the line search has run).
    """

    obs: np.ndarray
    act: np.ndarray
    logp_beh: np.ndarray
    adv_r: np.ndarray
    adv_c: np.ndarray
    b_hat: float
    phi: np.ndarray
    beta: float = 1.0


@dataclass(frozen=True, eq=False)
class Collected:
    """A batch collected with ``phi``, its estimates (an
    :class:`~metacpo_ref.advantages.AdvantageResult`), and the seconds spent in
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
    then estimate advantages (value functions ``vf = (vf_r, vf_c)`` refitted once,
    warm-started) and ``b_hat`` (per-step units)."""
    t0 = time.perf_counter()
    batch = collect(env, act_fn(spec, phi), config.n_episodes, seed)
    env_time = time.perf_counter() - t0
    adv = advantages(vspec, batch, vf[0], vf[1], config.gamma, config.gae_lambda, config.vf_iters)
    data = StepData(batch.obs, batch.act, batch.logp, adv.adv_r, adv.adv_c,
                    constraint_value(batch, cost_limit), np.array(phi, dtype=np.float64))
    return Collected(batch, data, adv, env_time, time.perf_counter() - t0 - env_time)


def step_problem(spec, phi, data, constrained=True):
    """``(g, a, b)`` of eq. 9 at ``phi`` on one batch, differentiable in ``phi``:

        g = grad L_R(phi),  a = grad L_C(phi),  b = b_hat + L_C(phi) - L_C(phi^collected)

    (``b = b_hat`` at the collecting parameters, and ``db/dphi = a``).
    Unconstrained (TRPO) steps get ``a = 0, b = -1``: the cost constraint never
    binds and eq. 9 is the trust-region step.
    """
    L_R, L_C = surrogates(spec, data, data.adv_r, data.adv_c, data.logp_beh)
    g = grad(L_R)(phi)
    if not constrained:
        return g, np.zeros(len(data.phi)), -1.0
    return g, grad(L_C)(phi), data.b_hat + L_C(phi) - L_C(data.phi)


def backtrack(accept, decay, max_steps):
    """Backtracking line search: the first ``beta = decay^j`` (j < max_steps) that
    ``accept(beta)`` takes, or 0.0 (keep the old parameters)."""
    for j in range(int(max_steps)):
        beta = float(decay) ** j
        if accept(beta):
            return beta
    return 0.0


def cost_ok(G_new, G):
    """Line-search test on the cost: ``G_new - G <= max(-G, 0)`` (CPO notes, section 3):
    stay feasible when feasible, get no worse when not."""
    return G_new - G <= max(-G, 0.0)


def fisher_hinv(spec, theta, obs, config):
    """``v -> H^{-1} v`` for the Fisher matrix at ``theta`` on ``obs`` (conjugate gradient
    on Fisher-vector products, ``config.cg_iters`` iterations, damping ``config.cg_damping``)."""
    def hinv(v):
        return cg(lambda u: fvp(spec, theta, obs, u, config.cg_damping), v, config.cg_iters, 1e-10)
    return hinv


@dataclass(frozen=True, eq=False)
class Update:
    """Result of :func:`policy_update`: new parameters, the step's case, the accepted
    fraction ``beta`` (0: rejected) and the surrogate changes it achieved."""

    phi: np.ndarray
    case: str
    beta: float
    dL_R: float
    dL_C: float


def policy_update(spec, phi, data, delta, config, constrained=True, metric="identity", hinv=None):
    """One update of eq. 9 on ``data`` with backtracking.

    ``metric="identity"``: the paper's Euclidean local step (0.5 ||x||^2 <= delta,
    kept by every fraction of the step). ``metric="fisher"``: CPO's KL trust
    region (Fisher matrix by CG with ``config``'s settings, or ``hinv: v -> H^{-1} v``
    when given).
    Accept when the mean KL on the batch is within ``delta`` (Fisher) or
    ``config.kl_delta`` (Euclidean: the paper's line search guards the KL
    too), the cost surrogate change is within ``max(-b, 0)`` and, unless
    recovering, the reward surrogate improves (CPO notes, section 3).
    """
    phi = np.asarray(phi, dtype=np.float64)
    g, a, b = step_problem(spec, phi, data, constrained)
    if hinv is None and metric == "fisher":
        hinv = fisher_hinv(spec, phi, data.obs, config)
    step = solve_step(g, a, b, delta, hinv=hinv)
    L_R, L_C = surrogates(spec, data, data.adv_r, data.adv_c, data.logp_beh)
    R0, C0 = L_R(phi), L_C(phi)
    found = {}

    def accept(beta):
        cand = phi + beta * step.x
        dR, dC = L_R(cand) - R0, L_C(cand) - C0
        found[beta] = (dR, dC)
        if mean_kl(spec, phi, cand, data.obs) > (delta if metric == "fisher" else config.kl_delta):
            return False
        improves = step.case == "recovery" or dR > 0
        return improves and (not constrained or dC <= max(-b, 0.0))

    beta = backtrack(accept, config.ls_decay, config.ls_steps)
    dR, dC = found.get(beta, (0.0, 0.0)) if beta > 0 else (0.0, 0.0)
    return Update(phi + beta * step.x, step.case, beta, float(dR), float(dC))
