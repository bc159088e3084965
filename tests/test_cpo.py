"""solve_step (eq. 9 / eq. 4) against cvxpy on random seeded instances, every case,
every metric, both methods; degenerate inputs; conjugate gradient.

Oracle: cvxpy with Clarabel at tolerances 1e-12. On the curved trust-region
boundary an interior-point x is only accurate to ~sqrt(gap) (we see up to
~4e-6 relative), so the oracle finishes with Newton steps on the KKT system at
the active set cvxpy found (generic code, unrelated to the dual / case analysis
of cpo.py). The raw Clarabel x is checked too, at its own accuracy.
"""
import warnings

import cvxpy as cp
import numpy as np
import pytest

import metacpo_ref.step.cpo as cpo
from metacpo_ref.step.cpo import DegenerateStepWarning, cg, solve_step
from tests.conftest import hinv_of, random_spd

TOL = 1e-6  # relative error of x, lam, nu vs the (polished) oracle
RAW_TOL = 1e-4  # relative error of x vs raw Clarabel: ~sqrt(gap), worst in the trust case
OBJ_TOL = 1e-6  # relative error of g'x vs raw Clarabel (it may stop "almost solved")
CLARABEL = dict(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)


def rel(x, y):
    return float(np.linalg.norm(np.ravel(x) - np.ravel(y)) / max(np.linalg.norm(np.ravel(y)), 1e-300))


# --- random instances --------------------------------------------------------


def random_instance(rng, n, dense):
    """``(g, a, b, delta, H)``; ``b = t sqrt(2 delta s)`` with ``t`` in (-2, 2) puts
    about a quarter of the instances in recovery (t > 1), the rest in trust or both."""
    g = rng.normal(size=n) * 10 ** rng.uniform(-1, 1)
    a = rng.normal(size=n) * 10 ** rng.uniform(-1, 1)
    delta = 10 ** rng.uniform(-3, 0)
    H = random_spd(rng, n) if dense else None
    s = a @ (a if H is None else np.linalg.solve(H, a))
    b = rng.uniform(-2, 2) * np.sqrt(2 * delta * s)
    return g, a, b, delta, H


# --- the oracle --------------------------------------------------------------

_PROBLEMS = {}


def _problems(n, dense):
    """Parametrised (DPP) cvxpy problems of eq. 9 and eq. 4 for size n, built once."""
    key = (n, dense)
    if key not in _PROBLEMS:
        x = cp.Variable(n)
        g, a, b, delta = cp.Parameter(n), cp.Parameter(n), cp.Parameter(), cp.Parameter(pos=True)
        L = cp.Parameter((n, n)) if dense else None
        quad = 0.5 * cp.sum_squares(x if L is None else L.T @ x)
        step = cp.Problem(cp.Maximize(g @ x), [quad <= delta, b + a @ x <= 0])
        recovery = cp.Problem(cp.Minimize(a @ x), [quad <= delta])
        _PROBLEMS[key] = dict(x=x, g=g, a=a, b=b, delta=delta, L=L, step=step, recovery=recovery)
    return _PROBLEMS[key]


def _scalar(v):
    return float(np.ravel(v)[0])


def cvxpy_step(g, a, b, delta, H=None):
    """Raw cvxpy solution ``(x, lam, nu, case)`` of eq. 9, or of eq. 4 when infeasible."""
    P = _problems(g.size, H is not None)
    P["g"].value, P["a"].value, P["b"].value, P["delta"].value = g, a, b, delta
    if H is not None:
        P["L"].value = np.linalg.cholesky(H)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "solution may be inaccurate": Clarabel's 1e-12 is at its limit
        P["step"].solve(**CLARABEL)
        if P["step"].status == "infeasible":
            P["recovery"].solve(**CLARABEL)
            return P["x"].value.copy(), _scalar(P["recovery"].constraints[0].dual_value), np.nan, "recovery"
    assert P["step"].status in ("optimal", "optimal_inaccurate"), P["step"].status
    lam, nu = (_scalar(c.dual_value) for c in P["step"].constraints)
    return P["x"].value.copy(), lam, nu, ("both" if nu > 1e-6 * np.sqrt(g @ g / (a @ a)) else "trust")


def kkt_polish(g, a, b, delta, H, x, lam, nu, case, iters=6):
    """Newton steps on the KKT system of the case cvxpy found: ``-g + lam Hx + nu a = 0``,
    ``0.5 x'Hx = delta`` and (both) ``b + a'x = 0``; recovery: ``a + lam Hx = 0``."""
    n = g.size
    H = np.eye(n) if H is None else H
    lin = -a if case == "recovery" else g
    both = case == "both"
    z = np.concatenate([x, [lam, nu] if both else [lam]])
    for _ in range(iters):
        x, lam = z[:n], z[n]
        nu = z[n + 1] if both else 0.0
        Hx = H @ x
        F = [-lin + lam * Hx + nu * a, [0.5 * x @ Hx - delta]] + ([[b + a @ x]] if both else [])
        K = np.zeros((z.size, z.size))
        K[:n, :n], K[:n, n], K[n, :n] = lam * H, Hx, Hx
        if both:
            K[:n, n + 1], K[n + 1, :n] = a, a
        z = z - np.linalg.solve(K, np.concatenate(F))
    return z[:n], z[n], (z[n + 1] if both else (np.nan if case == "recovery" else 0.0))


def oracle(g, a, b, delta, H=None):
    """``(x_raw, x, lam, nu, case)``: raw cvxpy x, then the KKT-polished solution."""
    x0, lam0, nu0, case = cvxpy_step(g, a, b, delta, H)
    x, lam, nu = kkt_polish(g, a, b, delta, H, x0, lam0, nu0, case)
    return x0, x, lam, nu, case


# --- against cvxpy -----------------------------------------------------------


def compare(rng, count, dense, errors):
    for _ in range(count):
        n = int(rng.integers(5, 21 if not dense else 13))
        g, a, b, delta, H = random_instance(rng, n, dense)
        x_raw, x, lam, nu, case = oracle(g, a, b, delta, H)
        metrics = [dict(H=H), dict(hinv=hinv_of(H))] if dense else [{}]
        for metric in metrics:
            for method in ("scipy", "closed_form"):
                step = solve_step(g, a, b, delta, method=method, **metric)
                assert step.case == case
                errors["x"].append(rel(step.x, x))
                errors["x_raw"].append(rel(step.x, x_raw))
                errors["obj"].append(abs(g @ (step.x - x_raw)) / abs(g @ x_raw) if case != "recovery" else 0.0)
                errors["lam"].append(abs(step.lam - lam) / lam)
                if case == "recovery":
                    assert np.isnan(step.nu)
                else:
                    errors["nu"].append(abs(step.nu - nu) / max(abs(nu), np.sqrt(g @ g / (a @ a))))
        errors["cases"].append(case)


@pytest.mark.parametrize("dense", [False, True], ids=["identity", "dense_H_and_hinv"])
def test_solve_step_matches_cvxpy(dense):
    errors = dict(x=[], x_raw=[], obj=[], lam=[], nu=[], cases=[])
    compare(np.random.default_rng(1 + dense), 150 if dense else 300, dense, errors)
    assert {"trust", "both", "recovery"} <= set(errors["cases"])
    for c in ("trust", "both", "recovery"):
        assert errors["cases"].count(c) >= 20, c
    for key in ("x", "lam", "nu"):
        assert max(errors[key]) <= TOL, (key, max(errors[key]))
    assert max(errors["x_raw"]) <= RAW_TOL
    assert max(errors["obj"]) <= OBJ_TOL


def test_methods_agree():
    rng = np.random.default_rng(3)
    for k in range(200):
        g, a, b, delta, H = random_instance(rng, 8, dense=k % 2 == 1)
        s1 = solve_step(g, a, b, delta, H=H, method="scipy")
        s2 = solve_step(g, a, b, delta, H=H, method="closed_form")
        assert s1.case == s2.case
        assert rel(s1.x, s2.x) <= 1e-12 and abs(s1.lam - s2.lam) <= 1e-12 * s2.lam


def test_sign_bug_is_caught(monkeypatch):
    """OmniSafe/SafePO plug the reward gradient into loss-convention formulas, which
    flips the sign of r in nu: the comparison with the oracle must fail."""
    rng = np.random.default_rng(4)
    instances = []
    while len(instances) < 30:
        inst = random_instance(rng, 8, dense=False)
        if solve_step(*inst[:4]).case == "both":
            instances.append(inst)
    ok = [rel(solve_step(*i[:4], method="closed_form").x, oracle(*i[:4])[1]) <= TOL for i in instances]
    assert all(ok)
    monkeypatch.setattr(cpo, "_nu", lambda lam, r, s, b: max(0.0, (lam * b - r) / s) if s > 0 else 0.0)
    buggy = [rel(solve_step(*i[:4], method="closed_form").x, oracle(*i[:4])[1]) <= TOL for i in instances]
    assert sum(buggy) <= len(instances) // 10, sum(buggy)


# --- named cases and degenerate inputs -----------------------------------------


def test_trust_step_formula_and_small_cost_gradient():
    rng = np.random.default_rng(5)
    g, delta = rng.normal(size=6), 0.3
    for a, b in ((rng.normal(size=6), -10.0), (1e-12 * rng.normal(size=6), -0.1), (np.zeros(6), -0.1)):
        step = solve_step(g, a, b, delta)
        assert step.case == "trust" and step.nu == 0.0
        np.testing.assert_allclose(step.x, np.sqrt(2 * delta / (g @ g)) * g, rtol=1e-14)


def test_recovery_formula():
    rng = np.random.default_rng(6)
    g, a, H = rng.normal(size=6), rng.normal(size=6), random_spd(rng, 6)
    delta = 0.1
    s = a @ np.linalg.solve(H, a)
    step = solve_step(g, a, 2 * np.sqrt(2 * delta * s), delta, H=H)
    assert step.case == "recovery" and np.isnan(step.nu)
    np.testing.assert_allclose(step.x, -np.sqrt(2 * delta / s) * np.linalg.solve(H, a), rtol=1e-12)
    assert step.lam == pytest.approx(np.sqrt(s / (2 * delta)), rel=1e-14)


@pytest.mark.parametrize("method", ["scipy", "closed_form"])
def test_degenerate_inputs(method):
    rng = np.random.default_rng(7)
    a, delta = rng.normal(size=5), 0.5
    s = a @ a
    bmax = np.sqrt(2 * delta * s)
    cases = [
        (np.zeros(5), -0.3, np.zeros(5)),  # g = 0, b <= 0: x = 0
        (np.zeros(5), 0.5 * bmax, -(0.5 * bmax / s) * a),  # g = 0, b > 0 feasible
        (2.0 * a, 0.5 * bmax, -(0.5 * bmax / s) * a),  # g parallel to a, constraint binding
        (2.0 * a, -0.5 * bmax, (0.5 * bmax / s) * a),  # ... also with b < 0
    ]
    for g, b, x in cases:
        with pytest.warns(DegenerateStepWarning):
            step = solve_step(g, a, b, delta, method=method)
        assert step.case == "degenerate"
        np.testing.assert_allclose(step.x, x, atol=1e-15)
        # an optimum: feasible, and as good as cvxpy's optimal value
        x_raw = cvxpy_step(g, a, b, delta)[0]
        assert 0.5 * step.x @ step.x <= delta * (1 + 1e-12) and b + a @ step.x <= 1e-12
        assert g @ step.x >= g @ x_raw - 1e-8
    # anti-parallel, or parallel with the whole trust step feasible: unique, trust case
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for g, b in ((-2.0 * a, 0.5 * bmax), (2.0 * a, -1.5 * bmax)):
            step = solve_step(g, a, b, delta, method=method)
            assert step.case == "trust"
            assert rel(step.x, oracle(g, a, b, delta)[1]) <= TOL
    # infeasible wins over degenerate
    assert solve_step(np.zeros(5), a, 1.5 * bmax, delta, method=method).case == "recovery"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(a=np.zeros(4), b=0.1), "a = 0"),
        (dict(delta=0.0), "delta"),
        (dict(delta=-1.0), "delta"),
        (dict(g=np.array([1.0, np.nan, 0, 0])), "^g "),
        (dict(a=np.array([1.0, np.inf, 0, 0])), "^a "),
        (dict(b=np.nan), "^b "),
        (dict(delta=np.inf), "^delta "),
        (dict(H=np.full((4, 4), np.nan)), "^H "),
        (dict(H=np.eye(4), hinv=lambda v: v), "not both"),
        (dict(H=-np.eye(4)), "positive definite"),
        (dict(hinv=lambda v: v * np.nan), "hinv"),
        (dict(a=np.ones(3)), "same length"),
        (dict(method="newton"), "method"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = dict(g=np.ones(4), a=np.arange(4.0), b=-0.1, delta=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        solve_step(**args)


def test_scalar_types():
    g, a = np.array([1.0, 2.0, 0.5]), np.array([0.5, -1.0, 2.0])
    ref = solve_step(g, a, 0.2, 0.05)
    for b, delta in ((np.float64(0.2), np.float32(0.05)), (np.array(0.2), np.array(0.05)), (0.2, 0.05)):
        np.testing.assert_allclose(solve_step(g, a, b, delta).x, ref.x, rtol=1e-6)
    with pytest.raises(ValueError, match="scalar"):
        solve_step(g, a, np.array([0.2]), 0.05)


# --- conjugate gradient --------------------------------------------------------


def test_cg_matches_dense_solve():
    rng = np.random.default_rng(8)
    H, v = random_spd(rng, 30), rng.normal(size=30)
    y = cg(lambda p: H @ p, v, iters=200, tol=1e-13)
    assert rel(y, np.linalg.solve(H, v)) <= 1e-10
    # a few iterations: a usable approximation, and the step built on it is close
    y10 = cg(lambda p: (H + 0.1 * np.eye(30)) @ p, v, iters=10, tol=1e-10)
    assert rel(y10, np.linalg.solve(H + 0.1 * np.eye(30), v)) < 0.5
    a = rng.normal(size=30)
    exact = solve_step(v, a, -0.01, 0.01, H=H)
    via_cg = solve_step(v, a, -0.01, 0.01, hinv=lambda u: cg(lambda p: H @ p, u, iters=200, tol=1e-13))
    assert rel(via_cg.x, exact.x) <= 1e-9
    np.testing.assert_array_equal(cg(lambda p: H @ p, np.zeros(30), 5, 1e-10), np.zeros(30))


def test_cg_from_a_warm_start_is_conjugate_gradient_from_there():
    """``cg(..., x0)``: the first direction is the residual at ``x0``, so a start that does not
    meet the tolerance converges to the same solution in about as many products as from 0
    (+1 for the start's residual; a first direction other than the residual stalls at the
    cap); a start that meets it costs that one product only."""
    rng = np.random.default_rng(9)
    H, v = random_spd(rng, 30), rng.normal(size=30)
    exact = np.linalg.solve(H, v)
    cold = []
    cg(lambda p: cold.append(None) or H @ p, v, 200, 1e-12)
    for x0 in (rng.normal(size=30), exact + 1e-3 * rng.normal(size=30)):
        made = []
        y = cg(lambda p: made.append(None) or H @ p, v, 200, 1e-12, x0)
        assert rel(y, exact) <= 1e-9 and len(made) <= len(cold) + 5
    made = []
    np.testing.assert_array_equal(cg(lambda p: made.append(None) or H @ p, v, 200, 1e-3, exact), exact)
    assert len(made) == 1
