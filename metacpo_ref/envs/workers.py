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
task; the caller's last checkpoint is untouched. Pool processes exit when
their parent dies, even by SIGKILL (:func:`_worker_init`); an unreachable
``ray_address`` is refused within seconds, naming it.

``backend="ray"`` (optional: ``pip install .[ray]``) submits the same jobs to
``n`` Ray actors, each holding its env: on an existing cluster
(``ray_address``) or on a local Ray instance started here. No cluster code of
ours: Ray schedules, we submit.
"""
import concurrent.futures as cf
import contextlib
import multiprocessing
import multiprocessing.resource_tracker
import ctypes
import os
import signal
import socket
import sys
import threading
import time

from metacpo_ref.envs import make_env
from metacpo_ref.envs.rollouts import NormalizedEnv

_ENVS = {}   # per process: family -> env, built on first use


def _env(family, obs_norm):
    if family not in _ENVS:
        _ENVS[family] = make_env(family)
    env = _ENVS[family]
    return env if obs_norm is None else NormalizedEnv(env, obs_norm)


def _run(fn, family, obs_norm, job):
    return fn(_env(family, obs_norm), *job)


PR_SET_PDEATHSIG = 1   # linux/prctl.h


def _worker_init(parent_pid):
    """Set up a pool process: leave Ctrl-C to the parent, which stops the workers
    (no tracebacks from each), and exit when the parent dies, however it dies
    (SIGKILL included): the kernel sends SIGKILL on the parent's death (Linux,
    ``prctl(PR_SET_PDEATHSIG)``), and a watchdog thread polls ``os.getppid()``
    every second (everywhere else, and in case the parent died before the prctl)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})   # blocked by the parent while starting us
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="parent-watchdog").start()


def _watch_parent(parent_pid, interval=1.0):
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(1)


def ray_address_form(address):
    """``address`` if it has a form Ray takes: ``HOST:PORT`` (``[IPv6]:PORT``), optionally
    ``ray://HOST:PORT``, or ``auto``; else a ValueError saying the form (before any work)."""
    hostport = address.split("://", 1)[1] if address.startswith("ray://") else address
    host, _, port = hostport.rpartition(":")
    plain = (bool(host) and not any(c in host for c in ":[]/ \t")) or (host.startswith("[") and host.endswith("]")
                                                                     and len(host) > 2)
    if address == "auto" or (plain and port.isdigit() and 1 <= int(port) <= 65535):
        return address
    raise ValueError(f"{address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, ray://head:10001, [::1]:6379, "
                     "or auto for the cluster this machine belongs to)")


def check_ray_address(address, timeout=3.0):
    """Refuse an unreachable ``HOST:PORT`` (optionally ``ray://HOST:PORT``) within
    ``timeout`` seconds, naming the address (Ray itself retries for a long time
    and then may crash). Other forms (``auto``) are left to Ray."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise WorkerError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); "
                          "check --ray-address, or leave it out to start a local Ray") from None


def worker_count(asked, tasks, backend="process", cores=None):
    """``(n, why)``: the workers worth starting for ``tasks`` jobs at a time, ``asked`` at
    most one per task and, for processes, one per core (``cores``: ``os.cpu_count()``);
    ``why`` names the limits that capped it (``None``: ``n == asked``). Results never depend on it."""
    cores = (os.cpu_count() or 1) if cores is None else cores
    limits = [(tasks, f"{tasks} task{'s' * (tasks != 1)}")]
    if backend == "process":
        limits.append((cores, f"{cores} core{'s' * (cores != 1)}"))
    n = min([asked] + [limit for limit, _ in limits])
    return n, (None if n == asked else " and ".join(text for limit, text in limits if limit == n))


class WorkerError(RuntimeError):
    """A task failed, crashed its worker, or timed out."""


class RayWorker:
    """A Ray actor holding one env (``backend="ray"``)."""

    def __init__(self, family, obs_norm):
        self.family, self.obs_norm = family, obs_norm

    def run(self, fn, job):
        return _run(fn, self.family, self.obs_norm, job)


BACKENDS = ("process", "ray")


@contextlib.contextmanager
def _sigint_held(main):
    """In the main thread (``main``): SIGINT blocked in it (processes started here
    inherit that) and Python's SIGINT handler (if set from Python) replaced by one that
    only records it, for the block's duration; afterwards the old handler is back and a
    recorded Ctrl-C is raised again through it (KeyboardInterrupt, by default).
    Elsewhere: nothing (signals are the main thread's)."""
    if not main:
        yield
        return
    held, previous = [], signal.getsignal(signal.SIGINT)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    if previous is not None:
        signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})   # a pending Ctrl-C arrives here
        if held:
            signal.raise_signal(signal.SIGINT)


class Workers:
    """``map(fn, jobs, labels)`` over tasks in ``n`` processes (``n = 1``: here),
    or on ``n`` Ray actors (``backend="ray"``); ``submit(fn, job, label)`` for one job
    that runs while the caller works on."""

    def __init__(self, family, obs_norm=None, n=1, task_timeout=None, backend="process", ray_address=None):
        if int(n) < 1:
            raise ValueError(f"workers must be >= 1, got {n}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        self.family, self.obs_norm, self.n, self.task_timeout = family, obs_norm, int(n), task_timeout
        self._pool = self._actors = None
        self._started_ray = False
        if backend == "ray":
            self._start_ray(ray_address)
        elif self.n > 1:
            self._start_pool()

    def _start_pool(self):
        """Start the n processes now, with Ctrl-C held back until each has answered: a
        new process inherits the blocked SIGINT through exec and ignores it
        (:func:`_worker_init`) before it unblocks it, so a Ctrl-C while they import is
        the parent's alone (one line, not a traceback from each). In the parent the
        mask blocks SIGINT in this thread only; the kernel hands a Ctrl-C to any other
        thread (OpenBLAS's), whose C handler would raise KeyboardInterrupt here at once
        and kill processes mid-import (and glfw's version probe, a grandchild, then
        printed a BrokenPipeError traceback), so Python's handler is held back too
        (:func:`_sigint_held`). CPython 3.11's executor spawns one per submit, after
        waking its manager thread, which may then wait without the new process's
        sentinel: a worker that died was noticed only at another task's result (or at
        task_timeout). Once each process has answered, the thread watches them all."""
        main = threading.current_thread() is threading.main_thread()
        if main:
            # started first: starting it unblocks SIGINT (it blocks SIGINT and SIGTERM around its spawn)
            multiprocessing.resource_tracker.ensure_running()
        try:
            with _sigint_held(main):
                self._pool = cf.ProcessPoolExecutor(self.n, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=_worker_init, initargs=(os.getpid(),))
                cf.wait([self._pool.submit(os.getpid) for _ in range(self.n)])
        except BaseException:
            self.close(kill=True)
            raise

    def _start_ray(self, address):
        if address:
            check_ray_address(address)
        try:
            import ray
        except ImportError:
            raise ValueError("the ray backend needs Ray: pip install '.[ray]'") from None
        if not ray.is_initialized():
            env_vars = {"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
            kwargs = {} if address else {"num_cpus": self.n, "include_dashboard": False}
            ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=False, **kwargs)
            self._started_ray = True
        actor = ray.remote(num_cpus=1)(RayWorker)
        self._actors = [actor.remote(self.family, self.obs_norm) for _ in range(self.n)]

    def _map_ray(self, fn, jobs, labels):
        import ray

        refs = [self._actors[i % self.n].run.remote(fn, job) for i, job in enumerate(jobs)]
        return [self._ray_result(ray, ref, label) for ref, label in zip(refs, labels)]

    def _ray_result(self, ray, ref, label):
        try:
            return ray.get(ref, timeout=self.task_timeout)
        except ray.exceptions.GetTimeoutError:
            raise WorkerError(f"{label} did not finish within {self.task_timeout} s") from None
        except ray.exceptions.RayError as e:
            raise WorkerError(f"{label} failed on a Ray worker: {e}") from None

    def map(self, fn, jobs, labels=None):
        """``[fn(env, *job) for job in jobs]``, in order; ``labels`` name the jobs in errors."""
        labels = labels or [f"job {i}" for i in range(len(jobs))]
        if self._actors is not None:
            return self._map_ray(fn, jobs, labels)
        if self._pool is None:
            return [self._here(fn, job, label) for job, label in zip(jobs, labels)]
        futures = [self._pool.submit(_run, fn, self.family, self.obs_norm, job) for job in jobs]
        return [self._pool_result(fut, label) for fut, label in zip(futures, labels)]

    def submit(self, fn, job, label="job"):
        """Start ``fn(env, *job)`` and return ``result()``, which waits for its value: on a
        pool process or a Ray actor while the caller goes on with other work (one worker:
        here, at once). Errors as in :meth:`map`, raised by ``result()``."""
        if self._actors is not None:
            import ray

            ref = self._actors[0].run.remote(fn, job)
            return lambda: self._ray_result(ray, ref, label)
        if self._pool is None:
            value = self._here(fn, job, label)
            return lambda: value
        fut = self._pool.submit(_run, fn, self.family, self.obs_norm, job)
        return lambda: self._pool_result(fut, label)

    def _here(self, fn, job, label):
        try:
            return _run(fn, self.family, self.obs_norm, job)
        except Exception as e:
            raise WorkerError(f"{label} failed: {type(e).__name__}: {e}") from e

    def _pool_result(self, fut, label):
        try:
            return fut.result(timeout=self.task_timeout)
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

    def close(self, kill=False):
        if self._actors is not None:
            import ray

            for a in self._actors:
                ray.kill(a)
            self._actors = None
            if self._started_ray:
                ray.shutdown()
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
