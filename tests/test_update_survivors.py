"""Properties of update.py that mutmut found unchecked (issue 21, docs/mutation.md):
the recovery shift's value (D34), what policy_update records and which metric and KL
bound it uses, b of eq. 9 away from the collecting parameters, the D19 boundary, and
the estimates collect_step_data hands on."""
import dataclasses
import time

import numpy as np
import pytest

from metacpo_ref.model.advantages import advantages, init_value, surrogates
from metacpo_ref.config import PAPER, Config
from metacpo_ref.step.cpo import solve_step
from metacpo_ref.envs import make_env
from metacpo_ref.model.fisher_solve import fisher_solver
from metacpo_ref.model.policy import PolicySpec, mean_kl
from metacpo_ref.algos.line_search import Acceptance, Candidate
from metacpo_ref.algos.step_data import collect_step_data, specs
from metacpo_ref.model.fisher_solve import fisher_cg_solver
from metacpo_ref.algos.local_step import policy_update
from metacpo_ref.algos.step_problem import recovery_shift, step_problem
from tests.test_line_search_decisions import instance

SPEC = PolicySpec(3, 2, (4,))


def test_recovery_shift_is_twice_the_infeasibility_threshold_minus_b_hat():
    """D34: shift = max(0, 2 sqrt(2 delta s) - b_hat), s = a'H^{-1}a in the given metric;
    0 at or below the limit, for a = 0, and once b_hat alone is past the threshold."""
    config = Config(hidden=(4,), recover_above_limit=True, **PAPER)
    a, delta = np.array([0.3, -0.2, 0.1]), 0.05
    M = np.diag([2.0, 0.5, 4.0])
    solve = lambda v: np.linalg.solve(M, v)   # noqa: E731
    s = a @ np.linalg.solve(M, a)
    assert recovery_shift(0.01, a, solve, delta, config) == pytest.approx(2 * np.sqrt(2 * delta * s) - 0.01,
                                                                          rel=1e-12)
    assert recovery_shift(0.01, a, None, delta, config) == pytest.approx(2 * np.sqrt(2 * delta * (a @ a)) - 0.01,
                                                                         rel=1e-12)
    assert s < 1 and recovery_shift(0.01, a, solve, delta, config) > 0   # a small s still shifts
    assert recovery_shift(0.0, a, None, delta, config) == 0.0            # at the limit: eq. 9 as it is
    assert recovery_shift(0.01, np.zeros(3), None, delta, config) == 0.0
    assert recovery_shift(10.0, a, None, delta, config) == 0.0           # already infeasible enough


def recovering(algo, **change):
    config = Config(hidden=(4,), algo=algo, inner_delta=0.05, recover_above_limit=True, **{**PAPER, **change})
    return config, instance(1, 0.5, 0.05)   # feasible for eq. 9 but above the limit (b_hat > 0)


@pytest.mark.parametrize("algo, ls_kl", [("meta-cpo", 10.0), ("cpo", 10.0), ("meta-cpo", 1e-12)])
def test_policy_update_records_the_shift_of_its_own_metric(algo, ls_kl):
    """The recorded b_shift is recovery_shift in the update's metric (Euclidean for the
    meta algorithms, the CG Fisher solve for the baselines), taken or rejected."""
    config, data = recovering(algo, ls_kl=ls_kl)
    _, a, _ = step_problem(SPEC, data.phi, data)
    hinv = None if config.meta else fisher_cg_solver(SPEC, data.phi, data.obs, config.cg_damping, config.cg_iters)
    delta = config.inner_delta if config.meta else config.baseline_delta
    want = recovery_shift(data.b_hat, a, hinv, delta, config)
    assert want > 0 and want != recovery_shift(data.b_hat, a, None if hinv else fisher_cg_solver(
        SPEC, data.phi, data.obs, config.cg_damping, config.cg_iters), delta, config)
    upd = policy_update(SPEC, data.phi, data, config)
    assert upd.b_shift == pytest.approx(want, rel=1e-12) and upd.case == "recovery"
    assert (upd.beta == 0.0) == (ls_kl < 1e-6)


def test_rejected_update_reports_the_step_it_solved():
    """Nothing accepted: the old parameters, and the solved step's case, lam and nu."""
    config = Config(hidden=(4,), inner_delta=0.5, ls_kl=1e-12, ls_steps=2, recover_above_limit=False, **PAPER)
    data = instance(4, -0.5, 0.5)
    g, a, b = step_problem(SPEC, data.phi, data)
    step = solve_step(g, a, b, 0.5)
    upd = policy_update(SPEC, data.phi, data, config)
    assert upd.beta == 0.0 and step.case == "both"
    assert (upd.case, upd.lam, upd.nu, upd.b_shift) == (step.case, step.lam, step.nu, 0.0)


def test_meta_fisher_local_update_uses_the_exact_fisher_solve_and_its_kl_radius():
    """Meta-CPO's Fisher local step is solved with fisher_solver (the step differentiated),
    and its line search bounds the KL by inner_delta, not by ls_kl."""
    config = Config(hidden=(4,), inner_metric="fisher", inner_delta=0.01, ls_kl=1e-12, recover_above_limit=False)
    data = instance(2, -0.5, 0.01)
    g, a, b = step_problem(SPEC, data.phi, data)
    exact = solve_step(g, a, b, 0.01, hinv=fisher_solver(SPEC, data.phi, data.obs, config.cg_damping))
    cg = solve_step(g, a, b, 0.01, hinv=fisher_cg_solver(SPEC, data.phi, data.obs, config.cg_damping,
                                                          config.cg_iters))
    assert np.abs(exact.x - cg.x).max() > 1e-9   # the two solves differ here
    upd = policy_update(SPEC, data.phi, data, config)
    assert upd.beta > 0
    np.testing.assert_allclose(upd.phi, data.phi + upd.beta * exact.x, rtol=0, atol=1e-12)
    assert mean_kl(SPEC, data.phi, upd.phi, data.obs) <= config.inner_delta


def test_baseline_fisher_update_is_bounded_by_its_kl_radius_not_ls_kl():
    config = Config(hidden=(4,), algo="cpo", ls_kl=1e-12, recover_above_limit=False)
    data = instance(2, -0.5, 0.01)
    upd = policy_update(SPEC, data.phi, data, config)
    assert upd.beta > 0 and 1e-12 < mean_kl(SPEC, data.phi, upd.phi, data.obs) <= config.baseline_delta


def test_trpo_update_ignores_the_cost_constraint():
    """meta-trpo on an eq.-9-infeasible batch takes the trust-region step, not recovery."""
    config = Config(hidden=(4,), algo="meta-trpo", inner_delta=0.05, ls_kl=10.0)
    data = instance(0, 2.0, 0.05)
    g, _, _ = step_problem(SPEC, data.phi, data)
    step = solve_step(g, np.zeros_like(g), -1.0, 0.05)
    upd = policy_update(SPEC, data.phi, data, config)
    assert upd.case == step.case == "trust" and upd.beta > 0
    np.testing.assert_allclose(upd.phi, data.phi + upd.beta * step.x, rtol=0, atol=1e-12)


def uncentred(data, shift=0.7):
    """The batch with cost advantages not centred: L_C at the collecting parameters is not 0."""
    return dataclasses.replace(data, adv_c=data.adv_c + shift)


def test_b_is_b_hat_plus_shift_plus_the_cost_surrogate_change_since_collection():
    data = dataclasses.replace(uncentred(instance(3, 0.2, 0.05)), b_shift=0.3)
    _, L_C = surrogates(SPEC, data, data.adv_r, data.adv_c, data.logp_beh)
    assert abs(L_C(data.phi)) > 0.1
    phi = data.phi + 0.05
    _, _, b0 = step_problem(SPEC, data.phi, data)
    _, _, b1 = step_problem(SPEC, phi, data)
    assert b0 == pytest.approx(data.b_hat + 0.3, abs=1e-12)
    assert b1 == pytest.approx(data.b_hat + 0.3 + L_C(phi) - L_C(data.phi), abs=1e-12)


def test_reported_cost_change_is_relative_to_the_cost_surrogate_before_the_step():
    config = Config(hidden=(4,), inner_delta=0.05, ls_kl=10.0, recover_above_limit=False, **PAPER)
    data = uncentred(instance(4, -0.5, 0.05))
    _, L_C = surrogates(SPEC, data, data.adv_r, data.adv_c, data.logp_beh)
    upd = policy_update(SPEC, data.phi, data, config)
    assert upd.beta > 0 and abs(L_C(data.phi)) > 0.1
    assert upd.dL_C == pytest.approx(L_C(upd.phi) - L_C(data.phi), abs=1e-12)


def test_a_cost_change_equal_to_the_allowance_is_accepted():
    """D19's cost test is <=: exactly -b (feasible) or exactly 0 (recovery) passes."""
    rule = Acceptance(R0=1.0, C0=2.0, b=-0.5, kl_bound=0.01, recovery=False, constrained=True)
    assert rule(Candidate(1.0, 0.005, 1.1, 2.5))
    assert dataclasses.replace(rule, b=0.5, recovery=True)(Candidate(1.0, 0.005, 0.0, 2.0))


def test_collect_step_data_estimates_with_the_given_value_functions_and_settings():
    """The advantages are those of advantages() with vf = (vf_r, vf_c) in that order and
    the config's gamma, lambda and fit iterations; the learner time is the call's rest."""
    config = Config(hidden=(4,), episodes=2, vf_iters=3, gamma=0.9, gae_lambda=0.8)
    spec, vspec = specs(config)
    vf = (init_value(vspec, 1), init_value(vspec, 2))
    phi = np.asarray(__import__("metacpo_ref.model.policy", fromlist=["init_theta"]).init_theta(spec, 0))
    t0 = time.perf_counter()
    c = collect_step_data(make_env(config.family), spec, vspec, phi, vf, config, 5, config.train_cost_limit)
    wall = time.perf_counter() - t0
    ref = advantages(vspec, c.batch, vf[0], vf[1], 0.9, 0.8, 3)
    for k in ("adv_r", "adv_c", "targets_r", "targets_c", "vf_params_r", "vf_params_c"):
        np.testing.assert_array_equal(getattr(c.adv, k), getattr(ref, k))
    assert 0 <= c.learner_time and c.env_time + c.learner_time <= wall
