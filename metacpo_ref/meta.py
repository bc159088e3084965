"""Meta-CPO, paper Algorithm 1: K local CPO steps per task (eq. 9), the meta
objective and constraint (eq. 10), their exact gradient through the local
steps (eq. 11, by DCO), and the outer CPO step on the meta-parameters (eq. 12).

The differentiated function. For task i the inner loop records a
:class:`Trace`: for k = 0..K-1 the batch collected with ``phi_k`` (its
behaviour log-probs ``logp_beh``, standardised reward and centred cost
advantages, the per-step constraint value ``b_hat_k``, the parameters
``phi_k`` that collected it and the accepted line-search fraction
``beta_k``), then the evaluation batch collected with ``phi_K``. Given a
trace, these are plain functions of ``theta``:

    rho_k(phi)  = exp(log pi_phi(a|s) - logp_beh_k)
    L_R,k(phi)  = mean(rho_k A_R),   L_C,k(phi) = mean(rho_k A_C)
    g_k = grad L_R,k(phi_k),  a_k = grad L_C,k(phi_k)
    b_k = b_hat_k + L_C,k(phi_k) - L_C,k(phi_k^collected)     (so db_k/dphi_k = a_k)
    phi_0 = theta,  phi_{k+1} = phi_k + beta_k cpo_layer(g_k, a_k, b_k, delta)   (eq. 9)
    F = mean_i L_R,eval(phi_K)
    G = mean_i b_hat_eval + L_C,eval(phi_K) - L_C,eval(phi_K^collected)         (eq. 10)

``meta_gradient`` differentiates (F, G) in reverse mode: autograd through the
surrogates (second-order terms kept: ``g_k``, ``a_k`` are themselves
differentiated) and :func:`metacpo_ref.dco.cpo_layer`'s hand-written KKT VJP
through each step. That is eq. 11's product of step Jacobians with "all of
the partial derivatives" (through ``g``, ``a`` and ``b``), exactly.

With ``config.inner_metric == "fisher"`` (beyond the paper) the local step is
``phi_k + beta_k x(g_k, a_k, b_k, H(phi_k))`` with the Fisher matrix of batch k
at ``phi_k``, and the derivative adds the terms through ``H(phi_k)``
(:mod:`metacpo_ref.fisher_step`, :mod:`metacpo_ref.metric_layer`,
docs/fisher-metric.md).

Not included: the derivative of the sampling distribution of the batches
(the DiCE/ProMP terms). Eq. 11 does not have them, and neither do we; the
behaviour log-probs are stored data, never recomputed from the ``phi`` being
differentiated (that would make every ratio 1 and silently drop terms).
"""
import dataclasses
import time
from dataclasses import dataclass

import autograd.numpy as anp
import numpy as np
from autograd import make_vjp

from metacpo_ref.advantages import center, fit_value, standardize, surrogates
from metacpo_ref.cpo import solve_step
from metacpo_ref.dco import cpo_layer
from metacpo_ref.policy import PolicySpec, init_theta, log_prob, mean_kl, n_params
from metacpo_ref.envs import sample_tasks
from metacpo_ref.fisher_step import fisher_local_step, fisher_solver
from metacpo_ref.rollouts import batch_seed, task_seed
from metacpo_ref.update import (StepData, backtrack, collect_step_data, cost_ok, fisher_hinv,
                                policy_update, step_problem)


@dataclass(frozen=True, eq=False)
class Trace:
    """A task's K local batches and its evaluation batch."""

    steps: tuple
    eval: StepData


def policy_spec(traces, config):
    """The policy shape of ``traces`` with ``config.hidden`` layers."""
    d = traces[0].eval
    return PolicySpec(d.obs.shape[1], d.act.shape[1], tuple(config.hidden))


def local_step(spec, phi, data, delta, constrained=True):
    """``phi_{k+1} = phi_k + beta_k x(g_k, a_k, b_k)``: eq. 9 with the Euclidean metric."""
    g, a, b = step_problem(spec, phi, data, constrained)
    return phi + data.beta * cpo_layer(g, a, b, delta)


def inner_step(spec, phi, data, config):
    """One local step of eq. 9 with ``config.inner_metric``: Euclidean (:func:`local_step`)
    or Fisher (:func:`metacpo_ref.fisher_step.fisher_local_step`); differentiable in ``phi``."""
    if config.inner_metric == "fisher":
        return fisher_local_step(spec, phi, data, config, config.constrained)
    return local_step(spec, phi, data, config.inner_delta, config.constrained)


def inner_update(spec, phi, data, config):
    """Algorithm 1 lines 8-9 (and meta-testing's adaptation): the step of :func:`inner_step`
    with its line search; the Fisher step uses the same exact ``H^{-1}`` as the
    differentiated chain, so the step taken is the step differentiated."""
    hinv = None
    if config.inner_metric == "fisher":
        hinv = fisher_solver(spec, phi, data.obs, config.cg_damping)
    return policy_update(spec, phi, data, config.inner_delta, config, config.constrained,
                         metric=config.inner_metric, hinv=hinv)


def adapted_params(theta, trace, spec, config):
    """``phi_K`` of one task: the K recorded local steps replayed from ``theta``."""
    phi = theta
    for data in trace.steps:
        phi = inner_step(spec, phi, data, config)
    return phi


def task_objective(theta, trace, spec, config):
    """``(F_i, G_i)`` of eq. 10 for one task (differentiable in ``theta``)."""
    phi = adapted_params(theta, trace, spec, config)
    ev = trace.eval
    L_R, L_C = surrogates(spec, ev, ev.adv_r, ev.adv_c, ev.logp_beh)
    return L_R(phi), ev.b_hat + L_C(phi) - L_C(ev.phi)


def _objective(theta, traces, config):
    spec = policy_spec(traces, config)
    FG = [task_objective(theta, tr, spec, config) for tr in traces]
    F = sum(f for f, _ in FG) / len(FG)
    G = sum(g for _, g in FG) / len(FG)
    return anp.stack([F, G])


def meta_objective(theta, traces, config):
    """``(F, G)`` of eq. 10: no sampling, no line search, no refitting inside."""
    F, G = _objective(np.asarray(theta, dtype=np.float64), traces, config)
    return float(F), float(G)


def meta_gradient(theta, traces, config):
    """``(F, G, dF/dtheta, dG/dtheta)``: eq. 11, one forward and two reverse passes."""
    vjp, FG = make_vjp(lambda t: _objective(t, traces, config))(np.asarray(theta, dtype=np.float64))
    return float(FG[0]), float(FG[1]), vjp(np.array([1.0, 0.0])), vjp(np.array([0.0, 1.0]))


# --- the outer step (eq. 12, Algorithm 1 lines 13-14) -------------------------

@dataclass(frozen=True, eq=False)
class OuterResult:
    """The outer step: new ``theta``, the step's ``case``, accepted fraction ``beta``
    (0: rejected), ``(F, G)`` before and after, and the gradients."""

    theta: np.ndarray
    case: str
    beta: float
    F: float
    G: float
    F_new: float
    G_new: float
    dF: np.ndarray
    dG: np.ndarray


def outer_step(theta, traces, config):
    """Eq. 12: a CPO step on ``theta`` with ``g = dF``, ``a = dG``, ``b = G`` and radius
    ``config.outer_delta`` (the recovery step of eq. 4 when infeasible), then a
    backtracking line search that re-evaluates :func:`meta_objective` on the same
    traces (and keeps the mean KL from ``theta`` on the pre-adaptation batches
    within ``config.kl_delta``, or ``outer_delta`` with the Fisher metric).
    Metric: "identity" (the paper) or "fisher" (CG on Fisher-vector products of
    the pre-adaptation batches). Meta-TRPO (``config.constrained``
    False) takes the trust-region step on ``dF`` alone."""
    theta = np.asarray(theta, dtype=np.float64)
    spec = policy_spec(traces, config)
    F, G, dF, dG = meta_gradient(theta, traces, config)
    obs0 = np.concatenate([tr.steps[0].obs if tr.steps else tr.eval.obs for tr in traces])
    hinv, kl_bound = None, config.kl_delta
    if config.outer_metric == "fisher":
        hinv, kl_bound = fisher_hinv(spec, theta, obs0, config), config.outer_delta
    if config.constrained:
        step = solve_step(dF, dG, G, config.outer_delta, hinv=hinv)
    else:
        step = solve_step(dF, np.zeros_like(dF), -1.0, config.outer_delta, hinv=hinv)
    found = {}

    def accept(beta):
        cand = theta + beta * step.x
        F1, G1 = meta_objective(cand, traces, config)
        found[beta] = (F1, G1)
        if mean_kl(spec, theta, cand, obs0) > kl_bound:
            return False
        improves = step.case == "recovery" or F1 > F
        return improves and (not config.constrained or cost_ok(G1, G))

    beta = backtrack(accept, config.ls_decay, config.ls_steps)
    F1, G1 = found.get(beta, (F, G))
    return OuterResult(theta + beta * step.x, step.case, beta, F, G, F1, G1, dF, dG)


# --- Algorithm 1: one meta-iteration on the simulator ---------------------------

@dataclass(frozen=True, eq=False)
class TaskRun:
    """One task's inner loop: its trace, per-batch returns/costs/steps (K + 1
    batches: k = 0..K-1 local, then evaluation), the local steps' cases and
    line-search fractions, the pre-adaptation value targets, and timings."""

    trace: Trace
    returns: list
    costs: list
    steps: list
    cases: list
    betas: list
    obs0: np.ndarray
    targets0: tuple
    env_time: float
    learner_time: float


def inner_loop(env, task, theta, vf, spec, vspec, config, iteration, task_index, cost_limit):
    """Algorithm 1, lines 6-10 for one task: K local updates of eq. 9 (metric
    ``config.inner_metric``, radius ``config.inner_delta``, backtracking:
    :func:`inner_update`), each on a fresh batch collected with ``phi_k``, then the
    evaluation batch of ``phi_K``. Value functions start
    from ``vf`` and are refitted on each batch in turn."""
    env.set_task(task)
    phi, steps = np.asarray(theta, dtype=np.float64), []
    out = {"returns": [], "costs": [], "steps": [], "cases": [], "betas": []}
    env_time = learner_time = 0.0
    for k in range(config.local_steps + 1):
        c = collect_step_data(env, spec, vspec, phi, vf, config,
                              batch_seed(config.seed, iteration, task_index, k), cost_limit)
        vf = c.vf
        if k == 0:
            obs0, targets0 = c.batch.obs, (c.adv.targets_r, c.adv.targets_c)
        out["returns"].append(float(np.mean(c.batch.ep_return)))
        out["costs"].append(float(np.mean(c.batch.ep_cost)))
        out["steps"].append(len(c.batch))
        t0 = time.perf_counter()
        if k < config.local_steps:
            upd = inner_update(spec, phi, c.data, config)
            steps.append(dataclasses.replace(c.data, beta=upd.beta))
            out["cases"].append(upd.case)
            out["betas"].append(upd.beta)
            phi = upd.phi
        env_time += c.env_time
        learner_time += c.learner_time + time.perf_counter() - t0
    return TaskRun(Trace(tuple(steps), c.data), obs0=obs0, targets0=targets0,
                   env_time=env_time, learner_time=learner_time, **out)


def meta_iteration(theta, vf, config, iteration, workers, vspec):
    """Algorithm 1, lines 3-14: sample ``config.tasks`` training tasks, run each
    task's inner loop (in parallel on ``workers``, a :class:`metacpo_ref.workers.Workers`),
    then the outer step of eq. 12 on the recorded traces.
    The value functions ``vf = (vf_r, vf_c)`` are refitted at the end on the
    pre-adaptation batches (the batches of ``theta``). Returns
    ``(theta_new, vf_new, metrics)``."""
    spec = PolicySpec(vspec.obs_dim, 2, tuple(config.hidden))
    tasks = sample_tasks(config.family, config.tasks, "train", seed=task_seed(config.seed, iteration))
    jobs = [(task, theta, vf, spec, vspec, config, iteration, i, config.train_cost_limit)
            for i, task in enumerate(tasks)]
    runs = workers.map(inner_loop, jobs, [f"task {i} {task.params}" for i, task in enumerate(tasks)])
    t0 = time.perf_counter()
    outer = outer_step(theta, [r.trace for r in runs], config)
    vf = refit_values(vspec, vf, runs, config)
    outer_time = time.perf_counter() - t0
    metrics = iteration_metrics(tasks, runs, config)
    metrics.update(outer_case=outer.case, outer_beta=outer.beta, F=outer.F, G=outer.G,
                   F_new=outer.F_new, G_new=outer.G_new,
                   time_learner=metrics["time_learner"] + outer_time)
    return outer.theta, vf, metrics


def refit_values(vspec, vf, runs, config):
    """Value functions of ``theta``: one fit on all pre-adaptation batches, warm-started."""
    obs = np.concatenate([r.obs0 for r in runs])
    return tuple(fit_value(vspec, p, obs, np.concatenate([r.targets0[j] for r in runs]), config.vf_iters)
                 for j, p in enumerate(vf))


def iteration_metrics(tasks, runs, config):
    """One ``metrics.jsonl`` row (less the iteration counters): pre-adaptation
    (k = 0) and adapted (last batch) return and cost, per-task numbers, step cases, times."""
    cases = [c for r in runs for c in r.cases]
    return {
        "return": float(np.mean([r.returns[0] for r in runs])),
        "cost": float(np.mean([r.costs[0] for r in runs])),
        "return_adapted": float(np.mean([r.returns[-1] for r in runs])),
        "cost_adapted": float(np.mean([r.costs[-1] for r in runs])),
        "cost_limit": config.train_cost_limit,
        "steps": int(sum(sum(r.steps) for r in runs)),
        "cases": {c: cases.count(c) for c in sorted(set(cases))},
        "tasks": [{"params": t.params, "returns": r.returns, "costs": r.costs, "betas": r.betas}
                  for t, r in zip(tasks, runs)],
        "time_env": float(sum(r.env_time for r in runs)),
        "time_learner": float(sum(r.learner_time for r in runs)),
    }


# --- synthetic traces (for gradcheck, tests, fixtures and bench) ---------------

def synthetic_traces(spec, n_tasks, K, seed, config, T=64, b_fracs=None, betas=None):
    """Seeded synthetic traces, recorded along the nominal chain from ``init_theta``.

    Observations and actions are Gaussian; reward advantages standardised and
    cost advantages centred, as in training. ``b_fracs[i][k]`` (k = 0..K, the
    last for the evaluation batch) sets ``b_hat = frac * sqrt(2 delta s)``
    (``s = a'H^{-1}a`` in ``config.inner_metric``):
    ``|frac| < 1`` is feasible, ``> 1`` infeasible (recovery), strongly negative
    makes the cost constraint inactive. Returns ``(theta, traces)``.
    """
    rng = np.random.default_rng(seed)
    theta = init_theta(spec, seed) + 0.3 * rng.standard_normal(n_params(spec))
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
            s = a @ (fisher_solver(spec, phi, obs, config.cg_damping)(a) if config.inner_metric == "fisher" else a)
            b_hat = float(b_fracs[i, k] * np.sqrt(2 * config.inner_delta * s))
            data = StepData(obs, act, logp, adv_r, adv_c, b_hat, phi, beta)
            if k < K:
                steps.append(data)
                phi = inner_step(spec, phi, data, config)
            else:
                traces.append(Trace(tuple(steps), data))
    return theta, traces

