"""cpo_layer / cpo_step_vjp (eqs. 5-7 on eq. 9) against central finite differences of
the forward, every argument, every case, every metric; against diffcp (cvxpy's
``requires_grad`` / ``backward``) on the Euclidean case; inside autograd.

Instances keep away from case boundaries (margins 1e-2, docs/derivations.md, end of section 8), where
the map is only one-sided differentiable and finite differences lose accuracy.
The error is norm-wise over the whole Jacobian, ``||J_an - J_fd|| / ||J_fd||``.
"""
import warnings

import autograd.numpy as anp
import cvxpy as cp
import numpy as np
import pytest
from autograd import grad, jacobian

from metacpo_ref.step.cpo import DegenerateStepWarning, solve_step
from metacpo_ref.step.dco import cpo_layer, cpo_step_vjp
from metacpo_ref.checks.gradcheck import central_diff, rel_error
from tests.conftest import hinv_of, random_spd

TOL = 1e-6  # norm-wise relative error of the Jacobian vs finite differences
DIFFCP_TOL = 1e-6  # vs diffcp on SCS at eps 1e-10
MARGIN = 1e-2
ARGS = ("g", "a", "b", "delta", "H")


# --- instances away from the case boundaries -----------------------------------


def case_and_margin(g, a, b, delta, H=None):
    """The case of eq. 9 and its distance to the nearest case boundary (scaled)."""
    hg, ha = (g, a) if H is None else (np.linalg.solve(H, g), np.linalg.solve(H, a))
    q, r, s = g @ hg, g @ ha, a @ ha
    A, B = q - r**2 / s, 2 * delta - b**2 / s
    lam_t = np.sqrt(q / (2 * delta))
    if b > 0 and B <= 0:
        return "recovery", -B / (2 * delta)
    trust_slack = -(r + lam_t * b) / np.sqrt(q * s)
    if trust_slack >= 0:
        return "trust", min(trust_slack, abs(B) / (2 * delta))
    step = solve_step(g, a, b, delta, H=H)
    return "both", min(-trust_slack, step.nu / np.sqrt(q / s), B / (2 * delta), A / q)


def instances(rng, case, count, n, dense):
    """``count`` random instances ``(g, a, b, delta, H)`` of ``case`` with margin >= MARGIN."""
    out = []
    while len(out) < count:
        g, a = rng.normal(size=n), rng.normal(size=n)
        delta = rng.uniform(0.1, 1.0)
        H = random_spd(rng, n) if dense else None
        s = a @ (a if H is None else np.linalg.solve(H, a))
        b = rng.uniform(-1.5, 1.5) * np.sqrt(2 * delta * s)
        c, m = case_and_margin(g, a, b, delta, H)
        if c == case and m >= MARGIN:
            out.append((g, a, b, delta, H))
    return out


def forward(args, name, metric):
    """x as a function of the one argument ``name`` (for finite differences)."""
    g, a, b, delta, H = args

    def f(p):
        kw = dict(g=g, a=a, b=b, delta=delta)
        if name == "H":
            return solve_step(**kw, H=p, method="closed_form").x
        kw[name] = p if name in ("g", "a") else float(p)
        extra = dict(H=H) if metric == "dense" else dict(hinv=hinv_of(H)) if metric == "hinv" else {}
        return solve_step(**kw, **extra, method="closed_form").x

    return f


def layer_jacobian(args, name, metric):
    """d x / d (argument ``name``) through cpo_layer and autograd."""
    g, a, b, delta, H = args
    extra = dict(H=H) if metric == "dense" else dict(hinv=hinv_of(H)) if metric == "hinv" else {}
    fns = {
        "g": (lambda p: cpo_layer(p, a, b, delta, **extra), g),
        "a": (lambda p: cpo_layer(g, p, b, delta, **extra), a),
        "b": (lambda p: cpo_layer(g, a, p, delta, **extra), b),
        "delta": (lambda p: cpo_layer(g, a, b, p, **extra), delta),
        "H": (lambda p: cpo_layer(g, a, b, delta, H=p), H),
    }
    fn, p = fns[name]
    return np.reshape(jacobian(fn)(p), (g.size, -1))


def param(args, name):
    return dict(zip(ARGS, args))[name]


# --- finite differences --------------------------------------------------------

FD_ERRORS = []


@pytest.mark.parametrize("metric", ["identity", "dense", "hinv"])
@pytest.mark.parametrize("case", ["trust", "both", "recovery"])
def test_vjp_matches_finite_differences(case, metric):
    rng = np.random.default_rng(["trust", "both", "recovery"].index(case) * 10 + len(metric))
    names = ARGS if metric == "dense" else ARGS[:4]
    for args in instances(rng, case, 12, int(rng.integers(4, 9)), metric != "identity"):
        for name in names:
            J_an = layer_jacobian(args, name, metric)
            J_fd = central_diff(forward(args, name, metric), param(args, name))
            err = rel_error(J_an, J_fd)
            FD_ERRORS.append(err)
            assert err <= TOL, (case, metric, name, err)
            if not np.any(J_fd):  # x does not depend on this argument in this case
                assert not np.any(J_an)


def test_vjp_by_hand_matches_layer():
    """cpo_step_vjp on its own gives the autograd VJP of cpo_layer (dense H, every case)."""
    rng = np.random.default_rng(11)
    for case in ("trust", "both", "recovery"):
        g, a, b, delta, H = instances(rng, case, 1, 6, True)[0]
        xbar = rng.normal(size=6)
        bars = cpo_step_vjp(solve_step(g, a, b, delta, H=H), xbar, g, a, b, delta, H=H)
        loss = lambda g, a, b, delta, H: anp.dot(xbar, cpo_layer(g, a, b, delta, H=H))
        for i, bar in enumerate(bars):
            np.testing.assert_allclose(grad(loss, i)(g, a, b, delta, H), bar, rtol=1e-14, atol=1e-14)
        assert cpo_step_vjp(solve_step(g, a, b, delta), xbar, g, a, b, delta)[4] is None


def test_kkt_vjp_cross_check():
    """The block elimination and the trust / recovery closed forms equal a dense solve
    of ``K w = (xbar, 0, 0)`` with ``pbar = -(dF/dp)' w``."""
    rng = np.random.default_rng(12)
    for case in ("trust", "both", "recovery"):
        g, a, b, delta, H = instances(rng, case, 1, 5, True)[0]
        st = solve_step(g, a, b, delta, H=H)
        xbar = rng.normal(size=5)
        both = case == "both"
        Hx = H @ st.x
        K = np.zeros((7, 7) if both else (6, 6))
        K[:5, :5], K[:5, 5], K[5, :5] = st.lam * H, Hx, Hx
        if both:
            K[:5, 6], K[6, :5] = a, a
        w = np.linalg.solve(K, np.concatenate([xbar, np.zeros(K.shape[0] - 5)]))
        u, w2, w3 = w[:5], w[5], (w[6] if both else 0.0)
        gbar, abar, bbar, deltabar, Hbar = cpo_step_vjp(st, xbar, g, a, b, delta, H=H)
        expect = {
            "trust": (u, 0 * u, 0.0),
            "both": (u, -(st.nu * u + w3 * st.x), -w3),
            "recovery": (0 * u, -u, 0.0),
        }[case]
        for got, want in zip((gbar, abar, bbar, deltabar), expect + (w2,)):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        Hbar_kkt = -(st.lam * np.outer(u, st.x) + 0.5 * w2 * np.outer(st.x, st.x))
        np.testing.assert_allclose(Hbar, 0.5 * (Hbar_kkt + Hbar_kkt.T), rtol=1e-9, atol=1e-12)


# --- diffcp --------------------------------------------------------------------


def diffcp_vjp(g, a, b, delta, xbar):
    """cvxpy + diffcp (SCS at eps 1e-10): x and the VJP for g, a, b, delta."""
    n = g.size
    x = cp.Variable(n)
    pg, pa, pb, pd = cp.Parameter(n), cp.Parameter(n), cp.Parameter(), cp.Parameter(pos=True)
    pg.value, pa.value, pb.value, pd.value = g, a, b, delta
    quad = 0.5 * cp.sum_squares(x) <= pd
    step = cp.Problem(cp.Maximize(pg @ x), [quad, pb + pa @ x <= 0])
    recovery = cp.Problem(cp.Minimize(pa @ x), [quad])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b_max = np.sqrt(2 * delta * (a @ a))
        prob = recovery if b > b_max else step  # diffcp cannot differentiate an infeasible problem
        prob.solve(requires_grad=True, solver=cp.DIFFCP, eps_abs=1e-10, eps_rel=1e-10, max_iters=100_000)
        x.gradient = xbar
        prob.backward()
    grads = [p.gradient if p.gradient is not None else np.zeros(np.shape(p.value)) for p in (pg, pa, pb, pd)]
    return x.value, grads


def test_vjp_matches_diffcp():
    rng = np.random.default_rng(13)
    errors = []
    for case in ("trust", "both", "recovery"):
        for g, a, b, delta, _ in instances(rng, case, 8, 8, False):
            xbar = rng.normal(size=8)
            x_cp, bars_cp = diffcp_vjp(g, a, b, delta, xbar)
            bars = cpo_step_vjp(solve_step(g, a, b, delta), xbar, g, a, b, delta)[:4]
            assert rel_error(solve_step(g, a, b, delta).x, x_cp) <= DIFFCP_TOL
            errors.append(rel_error(np.concatenate([np.ravel(v) for v in bars]), np.concatenate([np.ravel(v) for v in bars_cp])))
    assert max(errors) <= DIFFCP_TOL, max(errors)


# --- inside autograd (the meta-gradient use) ------------------------------------


@pytest.mark.parametrize("case, b0", [("trust", -2.0), ("both", 0.5), ("recovery", 3.0)])
def test_layer_inside_autograd(case, b0):
    """g, a, b (a scalar box), delta are functions of parameters theta; grad of a loss of x."""
    rng = np.random.default_rng(14)
    M, N, c = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)), rng.normal(size=6)
    w = rng.normal(size=6)

    def loss(theta):
        g = anp.tanh(anp.dot(M, theta)) + 0.3
        a = anp.dot(N, theta) + c
        b = b0 + 0.1 * anp.sum(theta)
        delta = 0.5 + 0.1 * theta[0] ** 2
        return anp.sum(anp.sin(cpo_layer(g, a, b, delta)) * w)

    theta = rng.normal(size=3) * 0.3
    g_, a_ = np.tanh(M @ theta) + 0.3, N @ theta + c
    b_, d_ = b0 + 0.1 * theta.sum(), 0.5 + 0.1 * theta[0] ** 2
    c_, m = case_and_margin(g_, a_, b_, d_)
    assert c_ == case and m >= MARGIN
    assert rel_error(grad(loss)(theta), central_diff(loss, theta)) <= TOL


def test_degenerate_point_warns():
    a = np.array([1.0, 2.0, -1.0])
    with pytest.warns(DegenerateStepWarning, match="not differentiable"):
        x_bar = grad(lambda g: anp.sum(cpo_layer(g, a, 0.5, 1.0)))(np.zeros(3))
    np.testing.assert_array_equal(x_bar, np.zeros(3))
    with pytest.warns(DegenerateStepWarning):
        # along the degenerate set x = -(b/s) a is smooth in b: derivative -a/s
        db = grad(lambda b: anp.sum(cpo_layer(2 * a, a, b, 1.0)))(0.5)
    assert db == pytest.approx(-a.sum() / (a @ a), rel=1e-14)
