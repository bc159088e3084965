"""Training runs: the loop of iterations with a checkpoint after each, and exact resume.

The run directory (``config.json``, ``metrics.jsonl``, ``checkpoint.npz``, the lock) is
:mod:`metacpo_ref.run.rundir`'s; meta-testing is :mod:`metacpo_ref.run.evaluation`. All
randomness is keyed by (seed, iteration, task, step) (see :mod:`metacpo_ref.envs.rollouts`),
so a resumed run gives the same numbers as an uninterrupted one.
"""
import dataclasses
import errno
import time
import warnings
from pathlib import Path

import numpy as np

from metacpo_ref.algos.baselines import baseline_iteration
from metacpo_ref.algos.meta import meta_iteration
from metacpo_ref.algos.step_data import specs
from metacpo_ref.config import OBS_NORM_EPISODES, OBS_STD_FLOOR, effective
from metacpo_ref.envs import make_env, train_tasks
from metacpo_ref.envs.rollouts import batch_seed, collect, fit_obs_norm, random_act
from metacpo_ref.envs.workers import Workers
from metacpo_ref.model.advantages import init_value
from metacpo_ref.model.policy import init_theta
from metacpo_ref.run import rundir
from metacpo_ref.run.rundir import CheckpointError, State, load_checkpoint, run_lock

NORM_ITERATION = 2**31 - 4   # the seed key of the observation normaliser's episodes


def initial_state(config):
    """``theta`` and value functions from ``config.seed``, and the observation
    normaliser fitted on seeded random-policy episodes of training tasks; iteration 0."""
    spec, vspec = specs(config)
    seeds = np.random.SeedSequence([config.seed, 7]).generate_state(3)
    env = make_env(config.family)
    obs = []
    for i, task in enumerate(train_tasks(config.family, config.tasks, config.seed, config.task, config.car_walls)):
        env.set_task(task)
        batch = collect(env, random_act, OBS_NORM_EPISODES, batch_seed(config.seed, NORM_ITERATION, i, 0))
        obs.append(batch.obs)
    norm = fit_obs_norm(np.concatenate(obs), OBS_STD_FLOOR)
    return State(config, init_theta(spec, int(seeds[0])),
                 (init_value(vspec, int(seeds[1])), init_value(vspec, int(seeds[2]))), norm, 0, 0)


def resume_config(out_dir, given):
    """The config to continue the run in ``out_dir``: the checkpoint's, with
    ``iterations`` from ``given`` (the fields given explicitly, e.g. on the
    command line) when present. Any other given field that differs from the
    stored run is refused (:class:`CheckpointError` listing all differences)."""
    stored = load_checkpoint(Path(out_dir) / rundir.CHECKPOINT).config
    try:
        asked = dataclasses.replace(stored, **given)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot resume {out_dir}: {e}") from None
    diff = rundir.config_differences(stored, asked, list(given))
    if diff:
        raise CheckpointError(
            f"cannot resume {out_dir} with other settings than it was started with: "
            + ", ".join(f"{k} {effective(stored, k)!r} -> {effective(asked, k)!r}" for k in diff)
            + " (only --iterations and --workers/--backend/--ray-address may change; "
              "leave the others out to use the stored ones)")
    return dataclasses.replace(stored, iterations=given.get("iterations", stored.iterations))


class RunWarning(UserWarning):
    """Something in a run directory was repaired (see :func:`prepare_run`)."""


def _warn(message):
    warnings.warn(message, RunWarning, stacklevel=3)


# How prepare_run's errors name what to do: the command line's flags, or train()'s arguments.
CLI_WORDS = {"resume": "pass --resume", "iterations": "pass --iterations N", "out": "choose another --out"}
PYTHON_WORDS = {"resume": "call train(..., resume=True)", "iterations": "give a Config with iterations=N",
                "out": "choose another out_dir"}


def prepare_run(config, out_dir, resume=False, warn=_warn, words=CLI_WORDS):
    """Create (or, with ``resume``, reopen) the run directory; returns the start :class:`State`.

    A fresh run refuses a directory that already has a checkpoint. A resumed run
    must have the same config (only ``iterations`` may grow, and must exceed the
    iterations done). The checkpoint is the truth; repairs are reported through
    ``warn(message)``: a ``config.json`` that is missing, unreadable or disagrees
    with the checkpoint is rewritten from it; unparseable lines of
    ``metrics.jsonl`` are moved to ``metrics.jsonl.bad``; rows past the
    checkpoint (written by an iteration that was then interrupted) are dropped.
    Temporary files left by a killed write (``*.tmp``) are removed. ``words`` name the
    remedies in errors (:data:`CLI_WORDS`, or :data:`PYTHON_WORDS` for :func:`train`).
    """
    out = Path(out_dir)
    ckpt = out / rundir.CHECKPOINT
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory (choose another --out)", str(out))
    if not resume:
        if ckpt.exists():
            raise CheckpointError(f"{out} already has a checkpoint: {words['resume']} to continue it, "
                                  f"or {words['out']}")
        out.mkdir(parents=True, exist_ok=True)
        rundir.remove_stale_tmp(out)
        state = initial_state(config)
        rundir.write_config(out, config)
        rundir.write_rows(out, [])
        rundir.save_checkpoint(ckpt, state)
        return state
    state = load_checkpoint(ckpt)
    diff = rundir.config_differences(state.config, config)
    if diff:
        raise CheckpointError(f"cannot resume {out} with a different config: " + ", ".join(
            f"{k} {effective(state.config, k)!r} -> {effective(config, k)!r}" for k in diff))
    if config.iterations <= state.iteration:
        raise CheckpointError(f"run {out} already has {state.iteration} iterations; "
                              f"{words['iterations']} > {state.iteration} to continue")
    rundir.remove_stale_tmp(out)
    rundir.check_config_copy(out, state.config, warn)
    rows, bad = rundir.scan_metrics(out)
    if bad:
        rundir.quarantine(out, bad)
        warn(f"{out}/metrics.jsonl: {len(bad)} damaged, duplicated or out-of-order line(s) "
             f"(line {', '.join(str(n) for n, _ in bad)}) "
             f"moved to {out}/metrics.jsonl.bad; the other rows are kept")
    kept = [r for r in rows if r["iteration"] < state.iteration]
    missing = sorted(set(range(state.iteration)) - {r["iteration"] for r in kept})
    if missing:
        warn(f"{out}/metrics.jsonl has no rows for iteration(s) {_ranges(missing)} of the checkpoint's "
             f"{state.iteration}; the run continues without them")
    rundir.write_rows(out, kept)
    rundir.write_config(out, config)
    return dataclasses.replace(state, config=config)


def _ranges(ints):
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out, start = [], None
    for i, v in enumerate(ints):
        if start is None:
            start = v
        if i + 1 == len(ints) or ints[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def run_iterations(state, out_dir, workers=1, backend="process", ray_address=None):
    """Generator: run the remaining iterations of ``state.config`` (tasks in parallel
    on ``workers`` processes or Ray actors, see :mod:`metacpo_ref.envs.workers`),
    appending a row to ``metrics.jsonl`` and then saving the checkpoint after
    each; yields each row. ``time_env`` and ``time_learner`` are summed over
    tasks; ``time_total`` is the iteration's wall time."""
    with Workers(state.config.family, state.obs_norm, workers, backend=backend, ray_address=ray_address) as w:
        yield from _iterations(state, out_dir, w)


def _iterations(state, out_dir, workers):
    config = state.config
    out = Path(out_dir)
    iterate = meta_iteration if config.meta else baseline_iteration
    theta, vf, env_steps = state.theta, state.vf, state.env_steps
    for it in range(state.iteration, config.iterations):
        t0 = time.perf_counter()
        theta, vf, metrics = iterate(theta, vf, config, it, workers)
        env_steps += metrics["steps"]
        row = {"iteration": it, "env_steps": env_steps, **metrics,
               "time_total": time.perf_counter() - t0}
        rundir.append_row(out, row, config.meta)
        rundir.save_checkpoint(out / rundir.CHECKPOINT, State(config, theta, vf, state.obs_norm, it + 1, env_steps))
        yield row


def train(config, out_dir, resume=False, workers=1, backend="process", ray_address=None):
    """Train ``config`` into ``out_dir`` (Python API), holding its lock (:func:`run_lock`);
    returns the final :class:`State`. ``resume=True`` continues the run in ``out_dir``
    (:func:`prepare_run`); a run that already has ``config.iterations`` (and ``config``'s
    other settings) is returned as it is."""
    with run_lock(out_dir):
        if resume and _finished(config, out_dir):
            return load_checkpoint(Path(out_dir) / rundir.CHECKPOINT)
        state = prepare_run(config, out_dir, resume, words=PYTHON_WORDS)
        for _ in run_iterations(state, out_dir, workers, backend, ray_address):
            pass
    return load_checkpoint(Path(out_dir) / rundir.CHECKPOINT)


def _finished(config, out_dir):
    """Whether the run in ``out_dir`` is ``config``'s, all its iterations done."""
    state = load_checkpoint(Path(out_dir) / rundir.CHECKPOINT)
    return not rundir.config_differences(state.config, config) and state.iteration == config.iterations

