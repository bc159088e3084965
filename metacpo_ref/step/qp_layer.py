"""The generic differentiable QP of paper eq. 5 as a layer (eqs. 5-7; OptNet,
Amos & Kolter 2017). Derivations: docs/derivations.md, section 9.

    minimize  0.5 z'Qz + q'z   subject to   A z = b,  G z <= h        (eq. 5, D29)

Shapes: ``z, q`` (n,); ``Q`` (n, n), symmetric positive semidefinite;
``A`` (p, n), ``b`` (p,); ``G`` (m, n), ``h`` (m,); ``A, b`` and/or ``G, h``
may be ``None`` (p = 0 or m = 0). Multipliers ``nu`` (p,) and ``lam`` (m,).

The forward pass is a primal-dual interior-point method polished on its
active set (:func:`solve_qp`); the backward pass (:func:`qp_vjp`) is one
solve with the active-set KKT matrix of eq. 7 (D31-D33), whose factor the
forward pass already holds. :func:`qp_layer` is the solution as an autograd
primitive. Meta-CPO itself never calls this module: its steps are the special
case in :mod:`metacpo_ref.step.cpo` and :mod:`metacpo_ref.step.dco`.
"""
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.optimize
from autograd.extend import defvjp_argnums, primitive
from autograd.tracer import getval

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
    """Cotangents ``(Qbar, qbar, Abar, bbar, Gbar, hbar)`` (shapes of ``Q, q, A, b, G, h``)
    for the cotangent ``zbar`` (n,) of ``z``: the implicit function theorem on eq. 7.

    The backward pass of the paper and OptNet (D31), whose right-hand side is
    ``-zbar`` (printed there without the minus sign), reduces at a polished
    solution to the symmetric active-set KKT system (D33),
    ``[[Q, G_S', A'], [G_S, 0, 0], [A, 0, 0]] (dz, mu, dnu) = (-zbar, 0, 0)``
    with ``mu = D(lam_S) dlam_S``: one solve with the forward pass's LU factor.
    The cotangents are (D32); ``Gbar``, ``hbar`` are zero on the inactive rows."""
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
    """The solution ``z`` (n,) of the QP of eq. 5 (D29) as a differentiable layer (eqs. 5-7):
    autograd can differentiate ``z`` in all six arguments (:func:`qp_vjp`).
    Shapes: ``Q`` (n, n), ``q`` (n,), ``A`` (p, n), ``b`` (p,), ``G`` (m, n),
    ``h`` (m,); ``A, b`` and/or ``G, h`` may be ``None``. ``Q`` must be symmetric positive
    semidefinite. The derivative exists where the active set is locally constant
    (strict complementarity) and the active-set KKT matrix is nonsingular; at a
    weakly active constraint (``lam_i = 0 = h_i - G_i z``) it is one-sided.
    Raises :class:`QPError` (bad data, no unique solution),
    :class:`InfeasibleQPError` or :class:`UnboundedQPError`."""
    Qv, qv, Av, bv, Gv, hv = _check_qp(*(getval(x) for x in (Q, q, A, b, G, h)))
    sol = _solve_checked(Qv, qv, Av, bv, Gv, hv)
    return _qp(Q, q, A, b, G, h, sol=sol)
