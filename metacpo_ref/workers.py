"""Per-task work in parallel: the M tasks of an iteration are independent.

:class:`Workers` maps a function ``fn(env, *job)`` over jobs, each job one
task. With one worker it runs in this process; with more, in a pool of
processes (the standard library's, spawn start method), each of which builds
its env once (the Python 3.11 import fix and the fast reset apply there too,
through :func:`metacpo_ref.envs.make_env`) and switches it with ``set_task``.
Every batch's randomness is keyed by (seed, iteration, task, step), so the
results are the same for any number of workers.

A job that raises, a worker that dies, or a job that runs past
``task_timeout`` seconds stops the map with a :class:`WorkerError` naming the
task; the caller's last checkpoint is untouched.
"""
import concurrent.futures as cf
import multiprocessing

from metacpo_ref.envs import make_env
from metacpo_ref.rollouts import NormalizedEnv

_ENVS = {}   # per process: family -> env, built on first use


def _env(family, obs_norm):
    if family not in _ENVS:
        _ENVS[family] = make_env(family)
    env = _ENVS[family]
    return env if obs_norm is None else NormalizedEnv(env, obs_norm)


def _run(fn, family, obs_norm, job):
    return fn(_env(family, obs_norm), *job)


class WorkerError(RuntimeError):
    """A task failed, crashed its worker, or timed out."""


class Workers:
    """``map(fn, jobs, labels)`` over tasks in ``n`` processes (``n = 1``: here)."""

    def __init__(self, family, obs_norm=None, n=1, task_timeout=None):
        if int(n) < 1:
            raise ValueError(f"workers must be >= 1, got {n}")
        self.family, self.obs_norm, self.n, self.task_timeout = family, obs_norm, int(n), task_timeout
        self._pool = None
        if self.n > 1:
            self._pool = cf.ProcessPoolExecutor(self.n, mp_context=multiprocessing.get_context("spawn"))

    def map(self, fn, jobs, labels=None):
        """``[fn(env, *job) for job in jobs]``, in order; ``labels`` name the jobs in errors."""
        labels = labels or [f"job {i}" for i in range(len(jobs))]
        if self._pool is None:
            out = []
            for job, label in zip(jobs, labels):
                try:
                    out.append(_run(fn, self.family, self.obs_norm, job))
                except Exception as e:
                    raise WorkerError(f"{label} failed: {type(e).__name__}: {e}") from e
            return out
        futures = [self._pool.submit(_run, fn, self.family, self.obs_norm, job) for job in jobs]
        out = []
        for fut, label in zip(futures, labels):
            try:
                out.append(fut.result(timeout=self.task_timeout))
            except cf.TimeoutError:
                self.close(kill=True)
                raise WorkerError(f"{label} did not finish within {self.task_timeout} s; "
                                  "the worker was stopped") from None
            except cf.process.BrokenProcessPool as e:
                self.close(kill=True)
                raise WorkerError(f"a worker process died while running {label} ({e})") from None
            except Exception as e:
                self.close(kill=True)
                raise WorkerError(f"{label} failed in a worker: {type(e).__name__}: {e}") from e
        return out

    def close(self, kill=False):
        if self._pool is not None:
            if kill:
                for p in list(getattr(self._pool, "_processes", {}).values()):
                    p.kill()
            self._pool.shutdown(wait=not kill, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(kill=exc[0] is not None)
