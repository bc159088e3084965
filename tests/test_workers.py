"""Parallel per-task work: same numbers for any worker count; failures name the task."""
import time

import numpy as np
import pytest

from metacpo_ref.config import Config
from metacpo_ref.training import load_checkpoint, read_metrics, train
from metacpo_ref.workers import WorkerError, Workers

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


def failing_job(env, x):
    if x == 1:
        raise RuntimeError("boom")
    return env.observation_space.shape[0] + x


def hanging_job(env, x):
    time.sleep(60)


def test_failures_name_the_task():
    with Workers("point-circle", n=2) as w:
        assert w.map(failing_job, [(0,), (2,)]) == [28, 30]
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
