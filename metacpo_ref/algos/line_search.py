"""The backtracking line search of every CPO / TRPO step, local and outer (Algorithm 1,
lines 9 and 14; docs/derivations.md, section 7): fractions ``beta = decay^j`` (D18), each
judged by one acceptance rule (D19)."""
from dataclasses import dataclass

import numpy as np

from metacpo_ref.model.policy import gaussian_log_prob, gaussian_mean_kl, mean_and_log_std


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
