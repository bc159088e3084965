"""The run directory, its one owner: the paths of its files, the lock, ``config.json``,
``checkpoint.npz``, ``metrics.jsonl`` (rows of the keys :func:`row_keys` declares; damaged lines moved to
``metrics.jsonl.bad``) and the meta-test files (``test.json``, ``test-eval.json``, ...).

``checkpoint.npz`` holds everything needed to continue exactly (:data:`CHECKPOINT_KEYS`:
``theta``, the value-function parameters, the frozen observation normaliser, the next
iteration, the cumulative env steps, the config). Checkpoints, configs and meta-test files
are written to a temporary file and renamed (:func:`write_atomic`), so an interruption
never leaves a broken one. Training (:mod:`metacpo_ref.run.training`), meta-testing, the
figures, the CLI and the campaign's scripts read and write a run directory through here.
"""
import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metacpo_ref.algos.step_data import specs
from metacpo_ref.config import Config, effective
from metacpo_ref.envs.rollouts import ObsNorm
from metacpo_ref.model.policy import n_params

CONFIG = "config.json"
METRICS = "metrics.jsonl"
BAD_METRICS = "metrics.jsonl.bad"   # the damaged, duplicated or out-of-order lines resume took out of METRICS
CHECKPOINT = "checkpoint.npz"
LOCK_NAME = ".lock"   # the pid of the process training into the directory (held by flock)
CHECKPOINT_KEYS = ("theta", "vf_r", "vf_c", "obs_mean", "obs_std", "obs_clip", "iteration", "env_steps", "config")

# --- the metrics row ------------------------------------------------------------------
# One row per iteration, written by the training loop; older runs' rows may lack keys added since.
FRAME_KEYS = ("iteration", "env_steps",                   # the loop's
              "return", "cost", "cost_episode", "cost_limit", "cost_measure", "steps", "tasks",   # pre-adaptation
              "time_env", "time_learner", "time_per_task", "time_tasks", "time_step", "time_refit", "time_total")
BASELINE_KEYS = ("cases", "beta", "lam", "nu")           # CPO / TRPO: the pooled step's case and multipliers
META_KEYS = ("return_adapted", "cost_adapted", "cost_adapted_episode", "cases",   # after the K local steps
             "outer_case", "outer_beta", "outer_lam", "outer_nu", "F", "G", "F_new", "G_new")   # eq. 12's step
TASK_KEYS = ("params", "returns", "costs", "costs_episode", "betas", "cases", "lams", "nus")   # a row's "tasks"
TIME_KEYS = tuple(k for k in FRAME_KEYS if k.startswith("time_"))   # wall times: differ between equal runs
REQUIRED_KEYS = ("iteration", "env_steps", "return", "cost", "cost_limit")   # in every run's rows, the first ones too


def row_keys(meta):
    """The keys of a metrics row of a meta algorithm (``meta``) or of a baseline."""
    return FRAME_KEYS + (META_KEYS if meta else BASELINE_KEYS)


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


# --- config.json -------------------------------------------------------------------------

def config_to_json(config):
    """``config.json``'s text of ``config``."""
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


def write_config(out_dir, config):
    """Write ``config.json`` of ``out_dir`` (atomically)."""
    write_atomic(Path(out_dir) / CONFIG, lambda f: f.write(config_to_json(config).encode()))


def read_config_json(out_dir):
    """The dict in ``config.json`` of ``out_dir`` as it is written (``OSError`` if there is
    none, ``json.JSONDecodeError`` if it is not JSON); :func:`config_from_dict` makes a Config of it."""
    return json.loads((Path(out_dir) / CONFIG).read_text())


def checkpoint_config_json(out_dir):
    """The config of ``out_dir``'s checkpoint in ``config.json``'s form (:class:`CheckpointError`)."""
    return json.loads(config_to_json(load_checkpoint(Path(out_dir) / CHECKPOINT).config))


RESUMABLE_CHANGES = ("iterations",)   # what --resume may change; everything else must match
SAME_RUN = ("family", "algo", "cost_measure")   # a config.json differing in these is another run's


def config_differences(stored, other, names=None):
    """The fields among ``names`` (default: all) but :data:`RESUMABLE_CHANGES` whose values as
    the runs use them (:func:`metacpo_ref.config.effective`) differ between two Configs: the one
    comparison of resuming, of a ``config.json`` against its checkpoint and of the campaign's plan."""
    names = [f.name for f in dataclasses.fields(Config)] if names is None else names
    return [k for k in names if k not in RESUMABLE_CHANGES and effective(stored, k) != effective(other, k)]


def check_config_copy(out_dir, config, warn):
    """Warn (and let the caller rewrite it) if ``config.json`` is not the checkpoint's config;
    :class:`CheckpointError` if it is another run's (:data:`SAME_RUN` differ): two runs
    were written into one directory, and neither is trusted over the other."""
    out = Path(out_dir)
    path = out / CONFIG
    try:
        copy = config_from_dict(read_config_json(out))
    except FileNotFoundError:
        return warn(f"{path} is missing; rewritten from the checkpoint (which is trusted)")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        return warn(f"{path} is unreadable ({type(e).__name__}); rewritten from the checkpoint (which is trusted)")
    old, new = dataclasses.asdict(copy), dataclasses.asdict(config)
    other = config_differences(copy, config, SAME_RUN)
    if other:
        raise CheckpointError(
            f"{out} mixes two runs: checkpoint.npz is of {', '.join(f'{k} {new[k]!r}' for k in other)}, "
            f"config.json of {', '.join(repr(old[k]) for k in other)}; refusing to resume (move one run's "
            "files to its own directory, or start again in a new --out)")
    diff = config_differences(copy, config)
    if diff:
        warn(f"{path} disagrees with the checkpoint ({', '.join(f'{k} {old.get(k)!r}' for k in diff)} "
             f"instead of {', '.join(repr(new[k]) for k in diff)}); the checkpoint is trusted and "
             "config.json rewritten from it")


def remove_stale_tmp(out_dir):
    """Remove the temporary files (``*.tmp``) a killed :func:`write_atomic` left in ``out_dir``."""
    for tmp in Path(out_dir).glob("*.tmp"):
        tmp.unlink()


# --- checkpoint.npz (and every file written whole) ---------------------------------------------

def write_atomic(path, write):
    """Call ``write(f)`` on ``path + ".tmp"`` (binary), fsync, rename onto ``path``:
    an interruption or an OS error (full disk, ...) leaves the previous ``path``
    intact; the temporary file is removed on errors (and by :func:`remove_stale_tmp`
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
    """Write ``state`` atomically (:func:`write_atomic`), the arrays named by :data:`CHECKPOINT_KEYS`."""
    arrays = (state.theta, state.vf[0], state.vf[1], state.obs_norm.mean, state.obs_norm.std, state.obs_norm.clip,
              state.iteration, state.env_steps, np.array(config_to_json(state.config)))
    write_atomic(path, lambda f: np.savez(f, **dict(zip(CHECKPOINT_KEYS, arrays))))


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


def checkpoint_path(run):
    """The checkpoint of ``run``: a run directory's ``checkpoint.npz``, or ``run`` itself."""
    run = Path(run)
    return run / CHECKPOINT if run.is_dir() else run


def checkpoint_progress(out_dir):
    """``(iterations done, env steps)`` of ``out_dir``'s checkpoint; ``(0, 0)`` without
    one; ``None`` if it cannot be read."""
    ckpt = Path(out_dir) / CHECKPOINT
    if not ckpt.is_file():
        return 0, 0
    try:
        with np.load(ckpt) as z:
            return int(z["iteration"]), int(z["env_steps"])
    except Exception:   # noqa: BLE001 - any unreadable file: reported, `cli.py train --resume` says why
        return None


# --- the lock -------------------------------------------------------------------------

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



# --- metrics.jsonl -----------------------------------------------------------------------

def scan_metrics(out_dir):
    """``(rows, bad)`` of ``metrics.jsonl``: every parseable row (a JSON object with
    an integer ``iteration``) that continues the rows before it (a higher iteration,
    ``env_steps`` not lower), and ``bad``, the ``(line number, text)`` of every other
    non-empty line: a torn last line, a damaged one in the middle, a duplicated or
    out-of-order row (another run's rows, or a copy), not UTF-8. Lines are split at
    ``\n`` and kept as bytes in ``bad``, so that moving them elsewhere keeps them as they were."""
    rows, bad = [], []
    path = Path(out_dir) / METRICS
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


def append_row(out_dir, row, meta):
    """Append the metrics row ``row`` of a meta algorithm (``meta``) or a baseline to
    ``metrics.jsonl``; ``ValueError`` for a key not in :func:`row_keys` (before writing)."""
    unknown = set(row) - set(row_keys(meta))
    if unknown:
        raise ValueError(f"metrics row keys not in the row schema (rundir.row_keys): {', '.join(sorted(unknown))}")
    with open(Path(out_dir) / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")


def write_rows(out_dir, rows):
    """Replace ``metrics.jsonl`` by ``rows`` (atomically; no rows: an empty file)."""
    write_atomic(Path(out_dir) / METRICS, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def quarantine(out_dir, bad):
    """Append the lines ``bad`` (:func:`scan_metrics`'s) to ``metrics.jsonl.bad``, their own bytes."""
    with open(Path(out_dir) / BAD_METRICS, "ab") as f:
        f.writelines(line + b"\n" for _, line in bad)


# --- meta-test files (the output of `cli.py test --json`: test.json, test-eval.json, ...) ------

def write_test(path, doc):
    """Write the meta-test ``doc`` to ``path`` as indented JSON, atomically (``path.tmp``, renamed)."""
    write_atomic(path, lambda f: f.write((json.dumps(doc, indent=1) + "\n").encode()))


def read_test(out_dir, name):
    """The meta-test document ``name`` of ``out_dir`` (a dict with ``rows``); ``None`` without
    the file; ``json.JSONDecodeError`` if it is not JSON (e.g. being written)."""
    path = Path(out_dir) / name
    return json.loads(path.read_text()) if path.exists() else None


def read_json(path):
    """The JSON in ``path``; ``None`` if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
