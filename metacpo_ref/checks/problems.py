"""Seeded test problems: synthetic traces of Meta-CPO's inner loop, for the gradient
checks, the fixtures, the benchmark and the tests."""
import numpy as np

from metacpo_ref.algos.iteration import Trace
from metacpo_ref.algos.local_step import local_step
from metacpo_ref.algos.step_data import StepData
from metacpo_ref.algos.step_problem import recovery_shift, step_problem
from metacpo_ref.config import INIT_LOG_STD
from metacpo_ref.model.advantages import center, standardize
from metacpo_ref.model.metric import inner_metric
from metacpo_ref.model.policy import init_theta, log_prob, n_params


def synthetic_traces(spec, n_tasks, K, seed, config, T=64, b_fracs=None, betas=None, log_std=INIT_LOG_STD,
                     record_shifts=False):
    """Seeded synthetic traces, recorded along the nominal chain from ``init_theta``.

    Observations and actions are Gaussian; reward advantages standardised and
    cost advantages centred, as in training. ``b_fracs[i][k]`` (k = 0..K, the
    last for the evaluation batch) sets ``b_hat = frac * sqrt(2 delta s)``
    (``s = a'H^{-1}a`` in ``config.inner_metric``):
    ``|frac| < 1`` is feasible, ``> 1`` infeasible (recovery), strongly negative
    makes the cost constraint inactive. ``log_std`` (default: the policy's) sets the
    initial log-std before the perturbation. ``record_shifts``: record each local step's
    :func:`~metacpo_ref.algos.step_problem.recovery_shift` (D34, by ``config.recover_above_limit``) as
    its ``b_shift`` and take the shifted step, as training does; otherwise ``b_shift = 0``.
    Each local step is the replay of :func:`~metacpo_ref.algos.local_step.local_step`.
    Returns ``(theta, traces)``.
    """
    rng = np.random.default_rng(seed)
    metric = inner_metric(config)
    theta = init_theta(spec, seed, log_std) + 0.3 * rng.standard_normal(n_params(spec))
    b_fracs = rng.uniform(-0.8, 0.8, (n_tasks, K + 1)) if b_fracs is None else np.asarray(b_fracs, float)
    betas = np.ones((n_tasks, K)) if betas is None else np.asarray(betas, float)
    traces = []
    for i in range(n_tasks):
        phi, steps = theta, []
        for k in range(K + 1):
            obs = rng.standard_normal((T, spec.obs_dim))
            act = rng.standard_normal((T, spec.act_dim))
            logp = log_prob(spec, phi, obs, act)
            adv_r = standardize(rng.standard_normal(T))[0]
            adv_c = center(rng.standard_normal(T) + 0.5 * obs[:, 0])[0]
            beta = betas[i, k] if k < K else 1.0
            data = StepData(obs, act, logp, adv_r, adv_c, 0.0, phi, beta)
            _, a, _ = step_problem(spec, phi, data)
            solve = metric.solver(spec, phi, obs)
            s = a @ (a if solve is None else solve(a))
            b_hat = float(b_fracs[i, k] * np.sqrt(2 * metric.delta * s))
            shift = recovery_shift(b_hat, a, solve, metric.delta, config) if record_shifts and k < K else 0.0
            data = StepData(obs, act, logp, adv_r, adv_c, b_hat, phi, beta, shift)
            if k < K:
                steps.append(data)
                phi = local_step(spec, phi, data, metric, config)
            else:
                traces.append(Trace(tuple(steps), data))
    return theta, traces

