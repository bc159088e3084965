"""One CPO (or TRPO) step, one sequence for taking it and for differentiating it (as
learn2learn's ``fast_adapt``: the step taken is the step differentiated):

    step problem (g, a, b at phi) -> metric (H^{-1} at phi) -> recovery shift (D34)
        -> eq. 9's step x -> beta: the line search (D18, D19), or the recorded one

:func:`cpo_step` is the sequence after the step problem; :func:`local_step` gives it one
batch's problem (Algorithm 1, lines 8-9): acting (every algorithm's inner loop, the baselines'
pooled update, meta-testing) or replaying a recorded step differentiably (the chain of eq. 11,
:mod:`metacpo_ref.algos.meta`); the outer step of eq. 12 gives it the meta-gradient.

What differs between acting and replaying, and why (nothing else does):

- the step problem: acting evaluates ``g, a, b`` and the surrogates' values at a plain
  ``phi`` in one pass (:func:`~metacpo_ref.algos.step_problem.step_problem_values`); the
  replay differentiates :func:`~metacpo_ref.algos.step_problem.step_problem` in ``phi``. The
  same formulas; ``b``'s terms are added in another order once a shift is recorded
  (``b_hat + C0 - C0 + shift`` when acting, ``b_hat + shift + L_C - L_C`` in replay), and
  that can differ in the last bit;
- the shift: acting computes D34's from the measured ``b_hat``; the replay reads the
  recorded one (``data.b_shift``, already in ``b``), a constant of the differentiated chain;
- the dual: acting solves it by brentq (D7, :data:`ACT_DUAL`), the replay in closed form
  (D8-D10, :data:`REPLAY_DUAL`). Both are the exact maximiser; they agree to rounding, not
  to the bit, and each is kept so that training runs and the recorded chains of the
  fixtures do not change;
- ``beta``: chosen by the line search when acting, the recorded one in replay;
- the metric: the same ``H^{-1}`` (:meth:`~metacpo_ref.model.metric.Metric.solver`); acting
  remembers ``H^{-1} a`` between the shift and the step (one solve, not two); the replay
  also differentiates through ``H(phi)`` (M7, M8 of docs/fisher-metric.md). With
  ``config.replay_warm_start`` acting records its solves and a replay from (nearly) the same
  ``phi`` starts each CG solve from the recorded solution of the nearest right-hand side
  (:func:`warm_started`): the same tolerance, other floats (the replay's ``g_k`` is computed
  by autograd's nested reverse pass and differs from the step taken's in the last bits).
"""
from dataclasses import dataclass

import numpy as np
from autograd.tracer import getval

from metacpo_ref.algos.line_search import Acceptance, Candidate, backtrack, line_search_values
from metacpo_ref.algos.step_problem import recovery_shift, solve_once, step_problem, step_problem_values
from metacpo_ref.model.metric import local_metric
from metacpo_ref.step.dco import cpo_layer_step

ACT_DUAL = "scipy"            # the dual's solve of a step taken (D7)
REPLAY_DUAL = "closed_form"   # ... and of a step replayed for its derivative (D8-D10)


@dataclass(frozen=True, eq=False)
class Problem:
    """Eq. 9's data at the step's parameters: ``g, a, b`` (D15-D17, autograd boxes in a
    replay); when acting also the measured constraint value ``b_hat`` the recovery rule reads
    (D34) and the values ``R0, C0`` the line search compares with (D19)."""

    g: object
    a: object
    b: object
    b_hat: float = None
    R0: float = None
    C0: float = None


def cpo_step(phi, problem, metric, solve, config, values=None, beta=None, hvp=None):
    """The step from ``phi`` after its step problem: recovery shift -> eq. 9 -> ``beta``.
    ``metric`` gives the radius and the line search's KL bound, ``solve: v -> H^{-1} v``
    (None: ``H = I``) at the value of ``phi``. Returns ``(phi + beta x, step, shift, found)``.

    Acting (``values: cand -> (mean KL from phi, R, C)``): the shift of D34 on
    ``problem.b_hat``, the dual by brentq, ``beta`` by backtracking (D18) under the rule
    :class:`~metacpo_ref.algos.line_search.Acceptance` (D19; ``beta = 0`` if none is
    accepted); ``found`` the accepted :class:`~metacpo_ref.algos.line_search.Candidate`.
    Replaying (``beta``: the recorded fraction): shift 0.0 (the recorded one is in
    ``problem.b``), the closed-form dual, ``found`` None; with ``hvp(phi, v) = H(phi) v`` the
    metric depends on ``phi`` and is differentiated too (M7, M8)."""
    if (values is None) == (beta is None):
        raise ValueError("give exactly one of values (act: the line search chooses beta) and beta (replay)")
    acting = values is not None
    shift, found = 0.0, None
    if acting:
        solve = solve if solve is None else solve_once(solve)
        shift = recovery_shift(problem.b_hat, problem.a, solve, metric.delta, config)
    b = problem.b + shift if acting else problem.b
    x, step = cpo_layer_step(problem.g, problem.a, b, metric.delta, hinv=solve,
                             phi=None if hvp is None else phi, hvp=hvp, method=ACT_DUAL if acting else REPLAY_DUAL)
    if acting:
        accepts = Acceptance(problem.R0, problem.C0, b, metric.kl_bound, step.case == "recovery", config.constrained)
        found = backtrack(lambda frac: Candidate(frac, *values(phi + frac * x)), accepts,
                          config.ls_decay, config.ls_steps)
        beta = 0.0 if found is None else found.beta
    return phi + beta * x, step, shift, found


@dataclass(frozen=True, eq=False)
class Update:
    """A local step taken: new parameters, the step's ``case``, its multipliers ``lam``
    and ``nu`` (eq. 9; ``nu`` NaN in recovery), the accepted fraction ``beta`` (0:
    rejected), the surrogate changes it achieved, and the constant ``b_shift``
    (:func:`~metacpo_ref.algos.step_problem.recovery_shift`) that was added to ``b``."""

    phi: np.ndarray
    case: str
    beta: float
    dL_R: float
    dL_C: float
    lam: float
    nu: float
    b_shift: float = 0.0
    solved: tuple = ()


REPLAY_NEAR = 1e-6   # a replay's phi within this relative distance of the acting one starts warm


def recorded(solve):
    """``(solve', pairs)``: ``solve`` (``v -> H^{-1} v``; None for ``H = I``) that appends
    each ``(v, H^{-1} v)`` it computes to the list ``pairs``."""
    pairs = []
    if solve is None:
        return None, pairs

    def solve_recorded(v):
        y = solve(v)
        pairs.append((np.array(v, dtype=np.float64), y))
        return y

    return solve_recorded, pairs


def warm_started(solve, pairs):
    """``solve`` (``(v, x0) -> H^{-1} v``, CG from ``x0``) started from the recorded solution
    of the right-hand side in ``pairs`` nearest to ``v`` when that is within ``REPLAY_NEAR``
    (one product when it already meets the tolerance for this ``H`` and ``v``); other
    right-hand sides (the reverse passes') from 0, as before."""
    def solve_warm(v):
        dist, y = min((np.linalg.norm(w - v), y) for w, y in pairs)
        return solve(v, x0=y if dist <= REPLAY_NEAR * np.linalg.norm(v) else None)

    return solve_warm


def local_step(spec, phi, data, metric, config, act=False):
    """One local step of eq. 9 on the batch ``data`` in ``metric`` (Algorithm 1, lines
    8-9): the step problem at ``phi`` (D15-D17), then :func:`cpo_step`.

    ``act``: take the step from a plain ``phi``, returning an :class:`Update`. Otherwise
    replay the recorded step (``data.beta``, ``data.b_shift``), differentiable in ``phi``:
    returns ``phi_{k+1} = phi_k + beta_k x(g_k, a_k, b_k, H(phi_k))`` (eq. 9 in the chain of
    eq. 11; with the Fisher metric M0, M8)."""
    if not act:
        g, a, b = step_problem(spec, phi, data, config.constrained)
        solve = metric.solver(spec, getval(phi), data.obs)
        if solve is not None and data.solved and (np.linalg.norm(getval(phi) - data.phi)
                                                  <= REPLAY_NEAR * np.linalg.norm(data.phi)):
            solve = warm_started(solve, data.solved)
        return cpo_step(phi, Problem(g, a, b), metric, solve, config, beta=data.beta,
                        hvp=metric.hvp(spec, data.obs))[0]
    phi = np.asarray(phi, dtype=np.float64)
    g, a, b, R0, C0 = step_problem_values(spec, phi, data, config.constrained)
    solve, solved = metric.solver(spec, phi, data.obs), []
    if config.replay_warm_start:
        solve, solved = recorded(solve)
    new, step, shift, found = cpo_step(phi, Problem(g, a, b, b_hat=data.b_hat, R0=R0, C0=C0), metric, solve,
                                       config, values=line_search_values(spec, phi, data))
    dR, dC = (0.0, 0.0) if found is None else (float(found.R - R0), float(found.C - C0))
    return Update(new, step.case, 0.0 if found is None else found.beta, dR, dC, step.lam, step.nu, shift,
                  tuple(solved))


def policy_update(spec, phi, data, config):
    """One update of eq. 9 on ``data`` with backtracking, by the algorithm's own rule
    (:func:`metacpo_ref.model.metric.local_metric`; CPO steps for meta-cpo and cpo,
    trust-region steps for meta-trpo and trpo): :func:`local_step` acting.

    ``H = I``: the paper's Euclidean local step (0.5 ||x||^2 <= delta, kept by every
    fraction of the step); the line search bounds the mean KL by ``config.ls_kl``. The
    Fisher matrix: CPO's KL trust region (the baselines: by CG with ``config``'s settings;
    Meta-CPO's local steps: the exact ``H^{-1}``, so that the step taken is the step
    differentiated); the line search bounds the mean KL by the radius. Acceptance: (D19).
    Above the limit the step is the recovery step (D34), with ``config.recover_above_limit``.
    """
    return local_step(spec, phi, data, local_metric(config), config, act=True)
