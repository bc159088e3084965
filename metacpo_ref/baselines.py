"""The paper's non-meta baselines: CPO (Achiam et al. 2017, eqs. 3-4) and TRPO.

One policy is trained on batches pooled over the tasks sampled at each
iteration (the paper's comparison): per task a batch collected with
``theta``, advantages estimated per task, then one update of eq. 9 on the
pooled batch with the Fisher metric (conjugate gradient on Fisher-vector
products) and a KL trust region of ``config.baseline_delta``. CPO keeps the
cost constraint; TRPO drops it. Both reuse :func:`metacpo_ref.update.policy_update`.
"""
import time

import numpy as np

from metacpo_ref.advantages import constraint_value, fit_value
from metacpo_ref.envs import sample_tasks
from metacpo_ref.policy import PolicySpec
from metacpo_ref.rollouts import batch_seed, concat_batches, task_seed
from metacpo_ref.update import StepData, collect_step_data, policy_update


def pooled_data(collected, theta, cost_limit):
    """One :class:`StepData` from per-task batches: arrays concatenated, ``b_hat``
    from the pooled episodes."""
    d = [c.data for c in collected]
    batch = concat_batches([c.batch for c in collected])
    return StepData(*(np.concatenate([getattr(x, k) for x in d])
                      for k in ("obs", "act", "logp_beh", "adv_r", "adv_c")),
                    constraint_value(batch, cost_limit), np.asarray(theta, dtype=np.float64))


def collect_task(env, task, *args):
    """:func:`~metacpo_ref.update.collect_step_data` on ``task`` (a job for the workers)."""
    env.set_task(task)
    return collect_step_data(env, *args)


def baseline_iteration(theta, vf, config, iteration, workers, vspec):
    """One CPO or TRPO iteration on ``config.tasks`` sampled training tasks
    (batches collected in parallel on ``workers``).
    Returns ``(theta_new, vf_new, metrics)`` like :func:`metacpo_ref.meta.meta_iteration`."""
    spec = PolicySpec(vspec.obs_dim, 2, tuple(config.hidden))
    tasks = sample_tasks(config.family, config.tasks, "train", seed=task_seed(config.seed, iteration))
    limit = config.train_cost_limit
    jobs = [(task, spec, vspec, theta, vf, config, batch_seed(config.seed, iteration, i, 0), limit)
            for i, task in enumerate(tasks)]
    collected = workers.map(collect_task, jobs, [f"task {i} {task.params}" for i, task in enumerate(tasks)])
    t0 = time.perf_counter()
    data = pooled_data(collected, theta, limit)
    upd = policy_update(spec, theta, data, config.baseline_delta, config, config.constrained, metric="fisher")
    obs = data.obs
    vf = tuple(fit_value(vspec, p, obs, np.concatenate([getattr(c.adv, t) for c in collected]), config.vf_iters)
               for p, t in zip(vf, ("targets_r", "targets_c")))
    env_time = sum(c.env_time for c in collected)
    returns = [float(np.mean(c.batch.ep_return)) for c in collected]
    costs = [float(np.mean(c.batch.ep_cost)) for c in collected]
    metrics = {
        "return": float(np.mean(returns)),
        "cost": float(np.mean(costs)),
        "cost_limit": limit,
        "steps": int(sum(len(c.batch) for c in collected)),
        "cases": {upd.case: 1},
        "tasks": [{"params": t.params, "returns": [r], "costs": [c]} for t, r, c in zip(tasks, returns, costs)],
        "beta": upd.beta,
        "time_env": float(env_time),
        "time_learner": float(time.perf_counter() - t0 + sum(c.learner_time for c in collected)),
    }
    return upd.phi, vf, metrics
