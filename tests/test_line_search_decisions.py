"""The line search's decisions in policy_update (D18, D19), each on a constructed instance
where the decision matters: the full step is not simply accepted."""
import numpy as np
import pytest

from metacpo_ref.model.advantages import center, standardize, surrogates
from metacpo_ref.config import PAPER, Config
from metacpo_ref.step.cpo import solve_step
from metacpo_ref.model.policy import PolicySpec, init_theta, log_prob, mean_kl, n_params
from metacpo_ref.algos.step_data import StepData
from metacpo_ref.algos.local_step import policy_update
from metacpo_ref.algos.step_problem import step_problem

SPEC = PolicySpec(3, 2, (4,))


def instance(seed, frac, delta, reward_is_cost=False, T=64):
    """A seeded batch at ``phi``: ``b_hat = frac * sqrt(2 delta a.a)`` (``frac > 1``: eq. 9
    infeasible with the Euclidean metric); reward advantages equal the standardised cost
    advantages with ``reward_is_cost`` (g parallel to a: lowering the cost lowers the reward)."""
    rng = np.random.default_rng(seed)
    phi = init_theta(SPEC, seed) + 0.3 * rng.standard_normal(n_params(SPEC))
    obs, act = rng.standard_normal((T, 3)), rng.standard_normal((T, 2))
    logp = log_prob(SPEC, phi, obs, act)
    adv_c = center(rng.standard_normal(T) + 0.5 * obs[:, 0])[0]
    adv_r = standardize(adv_c if reward_is_cost else adv_c + rng.standard_normal(T))[0]
    _, a, _ = step_problem(SPEC, phi, StepData(obs, act, logp, adv_r, adv_c, 0.0, phi))
    return StepData(obs, act, logp, adv_r, adv_c, float(frac * np.sqrt(2 * delta * (a @ a))), phi)


def full_step(data, config):
    """The Euclidean step of eq. 9 (``inner_delta``) that policy_update takes for the meta algorithms."""
    g, a, b = step_problem(SPEC, data.phi, data, config.constrained)
    return solve_step(g, a, b, config.inner_delta), b


@pytest.mark.parametrize("algo", ["meta-cpo", "cpo"])
def test_infeasible_instance_recovers_although_the_reward_falls(algo):
    """Recovery (eq. 4) is accepted on the cost alone: case recovery, beta > 0, the cost
    surrogate goes down, even though the reward surrogate goes down with it."""
    config = Config(hidden=(4,), algo=algo, inner_delta=0.05, **PAPER)
    data = instance(0, 2.0, config.inner_delta if algo == "meta-cpo" else 1e3, reward_is_cost=True)
    upd = policy_update(SPEC, data.phi, data, config)
    assert upd.case == "recovery"
    assert upd.beta > 0 and upd.dL_C < 0
    assert upd.dL_R < 0   # the instance is one where a reward test would refuse every fraction


@pytest.mark.parametrize("algo", ["meta-cpo", "meta-trpo"])
def test_a_euclidean_step_longer_than_the_kl_bound_is_cut_back(algo):
    """A Euclidean local step (the paper's metric: its radius says nothing about the KL)
    whose full length exceeds the line search's mean-KL bound ``ls_kl`` is cut back to
    the first fraction inside it (``beta / decay`` was outside)."""
    config = Config(hidden=(4,), algo=algo, inner_delta=0.5, ls_kl=0.01, **PAPER)
    data = instance(0, -0.9, config.inner_delta)
    step, _ = full_step(data, config)
    assert mean_kl(SPEC, data.phi, data.phi + step.x, data.obs) > config.ls_kl
    upd = policy_update(SPEC, data.phi, data, config)
    assert 0 < upd.beta < 1
    assert mean_kl(SPEC, data.phi, upd.phi, data.obs) <= config.ls_kl
    before = data.phi + (upd.beta / config.ls_decay) * step.x
    assert mean_kl(SPEC, data.phi, before, data.obs) > config.ls_kl


def test_feasible_instance_never_accepts_a_cost_rise_above_its_allowance():
    """A feasible CPO step (``b < 0``) may raise the cost surrogate by at most ``-b``
    (D19). On this instance the full step raises it by more; the accepted fraction
    raises it by less than ``-b`` but more than 0 (the allowance is used, not a zero
    allowance), and the fraction before it was refused for its cost."""
    config = Config(hidden=(4,), inner_delta=0.05, ls_kl=10.0, **PAPER)   # KL bound out of the way
    data = instance(4, -0.5, config.inner_delta)
    step, b = full_step(data, config)
    assert b < 0 and step.case == "both"
    L_R, L_C = surrogates(SPEC, data, data.adv_r, data.adv_c, data.logp_beh)
    C0 = L_C(data.phi)
    assert L_C(data.phi + step.x) - C0 > -b
    upd = policy_update(SPEC, data.phi, data, config)
    assert 0 < upd.beta < 1
    assert 0 < upd.dL_C <= -b and upd.dL_R > 0
    before = data.phi + (upd.beta / config.ls_decay) * step.x
    assert L_C(before) - C0 > -b
