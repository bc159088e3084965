"""Running the algorithms: training with checkpoints and exact resume, meta-testing
on unseen tasks (the paper's Fig. 5, third row), and a small Python API.

A run directory holds ``config.json``, ``metrics.jsonl`` (one JSON row per
iteration) and ``checkpoint.npz`` (everything needed to continue exactly:
``theta``, the value-function parameters, the frozen observation normaliser,
the next iteration, the cumulative env steps, the config). All randomness is keyed by (seed, iteration, task,
step) (see :mod:`metacpo_ref.envs.rollouts`), so a resumed run gives the same
numbers as an uninterrupted one. Checkpoints are written to a temporary file
and renamed, so an interruption never leaves a broken one.
"""
import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metacpo_ref.model.advantages import authors_cost, episode_measures, init_value
from metacpo_ref.algos.baselines import baseline_iteration
from metacpo_ref.config import (COST_LIMIT, FAMILIES, LOCAL_STEPS, META_TEST_TASKS, OBS_NORM_EPISODES, OBS_STD_FLOOR,
                                 Config)
from metacpo_ref.envs import make_env, sample_tasks, train_tasks
from metacpo_ref.algos.meta import meta_iteration
from metacpo_ref.model.policy import act_fn, init_theta, n_params
from metacpo_ref.envs.rollouts import NormalizedEnv, ObsNorm, batch_seed, collect, fit_obs_norm, random_act
from metacpo_ref.algos.local_step import policy_update
from metacpo_ref.algos.step_data import collect_step_data, specs
from metacpo_ref.envs.workers import Workers

TEST_ITERATION = 2**31 - 2   # the seed key of meta-testing's adaptation batches (never a training iteration)
EVAL_ITERATION = 2**31 - 6   # the seed key of meta-testing's evaluation episodes
NORM_ITERATION = 2**31 - 4   # the seed key of the observation normaliser's episodes


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or belongs to another family or policy shape."""


@dataclass(frozen=True, eq=False)
class State:
    """What a checkpoint holds: parameters, value functions, the frozen observation
    normaliser, the next iteration, env steps so far."""

    config: Config
    theta: np.ndarray
    vf: tuple
    obs_norm: ObsNorm
    iteration: int
    env_steps: int


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


def config_to_json(config):
    return json.dumps(dataclasses.asdict(config), indent=1)


RENAMED = {"kl_delta": ("baseline_delta", "ls_kl")}   # old config key -> the fields that took over its jobs
# Fields added later, and the value that reproduces what a config written before them ran with.
BEFORE_FIELD = {"recover_above_limit": False, "task": None, "inner_metric": "identity", "split_meta_gradient": False,
                "vf_ftol": None, "cost_measure": "episode", "car_walls": "stock"}


def config_from_dict(d):
    """A :class:`Config` from its JSON form. Configs written before ``kl_delta`` was split
    (every run under results/) load with its value in both fields that took over its
    two jobs (:data:`RENAMED`), and fields added since take the value the run used
    (:data:`BEFORE_FIELD`), so they resume exactly as before."""
    d = dict(d)
    for old, new in RENAMED.items():
        if old in d:
            value = d.pop(old)
            for name in new:
                d.setdefault(name, value)
    for name, value in BEFORE_FIELD.items():
        d.setdefault(name, value)
    d["hidden"] = tuple(d["hidden"])
    d["task"] = dict(d["task"]) if d["task"] else None
    return Config(**d)


def write_atomic(path, write):
    """Call ``write(f)`` on ``path + ".tmp"`` (binary), fsync, rename onto ``path``:
    an interruption or an OS error (full disk, ...) leaves the previous ``path``
    intact; the temporary file is removed on errors (and by :func:`prepare_run`
    if a kill left it behind)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(path, state):
    """Write ``state`` atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda f: np.savez(
        f, theta=state.theta, vf_r=state.vf[0], vf_c=state.vf[1],
        obs_mean=state.obs_norm.mean, obs_std=state.obs_norm.std, obs_clip=state.obs_norm.clip,
        iteration=state.iteration, env_steps=state.env_steps, config=np.array(config_to_json(state.config))))


def load_checkpoint(path, family=None):
    """A :class:`State` from ``path``; :class:`CheckpointError` if it is missing or
    corrupt, or (with ``family``) of another family, or of the wrong policy shape."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path) as z:
            config = config_from_dict(json.loads(str(z["config"])))
            norm = ObsNorm(z["obs_mean"], z["obs_std"], float(z["obs_clip"]))
            state = State(config, z["theta"].astype(np.float64), (z["vf_r"], z["vf_c"]), norm,
                          int(z["iteration"]), int(z["env_steps"]))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{path} is not a valid checkpoint ({type(e).__name__}: {e})") from None
    if family is not None and config.family != family:
        raise CheckpointError(f"{path} is a {config.family!r} checkpoint, not {family!r}")
    spec, _ = specs(config)
    if state.theta.shape != (n_params(spec),) or norm.mean.shape != (spec.obs_dim,):
        raise CheckpointError(f"{path}: theta has shape {state.theta.shape}, but a {config.family} policy "
                              f"with hidden sizes {config.hidden} has {n_params(spec)} parameters")
    return state


# --- training -------------------------------------------------------------------

LOCK_NAME = ".lock"   # in a run directory: the pid of the process training into it (held by flock)


class RunBusy(RuntimeError):
    """Another live process is training into the run directory (it holds the lock)."""


@contextlib.contextmanager
def run_lock(out_dir):
    """Hold the run directory ``out_dir`` for this process (created if missing) while the
    ``with`` block runs: an exclusive ``flock`` on ``out_dir/.lock``, which holds our pid.
    Another process holding it is :class:`RunBusy` naming the directory and its pid.
    The kernel releases a dead process's ``flock``, so a lock file left by a killed run
    is taken over. On every exit (an exception or Ctrl-C included) the lock file is
    removed, and the directory too if this call created it and nothing was written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory (choose another --out)", str(out))
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        lock = _acquire(out / LOCK_NAME)
    except BaseException:
        _remove_if_empty(out, created)
        raise
    try:
        yield out
    finally:
        (out / LOCK_NAME).unlink(missing_ok=True)   # before closing: whoever opens it next opens a new file
        lock.close()
        _remove_if_empty(out, created)


def _acquire(path):
    """The open lock file ``path``, locked by this process with our pid written in it."""
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            f.close()
            raise RunBusy(f"{path.parent} is in use by another training process (pid {pid}); wait for it to "
                          "end, or choose another --out") from None
        except BaseException:
            f.close()
            raise
        try:   # the previous holder may have removed the file between our open and our flock
            current = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        f.close()
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _remove_if_empty(out, created):
    if created:
        with contextlib.suppress(OSError):
            out.rmdir()


RESUMABLE_CHANGES = ("iterations",)   # what --resume may change; everything else must match


def _effective(config, name):
    """A field's value as the run uses it (``episodes=None`` is the family's, ...)."""
    if name == "episodes":
        return config.n_episodes
    if name == "cost_limit":
        return config.train_cost_limit
    if name == "hidden":
        return tuple(config.hidden)
    return getattr(config, name)


def resume_config(out_dir, given):
    """The config to continue the run in ``out_dir``: the checkpoint's, with
    ``iterations`` from ``given`` (the fields given explicitly, e.g. on the
    command line) when present. Any other given field that differs from the
    stored run is refused (:class:`CheckpointError` listing all differences)."""
    stored = load_checkpoint(Path(out_dir) / "checkpoint.npz").config
    try:
        asked = dataclasses.replace(stored, **given)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot resume {out_dir}: {e}") from None
    diff = [k for k in given if k not in RESUMABLE_CHANGES and _effective(asked, k) != _effective(stored, k)]
    if diff:
        raise CheckpointError(
            f"cannot resume {out_dir} with other settings than it was started with: "
            + ", ".join(f"{k} {_effective(stored, k)!r} -> {_effective(asked, k)!r}" for k in diff)
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
    ckpt = out / "checkpoint.npz"
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory (choose another --out)", str(out))
    if not resume:
        if ckpt.exists():
            raise CheckpointError(f"{out} already has a checkpoint: {words['resume']} to continue it, "
                                  f"or {words['out']}")
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(out)
        state = initial_state(config)
        write_atomic(out / "config.json", lambda f: f.write(config_to_json(config).encode()))
        write_atomic(out / "metrics.jsonl", lambda f: None)
        save_checkpoint(ckpt, state)
        return state
    state = load_checkpoint(ckpt)
    old, new = dataclasses.asdict(state.config), dataclasses.asdict(config)
    diff = [k for k in new if k not in RESUMABLE_CHANGES and old[k] != new[k]]
    if diff:
        raise CheckpointError(f"cannot resume {out} with a different config: "
                              + ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in diff))
    if config.iterations <= state.iteration:
        raise CheckpointError(f"run {out} already has {state.iteration} iterations; "
                              f"{words['iterations']} > {state.iteration} to continue")
    _remove_stale_tmp(out)
    _check_config_copy(out, state.config, warn)
    rows, bad = scan_metrics(out)
    if bad:
        with open(out / "metrics.jsonl.bad", "ab") as f:   # the lines' own bytes, whatever they are
            f.writelines(line + b"\n" for _, line in bad)
        warn(f"{out}/metrics.jsonl: {len(bad)} damaged, duplicated or out-of-order line(s) "
             f"(line {', '.join(str(n) for n, _ in bad)}) "
             f"moved to {out}/metrics.jsonl.bad; the other rows are kept")
    kept = [r for r in rows if r["iteration"] < state.iteration]
    missing = sorted(set(range(state.iteration)) - {r["iteration"] for r in kept})
    if missing:
        warn(f"{out}/metrics.jsonl has no rows for iteration(s) {_ranges(missing)} of the checkpoint's "
             f"{state.iteration}; the run continues without them")
    write_atomic(out / "metrics.jsonl", lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))
    write_atomic(out / "config.json", lambda f: f.write(config_to_json(config).encode()))
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


def _remove_stale_tmp(out):
    for tmp in out.glob("*.tmp"):
        tmp.unlink()


SAME_RUN = ("family", "algo", "cost_measure")   # a config.json differing in these is another run's


def _check_config_copy(out, config, warn):
    """Warn (and let the caller rewrite it) if ``config.json`` is not the checkpoint's config;
    :class:`CheckpointError` if it is another run's (:data:`SAME_RUN` differ): two runs
    were written into one directory, and neither is trusted over the other."""
    path = out / "config.json"
    try:
        copy = config_from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return warn(f"{path} is missing; rewritten from the checkpoint (which is trusted)")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        return warn(f"{path} is unreadable ({type(e).__name__}); rewritten from the checkpoint (which is trusted)")
    old, new = dataclasses.asdict(copy), dataclasses.asdict(config)
    other = [k for k in SAME_RUN if old[k] != new[k]]
    if other:
        raise CheckpointError(
            f"{out} mixes two runs: checkpoint.npz is of {', '.join(f'{k} {new[k]!r}' for k in other)}, "
            f"config.json of {', '.join(repr(old[k]) for k in other)}; refusing to resume (move one run's "
            "files to its own directory, or start again in a new --out)")
    diff = [k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k]]
    if diff:
        warn(f"{path} disagrees with the checkpoint ({', '.join(f'{k} {old.get(k)!r}' for k in diff)} "
             f"instead of {', '.join(repr(new[k]) for k in diff)}); the checkpoint is trusted and "
             "config.json rewritten from it")


def scan_metrics(out_dir):
    """``(rows, bad)`` of ``metrics.jsonl``: every parseable row (a JSON object with
    an integer ``iteration``) that continues the rows before it (a higher iteration,
    ``env_steps`` not lower), and ``bad``, the ``(line number, text)`` of every other
    non-empty line: a torn last line, a damaged one in the middle, a duplicated or
    out-of-order row (another run's rows, or a copy), not UTF-8. Lines are split at
    ``\n`` and kept as bytes in ``bad``, so that moving them elsewhere keeps them as they were."""
    rows, bad = [], []
    path = Path(out_dir) / "metrics.jsonl"
    if path.exists():
        for n, line in enumerate(path.read_bytes().split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode())
            except (UnicodeDecodeError, json.JSONDecodeError):
                row = None
            if isinstance(row, dict) and isinstance(row.get("iteration"), int) and _continues(rows, row):
                rows.append(row)
            else:
                bad.append((n, line))
    return rows, bad


def _continues(rows, row):
    """Whether ``row`` may follow ``rows``: a higher iteration, and env steps not going back."""
    if not rows:
        return True
    last = rows[-1]
    steps = [r.get("env_steps") for r in (last, row)]
    backwards = all(isinstance(v, (int, float)) for v in steps) and steps[1] < steps[0]
    return row["iteration"] > last["iteration"] and not backwards


def read_metrics(out_dir):
    """The parseable rows of ``metrics.jsonl`` (see :func:`scan_metrics` for the others)."""
    return scan_metrics(out_dir)[0]


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
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        save_checkpoint(out / "checkpoint.npz", State(config, theta, vf, state.obs_norm, it + 1, env_steps))
        yield row


def train(config, out_dir, resume=False, workers=1, backend="process", ray_address=None):
    """Train ``config`` into ``out_dir`` (Python API), holding its lock (:func:`run_lock`);
    returns the final :class:`State`. ``resume=True`` continues the run in ``out_dir``
    (:func:`prepare_run`); a run that already has ``config.iterations`` (and ``config``'s
    other settings) is returned as it is."""
    with run_lock(out_dir):
        if resume and _finished(config, out_dir):
            return load_checkpoint(Path(out_dir) / "checkpoint.npz")
        state = prepare_run(config, out_dir, resume, words=PYTHON_WORDS)
        for _ in run_iterations(state, out_dir, workers, backend, ray_address):
            pass
    return load_checkpoint(Path(out_dir) / "checkpoint.npz")


def _finished(config, out_dir):
    """Whether the run in ``out_dir`` is ``config``'s, all its iterations done."""
    state = load_checkpoint(Path(out_dir) / "checkpoint.npz")
    return dataclasses.asdict(state.config) == dataclasses.asdict(config) and state.iteration == config.iterations


# --- meta-testing -------------------------------------------------------------------

MEASURES = ("return", "cost_episode", "cost_discounted", "cost_authors", "cost_rate")


def evaluate_policy(env, act, n_episodes, seed, gamma):
    """What meta-testing reports of a policy ``act(obs, rng)`` (D36): over ``n_episodes``
    episodes seeded by ``seed``, the mean episode return, the undiscounted cost per
    episode, the paper's discounted ``J_C`` (each episode from its first step), and, for
    comparison only, the authors' logged measure (:func:`metacpo_ref.model.advantages.authors_cost`:
    the whole batch discounted from its first step, never reset); and the cost per step.
    A dict keyed by :data:`MEASURES`."""
    batch = collect(env, act, n_episodes, seed)
    undiscounted, discounted = episode_measures(batch, gamma)
    return {"return": float(np.mean(batch.ep_return)), "cost_episode": float(np.mean(undiscounted)),
            "cost_discounted": float(np.mean(discounted)), "cost_authors": authors_cost(batch, gamma),
            "cost_rate": float(np.sum(batch.ep_cost) / np.sum(batch.ep_len))}


def adapt_on(env, task, theta, k, config, vf, seed, cost_limit, deterministic=False, eval_episodes=None):
    """Adapt ``theta`` on ``task`` for ``k`` steps in ``env`` (a job for the workers).

    Returns ``(phi_k, stats)``: ``stats[j]`` (j = 0..k) is :func:`evaluate_policy` of
    ``phi_j`` on ``eval_episodes`` (default ``config.n_episodes``) separate evaluation
    episodes, never the batch the next step adapts on. Adaptation takes the algorithm's
    own step (``policy_update``) on a batch of ``config.n_episodes`` stochastic episodes
    of ``phi_j``, with ``b`` in ``config.cost_measure`` against ``cost_limit``. The
    evaluation episodes of every ``phi_j`` share one seed per task (the same layouts and
    action noise at each j, and for every checkpoint tested with the same ``seed``), so
    the rows differ by the policy, not by the draw; ``deterministic``: mean actions."""
    env.set_task(task)
    spec, vspec = specs(config)
    n_eval = config.n_episodes if eval_episodes is None else int(eval_episodes)
    phi, stats = np.asarray(theta, dtype=np.float64), []
    for j in range(k + 1):
        if n_eval:   # 0: adapt only (the Python API's adapt)
            stats.append(evaluate_policy(env, act_fn(spec, phi, deterministic=deterministic), n_eval,
                                         _eval_seed(seed, task), config.gamma))
        if j < k:
            c = collect_step_data(env, spec, vspec, phi, vf, config,
                                  batch_seed(seed, TEST_ITERATION, _task_key(task), j), cost_limit)
            vf = c.vf
            phi = policy_update(spec, phi, c.data, config).phi   # the algorithm's own rule
    return phi, stats


def adapt(run, task, k, config=None, vf=None, obs_norm=None, seed=0, cost_limit=None):
    """``phi_k`` after ``k`` adaptation steps on ``task`` (Python API).

    ``run`` is a run directory, its ``checkpoint.npz`` or a :class:`State`: the policy adapts
    as ``cli.py test`` (:func:`meta_test`) adapts it, with the run's config, value functions
    and observation normaliser, the seeds of meta-testing's adaptation batches and the
    family's test limit in the run's cost measure (``cost_limit`` overrides the limit). A bare
    ``theta`` (an array) adapts as given: ``config`` (default: Meta-CPO on the task's family),
    ``vf`` (default: fresh value functions) and ``obs_norm`` (default: none, raw observations)."""
    if isinstance(run, np.ndarray):
        config = Config(family=task.family) if config is None else config
        _, vspec = specs(config)
        vf = (init_value(vspec, 1), init_value(vspec, 2)) if vf is None else vf
        theta = run
    else:
        if (config, vf, obs_norm) != (None, None, None):
            raise TypeError("adapt(run, ...) takes config, vf and obs_norm from the run; to give them yourself, "
                            "pass a bare theta (e.g. state.theta) instead of the run")
        state = run if isinstance(run, State) else load_checkpoint(checkpoint_path(run))
        config, vf, obs_norm, theta = state.config, state.vf, state.obs_norm, state.theta
    if task.family != config.family:
        raise ValueError(f"a {task.family!r} task cannot adapt a {config.family!r} policy")
    limit = FAMILIES[config.family].cost_limit_test if cost_limit is None else float(cost_limit)
    env = make_env(task.family, task)
    env = env if obs_norm is None else NormalizedEnv(env, obs_norm)
    return adapt_on(env, task, theta, k, config, vf, seed, limit, eval_episodes=0)[0]


def checkpoint_path(run):
    """The checkpoint of ``run``: a run directory's ``checkpoint.npz``, or ``run`` itself."""
    run = Path(run)
    return run / "checkpoint.npz" if run.is_dir() else run


def _task_key(task):
    """A stable integer for a task's seed key (from its parameters)."""
    digest = json.dumps(task.params, sort_keys=True).encode()
    return int(np.random.SeedSequence(list(digest)).generate_state(1)[0])


def _se(x):
    x = np.asarray(x, dtype=np.float64)
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def meta_test_rows(tasks, per_task, config, limit, protocol):
    """One meta-test row per step k from the tasks' :func:`evaluate_policy` dicts
    ``per_task[i][k]``: every measure of :data:`MEASURES` averaged over tasks (and its
    standard error ``NAME_se``), ``cost`` the one in the run's ``cost_measure`` (what
    ``cost_limit`` is on), and the per-task numbers."""
    rows = []
    for j in range(len(per_task[0])):
        stats = [p[j] for p in per_task]
        row = {"step": j}
        for m in MEASURES:
            v = [s[m] for s in stats]
            row[m], row[m + "_se"] = float(np.mean(v)), _se(v)
        own = "cost_" + config.cost_measure
        row.update(cost=row[own], cost_se=row[own + "_se"], cost_limit=limit, cost_measure=config.cost_measure,
                   **protocol, tasks=[{"params": t.params, **s, "cost": s[own]} for t, s in zip(tasks, stats)])
        rows.append(row)
    return rows


def meta_test(checkpoint, family=None, n_tasks=META_TEST_TASKS, adapt_steps=LOCAL_STEPS, episodes=None,
              cost_limit=None, deterministic=False, seed=0, workers=1, backend="process", ray_address=None,
              eval_episodes=None, random_policy=False):
    """Adapt the checkpoint's policy on ``n_tasks`` unseen (test-split) tasks for
    ``adapt_steps`` steps (tasks in parallel on ``workers`` processes) and measure each
    ``phi_k`` on separate evaluation episodes (:func:`adapt_on`): one row per step
    k = 0..K (:func:`meta_test_rows`). Adaptation batches have the run's size unless
    ``episodes`` is given; ``eval_episodes`` defaults to the same number.
    ``deterministic`` evaluates mean actions. ``cost_limit`` defaults to the family's
    test limit, in the run's cost measure. ``random_policy``: instead, one row k = 0 of a
    uniformly random policy on the same tasks and evaluation episodes (the checkpoint
    gives the family, the walls, the normaliser and the numbers of episodes)."""
    state = load_checkpoint(checkpoint, family)
    config = state.config
    if cost_limit is not None:
        COST_LIMIT.check("cost_limit", cost_limit)
    if episodes is not None:
        config = dataclasses.replace(config, episodes=episodes)
    n_eval = config.n_episodes if eval_episodes is None else int(eval_episodes)
    tasks = sample_tasks(config.family, n_tasks, "test", seed=seed, walls=config.car_walls)
    limit = FAMILIES[config.family].cost_limit_test if cost_limit is None else float(cost_limit)
    if random_policy:
        jobs = [(task, seed, n_eval, config.gamma) for task in tasks]
        fn, adapt_steps = _random_on, 0
    else:
        jobs = [(task, state.theta, adapt_steps, config, state.vf, seed, limit, deterministic, n_eval)
                for task in tasks]
        fn = adapt_on
    with Workers(config.family, state.obs_norm, workers, backend=backend, ray_address=ray_address) as w:
        results = w.map(fn, jobs, [f"test task {t.params}" for t in tasks])
    protocol = {"adapt_episodes": config.n_episodes, "eval_episodes": n_eval,
                "deterministic": bool(deterministic), "policy": "random" if random_policy else "checkpoint"}
    return meta_test_rows(tasks, [stats for _, stats in results], config, limit, protocol)


def _random_on(env, task, seed, n_episodes, gamma):
    """A uniformly random policy's :func:`evaluate_policy` numbers on ``task`` (the
    evaluation episodes' seed of :func:`adapt_on`), as ``(None, [stats])``."""
    env.set_task(task)
    return None, [evaluate_policy(env, random_act, n_episodes, _eval_seed(seed, task), gamma)]


def _eval_seed(seed, task):
    """The seed of a test task's evaluation episodes (the same for every ``phi_k`` and checkpoint)."""
    return batch_seed(seed, EVAL_ITERATION, _task_key(task), 0)


def load_policy(path, deterministic=True):
    """``act(obs) -> action`` of a checkpoint's policy (``path``: the checkpoint or its run
    directory) on raw observations (Python API; the run's normaliser is applied): the mean
    action, or a sample with ``deterministic=False`` (its own seeded generator)."""
    state = load_checkpoint(checkpoint_path(path))
    spec, _ = specs(state.config)
    act = act_fn(spec, state.theta, deterministic=deterministic)
    rng = np.random.default_rng(0)
    return lambda obs: act(state.obs_norm(obs), rng)[0]
