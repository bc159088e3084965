"""Meta-CPO, paper Algorithm 1: K local CPO steps per task (eq. 9), the meta
objective and constraint (eq. 10), their exact gradient through the local
steps (eq. 11, by DCO), and the outer CPO step on the meta-parameters (eq. 12).
Derivation with numbered equations: docs/derivations.md, section 13 (D40-D44).

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
    G = mean_i b_hat_eval + L_C,eval(phi_K) - L_C,eval(phi_K^collected)         (eq. 10; D40, D41)

``meta_gradient`` differentiates (F, G) in reverse mode: autograd through the
surrogates (second-order terms kept: ``g_k``, ``a_k`` are themselves
differentiated) and :func:`metacpo_ref.step.dco.cpo_layer`'s hand-written KKT VJP
through each step (D42, D43). That is eq. 11's product of step Jacobians with "all of
the partial derivatives" (through ``g``, ``a`` and ``b``), exactly.

The local steps are the inner loop's own (:func:`metacpo_ref.algos.local_step.local_step`,
replaying). With the Fisher metric (``inner_metric``, beyond the paper) the local step is
``phi_k + beta_k x(g_k, a_k, b_k, H(phi_k))`` with the Fisher matrix of batch k at ``phi_k``
(M0), and the derivative adds the terms through ``H(phi_k)`` (M7, M8 of
docs/fisher-metric.md; :func:`metacpo_ref.step.dco.cpo_layer`).

Not included: the derivative of the sampling distribution of the batches
(the DiCE/ProMP terms). Eq. 11 does not have them, and neither do we; the
behaviour log-probs are stored data, never recomputed from the ``phi`` being
differentiated (that would make every ratio 1 and silently drop terms).
"""
from dataclasses import dataclass

import autograd.numpy as anp
import numpy as np
from autograd import make_vjp

from metacpo_ref.algos.iteration import json_float, run_iteration
from metacpo_ref.algos.local_step import Problem, cpo_step, local_step
from metacpo_ref.model.advantages import surrogates
from metacpo_ref.model.metric import inner_metric, outer_metric
from metacpo_ref.model.policy import PolicySpec, mean_kl


def policy_spec(traces, config):
    """The policy shape of ``traces`` with ``config.hidden`` layers."""
    d = traces[0].eval
    return PolicySpec(d.obs.shape[1], d.act.shape[1], tuple(config.hidden))


def adapted_params(theta, trace, spec, config):
    """``phi_K`` of one task: the K recorded local steps replayed from ``theta`` (eq. 9 in
    :func:`~metacpo_ref.model.metric.inner_metric`, differentiable in ``theta``)."""
    phi, metric = theta, inner_metric(config)
    for data in trace.steps:
        phi = local_step(spec, phi, data, metric, config)
    return phi


def task_objective(theta, trace, spec, config):
    """``(F_i, G_i)`` of eq. 10 (D41) for one task (differentiable in ``theta``)."""
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


def task_objective_job(env, theta, trace, config):
    """One task's ``(F_i, G_i)`` of eq. 10 at a plain ``theta``, as a job for the workers
    (``env`` unused)."""
    F, G = task_objective(np.asarray(theta, dtype=np.float64), trace, policy_spec([trace], config), config)
    return float(F), float(G)


def meta_objective_on(workers, theta, traces, config):
    """:func:`meta_objective` with the tasks' parts computed on ``workers`` (a
    :class:`~metacpo_ref.envs.workers.Workers`), each where the pool puts it: the same
    floats (the tasks' values are summed here, in task order, as :func:`_objective` sums them)."""
    FG = workers.map(task_objective_job, [(theta, tr, config) for tr in traces],
                     [f"task {i}: the outer line search's F, G" for i in range(len(traces))])
    m = len(FG)
    return float(sum(f for f, _ in FG) / m), float(sum(g for _, g in FG) / m)


def meta_gradient(theta, traces, config):
    """``(F, G, dF/dtheta, dG/dtheta)``: eq. 11 (D43), one forward and two reverse passes."""
    vjp, FG = make_vjp(lambda t: _objective(t, traces, config))(np.asarray(theta, dtype=np.float64))
    return float(FG[0]), float(FG[1]), vjp(np.array([1.0, 0.0])), vjp(np.array([0.0, 1.0]))


def task_gradient(theta, trace, config):
    """One task's part of eq. 11, ``(F_i, G_i, dF_i/dtheta, dG_i/dtheta)``, computed where
    the task's data is (``config.split_meta_gradient``); :func:`gradient_from_parts` sums them."""
    spec = policy_spec([trace], config)
    vjp, FG = make_vjp(lambda t: anp.stack(task_objective(t, trace, spec, config)))(
        np.asarray(theta, dtype=np.float64))
    return float(FG[0]), float(FG[1]), vjp(np.array([1.0, 0.0])), vjp(np.array([0.0, 1.0]))


def gradient_from_parts(parts):
    """``(F, G, dF, dG)`` of eqs. 10-11 from the tasks' :func:`task_gradient` parts: means
    over tasks. ``F`` and ``G`` are the same floats as :func:`meta_gradient`'s; ``dF`` and
    ``dG`` equal its gradients up to rounding (its single reverse pass adds the tasks'
    terms in another order)."""
    m = len(parts)
    return (sum(p[0] for p in parts) / m, sum(p[1] for p in parts) / m,
            sum(p[2] for p in parts) / m, sum(p[3] for p in parts) / m)


# --- the outer step (eq. 12, Algorithm 1 lines 13-14) -------------------------

@dataclass(frozen=True, eq=False)
class OuterResult:
    """The outer step: new ``theta``, the step's ``case`` and multipliers ``lam``, ``nu``
    (eq. 9 with ``g = dF``, ``a = dG``, ``b = G``; ``nu`` NaN in recovery), accepted
    fraction ``beta`` (0: rejected), ``(F, G)`` before and after, and the gradients."""

    theta: np.ndarray
    case: str
    beta: float
    F: float
    G: float
    F_new: float
    G_new: float
    dF: np.ndarray
    dG: np.ndarray
    lam: float
    nu: float


def outer_step(theta, traces, config, parts=None, objective=None):
    """Eq. 12 (D44): a CPO step on ``theta`` with ``g = dF``, ``a = dG``, ``b = G`` and radius
    ``config.outer_delta`` (the recovery step of eq. 4 when infeasible, or, with
    ``config.recover_above_limit``, whenever ``G > 0``: D34), then the backtracking line
    search (D18, D19) that re-evaluates :func:`meta_objective` on the same traces and keeps
    the mean KL from ``theta`` on the pre-adaptation batches within the metric's bound:
    the acting sequence of :func:`metacpo_ref.algos.local_step.cpo_step`. Metric
    (:func:`~metacpo_ref.model.metric.outer_metric`): the paper's ``H = I`` (KL bound
    ``config.ls_kl``) or the Fisher matrix of the pre-adaptation batches at ``theta`` (CG;
    KL bound ``outer_delta``). Meta-TRPO (``config.constrained`` False) takes the
    trust-region step on ``dF`` alone. ``parts``: the tasks' :func:`task_gradient` parts,
    computed already (``config.split_meta_gradient``). ``objective(cand) -> (F, G)``: how the
    line search evaluates eq. 10 (default :func:`meta_objective`; the iteration passes
    :func:`meta_objective_on` its workers)."""
    theta = np.asarray(theta, dtype=np.float64)
    spec = policy_spec(traces, config)
    F, G, dF, dG = meta_gradient(theta, traces, config) if parts is None else gradient_from_parts(parts)
    obs0 = np.concatenate([tr.steps[0].obs if tr.steps else tr.eval.obs for tr in traces])
    metric = outer_metric(config)
    a, b = (dG, G) if config.constrained else (np.zeros_like(dF), -1.0)     # Meta-TRPO: the cost never binds
    problem = Problem(dF, a, b, b_hat=G, R0=F, C0=G)

    objective = objective or (lambda cand: meta_objective(cand, traces, config))

    def values(cand):
        F1, G1 = objective(cand)
        return mean_kl(spec, theta, cand, obs0), F1, G1

    theta_new, step, _, found = cpo_step(theta, problem, metric, metric.solver(spec, theta, obs0), config, values)
    beta, F1, G1 = (0.0, F, G) if found is None else (found.beta, found.R, found.C)
    return OuterResult(theta_new, step.case, beta, F, G, F1, G1, dF, dG, step.lam, step.nu)


# --- Algorithm 1: one meta-iteration on the simulator ---------------------------

def meta_iteration(theta, vf, config, iteration, workers):
    """Algorithm 1, lines 3-14: the frame of :func:`metacpo_ref.algos.iteration.run_iteration`
    (``config.tasks`` sampled training tasks, each with ``config.local_steps`` local
    CPO steps of eq. 9, value functions refitted on the pre-adaptation batches) with
    the outer step of eq. 12 on the recorded traces as the algorithm's own step
    (with ``config.split_meta_gradient``, each task's part of eq. 11 is computed at the
    end of its inner loop, on the worker that holds its data; the line search's
    evaluations of eq. 10 are shared out to the workers task by task). Returns
    ``(theta_new, vf_new, metrics)``."""

    def learn(theta, runs):
        parts = [r.part for r in runs] if config.split_meta_gradient else None
        traces = [r.trace for r in runs]
        outer = outer_step(theta, traces, config, parts,
                           objective=lambda cand: meta_objective_on(workers, cand, traces, config))
        cases = [c for r in runs for c in r.cases]
        return outer.theta, {
            "return_adapted": float(np.mean([r.returns[-1] for r in runs])),
            "cost_adapted": float(np.mean([r.costs[-1] for r in runs])),
            "cost_adapted_episode": float(np.mean([r.costs_episode[-1] for r in runs])),
            "cases": {c: cases.count(c) for c in sorted(set(cases))},
            "outer_case": outer.case, "outer_beta": outer.beta, "outer_lam": outer.lam,
            "outer_nu": json_float(outer.nu), "F": outer.F, "G": outer.G, "F_new": outer.F_new,
            "G_new": outer.G_new}

    return run_iteration(theta, vf, config, iteration, workers, config.local_steps, learn,
                         task_gradient if config.split_meta_gradient else None)
