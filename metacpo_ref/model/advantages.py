"""Value functions, GAE, the surrogates of eq. 9 / eq. 10, and the constraint value ``b``.

For one batch ``D`` collected by the behaviour policy ``pi_beh`` (the policy
whose log-probabilities ``logp_beh`` were stored at collection):

- reward and cost value functions ``V_R``, ``V_C``: the tanh MLP of
  :func:`metacpo_ref.model.policy.mlp` with one output, fitted per batch by scipy
  L-BFGS (``VF_ITERS`` = 25 iterations by default), each fit warm-started from
  the previous fit's parameters;
- GAE(gamma, lambda) advantages for reward and cost (Schulman et al. 2016),
  reset at every episode end: bootstrapped from ``V(bootstrap_obs)`` at a
  time-limit cut, from zero at a true termination;
- reward advantages standardised, cost advantages only centred
  (docs/derivations.md, section 6); their statistics are plain floats, constants for every
  derivative;
- the importance-weighted per-step surrogates (D15)

      L_R(theta) = mean_t exp(log pi_theta(a_t|s_t) - logp_beh_t) A_R_t
      L_C(theta) = mean_t exp(log pi_theta(a_t|s_t) - logp_beh_t) A_C_t

  whose gradients at the behaviour parameters are ``g`` and ``a`` of eq. 9
  (and whose values after adaptation are the meta objective ``F`` and
  constraint ``G`` of eq. 10);
- ``b`` of eq. 9 in the same per-step units: (cost measure - limit) / the
  measure's mean episode weight (D16, D37): the undiscounted episode cost over
  the mean episode length (``episode``), or the paper's discounted ``J_C`` over
  the mean discounted episode length (``discounted``), whose cost surrogate
  weights step t of an episode by ``gamma^t`` (D38; docs/derivations.md, section 12).

Observations arrive already normalised (training wraps the env in
:class:`metacpo_ref.envs.rollouts.NormalizedEnv` with a normaliser frozen for the
whole run), so nothing here rescales them.
"""
from dataclasses import dataclass

import autograd.numpy as anp
import numpy as np
from scipy.optimize import minimize

from metacpo_ref.config import GAE_LAMBDA, GAMMA, VF_HIDDEN, VF_ITERS
from metacpo_ref.model.policy import init_mlp, log_prob, mlp, mlp_layout

ADV_EPS = 1e-8   # floor of the reward-advantage standard deviation


@dataclass(frozen=True)
class ValueSpec:
    """Shapes of a value function: ``obs_dim -> hidden -> 1``."""

    obs_dim: int
    hidden: tuple = VF_HIDDEN

    @property
    def sizes(self):
        return (int(self.obs_dim), *map(int, self.hidden), 1)


@dataclass(frozen=True)
class AdvantageResult:
    """Everything :func:`advantages` computes for one batch.

    ``adv_r = (A_R - r_mean) / r_std`` and ``adv_c = A_C - c_mean`` per step;
    ``targets_r``, ``targets_c`` are the lambda-returns ``A + V`` the value
    functions were fitted to; ``vf_params_r``, ``vf_params_c`` the new
    parameters (pass them to the next call); ``vf_loss_r``, ``vf_loss_c`` the
    mean squared errors ``(before, after)`` the fit.
    """

    adv_r: np.ndarray
    adv_c: np.ndarray
    r_mean: float
    r_std: float
    c_mean: float
    targets_r: np.ndarray
    targets_c: np.ndarray
    vf_params_r: np.ndarray
    vf_params_c: np.ndarray
    vf_loss_r: tuple
    vf_loss_c: tuple


# --- value functions ------------------------------------------------------

def init_value(vspec, seed):
    """Initial value-function parameters from an integer seed (``N(0, 1/n_in)`` weights, zero biases)."""
    return init_mlp(vspec.sizes, np.random.default_rng(seed))


def value(vspec, params, obs):
    """``V(obs)``: ``(T, obs_dim) -> (T,)``."""
    return mlp(vspec.sizes, params, obs)[..., 0]


def value_loss(vspec, params, obs, targets):
    """Mean squared error ``mean_t (V(s_t) - target_t)^2``."""
    return anp.mean((value(vspec, params, obs) - targets) ** 2)


def fit_value(vspec, params, obs, targets, iters=VF_ITERS, ftol=None):
    """Fit ``V`` to ``targets`` by at most ``iters`` L-BFGS iterations (scipy L-BFGS-B), starting at ``params``.

    Warm start: pass the previous fit's parameters as ``params``. Returns new
    parameters (``params`` is not modified); ``iters=0`` returns a copy. ``ftol``:
    stop earlier once an iteration lowers the loss by less than ``ftol * max(loss, 1)``
    (L-BFGS-B's own test; None: scipy's default, 2.2e-9).
    """
    params = np.array(params, dtype=np.float64)
    if iters <= 0:
        return params
    obs = np.asarray(obs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    options = {"maxiter": int(iters)} if ftol is None else {"maxiter": int(iters), "ftol": float(ftol)}
    res = minimize(lambda p: value_loss_and_grad(vspec, p, obs, targets), params, jac=True,
                   method="L-BFGS-B", options=options)
    return np.asarray(res.x, dtype=np.float64)


def value_loss_and_grad(vspec, params, obs, targets):
    """:func:`value_loss` and its gradient by hand-written backpropagation (plain
    NumPy matrix products; the fit is never differentiated through, and this is
    ~3x faster than autograd's generic ``dot`` adjoint). Tested equal to autograd."""
    layout = mlp_layout(vspec.sizes)
    hs = [obs]                                   # inputs of each layer
    for k, (w, shape, c) in enumerate(layout):
        z = hs[-1] @ params[w].reshape(shape) + params[c]
        hs.append(np.tanh(z) if k < len(layout) - 1 else z)
    err = hs[-1][:, 0] - targets
    grad = np.zeros_like(params)
    delta = (2.0 / len(targets)) * err[:, None]  # d loss / d output
    for k in range(len(layout) - 1, -1, -1):
        w, shape, c = layout[k]
        grad[w] = (hs[k].T @ delta).ravel()
        grad[c] = delta.sum(axis=0)
        if k:
            delta = (delta @ params[w].reshape(shape).T) * (1.0 - hs[k] ** 2)
    return float(np.mean(err ** 2)), grad


# --- GAE --------------------------------------------------------------------

def gae(batch, signal, v_obs, v_boot, gamma=GAMMA, lam=GAE_LAMBDA):
    """GAE(gamma, lambda) of one per-step signal (``batch.rew`` or ``batch.cost``).

    ``v_obs[t] = V(s_t)``; ``v_boot[t] = V(bootstrap_obs_t)``, read only where
    ``batch.truncated[t]``. With ``V_next[t]`` equal to ``v_obs[t+1]`` inside
    an episode, ``v_boot[t]`` at a time-limit cut and 0 at a termination:

        delta_t = signal_t + gamma V_next[t] - V(s_t)
        A_t     = delta_t + gamma lam A_{t+1}   (A_{t+1} := 0 at an episode end)

    Returns ``(adv, returns)`` with ``returns = adv + v_obs`` (lambda-returns,
    the value-function targets).
    """
    ends = batch.episode_ends
    if len(ends) == 0 or not ends[-1]:
        raise ValueError("batch must end with a terminated or truncated step")
    signal = np.asarray(signal, dtype=np.float64)
    v_obs = np.asarray(v_obs, dtype=np.float64)
    v_next = np.append(v_obs[1:], 0.0)
    v_next = np.where(batch.truncated, np.asarray(v_boot, dtype=np.float64), v_next)
    v_next = np.where(batch.terminated, 0.0, v_next)   # a termination wins over a cut
    delta = signal + gamma * v_next - v_obs
    decay = gamma * lam * ~ends
    adv = np.zeros_like(delta)
    running = 0.0
    for t in range(len(delta) - 1, -1, -1):
        running = delta[t] + decay[t] * running
        adv[t] = running
    return adv, adv + v_obs


def standardize(adv):
    """``((adv - mean) / std, mean, std)`` with ``std`` floored at ``ADV_EPS``."""
    mean, std = float(np.mean(adv)), max(float(np.std(adv)), ADV_EPS)
    return (adv - mean) / std, mean, std


def center(adv):
    """``(adv - mean, mean)``."""
    mean = float(np.mean(adv))
    return adv - mean, mean


def _values(vspec, params, batch):
    """``V(s_t)`` for every step, ``V(bootstrap_obs_t)`` at time-limit cuts (0 elsewhere)."""
    v_obs = value(vspec, params, batch.obs)
    v_boot = np.zeros(len(batch))
    cut = np.flatnonzero(batch.truncated)
    if cut.size:
        v_boot[cut] = value(vspec, params, batch.bootstrap_obs[cut])
    return v_obs, v_boot


def advantages(vspec, batch, vf_params_r, vf_params_c, gamma=GAMMA, lam=GAE_LAMBDA, iters=VF_ITERS, ftol=None):
    """Reward and cost advantages of ``batch``, then one value fit each.

    Advantages use the value functions passed in (fitted on earlier batches);
    afterwards each value function is refitted on this batch's lambda-returns,
    warm-started from the parameters passed in (``iters``, ``ftol``: :func:`fit_value`).
    Returns an :class:`AdvantageResult`.
    """
    out = {}
    for key, params, signal in (("r", vf_params_r, batch.rew), ("c", vf_params_c, batch.cost)):
        v_obs, v_boot = _values(vspec, params, batch)
        adv, targets = gae(batch, signal, v_obs, v_boot, gamma, lam)
        new = fit_value(vspec, params, batch.obs, targets, iters, ftol)
        out[key] = (adv, targets, new, (float(np.mean((v_obs - targets) ** 2)),
                                        float(value_loss(vspec, new, batch.obs, targets))))
    adv_r, r_mean, r_std = standardize(out["r"][0])
    adv_c, c_mean = center(out["c"][0])
    return AdvantageResult(adv_r=adv_r, adv_c=adv_c, r_mean=r_mean, r_std=r_std, c_mean=c_mean,
                           targets_r=out["r"][1], targets_c=out["c"][1],
                           vf_params_r=out["r"][2], vf_params_c=out["c"][2],
                           vf_loss_r=out["r"][3], vf_loss_c=out["c"][3])


# --- surrogates and the constraint value (eq. 9, eq. 10) ---------------------

def surrogates(spec, batch, adv_r, adv_c, logp_beh):
    """``(L_R, L_C)``: the per-step importance-weighted surrogates as functions of ``theta``.

    ``L_X(theta) = mean_t exp(log_prob(theta, s_t, a_t) - logp_beh_t) * adv_X_t``.
    ``logp_beh`` are the behaviour log-probabilities stored at collection
    (normally ``batch.logp``); they, the advantages, the observations and the
    actions are copied and frozen here, so every derivative (of any order)
    flows only through ``log_prob(theta, ...)``. At the behaviour parameters
    ``grad L_R = g`` and ``grad L_C = a`` of eq. 9.
    """
    obs = np.array(batch.obs, dtype=np.float64)
    act = np.array(batch.act, dtype=np.float64)
    logp_beh = np.array(logp_beh, dtype=np.float64)
    adv_r = np.array(adv_r, dtype=np.float64)
    adv_c = np.array(adv_c, dtype=np.float64)
    if not (logp_beh.shape == adv_r.shape == adv_c.shape == (len(obs),)):
        raise ValueError("logp_beh, adv_r and adv_c must have shape (T,)")

    def ratio(theta):
        return anp.exp(log_prob(spec, theta, obs, act) - logp_beh)

    def L_R(theta):
        return anp.mean(ratio(theta) * adv_r)

    def L_C(theta):
        return anp.mean(ratio(theta) * adv_c)

    return L_R, L_C


def constraint_value(batch, cost_limit, measure="episode", gamma=GAMMA):
    """``b`` of eq. 9 in per-step units (D16, D37): ``(J - cost_limit) / W``, with ``J`` the
    batch's cost in ``measure`` and ``W`` the mean episode weight (:func:`measured_cost`).

    ``episode``: ``(mean episode cost - cost_limit) / mean episode length``, the limit on
    the undiscounted episode cost. ``discounted``: the limit on the paper's ``J_C``. The means run over the
    complete episodes: those that ended by a termination or a time-limit cut.
    A :class:`~metacpo_ref.envs.rollouts.Batch` holds only such episodes (every
    episode ends with a terminated or truncated step; ``collect`` never
    leaves one open), so all of ``batch.ep_cost`` and ``batch.ep_len``
    count; this is checked. Dividing by the mean length puts ``b`` in the
    units of ``L_C`` (a mean over steps), as safety-starter-agents does
    (docs/derivations.md, D16).
    """
    ends = batch.episode_ends
    n_ep = len(batch.ep_cost)
    if n_ep == 0 or int(np.sum(ends)) != n_ep or not ends[-1] or int(np.sum(batch.ep_len)) != len(batch):
        raise ValueError("batch must consist of whole episodes (one terminated/truncated end per episode)")
    J, W = measured_cost(batch, measure, gamma)
    return float((J - cost_limit) / W)


# --- the cost measures (docs/derivations.md, section 12) ------------------------

def step_weights(batch, measure, gamma=GAMMA):
    """The weight ``w_t`` of each step in ``measure`` (D36): 1 (``episode``) or
    ``gamma^tau_t`` (``discounted``), ``tau_t`` the steps since the start of step t's
    episode (0 at its first step; the discount restarts at every episode end)."""
    if measure == "episode":
        return np.ones(len(batch))
    if measure != "discounted":
        raise ValueError(f"unknown cost measure {measure!r}; valid: discounted, episode")
    starts = episode_starts(batch)
    first = np.repeat(starts, np.diff(np.append(starts, len(batch))))   # first step of each step's episode
    return float(gamma) ** (np.arange(len(batch)) - first).astype(np.float64)


def episode_starts(batch):
    """The index of each episode's first step (the step after each episode end)."""
    ends = np.asarray(batch.episode_ends, dtype=bool)
    return np.concatenate([[0], np.flatnonzero(ends[:-1]) + 1])


def measured_cost(batch, measure, gamma=GAMMA):
    """``(J, W)`` of a batch of whole episodes in ``measure`` (D36):

        J = mean_e sum_{t in e} w_t c_t,     W = mean_e sum_{t in e} w_t

    ``episode``: the mean undiscounted episode cost and the mean episode length
    (``batch.ep_cost``, ``batch.ep_len``). ``discounted``: the paper's
    ``J_C = E[sum_t gamma^t C_t]`` (Section 2) from each episode's first step and the
    mean discounted length ``sum_t gamma^t``. An episode cut by the time limit counts
    with the costs it has: nothing is bootstrapped beyond the cut (at gamma = 0.99 the
    steps after 500 could add at most ``gamma^500 / (1 - gamma) = 0.66`` per unit of
    cost per step)."""
    if measure == "episode":
        return float(np.mean(batch.ep_cost)), float(np.mean(batch.ep_len))
    w = step_weights(batch, measure, gamma)
    n_ep = max(len(batch.ep_len), 1)
    return float(np.sum(w * batch.cost) / n_ep), float(np.sum(w) / n_ep)


def episode_measures(batch, gamma=GAMMA):
    """Per episode ``(undiscounted cost, discounted cost J_C)`` of a batch (D36), shapes (E,)."""
    w = step_weights(batch, "discounted", gamma)
    starts = episode_starts(batch)
    disc = np.add.reduceat(w * np.asarray(batch.cost, dtype=np.float64), starts) if len(batch) else np.zeros(0)
    return np.asarray(batch.ep_cost, dtype=np.float64), disc


def authors_cost(batch, gamma=GAMMA):
    """The authors' logged cost, for comparison only (docs/results.md): ``sum_i gamma^i c_i``
    over the whole batch from its first step, the discount never reset at an episode end
    (circle and button episodes are only truncated). Nothing else in the package uses it."""
    cost = np.asarray(batch.cost, dtype=np.float64)
    return float(np.sum(float(gamma) ** np.arange(len(cost), dtype=np.float64) * cost))


def weight_cost_advantages(adv_c, batch, measure, gamma=GAMMA):
    """The centred cost advantages of a batch in ``measure``'s weights (D38):
    ``adv_c * w_t / mean(w)``, so that ``L_C = mean_t rho_t adv_c`` is the
    ``w``-weighted mean ``sum_t w_t rho_t A_C,t / sum_t w_t`` and ``W L_C`` the
    first-order change of ``J`` (D39). ``episode``: ``adv_c`` itself (unchanged to the bit)."""
    if measure == "episode":
        return np.asarray(adv_c, dtype=np.float64)
    w = step_weights(batch, measure, gamma)
    return np.asarray(adv_c, dtype=np.float64) * (w / np.mean(w))
