"""``H^{-1}`` products for the Fisher matrix ``H`` (plus damping); which one a step uses is
its :class:`~metacpo_ref.model.metric.Metric`'s choice.

Exact (:func:`fisher_solver`), for Meta-CPO's Fisher-metric local steps
(``inner_metric="fisher"``; docs/fisher-metric.md, M9: an inexact solve makes an inexact
derivative):

- ``n <= FISHER_DIRECT_MAX``: the dense ``H`` from ``n`` Fisher-vector products and a
  Cholesky factor: exact to rounding (the gradient checks use this);
- otherwise conjugate gradient to a relative residual of ``FISHER_CG_TOL``, at
  most ``FISHER_CG_MAX_ITERS`` iterations (a :class:`InexactSolveWarning` if the
  tolerance is not reached). Measured (docs/fisher-metric.md): 61 iterations at
  n = 1492, 95 at n = 6052; a dense build would take n products instead.

CPO's usual few CG iterations (:func:`fisher_cg_solver`), for the CPO / TRPO baselines and
the Fisher-metric outer step: their steps are not differentiated.
"""
import warnings

import numpy as np
import scipy.linalg

from metacpo_ref.config import BASELINE_CG_TOL, FISHER_CG_MAX_ITERS, FISHER_CG_TOL, FISHER_DIRECT_MAX
from metacpo_ref.step.cpo import cg
from metacpo_ref.model.policy import fisher_product, fvp


class InexactSolveWarning(RuntimeWarning):
    """CG stopped at its iteration cap above its residual tolerance: the step and its
    derivative are only as exact as that residual (M9)."""


def fisher_hvp(spec, obs, damping):
    """``hvp(phi, v) = (H(phi) + damping I) v`` on ``obs``, differentiable in ``phi``."""
    return lambda phi, v: fvp(spec, phi, obs, v, damping)


def fisher_matrix(spec, phi, obs, damping):
    """The dense ``H(phi) + damping I`` (symmetrised), column by column: ``n`` products."""
    product = fisher_product(spec, np.asarray(phi, dtype=np.float64), obs, damping)
    H = np.stack([product(e) for e in np.eye(len(phi))], axis=1)
    return 0.5 * (H + H.T)


def fisher_solver(spec, phi, obs, damping, direct_max=FISHER_DIRECT_MAX, tol=FISHER_CG_TOL,
                  max_iters=FISHER_CG_MAX_ITERS):
    """``(v, x0=None) -> (H(phi) + damping I)^{-1} v``: Cholesky for ``n <= direct_max`` (``x0``
    unused), else CG to relative residual ``tol`` from ``x0`` (a warm start) or 0, at most
    ``max_iters`` iterations (if CG stopped at the cap rather than by its residual, one more
    product checks the true residual)."""
    phi = np.asarray(phi, dtype=np.float64)
    if len(phi) <= direct_max:
        factor = scipy.linalg.cho_factor(fisher_matrix(spec, phi, obs, damping))
        return lambda v, x0=None: scipy.linalg.cho_solve(factor, np.asarray(v, dtype=np.float64))

    matvec = fisher_product(spec, phi, obs, damping)

    def solve(v, x0=None):
        v = np.asarray(v, dtype=np.float64)
        made = []

        def counted(p):
            made.append(None)
            return matvec(p)

        y = cg(counted, v, max_iters, tol, x0)
        if len(made) - (x0 is not None) < max_iters:   # stopped by its recurrence residual <= tol, which
            return y            # drifts from the true one by ~tol: within the 10 tol below, no check needed
        res = np.linalg.norm(v - matvec(y)) / max(np.linalg.norm(v), 1e-300)
        if res > 10 * tol:
            warnings.warn(f"conjugate gradient reached relative residual {res:.2g} > {tol:g} in "
                          f"{max_iters} iterations: the Fisher step and its derivative are inexact "
                          "(raise FISHER_CG_MAX_ITERS or cg_damping)", InexactSolveWarning, stacklevel=2)
        return y

    return solve


def fisher_cg_solver(spec, phi, obs, damping, iters, tol=BASELINE_CG_TOL):
    """``v -> (H(phi) + damping I)^{-1} v`` by ``iters`` conjugate-gradient iterations
    on Fisher-vector products (CPO's usual truncated solve; derivations, section 7)."""
    product = fisher_product(spec, np.asarray(phi, dtype=np.float64), obs, damping)
    return lambda v: cg(product, v, iters, tol)
