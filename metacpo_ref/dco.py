"""Differentiating the CPO step (DCO, paper eqs. 5-7 applied to eq. 9).

The step ``x(g, a, b, delta, H)`` of eq. 9 solves the KKT conditions (eq. 7)

    F1 = -g + lam H x + nu a = 0,   F2 = 0.5 x'Hx - delta = 0,   F3 = b + a'x = 0

(F3 and ``nu`` only when the cost constraint is active). By the implicit
function theorem the vector-Jacobian product is ``pbar = -(dF/dp)' w`` with
``K w = (xbar, 0, 0)`` and ``K = [[lam H, Hx, a], [(Hx)', 0, 0], [a', 0, 0]]``
the symmetric KKT matrix. Block elimination needs one ``H^{-1}`` product,
``v = H^{-1} xbar``, and a 2x2 (or scalar) solve; for the identity metric
everything is O(n) and no n x n matrix is formed. The recovery step of eq. 4
solves ``min a'x`` in the trust region: the same two-block system with ``g``
replaced by ``-a`` and ``lam = sqrt(s / 2 delta)``. See
../shared/notes/cpo-step.md, section 5.

:func:`cpo_layer` is the step as an ``autograd`` primitive with this VJP.

:func:`qp_layer` (last section) is the generic QP of eq. 5 as a layer: an
interior-point forward pass polished on the active set, and the backward pass of
eq. 7 as one solve with the active-set KKT matrix (OptNet, Amos & Kolter 2017).
"""
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.optimize
from autograd.extend import defvjp_argnums, primitive
from autograd.tracer import getval

from metacpo_ref.cpo import check_inputs, metric_solver, step_from_solver


def _sym(M):
    return 0.5 * (M + M.T)


def trust_block(x, lam, delta, xbar, v):
    """Solve the two-block KKT system (trust region active): ``(u, w2)`` with
    ``w2 = x'xbar / (2 delta)`` and ``u = (v - w2 x) / lam``."""
    w2 = (x @ xbar) / (2 * delta)
    return (v - w2 * x) / lam, w2


def both_block(x, lam, b, delta, a, hinv_a, xbar, v):
    """Solve ``K (u, w2, w3) = (xbar, 0, 0)`` by block elimination (both constraints
    active): ``u = (v - w2 x - w3 H^{-1}a) / lam`` with ``(w2, w3)`` from
    ``x'xbar - 2 delta w2 + b w3 = 0`` and ``a'v + b w2 - s w3 = 0``."""
    s = a @ hinv_a
    c1, c2 = x @ xbar, a @ v
    det = 2 * delta * s - b**2
    w2 = (s * c1 + b * c2) / det
    w3 = (2 * delta * c2 + b * c1) / det
    return (v - w2 * x - w3 * hinv_a) / lam, w2, w3


def _metric_bar(lam, u, x, w2):
    """Cotangent of a dense metric, ``Hbar = -sym(lam u x' + 0.5 w2 x x')``."""
    return -_sym(lam * np.outer(u, x) + 0.5 * w2 * np.outer(x, x))


def step_vjp(step, xbar, a, b, delta, solve, with_H=False):
    """VJP of :class:`~metacpo_ref.cpo.Step` ``step.x`` on checked inputs, with
    ``solve: v -> H^{-1} v``; returns ``(gbar, abar, bbar, deltabar, Hbar)``."""
    xbar = np.asarray(xbar, dtype=np.float64)
    x, lam, nu, hinv_a = step.x, step.lam, step.nu, step.hinv_a
    zero = np.zeros_like(x)
    if step.case == "degenerate":
        return _degenerate_vjp(step, xbar, a, b, solve, with_H)
    v = solve(xbar)
    if step.case == "both":
        u, w2, w3 = both_block(x, lam, b, delta, a, hinv_a, xbar, v)
        gbar, abar, bbar = u, -(nu * u + w3 * x), -w3
    else:
        u, w2 = trust_block(x, lam, delta, xbar, v)
        gbar, abar, bbar = (u, zero, 0.0) if step.case == "trust" else (zero, -u, 0.0)
    Hbar = _metric_bar(lam, u, x, w2) if with_H else None
    return gbar, abar, float(bbar), float(w2), Hbar


def _degenerate_vjp(step, xbar, a, b, solve, with_H):
    """Derivative of the minimum-norm point ``x = -(b/s) H^{-1}a`` (or ``x = 0``) along
    the degenerate set: ``gbar = deltabar = 0``. A one-sided choice: the step is not
    differentiable in ``g`` there."""
    zero = np.zeros_like(step.x)
    if not np.any(step.x):
        return zero, zero, 0.0, 0.0, (np.zeros((zero.size, zero.size)) if with_H else None)
    y = step.hinv_a
    s = a @ y
    v = solve(xbar)
    av = a @ v
    abar = -(b / s) * v + (2 * b * av / s**2) * y
    Hbar = _sym((b / s) * np.outer(v, y) - (b * av / s**2) * np.outer(y, y)) if with_H else None
    return zero, abar, float(-av / s), 0.0, Hbar


def cpo_step_vjp(step, xbar, g, a, b, delta, H=None, hinv=None):
    """VJP of the step of eq. 9 (eqs. 5-7): ``(gbar, abar, bbar, deltabar, Hbar)`` for
    the cotangent ``xbar`` of ``step.x``; ``Hbar`` is ``None`` unless ``H`` is dense."""
    g, a, b, delta, H = check_inputs(g, a, b, delta, H, hinv)
    return step_vjp(step, xbar, a, b, delta, metric_solver(H, hinv), with_H=H is not None)


@primitive
def _layer(g, a, b, delta, H, step=None, solve=None):
    """The step ``x`` of eq. 9; ``step`` was solved from the same arguments."""
    return step.x


def _layer_vjpmaker(argnums, x, args, kwargs):
    g, a, b, delta, H = args
    a_val, delta_val = np.asarray(a, dtype=np.float64), float(delta)

    def vjp(xbar):
        bars = step_vjp(kwargs["step"], xbar, a_val, float(b), delta_val, kwargs["solve"], with_H=4 in argnums)
        return tuple(bars[i] for i in argnums)

    return vjp


defvjp_argnums(_layer, _layer_vjpmaker)


def cpo_layer(g, a, b, delta, H=None, hinv=None):
    """The step of eq. 9 (eq. 4 when infeasible) as a differentiable layer (DCO, eqs. 5-7):
    autograd can differentiate ``x`` in ``g``, ``a``, ``b``, ``delta`` and a dense ``H``."""
    gv, av, bv, dv, Hv = check_inputs(getval(g), getval(a), getval(b), getval(delta), getval(H), hinv)
    solve = metric_solver(Hv, hinv)
    step = step_from_solver(gv, av, bv, dv, solve, method="closed_form")
    return _layer(g, a, b, delta, H, step=step, solve=solve)


# --- the generic QP layer (paper eqs. 5-7, OptNet) -----------------------------
#
#     minimize  0.5 z'Qz + q'z   subject to   A z = b,  G z <= h            (eq. 5)
#
# Lagrangian L = 0.5 z'Qz + q'z + nu'(Az - b) + lam'(Gz - h)                 (eq. 6)
# KKT: Qz + q + A'nu + G'lam = 0,  Az = b,  D(lam)(Gz - h) = 0,  lam >= 0     (eq. 7)

_SYM_TOL = 1e-10  # |Q - Q'| <= _SYM_TOL max(1, max|Q|)
_PSD_TOL = 1e-10  # Q + _PSD_TOL n max(1, max|Q|) I must have a Cholesky factor
_RCOND_MIN = 1e-14  # reciprocal condition number below which a KKT matrix is singular


class QPError(ValueError):
    """Bad data for :func:`qp_layer`, or a QP without a unique solution."""


class InfeasibleQPError(QPError):
    """No z satisfies ``A z = b, G z <= h``."""


class UnboundedQPError(QPError):
    """The objective of eq. 5 is unbounded below on the feasible set."""


class DegenerateQPWarning(RuntimeWarning):
    """The active-set KKT matrix of the solution is singular (linearly dependent
    active constraints, so the multipliers are not unique): ``z`` is the
    interior-point iterate (~1e-8) and its derivative a least-squares choice."""


@dataclass(frozen=True, eq=False)
class QPSolution:
    """Solution of eq. 5: primal ``z``, multipliers ``lam`` (inequalities, >= 0) and
    ``nu`` (equalities), the boolean ``active`` mask of the inequalities, and
    ``kkt_solve: r -> K^{-1} r`` for the active-set KKT matrix ``K`` (see
    :func:`qp_vjp`); ``polished`` is False when the degenerate fallback was used."""

    z: np.ndarray
    lam: np.ndarray
    nu: np.ndarray
    active: np.ndarray
    kkt_solve: object = field(repr=False)
    iterations: int = 0
    polished: bool = True


def _qp_array(name, value, ndim, shape=None):
    """``value`` as a finite float array with ``ndim`` dimensions (and ``shape``)."""
    value = np.asarray(value, dtype=np.float64)
    if value.ndim != ndim:
        raise QPError(f"{name} must be a {ndim}-D array, got shape {value.shape}")
    if shape is not None and value.shape != shape:
        raise QPError(f"{name} must have shape {shape}, got {value.shape}")
    if not np.all(np.isfinite(value)):
        raise QPError(f"{name} contains NaN or inf")
    return value


def _qp_pair(names, M, v, n):
    """A constraint pair ``(M, v)`` of eq. 5, ``None`` meaning no rows."""
    if (M is None) != (v is None):
        raise QPError(f"give both {names[0]} and {names[1]} or neither")
    if M is None:
        return np.zeros((0, n)), np.zeros(0)
    M = _qp_array(names[0], M, 2)
    if M.shape[1] != n:
        raise QPError(f"{names[0]} must have {n} columns (the size of q), got shape {M.shape}")
    return M, _qp_array(names[1], v, 1, (M.shape[0],))


def _check_qp(Q, q, A, b, G, h):
    """Validated float copies ``(sym(Q), q, A, b, G, h)`` of the data of eq. 5; absent
    constraints become empty arrays. Raises :class:`QPError` on NaN/inf, bad shapes,
    or a ``Q`` that is not symmetric positive semidefinite."""
    q = _qp_array("q", q, 1)
    n = q.size
    if n == 0:
        raise QPError("q must not be empty")
    Q = _qp_array("Q", Q, 2, (n, n))
    A, b = _qp_pair(("A", "b"), A, b, n)
    G, h = _qp_pair(("G", "h"), G, h, n)
    scale = max(1.0, float(np.max(np.abs(Q))))
    asym = float(np.max(np.abs(Q - Q.T)))
    if asym > _SYM_TOL * scale:
        raise QPError(f"Q is not symmetric (max |Q - Q'| = {asym:.3g})")
    Q = 0.5 * (Q + Q.T)
    try:
        np.linalg.cholesky(Q + _PSD_TOL * n * scale * np.eye(n))
    except np.linalg.LinAlgError:
        raise QPError(f"Q is not positive semidefinite (smallest eigenvalue "
                      f"{np.linalg.eigvalsh(Q)[0]:.3g})") from None
    return Q, q, A, b, G, h


def _lu(K):
    """LU factors of ``K``; a singular ``K`` is the caller's to detect (no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.lu_factor(K, check_finite=False)


def _factor(K):
    """LU factors of ``K`` and its reciprocal condition number (1-norm)."""
    lu, piv = _lu(K)
    rcond = scipy.linalg.lapack.dgecon(lu, np.linalg.norm(K, 1), norm="1")[0] if K.size else 1.0
    return (lu, piv), rcond


def _gram(G, W):
    """``G' D(W) G`` by a symmetric rank-k update (half the flops of a product)."""
    if G.shape[0] == 0:
        return np.zeros((G.shape[1], G.shape[1]))
    U = scipy.linalg.blas.dsyrk(1.0, G * np.sqrt(W)[:, None], trans=1)  # upper triangle
    S = U + U.T
    S.flat[::S.shape[0] + 1] *= 0.5
    return S


def _kkt_merit(Q, q, A, b, G, h, z, s, lam, nu):
    """Relative KKT error of an interior-point iterate: the largest of the dual and
    primal residuals of eq. 7 and the gap ``s'lam``, each over the size of its terms."""
    Qz, Gz, Az = Q @ z, G @ z, A @ z
    inf = lambda *vs: max(np.max(np.abs(v), initial=0.0) for v in vs)
    dual = inf(Qz + q + G.T @ lam + A.T @ nu) / (1.0 + inf(Qz, q, G.T @ lam, A.T @ nu))
    primal = inf(Gz + s - h, Az - b) / (1.0 + inf(Gz, h, Az, b))
    gap = (s @ lam) / (1.0 + abs(0.5 * z @ Qz + q @ z))
    return max(dual, primal, gap)


def _interior_point(Q, q, A, b, G, h, tol=1e-9, max_iter=50, patience=3):
    """Primal-dual interior-point method (Mehrotra predictor-corrector, as in OptNet's
    qpth) on eq. 7 with slacks ``s = h - Gz > 0``. Stops at :func:`_kkt_merit` ``<= tol``,
    or when a merit below ``sqrt(tol)`` has not improved for ``patience`` iterations
    (the rounding floor), or after ``max_iter``, and returns ``(z, s, lam, nu, merit)`` of the best iterate and
    the number of iterations, or ``None`` if the start is not finite. Needs ``m >= 1``
    inequalities (without them eq. 7 is one linear solve).

    Each Newton step solves the condensed system
    ``[[Q + G'WG, A'], [A, 0]] (dz, dnu) = rhs`` with ``W = D(lam / s)``; one LU factor
    serves the predictor and the corrector."""
    n, m, p = q.size, h.size, b.size
    newton = lambda W: np.block([[Q + _gram(G, W), A.T], [A, np.zeros((p, p))]])
    with np.errstate(all="ignore"):  # start: min 0.5 z'Qz + q'z + 0.5 |Gz - h|^2, Az = b
        start = scipy.linalg.lu_solve(_lu(newton(np.ones(m))), np.concatenate([-q + G.T @ h, b]),
                                      check_finite=False)
        z, nu = start[:n], start[n:]
        s = h - G @ z
        s = s + max(0.0, 1.0 - np.min(s))
    lam = np.ones(m)
    best, best_it = None, 0
    for it in range(max_iter + 1):
        if not np.all(np.isfinite(np.concatenate([z, s, lam, nu]))):
            break
        merit = _kkt_merit(Q, q, A, b, G, h, z, s, lam, nu)
        if best is None or merit < best[-1]:
            best, best_it = (z, s, lam, nu, merit), it
        stalled = it - best_it >= patience and best[-1] <= np.sqrt(tol)
        if merit <= tol or stalled or it == max_iter:
            break
        rd, rg, ra = Q @ z + q + G.T @ lam + A.T @ nu, G @ z + s - h, A @ z - b
        mu = (s @ lam) / m
        with np.errstate(all="ignore"):
            lu = _lu(newton(lam / s))

        def direction(rc):
            """Newton direction for ``S dlam + Lam ds = -rc``."""
            t = (lam * rg - rc) / s
            d = scipy.linalg.lu_solve(lu, np.concatenate([-rd - G.T @ t, -ra]), check_finite=False)
            dz, dnu = d[:n], d[n:]
            ds = -rg - G @ dz
            return dz, ds, (-rc - lam * ds) / s, dnu

        def max_step(ds, dlam):
            ratios = np.concatenate([-s[ds < 0] / ds[ds < 0], -lam[dlam < 0] / dlam[dlam < 0]])
            return min(1.0, np.min(ratios, initial=np.inf))

        with np.errstate(all="ignore"):
            dz, ds, dlam, dnu = direction(s * lam)  # predictor (affine scaling)
            alpha = max_step(ds, dlam)
            sigma = (((s + alpha * ds) @ (lam + alpha * dlam)) / m / mu) ** 3
            dz, ds, dlam, dnu = direction(s * lam + ds * dlam - sigma * mu)  # corrector
            alpha = 0.99 * max_step(ds, dlam)
            z, s, lam, nu = z + alpha * dz, s + alpha * ds, lam + alpha * dlam, nu + alpha * dnu
    return None if best is None else (best, it)


def _kkt_matrix(Q, A, GS):
    """The active-set KKT matrix ``K = [[Q, GS', A'], [GS, 0, 0], [A, 0, 0]]`` (symmetric)."""
    C = np.vstack([GS, A])
    return np.block([[Q, C.T], [C, np.zeros((C.shape[0], C.shape[0]))]])


def _polish(Q, q, A, b, G, h, active, rounds=5):
    """Solve the equality-constrained KKT system of eq. 7 on the active set
    ``S`` (``G_S z = h_S``, ``lam`` = 0 off ``S``), with one step of iterative
    refinement; check ``lam_S >= 0`` and ``G z <= h``, move the offending
    constraints and repeat. Returns a :class:`QPSolution`, or ``None`` if the
    active-set KKT matrix is singular or the active set does not settle."""
    n, m = q.size, h.size
    tol_p = 1e-9 * (1.0 + np.max(np.abs(h), initial=0.0))
    tol_d = 1e-9 * (1.0 + np.max(np.abs(q)))
    for _ in range(rounds):
        K = _kkt_matrix(Q, A, G[active])
        lu, rcond = _factor(K)
        if not rcond >= _RCOND_MIN:
            return None
        rhs = np.concatenate([-q, h[active], b])
        x = scipy.linalg.lu_solve(lu, rhs, check_finite=False)
        x = x + scipy.linalg.lu_solve(lu, rhs - K @ x, check_finite=False)
        k = int(active.sum())
        z, lam = x[:n], np.zeros(m)
        lam[active] = x[n:n + k]
        bad_dual = active & (lam < -tol_d)
        bad_primal = ~active & (G @ z - h > tol_p)
        if not (bad_dual.any() or bad_primal.any()):
            kkt_solve = lambda r, lu=lu: scipy.linalg.lu_solve(lu, r, check_finite=False)
            return QPSolution(z, lam, x[n + k:], active, kkt_solve)
        active = (active & ~bad_dual) | bad_primal
    return None


def _diagnose(Q, q, A, b, G, h, merit=None):
    """Raise the error that explains why eq. 5 has no unique solution: infeasible
    (phase-one LP), unbounded (an LP finds ``d`` with ``Qd = 0, Ad = 0, Gd <= 0,
    q'd < 0``), else a singular KKT system."""
    n = q.size
    eq = dict(A_eq=A, b_eq=b) if b.size else {}
    ub = dict(A_ub=G, b_ub=h) if h.size else {}
    phase1 = scipy.optimize.linprog(np.zeros(n), bounds=(None, None), method="highs", **eq, **ub)
    if phase1.status == 2:
        raise InfeasibleQPError("the QP is infeasible: no z satisfies A z = b, G z <= h")
    ray = scipy.optimize.linprog(q, A_eq=np.vstack([Q, A]), b_eq=np.zeros(n + b.size),
                                 bounds=(-1, 1), method="highs",
                                 **(dict(A_ub=G, b_ub=np.zeros(h.size)) if h.size else {}))
    if ray.status == 0 and ray.fun < -1e-9 * (1.0 + np.max(np.abs(q))):
        raise UnboundedQPError("the QP is unbounded below: a feasible ray d (Qd = 0, Ad = 0, "
                               f"Gd <= 0) has q'd = {ray.fun:.3g} < 0")
    if merit is not None:
        raise QPError(f"the interior-point method did not converge (relative KKT error {merit:.2g}); "
                      "the QP may be badly scaled or have no unique solution")
    raise QPError("the QP has no unique solution (or unique multipliers): its KKT system is "
                  "singular; check for dependent rows of A or a Q singular on the feasible set")


def _degenerate(Q, q, A, b, G, h, ipm):
    """Fallback when polishing fails: the interior-point iterate, with a
    least-squares solve of the active-set KKT matrix for the derivative."""
    (z, s, lam, nu, _), it = ipm
    warnings.warn("degenerate QP (linearly dependent active constraints, or an active set "
                  "that does not settle): z is the interior-point solution, and its derivative "
                  "is a least-squares choice", DegenerateQPWarning, stacklevel=4)
    active = lam > s
    K = _kkt_matrix(Q, A, G[active])
    kkt_solve = lambda r: np.linalg.lstsq(K, r, rcond=None)[0]
    return QPSolution(z, np.where(active, lam, 0.0), nu, active, kkt_solve, it, polished=False)


def solve_qp(Q, q, A=None, b=None, G=None, h=None):
    """Solve eq. 5 to ~1e-12: interior point, then :func:`_polish` on its active set
    (``lam > s``). Returns a :class:`QPSolution`; raises :class:`QPError`,
    :class:`InfeasibleQPError` or :class:`UnboundedQPError`."""
    Q, q, A, b, G, h = _check_qp(Q, q, A, b, G, h)
    return _solve_checked(Q, q, A, b, G, h)


def _solve_checked(Q, q, A, b, G, h):
    """:func:`solve_qp` on checked data."""
    if h.size == 0:  # equality constraints only: one KKT solve
        sol = _polish(Q, q, A, b, G, h, np.zeros(0, dtype=bool), rounds=1)
        if sol is None:
            _diagnose(Q, q, A, b, G, h)  # raises
        return sol
    ipm = _interior_point(Q, q, A, b, G, h)
    if ipm is None:
        _diagnose(Q, q, A, b, G, h)  # raises
    (z, s, lam, nu, merit), it = ipm
    sol = _polish(Q, q, A, b, G, h, lam > s)  # checks the KKT conditions itself
    if sol is not None:
        return QPSolution(sol.z, sol.lam, sol.nu, sol.active, sol.kkt_solve, it)
    if merit > 1e-8:
        _diagnose(Q, q, A, b, G, h, merit)  # raises
    return _degenerate(Q, q, A, b, G, h, ipm)


def qp_vjp(sol, zbar):
    """Cotangents ``(Qbar, qbar, Abar, bbar, Gbar, hbar)`` of eq. 5 for the cotangent
    ``zbar`` of ``z`` (implicit function theorem on eq. 7).

    The paper (after eq. 7) and OptNet write the backward pass as one solve,

        [[Q, G'D(lam), A'], [G, D(Gz - h), 0], [A, 0, 0]] (dz, dlam, dnu) = (-zbar, 0, 0)

    (printed there without the minus sign; with it the formulas below match finite
    differences), then ``Qbar = 0.5 (dz z' + z dz')``, ``qbar = dz``,
    ``Abar = dnu z' + nu dz'``, ``bbar = -dnu``, ``Gbar = D(lam) dlam z' + lam dz'``,
    ``hbar = -D(lam) dlam``. At a polished solution the inactive rows decouple
    (``lam_i = 0``: ``dlam_i`` enters nothing else) and the active rows read
    ``G_S dz = 0`` (``G_S z = h_S``); with ``mu = D(lam_S) dlam_S`` the same solve is
    the symmetric active-set KKT system

        [[Q, G_S', A'], [G_S, 0, 0], [A, 0, 0]] (dz, mu, dnu) = (-zbar, 0, 0),

    whose LU factor the forward pass already has: the backward pass is one
    triangular solve. ``Gbar``, ``hbar`` are zero on the inactive rows."""
    z, lam, nu, active = sol.z, sol.lam, sol.nu, sol.active
    n, k = z.size, int(active.sum())
    zbar = np.asarray(zbar, dtype=np.float64)
    w = sol.kkt_solve(np.concatenate([-zbar, np.zeros(k + nu.size)]))
    dz, dnu = w[:n], w[n + k:]
    mu = np.zeros(lam.size)
    mu[active] = w[n:n + k]
    Qbar = 0.5 * (np.outer(dz, z) + np.outer(z, dz))
    Abar = np.outer(dnu, z) + np.outer(nu, dz)
    Gbar = np.outer(mu, z) + np.outer(lam, dz)
    return Qbar, dz, Abar, -dnu, Gbar, -mu


@primitive
def _qp(Q, q, A, b, G, h, sol=None):
    """The solution ``z`` of eq. 5; ``sol`` was solved from the same arguments."""
    return sol.z


def _qp_vjpmaker(argnums, z, args, kwargs):
    def vjp(zbar):
        bars = qp_vjp(kwargs["sol"], zbar)
        return tuple(bars[i] for i in argnums)

    return vjp


defvjp_argnums(_qp, _qp_vjpmaker)


def qp_layer(Q, q, A=None, b=None, G=None, h=None):
    """The solution ``z`` of the QP of eq. 5 as a differentiable layer (eqs. 5-7):
    autograd can differentiate ``z`` in all six arguments (:func:`qp_vjp`).
    ``A, b`` and/or ``G, h`` may be ``None``. ``Q`` must be symmetric positive
    semidefinite. The derivative exists where the active set is locally constant
    (strict complementarity) and the active-set KKT matrix is nonsingular; at a
    weakly active constraint (``lam_i = 0 = h_i - G_i z``) it is one-sided.
    Raises :class:`QPError` (bad data, no unique solution),
    :class:`InfeasibleQPError` or :class:`UnboundedQPError`."""
    Qv, qv, Av, bv, Gv, hv = _check_qp(*(getval(x) for x in (Q, q, A, b, G, h)))
    sol = _solve_checked(Qv, qv, Av, bv, Gv, hv)
    return _qp(Q, q, A, b, G, h, sol=sol)
