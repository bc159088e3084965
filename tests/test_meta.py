"""The exact meta-gradient (eq. 11) and the outer step (eq. 12) on synthetic traces."""
import dataclasses

import numpy as np
import pytest
from autograd import grad, hessian

from metacpo_ref.advantages import surrogates
from metacpo_ref.config import PAPER, Config
from metacpo_ref.cpo import solve_step
from metacpo_ref.gradcheck import (central_diff, check_meta_gradient_F, check_meta_gradient_G,
                                   meta_problem, meta_problem_fisher, meta_step_report, rel_error, step_margin)
from metacpo_ref.meta import (Trace, gradient_from_parts, meta_gradient, meta_objective, outer_step,
                              synthetic_traces, task_gradient)
from metacpo_ref.update import step_problem
from metacpo_ref.policy import PolicySpec

SPEC = PolicySpec(3, 2, (4,))
CFG = Config(hidden=(4,), **PAPER)   # the paper's chain


def test_meta_objective_deterministic():
    config, spec, theta, traces = meta_problem()
    assert meta_objective(theta, traces, config) == meta_objective(theta.copy(), traces, config)
    a = meta_gradient(theta, traces, config)
    b = meta_gradient(theta, traces, config)
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(a[3], b[3])
    # the nominal chain replays the recorded parameters: F = mean(adv_r) = 0 there
    assert abs(a[0]) < 1e-12


def test_meta_gradient_matches_finite_differences():
    config, spec, theta, traces = meta_problem()
    report = meta_step_report(config, spec, theta, traces)
    assert {c for c, _ in report} == {"trust", "recovery", "both"}
    assert min(m for _, m in report) >= 1e-3
    for check in (check_meta_gradient_F, check_meta_gradient_G):
        r = check()
        assert r["passed"], r
        assert r["max_rel_error"] <= 1e-5


def test_recomputed_behaviour_logp_is_a_defect():
    """Recomputing logp_beh from the phi being differentiated drops terms: the gradient changes."""
    config, spec, theta, traces = meta_problem()
    _, _, dF, _ = meta_gradient(theta, traces, config)
    # a trace whose stored log-probs were taken from another policy gives another gradient
    shifted = [Trace(tuple(dataclasses.replace(d, logp_beh=d.logp_beh + 0.1 * d.obs[:, 0]) for d in tr.steps),
                     tr.eval) for tr in traces]
    _, _, dF2, _ = meta_gradient(theta, shifted, config)
    assert rel_error(dF2, dF) > 1e-3


def _k1_problem(frac, seed):
    theta, traces = synthetic_traces(SPEC, 1, 1, seed, CFG, b_fracs=[[frac, 0.2]], betas=[[0.8]])
    return theta, traces


def _k1_jacobian(theta, traces, drop=()):
    """d phi_1 / d theta = I + beta (J_g H_R + J_a H_C + j_b a_0^T), every piece independent
    of the VJP: Jacobians of solve_step by finite differences, Hessians by autograd."""
    d = traces[0].steps[0]
    L_R, L_C = surrogates(SPEC, d, d.adv_r, d.adv_c, d.logp_beh)
    g0, a0, b0 = grad(L_R)(theta), grad(L_C)(theta), d.b_hat
    delta = CFG.inner_delta
    J_g = central_diff(lambda g: solve_step(g, a0, b0, delta).x, g0)
    J_a = central_diff(lambda a: solve_step(g0, a, b0, delta).x, a0)
    j_b = central_diff(lambda b: solve_step(g0, a0, float(b[0]), delta).x, np.array([b0]))[:, 0]
    H_R, H_C = hessian(L_R)(theta), hessian(L_C)(theta)
    inner = J_g @ H_R
    if "a" not in drop:
        inner = inner + J_a @ H_C
    if "b" not in drop:
        inner = inner + np.outer(j_b, a0)
    n = len(theta)
    if "diagonal" in drop:   # the authors' approximation: 1 + dx_i/dg_i * d^2L/dtheta_i^2
        return np.diag(1 + d.beta * np.diag(J_g) * np.diag(H_R)), d
    return np.eye(n) + d.beta * inner, d


def _k1_gradients(theta, traces, J, d):
    phi1 = theta + d.beta * solve_step(*step_problem(SPEC, theta, d), CFG.inner_delta).x
    ev = traces[0].eval
    L_Re, L_Ce = surrogates(SPEC, ev, ev.adv_r, ev.adv_c, ev.logp_beh)
    return J.T @ grad(L_Re)(phi1), J.T @ grad(L_Ce)(phi1)


@pytest.mark.parametrize("frac,case", [(-3.0, "trust"), (0.6, "both")])
def test_k1_cross_check(frac, case):
    seed = 5
    theta, traces = _k1_problem(frac, seed)
    d = traces[0].steps[0]
    g, a, b = step_problem(SPEC, theta, d)
    assert solve_step(g, a, b, CFG.inner_delta).case == case
    assert step_margin(g, a, b, CFG.inner_delta) > 1e-2
    _, _, dF, dG = meta_gradient(theta, traces, CFG)
    J, d = _k1_jacobian(theta, traces)
    dF_ref, dG_ref = _k1_gradients(theta, traces, J, d)
    assert rel_error(dF, dF_ref) <= 1e-5
    assert rel_error(dG, dG_ref) <= 1e-5
    if case == "both":
        # dropping the terms through a or b, or the diagonal approximation, fails this check
        for drop in ("a", "b", "diagonal"):
            Jd, _ = _k1_jacobian(theta, traces, drop=(drop,))
            dF_d, dG_d = _k1_gradients(theta, traces, Jd, d)
            assert max(rel_error(dF, dF_d), rel_error(dG, dG_d)) > 1e-2, drop


def _with_eval_b(traces, b_hat):
    return [Trace(tr.steps, dataclasses.replace(tr.eval, b_hat=b_hat)) for tr in traces]


def _outer_instance(target):
    """Traces whose G is set (through b_hat_eval, which moves neither dF nor dG) so the
    outer step lands in ``target``."""
    for seed in range(20):
        theta, traces = synthetic_traces(SPEC, 2, 1, seed, CFG)
        F, G, dF, dG = meta_gradient(theta, traces, CFG)
        s, delta = dG @ dG, CFG.outer_delta
        x_t = np.sqrt(2 * delta / (dF @ dF)) * dF
        if target == "trust":
            G_want = -10 * np.sqrt(2 * delta * s)
        elif target == "both":
            if dG @ x_t <= 0:
                continue
            G_want = -0.5 * (dG @ x_t)
        else:
            G_want = 1.5 * np.sqrt(2 * delta * s)
        shift = G_want - G
        traces = [Trace(tr.steps, dataclasses.replace(tr.eval, b_hat=tr.eval.b_hat + shift)) for tr in traces]
        return theta, traces
    raise AssertionError("no instance found")


@pytest.mark.parametrize("target", ["trust", "both", "recovery"])
def test_outer_step_cases(target):
    theta, traces = _outer_instance(target)
    res = outer_step(theta, traces, CFG)
    assert res.case == target
    assert res.beta > 0
    step = res.theta - theta
    assert 0.5 * step @ step <= CFG.outer_delta * (1 + 1e-9)
    if target == "recovery":
        assert res.G_new < res.G           # pure cost decrease
    else:
        assert res.F_new > res.F           # improvement
        assert res.G_new - res.G <= max(-res.G, 0.0)
    # the reported numbers are those of meta_objective at the new theta
    assert (res.F_new, res.G_new) == meta_objective(res.theta, traces, CFG)
    # and the multipliers those of the step of eq. 12 (g = dF, a = dG, b = G)
    ref = solve_step(res.dF, res.dG, res.G, CFG.outer_delta)
    assert (res.lam, res.case) == (ref.lam, ref.case)
    assert np.isnan(res.nu) if target == "recovery" else res.nu == ref.nu


def test_outer_step_fisher_metric_stays_in_kl_trust_region():
    from metacpo_ref.policy import mean_kl

    theta, traces = _outer_instance("trust")
    cfg = dataclasses.replace(CFG, outer_metric="fisher")
    res = outer_step(theta, traces, cfg)
    assert res.beta > 0 and res.F_new > res.F
    obs0 = np.concatenate([tr.steps[0].obs for tr in traces])
    assert mean_kl(SPEC, theta, res.theta, obs0) <= cfg.outer_delta


def test_meta_trpo_ignores_cost():
    theta, traces = _outer_instance("recovery")
    cfg = dataclasses.replace(CFG, algo="meta-trpo")
    res = outer_step(theta, traces, cfg)
    assert res.case == "trust" and res.F_new > res.F


@pytest.mark.parametrize("problem", [meta_problem, meta_problem_fisher])
def test_meta_gradient_is_the_mean_of_the_task_parts(problem):
    """config.split_meta_gradient (issue 18): each task's part of eq. 11, computed from its
    own trace alone, is the meta-gradient of that one task; their mean is the whole
    meta-gradient: F and G to the bit, dF and dG up to rounding (another summation order)."""
    config, spec, theta, traces = problem()
    parts = [task_gradient(theta, tr, config) for tr in traces]
    for part, tr in zip(parts, traces):
        alone = meta_gradient(theta, [tr], config)
        assert part[:2] == alone[:2]
        np.testing.assert_array_equal(part[2], alone[2])
        np.testing.assert_array_equal(part[3], alone[3])
    assert rel_error(parts[0][2], parts[1][2]) > 0.1   # the tasks' parts differ: the sum is not trivial
    F, G, dF, dG = gradient_from_parts(parts)
    whole = meta_gradient(theta, traces, config)
    assert (F, G) == whole[:2]
    for split, joint in ((dF, whole[2]), (dG, whole[3])):
        np.testing.assert_allclose(split, joint, rtol=1e-12, atol=1e-15 * np.abs(joint).max())
    a = outer_step(theta, traces, config)
    b = outer_step(theta, traces, config, parts)
    assert (a.case, a.beta, a.F, a.G) == (b.case, b.beta, b.F, b.G)
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-12, atol=1e-15)
