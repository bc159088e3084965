"""Meta-testing on unseen tasks (the paper's Fig. 5, third row; D36): adapt a checkpoint's
policy with the algorithm's own step and measure each ``phi_k`` on separate evaluation
episodes; and the Python API's :func:`adapt` and :func:`load_policy`. All randomness is
keyed by (seed, iteration key, task, step) (:mod:`metacpo_ref.envs.rollouts`)."""
import dataclasses
import json

import numpy as np

from metacpo_ref.algos.local_step import policy_update
from metacpo_ref.algos.step_data import collect_step_data, specs
from metacpo_ref.config import COST_LIMIT, LOCAL_STEPS, META_TEST_TASKS, Config
from metacpo_ref.envs.families import FAMILIES
from metacpo_ref.envs import make_env, sample_tasks
from metacpo_ref.envs.rollouts import NormalizedEnv, batch_seed, collect, random_act
from metacpo_ref.envs.workers import Workers
from metacpo_ref.model.advantages import authors_cost, episode_measures, init_value
from metacpo_ref.model.policy import act_fn
from metacpo_ref.run.rundir import State, checkpoint_path, load_checkpoint

TEST_ITERATION = 2**31 - 2   # the seed key of meta-testing's adaptation batches (never a training iteration)
EVAL_ITERATION = 2**31 - 6   # the seed key of meta-testing's evaluation episodes


MEASURES = ("return", "cost_episode", "cost_discounted", "cost_authors", "cost_rate")


def evaluate_policy(env, act, n_episodes, seed, gamma):
    """What meta-testing reports of a policy ``act(obs, rng)`` (D36): over ``n_episodes``
    episodes seeded by ``seed``, the mean episode return, the undiscounted cost per
    episode, the paper's discounted ``J_C`` (each episode from its first step), and, for
    comparison only, the authors' logged measure (:func:`metacpo_ref.model.advantages.authors_cost`:
    the whole batch discounted from its first step, never reset); and the cost per step.
    A dict keyed by :data:`MEASURES`."""
    batch = collect(env, act, n_episodes, seed)
    undiscounted, discounted = episode_measures(batch, gamma)
    return {"return": float(np.mean(batch.ep_return)), "cost_episode": float(np.mean(undiscounted)),
            "cost_discounted": float(np.mean(discounted)), "cost_authors": authors_cost(batch, gamma),
            "cost_rate": float(np.sum(batch.ep_cost) / np.sum(batch.ep_len))}


def adapt_on(env, task, theta, k, config, vf, seed, cost_limit, deterministic=False, eval_episodes=None):
    """Adapt ``theta`` on ``task`` for ``k`` steps in ``env`` (a job for the workers).

    Returns ``(phi_k, stats)``: ``stats[j]`` (j = 0..k) is :func:`evaluate_policy` of
    ``phi_j`` on ``eval_episodes`` (default ``config.n_episodes``) separate evaluation
    episodes, never the batch the next step adapts on. Adaptation takes the algorithm's
    own step (``policy_update``) on a batch of ``config.n_episodes`` stochastic episodes
    of ``phi_j``, with ``b`` in ``config.cost_measure`` against ``cost_limit``. The
    evaluation episodes of every ``phi_j`` share one seed per task (the same layouts and
    action noise at each j, and for every checkpoint tested with the same ``seed``), so
    the rows differ by the policy, not by the draw; ``deterministic``: mean actions."""
    env.set_task(task)
    spec, vspec = specs(config)
    n_eval = config.n_episodes if eval_episodes is None else int(eval_episodes)
    phi, stats = np.asarray(theta, dtype=np.float64), []
    for j in range(k + 1):
        if n_eval:   # 0: adapt only (the Python API's adapt)
            stats.append(evaluate_policy(env, act_fn(spec, phi, deterministic=deterministic), n_eval,
                                         _eval_seed(seed, task), config.gamma))
        if j < k:
            c = collect_step_data(env, spec, vspec, phi, vf, config,
                                  batch_seed(seed, TEST_ITERATION, _task_key(task), j), cost_limit)
            vf = c.vf
            phi = policy_update(spec, phi, c.data, config).phi   # the algorithm's own rule
    return phi, stats


def adapt(run, task, k, config=None, vf=None, obs_norm=None, seed=0, cost_limit=None):
    """``phi_k`` after ``k`` adaptation steps on ``task`` (Python API).

    ``run`` is a run directory, its ``checkpoint.npz`` or a :class:`State`: the policy adapts
    as ``cli.py test`` (:func:`meta_test`) adapts it, with the run's config, value functions
    and observation normaliser, the seeds of meta-testing's adaptation batches and the
    family's test limit in the run's cost measure (``cost_limit`` overrides the limit). A bare
    ``theta`` (an array) adapts as given: ``config`` (default: Meta-CPO on the task's family),
    ``vf`` (default: fresh value functions) and ``obs_norm`` (default: none, raw observations)."""
    if isinstance(run, np.ndarray):
        config = Config(family=task.family) if config is None else config
        _, vspec = specs(config)
        vf = (init_value(vspec, 1), init_value(vspec, 2)) if vf is None else vf
        theta = run
    else:
        if (config, vf, obs_norm) != (None, None, None):
            raise TypeError("adapt(run, ...) takes config, vf and obs_norm from the run; to give them yourself, "
                            "pass a bare theta (e.g. state.theta) instead of the run")
        state = run if isinstance(run, State) else load_checkpoint(checkpoint_path(run))
        config, vf, obs_norm, theta = state.config, state.vf, state.obs_norm, state.theta
    if task.family != config.family:
        raise ValueError(f"a {task.family!r} task cannot adapt a {config.family!r} policy")
    limit = FAMILIES[config.family].cost_limit_test if cost_limit is None else float(cost_limit)
    env = make_env(task.family, task)
    env = env if obs_norm is None else NormalizedEnv(env, obs_norm)
    return adapt_on(env, task, theta, k, config, vf, seed, limit, eval_episodes=0)[0]


def _task_key(task):
    """A stable integer for a task's seed key (from its parameters)."""
    digest = json.dumps(task.params, sort_keys=True).encode()
    return int(np.random.SeedSequence(list(digest)).generate_state(1)[0])


def _se(x):
    x = np.asarray(x, dtype=np.float64)
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def meta_test_rows(tasks, per_task, config, limit, protocol):
    """One meta-test row per step k from the tasks' :func:`evaluate_policy` dicts
    ``per_task[i][k]``: every measure of :data:`MEASURES` averaged over tasks (and its
    standard error ``NAME_se``), ``cost`` the one in the run's ``cost_measure`` (what
    ``cost_limit`` is on), and the per-task numbers."""
    rows = []
    for j in range(len(per_task[0])):
        stats = [p[j] for p in per_task]
        row = {"step": j}
        for m in MEASURES:
            v = [s[m] for s in stats]
            row[m], row[m + "_se"] = float(np.mean(v)), _se(v)
        own = "cost_" + config.cost_measure
        row.update(cost=row[own], cost_se=row[own + "_se"], cost_limit=limit, cost_measure=config.cost_measure,
                   **protocol, tasks=[{"params": t.params, **s, "cost": s[own]} for t, s in zip(tasks, stats)])
        rows.append(row)
    return rows


def meta_test(checkpoint, family=None, n_tasks=META_TEST_TASKS, adapt_steps=LOCAL_STEPS, episodes=None,
              cost_limit=None, deterministic=False, seed=0, workers=1, backend="process", ray_address=None,
              eval_episodes=None, random_policy=False, cost_measure=None):
    """Adapt the checkpoint's policy on ``n_tasks`` unseen (test-split) tasks for
    ``adapt_steps`` steps (tasks in parallel on ``workers`` processes) and measure each
    ``phi_k`` on separate evaluation episodes (:func:`adapt_on`): one row per step
    k = 0..K (:func:`meta_test_rows`). Adaptation batches have the run's size unless
    ``episodes`` is given; ``eval_episodes`` defaults to the same number.
    ``deterministic`` evaluates mean actions. ``cost_limit`` defaults to the family's
    test limit, in the run's cost measure, or in ``cost_measure`` when given (a
    constrained algorithm's adaptation then aims at that measure's limit; every row
    reports all measures either way). ``random_policy``: instead, one row k = 0 of a
    uniformly random policy on the same tasks and evaluation episodes (the checkpoint
    gives the family, the walls, the normaliser and the numbers of episodes)."""
    state = load_checkpoint(checkpoint, family)
    config = state.config
    if cost_limit is not None:
        COST_LIMIT.check("cost_limit", cost_limit)
    if episodes is not None:
        config = dataclasses.replace(config, episodes=episodes)
    if cost_measure is not None:
        config = dataclasses.replace(config, cost_measure=cost_measure)
    n_eval = config.n_episodes if eval_episodes is None else int(eval_episodes)
    tasks = sample_tasks(config.family, n_tasks, "test", seed=seed, walls=config.car_walls)
    limit = FAMILIES[config.family].cost_limit_test if cost_limit is None else float(cost_limit)
    if random_policy:
        jobs = [(task, seed, n_eval, config.gamma) for task in tasks]
        fn, adapt_steps = _random_on, 0
    else:
        jobs = [(task, state.theta, adapt_steps, config, state.vf, seed, limit, deterministic, n_eval)
                for task in tasks]
        fn = adapt_on
    with Workers(config.family, state.obs_norm, workers, backend=backend, ray_address=ray_address) as w:
        results = w.map(fn, jobs, [f"test task {t.params}" for t in tasks])
    protocol = {"adapt_episodes": config.n_episodes, "eval_episodes": n_eval,
                "deterministic": bool(deterministic), "policy": "random" if random_policy else "checkpoint"}
    return meta_test_rows(tasks, [stats for _, stats in results], config, limit, protocol)


def _random_on(env, task, seed, n_episodes, gamma):
    """A uniformly random policy's :func:`evaluate_policy` numbers on ``task`` (the
    evaluation episodes' seed of :func:`adapt_on`), as ``(None, [stats])``."""
    env.set_task(task)
    return None, [evaluate_policy(env, random_act, n_episodes, _eval_seed(seed, task), gamma)]


def _eval_seed(seed, task):
    """The seed of a test task's evaluation episodes (the same for every ``phi_k`` and checkpoint)."""
    return batch_seed(seed, EVAL_ITERATION, _task_key(task), 0)


def load_policy(path, deterministic=True):
    """``act(obs) -> action`` of a checkpoint's policy (``path``: the checkpoint or its run
    directory) on raw observations (Python API; the run's normaliser is applied): the mean
    action, or a sample with ``deterministic=False`` (its own seeded generator)."""
    state = load_checkpoint(checkpoint_path(path))
    spec, _ = specs(state.config)
    act = act_fn(spec, state.theta, deterministic=deterministic)
    rng = np.random.default_rng(0)
    return lambda obs: act(state.obs_norm(obs), rng)[0]
