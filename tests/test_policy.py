"""Gaussian MLP policy: layout, densities, KL, Fisher-vector products, seeded acting."""
import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, hessian, jacobian
from scipy.stats import multivariate_normal

from metacpo_ref.config import INIT_LOG_STD
from metacpo_ref.checks.gradcheck import POLICY_CHECKS, central_diff, rel_error
from metacpo_ref.model.policy import (PolicySpec, act_fn, fvp, init_theta, log_prob, mean_and_log_std,
                                mean_kl, mlp, n_params, unflatten)
from metacpo_ref.envs.rollouts import collect

TINY = PolicySpec(obs_dim=3, act_dim=2, hidden=(4, 3))


def tiny_problem(seed, n=25):
    rng = np.random.default_rng(seed)
    theta = init_theta(TINY, seed)
    theta = theta + 0.3 * rng.standard_normal(theta.size)
    return theta, rng.standard_normal((n, TINY.obs_dim)), rng.standard_normal((n, TINY.act_dim)), rng


# --- layout -------------------------------------------------------------------

def test_point_button_size_and_layout():
    spec = PolicySpec(obs_dim=60, act_dim=2)
    assert spec.hidden == (32, 16)
    assert n_params(spec) == 60 * 32 + 32 + 32 * 16 + 16 + 16 * 2 + 2 + 2 == 2516
    theta = np.arange(n_params(spec), dtype=np.float64)
    layers, log_std = unflatten(spec, theta)
    assert [W.shape for W, _ in layers] == [(60, 32), (32, 16), (16, 2)]
    # row-major weights, then biases, layer by layer; log-std last
    assert layers[0][0][0, 1] == 1.0 and layers[0][0][1, 0] == 32.0
    assert layers[0][1][0] == 1920.0 and layers[1][0][0, 0] == 1952.0
    np.testing.assert_array_equal(log_std, [2514.0, 2515.0])


def test_mlp_matches_manual_forward():
    theta, obs, _, _ = tiny_problem(0)
    (W1, c1), (W2, c2), (W3, c3) = unflatten(TINY, theta)[0]
    manual = np.tanh(np.tanh(obs @ W1 + c1) @ W2 + c2) @ W3 + c3
    np.testing.assert_allclose(mlp(TINY.sizes, theta, obs), manual, rtol=1e-13)
    np.testing.assert_allclose(mlp(TINY.sizes, theta, obs[0]), manual[0], rtol=1e-13)


def test_init_theta_seeded():
    a, b, c = init_theta(TINY, 7), init_theta(TINY, 7), init_theta(TINY, 8)
    assert a.dtype == np.float64 and a.shape == (n_params(TINY),)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(unflatten(TINY, a)[1], [INIT_LOG_STD] * 2)
    np.testing.assert_array_equal(unflatten(TINY, init_theta(TINY, 7, log_std=0.0))[1], [0.0, 0.0])


# --- densities and KL ---------------------------------------------------------

def test_log_prob_matches_scipy():
    theta, obs, act, _ = tiny_problem(1)
    mu, log_std = mean_and_log_std(TINY, theta, obs)
    ref = [multivariate_normal(mu[i], np.diag(np.exp(2 * log_std))).logpdf(act[i]) for i in range(len(obs))]
    np.testing.assert_allclose(log_prob(TINY, theta, obs, act), ref, rtol=1e-12)
    assert np.isclose(log_prob(TINY, theta, obs[3], act[3]), ref[3], rtol=1e-12)


def test_mean_kl_matches_full_covariance_formula():
    theta, obs, _, rng = tiny_problem(2)
    theta2 = theta + 0.2 * rng.standard_normal(theta.size)
    mu0, ls0 = mean_and_log_std(TINY, theta, obs)
    mu1, ls1 = mean_and_log_std(TINY, theta2, obs)
    S0, S1 = np.diag(np.exp(2 * ls0)), np.diag(np.exp(2 * ls1))
    S1i = np.linalg.inv(S1)
    ref = np.mean([0.5 * (np.trace(S1i @ S0) + (mu1[i] - mu0[i]) @ S1i @ (mu1[i] - mu0[i]) - 2
                          + np.log(np.linalg.det(S1) / np.linalg.det(S0))) for i in range(len(obs))])
    assert np.isclose(mean_kl(TINY, theta, theta2, obs), ref, rtol=1e-12)
    assert mean_kl(TINY, theta, theta, obs) == pytest.approx(0.0, abs=1e-15)


# --- derivatives against finite differences -----------------------------------

@pytest.mark.parametrize("check", POLICY_CHECKS, ids=lambda c: c.__name__)
def test_gradcheck_policy(check):
    r = check()
    assert "policy" in r["name"] and r["passed"], r


@pytest.mark.parametrize("seed", [3, 4])
def test_log_prob_and_kl_gradients_fd(seed):
    theta, obs, act, rng = tiny_problem(seed)
    f = lambda t: log_prob(TINY, t, obs, act)
    assert rel_error(jacobian(f)(theta), central_diff(f, theta)) < 1e-7
    old = theta + 0.1 * rng.standard_normal(theta.size)
    for kl in (lambda t: mean_kl(TINY, old, t, obs), lambda t: mean_kl(TINY, t, old, obs)):
        assert rel_error(grad(kl)(theta), central_diff(kl, theta)) < 1e-7


def test_fvp_against_explicit_fisher():
    theta, obs, _, rng = tiny_problem(5)
    v = rng.standard_normal(theta.size)
    H = hessian(lambda t: mean_kl(TINY, theta, t, obs))(theta)
    assert rel_error(fvp(TINY, theta, obs, v), H @ v) < 1e-12
    assert rel_error(fvp(TINY, theta, obs, v, damping=0.1), H @ v + 0.1 * v) < 1e-12
    # the same matrix from the Gaussian Fisher formula: J_mu^T diag(1/s^2) J_mu / N, and 2 I on the log-stds
    m = theta.size - TINY.act_dim
    J = jacobian(lambda t: mlp(TINY.sizes, t, obs))(theta)[:, :, :m]          # (N, act_dim, m)
    s2 = np.exp(2 * theta[m:])
    F = np.zeros((theta.size, theta.size))
    F[:m, :m] = np.einsum("nai,a,naj->ij", J, 1 / s2, J) / len(obs)
    F[m:, m:] = 2 * np.eye(TINY.act_dim)
    assert rel_error(H, F) < 1e-12
    assert v @ fvp(TINY, theta, obs, v) > 0


def test_mean_jvp_and_vjp_are_the_jacobian_products():
    """D35's two passes: ``J v`` and ``J^T u`` against autograd's Jacobian of the mean."""
    from metacpo_ref.model.policy import mean_jvp, mean_linearisation, mean_vjp, n_mlp_params
    theta, obs, _, rng = tiny_problem(8)
    m = n_mlp_params(TINY.sizes)
    J = jacobian(lambda t: mlp(TINY.sizes, t, obs))(theta)                     # (N, act_dim, n)
    v, u = rng.standard_normal(theta.size), rng.standard_normal((len(obs), TINY.act_dim))
    lin = mean_linearisation(TINY, theta, obs)
    assert rel_error(mean_jvp(TINY, lin, v), J @ v) < 1e-12
    assert rel_error(mean_vjp(TINY, lin, u), np.einsum("nai,na->i", J, u)[:m]) < 1e-12


def test_fvp_equals_the_kl_hessian_vector_product_at_a_family_size():
    """The closed form (D35) against reverse-over-reverse autograd on ``mean_kl`` (what
    ``fvp`` computed before), at point-button's policy shape: equal to rounding."""
    spec = PolicySpec(60, 2, (32, 16))
    rng = np.random.default_rng(9)
    theta = init_theta(spec, 0) + 0.3 * rng.standard_normal(2516)
    obs, v = rng.standard_normal((300, 60)), rng.standard_normal(2516)
    kl_grad = grad(lambda t: mean_kl(spec, theta, t, obs))
    Hv = grad(lambda t: anp.dot(kl_grad(t), v))(theta)
    assert rel_error(fvp(spec, theta, obs, v, 0.1), Hv + 0.1 * v) < 1e-12


def test_fvp_is_differentiable_in_theta():
    theta, obs, _, rng = tiny_problem(6)
    v, w = rng.standard_normal(theta.size), rng.standard_normal(theta.size)
    f = lambda t: anp.dot(w, fvp(TINY, t, obs, v))
    assert rel_error(grad(f)(theta), central_diff(f, theta)) < 1e-7


# --- acting -------------------------------------------------------------------

def test_act_fn_seeded_logp_and_deterministic():
    theta, obs, _, _ = tiny_problem(7)
    act = act_fn(TINY, theta)
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    for o in obs[:5]:
        (x, lx), (y, ly) = act(o, rng1), act(o, rng2)
        np.testing.assert_array_equal(x, y)
        assert lx == ly and np.isclose(lx, log_prob(TINY, theta, o, x), rtol=1e-13)
    mu = mean_and_log_std(TINY, theta, obs[0])[0]
    a, lp = act_fn(TINY, theta, deterministic=True)(obs[0], None)
    np.testing.assert_array_equal(a, mu)
    assert np.isclose(lp, log_prob(TINY, theta, obs[0], mu))
    theta_copy = theta.copy()
    theta += 1.0                                    # act_fn copied theta
    np.testing.assert_array_equal(act_fn(TINY, theta_copy)(obs[0], np.random.default_rng(3))[0],
                                  act(obs[0], np.random.default_rng(3))[0])


def test_acting_without_autograd_gives_the_same_floats():
    """``mlp_apply(..., numpy)`` (acting) equals the differentiable ``autograd.numpy`` path
    bit for bit, one observation or a batch."""
    from metacpo_ref.model.policy import mlp_apply, mlp_layers
    theta, obs, _, _ = tiny_problem(11)
    layers = mlp_layers(TINY.sizes, theta)
    for x in (obs[0], obs):
        np.testing.assert_array_equal(mlp_apply(layers, x, np), mlp_apply(layers, x))


def test_act_fn_samples_the_gaussian():
    theta, obs, _, _ = tiny_problem(8)
    act, rng = act_fn(TINY, theta), np.random.default_rng(0)
    a = np.array([act(obs[0], rng)[0] for _ in range(4000)])
    mu, log_std = mean_and_log_std(TINY, theta, obs[0])
    np.testing.assert_allclose(a.mean(0), mu, atol=4 * np.exp(log_std).max() / np.sqrt(4000) + 1e-3)
    np.testing.assert_allclose(a.std(0), np.exp(log_std), rtol=0.05)


def make_toy_env(obs_dim, horizon):
    """A tiny seeded env in the safe-env protocol: linear drift, cost when |x_0| > 1."""
    state = {}

    def reset(seed):
        state["x"], state["t"] = np.random.default_rng(seed).standard_normal(obs_dim), 0
        return state["x"].copy(), {}

    def step(a):
        state["x"] = 0.9 * state["x"] + 0.1 * np.resize(a, obs_dim)
        state["t"] += 1
        x = state["x"].copy()
        return x, -float(x @ x), float(abs(x[0]) > 1), bool(abs(x[0]) > 3), state["t"] >= horizon, {}

    from types import SimpleNamespace
    return SimpleNamespace(reset=reset, step=step)


def test_act_fn_in_collect():
    theta = init_theta(TINY, 9)
    env = make_toy_env(TINY.obs_dim, horizon=15)
    b1 = collect(env, act_fn(TINY, theta), 3, seed=4)
    b2 = collect(env, act_fn(TINY, theta), 3, seed=4)
    np.testing.assert_array_equal(b1.act, b2.act)
    np.testing.assert_allclose(b1.logp, log_prob(TINY, theta, b1.obs, b1.act), rtol=1e-12)
