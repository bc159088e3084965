"""The run directory's owner (metacpo_ref.run.rundir): the row schema every written row
keeps to, the one config comparison, the checkpoint's keys and progress, meta-test files."""
import dataclasses
import json

import numpy as np
import pytest

from metacpo_ref.config import Config, effective
from metacpo_ref.run import rundir

TINY = dict(family="point-circle", tasks=2, local_steps=1, episodes=1, iterations=2, hidden=(8,))


def test_rows_of_a_fresh_run_have_exactly_the_schemas_keys(tmp_path):
    """Every key a training row has is declared (rundir.row_keys), for a meta algorithm and a
    baseline, and the rows of a fresh run have every declared key (the schema is not stale)."""
    from metacpo_ref.run.training import train
    for algo in ("meta-cpo", "cpo"):
        cfg = Config(**{**TINY, "iterations": 1}, algo=algo)
        train(cfg, tmp_path / algo)
        [row] = rundir.read_metrics(tmp_path / algo)
        assert set(row) == set(rundir.row_keys(cfg.meta))
        assert {k for t in row["tasks"] for k in t} <= set(rundir.TASK_KEYS)
        assert set(rundir.REQUIRED_KEYS) <= set(row) and set(rundir.TIME_KEYS) <= set(row)


def test_a_row_with_an_undeclared_key_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / rundir.METRICS).write_text("")
    rundir.append_row(tmp_path, {"iteration": 0, "beta": 1.0}, meta=False)
    with pytest.raises(ValueError, match="outer_case"):
        rundir.append_row(tmp_path, {"iteration": 1, "outer_case": "trust"}, meta=False)
    assert rundir.read_metrics(tmp_path) == [{"iteration": 0, "beta": 1.0}]


def test_config_differences_compare_values_as_the_run_uses_them():
    """The one comparison (resume, config.json against its checkpoint, the campaign's plan):
    episodes None is the family's number, hidden a list or a tuple, iterations may change."""
    cfg = Config(family="point-circle")
    same = dataclasses.replace(cfg, episodes=effective(cfg, "episodes"), hidden=list(cfg.hidden), iterations=7,
                               cost_limit=effective(cfg, "cost_limit"))
    assert rundir.config_differences(cfg, same) == []
    other = dataclasses.replace(cfg, episodes=effective(cfg, "episodes") + 1, gamma=0.9)
    assert rundir.config_differences(cfg, other) == ["episodes", "gamma"]
    assert rundir.config_differences(cfg, other, ["gamma", "seed"]) == ["gamma"]


def test_checkpoint_keys_and_progress(tmp_path):
    from metacpo_ref.run.training import initial_state
    state = dataclasses.replace(initial_state(Config(**TINY)), iteration=3, env_steps=1234)
    assert rundir.checkpoint_progress(tmp_path) == (0, 0)
    rundir.save_checkpoint(tmp_path / rundir.CHECKPOINT, state)
    with np.load(tmp_path / rundir.CHECKPOINT) as z:
        assert tuple(z.keys()) == rundir.CHECKPOINT_KEYS
    assert rundir.checkpoint_progress(tmp_path) == (3, 1234)
    assert rundir.checkpoint_path(tmp_path) == tmp_path / rundir.CHECKPOINT
    assert rundir.checkpoint_config_json(tmp_path) == json.loads(rundir.config_to_json(state.config))
    (tmp_path / rundir.CHECKPOINT).write_bytes(b"torn")
    assert rundir.checkpoint_progress(tmp_path) is None


def test_meta_test_files_are_written_whole_and_read_back(tmp_path):
    doc = {"family": "point-circle", "rows": [{"step": 0, "return": 1.5}]}
    rundir.write_test(tmp_path / "test-eval.json", doc)
    assert (tmp_path / "test-eval.json").read_text() == json.dumps(doc, indent=1) + "\n"
    assert rundir.read_test(tmp_path, "test-eval.json") == doc and rundir.read_test(tmp_path, "test.json") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test-eval.json"]
    assert rundir.read_json(tmp_path / "none.json") is None
