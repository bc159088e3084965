"""The exact meta-gradient (eq. 11) and the outer step (eq. 12) on synthetic traces."""
import dataclasses

import numpy as np
import pytest
from autograd import grad, hessian

from metacpo_ref.model.advantages import surrogates
from metacpo_ref.config import PAPER, Config
from metacpo_ref.step.cpo import solve_step
from metacpo_ref.model.fisher_solve import fisher_solver
from metacpo_ref.checks.gradcheck import (central_diff, check_meta_gradient_F, check_meta_gradient_G,
                                   meta_problem, meta_problem_fisher, meta_step_report, rel_error, step_margin)
from metacpo_ref.algos.meta import gradient_from_parts, meta_gradient, meta_objective, outer_step, task_gradient
from metacpo_ref.algos.iteration import Trace
from metacpo_ref.algos.local_step import local_step
from metacpo_ref.model.metric import inner_metric
from metacpo_ref.checks.problems import synthetic_traces
from metacpo_ref.model.fisher_solve import fisher_cg_solver
from metacpo_ref.algos.step_problem import step_problem
from metacpo_ref.model.policy import PolicySpec

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
    from metacpo_ref.model.policy import mean_kl

    theta, traces = _outer_instance("trust")
    cfg = dataclasses.replace(CFG, outer_metric="fisher")
    res = outer_step(theta, traces, cfg)
    assert res.beta > 0 and res.F_new > res.F
    obs0 = np.concatenate([tr.steps[0].obs for tr in traces])
    assert mean_kl(SPEC, theta, res.theta, obs0) <= cfg.outer_delta
    # the step of eq. 12 in the Fisher metric of the pre-adaptation batches (CG solve)
    ref = solve_step(res.dF, res.dG, res.G, cfg.outer_delta,
                     hinv=fisher_cg_solver(SPEC, theta, obs0, cfg.cg_damping, cfg.cg_iters))
    assert res.case == ref.case == "trust"
    np.testing.assert_allclose(res.theta, theta + res.beta * ref.x, rtol=1e-9, atol=1e-12)


def test_outer_step_without_local_steps_bounds_the_kl_on_the_evaluation_batches():
    """K = 0 traces (no local step: the evaluation batch is theta's own): the outer step's
    KL is measured on the evaluation batches."""
    from metacpo_ref.model.policy import mean_kl

    theta, traces = synthetic_traces(SPEC, 2, 0, 1, CFG)
    cfg = dataclasses.replace(CFG, outer_metric="fisher")
    res = outer_step(theta, traces, cfg)
    obs = np.concatenate([tr.eval.obs for tr in traces])
    assert res.beta > 0 and mean_kl(SPEC, theta, res.theta, obs) <= cfg.outer_delta


def test_meta_trpo_ignores_cost():
    theta, traces = _outer_instance("recovery")
    cfg = dataclasses.replace(CFG, algo="meta-trpo")
    res = outer_step(theta, traces, cfg)
    assert res.case == "trust" and res.F_new > res.F


def test_meta_trpo_fisher_outer_step_is_the_natural_gradient_step():
    """Meta-TRPO with outer_metric "fisher": the outer step is the trust-region step on dF
    alone in the Fisher metric of the pre-adaptation batches, sqrt(2 delta / g'H^-1 g) H^-1 g."""
    theta, traces = _outer_instance("recovery")
    cfg = dataclasses.replace(CFG, algo="meta-trpo", outer_metric="fisher")
    res = outer_step(theta, traces, cfg)
    hinv = fisher_cg_solver(SPEC, theta, np.concatenate([tr.steps[0].obs for tr in traces]), cfg.cg_damping,
                            cfg.cg_iters)
    x = hinv(res.dF)
    assert res.case == "trust" and res.beta > 0
    np.testing.assert_allclose(res.theta, theta + res.beta * np.sqrt(2 * cfg.outer_delta / (res.dF @ x)) * x,
                               rtol=1e-8, atol=1e-12)


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


def test_meta_trpo_local_step_is_the_trust_region_step_on_the_reward_alone():
    """Meta-TRPO's local step as eq. 11 replays it (Euclidean, meta-trpo's default metric)
    ignores the cost: phi + beta sqrt(2 delta / g'g) g, also on a batch past its cost
    limit, where Meta-CPO's step is a recovery step."""
    cfg = Config(algo="meta-trpo", hidden=(4,), **PAPER)
    theta, traces = synthetic_traces(SPEC, 1, 1, 0, CFG, b_fracs=[[1.5, 0.2]], betas=[[0.8]])
    d = traces[0].steps[0]
    L_R, _ = surrogates(SPEC, d, d.adv_r, d.adv_c, d.logp_beh)
    g = grad(L_R)(theta)
    ref = theta + 0.8 * np.sqrt(2 * cfg.inner_delta / (g @ g)) * g
    np.testing.assert_allclose(local_step(SPEC, theta, d, inner_metric(cfg), cfg), ref, rtol=1e-9, atol=1e-12)
    assert solve_step(*step_problem(SPEC, theta, d), CFG.inner_delta).case == "recovery"
    assert np.abs(local_step(SPEC, theta, d, inner_metric(CFG), CFG) - ref).max() > 1e-3


def test_synthetic_traces_default_constraint_values_are_feasible_of_both_signs():
    """Without ``b_fracs`` every batch's ``b_hat`` is ``frac sqrt(2 delta s)`` with ``frac``
    uniform on (-0.8, 0.8): feasible (no recovery step), of both signs."""
    _, traces = synthetic_traces(SPEC, 6, 2, 1, CFG)
    fracs = []
    for tr in traces:
        for d in (*tr.steps, tr.eval):
            _, a, _ = step_problem(SPEC, d.phi, d)
            fracs.append(d.b_hat / np.sqrt(2 * CFG.inner_delta * (a @ a)))
    assert len(fracs) == 18
    assert max(np.abs(fracs)) < 0.8 and min(fracs) < -0.2 and max(fracs) > 0.2


def test_meta_iteration_row_reports_the_adapted_batches_and_the_outer_step(monkeypatch):
    """One meta-iteration (K = 2, two tasks): the row's adapted return and cost are the means
    of the tasks' last (phi_K) batches, its case counts those of the tasks' local steps, and
    its outer-step fields, like the new theta, are those of the outer step taken, which uses
the tasks' meta-gradient parts (config.split_meta_gradient)."""
    import metacpo_ref.algos.meta
    from metacpo_ref.model.advantages import init_value
    from metacpo_ref.algos.iteration import json_float
    from metacpo_ref.algos.meta import meta_iteration
    from metacpo_ref.model.policy import init_theta
    from metacpo_ref.algos.step_data import specs
    from metacpo_ref.envs.workers import Workers

    config = Config(family="point-circle", tasks=2, local_steps=2, episodes=1, hidden=(8,))
    spec, vspec = specs(config)
    taken = []

    def spy(theta, traces, config, parts=None, objective=None):
        taken.append((outer_step(theta, traces, config, parts, objective), parts))
        return taken[-1][0]

    monkeypatch.setattr(metacpo_ref.algos.meta, "outer_step", spy)
    with Workers(config.family) as w:
        theta, _, row = meta_iteration(init_theta(spec, 0), (init_value(vspec, 1), init_value(vspec, 2)),
                                       config, 0, w)
    tasks = row["tasks"]
    assert len(tasks) == 2 and all(len(t["returns"]) == len(t["costs"]) == 3 for t in tasks)
    assert row["return_adapted"] == float(np.mean([t["returns"][-1] for t in tasks]))
    assert row["cost_adapted"] == float(np.mean([t["costs"][-1] for t in tasks]))
    cases = [c for t in tasks for c in t["cases"]]
    assert row["cases"] == {c: cases.count(c) for c in set(cases)} and sum(row["cases"].values()) == 4
    ((res, parts),) = taken
    assert config.split_meta_gradient and len(parts) == 2   # the tasks' parts of eq. 11, not recomputed
    np.testing.assert_array_equal(res.dF, gradient_from_parts(parts)[2])
    np.testing.assert_array_equal(theta, res.theta)
    assert (row["outer_case"], row["outer_beta"], row["outer_lam"], row["outer_nu"]) == (
        res.case, res.beta, res.lam, json_float(res.nu))
    assert (row["F"], row["G"], row["F_new"], row["G_new"]) == (res.F, res.G, res.F_new, res.G_new)


def test_a_rejected_outer_step_keeps_theta_and_reports_no_change():
    """When no line-search candidate passes (here: a KL bound no step meets), theta stays,
    the accepted fraction is 0 and the reported (F, G) after are those before."""
    theta, traces = _outer_instance("trust")
    res = outer_step(theta, traces, dataclasses.replace(CFG, ls_kl=1e-14))
    assert res.case == "trust" and res.beta == 0.0
    np.testing.assert_array_equal(res.theta, theta)
    assert (res.F_new, res.G_new) == (res.F, res.G)
    np.testing.assert_allclose((res.F, res.G), meta_objective(theta, traces, CFG), rtol=1e-12, atol=1e-15)


def test_G_is_relative_to_the_cost_surrogate_at_the_collecting_parameters():
    """Eq. 10's G_i = b_hat + L_C(phi_K) - L_C(phi_K^collected): on the nominal chain (theta
    that recorded the traces) it is the mean b_hat of the evaluation batches, also when the
    cost advantages are not centred (L_C(phi^collected) = mean(A_C) is then not 0)."""
    theta, traces = synthetic_traces(SPEC, 2, 1, 4, CFG)
    shifted = [Trace(tr.steps, dataclasses.replace(tr.eval, adv_c=tr.eval.adv_c + 0.3)) for tr in traces]
    _, G = meta_objective(theta, shifted, CFG)
    assert G == pytest.approx(np.mean([tr.eval.b_hat for tr in traces]), abs=1e-12)


def test_meta_trpo_fisher_local_step_ignores_the_cost():
    """Meta-TRPO with inner_metric "fisher": the replayed local step is the natural-gradient
    step on the reward alone, phi + beta sqrt(2 delta / g'H^-1 g) H^-1 g (H of the batch at
    phi, exact solve), also on a batch past its cost limit."""
    cfg = Config(algo="meta-trpo", hidden=(4,), inner_metric="fisher", outer_metric="identity")
    theta, traces = synthetic_traces(SPEC, 1, 1, 0, cfg, b_fracs=[[1.5, 0.2]], betas=[[0.8]])
    d = traces[0].steps[0]
    L_R, _ = surrogates(SPEC, d, d.adv_r, d.adv_c, d.logp_beh)
    x = fisher_solver(SPEC, theta, d.obs, cfg.cg_damping)(grad(L_R)(theta))
    ref = theta + 0.8 * np.sqrt(2 * cfg.inner_delta / (grad(L_R)(theta) @ x)) * x
    np.testing.assert_allclose(local_step(SPEC, theta, d, inner_metric(cfg), cfg), ref, rtol=1e-9, atol=1e-12)
    meta_cpo = dataclasses.replace(cfg, algo="meta-cpo")
    assert np.abs(local_step(SPEC, theta, d, inner_metric(meta_cpo), meta_cpo) - ref).max() > 1e-3


@pytest.mark.parametrize("n_workers", [1, 2])
def test_line_search_objective_on_workers_is_the_same_floats(n_workers):
    """meta_objective_on (the outer line search's eq. 10, task by task on the workers) gives
    meta_objective's floats exactly, with the Fisher-metric local steps, in-process and on a
    two-process pool; and outer_step with it takes the same step."""
    from metacpo_ref.algos.meta import meta_objective_on
    from metacpo_ref.envs.workers import Workers

    cfg = dataclasses.replace(CFG, inner_metric="fisher")
    theta, traces = synthetic_traces(SPEC, 3, 2, 4, cfg)
    cand = theta + 0.01 * np.random.default_rng(0).normal(size=theta.shape)
    with Workers("point-circle", None, n_workers) as workers:
        for t in (theta, cand):
            assert meta_objective_on(workers, t, traces, cfg) == meta_objective(t, traces, cfg)
        here = outer_step(theta, traces, cfg)
        there = outer_step(theta, traces, cfg, objective=lambda c: meta_objective_on(workers, c, traces, cfg))
    assert (here.beta, here.F_new, here.G_new) == (there.beta, there.F_new, there.G_new)
    np.testing.assert_array_equal(here.theta, there.theta)


def test_a_subsampled_fisher_metric_is_the_fisher_matrix_of_every_sth_observation_and_exactly_differentiated():
    """fisher_subsample s: every step's Fisher solve and product are those of the batch's
    observations obs[::s] (the local steps, the outer step, the baselines: one Metric), and
    the meta-gradient through the subsampled H(phi_k) still matches central differences."""
    from metacpo_ref.checks.gradcheck import central_diff, meta_step_report
    from metacpo_ref.model.fisher_solve import fisher_hvp
    from metacpo_ref.model.metric import local_metric, outer_metric

    config = dataclasses.replace(meta_problem_fisher()[0], fisher_subsample=3)
    _, spec, theta, traces = meta_problem_fisher()
    obs, v = traces[0].steps[0].obs, np.arange(len(theta), dtype=np.float64) / len(theta)
    for metric in (inner_metric(config), local_metric(config), outer_metric(dataclasses.replace(
            config, outer_metric="fisher"))):
        np.testing.assert_array_equal(metric.hvp(spec, obs)(theta, v),
                                      fisher_hvp(spec, obs[::3], config.cg_damping)(theta, v))
    np.testing.assert_array_equal(inner_metric(config).solver(spec, theta, obs)(v),
                                  fisher_solver(spec, theta, obs[::3], config.cg_damping)(v))
    assert not np.array_equal(inner_metric(config).solver(spec, theta, obs)(v),
                              inner_metric(meta_problem_fisher()[0]).solver(spec, theta, obs)(v))
    report = meta_step_report(config, spec, theta, traces)
    assert min(m for _, m in report) >= 1e-3, report
    _, _, dF, dG = meta_gradient(theta, traces, config)
    J = central_diff(lambda t: np.array(meta_objective(t, traces, config)), theta)
    assert rel_error(dF, J[0]) <= 1e-5 and rel_error(dG, J[1]) <= 1e-5


@pytest.mark.parametrize("b_hat, case", [(-5.0, "trust"), (-0.01, "both"), (0.05, "recovery")])
def test_replay_warm_start_makes_fewer_products_and_agrees_to_the_tolerance(monkeypatch, b_hat, case):
    """With config.replay_warm_start the step taken records its CG solves (H^{-1} g, H^{-1} a);
    its replay from the same phi starts each of them from the recorded solution (one product
    where that meets the tolerance), and its step and meta-gradient agree with a cold replay's
    to the CG tolerance (not to the bit); from another phi (the line search's candidates) and
    without the setting, nothing changes."""
    import functools

    import metacpo_ref.model.fisher_solve as fs
    from metacpo_ref.checks.bench import counting_fisher_products
    from metacpo_ref.model import metric as metric_module

    monkeypatch.setattr(metric_module, "fisher_solver", functools.partial(fs.fisher_solver, direct_max=0))  # CG
    cfg = dataclasses.replace(CFG, inner_metric="fisher", replay_warm_start=True)
    theta, traces = synthetic_traces(SPEC, 1, 1, 3, cfg)
    d0, metric = traces[0].steps[0], inner_metric(cfg)
    noise = np.random.default_rng(0).normal(size=d0.adv_r.shape)
    data = dataclasses.replace(d0, phi=theta, adv_c=d0.adv_r + 0.3 * noise, b_hat=b_hat)   # cost tied to reward
    assert local_step(SPEC, theta, data, metric, dataclasses.replace(cfg, replay_warm_start=False), act=True).solved == ()
    upd = local_step(SPEC, theta, data, metric, cfg, act=True)
    assert upd.case == case and len(upd.solved) == (1 if case == "recovery" else 2)
    warm = dataclasses.replace(data, beta=upd.beta, b_shift=upd.b_shift, solved=upd.solved)
    cold = dataclasses.replace(warm, solved=())

    def replayed(step_data, phi=theta, fn=lambda phi, d: local_step(SPEC, phi, d, metric, cfg)):
        with counting_fisher_products() as products:
            out = fn(phi, step_data)
        return out, products.count

    (phi_warm, n_warm), (phi_cold, n_cold) = replayed(warm), replayed(cold)
    assert n_warm <= len(upd.solved) < n_cold
    assert rel_error(phi_warm, phi_cold) <= 1e-9 and rel_error(phi_warm, upd.phi) <= 1e-9
    grad_of = lambda phi, d: meta_gradient(phi, [Trace((d,), traces[0].eval)], cfg)   # noqa: E731
    (g_warm, n_warm), (g_cold, n_cold) = replayed(warm, fn=grad_of), replayed(cold, fn=grad_of)
    assert n_warm < n_cold
    for x, y in zip(g_warm[2:], g_cold[2:]):
        assert rel_error(x, y) <= 1e-8
    assert replayed(warm, theta + 1e-3)[1] == replayed(cold, theta + 1e-3)[1]
