"""The CPO step with a parameter-dependent metric ``H(phi)``, differentiated exactly.

Pure math, no policy: the caller supplies the metric as functions of ``phi``.
Derivation (docs/fisher-metric.md has the long form; equation numbers M1-M9).

The local step at ``phi`` solves eq. 9 with ``H = H(phi)``; its KKT system is

    F1 = -g + lam H(phi) x + nu a = 0                                    (M1)
    F2 = 0.5 x'H(phi)x - delta    = 0                                    (M2)
    F3 = b + a'x                  = 0   (cost constraint active only)    (M3)

with ``g, a, b`` themselves functions of ``phi``. The implicit function theorem
gives the VJP for the cotangent ``xbar`` of ``x``: solve

    K (u, w2, w3) = (xbar, 0, 0),  K = [[lam H, Hx, a], [(Hx)', 0, 0], [a', 0, 0]]   (M4)

(block elimination, one product ``v = H^{-1} xbar``: :func:`metacpo_ref.step.dco.trust_block`,
:func:`~metacpo_ref.step.dco.both_block`), then ``pbar = -(dF/dp)' (u, w2, w3)``. For the
metric, ``dF1/dH [E] = lam E x`` and ``dF2/dH [E] = 0.5 x'E x``, so for every
symmetric direction ``E``

    <Hbar, E> = -lam u'E x - 0.5 w2 x'E x = x' E q,   q = -(lam u + 0.5 w2 x)    (M5)

(``Hbar = -sym(lam u x' + 0.5 w2 x x')`` of :func:`metacpo_ref.step.dco.step_vjp`, a
symmetric rank-2 matrix, written as the bilinear form ``x' E q``). The recovery
step of eq. 4 is the same two-block system with ``g -> -a`` (M5 holds as is);
the degenerate minimum-norm step ``x = -(b/s) y``, ``y = H^{-1}a``, gives

    <Hbar, E> = y' E ((b/s) v - (b a'v / s^2) y).                             (M6)

Through ``H(phi)`` the cotangent pulls back to

    phibar_H = d/dphi [ p' H(phi) q ]   with p, q held fixed                    (M7)

(``p = x`` in M5, ``p = y`` in M6): the gradient of ONE scalar bilinear form,
one reverse pass over the metric-vector product ``hvp(phi, q) = H(phi) q``. No
``n x n`` matrix. For the Fisher matrix ``H(phi) = d^2/dphi'^2 KL(pi_phi || pi_phi')``
(plus damping) this is a third derivative of the log-density: the
"third-order term". The full cotangent of ``phi`` for one step
``phi' = phi + beta x(g(phi), a(phi), b(phi), H(phi))`` is

    phibar = phi'bar + beta [ J_g' gbar + J_a' abar + (db/dphi) bbar + phibar_H ]   (M8)

(the first three by autograd through the surrogates; M7 by this layer).

Exactness. The derivative is exact only if ``v = H^{-1} xbar`` and the forward
products ``H^{-1} g``, ``H^{-1} a`` are: with ``make_solve(phi)`` returning an
inexact solver (conjugate gradient), the error of the derivative is about the
solver's relative residual times the condition number of ``H``.           (M9)
"""
import numpy as np
import autograd.numpy as anp
from autograd import grad
from autograd.extend import defvjp_argnums, primitive
from autograd.tracer import getval

from metacpo_ref.step.cpo import check_inputs, step_from_solver
from metacpo_ref.step.dco import case_vjp


def metric_step_vjp(step, xbar, a, b, delta, solve):
    """VJP of the step on checked inputs with ``solve: v -> H^{-1} v``:
    ``(gbar, abar, bbar, deltabar, (p, q))`` with the metric cotangent in low-rank
    form, ``<Hbar, E> = p'E q`` for symmetric ``E`` (M5, M6). Same ``gbar, abar,
    bbar, deltabar`` as :func:`metacpo_ref.step.dco.step_vjp`, one ``H^{-1}`` product."""
    xbar = np.asarray(xbar, dtype=np.float64)
    x, lam, hinv_a = step.x, step.lam, step.hinv_a
    zero = np.zeros_like(x)
    if step.case == "degenerate":
        if not np.any(x):
            return zero, zero, 0.0, 0.0, (zero, zero)
        y, s = hinv_a, a @ hinv_a
        v = solve(xbar)
        av = a @ v
        abar = -(b / s) * v + (2 * b * av / s**2) * y
        return zero, abar, float(-av / s), 0.0, (y, (b / s) * v - (b * av / s**2) * y)       # M6
    gbar, abar, bbar, w2, u = case_vjp(step, xbar, a, b, delta, solve(xbar))
    return gbar, abar, float(bbar), float(w2), (x, -(lam * u + 0.5 * w2 * x))                # M5


def metric_pullback(hvp, phi, p, q):
    """``d/dphi [p' H(phi) q]`` (M7): one reverse pass over ``hvp(phi, q) = H(phi) q``."""
    if not (np.any(p) and np.any(q)):
        return np.zeros_like(phi)
    return grad(lambda t: anp.dot(p, hvp(t, q)))(phi)


@primitive
def _metric_layer(g, a, b, delta, phi, step=None, solve=None, hvp=None):
    """The step ``x`` of eq. 9 with ``H = H(phi)``; ``step`` was solved from the same arguments."""
    return step.x


def _metric_layer_vjpmaker(argnums, x, args, kwargs):
    _, a, b, delta, phi = args
    a_val, phi_val = np.asarray(a, dtype=np.float64), np.asarray(phi, dtype=np.float64)

    def vjp(xbar):
        gbar, abar, bbar, dbar, (p, q) = metric_step_vjp(kwargs["step"], xbar, a_val, float(b), float(delta),
                                                          kwargs["solve"])
        bars = (gbar, abar, bbar, dbar,
                metric_pullback(kwargs["hvp"], phi_val, p, q) if 4 in argnums else None)
        return tuple(bars[i] for i in argnums)

    return vjp


defvjp_argnums(_metric_layer, _metric_layer_vjpmaker)


def metric_cpo_layer(g, a, b, delta, phi, hvp, make_solve):
    """The step of eq. 9 (eq. 4 when infeasible) with the metric ``H(phi)``, as a layer
    differentiable in ``g, a, b, delta`` and ``phi`` (through ``H(phi)``, M7).

    ``hvp(phi, v) = H(phi) v`` must be written with ``autograd.numpy`` (it is
    differentiated in ``phi``); ``make_solve(phi)`` returns ``v -> H(phi)^{-1} v``
    (exact, or as exact as the derivative needs: M9)."""
    gv, av, bv, dv, _ = check_inputs(getval(g), getval(a), getval(b), getval(delta))
    phiv = np.asarray(getval(phi), dtype=np.float64)
    solve = make_solve(phiv)
    step = step_from_solver(gv, av, bv, dv, solve, method="closed_form")
    return _metric_layer(g, a, b, delta, phi, step=step, solve=solve, hvp=hvp)
