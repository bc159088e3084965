"""Meta-CPO's local step with the Fisher metric (``inner_metric="fisher"``, beyond the paper).

Eq. 9 at ``phi_k`` with ``H_k = H(phi_k) + damping I``, the Fisher matrix (the
Hessian of the mean KL, :func:`metacpo_ref.model.policy.fvp`) of ``pi_{phi_k}`` on batch
k's observations, and radius ``inner_delta`` read as a KL radius:

    phi_{k+1} = phi_k + beta_k x(g_k, a_k, b_k, H(phi_k))

differentiated exactly, the terms through ``H(phi_k)`` included, by
:func:`metacpo_ref.step.metric_layer.metric_cpo_layer` (equations M1-M9 there and in
docs/fisher-metric.md): the metric's cotangent is a bilinear form ``p'H(phi)q``
whose gradient in ``phi`` is one reverse pass over the Fisher-vector product.

``H^{-1}`` products are exact (:mod:`metacpo_ref.model.fisher_solve`, M9: an inexact solve
makes an inexact derivative), in the step taken (:func:`metacpo_ref.algos.update.policy_update`)
and in the step differentiated (here) alike.
"""
from autograd.tracer import getval

from metacpo_ref.model.fisher_solve import fisher_hvp, fisher_solver
from metacpo_ref.step.metric_layer import metric_cpo_layer
from metacpo_ref.algos.update import step_problem


def fisher_local_step(spec, phi, data, config, constrained=True, frozen_metric=False):
    """``phi + beta x(g, a, b, H(phi))`` on one batch, differentiable in ``phi`` (M8).

    ``frozen_metric=True`` treats ``H`` as a constant (drops M7): only for showing
    that this gives a wrong derivative."""
    g, a, b = step_problem(spec, phi, data, constrained)
    hvp = fisher_hvp(spec, data.obs, config.cg_damping)
    make_solve = lambda p: fisher_solver(spec, p, data.obs, config.cg_damping)
    x = metric_cpo_layer(g, a, b, config.inner_delta, getval(phi) if frozen_metric else phi, hvp, make_solve)
    return phi + data.beta * x
