"""qp_layer (paper eqs. 5-7): the forward against cvxpy (Clarabel) and the known
solution of the instance; the VJP against central finite differences for all six
arguments, against a dense solve of OptNet's form of the KKT matrix, and against
diffcp; projections onto a box and onto the simplex (closed forms); bad input.

Instances keep clear of active-set changes (multipliers and slacks >= 0.05, see
``gradcheck.qp_instance``), where the map is only one-sided differentiable. The error
is norm-wise over the whole Jacobian, ``||J_an - J_fd|| / ||J_fd||``.
"""
import warnings

import autograd.numpy as anp
import cvxpy as cp
import numpy as np
import pytest
from autograd import grad, jacobian

from metacpo_ref.checks.gradcheck import central_diff, qp_instance, rel_error
from metacpo_ref.step.qp_layer import (DegenerateQPWarning, InfeasibleQPError, QPError, UnboundedQPError,
                                  qp_layer, qp_vjp, solve_qp)

NAMES = ("Q", "q", "A", "b", "G", "h")
FWD_TOL = 1e-9  # forward vs cvxpy / the known solution (norm-wise relative)
FD_TOL = 1e-7  # VJP vs central differences
DIFFCP_TOL = 1e-8  # vs diffcp on SCS at eps 1e-10 with the dense derivative (its default
# LSQR mode is ~1e-7 off at n = 6 and ~20% off at n = 50)

# (seed, n, m, p, k, psd): m inequalities, k of them active, p equalities
CASES = [
    (0, 6, 5, 2, 2, False),
    (1, 8, 7, 0, 4, False),  # no equalities
    (2, 7, 6, 1, 3, True),  # PSD Q of rank n - 2
    (3, 5, 0, 2, 0, False),  # no inequalities
    (4, 9, 8, 3, 5, False),  # k + p = 8 of n = 9 directions fixed
]


def present(data):
    return [name for name in NAMES if data[name] is not None]


def cvxpy_solve(data):
    """z, lam, nu from cvxpy + Clarabel at tight tolerances."""
    n = data["q"].size
    z = cp.Variable(n)
    ineq = [data["G"] @ z <= data["h"]] if data["G"] is not None else []
    eq = [data["A"] @ z == data["b"]] if data["A"] is not None else []
    obj = 0.5 * cp.quad_form(z, cp.psd_wrap(data["Q"])) + data["q"] @ z
    prob = cp.Problem(cp.Minimize(obj), ineq + eq)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-14, tol_gap_rel=1e-14, tol_feas=1e-14,
               tol_ktratio=1e-12, max_iter=500)
    assert prob.status == "optimal"
    return z.value, (ineq[0].dual_value if ineq else None), (eq[0].dual_value if eq else None)


# --- forward -----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_cvxpy(case):
    seed, n, m, p, k, psd = case
    data, (z, lam, nu) = qp_instance(seed, n, m, p, k, psd)
    sol = solve_qp(**data)
    assert sol.polished and sol.active.sum() == k
    assert rel_error(sol.z, z) <= 1e-12
    z_cp, lam_cp, nu_cp = cvxpy_solve(data)
    assert rel_error(sol.z, z_cp) <= FWD_TOL
    if m:
        assert rel_error(sol.lam, lam_cp) <= FWD_TOL and rel_error(sol.lam, lam) <= 1e-12
    if p:
        assert rel_error(sol.nu, nu_cp) <= FWD_TOL and rel_error(sol.nu, nu) <= 1e-12
    np.testing.assert_array_equal(qp_layer(**data), sol.z)


def test_forward_larger_instances():
    """n = 60 with 30 inequalities (12 active) and 6 equalities, against cvxpy."""
    for seed, psd in ((5, False), (6, True)):
        data, (z, _, _) = qp_instance(seed, 60, 30, 6, 12, psd)
        z_qp = qp_layer(**data)
        assert rel_error(z_qp, z) <= 1e-11
        assert rel_error(z_qp, cvxpy_solve(data)[0]) <= FWD_TOL


def test_unconstrained_and_equality_only():
    data, _ = qp_instance(7, 5, 0, 0, 0)
    np.testing.assert_allclose(qp_layer(data["Q"], data["q"]), -np.linalg.solve(data["Q"], data["q"]),
                               rtol=1e-13)
    data, (z, _, nu) = qp_instance(8, 5, 0, 3, 0)
    sol = solve_qp(**data)
    assert rel_error(sol.z, z) <= 1e-13 and rel_error(sol.nu, nu) <= 1e-13


def test_wrong_initial_active_set_is_corrected():
    """_polish moves constraints when the guessed active set is wrong."""
    from metacpo_ref.step.qp_layer import _check_qp, _polish

    data, (z, lam, _) = qp_instance(9, 8, 7, 1, 3)
    Q, q, A, b, G, h = _check_qp(*(data[k] for k in NAMES))
    guess = np.zeros(7, dtype=bool)
    guess[[0, 5]] = True  # constraint 5 is inactive, 1 and 2 are missing
    sol = _polish(Q, q, A, b, G, h, guess)
    assert sol is not None and rel_error(sol.z, z) <= 1e-12
    np.testing.assert_array_equal(sol.active, lam > 0)


# --- backward: finite differences ------------------------------------------------


def layer_of(data, name):
    """``(f, p)``: z as a function ``f`` of the argument ``name`` alone, at ``p``. ``Q``
    enters as ``sym(P)``, or as ``F F'`` when it is singular (a symmetric perturbation
    of a singular PSD matrix can make it indefinite)."""
    if name != "Q":
        return (lambda v: qp_layer(**{**data, name: v})), data[name]
    e, V = np.linalg.eigh(data["Q"])
    if e[0] > 1e-8:
        return (lambda P: qp_layer(**{**data, "Q": 0.5 * (P + P.T)})), data["Q"]
    F = V[:, e > 1e-8] * np.sqrt(e[e > 1e-8])
    return (lambda F: qp_layer(**{**data, "Q": anp.dot(F, F.T)})), F


@pytest.mark.parametrize("case", CASES)
def test_vjp_matches_finite_differences(case):
    data, _ = qp_instance(*case)
    n = data["q"].size
    for name in present(data):
        f, p = layer_of(data, name)
        J_an = np.reshape(jacobian(f)(p), (n, -1))
        err = rel_error(J_an, central_diff(f, p))
        assert err <= FD_TOL, (case, name, err)


def test_vjp_equals_full_optnet_kkt_solve():
    """The active-set solve of qp_vjp equals a dense solve of the full matrix of eq. 7,
    [[Q, G'D(lam), A'], [G, D(Gz - h), 0], [A, 0, 0]] (dz, dlam, dnu) = (-zbar, 0, 0),
    followed by OptNet's cotangent formulas."""
    data, _ = qp_instance(10, 7, 6, 2, 3)
    Q, q, A, b, G, h = (data[k] for k in NAMES)
    sol = solve_qp(**data)
    z, lam, nu = sol.z, sol.lam, sol.nu
    n, m, p = 7, 6, 2
    K = np.block([[Q, G.T * lam, A.T],
                  [G, np.diag(G @ z - h), np.zeros((m, p))],
                  [A, np.zeros((p, m)), np.zeros((p, p))]])
    zbar = np.random.default_rng(0).normal(size=n)
    w = np.linalg.solve(K, np.concatenate([-zbar, np.zeros(m + p)]))
    dz, dlam, dnu = w[:n], w[n:n + m], w[n + m:]
    want = (0.5 * (np.outer(dz, z) + np.outer(z, dz)), dz, np.outer(dnu, z) + np.outer(nu, dz),
            -dnu, np.outer(lam * dlam, z) + np.outer(lam, dz), -lam * dlam)
    for got, expect in zip(qp_vjp(sol, zbar), want):
        np.testing.assert_allclose(got, expect, rtol=1e-10, atol=1e-12)
    loss = lambda *args: anp.dot(zbar, qp_layer(*args))
    for i, expect in enumerate(want):
        np.testing.assert_allclose(grad(loss, i)(Q, q, A, b, G, h), expect, rtol=1e-10, atol=1e-12)


def test_layer_inside_autograd():
    """Q, q, G, h are functions of theta; grad of a loss of z vs central differences."""
    data, _ = qp_instance(11, 6, 5, 1, 2)
    rng = np.random.default_rng(11)
    B, C, D = rng.normal(size=(6, 3)), rng.normal(size=(5, 3)), rng.normal(size=(6, 3))
    w = rng.normal(size=6)

    def loss(theta):
        U = 0.1 * anp.outer(anp.dot(B, theta), anp.dot(B, theta))
        Q = data["Q"] + U
        q = data["q"] + 0.1 * anp.tanh(anp.dot(D, theta))
        h = data["h"] + 0.05 * anp.dot(C, theta)
        G = data["G"] * (1 + 0.05 * theta[0])
        return anp.sum(anp.sin(qp_layer(Q, q, data["A"], data["b"], G, h)) * w)

    theta = 0.2 * rng.normal(size=3)
    assert rel_error(grad(loss)(theta), central_diff(loss, theta)) <= FD_TOL


# --- projections with closed forms -------------------------------------------------


def test_box_projection():
    """z = clip(y, l, u): dz/dy = D(l < y < u), dz/du = D(y > u), dz/dl = D(y < l)."""
    rng = np.random.default_rng(12)
    n = 10
    l, u = -rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, n)
    y = np.concatenate([u[:3] + rng.uniform(0.1, 1, 3), l[3:6] - rng.uniform(0.1, 1, 3),
                        rng.uniform(l[6:] + 0.1, u[6:] - 0.1)])
    G, Q = np.vstack([np.eye(n), -np.eye(n)]), np.eye(n)
    h = np.concatenate([u, -l])
    z = qp_layer(Q, -y, None, None, G, h)
    np.testing.assert_allclose(z, np.clip(y, l, u), rtol=0, atol=1e-14)
    inside, upper, lower = (l < y) & (y < u), y > u, y < l
    J_y = -jacobian(lambda q: qp_layer(Q, q, None, None, G, h))(-y)
    np.testing.assert_allclose(J_y, np.diag(inside * 1.0), atol=1e-12)
    J_h = jacobian(lambda h: qp_layer(Q, -y, None, None, G, h))(h)
    np.testing.assert_allclose(J_h, np.hstack([np.diag(upper * 1.0), -np.diag(lower * 1.0)]), atol=1e-12)


def simplex_projection(y, r=1.0):
    """Projection onto {z >= 0, sum z = r} (sort-based, Held et al.)."""
    s = np.sort(y)[::-1]
    cums = np.cumsum(s) - r
    rho = np.nonzero(s - cums / np.arange(1, y.size + 1) > 0)[0][-1]
    return np.maximum(y - cums[rho] / (rho + 1), 0.0)


def test_simplex_projection():
    """z = max(y - tau, 0): on the support S, dz/dy = I - 11'/|S|, dz/dr = 1/|S|."""
    rng = np.random.default_rng(13)
    n = 9
    while True:
        y = rng.normal(size=n)
        z = simplex_projection(y)
        S = z > 0
        tau = (y - z)[S][0]
        if S.sum() >= 3 and np.min(np.abs(y - tau)) > 0.05:  # clear of support changes
            break
    Q, A, G = np.eye(n), np.ones((1, n)), -np.eye(n)
    layer = lambda q, b: qp_layer(Q, q, A, b, G, np.zeros(n))
    np.testing.assert_allclose(layer(-y, np.ones(1)), z, rtol=0, atol=1e-14)
    J_want = np.zeros((n, n))
    J_want[np.ix_(S, S)] = np.eye(S.sum()) - 1.0 / S.sum()
    np.testing.assert_allclose(-jacobian(lambda q: layer(q, np.ones(1)))(-y), J_want, atol=1e-12)
    np.testing.assert_allclose(jacobian(lambda b: layer(-y, b))(np.ones(1))[:, 0], S / S.sum(), atol=1e-12)


# --- backward: diffcp ------------------------------------------------------------------


def test_vjp_matches_diffcp():
    """cvxpy + diffcp (SCS at eps 1e-10, dense derivative), Q = L'L through the
    parameter L: Lbar = 2 L Qbar (Qbar symmetric)."""
    data, _ = qp_instance(14, 6, 5, 2, 2)
    Q, q, A, b, G, h = (data[k] for k in NAMES)
    L = np.linalg.cholesky(Q).T
    z = cp.Variable(6)
    P = {}
    for k, v in zip(("L", "q", "A", "b", "G", "h"), (L, q, A, b, G, h)):
        P[k] = cp.Parameter(np.shape(v))
        P[k].value = v
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(P["L"] @ z) + P["q"] @ z),
                      [P["A"] @ z == P["b"], P["G"] @ z <= P["h"]])
    zbar = np.random.default_rng(14).normal(size=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prob.solve(requires_grad=True, solver=cp.DIFFCP, eps_abs=1e-10, eps_rel=1e-10, max_iters=100_000,
                   mode="dense")
        z.gradient = zbar
        prob.backward()
    sol = solve_qp(**data)
    assert rel_error(sol.z, z.value) <= DIFFCP_TOL
    Qbar, *rest = qp_vjp(sol, zbar)
    ours = np.concatenate([np.ravel(v) for v in [2 * L @ Qbar] + rest])
    theirs = np.concatenate([np.ravel(prm.gradient) for prm in P.values()])
    err = rel_error(ours, theirs)
    assert err <= DIFFCP_TOL, err


# --- bad input -------------------------------------------------------------------------


def test_bad_input_errors():
    data, _ = qp_instance(15, 4, 3, 1, 1)
    Q, q, A, b, G, h = (data[k] for k in NAMES)
    with pytest.raises(QPError, match="Q is not symmetric"):
        qp_layer(Q + 1e-3 * np.triu(np.ones((4, 4)), 1), q)
    with pytest.raises(QPError, match="Q is not positive semidefinite"):
        qp_layer(np.diag([1.0, -1e-3, 1.0, 1.0]), q)
    shape_errors = [
        (dict(Q=Q[:3, :3]), "Q must have shape"),
        (dict(q=q[:, None]), "q must be a 1-D"),
        (dict(A=A[:, :3]), "A must have 4 columns"),
        (dict(b=np.ones(2)), "b must have shape"),
        (dict(G=G[0]), "G must be a 2-D"),
        (dict(h=h[:2]), "h must have shape"),
        (dict(h=None), "give both G and h or neither"),
    ]
    for change, msg in shape_errors:
        with pytest.raises(QPError, match=msg):
            qp_layer(**{**data, **change})
    for name in NAMES:
        bad = np.array(data[name], dtype=float)
        bad.flat[-1] = np.nan if name in "QAG" else np.inf
        with pytest.raises(QPError, match=f"^{name} contains NaN or inf"):
            qp_layer(**{**data, name: bad})
    assert issubclass(QPError, ValueError)


def test_infeasible_and_unbounded():
    I2 = np.eye(2)
    with pytest.raises(InfeasibleQPError, match="infeasible"):  # z1 <= -1 and z1 >= 1
        qp_layer(I2, np.zeros(2), None, None, np.array([[1.0, 0], [-1.0, 0]]), -np.ones(2))
    with pytest.raises(InfeasibleQPError, match="infeasible"):  # inconsistent equalities
        qp_layer(I2, np.zeros(2), np.array([[1.0, 1.0], [2.0, 2.0]]), np.array([1.0, 3.0]))
    Q0 = np.diag([1.0, 0.0])
    with pytest.raises(UnboundedQPError, match="unbounded"):  # free in z2, q2 != 0
        qp_layer(Q0, np.array([0.0, 1.0]))
    with pytest.raises(UnboundedQPError, match="unbounded"):  # LP, z2 >= 0 but decreasing z1
        qp_layer(np.zeros((2, 2)), np.array([1.0, 1.0]), None, None, np.array([[0.0, -1.0]]), np.zeros(1))
    with pytest.raises(QPError, match="no unique solution"):  # objective flat along z2
        qp_layer(Q0, np.array([1.0, 0.0]))


def test_degenerate_active_set_warns():
    """Two identical active rows: the multipliers are not unique; z stays right."""
    G = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    with pytest.warns(DegenerateQPWarning, match="degenerate QP"):
        z = qp_layer(np.eye(3), -np.ones(3), None, None, G, np.array([0.0, 0.0, 5.0]))
    np.testing.assert_allclose(z, [0.0, 1.0, 1.0], atol=1e-7)
