"""Parallel per-task work: same numbers for any worker count; failures name the task."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from metacpo_ref.config import Config
from metacpo_ref.run.rundir import load_checkpoint, read_metrics
from metacpo_ref.run.training import train
from metacpo_ref.envs import workers
from metacpo_ref.envs.workers import WorkerError, Workers, check_ray_address

TINY = dict(family="point-circle", tasks=2, local_steps=1, episodes=1, iterations=1, hidden=(8,))


@pytest.mark.parametrize("algo", ["meta-cpo", "cpo"])
def test_worker_count_does_not_change_results(tmp_path, algo):
    cfg = Config(algo=algo, **TINY)
    one = train(cfg, tmp_path / "w1", workers=1)
    two = train(cfg, tmp_path / "w2", workers=2)
    np.testing.assert_array_equal(one.theta, two.theta)
    np.testing.assert_array_equal(one.vf[1], two.vf[1])
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]
    assert strip(read_metrics(tmp_path / "w1")) == strip(read_metrics(tmp_path / "w2"))
    assert load_checkpoint(tmp_path / "w2" / "checkpoint.npz").iteration == 1


def test_split_meta_gradient_same_for_any_worker_count(tmp_path):
    """config.split_meta_gradient: the tasks' meta-gradient parts, computed in the workers,
    give the same run for 1 and 2 workers (to the bit), and the run of the whole
    meta-gradient up to rounding (meta.gradient_from_parts)."""
    split = Config(split_meta_gradient=True, **TINY)
    one = train(split, tmp_path / "w1", workers=1)
    two = train(split, tmp_path / "w2", workers=2)
    np.testing.assert_array_equal(one.theta, two.theta)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]
    assert strip(read_metrics(tmp_path / "w1")) == strip(read_metrics(tmp_path / "w2"))
    whole = train(Config(split_meta_gradient=False, **TINY), tmp_path / "whole", workers=1)
    np.testing.assert_allclose(one.theta, whole.theta, rtol=1e-12, atol=1e-14)
    assert not np.array_equal(one.theta, whole.theta)   # the parts were summed here: other rounding
    (row,), (row_whole,) = read_metrics(tmp_path / "w1"), read_metrics(tmp_path / "whole")
    assert (row["F"], row["G"]) == (row_whole["F"], row_whole["G"]) and row["outer_beta"] > 0


def failing_job(env, x):
    if x == 1:
        raise RuntimeError("boom")
    return env.observation_space.shape[0] + x


def hanging_job(env, x):
    time.sleep(60)


def test_failures_name_the_task():
    with Workers("point-circle", n=2) as w:
        assert w.map(failing_job, [(0,), (2,)]) == [28, 30]
        assert w.submit(failing_job, (2,))() == 30
        pending = w.submit(failing_job, (1,), "the refit")
        with pytest.raises(WorkerError, match="the refit failed in a worker: RuntimeError: boom"):
            pending()
    with Workers("point-circle", n=2) as w:
        with pytest.raises(WorkerError, match="task B failed in a worker: RuntimeError: boom"):
            w.map(failing_job, [(0,), (1,)], ["task A", "task B"])
    with Workers("point-circle", n=2, task_timeout=3) as w:
        t0 = time.time()
        with pytest.raises(WorkerError, match="slow task did not finish within 3 s"):
            w.map(hanging_job, [(0,)], ["slow task"])
        assert time.time() - t0 < 30
    with Workers("point-circle", n=1) as w:   # in-process, the same report
        with pytest.raises(WorkerError, match="job 0 failed: RuntimeError: boom"):
            w.map(failing_job, [(1,)])
        assert w.submit(failing_job, (2,))() == 30
        with pytest.raises(WorkerError, match="job failed: RuntimeError: boom"):
            w.submit(failing_job, (1,))()


@pytest.mark.slow
def test_ray_backend_matches_one_worker(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install '.[ray]'; make install does)")
    cfg = Config(**TINY)
    one = train(cfg, tmp_path / "w1", workers=1)
    ray_state = train(cfg, tmp_path / "ray", workers=2, backend="ray")
    np.testing.assert_array_equal(one.theta, ray_state.theta)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]
    assert strip(read_metrics(tmp_path / "w1")) == strip(read_metrics(tmp_path / "ray"))
    with pytest.raises(ValueError, match="unknown backend"):
        Workers("point-circle", backend="dask")


def pid_job(env):
    return os.getpid()


PARENT = """
import json, os, sys, time
sys.path.insert(0, {root!r})
from multiprocessing import resource_tracker
from metacpo_ref.envs.workers import Workers
from tests.test_workers import pid_job
w = Workers("point-circle", n=2)
pids = set(w.map(pid_job, [(), (), (), ()]))
print(json.dumps({{"workers": sorted(pids), "tracker": resource_tracker._resource_tracker._pid}}), flush=True)
time.sleep(120)
"""


def alive(pid):
    """True while ``pid`` runs (a zombie waiting for its reaper counts as exited)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_exit_when_parent_dies(sig):
    root = str(Path(__file__).resolve().parents[1])
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(root=root)], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(parent.stdout.readline())
        pids = info["workers"] + [info["tracker"]]
        assert len(info["workers"]) == 2 and all(alive(p) for p in pids)
        parent.send_signal(sig)
        parent.wait(timeout=10)
        deadline = time.time() + 15
        while any(alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.2)
        left = [p for p in pids if alive(p)]
        assert not left, f"still running after the parent's {sig.name}: {left} (workers {info['workers']})"
    finally:
        parent.kill()
        for p in info.get("workers", []) if "info" in locals() else []:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_unreachable_ray_address_fails_fast():
    t0 = time.time()
    with pytest.raises(WorkerError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        Workers("point-circle", n=2, backend="ray", ray_address="127.0.0.1:1")
    assert time.time() - t0 < 10


def test_split_meta_gradient_is_the_meta_algorithms_default_and_old_runs_keep_theirs():
    """The meta algorithms split the meta-gradient unless told otherwise; the baselines have
    none to split; a run whose config.json predates the field resumes with the single
    reverse pass it ran with (training.BEFORE_FIELD)."""
    from metacpo_ref.run.rundir import config_from_dict
    assert Config(algo="meta-cpo").split_meta_gradient is True and Config(algo="meta-trpo").split_meta_gradient is True
    assert Config(algo="cpo").split_meta_gradient is False and Config(algo="trpo").split_meta_gradient is False
    assert Config(algo="meta-cpo", split_meta_gradient=False).split_meta_gradient is False
    old = json.loads(json.dumps({k: v for k, v in Config().__dict__.items() if k != "split_meta_gradient"}))
    assert config_from_dict(old).split_meta_gradient is False
    assert config_from_dict({**old, "split_meta_gradient": True}).split_meta_gradient is True


def test_ray_addresses_are_parsed_before_connecting():
    """check_ray_address reaches a listening HOST:PORT in each form (ray://, IPv6 in
    brackets), refuses an unreachable one naming it, and leaves forms without a numeric
    port (auto, a name) to Ray."""
    servers = []
    try:
        for family, host, forms in ((socket.AF_INET, "127.0.0.1", ("{}:{}", "ray://{}:{}")),
                                    (socket.AF_INET6, "::1", ("[{}]:{}", "ray://[{}]:{}"))):
            try:
                servers.append(socket.socket(family))
                servers[-1].bind((host, 0))
            except OSError:   # no IPv6 loopback on this machine: the IPv4 forms only
                assert family == socket.AF_INET6
                continue
            servers[-1].listen(4)
            for form in forms:
                address = form.format(host, servers[-1].getsockname()[1])
                assert check_ray_address(address) is None, address
    finally:
        for server in servers:
            server.close()
    for address in ("ray://127.0.0.1:1", "[::1]:1"):
        with pytest.raises(WorkerError, match=f"cannot reach the Ray cluster at {re.escape(address)} "):
            check_ray_address(address)
    for address in ("auto", "127.0.0.1:port", "head-node"):
        assert check_ray_address(address) is None


# --- found by mutation testing (docs/mutation.md, workers.py) ------------------------

def marked_job(env, kind, folder):
    """``slow``: write this process's pid to ``started``, work 30 s, mark ``finished``;
    ``fail`` / ``die``: wait until the slow job runs, then raise / end the worker process."""
    folder = Path(folder)
    if kind == "slow":
        (folder / "started.tmp").write_text(str(os.getpid()))
        (folder / "started.tmp").rename(folder / "started")
        time.sleep(30)
        (folder / "finished").touch()
        return "done"
    deadline = time.time() + 60
    while not (folder / "started").exists() and time.time() < deadline:
        time.sleep(0.05)
    if kind == "die":
        os._exit(3)
    raise RuntimeError("boom")


def stopped(folder):
    """The slow job did not finish, and its process ends within 15 s."""
    pid = int((folder / "started").read_text())
    deadline = time.time() + 15
    while alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    return not (folder / "finished").exists() and not alive(pid)


@pytest.mark.parametrize("kind,message", [("fail", "task A failed in a worker: RuntimeError: boom"),
                                          ("die", "a worker process died while running task A")])
def test_a_failed_task_stops_the_tasks_still_running(tmp_path, kind, message):
    """A task that raises, or whose worker process dies, stops the map with an error naming
    it, and the pool is closed; the other task, running at that moment, is stopped at
    once, not left to finish. (Before Workers started its processes up front, a death was
    noticed only at the other task's end in about 3 of 10 runs: docs/mutation.md.)"""
    w = Workers("point-circle", n=2)
    with pytest.raises(WorkerError, match=message):
        w.map(marked_job, [(kind, str(tmp_path)), ("slow", str(tmp_path))], ["task A", "task B"])
    assert (tmp_path / "started").exists() and w._pool is None
    assert stopped(tmp_path)


def test_more_than_one_worker_runs_the_jobs_in_fresh_processes():
    """n > 1: the jobs run in n pool processes, not here, started fresh (spawn: nothing of
    this process's state, e.g. its env cache, is inherited); n = 1 runs them here."""
    import metacpo_ref.envs.workers as workers_module
    for w in (Workers("point-circle", n=1), Workers("point-circle")):   # n = 1 is the default
        with w:
            assert w.map(pid_job, [(), ()]) == [os.getpid()] * 2
    workers_module._ENVS.setdefault("parent-only", None)
    try:
        with Workers("point-circle", n=2) as w:
            pids = w.map(pid_job, [()] * 6)
            assert os.getpid() not in pids and 1 <= len(set(pids)) <= 2
            assert w.submit(pid_job, ())() != os.getpid()
            assert w.map(envs_job, [()] * 2) == [["point-circle"]] * 2
    finally:
        workers_module._ENVS.pop("parent-only")


def envs_job(env):
    from metacpo_ref.envs.workers import _ENVS
    return sorted(_ENVS)


def barrier_job(env, folder, n):
    """Mark this process as running, wait (at most 20 s) until ``n`` processes run at once."""
    folder = Path(folder)
    (folder / str(os.getpid())).touch()
    deadline = time.time() + 20
    while len(list(folder.iterdir())) < n and time.time() < deadline:
        time.sleep(0.05)
    return len(list(folder.iterdir()))


def test_n_workers_run_n_tasks_at_the_same_time(tmp_path):
    """Workers(n=3) runs three tasks at once (three pool processes, more than this
    machine's two cores), each job seeing all three running."""
    with Workers("point-circle", n=3) as w:
        assert w.map(barrier_job, [(str(tmp_path), 3)] * 3) == [3, 3, 3]


def test_leaving_the_block_ends_the_worker_processes(tmp_path):
    """A with block that ends normally waits for its worker processes to exit; one left by
    an exception (Ctrl-C in the caller, say) stops the task still running at once."""
    with Workers("point-circle", n=2) as w:
        pids = w.map(pid_job, [()] * 4)
    assert not [p for p in set(pids) if alive(p)]
    with pytest.raises(KeyboardInterrupt):
        with Workers("point-circle", n=2) as w:
            w.submit(marked_job, ("slow", str(tmp_path)))
            deadline = time.time() + 60
            while not (tmp_path / "started").exists() and time.time() < deadline:
                time.sleep(0.05)
            raise KeyboardInterrupt
    assert stopped(tmp_path)


def first_obs_job(env, seed):
    return env.reset(seed=seed)[0]


def test_submitted_and_mapped_jobs_see_the_normalised_env():
    """``submit`` and ``map`` hand their jobs the same env: the normaliser applied to the
    raw observation, in this process and in the pool's."""
    from metacpo_ref.envs import make_env
    from metacpo_ref.envs.rollouts import ObsNorm
    raw = make_env("point-circle").reset(seed=3)[0]
    norm = ObsNorm(mean=np.full(raw.shape, 0.5), std=np.full(raw.shape, 2.0))
    for n in (1, 2):
        with Workers("point-circle", norm, n=n) as w:
            np.testing.assert_array_equal(w.submit(first_obs_job, (3,))(), norm(raw))
            np.testing.assert_array_equal(w.map(first_obs_job, [(3,)])[0], norm(raw))


class FakeRay:
    """The part of Ray's API the ray backend uses, run in this process and recorded
    (``calls``): what the backend asks of Ray, checked without starting Ray (the `slow`
    test_ray_backend_matches_one_worker runs the real one)."""

    class GetTimeoutError(Exception):
        pass

    class RayError(Exception):
        pass

    def __init__(self, initialized=False):
        self.initialized, self.calls, self.actors = initialized, [], []
        self.exceptions = self

    def is_initialized(self):
        return self.initialized

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        self.initialized = True

    def shutdown(self):
        self.calls.append(("shutdown",))
        self.initialized = False

    def kill(self, actor):
        self.calls.append(("kill", self.actors.index(actor)))

    def remote(self, **options):
        fake = self

        def wrap(cls):
            def new(*args):
                obj, index = cls(*args), len(fake.actors)
                actor = types.SimpleNamespace(obj=obj, options=options, args=args)

                def run(fn, job):
                    try:
                        return index, obj.run(fn, job)
                    except Exception as e:   # Ray raises a task's error at `get`
                        return index, e
                actor.run = types.SimpleNamespace(remote=run)
                fake.actors.append(actor)
                return actor
            return types.SimpleNamespace(remote=new)
        return wrap

    def get(self, ref, timeout=None):
        index, value = ref
        self.calls.append(("get", index, timeout))
        if value == "hang":
            raise self.GetTimeoutError()
        if isinstance(value, Exception):
            raise self.RayError(f"task failed: {value}")
        return value


def env_job(env, x):
    """Which env the job got (family, normalised or not) and its argument."""
    return type(env).__name__, x


def test_ray_backend_asks_ray_for_n_actors_and_maps_jobs_round_robin_in_order(monkeypatch):
    """backend="ray" without an address: a local Ray with n CPUs, no dashboard, the BLAS
    thread count passed on, no driver logs; n actors of one CPU each, holding the family
    and the normaliser; jobs spread over them in turn, results in job order, each `get`
    bounded by task_timeout; submit on the first actor; close kills every actor and shuts
    down the Ray it started. With a Ray already running (or an address): no num_cpus, and
    close leaves Ray running."""
    from metacpo_ref.envs.rollouts import ObsNorm
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    norm = ObsNorm(np.zeros(3), np.ones(3))
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    w = Workers("point-circle", obs_norm=norm, n=3, task_timeout=7.0, backend="ray")
    (name, init), = fake.calls
    assert name == "init" and init == {"address": None, "num_cpus": 3, "include_dashboard": False,
                                       "log_to_driver": False,
                                       "runtime_env": {"env_vars": {"OPENBLAS_NUM_THREADS": "1"}}}
    assert len(fake.actors) == 3
    assert all(a.options == {"num_cpus": 1} and a.args == ("point-circle", norm) for a in fake.actors)
    fake.calls.clear()
    assert w.map(env_job, [(i,) for i in range(5)]) == [("NormalizedEnv", i) for i in range(5)]
    assert fake.calls == [("get", i % 3, 7.0) for i in range(5)]
    fake.calls.clear()
    assert w.submit(env_job, ("s",), "refit")() == ("NormalizedEnv", "s")
    assert fake.calls == [("get", 0, 7.0)]
    fake.calls.clear()
    w.close()
    assert fake.calls == [("kill", 0), ("kill", 1), ("kill", 2), ("shutdown",)] and w._actors is None

    running = FakeRay(initialized=True)
    monkeypatch.setitem(sys.modules, "ray", running)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    with Workers("point-circle", n=2, backend="ray") as w:
        assert running.calls == [] and len(running.actors) == 2
        (env_name, x), = w.map(env_job, [(0,)])
        assert x == 0 and env_name != "NormalizedEnv"   # no normaliser given: the raw env
    assert running.calls[-2:] == [("kill", 0), ("kill", 1)]
    fresh = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fresh)
    Workers("point-circle", n=2, backend="ray", ray_address="auto").close()
    assert fresh.calls[0] == ("init", {"address": "auto", "log_to_driver": False,
                                       "runtime_env": {"env_vars": {"OPENBLAS_NUM_THREADS": "2"}}})
    assert fresh.calls[-1] == ("shutdown",)


def test_ray_backend_failures_name_the_task(monkeypatch):
    """On Ray as in a pool: a job that raises or runs past task_timeout stops the map with a
    WorkerError naming its task."""
    monkeypatch.setitem(sys.modules, "ray", FakeRay())
    with Workers("point-circle", n=2, task_timeout=1.0, backend="ray") as w:
        with pytest.raises(WorkerError, match="task B did not finish within 1.0 s"):
            w.map(env_or_hang, [(False,), (True,)], ["task A", "task B"])
        with pytest.raises(WorkerError, match="task A failed on a Ray worker: task failed: boom"):
            w.map(env_or_raise, [(), ()], ["task A", "task B"])
        with pytest.raises(WorkerError, match="refit failed on a Ray worker"):
            w.submit(env_or_raise, (), "refit")()


def env_or_hang(env, hang):
    return "hang" if hang else "ok"


def env_or_raise(env):
    raise RuntimeError("boom")


@pytest.mark.parametrize("handler, raised", [(signal.default_int_handler, True), (signal.SIG_IGN, False)])
def test_a_ctrl_c_while_the_pool_starts_reaches_the_handler_after_it(handler, raised):
    """The kernel hands a process's SIGINT to a thread not blocking it (here an idle one):
    under _sigint_held it is recorded, and raised through the restored handler only after
    the block (KeyboardInterrupt by default, nothing when SIGINT is ignored)."""
    idle = threading.Thread(target=time.sleep, args=(1,))
    idle.start()
    previous = signal.signal(signal.SIGINT, handler)
    after = []
    try:
        try:
            with workers._sigint_held(True):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
                after.append("block ended")
        except KeyboardInterrupt:
            after.append("interrupted")
    finally:
        signal.signal(signal.SIGINT, previous)
        idle.join()
    assert after == ["block ended", "interrupted"] if raised else ["block ended"]
    assert signal.getsignal(signal.SIGINT) is previous
