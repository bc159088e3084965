"""The training pipeline's wiring against independent references (not only against other
runs): what each batch sees, which value functions and limits each step uses."""
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import metacpo_ref.algos.meta
from metacpo_ref.model.advantages import advantages, constraint_value, fit_value, init_value, weight_cost_advantages
from metacpo_ref.algos.baselines import pooled_data
from metacpo_ref.config import OBS_NORM_EPISODES, OBS_STD_FLOOR, Config
from metacpo_ref.envs.families import FAMILIES
from metacpo_ref.envs import make_env, sample_tasks
from metacpo_ref.model.policy import act_fn, init_theta, mlp
from metacpo_ref.envs.rollouts import (NormalizedEnv, ObsNorm, batch_seed, collect, concat_batches, fit_obs_norm,
                                  random_act, task_seed)
from metacpo_ref.run.evaluation import (EVAL_ITERATION, TEST_ITERATION, _task_key, adapt, adapt_on, load_policy,
                                        meta_test)
from metacpo_ref.run.rundir import State, load_checkpoint, read_metrics, save_checkpoint
from metacpo_ref.run.training import NORM_ITERATION, initial_state, train
from metacpo_ref.algos.step_data import StepData, collect_step_data, specs
from metacpo_ref.algos.local_step import policy_update

TINY = dict(family="point-circle", tasks=2, local_steps=1, episodes=1, iterations=1, hidden=(8,))


def reset_seed(seed):
    """The env-reset seed ``collect`` derives for its first episode from ``seed`` (its
    documented spawn: one child for the resets, one for the action noise)."""
    return int(seed.spawn(2)[0].generate_state(1, dtype=np.uint32)[0])


def spy_training(tmp_path, workers):
    """Train TINY meta-cpo for one iteration and record what the frame saw: the ``theta``,
    ``vf`` and workers it was given, the task runs its step learned from, and its result."""
    seen = {}
    real = metacpo_ref.algos.meta.run_iteration

    def run_iteration(theta, vf, config, iteration, w, local_steps, learn, task_part=None):
        def spy_learn(theta_, runs):
            seen["runs"] = runs
            return learn(theta_, runs)

        out = real(theta, vf, config, iteration, w, local_steps, spy_learn, task_part)
        seen.update(theta=theta, vf=vf, obs_norm=w.obs_norm, vf_out=out[1], metrics=out[2])
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metacpo_ref.algos.meta, "run_iteration", run_iteration)
        config = Config(**TINY)
        seen["state"] = train(config, tmp_path / f"w{workers}", workers=workers)
    return config, SimpleNamespace(**seen)


@pytest.fixture
def one_worker(tmp_path):
    """One worker's TINY training run, made in every test that uses it (function scope: a
    mutation-testing tool that selects tests by the code they run sees it in each)."""
    return spy_training(tmp_path / "one", 1)


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_see_normalised_observations(tmp_path, workers):
    """The first observation of every task's first batch, collected in the workers, is the
    checkpoint's normaliser applied to the raw reset observation of that seeded episode
    (training and the saved policy see the same inputs)."""
    config, seen = spy_training(tmp_path, workers)
    norm = seen.state.obs_norm
    assert seen.obs_norm is not None
    tasks = sample_tasks(config.family, config.tasks, "train", seed=task_seed(config.seed, 0))
    for i, (task, run) in enumerate(zip(tasks, seen.runs)):
        raw, _ = make_env(config.family, task).reset(seed=reset_seed(batch_seed(config.seed, 0, i, 0)))
        assert np.abs(raw - norm(raw)).max() > 0.1   # the normaliser is not the identity here
        np.testing.assert_allclose(run.batch0.obs[0], norm(raw), rtol=0, atol=1e-12)


def random_policy_norm(config, split):
    """Reference: the normaliser fitted on seeded random-policy episodes of ``split`` tasks."""
    obs = []
    env = make_env(config.family)
    for i, task in enumerate(sample_tasks(config.family, config.tasks, split, seed=config.seed)):
        env.set_task(task)
        obs.append(collect(env, random_act, OBS_NORM_EPISODES, batch_seed(config.seed, NORM_ITERATION, i, 0)).obs)
    return fit_obs_norm(np.concatenate(obs), OBS_STD_FLOOR)


def test_training_tasks_come_from_the_train_split(one_worker):
    """The tasks of a training iteration lie in Table 1's train ranges."""
    config, seen = one_worker
    fam = FAMILIES[config.family]
    assert len(seen.metrics["tasks"]) == config.tasks
    for row in seen.metrics["tasks"]:
        for name, value in row["params"].items():
            lo, hi = fam.train[name]
            assert lo <= value <= hi


def test_normaliser_is_fitted_on_train_tasks():
    """The run's normaliser is fitted on seeded random-policy episodes of train-split tasks
    (car-circle-hazard: its hazard lidar sees the task, so the split shows; point-circle's
    observations of a random policy do not depend on the task)."""
    config = Config(family="car-circle-hazard", tasks=2, hidden=(8,))
    norm = initial_state(config).obs_norm
    ref = random_policy_norm(config, "train")
    np.testing.assert_array_equal(norm.mean, ref.mean)
    np.testing.assert_array_equal(norm.std, ref.std)
    assert not np.array_equal(norm.mean, random_policy_norm(config, "test").mean)


def test_value_functions_are_carried_through_the_inner_loop_and_refitted_from_theta_s(one_worker):
    """Reference recomputation of one iteration's value functions:
    - batch 0 of each task uses the value functions the iteration was given;
    - the local step's refit (reward on reward, cost on cost targets) is carried to the
      evaluation batch (its advantages are those of the refitted functions);
    - after the iteration, each value function is one fit, warm-started from the
      iteration's input, on the pre-adaptation batches' own targets (cost on cost);
    - the cost advantages a step sees are in the run's cost measure (D38)."""
    config, seen = one_worker
    spec, vspec = specs(config)
    vf_in = seen.vf
    args = (config.gamma, config.gae_lambda, config.vf_iters)
    tasks = sample_tasks(config.family, config.tasks, "train", seed=task_seed(config.seed, 0))
    env = NormalizedEnv(make_env(config.family), seen.obs_norm)
    targets = ([], [])
    for i, (task, run) in enumerate(zip(tasks, seen.runs)):
        ref0 = advantages(vspec, run.batch0, *vf_in, *args)
        weighted = lambda a, b: weight_cost_advantages(a, b, config.cost_measure, config.gamma)
        np.testing.assert_allclose(run.trace.steps[0].adv_c, weighted(ref0.adv_c, run.batch0), atol=1e-10)
        np.testing.assert_allclose(run.trace.steps[0].adv_r, ref0.adv_r, atol=1e-10)
        targets[0].append(ref0.targets_r)
        targets[1].append(ref0.targets_c)
        env.set_task(task)
        ev = run.trace.eval
        batch1 = collect(env, act_fn(spec, ev.phi), config.n_episodes, batch_seed(config.seed, 0, i, 1))
        np.testing.assert_array_equal(batch1.obs, ev.obs)
        ref1 = advantages(vspec, batch1, ref0.vf_params_r, ref0.vf_params_c, *args)
        stale = advantages(vspec, batch1, *vf_in, *args)
        assert np.abs(stale.adv_c - ref1.adv_c).max() > 1e-6   # the refit matters here
        np.testing.assert_allclose(ev.adv_c, weighted(ref1.adv_c, batch1), atol=1e-10)
        np.testing.assert_allclose(ev.adv_r, ref1.adv_r, atol=1e-10)
    obs0 = np.concatenate([r.batch0.obs for r in seen.runs])
    for j in (0, 1):
        ref = fit_value(vspec, vf_in[j], obs0, np.concatenate(targets[j]), config.vf_iters)
        np.testing.assert_allclose(seen.vf_out[j], ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(seen.state.vf[1], seen.vf_out[1])


def test_pooled_b_hat_is_the_constraint_value_of_the_pooled_episodes():
    """The baselines' pooled ``b_hat`` is ``constraint_value`` of the concatenated batches,
    not of one task's batch (nor a mean of per-task values)."""
    env = make_env("point-circle", sample_tasks("point-circle", 1, seed=0)[0])
    batches = [collect(env, random_act, 1, seed=1, max_steps=30), collect(env, random_act, 2, seed=2, max_steps=50)]
    batches[1].cost[:] = 0.0
    batches[1].ep_cost[:] = [3.0, 5.0]   # pooled cost (0 + 3 + 5) / 3 episodes over (30 + 50 + 50) / 3 steps
    runs = []
    for b in batches:
        n = len(b)
        d = StepData(b.obs, b.act, b.logp, np.zeros(n), np.zeros(n), constraint_value(b, 10.0), np.zeros(3))
        runs.append(SimpleNamespace(batch0=b, trace=SimpleNamespace(eval=d)))
    pooled = pooled_data(runs, np.zeros(3), 10.0, Config(algo="cpo", cost_measure="episode"))
    ref = constraint_value(concat_batches(batches), 10.0)
    assert ref == pytest.approx((8.0 / 3 - 10.0) / (130 / 3))
    assert pooled.b_hat == ref
    assert len(pooled.obs) == 130 and np.array_equal(pooled.obs, np.concatenate([b.obs for b in batches]))


def test_bootstrap_observation_is_the_next_observation_of_the_same_episode():
    """At a time-limit cut after T steps, ``bootstrap_obs`` is ``s_T``: the observation the
    same seeded episode, run one step longer, has at step T."""
    env = make_env("point-circle", sample_tasks("point-circle", 1, seed=0)[0])
    T = 25
    cut = collect(env, random_act, 1, seed=7, max_steps=T)
    longer = collect(env, random_act, 1, seed=7, max_steps=T + 1)
    assert cut.truncated[-1] and not cut.terminated[-1]
    np.testing.assert_array_equal(cut.obs, longer.obs[:T])
    np.testing.assert_array_equal(cut.bootstrap_obs[-1], longer.obs[T])
    assert not np.array_equal(cut.bootstrap_obs[-1], cut.obs[-1])


def test_meta_test_uses_the_family_test_limit_by_default(tmp_path):
    """car-circle-hazard's test limit (5) differs from its training limit (10); meta_test
    adapts to and reports the test limit unless told otherwise (point-circle: 10, 10)."""
    fam = FAMILIES["car-circle-hazard"]
    assert (fam.cost_limit_train, fam.cost_limit_test) == (10.0, 5.0)
    config = Config(family="car-circle-hazard", hidden=(8,), tasks=1, local_steps=1, episodes=1, iterations=1)
    spec, vspec = specs(config)
    norm = ObsNorm(np.zeros(spec.obs_dim), np.ones(spec.obs_dim))
    ckpt = tmp_path / "checkpoint.npz"
    save_checkpoint(ckpt, State(config, init_theta(spec, 0), (init_value(vspec, 1), init_value(vspec, 2)),
                                norm, 0, 0))
    rows = meta_test(ckpt, n_tasks=1, adapt_steps=1)
    assert [r["cost_limit"] for r in rows] == [5.0, 5.0]
    explicit = meta_test(ckpt, n_tasks=1, adapt_steps=1, cost_limit=5.0)
    for r, e in zip(rows, explicit):
        assert r["return"] == pytest.approx(e["return"], rel=1e-9) and r["cost"] == e["cost"]
    assert meta_test(ckpt, n_tasks=1, adapt_steps=0, cost_limit=10.0)[0]["cost_limit"] == 10.0


def _test_adaptation(deterministic, seed=5):
    """One adaptation step on a car-circle-hazard test task (its batches have costs)."""
    config = Config(**{**TINY, "family": "car-circle-hazard"})
    spec, vspec = specs(config)
    task = sample_tasks("car-circle-hazard", 1, "test", seed=0)[0]
    theta = init_theta(spec, 3)
    vf = (init_value(vspec, 1), init_value(vspec, 2))
    env = make_env("car-circle-hazard")
    phi1, stats = adapt_on(env, task, theta, 1, config, vf, seed, 10.0, deterministic)
    return config, spec, vspec, task, env, theta, vf, phi1, stats


def _eval_stats(env, task, spec, phi, n, key, gamma, deterministic=False):
    """What meta-testing reports of ``phi``, recomputed from an independent batch under seed
    ``key``: return, undiscounted and discounted cost per episode (a loop restarting the
    discount at each episode), the authors' batch-discounted cost, cost per step."""
    env.set_task(task)
    b = collect(env, act_fn(spec, phi, deterministic=deterministic), n, batch_seed(*key))
    disc, t = [], 0
    for length in b.ep_len:
        disc.append(sum(gamma ** tau * b.cost[t + tau] for tau in range(int(length))))
        t += int(length)
    authors = sum(gamma ** i * c for i, c in enumerate(b.cost))
    return {"return": float(np.mean(b.ep_return)), "cost_episode": float(np.mean(b.ep_cost)),
            "cost_discounted": float(np.mean(disc)), "cost_authors": float(authors),
            "cost_rate": float(np.sum(b.ep_cost) / np.sum(b.ep_len))}


def _assert_stats(got, ref):
    assert set(got) == set(ref)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12), k


def test_meta_test_measures_each_phi_k_on_separate_evaluation_episodes():
    """Issue 29's protocol: step j adapts on the batch of ``phi_j`` under the seed key (seed,
    TEST_ITERATION, task key, j) at the run's batch size, by the algorithm's own update;
    what is reported for step j is ``phi_j`` on separate evaluation episodes under (seed,
    EVAL_ITERATION, task key, 0), the same for every j: never the batch it adapts on."""
    config, spec, vspec, task, env, theta, vf, phi1, stats = _test_adaptation(False)
    assert len(stats) == 2 and not np.array_equal(phi1, theta)
    env.set_task(task)
    c = collect_step_data(env, spec, vspec, theta, vf, config, batch_seed(5, TEST_ITERATION, _task_key(task), 0), 10.0)
    np.testing.assert_array_equal(phi1, policy_update(spec, theta, c.data, config).phi)
    for j, phi in enumerate((theta, phi1)):
        _assert_stats(stats[j], _eval_stats(env, task, spec, phi, config.n_episodes,
                                            (5, EVAL_ITERATION, _task_key(task), 0), config.gamma))
    assert stats[0]["return"] != float(np.mean(c.batch.ep_return))   # not the adaptation batch
    assert stats[0]["cost_episode"] > 0 and stats[0]["cost_episode"] >= stats[0]["cost_discounted"]
    assert _test_adaptation(False, seed=6)[-1][0] != stats[0]


def test_deterministic_meta_test_reports_mean_action_episodes_and_adapts_on_the_stochastic_batches():
    """``deterministic=True`` changes what is reported, not how the policy adapts: the same
    ``phi_k`` as the stochastic meta-test, and for each step the mean-action evaluation
    episodes of ``phi_j`` (same seed key)."""
    *_, phi_s, stats_s = _test_adaptation(False)
    config, spec, vspec, task, env, theta, vf, phi_d, stats_d = _test_adaptation(True)
    np.testing.assert_array_equal(phi_d, phi_s)
    assert len(stats_d) == 2 and stats_d[0] != stats_s[0]
    for j, phi in enumerate((theta, phi_d)):
        _assert_stats(stats_d[j], _eval_stats(env, task, spec, phi, config.n_episodes,
                                              (5, EVAL_ITERATION, _task_key(task), 0), config.gamma, True))


def _checkpoint_with_a_normaliser(tmp_path, family="point-circle"):
    config = Config(**{**TINY, "family": family})
    spec, vspec = specs(config)
    rng = np.random.default_rng(4)
    norm = ObsNorm(rng.standard_normal(spec.obs_dim), rng.uniform(0.5, 2.0, spec.obs_dim))
    theta = init_theta(spec, 0)
    theta = theta + 0.3 * rng.standard_normal(theta.size)
    state = State(config, theta, (init_value(vspec, 7), init_value(vspec, 8)), norm, 0, 0)
    save_checkpoint(tmp_path / "checkpoint.npz", state)
    return tmp_path / "checkpoint.npz", state, spec


def test_checkpoint_round_trips_the_normaliser_with_its_clip(tmp_path):
    """A checkpoint restores the normaliser it was saved with: mean, std and clip (not the
    default clip)."""
    ckpt, state, _ = _checkpoint_with_a_normaliser(tmp_path)
    norm = dataclasses.replace(state.obs_norm, clip=3.0)
    save_checkpoint(ckpt, dataclasses.replace(state, obs_norm=norm))
    back = load_checkpoint(ckpt).obs_norm
    np.testing.assert_array_equal(back.mean, norm.mean)
    np.testing.assert_array_equal(back.std, norm.std)
    assert back.clip == 3.0


def test_load_policy_is_the_policy_on_normalised_observations(tmp_path):
    """load_policy's ``act(raw obs)`` is the run's policy on the run's normalised
    observations: the mean action, or a sample from its own generator seeded 0."""
    ckpt, state, spec = _checkpoint_with_a_normaliser(tmp_path)
    raw = 3.0 * np.random.default_rng(5).standard_normal(spec.obs_dim) + 1.0
    mu = mlp(spec.sizes, state.theta, state.obs_norm(raw))
    assert not np.allclose(mu, mlp(spec.sizes, state.theta, raw))
    np.testing.assert_array_equal(load_policy(ckpt)(raw), mu)
    sample = load_policy(ckpt, deterministic=False)
    eps = np.random.default_rng(0).standard_normal((2, spec.act_dim))
    std = np.exp(state.theta[-spec.act_dim:])
    np.testing.assert_allclose(sample(raw), mu + std * eps[0], rtol=1e-12)
    np.testing.assert_allclose(sample(raw), mu + std * eps[1], rtol=1e-12)


def test_adapt_api_defaults_are_fresh_value_functions_and_the_family_test_limit(tmp_path):
    """The Python API's ``adapt`` of a bare ``theta`` against adapt_on (a run adapts with its own
    config, normaliser and value functions: test_one_run's README test): with a checkpoint's
    normaliser and value functions given, its policy adapts on normalised observations with
    them; not given, the value
    functions are fresh (seeds 1, 2), the cost limit is the family's test limit
    (car-circle-hazard: 5, not the training 10), the seed is 0 and the algorithm Meta-CPO."""
    _, state, spec = _checkpoint_with_a_normaliser(tmp_path, "car-circle-hazard")
    task = sample_tasks("car-circle-hazard", 1, "test", seed=0, walls="stock")[0]   # (where b moves the step)
    # eq. 9's step, on the undiscounted measure (this random policy's discounted J_C is under
    # both limits): b moves the step
    config = dataclasses.replace(state.config, recover_above_limit=False, cost_measure="episode")
    _, vspec = specs(config)
    fresh_vf = (init_value(vspec, 1), init_value(vspec, 2))

    def ref(vf, seed=3, limit=5.0, norm=state.obs_norm, cfg=config, theta=state.theta):
        env = make_env("car-circle-hazard") if norm is None else NormalizedEnv(make_env("car-circle-hazard"), norm)
        return adapt_on(env, task, theta, 1, cfg, vf, seed, limit)[0]

    given = adapt(state.theta, task, 1, config, vf=state.vf, obs_norm=state.obs_norm, seed=3)
    np.testing.assert_array_equal(given, ref(state.vf))
    phi = adapt(state.theta, task, 1, config, obs_norm=state.obs_norm, seed=3)
    np.testing.assert_array_equal(phi, ref(fresh_vf))
    assert not np.array_equal(phi, given)
    ten = adapt(state.theta, task, 1, config, obs_norm=state.obs_norm, seed=3, cost_limit=10.0)
    np.testing.assert_array_equal(ten, ref(fresh_vf, limit=10.0))
    assert not np.array_equal(phi, ten)
    raw = adapt(state.theta, task, 1, config, seed=3)
    np.testing.assert_array_equal(raw, ref(fresh_vf, norm=None))
    assert not np.array_equal(raw, phi)
    np.testing.assert_array_equal(adapt(state.theta, task, 1, config, obs_norm=state.obs_norm),
                                  ref(fresh_vf, seed=0))
    default = Config(family="car-circle-hazard")
    theta = init_theta(specs(default)[0], 0)
    np.testing.assert_array_equal(adapt(theta, task, 1, seed=3), ref(
        (init_value(specs(default)[1], 1), init_value(specs(default)[1], 2)), norm=None, cfg=default, theta=theta))


def test_meta_test_rows_are_the_adaptations_of_the_unseen_tasks_on_normalised_observations(tmp_path):
    """meta_test's row k, against adapt_on run here: over the test-split tasks sampled with
    ``seed``, the mean over tasks (and its standard error, std(ddof=1) / sqrt(n); 0 for one
    task) of what each task's adaptation reports for step k (every measure), ``cost`` the
    run's measure; on the run's normalised observations, ``episodes`` episodes per
    adaptation batch and as many evaluation episodes unless asked, stochastic episodes
    unless asked. (car-circle-hazard: its batches have costs.)"""
    ckpt, state, spec = _checkpoint_with_a_normaliser(tmp_path, "car-circle-hazard")
    rows = meta_test(ckpt, n_tasks=2, adapt_steps=1, episodes=2, seed=1)
    tasks = sample_tasks("car-circle-hazard", 2, "test", seed=1)
    assert [t.params for t in tasks] != [t.params for t in sample_tasks("car-circle-hazard", 2, "test", seed=0)]
    config = dataclasses.replace(state.config, episodes=2)
    env = NormalizedEnv(make_env("car-circle-hazard"), state.obs_norm)
    ref = [adapt_on(env, t, state.theta, 1, config, state.vf, 1, 5.0, False, 2)[1] for t in tasks]
    assert len(rows) == 2 and config.cost_measure == "discounted"
    names = ("return", "cost_episode", "cost_discounted", "cost_authors", "cost_rate")
    for k, row in enumerate(rows):
        v = np.array([[r[k][m] for m in names] for r in ref])
        assert v[:, 1].max() > 0 and v[:, 4].max() > 0 and row["cost_limit"] == 5.0
        assert (row["adapt_episodes"], row["eval_episodes"], row["cost_measure"]) == (2, 2, "discounted")
        assert tuple(row[m] for m in names) == tuple(float(x) for x in v.mean(axis=0))
        assert (row["cost"], row["cost_se"]) == (row["cost_discounted"], row["cost_discounted_se"])
        assert tuple(row[m + "_se"] for m in names) == pytest.approx(tuple(v.std(axis=0, ddof=1) / np.sqrt(2)),
                                                                     rel=1e-12)
        assert [t["params"] for t in row["tasks"]] == [t.params for t in tasks]
        assert [tuple(t[m] for m in names) for t in row["tasks"]] == [tuple(x) for x in v]
        assert [t["cost"] for t in row["tasks"]] == list(v[:, 2])
    assert rows[0]["return_se"] > 0
    more = meta_test(ckpt, n_tasks=2, adapt_steps=1, episodes=2, seed=1, eval_episodes=3)
    assert more[0]["eval_episodes"] == 3 and more[0]["return"] != rows[0]["return"]
    assert more[1]["tasks"][0]["params"] == rows[1]["tasks"][0]["params"]
    (rnd,) = meta_test(ckpt, n_tasks=2, adapt_steps=3, seed=1, random_policy=True)
    assert rnd["policy"] == "random" and rnd["step"] == 0 and rnd["cost_episode"] > rnd["cost_discounted"]
    mean_action = meta_test(ckpt, n_tasks=2, adapt_steps=1, episodes=2, seed=1, deterministic=True)
    assert mean_action[0]["return"] != rows[0]["return"]
    (one,) = meta_test(ckpt, n_tasks=1, adapt_steps=0, seed=1)
    assert one["return_se"] == one["cost_se"] == 0.0


def test_meta_test_task_key_tells_tasks_apart_and_ignores_parameter_order():
    """The seed key of a meta-test task's batches (training._task_key) differs between
    tasks and depends only on the parameters' values, not on their order in the dict."""
    a, b = sample_tasks("point-circle", 2, "test", seed=0)
    assert _task_key(a) != _task_key(b)
    reordered = dataclasses.replace(a, params=dict(reversed(list(a.params.items()))))
    assert list(reordered.params) != list(a.params) and _task_key(reordered) == _task_key(a)


def test_obs_norm_clips_both_sides():
    """``ObsNorm`` is ``clip((obs - mean) / std, -clip, clip)``: far outliers on either side
    are clipped, values inside are only standardised."""
    norm = ObsNorm(np.array([1.0, 1.0, 1.0]), np.array([2.0, 2.0, 2.0]), clip=10.0)
    np.testing.assert_array_equal(norm(np.array([-99.0, 101.0, 7.0])), [-10.0, 10.0, 3.0])


RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.mark.parametrize("run", sorted(str(p.relative_to(RESULTS)) for p in RESULTS.glob("**/*-s[0-9]*") if (p / "config.json").exists()))
def test_committed_runs_tasks_are_regenerated_by_their_seed_key(run):
    """Every committed run's recorded training tasks are the ones ``task_seed(seed,
    iteration)`` draws today (the seed key is a fixed convention: changing it would make
    committed runs unreproducible, and resumed runs train on other tasks)."""
    config = json.loads((RESULTS / run / "config.json").read_text())
    rows = read_metrics(RESULTS / run)
    assert rows
    for row in rows[:3]:
        if config.get("task"):      # a run on one fixed task (train --task): that task, every time
            assert [t["params"] for t in row["tasks"]] == [config["task"]] * config["tasks"]
            continue
        tasks = sample_tasks(config["family"], config["tasks"], "train", seed=task_seed(config["seed"], row["iteration"]),
                             walls=config.get("car_walls", "stock"))   # runs before the paper's car walls: stock
        assert [t["params"] for t in row["tasks"]] == [t.params for t in tasks]


def test_random_act_is_uniform_on_the_action_box():
    """The normaliser's random policy draws uniformly on [-1, 1]^2 (the action box) and
    reports that law's log-density log(1/4)."""
    rng = np.random.default_rng(0)
    draws = [random_act(None, rng) for _ in range(2000)]
    a = np.array([d[0] for d in draws])
    assert a.shape == (2000, 2) and a.min() >= -1.0 and a.max() <= 1.0
    assert np.all(a.min(axis=0) < -0.99) and np.all(a.max(axis=0) > 0.99)
    np.testing.assert_allclose(a.mean(axis=0), 0.0, atol=0.05)
    assert all(d[1] == np.log(0.25) for d in draws)


class CountdownEnv:
    """A stub safe env: observation = steps left; the episode terminates when it reaches 0."""

    def __init__(self, length):
        self.length = length

    def reset(self, seed=None):
        self.left = self.length
        return np.array([float(self.left)]), {}

    def step(self, action):
        self.left -= 1
        return np.array([float(self.left)]), 1.0, 0.5, self.left == 0, False, {}


def test_collect_records_terminations():
    """An episode that terminates (not cut) is recorded as terminated, not truncated, with no
    bootstrap observation; a cut before it is a truncation with the next observation."""
    b = collect(CountdownEnv(3), random_act, 2, seed=0)
    np.testing.assert_array_equal(b.terminated, [False, False, True] * 2)
    assert not b.truncated.any() and not b.bootstrap_obs.any()
    np.testing.assert_array_equal(b.ep_len, [3, 3])
    np.testing.assert_array_equal(b.ep_cost, [1.5, 1.5])
    cut = collect(CountdownEnv(3), random_act, 1, seed=0, max_steps=2)
    np.testing.assert_array_equal(cut.terminated, [False, False])
    np.testing.assert_array_equal(cut.truncated, [False, True])
    np.testing.assert_array_equal(cut.bootstrap_obs[-1], [1.0])
