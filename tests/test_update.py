"""The one line search (D18, D19) shared by every update and the outer step, and
policy_update's report of what its step decided."""
import dataclasses

import numpy as np
import pytest

from metacpo_ref.model.advantages import surrogates
from metacpo_ref.config import PAPER, Config
from metacpo_ref.step.cpo import solve_step
from metacpo_ref.checks.problems import synthetic_traces
from metacpo_ref.model.policy import PolicySpec, mean_kl
from metacpo_ref.model.fisher_solve import fisher_solver
from metacpo_ref.algos.line_search import Acceptance, Candidate, backtrack
from metacpo_ref.model.fisher_solve import fisher_cg_solver
from metacpo_ref.model.metric import local_metric
from metacpo_ref.algos.local_step import policy_update
from metacpo_ref.algos.step_problem import recovery_shift, solve_once, step_problem

SPEC = PolicySpec(3, 2, (4,))


def rule(**change):
    return Acceptance(**{"R0": 1.0, "C0": 2.0, "b": -0.5, "kl_bound": 0.01, "recovery": False,
                         "constrained": True, **change})


def test_acceptance_rule_each_condition():
    ok = Candidate(1.0, 0.005, 1.1, 2.4)            # KL inside, reward up, cost up by 0.4 <= -b
    assert rule()(ok)
    assert not rule()(dataclasses.replace(ok, kl=0.02))                 # KL bound
    assert not rule()(dataclasses.replace(ok, R=1.0))                   # no reward improvement
    assert rule(recovery=True)(dataclasses.replace(ok, R=0.5))          # ... unless recovering
    assert not rule()(dataclasses.replace(ok, C=2.6))                   # cost up by more than -b
    assert rule(constrained=False)(dataclasses.replace(ok, C=2.6))      # TRPO: no cost rule
    assert not rule(b=0.3)(dataclasses.replace(ok, C=2.1))              # infeasible: cost may not rise
    assert rule(b=0.3)(dataclasses.replace(ok, C=1.9))


def test_backtrack_returns_what_it_accepted():
    seen = []

    def evaluate(beta):
        seen.append(beta)
        return Candidate(beta, kl=beta, R=2.0, C=0.0)

    found = backtrack(evaluate, rule(kl_bound=0.5), 0.5, 15)
    assert found == Candidate(0.5, 0.5, 2.0, 0.0) and seen == [1.0, 0.5]
    assert backtrack(evaluate, rule(kl_bound=1e-9), 0.5, 4) is None and seen[2:] == [1.0, 0.5, 0.25, 0.125]


@pytest.mark.parametrize("algo, metric", [("meta-cpo", "identity"), ("cpo", "fisher")])
def test_policy_update_reports_its_step(algo, metric):
    config = Config(hidden=(4,), algo=algo, inner_delta=0.05, recover_above_limit=False, **PAPER)   # eq. 9 as it is
    rule = local_metric(config)
    assert (rule.fisher, rule.delta) == ((False, 0.05) if metric == "identity" else (True, config.baseline_delta))
    _, traces = synthetic_traces(SPEC, 1, 1, 1, config, b_fracs=[[0.3, 0.0]])   # both constraints active
    data = traces[0].steps[0]
    upd = policy_update(SPEC, data.phi, data, config)
    g, a, b = step_problem(SPEC, data.phi, data)
    hinv = None if metric == "identity" else fisher_cg_solver(SPEC, data.phi, data.obs, config.cg_damping,
                                                              config.cg_iters)
    step = solve_step(g, a, b, rule.delta, hinv=hinv)
    assert (upd.case, upd.lam, upd.nu) == (step.case, step.lam, step.nu) and upd.case == "both"
    assert upd.beta > 0
    np.testing.assert_array_equal(upd.phi, data.phi + upd.beta * step.x)
    L_R, L_C = surrogates(SPEC, data, data.adv_r, data.adv_c, data.logp_beh)
    assert (upd.dL_R, upd.dL_C) == (L_R(upd.phi) - L_R(data.phi), L_C(upd.phi) - L_C(data.phi))
    assert upd.dL_R > 0 and upd.dL_C <= max(-b, 0.0)
    bound = config.ls_kl if metric == "identity" else config.baseline_delta
    assert mean_kl(SPEC, data.phi, upd.phi, data.obs) <= bound


def test_policy_update_rejects_when_nothing_passes():
    config = Config(hidden=(4,), inner_delta=0.05, ls_kl=1e-12, ls_steps=3, **PAPER)
    _, traces = synthetic_traces(SPEC, 1, 1, 3, config)
    data = traces[0].steps[0]
    upd = policy_update(SPEC, data.phi, data, config)
    assert upd.beta == 0.0 and upd.dL_R == upd.dL_C == 0.0
    np.testing.assert_array_equal(upd.phi, data.phi)
    assert upd.lam > 0   # the step was solved, only not taken


def test_solve_once_solves_each_vector_once():
    """The recovery rule and the step both need H^{-1} a (issue 18): one solve, the same answer."""
    calls = []

    def hinv(v):
        calls.append(np.array(v))
        return 2.0 * np.asarray(v)

    solve = solve_once(hinv)
    a, g = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    np.testing.assert_array_equal(solve(a), [2.0, -4.0])
    assert solve(a) is solve(a.copy()) and len(calls) == 1        # the same vector: remembered
    np.testing.assert_array_equal(solve(g), [1.0, 1.0])
    assert len(calls) == 2 and solve(a)[0] == 2.0 and len(calls) == 3   # a new vector: solved


@pytest.mark.parametrize("algo, metric", [("meta-cpo", "fisher"), ("cpo", "fisher"), ("meta-cpo", "identity")])
def test_policy_update_above_the_limit_equals_its_pieces(algo, metric):
    """With the recovery rule firing, the update (values shared, one H^{-1} a solve) equals
    the step computed from its pieces one by one, to the bit."""
    config = Config(hidden=(4,), algo=algo, inner_metric=metric, inner_delta=0.05)
    _, traces = synthetic_traces(SPEC, 1, 1, 1, config, b_fracs=[[0.3, 0.0]])
    data = dataclasses.replace(traces[0].steps[0], b_hat=0.02)              # above the limit
    upd = policy_update(SPEC, data.phi, data, config)
    g, a, b = step_problem(SPEC, data.phi, data)
    rule = local_metric(config)
    delta, hinv = rule.delta, None
    if rule.fisher:
        hinv = (fisher_solver(SPEC, data.phi, data.obs, config.cg_damping) if config.meta
                else fisher_cg_solver(SPEC, data.phi, data.obs, config.cg_damping, config.cg_iters))
    shift = recovery_shift(data.b_hat, a, hinv, delta, config)
    step = solve_step(g, a, b + shift, delta, hinv=hinv)
    assert shift > 0 and upd.case == step.case == "recovery" and upd.b_shift == shift
    L_R, L_C = surrogates(SPEC, data, data.adv_r, data.adv_c, data.logp_beh)
    bound = config.ls_kl if not rule.fisher else delta
    beta = next(0.8 ** j for j in range(15)
                if mean_kl(SPEC, data.phi, data.phi + 0.8 ** j * step.x, data.obs) <= bound
                and L_C(data.phi + 0.8 ** j * step.x) - L_C(data.phi) <= 0.0)
    assert upd.beta == beta
    np.testing.assert_array_equal(upd.phi, data.phi + beta * step.x)
    assert (upd.dL_R, upd.dL_C) == (L_R(upd.phi) - L_R(data.phi), L_C(upd.phi) - L_C(data.phi))
