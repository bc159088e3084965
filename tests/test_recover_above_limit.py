"""Above the limit, recover (D34): how the measured cost is fed to eq. 9.

With ``recover_above_limit`` a batch whose measured cost is above the limit
(``b_hat > 0``) gets eq. 4's recovery step, written out here by hand, even where
eq. 9 is feasible; at or below the limit nothing changes; the rule reaches
Meta-CPO's local steps, its outer step, and the differentiated chain exactly.
"""
import dataclasses

import numpy as np
import pytest

from metacpo_ref.model.advantages import surrogates
from metacpo_ref.config import PAPER, Config
from metacpo_ref.step.cpo import solve_step
from metacpo_ref.checks.gradcheck import central_diff, rel_error
from metacpo_ref.algos.meta import adapted_params, meta_gradient, meta_objective, outer_step
from metacpo_ref.checks.problems import synthetic_traces
from metacpo_ref.model.policy import PolicySpec
from metacpo_ref.model.fisher_solve import fisher_cg_solver
from metacpo_ref.model.metric import local_metric
from metacpo_ref.algos.local_step import policy_update
from metacpo_ref.algos.step_problem import recovery_shift, step_problem

SPEC = PolicySpec(3, 2, (4,))
ON = dict(hidden=(4,), inner_delta=0.05, recover_above_limit=True, **PAPER)
A2 = np.array([1.0, 1.0])                                  # s = a'a = 2


def _one_batch(b_frac, seed=1, config=Config(**ON)):
    _, traces = synthetic_traces(SPEC, 1, 1, seed, config, b_fracs=[[b_frac, 0.0]])
    return traces[0].steps[0]


def test_shift_is_zero_unless_rule_and_above_limit():
    on = Config(**ON)
    assert recovery_shift(-0.1, A2, None, 0.01, on) == 0.0            # below the limit
    assert recovery_shift(0.0, A2, None, 0.01, on) == 0.0             # at the limit
    assert recovery_shift(0.1, A2, None, 0.01, dataclasses.replace(on, recover_above_limit=False)) == 0.0
    assert recovery_shift(0.1, A2, None, 0.01, dataclasses.replace(on, algo="meta-trpo")) == 0.0
    for b_hat, s, delta in [(1e-6, 2.0, 0.01), (0.1, 3.0, 0.05), (5.0, 0.1, 0.01)]:
        b = b_hat + recovery_shift(b_hat, np.array([np.sqrt(s)]), None, delta, on)
        assert b >= b_hat and b**2 / s >= 4 * 2 * delta * (1 - 1e-12)   # infeasible with room to spare


@pytest.mark.parametrize("algo", ["meta-cpo", "cpo"])
def test_feasible_batch_above_the_limit_recovers(algo):
    """b_hat > 0 but eq. 9 feasible (b^2 / s < 2 delta): the old rule takes the mixed
    step, the new one the recovery step -sqrt(2 delta / s) H^{-1} a, by hand."""
    config = Config(**ON, algo=algo)
    data = _one_batch(0.3)
    assert data.b_hat > 0
    rule = local_metric(config)
    delta = rule.delta
    g, a, b = step_problem(SPEC, data.phi, data)
    hinv = (fisher_cg_solver(SPEC, data.phi, data.obs, config.cg_damping, config.cg_iters) if rule.fisher
            else (lambda v: v))
    s = float(a @ hinv(a))
    assert b**2 / s < 2 * delta                                    # eq. 9 itself is feasible here
    old = policy_update(SPEC, data.phi, data, dataclasses.replace(config, recover_above_limit=False))
    assert old.case == "both" and old.b_shift == 0.0
    new = policy_update(SPEC, data.phi, data, config)
    assert new.case == "recovery" and new.b_shift > 0 and new.beta > 0
    by_hand = -np.sqrt(2 * delta / s) * hinv(a)
    np.testing.assert_allclose(new.phi, data.phi + new.beta * by_hand, rtol=1e-9, atol=1e-12)
    assert new.dL_C < 0                                             # the cost surrogate goes down
    _, L_C = surrogates(SPEC, data, data.adv_r, data.adv_c, data.logp_beh)
    assert new.dL_C == pytest.approx(L_C(new.phi) - L_C(data.phi), abs=1e-15)


def test_below_the_limit_nothing_changes():
    data = _one_batch(-0.5)
    assert data.b_hat < 0
    on = policy_update(SPEC, data.phi, data, Config(**ON))
    off = policy_update(SPEC, data.phi, data, Config(**{**ON, "recover_above_limit": False}))
    np.testing.assert_array_equal(on.phi, off.phi)
    assert on.case == off.case and on.b_shift == 0.0


def test_recorded_shift_makes_the_chain_recover_and_stays_exact():
    """A trace whose first local step was above the limit but feasible, recorded with its
    shift: the replayed chain takes the recovery step there, and the meta-gradient
    (through that step) matches central differences of meta_objective."""
    config = Config(**ON)
    theta, traces = synthetic_traces(SPEC, 2, 2, 5, config, T=48, b_fracs=[[0.4, -0.3, 0.2], [0.3, 0.5, -0.2]])
    recorded = []
    for tr in traces:
        steps = []
        for data in tr.steps:
            _, a, _ = step_problem(SPEC, data.phi, data)
            steps.append(dataclasses.replace(data, b_shift=recovery_shift(data.b_hat, a, None,
                                                                      config.inner_delta, config)))
        recorded.append(dataclasses.replace(tr, steps=tuple(steps)))
    shifted = [d for tr in recorded for d in tr.steps if d.b_shift > 0]
    assert len(shifted) == 3                                      # every step with b_hat > 0
    d0 = recorded[0].steps[0]
    g, a, b = step_problem(SPEC, theta, d0)
    assert solve_step(g, a, b, config.inner_delta).case == "recovery"
    assert solve_step(g, a, b - d0.b_shift, config.inner_delta).case == "both"
    F, G, dF, dG = meta_gradient(theta, recorded, config)
    fd = central_diff(lambda t: np.array(meta_objective(t, recorded, config)), theta, 1e-6)
    assert rel_error(dF, fd[0]) < 1e-5 and rel_error(dG, fd[1]) < 1e-5
    # without the shifts the chain (and so its gradient) is another one
    assert not np.allclose(adapted_params(theta, recorded[0], SPEC, config),
                           adapted_params(theta, traces[0], SPEC, config))


def test_outer_step_recovers_when_G_is_above_the_limit():
    config = Config(**ON)
    theta, traces = synthetic_traces(SPEC, 2, 1, 7, config, b_fracs=[[-0.5, 0.3], [-0.5, 0.2]])
    F, G = meta_objective(theta, traces, config)
    assert G > 0
    new = outer_step(theta, traces, config)
    old = outer_step(theta, traces, dataclasses.replace(config, recover_above_limit=False))
    assert new.case == "recovery" and old.case != "recovery"
    assert new.beta > 0 and new.G_new < G


def test_outer_step_with_the_fisher_metric_shifts_by_its_fisher_threshold():
    """D34 in the outer step with outer_metric "fisher": the shift is measured in the Fisher
    metric of the pre-adaptation batches (s = dG'H^-1 dG), and so is the recovery step."""
    config = Config(**{**ON, "outer_metric": "fisher"})
    theta, traces = synthetic_traces(SPEC, 2, 1, 7, config, b_fracs=[[-0.5, 0.3], [-0.5, 0.2]])
    res = outer_step(theta, traces, config)
    assert res.G > 0 and res.case == "recovery" and res.beta > 0
    obs0 = np.concatenate([tr.steps[0].obs for tr in traces])
    hinv = fisher_cg_solver(SPEC, theta, obs0, config.cg_damping, config.cg_iters)
    s = res.dG @ hinv(res.dG)
    assert abs(s - res.dG @ res.dG) > 0.1 * s   # the two metrics' thresholds differ here
    shift = max(0.0, 2 * np.sqrt(2 * config.outer_delta * s) - res.G)
    ref = solve_step(res.dF, res.dG, res.G + shift, config.outer_delta, hinv=hinv)
    np.testing.assert_allclose(res.theta, theta + res.beta * ref.x, rtol=1e-8, atol=1e-12)


def test_outer_fisher_shift_makes_a_recovery_step_where_the_identity_metrics_would_not():
    """Where the Fisher metric's threshold is more than twice the identity metric's
    (dG'H^-1 dG > 4 dG'dG: a wide policy, log-std 2, whose Fisher is small), only the
    shift measured in the Fisher metric makes eq. 9 infeasible: G + shift >= 2 sqrt(2 delta s_F)
    > sqrt(2 delta s_F), while G + the identity shift = 2 sqrt(2 delta s_I) stays below
    sqrt(2 delta s_F). The outer step is the Fisher recovery step."""
    config = Config(**{**ON, "outer_metric": "fisher"})
    theta, traces = synthetic_traces(SPEC, 2, 1, 1, config, b_fracs=[[-0.5, 0.3], [-0.5, 0.2]], log_std=2.0)
    res = outer_step(theta, traces, config)
    obs0 = np.concatenate([tr.steps[0].obs for tr in traces])
    hinv = fisher_cg_solver(SPEC, theta, obs0, config.cg_damping, config.cg_iters)
    s_f, s_i = res.dG @ hinv(res.dG), res.dG @ res.dG
    threshold = np.sqrt(2 * config.outer_delta * s_f)
    assert s_f > 4 * s_i and 0 < res.G < threshold   # the instance the metrics disagree on
    assert res.case == "recovery" and res.beta > 0
    ref = solve_step(res.dF, res.dG, res.G + max(0.0, 2 * threshold - res.G), config.outer_delta, hinv=hinv)
    assert ref.case == "recovery"
    identity = solve_step(res.dF, res.dG, 2 * np.sqrt(2 * config.outer_delta * s_i), config.outer_delta, hinv=hinv)
    assert identity.case != "recovery"
    np.testing.assert_allclose(res.theta, theta + res.beta * ref.x, rtol=1e-8, atol=1e-12)
