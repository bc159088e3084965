"""Gaussian MLP policy over one flat parameter vector ``theta``.

The policy of Meta-CPO (paper Section 5): a tanh MLP with hidden sizes
(32, 16) gives the mean ``mu_theta(s)`` of a diagonal Gaussian over actions;
the log standard deviation is a free vector, independent of the state:

    pi_theta(a | s) = N(a; mu_theta(s), diag(exp(2 log_std))).

Every algorithm of the project (the CPO step of eq. 9, its derivative, the
meta step of eq. 12) and every port works on the flat vector ``theta``.

Layout of ``theta`` (see :func:`mlp_layout`, :func:`unflatten`): layer by
layer, for the layer ``y = x W + c`` with ``W`` of shape ``(n_in, n_out)``,
first ``W`` in row-major order (``W[i, j]`` at offset ``i * n_out + j``), then
the bias ``c``; hidden layers apply tanh, the output layer is linear; the
``act_dim`` log standard deviations come last. For obs_dim 60, act_dim 2 and
hidden (32, 16): ``n = 60*32+32 + 32*16+16 + 16*2+2 + 2 = 2516``.

The same :func:`mlp` (without the log-std tail) is the value function of
:mod:`metacpo_ref.model.advantages`.

Everything here is written with ``autograd.numpy`` and differentiates to any
order in ``theta`` (the meta-gradient differentiates gradients of the
surrogates). The policy sees the observations it is given; in training they
pass through the run's frozen normaliser first (:class:`metacpo_ref.envs.rollouts.ObsNorm`,
saved in the checkpoint), so ``theta`` and that normaliser define the policy.
"""
from dataclasses import dataclass

import autograd.numpy as anp
import numpy as np

from metacpo_ref.config import HIDDEN, INIT_LOG_STD

LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class PolicySpec:
    """Shapes of the Gaussian MLP policy: ``obs_dim -> hidden -> act_dim``."""

    obs_dim: int
    act_dim: int
    hidden: tuple = HIDDEN

    @property
    def sizes(self):
        """Layer widths of the mean network, ``(obs_dim, *hidden, act_dim)``."""
        return (int(self.obs_dim), *map(int, self.hidden), int(self.act_dim))


# --- the MLP shared by policy and value functions ---------------------------

def mlp_layout(sizes):
    """Where each layer lives in a flat MLP parameter vector.

    A tuple with one ``(w, shape, c)`` per layer: ``params[w].reshape(shape)``
    is the weight ``W`` (row-major, shape ``(n_in, n_out)``) and ``params[c]``
    the bias. Layers follow each other with no gaps.
    """
    layout, i = [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        w = slice(i, i + n_in * n_out)
        c = slice(w.stop, w.stop + n_out)
        layout.append((w, (n_in, n_out), c))
        i = c.stop
    return tuple(layout)


def n_mlp_params(sizes):
    """Number of parameters of the MLP with layer widths ``sizes``."""
    return sum((n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))


def mlp(sizes, params, x):
    """tanh MLP: ``x (..., sizes[0]) -> (..., sizes[-1])``, linear output layer.

    ``params`` is a flat vector laid out by :func:`mlp_layout` (any extra tail
    is ignored, so a policy's ``theta`` can be passed whole).
    """
    return mlp_apply(mlp_layers(sizes, params), x)


def mlp_layers(sizes, params):
    """``[(W, c) per layer]`` of the flat ``params`` (:func:`mlp_layout`); differentiable."""
    return [(anp.reshape(params[w], shape), params[c]) for w, shape, c in mlp_layout(sizes)]


def mlp_apply(layers, x, xp=anp):
    """:func:`mlp` on the layers of :func:`mlp_layers` (unpacked once when a network is
    evaluated many times, as a policy is in a rollout). ``xp=numpy`` where nothing is
    differentiated (acting): the same floats without autograd's wrapper around each call
    (about a fifth of a rollout step's Python time at batch size 1)."""
    h = x
    for k, (W, c) in enumerate(layers):
        h = xp.dot(h, W) + c
        if k < len(layers) - 1:
            h = xp.tanh(h)
    return h


def init_mlp(sizes, rng, out_scale=1.0):
    """Flat MLP parameters: ``W ~ N(0, 1/n_in)`` (output layer times ``out_scale``), zero biases."""
    parts = []
    layout = mlp_layout(sizes)
    for k, (_, (n_in, n_out), _) in enumerate(layout):
        scale = (out_scale if k == len(layout) - 1 else 1.0) / np.sqrt(n_in)
        parts += [scale * rng.standard_normal(n_in * n_out), np.zeros(n_out)]
    return np.concatenate(parts).astype(np.float64)


# --- the policy ---------------------------------------------------------------

def n_params(spec):
    """Length of ``theta``: the mean network plus ``act_dim`` log-stds."""
    return n_mlp_params(spec.sizes) + spec.act_dim


def unflatten(spec, theta):
    """``theta`` as arrays: ``([(W, c) per layer], log_std)`` (views, for ports and tests)."""
    return mlp_layers(spec.sizes, theta), theta[n_mlp_params(spec.sizes):]


def init_theta(spec, seed, log_std=INIT_LOG_STD):
    """Initial ``theta`` from an integer seed.

    Weights ``N(0, 1/n_in)``, the output layer scaled by 0.01 so the initial
    mean is near zero, zero biases, every log-std equal to ``log_std``.
    """
    rng = np.random.default_rng(seed)
    return np.concatenate([init_mlp(spec.sizes, rng, out_scale=0.01),
                           np.full(spec.act_dim, float(log_std))])


def mean_and_log_std(spec, theta, obs):
    """``mu_theta(obs)`` (shape ``(..., act_dim)``) and ``log_std`` (``(act_dim,)``)."""
    return mlp(spec.sizes, theta, obs), theta[n_mlp_params(spec.sizes):]


def log_prob(spec, theta, obs, act):
    """``log pi_theta(act | obs)`` per row: ``(T, obs_dim), (T, act_dim) -> (T,)``.

    A single ``(obs_dim,), (act_dim,)`` pair gives a scalar.
    """
    mu, log_std = mean_and_log_std(spec, theta, obs)
    return gaussian_log_prob(mu, log_std, act)


def gaussian_log_prob(mu, log_std, act):
    """``log N(act; mu, diag(exp(2 log_std)))`` per row, from the network's output
    (:func:`log_prob` is this after :func:`mean_and_log_std`)."""
    z = (act - mu) * anp.exp(-log_std)
    return -0.5 * anp.sum(z ** 2 + 2.0 * log_std + LOG_2PI, axis=-1)


def mean_kl(spec, theta_old, theta, obs):
    """Mean over ``obs`` of ``KL(pi_theta_old(.|s) || pi_theta(.|s))`` (TRPO's direction).

    For diagonal Gaussians, per state:
    ``sum_j log(s_j / s_old_j) + (s_old_j^2 + (mu_old_j - mu_j)^2) / (2 s_j^2) - 1/2``.
    Differentiable in both arguments; its Hessian in ``theta`` at
    ``theta = theta_old`` is the Fisher matrix ``H`` of eq. 3.
    """
    return gaussian_mean_kl(*mean_and_log_std(spec, theta_old, obs), *mean_and_log_std(spec, theta, obs))


def gaussian_mean_kl(mu_old, ls_old, mu, ls):
    """:func:`mean_kl` from the two policies' network outputs on the same observations."""
    per_dim = (ls - ls_old) + (anp.exp(2.0 * ls_old) + (mu_old - mu) ** 2) / (2.0 * anp.exp(2.0 * ls)) - 0.5
    return anp.mean(anp.sum(per_dim, axis=-1))


def mean_linearisation(spec, theta, obs):
    """The mean network at ``theta`` on ``obs``, as its Jacobian products need it:
    ``(weights, inputs, slopes)``, per layer the weight ``W``, the layer's input
    (``obs``, ``h_1``, ...) and, per hidden layer, the tanh slope ``1 - h'^2``. Computed
    once per ``theta``, shared by every product at that ``theta`` (a CG solve makes
    tens). Written in ``autograd.numpy``: differentiable."""
    layers = mlp_layers(spec.sizes, theta)
    inputs, slopes, h = [obs], [], obs
    for W, c in layers[:-1]:
        h = anp.tanh(anp.dot(h, W) + c)
        inputs.append(h)
        slopes.append(1.0 - h ** 2)
    return [W for W, _ in layers], inputs, slopes


def mean_jvp(spec, lin, v):
    """``J v``: the derivative of ``mu_theta(obs)`` along ``v`` (shape ``(N, act_dim)``; the
    log-std part of ``v`` does not move the mean), by forward mode through the tanh MLP
    (``dh' = (1 - h'^2) (dh W + h dW + dc)`` layer by layer) on the
    :func:`mean_linearisation` ``lin`` of ``mu`` at ``theta``. Differentiable."""
    weights, inputs, slopes = lin
    dh = None
    for k, (w, shape, c) in enumerate(mlp_layout(spec.sizes)):
        dW = anp.reshape(v[w], shape)
        dz = anp.dot(inputs[k], dW) + v[c] if dh is None else anp.dot(dh, weights[k]) + anp.dot(inputs[k], dW) + v[c]
        dh = slopes[k] * dz if k < len(slopes) else dz
    return dh


def mean_vjp(spec, lin, u):
    """``J^T u`` for output cotangents ``u`` (``(N, act_dim)``), the mean network's part of
    the flat layout (no log-std tail): backpropagation through the layers of the
    :func:`mean_linearisation` ``lin``. Differentiable."""
    weights, inputs, slopes = lin
    parts, g = [], u
    for k in range(len(weights) - 1, -1, -1):
        parts = [anp.ravel(anp.dot(inputs[k].T, g)), anp.sum(g, axis=0)] + parts
        if k > 0:
            g = anp.dot(g, weights[k].T) * slopes[k - 1]
    return anp.concatenate(parts)


def fisher_product(spec, theta, obs, damping=0.0):
    """``v -> (H + damping I) v``, the Fisher-vector product at a fixed ``theta``
    (:func:`fvp`) with the network's forward pass done once, here, not once per product:
    the same floats as :func:`fvp`, about half its time (``bench``). Differentiable."""
    m = n_mlp_params(spec.sizes)
    lin = mean_linearisation(spec, theta, obs)
    precision, N = anp.exp(-2.0 * theta[m:]), obs.shape[0]

    def product(v):
        u = mean_jvp(spec, lin, v) * precision / N
        return anp.concatenate([mean_vjp(spec, lin, u), 2.0 * v[m:]]) + damping * v

    return product


def fvp(spec, theta, obs, v, damping=0.0):
    """Fisher-vector product ``(H + damping I) v`` with ``H = d^2/dtheta'^2 mean_kl(theta, theta')`` at ``theta' = theta``.

    In closed form (docs/derivations.md, D35): at ``theta' = theta`` the KL's gradient in the
    mean vanishes, so its Hessian is the Gauss-Newton matrix

        H = [[ (1/N) sum_s J_s' diag(exp(-2 log_std)) J_s, 0 ], [ 0, 2 I ]],

    ``J_s`` the Jacobian of ``mu_theta(s)``, the ``2 I`` on the log-stds. So ``H v`` is one
    forward-mode pass (:func:`mean_jvp`) and one backward pass (:func:`mean_vjp`) on the
    network's :func:`mean_linearisation`; no ``n x n`` matrix is formed. Equal to the
    reverse-over-reverse Hessian-vector product of :func:`mean_kl` to rounding (tests).
    ``theta`` and ``v`` may be autograd boxes (the product is differentiable in both).
    Many products at one ``theta``: :func:`fisher_product`.
    """
    return fisher_product(spec, theta, obs, damping)(v)


def act_fn(spec, theta, deterministic=False):
    """The ``act(obs, rng) -> (action, logp)`` function that :func:`metacpo_ref.envs.rollouts.collect` takes.

    Samples ``a = mu(obs) + exp(log_std) * eps`` with ``eps`` from ``rng``
    (a ``numpy.random.Generator``), so the same generator state gives the same
    action. ``deterministic=True`` returns the mean (``rng`` unused) and the
    log-density there. ``logp`` always equals :func:`log_prob` of the returned
    action. ``theta`` is copied: later changes to the caller's array do not
    change the policy. Actions are not clipped (the env clips).
    """
    theta = np.array(theta, dtype=np.float64)
    layers = mlp_layers(spec.sizes, theta)
    log_std = theta[n_mlp_params(spec.sizes):]
    const = -0.5 * float(np.sum(2.0 * log_std + LOG_2PI))

    def act(obs, rng):
        mu = mlp_apply(layers, np.asarray(obs, dtype=np.float64), np)
        if deterministic:
            return mu, const
        eps = rng.standard_normal(spec.act_dim)
        # log N(mu + std eps; mu, std) = -0.5 sum(eps^2 + 2 log_std + log 2 pi)
        return mu + np.exp(log_std) * eps, const - 0.5 * float(eps @ eps)

    return act
