"""The problem of one CPO step on a batch: eq. 9's ``(g, a, b)`` at ``phi`` (D15-D17), and
the constant the recovery rule adds to ``b`` above the limit (D34)."""
import numpy as np
from autograd import grad

from metacpo_ref.model.advantages import surrogates


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
