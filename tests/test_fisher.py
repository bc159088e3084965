"""Fisher-metric local steps (inner_metric="fisher"): the layer with a parameter-dependent
metric (dco.py), its exact H^{-1} products (fisher_solve.py), the K = 1 cross-check of the
chain (local_step.py, replaying), and the wiring (config, checkpoint, meta-testing)."""
import dataclasses
import json
import warnings

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, jacobian
from autograd.tracer import getval

from metacpo_ref.config import PAPER, Config
from metacpo_ref.step.cpo import solve_step
from metacpo_ref.step.dco import cpo_layer, step_vjp
from metacpo_ref.model.fisher_solve import InexactSolveWarning, fisher_matrix, fisher_solver
from metacpo_ref.model.metric import inner_metric, local_metric
from metacpo_ref.algos.local_step import local_step, policy_update
from metacpo_ref.algos.step_problem import step_problem
from metacpo_ref.checks.gradcheck import (central_diff, check_meta_gradient_F_fisher, check_meta_gradient_G_fisher,
                                   cpo_instance, meta_problem_fisher, meta_step_report, rel_error, step_margin)
from metacpo_ref.algos.meta import meta_gradient
from metacpo_ref.checks.problems import synthetic_traces
from metacpo_ref.model.policy import PolicySpec, mean_kl
from metacpo_ref.run.rundir import config_from_dict

SPEC = PolicySpec(3, 2, (4,))
CFG = Config(hidden=(4,), inner_metric="fisher")


# --- the layer (pure math) ---------------------------------------------------------

@pytest.mark.parametrize("case", ["trust", "both", "recovery"])
def test_low_rank_metric_cotangent_is_the_dense_one(case):
    """step_vjp's bilinear (p, q) is its dense Hbar: sym(p q') (M5), same other bars."""
    p = cpo_instance(case, dense=True)
    H = p["H"]
    solve = lambda v: np.linalg.solve(H, v)
    step = solve_step(p["g"], p["a"], p["b"], p["delta"], H=H, method="closed_form")
    assert step.case == case
    xbar = np.random.default_rng(1).standard_normal(H.shape[0])
    dense = step_vjp(step, xbar, p["a"], p["b"], p["delta"], solve, "dense")
    low = step_vjp(step, xbar, p["a"], p["b"], p["delta"], solve, "bilinear")
    for i in range(4):
        np.testing.assert_allclose(low[i], dense[i], rtol=1e-12, atol=1e-14)
    P, Q = low[4]
    np.testing.assert_allclose(0.5 * (np.outer(P, Q) + np.outer(Q, P)), dense[4], rtol=1e-12, atol=1e-14)


def _toy_metric(n, seed=0):
    """H(phi) = M0 + diag(exp(phi)) + (c'phi)^2 I: SPD and nonlinear in phi."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    M0, c = M @ M.T / n + 0.3 * np.eye(n), rng.standard_normal(n) / n
    Hof = lambda phi: M0 + anp.diag(anp.exp(phi)) + anp.dot(c, phi) ** 2 * anp.eye(n)
    return Hof, (lambda phi, v: anp.dot(Hof(phi), v)), (lambda phi: (lambda v: np.linalg.solve(Hof(phi), v)))


@pytest.mark.parametrize("case", ["trust", "both", "recovery"])
def test_metric_layer_jacobian_in_phi(case):
    """d x / d phi through H(phi) alone (g, a, b fixed): autograd through the layer's VJP
    against central differences of the solved step."""
    n = 5
    Hof, hvp, make_solve = _toy_metric(n)
    phi0 = 0.3 * np.random.default_rng(2).standard_normal(n)
    p = cpo_instance(case, dense=False, n=n)
    # b scaled for H(phi0), so that the case is the named one
    s_I = p["a"] @ p["a"]
    s_H = p["a"] @ make_solve(phi0)(p["a"])
    b = p["b"] * np.sqrt(s_H / s_I)
    if case == "both":
        b = p["b"] * np.sqrt(s_H / s_I) * 0.2
    f = lambda phi: cpo_layer(p["g"], p["a"], b, p["delta"], hinv=make_solve(getval(phi)), phi=phi, hvp=hvp)
    assert solve_step(p["g"], p["a"], b, p["delta"], H=Hof(phi0)).case == case
    assert step_margin(p["g"], p["a"], b, p["delta"], make_solve(phi0)) > 1e-2
    ref = central_diff(lambda phi: solve_step(p["g"], p["a"], b, p["delta"], H=Hof(phi)).x, phi0)
    assert rel_error(jacobian(f)(phi0), ref) <= 1e-6


# --- H^{-1} products ---------------------------------------------------------------

def test_cg_solver_matches_direct_and_warns_when_capped():
    config, spec, theta, traces = meta_problem_fisher()
    obs = traces[0].steps[0].obs
    v = np.random.default_rng(0).standard_normal(len(theta))
    direct = fisher_solver(spec, theta, obs, config.cg_damping)
    H = fisher_matrix(spec, theta, obs, config.cg_damping)
    assert rel_error(H @ direct(v), v) < 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = fisher_solver(spec, theta, obs, config.cg_damping, direct_max=0)(v)
    assert rel_error(y, direct(v)) < 1e-8
    with pytest.warns(InexactSolveWarning, match="relative residual"):
        fisher_solver(spec, theta, obs, config.cg_damping, direct_max=0, max_iters=2)(v)


def test_cg_solver_checks_the_true_residual_only_at_the_cap():
    """A solve that CG stops by its own residual makes only CG's products (no extra product
    to check it: the recurrence residual is within the true one's 10 tol), returns plain CG's
    floats, and its true residual is within the tolerance; one stopped at the cap is checked."""
    import metacpo_ref.model.fisher_solve as fs
    from metacpo_ref.checks.bench import counting_fisher_products
    from metacpo_ref.config import FISHER_CG_TOL
    from metacpo_ref.step.cpo import cg

    config, spec, theta, traces = meta_problem_fisher()
    obs = traces[0].steps[0].obs
    v = np.random.default_rng(1).standard_normal(len(theta))
    with counting_fisher_products() as solver_products:
        y = fisher_solver(spec, theta, obs, config.cg_damping, direct_max=0)(v)
    with counting_fisher_products() as cg_products:
        plain = cg(fs.fisher_product(spec, theta, obs, config.cg_damping), v, 250, FISHER_CG_TOL)
    assert np.array_equal(y, plain)
    assert solver_products.count == cg_products.count < 250
    assert rel_error(fs.fisher_product(spec, theta, obs, config.cg_damping)(y), v) <= FISHER_CG_TOL
    with counting_fisher_products() as capped, pytest.warns(InexactSolveWarning):
        fisher_solver(spec, theta, obs, config.cg_damping, direct_max=0, max_iters=3)(v)
    assert capped.count == 4


def test_fisher_matrix_is_the_hessian_of_the_mean_kl():
    config, spec, theta, traces = meta_problem_fisher()
    obs = traces[0].steps[0].obs
    H_kl = jacobian(grad(lambda t: mean_kl(spec, theta, t, obs)))(theta)
    H = fisher_matrix(spec, theta, obs, 0.1)
    np.testing.assert_allclose(H, H_kl + 0.1 * np.eye(len(theta)), rtol=1e-10, atol=1e-12)


# --- the meta-gradient ---------------------------------------------------------------

def test_fisher_meta_gradient_matches_finite_differences():
    config, spec, theta, traces = meta_problem_fisher()
    report = meta_step_report(config, spec, theta, traces)
    assert {c for c, _ in report} == {"trust", "recovery", "both"}
    assert min(m for _, m in report) >= 1e-3
    for check in (check_meta_gradient_F_fisher, check_meta_gradient_G_fisher):
        r = check()
        assert r["passed"] and r["max_rel_error"] <= 1e-5, r


def test_fisher_and_euclidean_chains_differ():
    """The metric is really used: the same traces give another objective gradient."""
    config, spec, theta, traces = meta_problem_fisher()
    dF_f = meta_gradient(theta, traces, config)[2]
    dF_e = meta_gradient(theta, traces, Config(hidden=(4,), **PAPER))[2]
    assert rel_error(dF_e, dF_f) > 1e-2


def _k1_problem(frac, seed=5):
    return synthetic_traces(SPEC, 1, 1, seed, CFG, b_fracs=[[frac, 0.2]], betas=[[0.8]])


def _whole_step(theta, d):
    """phi_1 = theta + beta x, from scratch: (g, a, b) by autograd, the dense Fisher
    matrix, and the scipy dual (not the closed form the layer uses)."""
    g, a, b = step_problem(SPEC, theta, d)
    H = fisher_matrix(SPEC, theta, d.obs, CFG.cg_damping)
    return theta + d.beta * solve_step(g, a, b, CFG.inner_delta, H=H, method="scipy").x


def _frozen_metric_step(theta, d):
    """The replayed local step with H treated as a constant (M7 dropped): only for showing
    that this gives a wrong derivative."""
    g, a, b = step_problem(SPEC, theta, d)
    solve = fisher_solver(SPEC, getval(theta), d.obs, CFG.cg_damping)
    return theta + d.beta * cpo_layer(g, a, b, CFG.inner_delta, hinv=solve)


@pytest.mark.parametrize("frac,case", [(-3.0, "trust"), (0.6, "both"), (1.5, "recovery")])
def test_k1_cross_check_and_frozen_metric_fails_it(frac, case):
    """d phi_1 / d theta by central differences of the whole local step against the
    analytic Jacobian (autograd VJPs through the layer); treating H as a constant
    (dropping M7) fails the same check by orders of magnitude."""
    theta, traces = _k1_problem(frac)
    d = traces[0].steps[0]
    g, a, b = step_problem(SPEC, theta, d)
    solve = fisher_solver(SPEC, theta, d.obs, CFG.cg_damping)
    assert solve_step(g, a, b, CFG.inner_delta, hinv=solve).case == case
    assert step_margin(g, a, b, CFG.inner_delta, solve) > 1e-2
    J_fd = central_diff(lambda t: _whole_step(t, d), theta)
    J = jacobian(lambda t: local_step(SPEC, t, d, inner_metric(CFG), CFG))(theta)
    J_frozen = jacobian(lambda t: _frozen_metric_step(t, d))(theta)
    err, err_frozen = rel_error(J, J_fd), rel_error(J_frozen, J_fd)
    # the step part only (phi_1 - theta): what the metric terms are a part of
    eye = np.eye(len(theta))
    step_err_frozen = rel_error(J_frozen - eye, J_fd - eye)
    print(f"{case}: rel error of d phi_1/d theta {err:.1e}; with H frozen {err_frozen:.1e} "
          f"(of d(phi_1 - theta)/d theta: {step_err_frozen:.1e})")
    assert err <= 1e-6
    assert step_err_frozen > 1e-2
    # and the meta-gradient of this one-step chain is J' grad L_eval(phi_1)
    _, _, dF, _ = meta_gradient(theta, traces, CFG)
    phi1 = _whole_step(theta, d)
    from metacpo_ref.model.advantages import surrogates
    ev = traces[0].eval
    L_Re, _ = surrogates(SPEC, ev, ev.adv_r, ev.adv_c, ev.logp_beh)
    assert rel_error(dF, J_fd.T @ grad(L_Re)(phi1)) <= 1e-5


# --- wiring -----------------------------------------------------------------------------

def test_inner_metric_config_and_old_checkpoints():
    with pytest.raises(ValueError, match="unknown inner metric"):
        Config(inner_metric="kl")
    d = json.loads(json.dumps({k: v for k, v in Config().__dict__.items() if k != "inner_metric"}))
    assert config_from_dict(d).inner_metric == "identity"
    assert config_from_dict({**d, "inner_metric": "fisher"}).inner_metric == "fisher"


def test_committed_checkpoints_load_as_identity():
    """Checkpoints written before inner_metric existed (results/) load with the paper's rule."""
    from pathlib import Path

    from metacpo_ref.run.rundir import load_checkpoint

    path = Path(__file__).resolve().parents[1] / "results" / "point-circle" / "cpo-s0" / "checkpoint.npz"
    with np.load(path) as z:
        assert "inner_metric" not in json.loads(str(z["config"]))
    assert load_checkpoint(path).config.inner_metric == "identity"


def test_meta_testing_adapts_with_the_stored_rule():
    """policy_update (what the inner loop and meta-testing's adapt_on call) follows
    config.inner_metric: the Fisher step stays in the KL radius inner_delta and is the
    step of the differentiated chain."""
    config, spec, theta, traces = meta_problem_fisher()
    d = traces[1].steps[0]
    metric = local_metric(config)
    assert metric.fisher and metric.exact and metric.delta == metric.kl_bound == config.inner_delta
    fisher = policy_update(spec, theta, d, config)
    euclid = policy_update(spec, theta, d, Config(hidden=(4,), inner_metric="identity"))
    assert fisher.beta > 0 and rel_error(fisher.phi - theta, euclid.phi - theta) > 1e-2
    assert mean_kl(spec, theta, fisher.phi, d.obs) <= config.inner_delta
    chain = local_step(spec, theta, dataclasses.replace(d, beta=fisher.beta, b_shift=fisher.b_shift), metric, config)
    np.testing.assert_allclose(fisher.phi, chain, rtol=1e-12, atol=1e-14)


def test_training_with_fisher_local_steps_stores_the_rule(tmp_path):
    """One tiny Meta-CPO iteration with --inner-metric fisher (n = 1492: CG to 1e-10):
    the rule is in config.json and the checkpoint, and a local step was taken."""
    from metacpo_ref.run.rundir import read_metrics
    from metacpo_ref.run.training import train

    cfg = Config(family="point-circle", iterations=1, tasks=1, local_steps=1, episodes=1, inner_metric="fisher")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InexactSolveWarning)
        state = train(cfg, tmp_path)
    assert state.config.inner_metric == "fisher"
    assert json.loads((tmp_path / "config.json").read_text())["inner_metric"] == "fisher"
    row = read_metrics(tmp_path)[0]
    assert sum(row["cases"].values()) == 1 and row["tasks"][0]["betas"][0] > 0
