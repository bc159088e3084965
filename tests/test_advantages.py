"""Value fits, GAE against a slow reference, surrogates, and the units of ``b``."""
import numpy as np
import pytest
from autograd import grad, jacobian

import metacpo_ref.model.advantages as advantages_module
from metacpo_ref.model.advantages import (ValueSpec, advantages, center, constraint_value, fit_value, gae,
                                    init_value, standardize, surrogates, value, value_loss)
from metacpo_ref.config import GAE_LAMBDA, GAMMA
from metacpo_ref.checks.gradcheck import central_diff, rel_error
from metacpo_ref.model.policy import PolicySpec, init_theta, log_prob
from metacpo_ref.envs.rollouts import Batch

OBS_DIM = 4


def make_batch(rng, episodes):
    """A random Batch; ``episodes`` is a list of ``(length, "term" | "cut")``."""
    T = sum(n for n, _ in episodes)
    terminated, truncated = np.zeros(T, bool), np.zeros(T, bool)
    bootstrap_obs = np.zeros((T, OBS_DIM))
    t = 0
    for n, kind in episodes:
        t += n
        if kind == "term":
            terminated[t - 1] = True
        else:
            truncated[t - 1] = True
            bootstrap_obs[t - 1] = rng.standard_normal(OBS_DIM)
    rew, cost = rng.standard_normal(T), rng.binomial(1, 0.3, T).astype(float)
    splits = np.cumsum([n for n, _ in episodes])[:-1]
    return Batch(obs=rng.standard_normal((T, OBS_DIM)), act=rng.standard_normal((T, 2)),
                 logp=rng.standard_normal(T), rew=rew, cost=cost, terminated=terminated,
                 truncated=truncated, bootstrap_obs=bootstrap_obs,
                 ep_return=np.array([r.sum() for r in np.split(rew, splits)]),
                 ep_cost=np.array([c.sum() for c in np.split(cost, splits)]),
                 ep_len=np.array([n for n, _ in episodes], dtype=np.int64))


def reference_gae(episodes, signal, v_obs, v_boot, gamma, lam):
    """Slow GAE: per episode, A_t = sum_l (gamma lam)^l delta_{t+l}, every delta written out."""
    adv, start = [], 0
    for n, kind in episodes:
        r, v = signal[start:start + n], v_obs[start:start + n]
        last_next = 0.0 if kind == "term" else v_boot[start + n - 1]
        deltas = [r[k] + gamma * (v[k + 1] if k + 1 < n else last_next) - v[k] for k in range(n)]
        for t in range(n):
            adv.append(sum((gamma * lam) ** (k - t) * deltas[k] for k in range(t, n)))
        start += n
    return np.array(adv)


EPISODE_SETS = [
    [(5, "term"), (7, "cut"), (1, "term"), (4, "cut")],
    [(1, "cut"), (1, "term"), (9, "cut")],
    [(12, "term")],
    [(3, "cut"), (6, "term"), (2, "cut"), (8, "term"), (1, "cut")],
]


# --- GAE --------------------------------------------------------------------------

@pytest.mark.parametrize("episodes", EPISODE_SETS)
@pytest.mark.parametrize("gamma,lam", [(GAMMA, GAE_LAMBDA), (0.9, 0.5), (0.97, 1.0), (0.8, 0.0)])
def test_gae_matches_slow_reference(episodes, gamma, lam):
    rng = np.random.default_rng(len(episodes))
    b = make_batch(rng, episodes)
    v_obs, v_boot = rng.standard_normal(len(b)), rng.standard_normal(len(b))
    for signal in (b.rew, b.cost):
        adv, ret = gae(b, signal, v_obs, v_boot, gamma, lam)
        ref = reference_gae(episodes, signal, v_obs, v_boot, gamma, lam)
        np.testing.assert_allclose(adv, ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ret, ref + v_obs, rtol=1e-12, atol=1e-12)


def test_gae_lambda_one_is_discounted_return_with_bootstrap():
    rng = np.random.default_rng(0)
    b = make_batch(rng, [(4, "term"), (3, "cut")])
    v_obs, v_boot = rng.standard_normal(7), rng.standard_normal(7)
    _, ret = gae(b, b.rew, v_obs, v_boot, gamma=0.9, lam=1.0)
    r = b.rew
    assert np.isclose(ret[0], r[0] + 0.9 * r[1] + 0.81 * r[2] + 0.729 * r[3])             # terminated: no bootstrap
    assert np.isclose(ret[4], r[4] + 0.9 * r[5] + 0.81 * r[6] + 0.729 * v_boot[6])      # cut: V(bootstrap_obs)
    # v_boot is read only at time-limit cuts
    v_boot2 = v_boot.copy()
    v_boot2[:6] = 1e6
    np.testing.assert_array_equal(gae(b, b.rew, v_obs, v_boot2, 0.9, 1.0)[0], gae(b, b.rew, v_obs, v_boot, 0.9, 1.0)[0])


def test_gae_rejects_open_batch():
    rng = np.random.default_rng(1)
    b = make_batch(rng, [(4, "term"), (3, "cut")])
    b.truncated[-1] = False
    with pytest.raises(ValueError):
        gae(b, b.rew, np.zeros(7), np.zeros(7))


def test_standardize_and_center():
    x = np.random.default_rng(2).normal(3.0, 2.0, 500)
    s, m, sd = standardize(x)
    assert np.isclose(s.mean(), 0, atol=1e-12) and np.isclose(s.std(), 1) and np.allclose(s * sd + m, x)
    c, m2 = center(x)
    assert np.isclose(c.mean(), 0, atol=1e-12) and np.allclose(c + m2, x) and m2 == m
    assert np.all(standardize(np.ones(5))[0] == 0)                           # no division by zero


# --- value functions -----------------------------------------------------------

def regression_data(seed, n=400):
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, OBS_DIM))
    return obs, np.sin(obs[:, 0]) + 0.5 * obs[:, 1] ** 2 - obs[:, 2] * obs[:, 3]


def test_fit_value_reduces_loss_and_is_deterministic():
    vspec = ValueSpec(OBS_DIM)
    assert vspec.hidden == (32, 16)
    obs, y = regression_data(0)
    p0 = init_value(vspec, 0)
    p1 = fit_value(vspec, p0, obs, y)
    assert value_loss(vspec, p1, obs, y) < 0.5 * value_loss(vspec, p0, obs, y)
    np.testing.assert_array_equal(p1, fit_value(vspec, p0, obs, y))
    np.testing.assert_array_equal(init_value(vspec, 0), p0)                  # input untouched
    np.testing.assert_array_equal(fit_value(vspec, p0, obs, y, iters=0), p0)
    assert value(vspec, p1, obs).shape == (len(obs),)


def test_fit_value_warm_start():
    vspec = ValueSpec(OBS_DIM)
    obs, y = regression_data(1)
    p1 = fit_value(vspec, init_value(vspec, 1), obs, y, iters=25)
    obs2, y2 = regression_data(2)                                        # next batch, same function
    warm = fit_value(vspec, p1, obs2, y2, iters=5)
    cold = fit_value(vspec, init_value(vspec, 1), obs2, y2, iters=5)
    assert value_loss(vspec, warm, obs2, y2) < value_loss(vspec, p1, obs2, y2)
    assert value_loss(vspec, warm, obs2, y2) < 0.5 * value_loss(vspec, cold, obs2, y2)


def test_fit_value_ftol_stops_early():
    """``ftol`` (Config.vf_ftol) ends the fit once an iteration gains less than it: fewer
    loss evaluations and a worse fit than the full ``iters``; None is the plain fit, and
    ``advantages`` passes it on."""
    vspec = ValueSpec(OBS_DIM)
    obs, y = regression_data(4)
    p0 = init_value(vspec, 4)
    calls = []
    real = advantages_module.value_loss_and_grad
    counted = lambda *a: calls.append(1) or real(*a)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(advantages_module, "value_loss_and_grad", counted)
        full = fit_value(vspec, p0, obs, y, iters=50)
        n_full = len(calls)
        early = fit_value(vspec, p0, obs, y, iters=50, ftol=1e-2)
    assert len(calls) - n_full < 0.7 * n_full
    assert value_loss(vspec, full, obs, y) < value_loss(vspec, early, obs, y) < value_loss(vspec, p0, obs, y)
    np.testing.assert_array_equal(fit_value(vspec, p0, obs, y, iters=50, ftol=None), full)
    b = make_batch(np.random.default_rng(9), [(40, "cut"), (30, "term")])
    small = ValueSpec(OBS_DIM, hidden=(6,))
    pr, pc = init_value(small, 4), init_value(small, 5)
    res = advantages(small, b, pr, pc, GAMMA, GAE_LAMBDA, 50, 1e-2)
    np.testing.assert_array_equal(res.vf_params_r, fit_value(small, pr, b.obs, res.targets_r, 50, 1e-2))
    assert not np.array_equal(res.vf_params_r, fit_value(small, pr, b.obs, res.targets_r, 50))


def test_advantages_result():
    rng = np.random.default_rng(3)
    eps = [(30, "cut"), (20, "term"), (30, "cut")]
    b = make_batch(rng, eps)
    vspec = ValueSpec(OBS_DIM, hidden=(8, 8))
    pr, pc = init_value(vspec, 0), init_value(vspec, 1)
    res = advantages(vspec, b, pr, pc)
    # GAE with the value functions passed in, then statistics as constants
    v_boot = np.where(b.truncated, value(vspec, pr, b.bootstrap_obs), 0.0)
    adv_r, targets_r = gae(b, b.rew, value(vspec, pr, b.obs), v_boot)
    np.testing.assert_allclose(res.adv_r * res.r_std + res.r_mean, adv_r, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.targets_r, targets_r, rtol=1e-12)
    assert np.isclose(res.adv_r.mean(), 0, atol=1e-12) and np.isclose(res.adv_r.std(), 1)
    assert np.isclose(res.adv_c.mean(), 0, atol=1e-12)
    v_boot_c = np.where(b.truncated, value(vspec, pc, b.bootstrap_obs), 0.0)
    adv_c, _ = gae(b, b.cost, value(vspec, pc, b.obs), v_boot_c)
    np.testing.assert_allclose(res.adv_c + res.c_mean, adv_c, rtol=1e-10, atol=1e-12)
    assert isinstance(res.r_mean, float) and isinstance(res.r_std, float) and isinstance(res.c_mean, float)
    # new value functions: warm-started fits to the lambda-returns
    for params, new, targets, loss in ((pr, res.vf_params_r, res.targets_r, res.vf_loss_r),
                                       (pc, res.vf_params_c, res.targets_c, res.vf_loss_c)):
        np.testing.assert_array_equal(new, fit_value(vspec, params, b.obs, targets))
        assert loss[1] < loss[0]


# --- surrogates (eq. 9 / eq. 10) ---------------------------------------------------

def surrogate_problem(seed):
    rng = np.random.default_rng(seed)
    spec = PolicySpec(OBS_DIM, 2, hidden=(5, 3))
    theta_beh = init_theta(spec, seed) + 0.3 * rng.standard_normal(init_theta(spec, 0).size)
    b = make_batch(rng, [(10, "term"), (15, "cut")])
    b.logp = log_prob(spec, theta_beh, b.obs, b.act)
    adv_r, _, _ = standardize(rng.standard_normal(len(b)))
    adv_c, _ = center(rng.standard_normal(len(b)) + 1)
    theta = theta_beh + 0.1 * rng.standard_normal(theta_beh.size)
    return spec, b, adv_r, adv_c, theta_beh, theta


@pytest.mark.parametrize("seed", [0, 1])
def test_surrogates_values_and_gradients(seed):
    spec, b, adv_r, adv_c, theta_beh, theta = surrogate_problem(seed)
    L_R, L_C = surrogates(spec, b, adv_r, adv_c, b.logp)
    # at the behaviour parameters the ratio is one
    assert np.isclose(L_R(theta_beh), adv_r.mean(), atol=1e-15) and np.isclose(L_C(theta_beh), adv_c.mean(), atol=1e-15)
    ratio = np.exp(log_prob(spec, theta, b.obs, b.act) - b.logp)
    assert np.isclose(L_R(theta), np.mean(ratio * adv_r)) and np.isclose(L_C(theta), np.mean(ratio * adv_c))
    J = jacobian(lambda t: log_prob(spec, t, b.obs, b.act))(theta)            # (T, n)
    for L, adv in ((L_R, adv_r), (L_C, adv_c)):
        g = grad(L)(theta)
        assert rel_error(g, central_diff(L, theta)) < 1e-7
        assert rel_error(g, (ratio * adv) @ J / len(b)) < 1e-12               # likelihood-ratio form
    # g and a of eq. 9: the plain policy gradient at the behaviour parameters
    J0 = jacobian(lambda t: log_prob(spec, t, b.obs, b.act))(theta_beh)
    assert rel_error(grad(L_C)(theta_beh), adv_c @ J0 / len(b)) < 1e-12


def test_surrogates_freeze_behaviour_logp_and_second_order():
    spec, b, adv_r, adv_c, theta_beh, theta = surrogate_problem(2)
    L_R, L_C = surrogates(spec, b, adv_r, adv_c, b.logp)
    before = L_R(theta)
    b.logp += 1.0                     # later changes to the caller's arrays do not leak in
    adv_r += 1.0
    assert L_R(theta) == before
    # second order through log_prob (the meta-gradient differentiates these gradients)
    v = np.random.default_rng(0).standard_normal(theta.size)
    g = grad(L_C)
    hvp = grad(lambda t: g(t) @ v)(theta)
    fd = central_diff(lambda s: g(theta + s[0] * v), np.zeros(1))[:, 0]
    assert rel_error(hvp, fd) < 1e-7
    with pytest.raises(ValueError):
        surrogates(spec, b, adv_r[:-1], adv_c, b.logp)


# --- constraint value b (docs/derivations.md, D16) ----------------------------------

def test_constraint_value_units():
    rng = np.random.default_rng(4)
    b = make_batch(rng, [(2, "term"), (3, "cut"), (5, "cut")])
    b.cost[:] = [1, 0, 0, 2, 0, 0, 0, 3, 3, 0]
    b.ep_cost = np.array([1.0, 2.0, 6.0])
    # mean episode cost 3, limit 1, mean length 10/3 -> (3 - 1) / (10/3) = 0.6 per step
    assert constraint_value(b, 1.0) == pytest.approx(0.6, rel=1e-14)
    assert constraint_value(b, 3.0) == 0.0
    assert constraint_value(b, 4.0) == pytest.approx(-0.3, rel=1e-14)
    # same per-episode numbers at 10x the episode length: b is 10x smaller
    b10 = make_batch(rng, [(20, "term"), (30, "cut"), (50, "cut")])
    b10.ep_cost = b.ep_cost
    assert constraint_value(b10, 1.0) == pytest.approx(0.06, rel=1e-14)


def test_constraint_value_rejects_partial_batches():
    rng = np.random.default_rng(5)
    b = make_batch(rng, [(2, "term"), (3, "cut")])
    b.truncated[-1] = False                                           # last episode left open
    with pytest.raises(ValueError):
        constraint_value(b, 1.0)


def test_value_loss_and_grad_equals_autograd():
    from autograd import value_and_grad

    from metacpo_ref.model.advantages import ValueSpec, init_value, value_loss, value_loss_and_grad

    rng = np.random.default_rng(3)
    for hidden in [(5,), (6, 4)]:
        vspec = ValueSpec(7, hidden)
        p = init_value(vspec, 1) + 0.1 * rng.standard_normal(len(init_value(vspec, 1)))
        obs, y = rng.standard_normal((40, 7)), rng.standard_normal(40)
        l1, g1 = value_loss_and_grad(vspec, p, obs, y)
        l2, g2 = value_and_grad(lambda q: value_loss(vspec, q, obs, y))(p)
        assert abs(l1 - l2) <= 1e-12 * max(1, abs(l2))
        np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-12)


def test_advantages_passes_its_settings_on():
    """gamma, lambda and the fit's iteration count given to ``advantages`` are the ones used:
    the result equals GAE and ``fit_value`` called directly with the same non-default values,
    and the recorded losses are the mean squared errors of the old and the new fit."""
    rng = np.random.default_rng(8)
    b = make_batch(rng, [(25, "cut"), (15, "term")])
    vspec = ValueSpec(OBS_DIM, hidden=(6,))
    pr, pc = init_value(vspec, 4), init_value(vspec, 5)
    gamma, lam, iters = 0.9, 0.5, 3
    assert (gamma, lam, iters) != (GAMMA, GAE_LAMBDA, 25)
    res = advantages(vspec, b, pr, pc, gamma, lam, iters)
    for params, signal, adv, targets, new, loss in (
            (pr, b.rew, res.adv_r * res.r_std + res.r_mean, res.targets_r, res.vf_params_r, res.vf_loss_r),
            (pc, b.cost, res.adv_c + res.c_mean, res.targets_c, res.vf_params_c, res.vf_loss_c)):
        v_obs = value(vspec, params, b.obs)
        ref_adv, ref_targets = gae(b, signal, v_obs, np.where(b.truncated, value(vspec, params, b.bootstrap_obs), 0.0),
                                   gamma, lam)
        np.testing.assert_allclose(adv, ref_adv, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(targets, ref_targets, rtol=1e-12)
        np.testing.assert_array_equal(new, fit_value(vspec, params, b.obs, targets, iters))
        assert not np.allclose(new, fit_value(vspec, params, b.obs, targets), atol=1e-6)   # 25 iterations differ
        assert loss[0] == pytest.approx(np.mean((v_obs - ref_targets) ** 2), rel=1e-12)
        assert loss[1] == pytest.approx(value_loss(vspec, new, b.obs, ref_targets), rel=1e-12)


def test_gae_one_step_batch_and_empty_batch():
    """A batch of one complete one-step episode is valid (A = r - V(s) at a termination);
    an empty batch is refused with a ValueError."""
    rng = np.random.default_rng(2)
    b = make_batch(rng, [(1, "term")])
    adv, targets = gae(b, b.rew, np.array([0.25]), np.zeros(1))
    np.testing.assert_allclose(adv, b.rew - 0.25)
    empty = make_batch(rng, [(1, "term")])
    for name in ("obs", "act", "logp", "rew", "cost", "terminated", "truncated", "bootstrap_obs"):
        setattr(empty, name, getattr(empty, name)[:0])
    with pytest.raises(ValueError):
        gae(empty, empty.rew, np.zeros(0), np.zeros(0))


def test_constraint_value_rejects_inconsistent_episode_lengths():
    """Episode lengths that do not add up to the batch's steps are refused even when the
    batch ends properly (the means would be over the wrong episodes)."""
    rng = np.random.default_rng(6)
    b = make_batch(rng, [(4, "term"), (3, "cut")])
    b.ep_len = np.array([4, 5])
    with pytest.raises(ValueError):
        constraint_value(b, 1.0)


# --- found by mutation testing (docs/mutation.md, advantages.py) ---------------------

def test_one_iteration_fit_is_one_lbfgs_step_from_the_start():
    """``iters=1`` fits (one L-BFGS-B iteration, as scipy takes it from the same start with
    autograd's gradient); only ``iters <= 0`` returns the start unchanged."""
    from autograd import value_and_grad
    from scipy.optimize import minimize

    vspec = ValueSpec(OBS_DIM, hidden=(6,))
    obs, y = regression_data(5, n=120)
    p0 = init_value(vspec, 5)
    one = fit_value(vspec, p0, obs, y, iters=1)
    ref = minimize(value_and_grad(lambda p: value_loss(vspec, p, obs, y)), p0, jac=True, method="L-BFGS-B",
                   options={"maxiter": 1}).x
    np.testing.assert_allclose(one, ref, rtol=1e-8, atol=1e-10)
    assert value_loss(vspec, one, obs, y) < value_loss(vspec, p0, obs, y)
    np.testing.assert_array_equal(fit_value(vspec, p0, obs, y, iters=-3), p0)


def test_ftol_never_lets_the_fit_run_past_iters():
    """With ``ftol`` given, ``iters`` still bounds the fit: a tolerance too small to stop it
    gives exactly the plain ``iters``-iteration fit, not a longer one."""
    vspec = ValueSpec(OBS_DIM, hidden=(6,))
    obs, y = regression_data(6, n=120)
    p0 = init_value(vspec, 6)
    for iters in (2, 4):
        bounded = fit_value(vspec, p0, obs, y, iters=iters, ftol=1e-15)
        np.testing.assert_array_equal(bounded, fit_value(vspec, p0, obs, y, iters=iters))
        assert not np.allclose(bounded, fit_value(vspec, p0, obs, y, iters=200), atol=1e-6)


def test_constraint_value_rejects_episodes_without_their_end_flag():
    """An episode whose end flag is missing inside the batch (the lengths still add up and
    the batch still ends properly) is refused: the episode statistics would not be those
    of the steps."""
    rng = np.random.default_rng(7)
    b = make_batch(rng, [(4, "term"), (3, "cut"), (2, "cut")])
    assert constraint_value(b, 1.0) == pytest.approx((b.ep_cost.mean() - 1.0) / 3.0)
    for flags, t in ((b.terminated, 3), (b.truncated, 6)):
        flags[t] = False
        with pytest.raises(ValueError, match="whole episodes"):
            constraint_value(b, 1.0)
        flags[t] = True
