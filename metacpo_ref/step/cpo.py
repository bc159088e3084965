"""The CPO step (paper eqs. 3-4 and 9), reward convention.

    maximize   g^T x
    subject to 0.5 x^T H x <= delta,    b + a^T x <= 0            (eq. 9, D1)

and, when no x in the trust region satisfies the linear constraint (D11), the
recovery step of eq. 4, ``x = -sqrt(2 delta / s) H^{-1} a`` (D12).

With ``q = g'H^{-1}g``, ``r = g'H^{-1}a``, ``s = a'H^{-1}a`` (D4) the dual is
``D(lam, nu) = -(q - 2 nu r + nu^2 s) / (2 lam) - lam delta + nu b`` (D5); the
optimal ``nu(lam) = max(0, (r + lam b) / s)`` (D6) leaves a concave problem in
``lam`` alone, solved here either by scipy (D7) or by the exact case analysis of
Achiam et al. (2017) (D8-D10). The primal step is ``x = H^{-1}(g - nu a) / lam`` (D3).
Derivations, the sign trap and the degenerate cases: docs/derivations.md,
sections 1-5.

Shapes: ``g, a, x`` (n,); ``b``, ``delta`` scalars.

The metric ``H`` is the identity (``H=None, hinv=None``, the paper's local
steps), a dense SPD matrix ``H``, or a callable ``hinv: v -> H^{-1} v``
(for example :func:`cg` on Fisher-vector products).
"""
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.optimize

CASES = ("trust", "both", "recovery", "degenerate")

# g is treated as parallel to a when A = q - r^2/s <= PARALLEL_TOL * q (derivations, D13).
PARALLEL_TOL = 1e-12


class DegenerateStepWarning(RuntimeWarning):
    """The optimum of eq. 9 is not unique; the step is not differentiable there."""


@dataclass(frozen=True, eq=False)
class Step:
    """Solution of eq. 9: step ``x``, multipliers ``lam`` (trust region) and ``nu``
    (cost constraint), and which ``case`` holds: "trust", "both", "recovery"
    (eq. 4, ``nu = nan``) or "degenerate" (minimum-norm point of a non-unique optimum).
    ``hinv_a = H^{-1} a`` is kept for the derivative (dco.py)."""

    x: np.ndarray
    lam: float
    nu: float
    case: str
    hinv_a: np.ndarray = field(default=None, repr=False)


def cg(matvec, v, iters, tol, x0=None):
    """Conjugate gradient for ``M y = v`` (M SPD, given as ``matvec``): at most
    ``iters`` iterations, stopping when ``||v - M y|| <= tol ||v||``; from ``y = x0`` if
    given (a warm start: one more product for its residual), else from 0."""
    v = np.asarray(v, dtype=np.float64)
    if x0 is None:
        y, res = np.zeros_like(v), v.copy()
    else:
        y = np.array(x0, dtype=np.float64)
        res = v - matvec(y)
    p = res.copy()
    rr = res @ res
    stop = (tol * np.linalg.norm(v)) ** 2
    for _ in range(iters):
        if rr <= stop:
            break
        Mp = matvec(p)
        alpha = rr / (p @ Mp)
        y = y + alpha * p
        res = res - alpha * Mp
        rr_new = res @ res
        p = res + (rr_new / rr) * p
        rr = rr_new
    return y


# --- inputs ------------------------------------------------------------------


def _finite(name, value):
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{name} contains NaN or inf")
    return value


def check_inputs(g, a, b, delta, H=None, hinv=None):
    """Validated float copies ``(g, a, b, delta, H)`` of the data of eq. 9."""
    g = _finite("g", np.asarray(g, dtype=np.float64))
    a = _finite("a", np.asarray(a, dtype=np.float64))
    if g.ndim != 1 or g.shape != a.shape or g.size == 0:
        raise ValueError(f"g and a must be 1-D arrays of the same length, got {g.shape} and {a.shape}")
    for name, v in (("b", b), ("delta", delta)):
        if np.ndim(v) != 0:
            raise ValueError(f"{name} must be a scalar, got shape {np.shape(v)}")
    b = float(_finite("b", b))
    delta = float(_finite("delta", delta))
    if delta <= 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    if H is not None and hinv is not None:
        raise ValueError("give either H or hinv, not both")
    if hinv is not None and not callable(hinv):
        raise ValueError("hinv must be a callable v -> H^{-1} v")
    if H is not None:
        H = _finite("H", np.asarray(H, dtype=np.float64))
        if H.shape != (g.size, g.size):
            raise ValueError(f"H must have shape {(g.size, g.size)}, got {H.shape}")
    return g, a, b, delta, H


def metric_solver(H=None, hinv=None):
    """The map ``v -> H^{-1} v`` of the metric: identity, Cholesky of ``sym(H)``, or ``hinv``."""
    if hinv is not None:
        return lambda v: _finite("hinv(v)", np.asarray(hinv(v), dtype=np.float64))
    if H is None:
        return lambda v: np.array(v, dtype=np.float64)
    try:
        factor = scipy.linalg.cho_factor(0.5 * (H + H.T))
    except np.linalg.LinAlgError as err:
        raise ValueError("H is not positive definite") from err
    return lambda v: scipy.linalg.cho_solve(factor, v)


# --- the one-dimensional dual ------------------------------------------------


def _nu(lam, r, s, b):
    """Optimal cost multiplier for a given ``lam``: ``max(0, (r + lam b) / s)`` (D6)."""
    return max(0.0, (r + lam * b) / s) if s > 0 else 0.0


def dual(lam, q, r, s, b, delta):
    """The dual of eq. 9 with ``nu`` eliminated, ``D(lam, nu(lam))`` (D5, D6)."""
    nu = _nu(lam, r, s, b)
    return -(q - 2 * nu * r + nu**2 * s) / (2 * lam) - lam * delta + nu * b


def lam_closed_form(q, r, s, b, delta, A):
    """Exact maximiser of the 1-D dual (Achiam et al. 2017, reward convention): the
    trust candidate ``sqrt(q / 2 delta)`` (``nu = 0``) or the both-active candidate
    ``sqrt(A / B)``, ``A = q - r^2/s``, ``B = 2 delta - b^2/s``; the dual is concave,
    so the one with the larger dual value is the maximiser (D8-D10)."""
    candidates = [np.sqrt(q / (2 * delta))]
    B = 2 * delta - b**2 / s if s > 0 else 0.0
    if A > 0 and B > 0:
        candidates.append(np.sqrt(A / B))
    return max(candidates, key=lambda lam: dual(lam, q, r, s, b, delta))


def lam_scipy(q, r, s, b, delta):
    """Maximiser of the 1-D dual by ``brentq`` on ``dD/dlam = 0.5 x'Hx - delta``
    (decreasing, as D is concave; D7), to machine precision."""

    def slope(lam):
        nu = _nu(lam, r, s, b)
        return (q - 2 * nu * r + nu**2 * s) / (2 * lam**2) - delta

    lo = hi = np.sqrt(q / (2 * delta))
    while slope(hi) > 0 and np.isfinite(2 * hi):
        hi *= 2.0
    while slope(lo) < 0 and lo / 2 > 0:
        lo /= 2.0
    if not slope(hi) <= 0 <= slope(lo):
        raise RuntimeError("could not bracket the dual maximiser")
    if lo == hi:
        return float(lo)
    return scipy.optimize.brentq(slope, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)


# --- the step ----------------------------------------------------------------


def solve_step(g, a, b, delta, H=None, hinv=None, method="scipy"):
    """Solve eq. 9 (or eq. 4 when it is infeasible); ``method`` is "scipy" or "closed_form"."""
    g, a, b, delta, H = check_inputs(g, a, b, delta, H, hinv)
    return step_from_solver(g, a, b, delta, metric_solver(H, hinv), method)


def step_from_solver(g, a, b, delta, solve, method="scipy"):
    """:func:`solve_step` on checked inputs, with ``solve: v -> H^{-1} v``."""
    if method not in ("scipy", "closed_form"):
        raise ValueError(f"method must be 'scipy' or 'closed_form', got {method!r}")
    hinv_a = solve(a)
    s = float(a @ hinv_a)
    if s <= 0 and b > 0:
        raise ValueError("a = 0 with b > 0: no step can satisfy the cost constraint")
    if b > 0 and b**2 / s >= 2 * delta:  # eq. 9 infeasible: recovery, eq. 4
        lam = np.sqrt(s / (2 * delta))
        return Step(-hinv_a / lam, float(lam), float("nan"), "recovery", hinv_a)
    hinv_g = solve(g)
    q, r = float(g @ hinv_g), float(g @ hinv_a)
    # A = q - r^2/s from the part of g H^{-1}-orthogonal to a (less cancellation).
    A = float((g - (r / s) * a) @ (hinv_g - (r / s) * hinv_a)) if s > 0 else q
    if q <= 0 or (r > 0 and A <= PARALLEL_TOL * q and r + np.sqrt(q / (2 * delta)) * b > 0):
        return _degenerate_step(q, r, s, b, hinv_a)
    lam = lam_scipy(q, r, s, b, delta) if method == "scipy" else lam_closed_form(q, r, s, b, delta, A)
    nu = _nu(lam, r, s, b)
    case = "both" if nu > 0 else "trust"
    return Step((hinv_g - nu * hinv_a) / lam, float(lam), float(nu), case, hinv_a)


def _degenerate_step(q, r, s, b, hinv_a):
    """Minimum-norm optimum when ``g = 0`` or ``g`` is parallel to ``a`` (D13)."""
    warnings.warn(
        "degenerate CPO step (g = 0, or g parallel to a with the constraint binding): "
        "the optimum is not unique, returning its minimum-norm point; the step is not "
        "differentiable here",
        DegenerateStepWarning,
        stacklevel=3,
    )
    if q <= 0 and b <= 0:
        return Step(np.zeros_like(hinv_a), 0.0, 0.0, "degenerate", hinv_a)
    return Step(-(b / s) * hinv_a, 0.0, max(r, 0.0) / s, "degenerate", hinv_a)
