"""One CPO (or TRPO) policy update on one batch: eq. 9 on the surrogates, then a
backtracking line search (Algorithm 1, lines 8-9; docs/derivations.md, section 7).
The line search (:func:`backtrack` with the rule :class:`Acceptance`) is also the
outer step's (:func:`metacpo_ref.algos.meta.outer_step`).

Shared by the inner loop of every algorithm (:mod:`metacpo_ref.algos.iteration`), meta-testing
(:mod:`metacpo_ref.run.training`) and the CPO and TRPO baselines' pooled update.
"""
import time
from dataclasses import dataclass

import numpy as np
from autograd import grad

from metacpo_ref.model.advantages import (ValueSpec, advantages, constraint_value, measured_cost, surrogates,
                                    weight_cost_advantages)
from metacpo_ref.envs.families import FAMILIES
from metacpo_ref.step.cpo import cg, solve_step
from metacpo_ref.model.fisher_solve import fisher_solver
from metacpo_ref.model.policy import PolicySpec, act_fn, fisher_product, gaussian_log_prob, gaussian_mean_kl, mean_and_log_std
from metacpo_ref.envs.rollouts import collect


@dataclass(frozen=True, eq=False)
class StepData:
    """One batch as the update sees it (Algorithm 1, lines 7-8).

    ``phi`` are the parameters that collected the batch (``phi_k^collected``),
    ``logp_beh`` their stored log-probabilities, ``adv_r`` the standardised
    reward and ``adv_c`` the centred cost advantages (in the weights of the run's cost
    measure, D38), ``b_hat`` the per-step constraint value (D37); ``beta`` is the accepted line-search fraction of the
    step taken from ``phi`` (1.0 until the line search has run) and ``b_shift``
    the constant :func:`recovery_shift` added to ``b`` (0.0 until the update has run).
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


def step_problem(spec, phi, data, constrained=True):
    """``(g, a, b)`` of eq. 9 at ``phi`` on one batch, differentiable in ``phi`` (D15-D17):

        g = grad L_R(phi),  a = grad L_C(phi),  b = b_hat + L_C(phi) - L_C(phi^collected) + b_shift

    (``b = b_hat + b_shift`` at the collecting parameters, and ``db/dphi = a``;
    ``b_shift`` is the recorded constant of :func:`recovery_shift`, D34).
    Unconstrained (TRPO) steps get ``a = 0, b = -1``: the cost constraint never
    binds and eq. 9 is the trust-region step.
    """
    L_R, L_C = surrogates(spec, data, data.adv_r, data.adv_c, data.logp_beh)
    g = grad(L_R)(phi)
    if not constrained:
        return g, np.zeros(len(data.phi)), -1.0
    return g, grad(L_C)(phi), data.b_hat + data.b_shift + L_C(phi) - L_C(data.phi)


def step_problem_values(spec, phi, data, constrained=True):
    """``(g, a, b, L_R(phi), L_C(phi))``: :func:`step_problem` at a plain ``phi`` (not
    differentiated further) with the surrogates' values at ``phi``, each evaluated once;
    ``L_C(phi^collected)`` is ``L_C(phi)`` when the batch was collected with ``phi``
    (every update in training). The same floats as :func:`step_problem` and separate
    evaluations, with two network passes fewer. (The values are plain evaluations, not
    the gradients' forward passes: autograd computes ``z ** 2`` as ``power(z, 2)``,
    which differs from NumPy's ``square`` in the last bit.)"""
    L_R, L_C = surrogates(spec, data, data.adv_r, data.adv_c, data.logp_beh)
    g, R0, C0 = grad(L_R)(phi), L_R(phi), L_C(phi)
    if not constrained:
        return g, np.zeros(len(data.phi)), -1.0, R0, C0
    collected = C0 if np.array_equal(phi, data.phi) else L_C(data.phi)
    return g, grad(L_C)(phi), data.b_hat + data.b_shift + C0 - collected, R0, C0


def line_search_values(spec, phi, data):
    """``cand -> (mean KL from phi, L_R(cand), L_C(cand))`` on ``data`` (D18, D19) with one
    network pass per candidate (``phi``'s own pass is done once): the arithmetic of
    :func:`metacpo_ref.model.policy.mean_kl` and :func:`metacpo_ref.model.advantages.surrogates`, so
    the same floats as evaluating them one by one."""
    obs = np.array(data.obs, dtype=np.float64)
    act = np.array(data.act, dtype=np.float64)
    logp_beh = np.array(data.logp_beh, dtype=np.float64)
    adv_r = np.array(data.adv_r, dtype=np.float64)
    adv_c = np.array(data.adv_c, dtype=np.float64)
    mu_old, ls_old = mean_and_log_std(spec, phi, obs)

    def values(cand):
        mu, ls = mean_and_log_std(spec, cand, obs)
        ratio = np.exp(gaussian_log_prob(mu, ls, act) - logp_beh)
        return gaussian_mean_kl(mu_old, ls_old, mu, ls), np.mean(ratio * adv_r), np.mean(ratio * adv_c)

    return values


def solve_once(hinv):
    """``hinv`` (``v -> H^{-1} v``) that remembers its last answer: the recovery rule
    (:func:`recovery_shift`) and the step (:func:`metacpo_ref.step.cpo.solve_step`) both need
    ``H^{-1} a``; with the Fisher metric it is one CG or Cholesky solve, not two."""
    last = []

    def solve(v):
        if last and (last[0] is v or np.array_equal(last[0], v)):
            return last[1]
        last[:] = [np.array(v, dtype=np.float64), hinv(v)]
        return last[1]

    return solve


def recovery_shift(b_hat, a, solve, delta, config):
    """The constant added to ``b`` before eq. 9 is solved (D34): above the limit, recover.

    With ``config.recover_above_limit`` and the measured cost above the limit
    (``b_hat > 0``; ``s = a^T H^{-1} a > 0``, ``solve: v -> H^{-1} v``, None for
    ``H = I``, called only then), enough to make eq. 9 infeasible with room to spare,
    ``b + shift >= 2 sqrt(2 delta s)`` (D8 needs ``b^2 / s >= 2 delta``), so that the
    step is eq. 4's recovery step ``-sqrt(2 delta / s) H^{-1} a``, which does not
    depend on ``b``; otherwise 0.0 (eq. 9 as it is). The shift is a recorded constant
    of the differentiated chain, like ``beta``.
    """
    if not (config.constrained and config.recover_above_limit and b_hat > 0):
        return 0.0
    s = float(a @ (a if solve is None else solve(a)))
    if s <= 0:
        return 0.0
    return max(0.0, 2.0 * float(np.sqrt(2.0 * delta * s)) - float(b_hat))


def specs(config):
    """``(PolicySpec, ValueSpec)`` of a config's family (its observation and action sizes)."""
    family = FAMILIES[config.family]
    return PolicySpec(family.obs_dim, family.act_dim, tuple(config.hidden)), ValueSpec(family.obs_dim)


# --- the line search (D18, D19) -------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """One line-search fraction ``beta``: the mean KL from the old policy, and the
    reward and cost values there (surrogates ``L_R, L_C``; in the outer step ``F, G``)."""

    beta: float
    kl: float
    R: float
    C: float


@dataclass(frozen=True)
class Acceptance:
    """The acceptance rule (D19) of a step from values ``R0, C0`` with constraint value
    ``b``: mean KL within ``kl_bound``; unless unconstrained, cost change within
    ``max(-b, 0)``; unless ``recovery``, the reward improves."""

    R0: float
    C0: float
    b: float
    kl_bound: float
    recovery: bool
    constrained: bool

    def __call__(self, cand):
        if cand.kl > self.kl_bound:
            return False
        improves = self.recovery or cand.R - self.R0 > 0
        return improves and (not self.constrained or cand.C - self.C0 <= max(-self.b, 0.0))


def backtrack(evaluate, accepts, decay, max_steps):
    """Backtracking line search (D18): the first :class:`Candidate` ``evaluate(beta)``,
    ``beta = decay^j`` (j < max_steps), that ``accepts`` takes, or ``None`` (keep the
    old parameters)."""
    for j in range(int(max_steps)):
        cand = evaluate(float(decay) ** j)
        if accepts(cand):
            return cand
    return None


def fisher_hinv(spec, theta, obs, config):
    """``v -> H^{-1} v`` for the Fisher matrix at ``theta`` on ``obs`` (conjugate gradient
    on Fisher-vector products, ``config.cg_iters`` iterations, damping ``config.cg_damping``)."""
    product = fisher_product(spec, np.asarray(theta, dtype=np.float64), obs, config.cg_damping)
    return lambda v: cg(product, v, config.cg_iters, 1e-10)


@dataclass(frozen=True, eq=False)
class Update:
    """Result of :func:`policy_update`: new parameters, the step's ``case``, its
    multipliers ``lam`` and ``nu`` (eq. 9; ``nu`` NaN in recovery), the accepted
    fraction ``beta`` (0: rejected), the surrogate changes it achieved, and the
    constant ``b_shift`` (:func:`recovery_shift`) that was added to ``b``."""

    phi: np.ndarray
    case: str
    beta: float
    dL_R: float
    dL_C: float
    lam: float
    nu: float
    b_shift: float = 0.0


def local_rule(config):
    """``(metric, delta)`` of the algorithm's own update: the local step of meta-cpo and
    meta-trpo in ``config.inner_metric`` with radius ``inner_delta`` (the paper's Euclidean
    step, or the Fisher-metric step with ``inner_delta`` read as a KL radius), or the
    Fisher-metric step of KL radius ``baseline_delta`` (the cpo and trpo baselines)."""
    return (config.inner_metric, config.inner_delta) if config.meta else ("fisher", config.baseline_delta)


def policy_update(spec, phi, data, config):
    """One update of eq. 9 on ``data`` with backtracking, by the algorithm's own rule
    (:func:`local_rule`; CPO steps for meta-cpo and cpo, trust-region steps for
    meta-trpo and trpo).

    ``identity``: the paper's Euclidean local step (0.5 ||x||^2 <= delta, kept by
    every fraction of the step); the line search bounds the mean KL by
    ``config.ls_kl``. ``fisher``: CPO's KL trust region (the baselines: Fisher matrix by
    CG with ``config``'s settings; Meta-CPO's local steps: the exact ``H^{-1}`` of
    :mod:`metacpo_ref.model.fisher_solve`, so that the step taken is the step differentiated);
    the line search bounds the mean KL by ``delta``.
    Acceptance: (D19). Above the limit the step is the recovery step
    (:func:`recovery_shift`, D34), with ``config.recover_above_limit``.
    """
    metric, delta = local_rule(config)
    phi = np.asarray(phi, dtype=np.float64)
    g, a, b, R0, C0 = step_problem_values(spec, phi, data, config.constrained)
    hinv = None
    if metric == "fisher":
        hinv = solve_once(fisher_solver(spec, phi, data.obs, config.cg_damping) if config.meta
                          else fisher_hinv(spec, phi, data.obs, config))
    shift = recovery_shift(data.b_hat, a, hinv, delta, config)
    b = b + shift
    step = solve_step(g, a, b, delta, hinv=hinv)
    values = line_search_values(spec, phi, data)

    def evaluate(beta):
        cand = phi + beta * step.x
        kl, R, C = values(cand)
        return Candidate(beta, kl, R, C)

    accepts = Acceptance(R0, C0, b, delta if metric == "fisher" else config.ls_kl,
                         step.case == "recovery", config.constrained)
    found = backtrack(evaluate, accepts, config.ls_decay, config.ls_steps)
    if found is None:
        return Update(phi + 0.0 * step.x, step.case, 0.0, 0.0, 0.0, step.lam, step.nu, shift)
    return Update(phi + found.beta * step.x, step.case, found.beta, float(found.R - R0), float(found.C - C0),
                  step.lam, step.nu, shift)
