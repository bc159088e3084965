"""Golden fixtures for ports: the inputs and outputs of every numerical block.

A port of metacpo_ref (another language, framework or precision) checks
itself block by block against a fixture set: one ``<block>.npz`` per block
holding its input and output arrays, and one ``manifest.json`` describing
each block (meaning, shape, dtype and SHA-256 of each array, tolerances, the
package version). Every problem is small, seeded and synthetic (no
simulator), so simulator versions never change a fixture.
See ``docs/porting.md``.

Each block is a pair of plain functions:

- ``make_<block>() -> (inputs, outputs, meta)``: seeded inputs, the reference
  outputs (``compute_<block>(inputs)``), and ``meta``: ``description``,
  ``function`` (what it exercises), ``rtol``, ``atol``, ``tolerance_reason``
  and ``meanings`` (one sentence per array);
- ``compute_<block>(inputs) -> outputs``: the reference code on stored inputs.

:data:`BLOCKS` lists ``(name, make, compute)``. Adding a block is one entry
there and its two functions. Not covered: the L-BFGS value fit (scipy's
L-BFGS-B iterates are not reproducible by another optimiser; its loss and
gradient are a block), the sampling of actions and tasks (numpy's generators).
The generic QP layer of paper eq. 5 is the block ``qp_layer``.

The stored inputs keep the name ``kl_delta`` (the format of the committed
sets): in ``policy_update_*`` and ``outer_step`` it is the line search's
mean-KL bound, ``Config.ls_kl``. The newer blocks (recover rule, line searches) store every radius
under its Config name (``inner_delta``, ``outer_delta``, ``ls_kl``,
``baseline_delta``; all four differ), have the recover rule (D34) on, and record
every line-search decision (``tried_*``, ``rejected_*``); the older blocks have
it off (their descriptions say which).

Arrays: float64, int64 or bool, C order, little-endian; scalars are 0-d
arrays. The hash of an array is SHA-256 of those raw bytes
(``x.tobytes(order="C")``). An output passes when
``max|port - stored| <= atol + rtol * max|stored|`` (NaN where stored NaN;
integer outputs exactly).
"""
import contextlib
import dataclasses
import json
from functools import partial

import numpy as np

from metacpo_ref.checks import fixture_files as files
from metacpo_ref.algos import local_step
from metacpo_ref.model.advantages import (ValueSpec, authors_cost, center, constraint_value, gae, init_value,
                                    measured_cost, standardize, step_weights, surrogates, value_loss_and_grad,
                                    weight_cost_advantages)
from metacpo_ref.config import CG_DAMPING, CG_ITERS, GAE_LAMBDA, GAMMA, PAPER, Config
from metacpo_ref.step.cpo import CASES, cg, solve_step
from metacpo_ref.step.dco import cpo_layer, cpo_step_vjp
from metacpo_ref.model.fisher_solve import fisher_matrix
from metacpo_ref.checks.gradcheck import cpo_instance, meta_problem, meta_problem_fisher, qp_instance, step_margin
from metacpo_ref.algos.iteration import Trace
from metacpo_ref.algos.meta import meta_gradient, meta_objective, outer_step
from metacpo_ref.model.policy import PolicySpec, act_fn, fvp, init_theta, log_prob, mean_kl, n_params
from metacpo_ref.step.qp_layer import qp_vjp, solve_qp
from metacpo_ref.envs.rollouts import Batch, ObsNorm, fit_obs_norm
from metacpo_ref.algos.local_step import policy_update
from metacpo_ref.algos.step_data import StepData
from metacpo_ref.algos.step_problem import recovery_shift, step_problem
from metacpo_ref.model.metric import local_metric


# Tolerances (rtol, atol, reason). Measured here: perturbing every float input of a
# block by a relative 1e-14 moves its outputs by at most ~1e-13 relative (closed-form
# blocks), ~1e-12 (surrogate gradients, the meta chain: cancellation in centred sums
# and amplification along the K steps) and ~4e-11 (the line-search surrogate changes
# dL_C, a difference of nearby values). Every problem sits far from a case boundary
# and from a line-search tie, so discrete outputs (case, accepted fraction) are stable.
EXACT = (1e-9, 1e-12, "closed-form float64 arithmetic: 1e-14 input perturbations move the outputs by "
                      "<= ~1e-12 relative, so a float64 port agrees to ~1e-12 whatever its summation "
                      "order or libm; 1e-9 leaves room for that and still catches any real bug")
META = (1e-9, 1e-12, "closed-form float64 arithmetic (local steps by the exact case analysis, no "
                     "iterative solver) through K steps, second-order autograd and the KKT VJP: "
                     "rounding is amplified ~100x along the chain (measured), to ~1e-13 for a float64 "
                     "port; 1e-9 leaves room and still catches any real bug")
DUAL = (1e-6, 1e-9, "lam is a root of the 1-D dual found by an iterative solver (scipy brentq, here to "
                    "machine precision); a port may instead use the exact case analysis of Achiam et al. "
                    "(agrees to ~5e-16 here) or a root finder stopped earlier: 1e-6 allows that")
CG = (1e-6, 1e-9, "conjugate gradient, an iterative solver: a port with a slightly different stopping "
                  "test or recurrence lands within the solver tolerance of the same answer, not "
                  "bit-for-bit (the same recurrence reproduces the stored iterates to ~1e-13)")
OUTER = (1e-6, 1e-9, "the outer step solves eq. 12 through the scipy dual (iterative root find, see the "
                     "solve_step blocks) and re-evaluates eq. 10 in the line search; the accepted "
                     "fraction is discrete and must be equal (it is far from a tie here)")

POLICY_SPEC = PolicySpec(obs_dim=5, act_dim=2, hidden=(8, 6))


def _f(x):
    return np.array(x, dtype="<f8", order="C")


def _i(x):
    return np.array(x, dtype="<i8", order="C")


def _b(x):
    return np.array(x, dtype=bool, order="C")


def _meta(description, function, tol, meanings):
    rtol, atol, reason = tol
    return {"description": description, "function": function, "rtol": rtol, "atol": atol,
            "tolerance_reason": reason, "meanings": meanings}


def _spec(inputs):
    sizes = [int(v) for v in inputs["sizes"]]
    return PolicySpec(sizes[0], sizes[-1], tuple(sizes[1:-1]))


SIZES_MEANING = ("layer widths (obs_dim, *hidden, act_dim) of the tanh MLP mean network; theta is laid "
                 "out layer by layer, W (n_in, n_out) row-major then bias, log-stds last")
THETA_MEANING = "flat policy parameters (layout: see sizes and docs/porting.md)"
CASE_MEANING = "index of the step's case in " + json.dumps(list(CASES))


def _policy_inputs(seed, T=16):
    """Policy-block inputs: parameters well away from init (log-stds varied), data."""
    rng = np.random.default_rng(seed)
    theta = init_theta(POLICY_SPEC, seed) + 0.3 * rng.standard_normal(n_params(POLICY_SPEC))
    return rng, {"sizes": _i(POLICY_SPEC.sizes), "theta": _f(theta),
                 "obs": _f(rng.standard_normal((T, POLICY_SPEC.obs_dim)))}


# --- policy.py -------------------------------------------------------------------

def compute_policy_log_prob(inp):
    return {"logp": _f(log_prob(_spec(inp), inp["theta"], inp["obs"], inp["act"]))}


def make_policy_log_prob():
    rng, inp = _policy_inputs(101)
    inp["act"] = _f(rng.standard_normal((len(inp["obs"]), POLICY_SPEC.act_dim)))
    return inp, compute_policy_log_prob(inp), _meta(
        "log-density of a diagonal Gaussian whose mean is the tanh MLP and whose log-std is theta's tail",
        "metacpo_ref.model.policy.log_prob", EXACT,
        {"sizes": SIZES_MEANING, "theta": THETA_MEANING, "obs": "observations (T, obs_dim), already normalised",
         "act": "actions (T, act_dim), unclipped", "logp": "log pi_theta(act_t | obs_t) per row (T,)"})


def compute_policy_mean_kl(inp):
    return {"kl": _f(mean_kl(_spec(inp), inp["theta_old"], inp["theta"], inp["obs"]))}


def make_policy_mean_kl():
    rng, inp = _policy_inputs(102)
    inp["theta_old"] = inp.pop("theta")
    inp["theta"] = _f(inp["theta_old"] + 0.1 * rng.standard_normal(len(inp["theta_old"])))
    return inp, compute_policy_mean_kl(inp), _meta(
        "mean over states of KL(pi_theta_old(.|s) || pi_theta(.|s)) (TRPO's direction)",
        "metacpo_ref.model.policy.mean_kl", EXACT,
        {"sizes": SIZES_MEANING, "theta_old": "parameters of the old policy (first KL argument)",
         "theta": "parameters of the new policy (second KL argument)", "obs": "states (T, obs_dim)",
         "kl": "mean_t sum_j KL of the per-dimension Gaussians, scalar"})


def compute_policy_fvp(inp):
    return {"Fv": _f(fvp(_spec(inp), inp["theta"], inp["obs"], inp["v"], float(inp["damping"])))}


def make_policy_fvp():
    rng, inp = _policy_inputs(103)
    inp["v"] = _f(rng.standard_normal(len(inp["theta"])))
    inp["damping"] = _f(CG_DAMPING)
    return inp, compute_policy_fvp(inp), _meta(
        "Fisher-vector product (H + damping I) v, H the Hessian of mean_kl(theta, .) at theta",
        "metacpo_ref.model.policy.fvp", EXACT,
        {"sizes": SIZES_MEANING, "theta": THETA_MEANING, "obs": "states (T, obs_dim)",
         "v": "the vector (n,)", "damping": "damping added to the Fisher matrix",
         "Fv": "(H + damping I) v (n,)"})


class _FixedNoise:
    """A stand-in generator whose standard_normal returns stored noise, row by row."""

    def __init__(self, eps):
        self.rows = iter(eps)

    def standard_normal(self, size):
        return next(self.rows)


def compute_policy_act(inp):
    spec = _spec(inp)
    sample, mean = act_fn(spec, inp["theta"]), act_fn(spec, inp["theta"], deterministic=True)
    noise = _FixedNoise(inp["eps"])
    drawn = [sample(o, noise) for o in inp["obs"]]
    means = [mean(o, None) for o in inp["obs"]]
    return {"act": _f([a for a, _ in drawn]), "logp": _f([lp for _, lp in drawn]),
            "act_mean": _f([a for a, _ in means]), "logp_mean": _f([lp for _, lp in means])}


def make_policy_act():
    rng, inp = _policy_inputs(104, T=6)
    inp["eps"] = _f(rng.standard_normal((len(inp["obs"]), POLICY_SPEC.act_dim)))
    return inp, compute_policy_act(inp), _meta(
        "acting: a = mu(obs) + exp(log_std) * eps with the noise eps given (the generator is not "
        "part of the fixture), and the deterministic mean action",
        "metacpo_ref.model.policy.act_fn", EXACT,
        {"sizes": SIZES_MEANING, "theta": THETA_MEANING, "obs": "one observation per row (T, obs_dim)",
         "eps": "standard normal noise per row (T, act_dim)", "act": "sampled actions (T, act_dim)",
         "logp": "their log-densities (T,)", "act_mean": "deterministic actions mu(obs) (T, act_dim)",
         "logp_mean": "log-density at the mean (T,)"})


# --- advantages.py ------------------------------------------------------------

# Episodes of the synthetic batch: (length, how it ends).
EPISODES = ((7, "terminated"), (6, "truncated"), (5, "terminated"), (6, "truncated"))


def _ends():
    term, trunc = [], []
    for length, how in EPISODES:
        term += [False] * (length - 1) + [how == "terminated"]
        trunc += [False] * (length - 1) + [how == "truncated"]
    return _b(term), _b(trunc)


def _batch(terminated, truncated, ep_cost=None, ep_len=None):
    T = len(terminated)
    z = np.zeros(T)
    ep = np.zeros(int(np.sum(terminated | truncated)))
    return Batch(obs=z[:, None], act=z[:, None], logp=z, rew=z, cost=z, terminated=terminated,
                 truncated=truncated, bootstrap_obs=z[:, None], ep_return=ep,
                 ep_cost=ep if ep_cost is None else ep_cost, ep_len=ep if ep_len is None else ep_len)


def compute_gae(inp):
    adv, ret = gae(_batch(inp["terminated"], inp["truncated"]), inp["signal"], inp["v_obs"], inp["v_boot"],
                   float(inp["gamma"]), float(inp["lam"]))
    standardized, mean, std = standardize(adv)
    centered, _ = center(adv)
    return {"adv": _f(adv), "returns": _f(ret), "standardized": _f(standardized), "mean": _f(mean),
            "std": _f(std), "centered": _f(centered)}


def make_gae():
    rng = np.random.default_rng(105)
    terminated, truncated = _ends()
    T = len(terminated)
    inp = {"signal": _f(rng.standard_normal(T)), "v_obs": _f(rng.standard_normal(T)),
           # random everywhere: a port must read it only at time-limit cuts
           "v_boot": _f(rng.standard_normal(T)),
           "terminated": terminated, "truncated": truncated, "gamma": _f(GAMMA), "lam": _f(GAE_LAMBDA)}
    return inp, compute_gae(inp), _meta(
        "GAE(gamma, lambda) over a batch of 4 episodes (2 terminated, 2 cut by the time limit), then "
        "standardisation (reward advantages) and centring (cost advantages)",
        "metacpo_ref.model.advantages.gae, standardize, center", EXACT,
        {"signal": "per-step reward or cost (T,)", "v_obs": "V(s_t) (T,)",
         "v_boot": "V(s_{t+1}) read only where truncated (random elsewhere, must be ignored) (T,)",
         "terminated": "true termination at step t: bootstrap from 0 (T,)",
         "truncated": "time-limit cut at step t: bootstrap from v_boot[t] (T,)",
         "gamma": "discount", "lam": "GAE lambda",
         "adv": "A_t, reset at every episode end (T,)", "returns": "lambda-returns adv + v_obs (T,)",
         "standardized": "(adv - mean) / std, population std (ddof 0) floored at 1e-8 (T,)",
         "mean": "mean of adv", "std": "population standard deviation of adv (ddof 0)",
         "centered": "adv - mean (T,)"})


def compute_constraint_value(inp):
    batch = _batch(inp["terminated"], inp["truncated"], inp["ep_cost"], inp["ep_len"])
    return {"b": _f(constraint_value(batch, float(inp["cost_limit"])))}


def make_constraint_value():
    rng = np.random.default_rng(106)
    terminated, truncated = _ends()
    inp = {"terminated": terminated, "truncated": truncated,
           "ep_cost": _f(rng.integers(0, 30, len(EPISODES))), "ep_len": _i([n for n, _ in EPISODES]),
           "cost_limit": _f(10.0)}
    return inp, compute_constraint_value(inp), _meta(
        "b of eq. 9 in per-step units: (mean episode cost - limit) / mean episode length",
        "metacpo_ref.model.advantages.constraint_value", EXACT,
        {"terminated": "episode-end flags (T,)", "truncated": "time-limit cut flags (T,)",
         "ep_cost": "undiscounted cost of each episode (E,)", "ep_len": "length of each episode (E,)",
         "cost_limit": "limit on the undiscounted episode cost",
         "b": "(mean ep_cost - cost_limit) / mean ep_len, scalar"})


def _cost_batch(inp):
    """A :class:`Batch` of the stored per-step costs and episode ends (episode sums derived)."""
    term, trunc = np.asarray(inp["terminated"]), np.asarray(inp["truncated"])
    cost = np.asarray(inp["cost"], dtype=np.float64)
    ends = np.flatnonzero(term | trunc)
    starts = np.concatenate([[0], ends[:-1] + 1])
    batch = _batch(term, truncated=trunc, ep_cost=np.add.reduceat(cost, starts), ep_len=ends - starts + 1)
    return dataclasses.replace(batch, cost=cost)


def compute_constraint_value_discounted(inp):
    batch, gamma, limit = _cost_batch(inp), float(inp["gamma"]), float(inp["cost_limit"])
    J, W = measured_cost(batch, "discounted", gamma)
    return {"w": _f(step_weights(batch, "discounted", gamma)), "J": _f(J), "W": _f(W),
            "b": _f(constraint_value(batch, limit, "discounted", gamma)),
            "adv_c_weighted": _f(weight_cost_advantages(inp["adv_c"], batch, "discounted", gamma)),
            "b_episode": _f(constraint_value(batch, limit, "episode", gamma)),
            "authors": _f(authors_cost(batch, gamma))}


def make_constraint_value_discounted():
    rng = np.random.default_rng(107)
    terminated, truncated = _ends()
    T = len(terminated)
    inp = {"terminated": terminated, "truncated": truncated, "cost": _f(rng.integers(0, 2, T)),
           "adv_c": _f(center(rng.standard_normal(T))[0]), "gamma": _f(0.9), "cost_limit": _f(1.5)}
    return inp, compute_constraint_value_discounted(inp), _meta(
        "the paper's discounted cost measure (derivations D36-D38): per-step weights gamma^tau restarted at "
        "every episode start, J_C and the mean discounted length W, b = (J_C - limit) / W, the cost "
        "advantages in the same weights; and, for contrast, b of the undiscounted measure and the authors' "
        "logged measure (the batch discounted from its first step, never reset). gamma = 0.9 so that the "
        "weights differ visibly within these short episodes",
        "metacpo_ref.model.advantages.step_weights, measured_cost, constraint_value, weight_cost_advantages, "
        "authors_cost", EXACT,
        {"terminated": "true termination at step t (T,)", "truncated": "time-limit cut at step t (T,)",
         "cost": "per-step cost c_t (T,)", "adv_c": "centred cost advantages (T,)", "gamma": "discount",
         "cost_limit": "limit h on the discounted cost J_C",
         "w": "gamma^tau_t, tau_t the steps since the start of step t's episode (T,)",
         "J": "mean over episodes of sum_t w_t c_t (the paper's J_C), scalar",
         "W": "mean over episodes of sum_t w_t, scalar", "b": "(J - cost_limit) / W, scalar",
         "adv_c_weighted": "adv_c * w / mean(w): L_C = mean_t rho_t adv_c_weighted is the w-weighted surrogate "
                           "(D38) (T,)",
         "b_episode": "(mean undiscounted episode cost - cost_limit) / mean episode length (D16), scalar",
         "authors": "sum_i gamma^i c_i over the whole batch, i counted from its first step (for comparison only)"})


def compute_value_loss_grad(inp):
    sizes = [int(v) for v in inp["sizes"]]
    loss, grad = value_loss_and_grad(ValueSpec(sizes[0], tuple(sizes[1:-1])), inp["params"], inp["obs"],
                                     inp["targets"])
    return {"loss": _f(loss), "grad": _f(grad)}


def make_value_loss_grad():
    rng = np.random.default_rng(107)
    vspec = ValueSpec(POLICY_SPEC.obs_dim, POLICY_SPEC.hidden)
    params = init_value(vspec, 107) + 0.1 * rng.standard_normal(len(init_value(vspec, 107)))
    inp = {"sizes": _i(vspec.sizes), "params": _f(params), "obs": _f(rng.standard_normal((16, vspec.obs_dim))),
           "targets": _f(rng.standard_normal(16))}
    return inp, compute_value_loss_grad(inp), _meta(
        "value-function loss mean_t (V(s_t) - target_t)^2 and its gradient (what L-BFGS minimises; "
        "the fit itself is not a fixture)",
        "metacpo_ref.model.advantages.value_loss_and_grad", EXACT,
        {"sizes": "layer widths (obs_dim, *hidden, 1) of the value MLP (same layout as the policy, no log-std)",
         "params": "flat value-function parameters", "obs": "states (T, obs_dim)",
         "targets": "regression targets (T,)", "loss": "mean squared error, scalar",
         "grad": "its gradient in params"})


# --- observation normaliser (rollouts.py) ---------------------------------------

def compute_obs_norm(inp):
    norm = fit_obs_norm(inp["obs_fit"], float(inp["std_floor"]))
    norm = ObsNorm(norm.mean, norm.std, float(inp["clip"]))
    return {"mean": _f(norm.mean), "std": _f(norm.std), "normalized": _f(norm(inp["obs"]))}


def make_obs_norm():
    rng = np.random.default_rng(108)
    scale = np.array([0.3, 2.0, 0.0, 5.0])   # feature 3 constant: floored, never magnified
    obs_fit = np.array([9.8, 0.0, 1.0, 0.0]) + scale * rng.standard_normal((20, 4))
    obs = np.array([9.8, 0.0, 1.0, 0.0]) + 3 * scale * rng.standard_normal((6, 4))
    obs[0, 0] = 100.0                        # clipped
    inp = {"obs_fit": _f(obs_fit), "std_floor": _f(1.0), "clip": _f(10.0), "obs": _f(obs)}
    return inp, compute_obs_norm(inp), _meta(
        "the frozen observation normaliser applied before the policy and value functions: "
        "fitted once per run, then clip((obs - mean) / std, -clip, clip)",
        "metacpo_ref.envs.rollouts.fit_obs_norm, ObsNorm", EXACT,
        {"obs_fit": "raw observations the normaliser is fitted on (N, d)",
         "std_floor": "lower bound of each feature's std", "clip": "clip bound",
         "obs": "raw observations to normalise (M, d)", "mean": "per-feature mean of obs_fit (d,)",
         "std": "per-feature population std of obs_fit (ddof 0), floored at std_floor (d,)",
         "normalized": "clip((obs - mean) / std, -clip, clip) (M, d)"})


# --- surrogates and one policy update (advantages.py, step_problem.py, local_step.py) ---

def _step_data(inp, prefix=""):
    return StepData(inp[prefix + "obs"], inp[prefix + "act"], inp[prefix + "logp_beh"], inp[prefix + "adv_r"],
                    inp[prefix + "adv_c"], float(inp[prefix + "b_hat"]), inp[prefix + "phi"],
                    float(inp[prefix + "beta"]) if prefix + "beta" in inp else 1.0,
                    float(inp[prefix + "b_shift"]) if prefix + "b_shift" in inp else 0.0)


BATCH_MEANINGS = {
    "obs": "observations of the batch (T, obs_dim)",
    "act": "actions of the batch (T, act_dim)",
    "logp_beh": "behaviour log-probabilities stored at collection (T,), data: never recomputed",
    "adv_r": "standardised reward advantages (T,)",
    "adv_c": "centred cost advantages (T,)",
    "b_hat": "per-step constraint value of the batch (mean episode cost - limit) / mean length",
    "phi": "the parameters that collected the batch (phi^collected)",
    "beta": "accepted line-search fraction of the local step taken from this batch",
    "b_shift": "the recorded constant c of the recover rule D34 added to this local step's b "
               "(max(0, 2 sqrt(2 inner_delta s) - b_hat) at the collecting parameters if b_hat > 0, else 0; "
               "s = a'H^{-1}a there): recorded during the inner loop like beta, an input here, not recomputed",
}


def _batch_inputs(rng, phi, T=24, b_frac=0.3, delta=0.01):
    """A synthetic batch collected by ``phi`` with ``b_hat = b_frac * sqrt(2 delta |a|^2)``."""
    obs = rng.standard_normal((T, POLICY_SPEC.obs_dim))
    act = rng.standard_normal((T, POLICY_SPEC.act_dim))
    inp = {"sizes": _i(POLICY_SPEC.sizes), "obs": _f(obs), "act": _f(act),
           "logp_beh": _f(log_prob(POLICY_SPEC, phi, obs, act)),
           "adv_r": _f(standardize(rng.standard_normal(T))[0]),
           "adv_c": _f(center(rng.standard_normal(T) + 0.5 * obs[:, 0])[0]), "b_hat": _f(0.0), "phi": _f(phi)}
    _, a, _ = step_problem(POLICY_SPEC, phi, _step_data(inp))
    inp["b_hat"] = _f(b_frac * np.sqrt(2 * delta * (a @ a)))
    return inp


def compute_surrogates(inp):
    spec, data = _spec(inp), _step_data(inp)
    L_R, L_C = surrogates(spec, data, data.adv_r, data.adv_c, data.logp_beh)
    g, a, b = step_problem(spec, inp["theta"], data)
    return {"L_R": _f(L_R(inp["theta"])), "L_C": _f(L_C(inp["theta"])), "g": _f(g), "a": _f(a), "b": _f(b)}


def make_surrogates():
    rng = np.random.default_rng(109)
    phi = init_theta(POLICY_SPEC, 109) + 0.3 * rng.standard_normal(n_params(POLICY_SPEC))
    inp = _batch_inputs(rng, phi)
    inp["theta"] = _f(phi + 0.05 * rng.standard_normal(len(phi)))
    return inp, compute_surrogates(inp), _meta(
        "the importance-weighted surrogates of eq. 10 and the data (g, a, b) of eq. 9 at theta, "
        "on a batch collected by phi (theta != phi, so the ratios are not 1)",
        "metacpo_ref.model.advantages.surrogates, metacpo_ref.algos.step_problem.step_problem", EXACT,
        {**{k: v for k, v in BATCH_MEANINGS.items() if k != "beta"}, "sizes": SIZES_MEANING,
         "theta": "parameters at which everything is evaluated",
         "L_R": "mean_t exp(log pi_theta(a|s) - logp_beh) adv_r", "L_C": "same with adv_c",
         "g": "grad L_R at theta", "a": "grad L_C at theta",
         "b": "b_hat + L_C(theta) - L_C(phi): the constraint value at theta"})


POLICY_UPDATE_MEANINGS = {
    "delta": "trust radius: 0.5 |x|^2 <= delta (identity) or 0.5 x'Hx <= delta (fisher, H the Fisher matrix)",
    "kl_delta": "mean-KL bound of the line search with the identity metric (fisher: delta)",
    "ls_decay": "backtracking factor: beta = ls_decay^j", "ls_steps": "at most this many fractions",
    "cg_iters": "conjugate-gradient iterations for H^{-1} v (residual tolerance 1e-10)",
    "cg_damping": "damping added to the Fisher matrix",
    "phi_new": "phi + beta x", "case_index": CASE_MEANING,
    "beta": "accepted fraction (0: rejected)", "dL_R": "L_R(phi_new) - L_R(phi)", "dL_C": "L_C(phi_new) - L_C(phi)",
}


def compute_policy_update(inp, metric):
    # identity: the meta algorithms' local rule (radius inner_delta); fisher: the CPO baseline's
    # (KL radius baseline_delta); see metacpo_ref.model.metric.local_metric
    radius = {"inner_delta": float(inp["delta"])} if metric == "identity" else \
        {"algo": "cpo", "baseline_delta": float(inp["delta"]), "cg_iters": int(inp["cg_iters"]),
         "cg_damping": float(inp["cg_damping"])}
    # blocks written before the rule existed carry no "recover_above_limit": eq. 9 as it is
    recover = bool(int(inp["recover_above_limit"])) if "recover_above_limit" in inp else False
    config = Config(hidden=tuple(int(v) for v in inp["sizes"][1:-1]), ls_kl=float(inp["kl_delta"]), **PAPER,
                    ls_decay=float(inp["ls_decay"]), ls_steps=int(inp["ls_steps"]),
                    recover_above_limit=recover, **radius)
    upd = policy_update(_spec(inp), inp["phi"], _step_data(inp), config)
    return {"phi_new": _f(upd.phi), "case_index": _i(CASES.index(upd.case)), "beta": _f(upd.beta),
            "dL_R": _f(upd.dL_R), "dL_C": _f(upd.dL_C)}


def make_policy_update(metric, recover=False):
    seed = {"identity": 110, "fisher": 111}[metric]
    rng = np.random.default_rng(seed)
    phi = init_theta(POLICY_SPEC, seed) + 0.3 * rng.standard_normal(n_params(POLICY_SPEC))
    inp = _batch_inputs(rng, phi, b_frac=0.3)
    inp.update(delta=_f(0.01 if metric == "fisher" else 0.05), kl_delta=_f(0.01), ls_decay=_f(0.8),
               ls_steps=_i(15))
    if metric == "fisher":
        inp.update(cg_iters=_i(CG_ITERS), cg_damping=_f(CG_DAMPING))
    rule = (RULE_OFF + ": eq. 9 as it is although b_hat > 0 (the block stores no recover_above_limit); "
            "policy_update_recover is this update with the rule on")
    if recover:
        inp.update(recover_above_limit=_i(1))
        rule = (RULE_ON + ": the measured cost is above the limit (b_hat > 0), so the step is eq. 4's "
                "recovery step")
    return inp, compute_policy_update(inp, metric), _meta(
        f"one constrained update of eq. 9 on a batch ({metric} metric), then the backtracking line search "
        f"(mean KL, cost change <= max(-b, 0), reward improves unless recovering); {rule}",
        f"metacpo_ref.algos.local_step.policy_update(metric={metric!r}, recover_above_limit={recover})",
        (1e-6, 1e-9, "the step comes from the scipy dual (iterative root find, see the solve_step blocks)"
         + (" and conjugate gradient on Fisher-vector products (see the cg block)" if metric == "fisher" else "")
         + "; the accepted fraction is discrete and must be equal (far from a tie here); dL_R and dL_C are "
         "differences of nearby surrogate values (rounding amplified ~1e3x, measured)"),
        {**{k: v for k, v in BATCH_MEANINGS.items() if k != "beta"}, "sizes": SIZES_MEANING,
         **POLICY_UPDATE_MEANINGS, "phi": "the parameters updated, which also collected the batch",
         **({"recover_above_limit": "1: above the limit (b_hat > 0) take the recovery step (D34)"}
            if recover else {})})


# --- cpo.py ---------------------------------------------------------------------

def compute_cg(inp):
    M = inp["M"]
    full = cg(lambda p: M @ p, inp["v"], int(inp["iters_full"]), float(inp["tol"]))
    short = cg(lambda p: M @ p, inp["v"], int(inp["iters_short"]), float(inp["tol"]))
    return {"y_full": _f(full), "y_short": _f(short)}


def make_cg():
    rng = np.random.default_rng(112)
    n = 8
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    M = (Q * np.linspace(0.2, 2.0, n)) @ Q.T           # SPD, condition number 10
    inp = {"M": _f(0.5 * (M + M.T)), "v": _f(rng.standard_normal(n)), "iters_full": _i(50),
           "iters_short": _i(3), "tol": _f(1e-10)}
    return inp, compute_cg(inp), _meta(
        "conjugate gradient for M y = v from y = 0: at most iters iterations, stopping when "
        "||v - M y|| <= tol ||v|| (checked before each iteration)",
        "metacpo_ref.step.cpo.cg", CG,
        {"M": "SPD matrix (n, n)", "v": "right-hand side (n,)", "iters_full": "iteration cap (converges first)",
         "iters_short": "iteration cap (stops early: the truncated iterate)", "tol": "relative residual tolerance",
         "y_full": "cg(M, v, iters_full, tol), converged (n,)", "y_short": "cg(M, v, iters_short, tol) (n,)"})


def _cpo_inputs(case, dense, seed, n=6):
    """An eq. 9 instance well inside ``case``: gradcheck's :func:`cpo_instance`
    (``b = t sqrt(2 delta s)`` with t = -1.5, 0.3 or 1.5)."""
    inst = cpo_instance(case, dense, seed, n)
    inp = {k: _f(inst[k]) for k in ("g", "a", "b", "delta")}
    if dense:
        inp["H"] = _f(0.5 * (inst["H"] + inst["H"].T))   # exactly symmetric
    return inp


CPO_MEANINGS = {"g": "reward-surrogate gradient (n,)", "a": "cost-surrogate gradient (n,)",
                "b": "constraint value in per-step units (b + a'x <= 0)", "delta": "trust radius",
                "H": "SPD metric (n, n): 0.5 x'Hx <= delta"}


def compute_solve_step(inp, metric):
    kw = {"identity": {}, "dense": {"H": inp.get("H")},
          "hinv": {"hinv": lambda v: np.linalg.solve(inp["H"], v)}}[metric]
    step = solve_step(inp["g"], inp["a"], float(inp["b"]), float(inp["delta"]), **kw)
    return {"x": _f(step.x), "lam": _f(step.lam), "nu": _f(step.nu), "case_index": _i(CASES.index(step.case))}


def make_solve_step(case, metric):
    seed = 120 + 3 * ("trust", "both", "recovery").index(case) + ("identity", "dense", "hinv").index(metric)
    inp = _cpo_inputs(case, metric != "identity", seed)
    out = compute_solve_step(inp, metric)
    assert CASES[int(out["case_index"])] == case
    how = {"identity": "H = I (no H stored)", "dense": "dense H (Cholesky of sym(H))",
           "hinv": "a callable v -> H^{-1} v (numpy.linalg.solve with the stored H)"}[metric]
    return inp, out, _meta(
        f"the CPO step of eq. 9 (reward convention: max g'x s.t. 0.5 x'Hx <= delta, b + a'x <= 0; "
        f"eq. 4 recovery when infeasible), case {case}, metric {how}",
        "metacpo_ref.step.cpo.solve_step (method='scipy')", EXACT if case == "recovery" else DUAL,
        {**{k: v for k, v in CPO_MEANINGS.items() if k in inp}, "x": "the step (n,)",
         "lam": "trust-region multiplier (x = H^{-1}(g - nu a) / lam; recovery: sqrt(s / 2 delta))",
         "nu": "cost multiplier (NaN in recovery)", "case_index": CASE_MEANING})


# --- dco.py ---------------------------------------------------------------------

def compute_cpo_layer(inp):
    H = inp.get("H")
    args = (inp["g"], inp["a"], float(inp["b"]), float(inp["delta"]))
    x = cpo_layer(*args, H=H)
    step = solve_step(*args, H=H, method="closed_form")
    gbar, abar, bbar, deltabar, Hbar = cpo_step_vjp(step, inp["xbar"], *args, H=H)
    out = {"x": _f(x), "gbar": _f(gbar), "abar": _f(abar), "bbar": _f(bbar), "deltabar": _f(deltabar)}
    if H is not None:
        out["Hbar"] = _f(Hbar)
    return out


def make_cpo_layer(case, metric):
    seed = 140 + 2 * ("trust", "both", "recovery").index(case) + ("identity", "dense").index(metric)
    inp = _cpo_inputs(case, metric == "dense", seed)
    assert solve_step(inp["g"], inp["a"], float(inp["b"]), float(inp["delta"]), H=inp.get("H")).case == case
    inp["xbar"] = _f(np.random.default_rng(seed).standard_normal(len(inp["g"])))
    return inp, compute_cpo_layer(inp), _meta(
        f"the differentiable CPO layer (DCO, eqs. 5-7 on eq. 9): forward step (exact closed form) and "
        f"the vector-Jacobian product for the cotangent xbar, case {case}, "
        + ("dense metric H" if metric == "dense" else "identity metric (no H stored)"),
        "metacpo_ref.step.dco.cpo_layer, cpo_step_vjp", EXACT,
        {**{k: v for k, v in CPO_MEANINGS.items() if k in inp}, "xbar": "cotangent dL/dx (n,)",
         "x": "the step (n,)", "gbar": "xbar' dx/dg (n,)", "abar": "xbar' dx/da (n,)",
         "bbar": "xbar' dx/db", "deltabar": "xbar' dx/ddelta",
         "Hbar": "xbar' dx/dH as a symmetric matrix (n, n): the derivative through sym(H)"})


# --- qp_layer.py (paper eq. 5) ------------------------------------------------------

QP_TOL = (1e-7, 1e-10, "z comes from an interior-point method polished on its active set to ~1e-12 "
                       "(KKT residual at rounding level); a port with another QP solver agrees to the "
                       "solver's accuracy, the VJP (one KKT solve) follows")


def compute_qp_layer(inp):
    sol = solve_qp(inp["Q"], inp["q"], inp["A"], inp["b"], inp["G"], inp["h"])
    bars = qp_vjp(sol, inp["zbar"])
    return {"z": _f(sol.z), "lam": _f(sol.lam), "nu": _f(sol.nu),
            **{k: _f(v) for k, v in zip(("Qbar", "qbar", "Abar", "bbar", "Gbar", "hbar"), bars)}}


def make_qp_layer():
    data, _ = qp_instance(seed=7, n=6, m=5, p=2, k=2)
    inp = {k: _f(v) for k, v in data.items()}
    inp["zbar"] = _f(np.random.default_rng(7).standard_normal(6))
    return inp, compute_qp_layer(inp), _meta(
        "the generic differentiable QP of eq. 5, min 0.5 z'Qz + q'z s.t. Az = b, Gz <= h: solution, "
        "multipliers, and the VJP from one KKT solve (eq. 7) for the cotangent zbar; two of the five "
        "inequalities are active, with clear margins",
        "metacpo_ref.step.qp_layer.qp_layer, solve_qp, qp_vjp", QP_TOL,
        {"Q": "SPD matrix (n, n)", "q": "linear term (n,)", "A": "equality matrix (p, n)",
         "b": "equality right-hand side (p,)", "G": "inequality matrix (m, n)",
         "h": "inequality right-hand side (m,)", "zbar": "cotangent dL/dz (n,)",
         "z": "solution (n,)", "lam": "inequality multipliers (m,), >= 0", "nu": "equality multipliers (p,)",
         "Qbar": "zbar' dz/dQ (n, n)", "qbar": "zbar' dz/dq (n,)", "Abar": "zbar' dz/dA (p, n)",
         "bbar": "zbar' dz/db (p,)", "Gbar": "zbar' dz/dG (m, n)", "hbar": "zbar' dz/dh (m,)"})


# --- meta.py --------------------------------------------------------------------

TRACE_FIELDS = ("obs", "act", "logp_beh", "adv_r", "adv_c", "b_hat", "phi", "beta")
RULE_OFF = "recover rule off (Config.recover_above_limit=False; docs/derivations.md, section 10)"
RULE_ON = "recover rule on (Config.recover_above_limit=True, the default; D34)"


def _meta_inputs(problem=meta_problem, fields=TRACE_FIELDS):
    """The synthetic meta-problem of gradcheck (policy 3 -> 4 -> 2, K = 2, two tasks),
    evaluated at theta = recording theta + 0.02 N(0, I) (so the ratios are not 1); its four
    local steps there are "trust", "recovery", "both", "both" (margins >= 0.1)."""
    config, spec, theta0, traces = problem()
    rng = np.random.default_rng(132)
    inp = {"sizes": _i(spec.sizes), "theta": _f(theta0 + 0.02 * rng.standard_normal(len(theta0))),
           "n_tasks": _i(len(traces)), "local_steps": _i(len(traces[0].steps)),
           "inner_delta": _f(config.inner_delta)}
    meanings = {"sizes": SIZES_MEANING, "theta": "meta-parameters at which everything is evaluated",
                "n_tasks": "number of tasks i", "local_steps": "K local steps per task",
                "inner_delta": "Euclidean trust radius of the local steps (0.5 |x|^2 <= delta)"}
    for i, tr in enumerate(traces):
        for k, data in enumerate(tr.steps + (tr.eval,)):
            where = f"task{i}_eval" if k == len(tr.steps) else f"task{i}_step{k}"
            for name in fields:
                if where.endswith("eval") and name in ("beta", "b_shift"):
                    continue
                inp[f"{where}_{name}"] = _f(getattr(data, name))
                meanings[f"{where}_{name}"] = (f"task {i}, " + ("evaluation batch" if where.endswith("eval")
                                               else f"local batch k={k}") + ": " + BATCH_MEANINGS[name])
    return config, inp, meanings


def _traces_from(inp):
    spec = _spec(inp)
    config = Config(hidden=spec.hidden, inner_delta=float(inp["inner_delta"]), **PAPER)
    traces = []
    for i in range(int(inp["n_tasks"])):
        steps = tuple(_step_data(inp, f"task{i}_step{k}_") for k in range(int(inp["local_steps"])))
        traces.append(Trace(steps, _step_data(inp, f"task{i}_eval_")))
    return spec, config, traces


def _meta_gradient_and_chain(inp, config, spec, traces, metric=None):
    """(F, G, dF, dG) and the chain's intermediates, for debugging a port step by step;
    ``metric(phi, data)`` gives each step's dense metric (stored as ``H``), None: identity."""
    theta = inp["theta"]
    F, G = meta_objective(theta, traces, config)
    _, _, dF, dG = meta_gradient(theta, traces, config)
    out = {"F": _f(F), "G": _f(G), "dF": _f(dF), "dG": _f(dG)}
    for i, tr in enumerate(traces):
        phi = theta
        for k, data in enumerate(tr.steps):
            g, a, b = step_problem(spec, phi, data)
            H = None if metric is None else metric(phi, data)
            step = solve_step(g, a, b, config.inner_delta, H=H, method="closed_form")
            out.update({f"task{i}_step{k}_phi_in": _f(phi), f"task{i}_step{k}_g": _f(g),
                        f"task{i}_step{k}_a": _f(a), f"task{i}_step{k}_b": _f(b),
                        f"task{i}_step{k}_x": _f(step.x), f"task{i}_step{k}_case_index": _i(CASES.index(step.case))})
            if H is not None:
                out[f"task{i}_step{k}_H"] = _f(H)
            phi = phi + data.beta * step.x
        out[f"task{i}_phi_K"] = _f(phi)
    return out


def compute_meta_gradient(inp):
    spec, config, traces = _traces_from(inp)
    return _meta_gradient_and_chain(inp, config, spec, traces)


def _chain_margins(inp, out):
    """Each local step's distance from its case boundary, in the step's own metric (a stored
    ``H`` when there is one)."""
    def solve(i, k):
        H = out.get(f"task{i}_step{k}_H")
        return None if H is None else partial(np.linalg.solve, H)
    return [step_margin(out[f"task{i}_step{k}_g"], out[f"task{i}_step{k}_a"], float(out[f"task{i}_step{k}_b"]),
                        float(inp["inner_delta"]), solve(i, k))
            for i in range(int(inp["n_tasks"])) for k in range(int(inp["local_steps"]))]


def _chain_meanings(inp, meanings, chain, dF):
    """``meanings`` completed with the chain's per-step arrays (``chain``: name -> meaning),
    ``phi_K`` per task, and F, G, dF (meaning ``dF``), dG."""
    for i in range(int(inp["n_tasks"])):
        for k in range(int(inp["local_steps"])):
            meanings.update({f"task{i}_step{k}_{w}": f"task {i}, local step k={k}: {m}" for w, m in chain.items()})
        meanings[f"task{i}_phi_K"] = f"task {i}: phi_K, the adapted parameters"
    meanings.update(F="meta objective F of eq. 10 (mean over tasks of L_R,eval(phi_K))",
                    G="meta constraint G of eq. 10 "
                      "(mean of b_hat_eval + L_C,eval(phi_K) - L_C,eval(phi_eval^collected))",
                    dF=dF, dG="dG/dtheta")
    return meanings


def make_meta_gradient():
    _, inp, meanings = _meta_inputs()
    out = compute_meta_gradient(inp)
    assert min(_chain_margins(inp, out)) > 0.1, "a local step sits near a case boundary"
    assert {int(out[f"task{i}_step{k}_case_index"]) for i in range(2) for k in range(2)} == {0, 1, 2}
    chain = {"phi_in": "phi_k replayed from theta (phi_0 = theta)", "g": "g_k = grad L_R,k(phi_k)",
             "a": "a_k = grad L_C,k(phi_k)", "b": "b_k = b_hat_k + L_C,k(phi_k) - L_C,k(phi_k^collected)",
             "x": "the local step x_k = cpo_layer(g_k, a_k, b_k, inner_delta); phi_{k+1} = phi_k + beta_k x_k",
             "case_index": CASE_MEANING}
    _chain_meanings(inp, meanings, chain, "dF/dtheta (eq. 11, exact, through the K local steps)")
    return inp, out, _meta(
        "K = 2 local CPO steps (Euclidean metric, betas replayed from the trace) per task on two tasks, the "
        "meta objective and constraint of eq. 10 and their exact gradients (eq. 11); the chain's "
        "intermediates (g, a, b, x per step) are stored for debugging; " + RULE_OFF + ": no b_shift, every "
        "local step is eq. 9 as it is (meta_gradient_recover has the rule on)",
        "metacpo_ref.algos.meta.meta_objective, meta_gradient", META, meanings)



def compute_meta_gradient_fisher(inp):
    spec, config, traces = _traces_from(inp)
    config = dataclasses.replace(config, inner_metric="fisher", cg_damping=float(inp["cg_damping"]))
    return _meta_gradient_and_chain(inp, config, spec, traces,
                                    lambda phi, data: fisher_matrix(spec, phi, data.obs, config.cg_damping))


def fisher_chain_meanings(b):
    """The meanings of a Fisher-metric chain's recorded arrays (``b``: how b_k is formed)."""
    return {"phi_in": "phi_k replayed from theta (phi_0 = theta)", "g": "g_k = grad L_R,k(phi_k)",
            "a": "a_k = grad L_C,k(phi_k)", "b": b,
            "H": "H_k = H(phi_k): the Hessian in t of mean_kl(phi_k, t) on batch k's obs at t = phi_k, "
                 "plus cg_damping I (symmetric, dense)",
            "x": "the local step x_k of eq. 9 with metric H_k and radius inner_delta; "
                 "phi_{k+1} = phi_k + beta_k x_k",
            "case_index": CASE_MEANING}


def make_meta_gradient_fisher():
    _, inp, meanings = _meta_inputs(meta_problem_fisher)
    inp["cg_damping"] = _f(CG_DAMPING)
    meanings.update(inner_delta="KL trust radius of the local steps (0.5 x'H x <= delta)",
                    cg_damping="damping d of the metric H(phi) = Fisher(phi) + d I")
    out = compute_meta_gradient_fisher(inp)
    assert min(_chain_margins(inp, out)) > 0.1, "a local step sits near a case boundary"
    assert {int(out[f"task{i}_step{k}_case_index"]) for i in range(2) for k in range(2)} == {0, 1, 2}
    chain = fisher_chain_meanings("b_k = b_hat_k + L_C,k(phi_k) - L_C,k(phi_k^collected)")
    _chain_meanings(inp, meanings, chain, "dF/dtheta (eq. 11, exact, through the K Fisher-metric local steps "
                    "including the terms through H(phi_k); docs/fisher-metric.md)")
    return inp, out, _meta(
        "as meta_gradient, with Fisher-metric local steps (inner_metric='fisher'): eq. 9 with "
        "H_k = Fisher(phi_k) + cg_damping I, KL radius inner_delta; the exact gradients include the "
        "third-order terms through H(phi_k) (docs/fisher-metric.md, eqs. M1-M9); " + RULE_OFF + ": no "
        "b_shift (meta_gradient_fisher_recover has the rule on)",
        "metacpo_ref.algos.meta.meta_objective, meta_gradient (inner_metric='fisher')", META, meanings)


def compute_outer_step(inp):
    spec, config, traces = _traces_from(inp)
    config = Config(hidden=spec.hidden, inner_delta=config.inner_delta, outer_delta=float(inp["outer_delta"]), **PAPER,
                    ls_kl=float(inp["kl_delta"]), ls_decay=float(inp["ls_decay"]), ls_steps=int(inp["ls_steps"]),
                    recover_above_limit=False)   # eq. 12 as it is (here G > 0: the rule would recover)
    res = outer_step(inp["theta"], traces, config)
    return {"theta_new": _f(res.theta), "case_index": _i(CASES.index(res.case)), "beta": _f(res.beta),
            "F": _f(res.F), "G": _f(res.G), "F_new": _f(res.F_new), "G_new": _f(res.G_new),
            "dF": _f(res.dF), "dG": _f(res.dG)}


def make_outer_step():
    config, inp, meanings = _meta_inputs()
    inp.update(outer_delta=_f(config.outer_delta), kl_delta=_f(config.ls_kl), ls_decay=_f(config.ls_decay),
               ls_steps=_i(config.ls_steps))
    meanings.update(outer_delta="Euclidean radius of the meta step (eq. 12)",
                    kl_delta="line search bound on the mean KL from theta on the pre-adaptation batches",
                    ls_decay=POLICY_UPDATE_MEANINGS["ls_decay"], ls_steps=POLICY_UPDATE_MEANINGS["ls_steps"],
                    theta_new="theta + beta x", case_index=CASE_MEANING, beta="accepted fraction (0: rejected)",
                    F="F at theta", G="G at theta", F_new="F at theta_new", G_new="G at theta_new",
                    dF="dF/dtheta", dG="dG/dtheta")
    return inp, compute_outer_step(inp), _meta(
        "one outer step (eq. 12, Algorithm 1 lines 13-14) on the traces of meta_gradient: the CPO step on "
        "theta with g = dF, a = dG, b = G, then the line search re-evaluating eq. 10; " + RULE_OFF + ": here "
        "G > 0, so with the rule on the step would be the recovery step (outer_step_recover has it on)",
        "metacpo_ref.algos.meta.outer_step (outer_metric='identity')", OUTER, meanings)


# --- the recover rule on (D34): the production path ------------------------------

# Distinct radii (the defaults are all 0.01, so a port reading the wrong one would pass
# the blocks above): every block below uses these.
RADII = {"inner_delta": 0.03, "outer_delta": 0.02, "ls_kl": 0.015, "baseline_delta": 0.005}
RADII_MEANINGS = {
    "inner_delta": "radius of the local steps (Config.inner_delta): Euclidean 0.5 |x|^2 <= delta (identity), "
                   "KL 0.5 x'Hx <= delta (fisher)",
    "outer_delta": "radius of the outer step of eq. 12 (Config.outer_delta)",
    "ls_kl": "mean-KL bound of every line search with the Euclidean metric (Config.ls_kl)",
    "baseline_delta": "KL radius of the CPO/TRPO baselines' steps (Config.baseline_delta); not used by the "
                      "Meta-CPO steps here: stored so that a port reading it instead of the right radius fails",
}
RECOVER_B_FRACS = [[0.4, 1.5, 0.3], [-0.3, 0.6, 0.2]]


def _recover_problem(metric):
    """The meta-problem of :func:`meta_problem` recorded with the recover rule on (each
    local step's shift recorded in ``b_shift``, as training records it), smaller batches
    (T = 24) and the distinct :data:`RADII`: three of the four local batches are above the
    limit (two where eq. 9 is feasible, so the rule changes the step) and so is the
    evaluation cost (G > 0 with eq. 12 feasible: the rule changes the outer step too)."""
    def problem():
        from metacpo_ref.checks.problems import synthetic_traces

        spec = PolicySpec(3, 2, (4,))
        config = Config(hidden=(4,), **RADII, inner_metric=metric, outer_metric="identity",
                        recover_above_limit=True)
        theta, traces = synthetic_traces(spec, 2, 2, 3, config, T=24, b_fracs=RECOVER_B_FRACS,
                                         betas=[[1.0, 0.8], [0.64, 1.0]], record_shifts=True)
        return config, spec, theta, traces
    return problem


def _unshifted_cases(out, inp):
    """Case of each local step at theta with and without its recorded shift."""
    cases = []
    for i in range(int(inp["n_tasks"])):
        for k in range(int(inp["local_steps"])):
            p = f"task{i}_step{k}_"
            H = out.get(p + "H")
            solve = None if H is None else partial(np.linalg.solve, H)
            b = float(out[p + "b"])
            cases.append((CASES[int(out[p + "case_index"])],
                          solve_step(out[p + "g"], out[p + "a"], b - float(inp[p + "b_shift"]),
                                     float(inp["inner_delta"]), hinv=solve).case))
    return cases


def _check_recover_chain(inp, out):
    assert min(_chain_margins(inp, out)) > 0.1, "a local step sits near a case boundary"
    cases = _unshifted_cases(out, inp)
    changed = [c for c in cases if c[0] != c[1]]
    assert len(changed) >= 2 and all(c[0] == "recovery" for c in changed), cases
    assert any(c[0] != "recovery" for c in cases), cases     # one batch below the limit


RECOVER_CHAIN = ("the recorded shift b_shift of every local batch is an input (a recorded constant like beta; "
                 "the chain's b_k includes it: b_k = b_hat_k + b_shift_k + L_C,k(phi_k) - L_C,k(phi_k^collected))")


def make_meta_gradient_recover():
    _, inp, meanings = _meta_inputs(_recover_problem("identity"), TRACE_FIELDS + ("b_shift",))
    meanings["inner_delta"] = RADII_MEANINGS["inner_delta"]
    out = compute_meta_gradient(inp)
    _check_recover_chain(inp, out)
    chain = {"phi_in": "phi_k replayed from theta (phi_0 = theta)", "g": "g_k = grad L_R,k(phi_k)",
             "a": "a_k = grad L_C,k(phi_k)",
             "b": "b_k = b_hat_k + b_shift_k + L_C,k(phi_k) - L_C,k(phi_k^collected)",
             "x": "the local step x_k = cpo_layer(g_k, a_k, b_k, inner_delta); phi_{k+1} = phi_k + beta_k x_k",
             "case_index": CASE_MEANING}
    _chain_meanings(inp, meanings, chain, "dF/dtheta (eq. 11, exact, through the K local steps; b_shift constant)")
    return inp, out, _meta(
        "as meta_gradient, " + RULE_ON + ": three of the four local batches are above the limit (b_hat > 0) "
        "and take the recovery step (two of them would take a trust or both step with the rule off); "
        + RECOVER_CHAIN + "; inner_delta = 0.03 (not the default 0.01)",
        "metacpo_ref.algos.meta.meta_objective, meta_gradient (recover_above_limit=True)", META, meanings)


def make_meta_gradient_fisher_recover():
    _, inp, meanings = _meta_inputs(_recover_problem("fisher"), TRACE_FIELDS + ("b_shift",))
    inp["cg_damping"] = _f(CG_DAMPING)
    meanings.update(inner_delta="KL trust radius of the local steps (0.5 x'H x <= delta)",
                    cg_damping="damping d of the metric H(phi) = Fisher(phi) + d I")
    out = compute_meta_gradient_fisher(inp)
    _check_recover_chain(inp, out)
    chain = fisher_chain_meanings("b_k = b_hat_k + b_shift_k + L_C,k(phi_k) - L_C,k(phi_k^collected)")
    _chain_meanings(inp, meanings, chain, "dF/dtheta (eq. 11, exact, through the K Fisher-metric local steps "
                    "including the terms through H(phi_k); b_shift constant)")
    return inp, out, _meta(
        "as meta_gradient_fisher, " + RULE_ON + ": three of the four local batches are above the limit and "
        "take the Fisher recovery step -sqrt(2 delta / s) H_k^{-1} a_k; " + RECOVER_CHAIN
        + " (s measured in the Fisher metric when it was recorded); inner_delta = 0.03",
        "metacpo_ref.algos.meta.meta_objective, meta_gradient (inner_metric='fisher', recover_above_limit=True)",
        META, meanings)


# --- the line search, every decision recorded (D18, D19) --------------------------

@contextlib.contextmanager
def _recorded_line_search(module):
    """Every fraction ``module``'s line search tries, with the rule that judged it: the
    module's :func:`~metacpo_ref.algos.line_search.backtrack` wrapped for the duration."""
    tried, original = [], module.backtrack

    def recording(evaluate, accepts, decay, max_steps):
        def evaluate_and_record(beta):
            cand = evaluate(beta)
            tried.append((cand, accepts))
            return cand
        return original(evaluate_and_record, accepts, decay, max_steps)

    module.backtrack = recording
    try:
        yield tried
    finally:
        module.backtrack = original


def _tried_arrays(tried):
    """The tried fractions as arrays: beta, mean KL, dR, dC and which rules reject it."""
    rows = []
    for cand, acc in tried:
        dR, dC = cand.R - acc.R0, cand.C - acc.C0
        kl_bad = cand.kl > acc.kl_bound
        reward_bad = not (acc.recovery or dR > 0)
        cost_bad = acc.constrained and not dC <= max(-acc.b, 0.0)
        assert acc(cand) == (not (kl_bad or reward_bad or cost_bad))
        rows.append((cand.beta, cand.kl, dR, dC, kl_bad, reward_bad, cost_bad))
    cols = list(zip(*rows))
    return {"tried_beta": _f(cols[0]), "tried_kl": _f(cols[1]), "tried_dR": _f(cols[2]), "tried_dC": _f(cols[3]),
            "rejected_kl": _b(cols[4]), "rejected_reward": _b(cols[5]), "rejected_cost": _b(cols[6]),
            "cost_allowance": _f(max(-tried[0][1].b, 0.0)), "kl_bound": _f(tried[0][1].kl_bound)}


TRIED_MEANINGS = {
    "tried_beta": "every fraction the line search tried, in order: ls_decay^j, j = 0, 1, ... up to the accepted "
                  "one (all ls_steps if none) (J,)",
    "tried_kl": "mean KL(pi_old || pi_cand) of each tried fraction (J,)",
    "tried_dR": "reward change of each tried fraction (J,)", "tried_dC": "cost change of each tried fraction (J,)",
    "rejected_kl": "the KL rule rejects the fraction: tried_kl > kl_bound (J,)",
    "rejected_reward": "the reward rule rejects it: not (recovery step or tried_dR > 0) (J,)",
    "rejected_cost": "the cost rule rejects it: not tried_dC <= cost_allowance (J,)",
    "cost_allowance": "max(-b, 0), b the constraint value fed to the step (shift included): the most the "
                      "cost may rise (D19)",
    "kl_bound": "the mean-KL bound of this line search (D19)",
}


def compute_outer_step_recover(inp):
    from metacpo_ref.algos import meta

    spec, _, traces = _traces_from(inp)
    config = Config(hidden=spec.hidden, inner_delta=float(inp["inner_delta"]),
                    outer_delta=float(inp["outer_delta"]), ls_kl=float(inp["ls_kl"]),
                    baseline_delta=float(inp["baseline_delta"]), **PAPER, ls_decay=float(inp["ls_decay"]),
                    ls_steps=int(inp["ls_steps"]), recover_above_limit=bool(int(inp["recover_above_limit"])))
    with _recorded_line_search(local_step) as tried:
        res = meta.outer_step(inp["theta"], traces, config)
    return {"theta_new": _f(res.theta), "case_index": _i(CASES.index(res.case)), "beta": _f(res.beta),
            "F": _f(res.F), "G": _f(res.G), "F_new": _f(res.F_new), "G_new": _f(res.G_new),
            "dF": _f(res.dF), "dG": _f(res.dG),
            "b_shift": _f(recovery_shift(res.G, res.dG, None, config.outer_delta, config)), **_tried_arrays(tried)}


OUTER_MEANINGS = {
    "ls_decay": "backtracking factor: beta = ls_decay^j", "ls_steps": "at most this many fractions",
    "recover_above_limit": "1: the recover rule (D34) is on: G > 0 makes the outer step eq. 4's recovery step",
    "theta_new": "theta + beta x", "case_index": CASE_MEANING, "beta": "accepted fraction (0: rejected)",
    "F": "F at theta", "G": "G at theta", "F_new": "F at theta_new", "G_new": "G at theta_new",
    "dF": "dF/dtheta", "dG": "dG/dtheta",
    "b_shift": "the outer step's shift c = max(0, 2 sqrt(2 outer_delta s) - G) if G > 0 else 0, s = dG'dG "
               "(D34, computed by the step, not recorded): eq. 12 is solved with b = G + b_shift",
    **TRIED_MEANINGS,
    "tried_kl": "mean KL(pi_theta || pi_cand) on the pre-adaptation batches of all tasks (the step-0 batches "
                "task{i}_step0_obs concatenated), for each tried fraction (J,)",
    "tried_dR": "F(cand) - F(theta) of each tried fraction (J,)",
    "tried_dC": "G(cand) - G(theta) of each tried fraction (J,)",
    "cost_allowance": "max(-(G + b_shift), 0), which is max(-G, 0): the shift is nonzero only when G > 0, "
                      "where both are 0",
}


def make_outer_step_recover():
    config, inp, meanings = _meta_inputs(_recover_problem("identity"), TRACE_FIELDS + ("b_shift",))
    inp.update(outer_delta=_f(config.outer_delta), ls_kl=_f(config.ls_kl), baseline_delta=_f(config.baseline_delta),
               ls_decay=_f(config.ls_decay), ls_steps=_i(config.ls_steps), recover_above_limit=_i(1))
    meanings.update({**RADII_MEANINGS, **OUTER_MEANINGS})
    out = compute_outer_step_recover(inp)
    assert float(out["G"]) > 0 and float(out["b_shift"]) > 0 and CASES[int(out["case_index"])] == "recovery"
    assert 0 < float(out["beta"]) < 1
    return inp, out, _meta(
        "one outer step (eq. 12) on the traces of meta_gradient_recover, " + RULE_ON + ": G > 0 (above the "
        "limit) with eq. 12 feasible, so the rule shifts b = G + b_shift and the step is the recovery step "
        "-sqrt(2 outer_delta / s) dG (with the rule off it would be a both step); then the line search "
        "re-evaluating eq. 10, every tried fraction recorded (KL on the pre-adaptation batches, dF, dG, the "
        "rule that rejected it); radii inner_delta 0.03, outer_delta 0.02, ls_kl 0.015 (all distinct)",
        "metacpo_ref.algos.meta.outer_step (outer_metric='identity', recover_above_limit=True)", OUTER, meanings)


def _radii(inp):
    return {k: float(inp[k]) for k in RADII}


def compute_line_search_local(inp):
    config = Config(hidden=tuple(int(v) for v in inp["sizes"][1:-1]), **_radii(inp), **PAPER,
                    ls_decay=float(inp["ls_decay"]), ls_steps=int(inp["ls_steps"]),
                    recover_above_limit=bool(int(inp["recover_above_limit"])))
    with _recorded_line_search(local_step) as tried:
        upd = policy_update(_spec(inp), inp["phi"], _step_data(inp), config)
    return {"phi_new": _f(upd.phi), "case_index": _i(CASES.index(upd.case)), "beta": _f(upd.beta),
            "dL_R": _f(upd.dL_R), "dL_C": _f(upd.dL_C), "b_shift": _f(upd.b_shift), **_tried_arrays(tried)}


def _line_search_local_inputs(seed, b_frac, radii, T=24):
    rng = np.random.default_rng(seed)
    phi = init_theta(POLICY_SPEC, seed) + 0.3 * rng.standard_normal(n_params(POLICY_SPEC))
    inp = _batch_inputs(rng, phi, T=T, b_frac=b_frac, delta=radii["inner_delta"])
    inp.update({k: _f(v) for k, v in radii.items()})
    inp.update(ls_decay=_f(0.8), ls_steps=_i(15), recover_above_limit=_i(1))
    return inp


# (seed, b_frac, inner_delta, ls_kl) of each decision; outer_delta 0.02 and baseline_delta 0.005
# throughout, so the four radii always differ
LINE_SEARCH_LOCAL = {
    "full": (2, 0.3, 0.002, 0.015,
             "beta = 1 accepted at once: above the limit (b_hat > 0) the rule makes the step the recovery step "
             "(reward rule off), its mean KL 0.0084 is within ls_kl = 0.015 but above inner_delta and "
             "baseline_delta"),
    "kl": (0, 0.3, 0.03, 0.015,
           "a later fraction accepted: the recovery step (b_hat > 0, rule on) is cut back by the KL rule alone "
           "(fractions 1 .. 0.512 exceed ls_kl = 0.015; with inner_delta = 0.03 as the bound 0.64 would pass)"),
    "cost": (21, -0.2, 0.03, 0.015,
             "the cost rule alone rejects a fraction: below the limit (b < 0, constraint active: case both), "
             "fraction 0.262 has KL and reward OK but dC = 0.39 > -b = 0.25; 0.2097 is accepted with "
             "0 < dC = 0.23 <= -b (a port with the allowance max(b, 0) = 0 rejects it)"),
    "reward": (34, -0.9, 0.3, 0.12,
               "the reward rule alone rejects a fraction: a long trust step (inner_delta = 0.3) whose fraction "
               "0.328 has KL 0.096 <= ls_kl = 0.12 and the cost falling, but the reward surrogate falling too "
               "(dR = -0.23 <= 0); 0.262 is accepted"),
}


def make_line_search_local(case):
    seed, b_frac, inner_delta, ls_kl, what = LINE_SEARCH_LOCAL[case]
    radii = {"inner_delta": inner_delta, "outer_delta": RADII["outer_delta"], "ls_kl": ls_kl,
             "baseline_delta": RADII["baseline_delta"]}
    assert len(set(radii.values())) == 4
    inp = _line_search_local_inputs(seed, b_frac, radii)
    out = compute_line_search_local(inp)
    rk, rr, rc = out["rejected_kl"], out["rejected_reward"], out["rejected_cost"]
    assert float(out["beta"]) > 0 and not (rk[-1] or rr[-1] or rc[-1])
    alone = {"kl": rk & ~rr & ~rc, "reward": rr & ~rk & ~rc, "cost": rc & ~rk & ~rr}
    if case == "full":
        assert len(rk) == 1
    else:
        assert np.any(alone[case][:-1]) and len(rk) > 1
    if case == "cost":
        assert 0 < float(out["dL_C"]) <= float(out["cost_allowance"])
    return inp, out, _meta(
        "the line search of one Meta-CPO local step (policy_update, Euclidean metric, radius inner_delta, "
        "KL bound ls_kl; D18, D19) with every tried fraction recorded: its mean KL, dR = dL_R, dC = dL_C "
        "and which of the three rules rejects it (KL <= ls_kl; dR > 0 unless recovering; dC <= max(-b, 0), "
        "b including the recover shift); " + RULE_ON + ". Decision: " + what,
        "metacpo_ref.algos.local_step.policy_update, metacpo_ref.algos.line_search.backtrack, Acceptance "
        "(algo='meta-cpo', inner_metric='identity')",
        (1e-6, 1e-9, "the step comes from the scipy dual (iterative root find, see the solve_step blocks); the "
         "accepted fraction, the tried fractions and the rejections are discrete and must be equal (every "
         "decision is >= 8% from its threshold here); dR and dC are differences of nearby surrogate values "
         "(rounding amplified ~1e3x, measured)"),
        {**{k: v for k, v in BATCH_MEANINGS.items() if k not in ("beta", "b_shift")}, "sizes": SIZES_MEANING,
         "phi": "the parameters updated, which also collected the batch", **RADII_MEANINGS,
         "ls_decay": POLICY_UPDATE_MEANINGS["ls_decay"], "ls_steps": POLICY_UPDATE_MEANINGS["ls_steps"],
         "recover_above_limit": "1: the recover rule (D34) is on: b_hat > 0 makes the step eq. 4's recovery step",
         "phi_new": "phi + beta x", "case_index": CASE_MEANING, "beta": "accepted fraction (0: rejected)",
         "dL_R": "L_R(phi_new) - L_R(phi)", "dL_C": "L_C(phi_new) - L_C(phi)",
         "b_shift": "the shift c of D34 the update added to b: max(0, 2 sqrt(2 inner_delta a'a) - b_hat) if "
                    "b_hat > 0, else 0",
         **TRIED_MEANINGS,
         "tried_kl": "mean KL(pi_phi || pi_cand) on the batch's obs of each tried fraction (J,)",
         "tried_dR": "L_R(cand) - L_R(phi) of each tried fraction (J,)",
         "tried_dC": "L_C(cand) - L_C(phi) of each tried fraction (J,)"})


# (seed, evaluation b_frac, outer_delta, ls_kl) of each outer decision (inner_delta 0.03,
# baseline_delta 0.005); the KL-cut decision is outer_step_recover's
LINE_SEARCH_OUTER = {
    "full": (0, 0.3, 0.02, 0.15,
             "beta = 1 accepted at once: G > 0, so with the rule on the step is the recovery step (reward rule "
             "off); its mean KL 0.067 on the pre-adaptation batches is within ls_kl = 0.15 but above "
             "outer_delta and inner_delta"),
    "cost": (9, -0.6, 0.02, 0.015,
             "the cost rule alone rejects a fraction: G < 0 (below the limit), fraction 0.2097 has KL and dF OK "
             "but dG = 0.56 > -G = 0.37; 0.1678 is accepted with 0 < dG = 0.17 <= -G (a port with the "
             "allowance max(G, 0) = 0 rejects it)"),
    "reward": (1, -0.6, 0.02, 0.015,
               "the reward rule alone rejects fractions: 0.328 .. 0.134 have KL <= ls_kl and dG <= -G but "
               "dF <= 0; 0.107 is accepted"),
}


def make_line_search_outer(case):
    from metacpo_ref.checks.problems import synthetic_traces

    seed, eval_frac, outer_delta, ls_kl, what = LINE_SEARCH_OUTER[case]
    radii = {"inner_delta": RADII["inner_delta"], "outer_delta": outer_delta, "ls_kl": ls_kl,
             "baseline_delta": RADII["baseline_delta"]}
    assert len(set(radii.values())) == 4
    spec = PolicySpec(3, 2, (4,))
    config = Config(hidden=(4,), **radii, **PAPER, recover_above_limit=True)
    theta, traces = synthetic_traces(spec, 2, 2, seed, config, T=24,
                                     b_fracs=[[0.4, -0.5, eval_frac], [-0.3, 0.6, eval_frac]],
                                     betas=[[1.0, 0.8], [0.64, 1.0]], record_shifts=True)
    config, inp, meanings = _meta_inputs(lambda: (config, spec, theta, traces), TRACE_FIELDS + ("b_shift",))
    inp.update(outer_delta=_f(outer_delta), ls_kl=_f(ls_kl), baseline_delta=_f(config.baseline_delta),
               ls_decay=_f(config.ls_decay), ls_steps=_i(config.ls_steps), recover_above_limit=_i(1))
    meanings.update({**RADII_MEANINGS, **OUTER_MEANINGS})
    meanings["cost_allowance"] = "max(-G, 0): the outer line search's cost allowance (D19 with b = G)"
    meanings["theta"] = "meta-parameters at which everything is evaluated (the recording theta + 0.02 N(0, I))"
    out = compute_outer_step_recover(inp)
    rk, rr, rc = out["rejected_kl"], out["rejected_reward"], out["rejected_cost"]
    assert float(out["beta"]) > 0 and not (rk[-1] or rr[-1] or rc[-1])
    if case == "full":
        assert len(rk) == 1 and float(out["G"]) > 0 and CASES[int(out["case_index"])] == "recovery"
    else:
        alone = {"reward": rr & ~rk & ~rc, "cost": rc & ~rk & ~rr}[case]
        assert np.any(alone[:-1]) and float(out["G"]) < 0
    if case == "cost":
        assert 0 < float(out["G_new"]) - float(out["G"]) <= -float(out["G"])
    return inp, out, _meta(
        "the line search of one outer step (eq. 12, identity metric, radius outer_delta, KL bound ls_kl on the "
        "pre-adaptation batches; D18, D19 with dR = dF, dC = dG, b = G) with every tried fraction recorded, "
        "on seeded synthetic traces (K = 2, two tasks, local steps recorded with their shifts); " + RULE_ON
        + ". Decision: " + what,
        "metacpo_ref.algos.meta.outer_step, metacpo_ref.algos.line_search.backtrack, Acceptance "
        "(outer_metric='identity')",
        (OUTER[0], OUTER[1], OUTER[2] + "; the tried fractions and the rejections are discrete and must be "
         "equal (every decision is >= 10% from its threshold here)"), meanings)


# --- an asymmetric stored metric (the method uses sym(H)) -------------------------------

ASYM_MEANING = ("metric (n, n) stored NOT symmetric: H = S + K, S SPD and K antisymmetric (|K| ~ 0.3 |S|); "
                "the method uses sym(H) = (H + H') / 2 = S (0.5 x'Hx = 0.5 x'Sx for every x), so a port must "
                "symmetrise before solving: H^{-1} v, or a Cholesky factor read from one triangle, gives "
                "another step")


def _asym_inputs(seed):
    inp = _cpo_inputs("both", True, seed)
    rng = np.random.default_rng(seed + 1000)
    M = rng.standard_normal(inp["H"].shape)
    K = 0.5 * (M - M.T)
    inp["H"] = _f(inp["H"] + 0.3 * np.linalg.norm(inp["H"], 2) / np.linalg.norm(K, 2) * K)
    assert np.max(np.abs(inp["H"] - inp["H"].T)) > 0.1 * np.max(np.abs(inp["H"]))
    return inp


def make_solve_step_asym():
    inp = _asym_inputs(150)
    out = compute_solve_step(inp, "dense")
    assert CASES[int(out["case_index"])] == "both"
    H = 0.5 * (inp["H"] + inp["H"].T)
    assert step_margin(inp["g"], inp["a"], float(inp["b"]), float(inp["delta"]), partial(np.linalg.solve, H)) > 0.1
    return inp, out, _meta(
        "the CPO step of eq. 9 (as solve_step_both_dense), case both, with a stored metric that is not "
        "symmetric: the method solves with sym(H) = (H + H') / 2 (docs/derivations.md: the metric enters as "
        "sym(H); cpo.metric_solver: Cholesky of sym(H))",
        "metacpo_ref.step.cpo.solve_step (method='scipy', H given)", DUAL,
        {**{k: v for k, v in CPO_MEANINGS.items() if k in inp}, "H": ASYM_MEANING, "x": "the step (n,)",
         "lam": "trust-region multiplier (x = sym(H)^{-1}(g - nu a) / lam)", "nu": "cost multiplier",
         "case_index": CASE_MEANING})


def make_cpo_layer_asym():
    inp = _asym_inputs(151)
    assert solve_step(inp["g"], inp["a"], float(inp["b"]), float(inp["delta"]), H=inp["H"]).case == "both"
    inp["xbar"] = _f(np.random.default_rng(151).standard_normal(len(inp["g"])))
    return inp, compute_cpo_layer(inp), _meta(
        "the differentiable CPO layer (as cpo_layer_both_dense), case both, with a stored metric that is not "
        "symmetric: forward step and VJP use sym(H) = (H + H') / 2, and Hbar is the gradient through sym(H), "
        "a symmetric matrix",
        "metacpo_ref.step.dco.cpo_layer, cpo_step_vjp (H given)", EXACT,
        {**{k: v for k, v in CPO_MEANINGS.items() if k in inp}, "H": ASYM_MEANING, "xbar": "cotangent dL/dx (n,)",
         "x": "the step (n,)", "gbar": "xbar' dx/dg (n,)", "abar": "xbar' dx/da (n,)",
         "bbar": "xbar' dx/db", "deltabar": "xbar' dx/ddelta",
         "Hbar": "xbar' dx/dH through sym(H): symmetric (n, n), also for this asymmetric H"})


# --- the CPO baseline's Fisher step with the constraint binding --------------------------

CG_RECURRENCE = ("H^{-1} v by conjugate gradient exactly as metacpo_ref.step.cpo.cg: y = 0, r = v, p = v, rr = r'r; "
                 "repeat at most cg_iters times: stop if rr <= (1e-10 |v|)^2; Hp = (F + cg_damping I) p "
                 "(Fisher-vector product at phi on the batch's obs); alpha = rr / p'Hp; y += alpha p; "
                 "r -= alpha Hp; rr_new = r'r; p = r + (rr_new / rr) p; rr = rr_new. With cg_iters = 10 < n "
                 "the iterate is truncated, so a port must use this recurrence (hinv_g and hinv_a are stored "
                 "to check it; the products are policy_fvp's)")


def compute_policy_update_fisher_both(inp):
    config = Config(hidden=tuple(int(v) for v in inp["sizes"][1:-1]), algo="cpo", **_radii(inp), **PAPER,
                    ls_decay=float(inp["ls_decay"]), ls_steps=int(inp["ls_steps"]), cg_iters=int(inp["cg_iters"]),
                    cg_damping=float(inp["cg_damping"]), recover_above_limit=bool(int(inp["recover_above_limit"])))
    spec, data = _spec(inp), _step_data(inp)
    with _recorded_line_search(local_step) as tried:
        upd = policy_update(spec, inp["phi"], data, config)
    g, a, _ = step_problem(spec, inp["phi"], data)
    hinv = local_metric(config).solver(spec, inp["phi"], data.obs)
    return {"phi_new": _f(upd.phi), "case_index": _i(CASES.index(upd.case)), "beta": _f(upd.beta),
            "dL_R": _f(upd.dL_R), "dL_C": _f(upd.dL_C), "lam": _f(upd.lam), "nu": _f(upd.nu),
            "b_shift": _f(upd.b_shift), "hinv_g": _f(hinv(g)), "hinv_a": _f(hinv(a)), **_tried_arrays(tried)}


def make_policy_update_fisher_both():
    seed = 113
    rng = np.random.default_rng(seed)
    phi = init_theta(POLICY_SPEC, seed) + 0.3 * rng.standard_normal(n_params(POLICY_SPEC))
    inp = _batch_inputs(rng, phi, b_frac=-0.3, delta=RADII["baseline_delta"])
    inp.update({k: _f(v) for k, v in RADII.items()})
    inp.update(ls_decay=_f(0.8), ls_steps=_i(15), cg_iters=_i(CG_ITERS), cg_damping=_f(CG_DAMPING),
               recover_above_limit=_i(1))
    out = compute_policy_update_fisher_both(inp)
    assert CASES[int(out["case_index"])] == "both" and float(out["nu"]) > 0 and float(out["beta"]) > 0
    g, a, b = step_problem(POLICY_SPEC, phi, _step_data(inp))
    H = fisher_matrix(POLICY_SPEC, phi, inp["obs"], CG_DAMPING)
    hinv = lambda v: np.linalg.solve(H, v)
    assert step_margin(g, a, b, RADII["baseline_delta"], hinv) > 0.1
    return inp, out, _meta(
        "one update of the CPO baseline (algo='cpo': Fisher metric by conjugate gradient, KL radius and "
        "line-search KL bound baseline_delta) with the cost constraint binding (case both, nu > 0; b_hat < 0, "
        + RULE_ON + " but inactive below the limit). " + CG_RECURRENCE,
        "metacpo_ref.algos.local_step.policy_update (algo='cpo'), metacpo_ref.model.fisher_solve.fisher_cg_solver, "
        "metacpo_ref.step.cpo.cg",
        (1e-6, 1e-9, "the step comes from the scipy dual and conjugate gradient (the same truncated recurrence "
         "reproduces the stored iterates to ~1e-13); the accepted fraction and the rejections are discrete; dL_R, "
         "dL_C are differences of nearby surrogate values"),
        {**{k: v for k, v in BATCH_MEANINGS.items() if k not in ("beta", "b_shift")}, "sizes": SIZES_MEANING,
         "phi": "the parameters updated, which also collected the batch", **RADII_MEANINGS,
         "baseline_delta": "KL radius of this step (0.5 x'Hx <= baseline_delta) and the line search's KL bound",
         "ls_decay": POLICY_UPDATE_MEANINGS["ls_decay"], "ls_steps": POLICY_UPDATE_MEANINGS["ls_steps"],
         "cg_iters": "conjugate-gradient iterations (residual tolerance 1e-10)",
         "cg_damping": "damping added to the Fisher matrix",
         "recover_above_limit": "1: the recover rule (D34) is on (inactive here: b_hat < 0)",
         "phi_new": "phi + beta x", "case_index": CASE_MEANING, "beta": "accepted fraction (0: rejected)",
         "dL_R": "L_R(phi_new) - L_R(phi)", "dL_C": "L_C(phi_new) - L_C(phi)",
         "lam": "trust-region multiplier of eq. 9 (x = H^{-1}(g - nu a) / lam, H^{-1} by CG)",
         "nu": "cost multiplier (> 0: the constraint binds)", "b_shift": "the D34 shift (0: below the limit)",
         "hinv_g": "cg(H, g, cg_iters, 1e-10) with g = grad L_R(phi) (n,)",
         "hinv_a": "cg(H, a, cg_iters, 1e-10) with a = grad L_C(phi) (n,)",
         **TRIED_MEANINGS,
         "tried_kl": "mean KL(pi_phi || pi_cand) on the batch's obs of each tried fraction (J,)",
         "tried_dR": "L_R(cand) - L_R(phi) of each tried fraction (J,)",
         "tried_dC": "L_C(cand) - L_C(phi) of each tried fraction (J,)"})


# --- the table of blocks ---------------------------------------------------------

BLOCKS = [
    ("policy_log_prob", make_policy_log_prob, compute_policy_log_prob),
    ("policy_mean_kl", make_policy_mean_kl, compute_policy_mean_kl),
    ("policy_fvp", make_policy_fvp, compute_policy_fvp),
    ("policy_act", make_policy_act, compute_policy_act),
    ("gae", make_gae, compute_gae),
    ("constraint_value", make_constraint_value, compute_constraint_value),
    ("constraint_value_discounted", make_constraint_value_discounted, compute_constraint_value_discounted),
    ("value_loss_grad", make_value_loss_grad, compute_value_loss_grad),
    ("obs_norm", make_obs_norm, compute_obs_norm),
    ("surrogates", make_surrogates, compute_surrogates),
    ("cg", make_cg, compute_cg),
    *[(f"solve_step_{case}_{metric}", partial(make_solve_step, case, metric),
       partial(compute_solve_step, metric=metric))
      for case in ("trust", "both", "recovery") for metric in ("identity", "dense", "hinv")],
    *[(f"cpo_layer_{case}_{metric}", partial(make_cpo_layer, case, metric), compute_cpo_layer)
      for case in ("trust", "both", "recovery") for metric in ("identity", "dense")],
    ("qp_layer", make_qp_layer, compute_qp_layer),
    *[(f"policy_update_{metric}", partial(make_policy_update, metric), partial(compute_policy_update, metric=metric))
      for metric in ("identity", "fisher")],
    ("policy_update_recover", partial(make_policy_update, "identity", recover=True),
     partial(compute_policy_update, metric="identity")),
    ("meta_gradient", make_meta_gradient, compute_meta_gradient),
    ("meta_gradient_fisher", make_meta_gradient_fisher, compute_meta_gradient_fisher),
    ("outer_step", make_outer_step, compute_outer_step),
    ("meta_gradient_recover", make_meta_gradient_recover, compute_meta_gradient),
    ("meta_gradient_fisher_recover", make_meta_gradient_fisher_recover, compute_meta_gradient_fisher),
    ("outer_step_recover", make_outer_step_recover, compute_outer_step_recover),
    *[(f"line_search_local_{case}", partial(make_line_search_local, case), compute_line_search_local)
      for case in LINE_SEARCH_LOCAL],
    *[(f"line_search_outer_{case}", partial(make_line_search_outer, case), compute_outer_step_recover)
      for case in LINE_SEARCH_OUTER],
    ("solve_step_both_dense_asym", make_solve_step_asym, partial(compute_solve_step, metric="dense")),
    ("cpo_layer_both_dense_asym", make_cpo_layer_asym, compute_cpo_layer),
    ("policy_update_fisher_both", make_policy_update_fisher_both, compute_policy_update_fisher_both),
]


# --- the set: export and verify (the format: fixture_files) -------------------------

def export(directory, blocks=BLOCKS):
    """Write the fixture set of ``blocks`` into ``directory`` (:func:`fixture_files.export`)."""
    return files.export(directory, blocks)


def verify(directory, only=None):
    """Verify the set in ``directory`` against :data:`BLOCKS` (:func:`fixture_files.verify`)."""
    return files.verify(directory, BLOCKS, only)
