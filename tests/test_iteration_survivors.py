"""Properties of iteration.py that mutmut found unchecked (issue 21, docs/mutation.md):
one task's inner loop against a reference replay of Algorithm 1, lines 6-10, and the value
refit's settings."""
import json
import time

import numpy as np
import pytest

import metacpo_ref.algos.iteration
from metacpo_ref.model.advantages import episode_measures, fit_value, init_value
from metacpo_ref.config import Config
from metacpo_ref.envs import make_env, sample_tasks
from metacpo_ref.algos.iteration import Refit, TaskJob, inner_loop, json_float, refit_values
from metacpo_ref.envs.rollouts import batch_seed
from metacpo_ref.model.policy import init_theta
from metacpo_ref.algos.step_data import collect_step_data, specs
from metacpo_ref.algos.local_step import policy_update


def spied_inner_loop(monkeypatch, job):
    """``inner_loop(job)``, the step data of each batch it collected, and its wall time."""
    seen = []

    def spy(*args):
        seen.append(collect_step_data(*args))
        return seen[-1]

    monkeypatch.setattr(metacpo_ref.algos.iteration, "collect_step_data", spy)
    t0 = time.perf_counter()
    run = inner_loop(make_env(job.config.family), job)
    return run, seen, time.perf_counter() - t0


def test_a_task_run_is_k_local_batches_then_the_evaluation_batch_of_phi_k(monkeypatch):
    """K = 2 local updates: batch k (k = 0, 1) is collected with phi_k under the seed of
    (iteration, task index, k) and updated by policy_update; then exactly one evaluation
    batch, of phi_K, under the seed of k = K. Returns, costs and steps per batch, the
    pre-adaptation batch and targets, the per-step records, all of the K + 1 batches; the
    env time is the batches' sum, the learner time at least theirs and within the wall time."""
    config = Config(family="point-circle", tasks=1, local_steps=2, episodes=1, hidden=(8,), seed=3)
    spec, vspec = specs(config)
    task = sample_tasks(config.family, 1, "train", seed=11)[0]
    theta, vf = init_theta(spec, 4), (init_value(vspec, 5), init_value(vspec, 6))
    iteration, index, K = 7, 2, 2
    run, seen, wall = spied_inner_loop(monkeypatch, TaskJob(task, index, theta, vf, config, iteration, K))
    assert len(seen) == K + 1
    assert run.env_time == sum(c.env_time for c in seen)
    assert sum(c.learner_time for c in seen) <= run.learner_time <= wall - run.env_time

    env = make_env(config.family, task)
    phi, vf_k, ref = theta, vf, []
    for k in range(K + 1):
        c = collect_step_data(env, spec, vspec, phi, vf_k, config, batch_seed(config.seed, iteration, index, k),
                              config.train_cost_limit)
        vf_k = c.vf
        upd = policy_update(spec, phi, c.data, config) if k < K else None
        ref.append((c, upd))
        phi = upd.phi if upd is not None else phi

    assert len(run.returns) == len(run.costs) == len(run.steps) == K + 1
    assert len(run.trace.steps) == len(run.cases) == len(run.betas) == len(run.lams) == len(run.nus) == K
    for k, (c, upd) in enumerate(ref):
        assert run.returns[k] == float(np.mean(c.batch.ep_return))
        assert run.costs_episode[k] == float(np.mean(c.batch.ep_cost))
        # the run's measure (the paper's discounted J_C by default), per episode from its first step
        assert config.cost_measure == "discounted"
        assert run.costs[k] == pytest.approx(float(np.mean(episode_measures(c.batch, config.gamma)[1])), rel=1e-12)
        assert run.steps[k] == len(c.batch)
        data = run.trace.steps[k] if k < K else run.trace.eval
        np.testing.assert_array_equal(data.obs, c.data.obs)
        np.testing.assert_array_equal(data.phi, c.data.phi)
        np.testing.assert_array_equal(data.adv_c, c.data.adv_c)
        if upd is not None:
            assert (run.cases[k], run.betas[k], data.beta) == (upd.case, upd.beta, upd.beta)
            np.testing.assert_array_equal([run.lams[k], run.nus[k]], [upd.lam, upd.nu])
            assert data.b_shift == upd.b_shift
    np.testing.assert_array_equal(run.trace.eval.phi, phi)   # the evaluation batch is phi_K's
    np.testing.assert_array_equal(run.batch0.obs, ref[0][0].batch.obs)
    np.testing.assert_array_equal(run.targets0[0], ref[0][0].adv.targets_r)
    np.testing.assert_array_equal(run.targets0[1], ref[0][0].adv.targets_c)
    assert run.part is None


def test_the_value_refit_is_one_warm_started_fit_per_function_with_the_configs_tolerance():
    """refit_values: each value function is one fit on all runs' pre-adaptation data (reward
    on reward, cost on cost targets), warm-started from its input, with config.vf_iters and
    config.vf_ftol (the tolerance matters here: without it the fit runs on)."""
    config = Config(family="point-circle", hidden=(8,), vf_iters=60, vf_ftol=1e-2)
    _, vspec = specs(config)
    rng = np.random.default_rng(0)
    vf = (init_value(vspec, 1), init_value(vspec, 2))
    runs = [Refit(rng.standard_normal((n, vspec.obs_dim)), (rng.standard_normal(n), 3 + rng.standard_normal(n)))
            for n in (40, 25)]
    out = refit_values(vspec, vf, runs, config)
    obs = np.concatenate([r.obs0 for r in runs])
    for j in (0, 1):
        targets = np.concatenate([r.targets0[j] for r in runs])
        np.testing.assert_array_equal(out[j], fit_value(vspec, vf[j], obs, targets, 60, 1e-2))
        assert not np.allclose(out[j], fit_value(vspec, vf[j], obs, targets, 60, None))


def _slow_part(theta, trace, config):
    """A task part that takes a known time: (theta, the trace's steps, eval phi, config)."""
    time.sleep(0.05)
    return theta, len(trace.steps), trace.eval.phi, config


def test_a_task_part_sees_theta_and_the_trace_and_counts_as_learner_time(monkeypatch):
    """TaskJob.task_part runs once at the end of the inner loop on (theta, the task's trace,
    config), its value is the run's part, and its seconds are learner time."""
    config = Config(family="point-circle", tasks=1, local_steps=1, episodes=1, hidden=(8,))
    spec, vspec = specs(config)
    theta = init_theta(spec, 1)
    job = TaskJob(sample_tasks(config.family, 1, "train", seed=2)[0], 0, theta,
                  (init_value(vspec, 3), init_value(vspec, 4)), config, 0, 1, _slow_part)
    run, seen, _ = spied_inner_loop(monkeypatch, job)
    part_theta, n_steps, eval_phi, part_config = run.part
    assert part_theta is theta and n_steps == 1 and part_config is config
    np.testing.assert_array_equal(eval_phi, run.trace.eval.phi)
    assert run.learner_time >= sum(c.learner_time for c in seen) + 0.05


def test_metrics_floats_are_plain_floats_and_nan_becomes_null():
    """json_float: metrics.jsonl holds plain floats; a NaN (nu of a recovery step) is written
    as null, so the file stays strict JSON."""
    assert json_float(float("nan")) is None and json_float(np.nan) is None
    v = json_float(np.float32(1.5))
    assert v == 1.5 and type(v) is float
    assert json.dumps([json_float(0.25), json_float(np.float64("nan"))]) == "[0.25, null]"
