"""Speed figures of metacpo_ref: each a ratio of two timings taken in the same run.

Both sides of a ratio are measured in one process, one after the other, so
the speed of the machine (which varies several-fold on shared machines)
cancels out. One plain function per figure; :func:`run_bench` runs them all.

Keys of :func:`run_bench` (``quick=True`` uses fewer repeats, for tests):

- ``cpo_layer_speedup_vs_cvxpy``: cvxpy + diffcp solve and backward of the CPO
  problem ``max g.x  s.t. 0.5 |x|^2 <= delta, b + a.x <= 0`` at n = 2516 (the
  Point-Button policy size), over our ``cpo_layer`` forward + VJP (autograd
  ``make_vjp``). cvxpy is timed warm (its DPP canonicalisation cached after a
  first solve, as a layer would reuse it): the conservative figure.
- ``fast_reset_speedup``: stock ``reset()`` over ours (fast reset + lean step
  set-up), Point-Circle, after one untimed reset of each.
- ``rollout_speedup_vs_stock``: steps per second of :func:`~metacpo_ref.envs.rollouts.collect`
  (Point-Circle, whole episodes with resets, ``act_fn`` of an initial policy)
  over a plain stock loop (``safety_gymnasium.make("SafetyPointCircle1-v0")``,
  stock reset and step) with the same policy.
- ``rollout_fraction_of_physics``: that rollout rate over raw ``mj_step`` with
  the env's frame skip (the physics alone, one env step = frame-skip ``mj_step``).
- ``lean_step_speedup_<family>``: stock step over lean step, random actions,
  resets not timed (envs/lean.py).
- ``rollout_steps_per_s``: our rollout rate itself (machine-dependent, for context).

- ``meta_gradient_cost_ratio``: for two policy sizes, one ``meta_gradient`` over
  one ``meta_objective`` on synthetic traces (reverse mode: a small constant).
- ``meta_gradient_cost_ratio_fisher``: the same with Fisher-metric local steps
  (``inner_metric="fisher"``, K = 2, two tasks; goal: <= 10, not growing with n).
- ``meta_iteration_learner_share``: per family, the learner's share of one
  Meta-CPO iteration (summed per-task env + learner time; quick mode uses a tiny
  iteration, the full bench the default 5 tasks x 5 local steps).
- ``workers_2_speedup``: wall time of one default-size Meta-CPO iteration (Point-Button,
  5 tasks x 5 local steps; quick: a tiny Point-Circle one) with one worker over two
  (pool start-up excluded); ``meta_iteration_serial_fraction``: the share of the
  one-worker iteration outside the tasks' parallel inner loops (Amdahl's serial fraction).
- ``meta_iteration_fisher_products``: per family, the Fisher-vector products of that same
  one-worker iteration: how many (``per_iteration``), by where they are made (``by_site``:
  the local steps taken, the replay of the meta-gradient, the outer line search's replays,
  the outer step; :data:`SITES`), and their time's share of the learner's (``share_of_learner``).
- ``meta_iteration_seconds``: per family, that iteration's wall time (``workers_1``) beside
  its physical limit, the simulation alone: the summed per-task env time (``env_1_core``)
  and half of it (``env_2_cores``, the best two workers can do).
- ``workers_2_speedup_whole_meta_gradient``, ``meta_iteration_serial_fraction_whole_meta_gradient``:
  the same with ``split_meta_gradient=False`` (the whole meta-gradient in the main process; the
  default splits it into the tasks' parts, computed in the workers).

The package never imports cvxpy: the cvxpy + diffcp side of the CPO-layer
figure is passed in by the ``bench`` command (``cli.cvxpy_cpo_oracle``).
"""
import time

import numpy as np

from metacpo_ref.envs import FAMILY_NAMES, make_env
from metacpo_ref.envs.compat import import_safety_gymnasium
from metacpo_ref.model.policy import PolicySpec, act_fn, init_theta, n_params
from metacpo_ref.envs.rollouts import collect

BUTTON_POLICY_SIZE = 2516     # theta of the Point-Button policy (policy.py docstring)


def _seconds(fn, repeats):
    """Median wall time of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# --- the CPO layer against cvxpy + diffcp --------------------------------------

def cpo_problem(n=BUTTON_POLICY_SIZE, seed=0):
    """``(g, a, b, delta, xbar)`` of a CPO step with both constraints active."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(n)
    a = 0.6 * g + 0.8 * rng.standard_normal(n)
    return g, a, -0.05, 0.01, rng.standard_normal(n)


def cpo_layer_speedup_vs_cvxpy(oracle, n=BUTTON_POLICY_SIZE, repeats=5):
    """cvxpy + diffcp (solve, backward) time over ``cpo_layer`` forward + VJP time.

    ``oracle(g, a, b, delta, xbar)`` returns a function that solves and
    differentiates the same problem with cvxpy + diffcp. The package never
    imports cvxpy: the ``bench`` command (cli.py) and the tests pass it in."""
    from autograd import make_vjp

    from metacpo_ref.step.dco import cpo_layer

    g, a, b, delta, xbar = cpo_problem(n)

    def ours():
        vjp, x = make_vjp(lambda p: cpo_layer(p[0], p[1], p[2], p[3]))((g, a, b, delta))
        return vjp(xbar)

    theirs = oracle(g, a, b, delta, xbar)
    theirs()    # canonicalise once (cached afterwards)
    ours()
    return _seconds(theirs, repeats) / _seconds(ours, 20 * repeats)


# --- resets ----------------------------------------------------------------------

def fast_reset_speedup(stock_resets=3, fast_resets=20):
    """Stock ``reset()`` time over our fast reset's, Point-Circle, seeds varied."""
    stock, fast = make_env("point-circle", fast=False), make_env("point-circle")
    stock.reset(seed=0)
    fast.reset(seed=0)
    seeds = iter(range(1, 10_000))
    t_stock = _seconds(lambda: stock.reset(seed=next(seeds)), stock_resets)
    t_fast = _seconds(lambda: fast.reset(seed=next(seeds)), fast_resets)
    return t_stock / t_fast


# --- rollouts --------------------------------------------------------------------

def initial_policy(obs_dim, seed=0):
    """``act_fn`` of an initial policy (``init_theta``) for observations of ``obs_dim``."""
    spec = PolicySpec(obs_dim, 2)
    return act_fn(spec, init_theta(spec, seed))


def rollout_rate(episodes=6, family="point-circle"):
    """Steps per second of :func:`collect` with an initial policy, resets included."""
    env = make_env(family)
    act = initial_policy(env.observation_space.shape[0])
    collect(env, act, 1, seed=0)       # first build of the world, untimed
    t0 = time.perf_counter()
    batch = collect(env, act, episodes, seed=1)
    return len(batch) / (time.perf_counter() - t0)


def stock_rollout_rate(episodes=3, env_id="SafetyPointCircle1-v0"):
    """Steps per second of a plain stock Safety-Gymnasium loop with the same policy."""
    env = import_safety_gymnasium().make(env_id)
    act = initial_policy(env.observation_space.shape[0])
    rng = np.random.default_rng(1)
    env.reset(seed=0)                   # first build of the world, untimed
    steps = 0
    t0 = time.perf_counter()
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode + 1)
        done = False
        while not done:
            action, _ = act(obs, rng)
            obs, _, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
            steps += 1
    return steps / (time.perf_counter() - t0)


def physics_rate(env_steps=2000, family="point-circle"):
    """Env steps per second of raw ``mj_step`` (frame skip per env step), nothing else."""
    import mujoco

    env = make_env(family)
    env.reset(seed=0)
    task = env.unwrapped.task
    model, data, frames = task.model, task.data, task.sim_conf.frameskip_binom_n
    data.ctrl[:] = 0.5
    t0 = time.perf_counter()
    for _ in range(env_steps):
        for _ in range(frames):
            mujoco.mj_step(model, data)
    return env_steps / (time.perf_counter() - t0)


def rollout_speedup_vs_stock(ours=None, episodes=6, stock_episodes=3):
    """Our rollout rate over the stock loop's (``ours``: a rate measured already)."""
    ours = rollout_rate(episodes) if ours is None else ours
    return ours / stock_rollout_rate(stock_episodes)


def rollout_fraction_of_physics(ours=None, episodes=6, env_steps=2000):
    """Our rollout rate over the raw physics rate (``ours``: a rate measured already)."""
    ours = rollout_rate(episodes) if ours is None else ours
    return ours / physics_rate(env_steps)


# --- the lean step ------------------------------------------------------------------

def lean_step_speedup(family, steps=1000, seed=0):
    """Stock step time over lean step time (fast reset for both, resets untimed)."""
    def step_time(lean):
        env = make_env(family, fast=True, lean=lean)
        actions = np.random.default_rng(seed).uniform(-1, 1, (steps, 2))
        env.reset(seed=seed)
        total = 0.0
        for a in actions:
            t0 = time.perf_counter()
            out = env.step(a)
            total += time.perf_counter() - t0
            if out[3] or out[4]:
                env.reset(seed=seed)
        return total
    return step_time(False) / step_time(True)


# --- everything ----------------------------------------------------------------------

# How long run_bench takes on the 2-core machine of the README (measured; cli.py bench --help and README say the same)
DURATION = {"full": "about ten minutes", "quick": "about 40 seconds"}


def run_bench(cvxpy_oracle, quick=False):
    """Every figure of this module, as a dict (see the module docstring for the keys);
    ``cvxpy_oracle`` as in :func:`cpo_layer_speedup_vs_cvxpy`."""
    n = dict(cvxpy=2, resets=(1, 5), episodes=2, stock_episodes=1, physics=500, steps=300) if quick else \
        dict(cvxpy=5, resets=(3, 20), episodes=6, stock_episodes=3, physics=3000, steps=1500)
    ours = rollout_rate(n["episodes"])     # shared by the two rollout figures
    out = {
        "cpo_layer_speedup_vs_cvxpy": cpo_layer_speedup_vs_cvxpy(cvxpy_oracle, repeats=n["cvxpy"]),
        "fast_reset_speedup": fast_reset_speedup(*n["resets"]),
        "rollout_speedup_vs_stock": rollout_speedup_vs_stock(ours, stock_episodes=n["stock_episodes"]),
        "rollout_fraction_of_physics": rollout_fraction_of_physics(ours, env_steps=n["physics"]),
        "rollout_steps_per_s": ours,
    }
    for family in FAMILY_NAMES:
        out[f"lean_step_speedup_{family.replace('-', '_')}"] = lean_step_speedup(family, n["steps"])
    T = 200 if quick else 1000
    out["meta_gradient_cost_ratio"] = {f"n={n_params(PolicySpec(d, 2, h))}": meta_gradient_cost_ratio(d, h, T=T)
                                       for d, h in ((28, (32, 16)), (60, (64, 32)))}
    fisher = dict(T=200, tasks=1, K=1, repeats=1) if quick else dict(T=1000, tasks=2, K=2, repeats=2)
    out["meta_gradient_cost_ratio_fisher"] = {
        f"n={n_params(PolicySpec(d, 2, h))}": meta_gradient_cost_ratio(d, h, inner_metric="fisher", **fisher)
        for d, h in ((28, (32, 16)), (60, (64, 32)))}
    size = dict(tasks=2, local_steps=1, episodes=1) if quick else dict(tasks=5, local_steps=5, episodes=None)
    out["meta_iteration_learner_share"], out["meta_iteration_fisher_products"] = {}, {}
    out["meta_iteration_seconds"] = {}
    for family in FAMILY_NAMES:
        with counting_fisher_products() as products:
            row, _ = meta_iteration_row(family, **size)
        out["meta_iteration_learner_share"][family] = row["time_learner"] / (row["time_env"] + row["time_learner"])
        out["meta_iteration_fisher_products"][family] = products.figures(row["time_learner"])
        out["meta_iteration_seconds"][family] = {"workers_1": row["time_total"], "env_1_core": row["time_env"],
                                                 "env_2_cores": row["time_env"] / 2}
    size = dict(family="point-circle", tasks=2, local_steps=1, episodes=1) if quick else {}
    out["workers_2_speedup"], out["meta_iteration_serial_fraction"] = scaling_figures(*scaling(**size))
    out["workers_2_speedup_whole_meta_gradient"], out["meta_iteration_serial_fraction_whole_meta_gradient"] = \
        scaling_figures(*scaling(split_meta_gradient=False, **size))
    return out


# --- the meta-gradient and the meta-iteration ------------------------------------------

def meta_gradient_cost_ratio(obs_dim, hidden, T=1000, tasks=2, K=3, repeats=2, inner_metric="identity"):
    """One ``meta_gradient`` (eq. 11: forward and two reverse passes) over one
    ``meta_objective`` on seeded synthetic traces: reverse mode keeps it a small
    constant whatever the policy size. With ``inner_metric="fisher"`` both sides
    solve with the Fisher matrix (CG to 1e-10 at these sizes, model/fisher_solve.py); the
    gradient adds one ``H^{-1}`` product and one reverse pass over a Fisher-vector
    product per local step and reverse pass."""
    from metacpo_ref.config import Config
    from metacpo_ref.algos.meta import meta_gradient, meta_objective
    from metacpo_ref.checks.problems import synthetic_traces

    cfg = Config(hidden=hidden, inner_metric=inner_metric)
    spec = PolicySpec(obs_dim, 2, hidden)
    theta, traces = synthetic_traces(spec, tasks, K, 0, cfg, T=T)
    t_obj = _seconds(lambda: meta_objective(theta, traces, cfg), repeats)
    t_grad = _seconds(lambda: meta_gradient(theta, traces, cfg), repeats)
    return t_grad / t_obj


def meta_iteration_row(family, tasks, local_steps, episodes, workers=1, iterations=1, **fields):
    """The metrics row of the last of ``iterations`` Meta-CPO iterations of ``family`` (other
    :class:`~metacpo_ref.config.Config` ``fields`` as given), and the wall time of the whole run."""
    import tempfile

    from metacpo_ref.config import Config
    from metacpo_ref.run.rundir import read_metrics
    from metacpo_ref.run.training import train

    cfg = Config(family=family, tasks=tasks, local_steps=local_steps, episodes=episodes, iterations=iterations,
                 **fields)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        train(cfg, d, workers=workers)
        wall = time.perf_counter() - t0
        return read_metrics(d)[-1], wall


# Where a Fisher-vector product is made: the innermost of these functions on its call stack.
SITES = {"policy_update": "local steps taken", "task_gradient": "meta-gradient replay",
         "meta_gradient": "meta-gradient replay", "meta_objective": "outer line search",
         "task_objective_job": "outer line search", "outer_step": "outer step"}


class FisherProducts:
    """Counts and times the Fisher-vector products made while it is installed
    (:func:`counting_fisher_products`), by :data:`SITES`."""

    def __init__(self):
        self.count, self.seconds, self.by_site = 0, 0.0, {}

    def record(self, seconds):
        import sys

        frame, site = sys._getframe(2), "other"
        while frame is not None:
            if frame.f_code.co_name in SITES:
                site = SITES[frame.f_code.co_name]
                break
            frame = frame.f_back
        self.count += 1
        self.seconds += seconds
        self.by_site[site] = self.by_site.get(site, 0) + 1

    def figures(self, learner_seconds):
        return {"per_iteration": self.count, "by_site": dict(sorted(self.by_site.items())),
                "share_of_learner": self.seconds / learner_seconds if learner_seconds > 0 else float("nan")}


class counting_fisher_products:
    """``with counting_fisher_products() as products:`` every Fisher-vector product this
    process makes meanwhile (:func:`metacpo_ref.model.policy.fisher_product`, also through
    ``fvp`` and the Fisher solves) is counted and timed in ``products`` (one worker: all of
    an iteration's products are made here)."""

    def __enter__(self):
        from metacpo_ref.model import fisher_solve, policy

        self.products, self._modules, original = FisherProducts(), (policy, fisher_solve), policy.fisher_product
        self._original = original

        def fisher_product(*args, **kwargs):
            product = original(*args, **kwargs)

            def counted(v):
                t0 = time.perf_counter()
                out = product(v)
                self.products.record(time.perf_counter() - t0)
                return out

            return counted

        for module in self._modules:
            module.fisher_product = fisher_product
        return self.products

    def __exit__(self, *exc):
        for module in self._modules:
            module.fisher_product = self._original
        return False


def scaling(family="point-button", tasks=5, local_steps=5, episodes=None, **fields):
    """The metrics rows of one Meta-CPO iteration with ``--workers 1`` and with ``--workers 2``:
    the second iteration of each run, so that the pool's start-up (spawning the processes and
    building their envs, a one-off per run, done at the first iteration) is not counted."""
    return tuple(meta_iteration_row(family, tasks, local_steps, episodes, workers=w, iterations=2, **fields)[0]
                 for w in (1, 2))


def scaling_figures(one, two):
    """``(speedup, serial fraction)`` from :func:`scaling`'s rows: wall time with one worker
    over two, and the share of the one-worker iteration outside the tasks' inner loops (the
    main process's outer step, the value refit, the checkpoint): Amdahl's serial fraction."""
    return one["time_total"] / two["time_total"], (one["time_total"] - one["time_tasks"]) / one["time_total"]
