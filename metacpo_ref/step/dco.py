"""Differentiating the CPO step (DCO, paper eqs. 5-7 applied to eq. 9).
Derivations: docs/derivations.md, section 8 (D20-D28).

The step ``x(g, a, b, delta, H)`` of eq. 9 (D1) solves the KKT conditions

    F1 = -g + lam H x + nu a = 0,   F2 = 0.5 x'Hx - delta = 0,   F3 = b + a'x = 0   (D20)

(F3 and ``nu`` only when the cost constraint is active). By the implicit
function theorem the vector-Jacobian product is ``pbar = -(dF/dp)' w`` with
``K w = (xbar, 0, 0)`` and ``K`` the symmetric KKT matrix (D21, D22). Block
elimination needs one ``H^{-1}`` product, ``v = H^{-1} xbar``, and a 2x2 (or
scalar) solve (D23); for the identity metric everything is O(n) and no n x n
matrix is formed. The recovery step of eq. 4 (D12) solves ``min a'x`` in the
trust region: the same two-block system with ``g`` replaced by ``-a`` and
``lam = sqrt(s / 2 delta)`` (D26).

Shapes: ``g, a, x, xbar`` and their cotangents (n,); ``b``, ``delta`` scalars;
``H`` (n, n) symmetric positive definite, or ``None`` (identity), or
``hinv: v -> H^{-1} v``; ``Hbar`` (n, n), symmetric.

A metric that depends on parameters ``phi`` (Meta-CPO's Fisher-metric local steps) gets
its cotangent as a bilinear form ``p'H(phi)q`` pulled back to ``phi`` by one reverse pass
over the metric-vector product: equations M0-M9 of docs/fisher-metric.md (the same KKT
system with ``H = H(phi)``: M1-M4 are D20-D23; M5, M6 the bilinear ``Hbar``; M7, M8 the
pull-back; M9 the exactness the solve needs).

:func:`cpo_layer` is the step as an ``autograd`` primitive with this VJP. The
generic QP layer of eq. 5 is :mod:`metacpo_ref.step.qp_layer`.
"""
import autograd.numpy as anp
import numpy as np
from autograd import grad
from autograd.extend import defvjp_argnums, primitive
from autograd.tracer import getval

from metacpo_ref.step.cpo import check_inputs, metric_solver, step_from_solver


def _sym(M):
    return 0.5 * (M + M.T)


def trust_block(x, lam, delta, xbar, v):
    """Solve the two-block KKT system (trust region active, D25): ``(u, w2)`` with
    ``w2 = x'xbar / (2 delta)`` and ``u = (v - w2 x) / lam``."""
    w2 = (x @ xbar) / (2 * delta)
    return (v - w2 * x) / lam, w2


def both_block(x, lam, b, delta, a, hinv_a, xbar, v):
    """Solve ``K (u, w2, w3) = (xbar, 0, 0)`` by block elimination (both constraints
    active, D23): ``u = (v - w2 x - w3 H^{-1}a) / lam`` with ``(w2, w3)`` from
    ``x'xbar - 2 delta w2 + b w3 = 0`` and ``a'v + b w2 - s w3 = 0``."""
    s = a @ hinv_a
    c1, c2 = x @ xbar, a @ v
    det = 2 * delta * s - b**2
    w2 = (s * c1 + b * c2) / det
    w3 = (2 * delta * c2 + b * c1) / det
    return (v - w2 * x - w3 * hinv_a) / lam, w2, w3


def case_vjp(step, xbar, a, b, delta, v):
    """``(gbar, abar, bbar, w2, u)`` of a trust, both or recovery step (D24-D26), given
    ``v = H^{-1} xbar``; ``u`` and ``w2`` are what the metric cotangent is made of (D27)."""
    x, lam, nu, hinv_a = step.x, step.lam, step.nu, step.hinv_a
    if step.case == "both":
        u, w2, w3 = both_block(x, lam, b, delta, a, hinv_a, xbar, v)
        return u, -(nu * u + w3 * x), -w3, w2, u
    u, w2 = trust_block(x, lam, delta, xbar, v)
    zero = np.zeros_like(x)
    return ((u, zero, 0.0) if step.case == "trust" else (zero, -u, 0.0)) + (w2, u)


def _metric_bar(lam, u, x, w2):
    """Cotangent of a dense metric, ``Hbar = -sym(lam u x' + 0.5 w2 x x')`` (D27)."""
    return -_sym(lam * np.outer(u, x) + 0.5 * w2 * np.outer(x, x))


def step_vjp(step, xbar, a, b, delta, solve, metric_bar=None):
    """VJP of :class:`~metacpo_ref.step.cpo.Step` ``step.x`` on checked inputs, with
    ``solve: v -> H^{-1} v``; returns ``(gbar, abar, bbar, deltabar, Hbar)`` (D24-D26), one
    ``H^{-1}`` product. The metric's cotangent ``Hbar`` by ``metric_bar``: None (not wanted),
    "dense" (the (n, n) matrix, D27) or "bilinear" (``(p, q)`` with ``<Hbar, E> = p'E q`` for
    symmetric ``E``: M5, M6 of docs/fisher-metric.md; no n x n matrix)."""
    xbar = np.asarray(xbar, dtype=np.float64)
    if step.case == "degenerate":
        return _degenerate_vjp(step, xbar, a, b, solve, metric_bar)
    x, lam = step.x, step.lam
    gbar, abar, bbar, w2, u = case_vjp(step, xbar, a, b, delta, solve(xbar))
    Hbar = None
    if metric_bar == "dense":
        Hbar = _metric_bar(lam, u, x, w2)                                  # D27
    elif metric_bar == "bilinear":
        Hbar = (x, -(lam * u + 0.5 * w2 * x))                              # M5
    return gbar, abar, float(bbar), float(w2), Hbar


def _degenerate_vjp(step, xbar, a, b, solve, metric_bar):
    """Derivative of the minimum-norm point ``x = -(b/s) H^{-1}a`` (or ``x = 0``) along
    the degenerate set (D28; the metric's cotangent M6): ``gbar = deltabar = 0``. A
    one-sided choice: the step is not differentiable in ``g`` there."""
    zero = np.zeros_like(step.x)
    if not np.any(step.x):
        Hbar = {None: None, "dense": np.zeros((zero.size, zero.size)), "bilinear": (zero, zero)}[metric_bar]
        return zero, zero, 0.0, 0.0, Hbar
    y = step.hinv_a
    s = a @ y
    v = solve(xbar)
    av = a @ v
    abar = -(b / s) * v + (2 * b * av / s**2) * y
    if metric_bar == "dense":
        Hbar = _sym((b / s) * np.outer(v, y) - (b * av / s**2) * np.outer(y, y))
    else:
        Hbar = (y, (b / s) * v - (b * av / s**2) * y) if metric_bar == "bilinear" else None     # M6
    return zero, abar, float(-av / s), 0.0, Hbar


def metric_pullback(hvp, phi, p, q):
    """``d/dphi [p' H(phi) q]`` (M7): one reverse pass over ``hvp(phi, q) = H(phi) q``."""
    if not (np.any(p) and np.any(q)):
        return np.zeros_like(phi)
    return grad(lambda t: anp.dot(p, hvp(t, q)))(phi)


def cpo_step_vjp(step, xbar, g, a, b, delta, H=None, hinv=None):
    """VJP of the step of eq. 9 (eqs. 5-7): ``(gbar, abar, bbar, deltabar, Hbar)`` for
    the cotangent ``xbar`` of ``step.x``; ``Hbar`` is ``None`` unless ``H`` is dense."""
    g, a, b, delta, H = check_inputs(g, a, b, delta, H, hinv)
    return step_vjp(step, xbar, a, b, delta, metric_solver(H, hinv), "dense" if H is not None else None)


@primitive
def _layer(g, a, b, delta, H, phi, step=None, solve=None, hvp=None):
    """The step ``x`` of eq. 9; ``step`` was solved from the same arguments."""
    return step.x


def _layer_vjpmaker(argnums, x, args, kwargs):
    _, a, b, delta, _, phi = args
    a_val, delta_val = np.asarray(a, dtype=np.float64), float(delta)
    metric_bar = "dense" if 4 in argnums else "bilinear" if 5 in argnums else None

    def vjp(xbar):
        bars = step_vjp(kwargs["step"], xbar, a_val, float(b), delta_val, kwargs["solve"], metric_bar)
        if 5 in argnums:      # the metric H(phi): its bilinear cotangent pulled back to phi (M7)
            bars = bars[:4] + (None, metric_pullback(kwargs["hvp"], np.asarray(phi, dtype=np.float64), *bars[4]))
        return tuple(bars[i] for i in argnums)

    return vjp


defvjp_argnums(_layer, _layer_vjpmaker)


def cpo_layer_step(g, a, b, delta, H=None, hinv=None, phi=None, hvp=None, method="closed_form"):
    """``(x, step)``: the step ``x`` (n,) of eq. 9 (eq. 4 when infeasible) as a differentiable
    layer (DCO, eqs. 5-7; D20-D28), and its :class:`~metacpo_ref.step.cpo.Step` (case,
    multipliers; plain values). Autograd can differentiate ``x`` in ``g`` (n,), ``a`` (n,),
    the scalars ``b`` and ``delta``, and the metric: a dense ``H`` (n, n), or ``H(phi)``
    given as ``hvp(phi, v) = H(phi) v`` (written with ``autograd.numpy``, differentiated in
    ``phi``: M7, M8 of docs/fisher-metric.md) with ``hinv: v -> H(phi)^{-1} v`` at the value
    of ``phi`` (as exact as the derivative must be: M9). ``hinv`` alone is a constant metric.
    ``method``: the dual's solve (:func:`metacpo_ref.step.cpo.solve_step`)."""
    if phi is not None and (hvp is None or hinv is None or H is not None):
        raise ValueError("a metric H(phi) needs hvp and hinv (its solve at phi), and no dense H")
    gv, av, bv, dv, Hv = check_inputs(getval(g), getval(a), getval(b), getval(delta), getval(H), hinv)
    solve = metric_solver(Hv, hinv)
    step = step_from_solver(gv, av, bv, dv, solve, method=method)
    return _layer(g, a, b, delta, H, phi, step=step, solve=solve, hvp=hvp), step


def cpo_layer(g, a, b, delta, H=None, hinv=None, phi=None, hvp=None):
    """The step ``x`` (n,) of eq. 9 of :func:`cpo_layer_step`, with the closed-form dual (D8-D10)."""
    return cpo_layer_step(g, a, b, delta, H, hinv, phi, hvp)[0]
