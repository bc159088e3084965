"""The paper's non-meta baselines: CPO (Achiam et al. 2017, eqs. 3-4) and TRPO.

One policy is trained on batches pooled over the tasks sampled at each
iteration (the paper's comparison): per task a batch collected with
``theta``, advantages estimated per task, then one update of eq. 9 on the
pooled batch with the Fisher metric (conjugate gradient on Fisher-vector
products) and a KL trust region of ``config.baseline_delta``. CPO keeps the
cost constraint; TRPO drops it. Both reuse the iteration frame
(:func:`metacpo_ref.algos.iteration.run_iteration`, with no local steps) and
:func:`metacpo_ref.algos.local_step.policy_update`.
"""
import numpy as np

from metacpo_ref.model.advantages import constraint_value, step_weights
from metacpo_ref.algos.iteration import json_float, run_iteration
from metacpo_ref.envs.rollouts import concat_batches
from metacpo_ref.algos.local_step import policy_update
from metacpo_ref.algos.step_data import StepData, specs


def pooled_data(runs, theta, cost_limit, config):
    """One :class:`StepData` from the tasks' batches of ``theta`` (each run's
    ``trace.eval``): arrays concatenated, ``b_hat`` from the pooled episodes in
    ``config.cost_measure``. Each task's cost advantages carry its own batch's weights
    ``w_t / mean(w)`` (D38); rescaled by ``mean_task(w) / mean_pooled(w)`` they are the
    pooled batch's (a factor 1.0 with the episode measure or equal batch lengths)."""
    d = [r.trace.eval for r in runs]
    batches = [r.batch0 for r in runs]
    batch = concat_batches(batches)
    mean_w = lambda b: float(np.mean(step_weights(b, config.cost_measure, config.gamma)))
    pooled_w = mean_w(batch)
    adv_c = np.concatenate([x.adv_c * (mean_w(b) / pooled_w) for x, b in zip(d, batches)])
    return StepData(*(np.concatenate([getattr(x, k) for x in d]) for k in ("obs", "act", "logp_beh", "adv_r")),
                    adv_c, constraint_value(batch, cost_limit, config.cost_measure, config.gamma),
                    np.asarray(theta, dtype=np.float64))


def baseline_iteration(theta, vf, config, iteration, workers):
    """One CPO or TRPO iteration: the frame of :func:`metacpo_ref.algos.iteration.run_iteration`
    (``config.tasks`` sampled training tasks, one batch of ``theta`` each, value
    functions refitted on them) with one Fisher-metric update on the pooled batches
    as the algorithm's own step. Returns ``(theta_new, vf_new, metrics)``."""
    spec, _ = specs(config)

    def learn(theta, runs):
        upd = policy_update(spec, theta, pooled_data(runs, theta, config.train_cost_limit, config), config)
        return upd.phi, {"cases": {upd.case: 1}, "beta": upd.beta, "lam": upd.lam, "nu": json_float(upd.nu)}

    return run_iteration(theta, vf, config, iteration, workers, 0, learn)
