"""cli.py plot and metacpo_ref.plots on hand-made run directories: the PNG, the
aggregation (mean, standard error, common prefix, interpolation, smoothing,
meta-testing rows), and the errors."""
import json
import struct

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from metacpo_ref.plots import PlotError, aggregate, aggregate_test, load_runs, smooth, training_curve

# (algo, seed): (per-iteration returns, costs); the second meta-cpo seed is one iteration longer
TRAIN = {
    ("meta-cpo", 0): ([1.0, 2.0, 3.0], [30.0, 20.0, 10.0]),
    ("meta-cpo", 1): ([3.0, 4.0, 5.0, 100.0], [10.0, 12.0, 6.0, 0.0]),
    ("cpo", 0): ([0.0, 0.5, 1.0, 1.5], [40.0, 30.0, 25.0, 20.0]),
    ("cpo", 1): ([0.2, 0.3, 0.4, 0.5], [50.0, 35.0, 20.0, 15.0]),
}
# (algo, seed): per-step (return, cost, return_se, cost_se) of test.json; cpo seed 1 is not meta-tested
TEST = {
    ("meta-cpo", 0): [(0.0, 20.0, 0.5, 3.0), (2.0, 8.0, 0.5, 2.0), (3.0, 6.0, 0.4, 1.0)],
    ("meta-cpo", 1): [(2.0, 10.0, 0.3, 2.0), (6.0, 4.0, 0.3, 1.0), (7.0, 2.0, 0.2, 1.0)],
    ("cpo", 0): [(1.0, 30.0, 0.25, 4.0), (1.5, 25.0, 0.5, 5.0), (1.6, 24.0, 0.75, 6.0)],
}
STEPS = {"meta-cpo": 900, "cpo": 300}   # env steps per iteration


def make_run(root, algo, seed, returns, costs, family="point-circle", steps=None, test=None, cost_limit=10.0):
    d = root / f"{algo}-s{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"family": family, "algo": algo, "seed": seed, "iterations": 60,
                                               "tasks": 3, "local_steps": 2, "episodes": 2, "cost_limit": None}))
    steps = steps or STEPS.get(algo, 100)
    with open(d / "metrics.jsonl", "w") as f:
        for i, (r, c) in enumerate(zip(returns, costs)):
            row = {"iteration": i, "env_steps": steps * (i + 1), "return": r, "cost": c, "cost_limit": cost_limit,
                   "steps": steps, "cases": {}, "tasks": [], "time_env": 0.1, "time_learner": 0.1, "time_total": 0.2}
            if algo.startswith("meta-"):
                row.update(return_adapted=r + 1.0, cost_adapted=c / 2)
            f.write(json.dumps(row) + "\n")
    if test is not None:
        rows = [{"step": k, "return": r, "cost": c, "cost_rate": c / 500, "cost_limit": cost_limit,
                 "return_se": rse, "cost_se": cse, "tasks": []} for k, (r, c, rse, cse) in enumerate(test)]
        (d / "test.json").write_text(json.dumps({"family": family, "checkpoint": str(d / "checkpoint.npz"),
                                                 "rows": rows}, indent=1))
    return d


@pytest.fixture
def runs(tmp_path):
    return [make_run(tmp_path, algo, seed, *TRAIN[algo, seed], test=TEST.get((algo, seed)))
            for algo, seed in TRAIN]


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_cli_writes_png(tmp_path, runs):
    out = tmp_path / "fig" / "curves.png"
    res = CliRunner().invoke(cli.main, ["plot", *map(str, runs), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "meta-cpo 2 runs (2 meta-tested)" in res.output and "cpo 2 runs (1 meta-tested)" in res.output
    w, h = png_size(out)
    assert 800 <= w <= 3000 and 600 <= h <= 3000 and h > w * 0.7   # two rows of panels
    for extra in (["--x", "iteration", "--smooth", "2"], ["--no-adapted"]):
        out2 = tmp_path / f"curves{len(extra)}.png"
        res = CliRunner().invoke(cli.main, ["plot", *map(str, runs), "--out", str(out2), *extra])
        assert res.exit_code == 0, res.output
        png_size(out2)


def test_training_only_is_one_row(tmp_path):
    d = make_run(tmp_path, "trpo", 0, [1.0, 2.0], [5.0, 6.0])
    out = tmp_path / "one.png"
    res = CliRunner().invoke(cli.main, ["plot", str(d), "--out", str(out)])
    assert res.exit_code == 0, res.output
    w, h = png_size(out)
    assert h < w * 0.6


def test_training_mean_and_se_common_prefix(runs):
    loaded, _ = load_runs(runs)
    meta = [r for r in loaded if r.algo == "meta-cpo"]
    cur = training_curve(meta, "return", "env-steps")
    # common prefix of 3 iterations (the 4th row of seed 1, return 100, is left out)
    np.testing.assert_allclose(cur.x, [900, 1800, 2700])
    np.testing.assert_allclose(cur.mean, [2.0, 3.0, 4.0])
    np.testing.assert_allclose(cur.se, [1.0, 1.0, 1.0])   # std([1, 3], ddof=1) / sqrt(2)
    cost = training_curve(meta, "cost", "iteration")
    np.testing.assert_allclose(cost.x, [0, 1, 2])
    np.testing.assert_allclose(cost.mean, [20.0, 16.0, 8.0])
    np.testing.assert_allclose(cost.se, [10.0, 4.0, 2.0])
    adapted = training_curve(meta, "cost_adapted", "iteration")
    np.testing.assert_allclose(adapted.mean, [10.0, 8.0, 4.0])
    assert training_curve([r for r in loaded if r.algo == "cpo"], "cost_adapted") is None
    smoothed = training_curve(meta, "return", "iteration", n_smooth=2)
    np.testing.assert_allclose(smoothed.mean, [2.0, 2.5, 3.5])


def test_aggregate_interpolates_on_common_grid():
    cur = aggregate([([10, 20, 30], [1.0, 2.0, 3.0]), ([15, 30], [0.0, 3.0])])
    np.testing.assert_allclose(cur.x, [15, 20, 30])
    np.testing.assert_allclose(cur.mean, [0.75, 1.5, 3.0])
    np.testing.assert_allclose(cur.se, [0.75, 0.5, 0.0])
    one = aggregate([([1, 2], [4.0, 5.0])])
    np.testing.assert_allclose(one.se, [0.0, 0.0])
    with pytest.raises(PlotError, match="do not overlap"):
        aggregate([([1, 2], [0.0, 0.0]), ([3, 4], [0.0, 0.0])])


def test_smooth():
    np.testing.assert_allclose(smooth([1.0, 2.0, 3.0, 4.0], 2), [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(smooth([1.0, 2.0, 6.0], 3), [1.0, 1.5, 3.0])
    np.testing.assert_allclose(smooth([1.0, 5.0], 1), [1.0, 5.0])


def test_meta_testing_aggregation(runs):
    loaded, _ = load_runs(runs)
    meta = [r.test for r in loaded if r.algo == "meta-cpo"]
    ret = aggregate_test(meta, "return")
    np.testing.assert_allclose(ret.x, [0, 1, 2])
    np.testing.assert_allclose(ret.mean, [1.0, 4.0, 5.0])
    np.testing.assert_allclose(ret.se, [1.0, 2.0, 2.0])   # across seeds, not the stored per-task se
    cost = aggregate_test(meta, "cost")
    np.testing.assert_allclose(cost.mean, [15.0, 6.0, 4.0])
    np.testing.assert_allclose(cost.se, [5.0, 2.0, 2.0])
    single = aggregate_test([r.test for r in loaded if r.algo == "cpo" and r.test], "return")
    assert single.n == 1
    np.testing.assert_allclose(single.mean, [1.0, 1.5, 1.6])
    np.testing.assert_allclose(single.se, [0.25, 0.5, 0.75])   # one seed: the per-task se of test.json
    short = aggregate_test([meta[0][:2], meta[1]], "return")   # different K: steps 0..min K
    np.testing.assert_allclose(short.mean, [1.0, 4.0])


def test_errors(tmp_path, runs):
    runner = CliRunner()
    out = str(tmp_path / "x.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(cli.main, ["plot", str(runs[0]), str(empty), "--out", out])
    assert res.exit_code == 1 and "has no metrics.jsonl" in res.output and str(empty) in res.output

    other = make_run(tmp_path / "other", "cpo", 0, [1.0], [2.0], family="point-button")
    res = runner.invoke(cli.main, ["plot", str(runs[0]), str(other), "--out", out])
    assert res.exit_code == 1 and "different families" in res.output and "point-button" in res.output

    res = runner.invoke(cli.main, ["plot", "--out", out])
    assert res.exit_code == 1 and "no run directories" in res.output
    with pytest.raises(PlotError, match="no run directories"):
        load_runs([])
    with pytest.raises(PlotError, match="given twice"):
        load_runs([runs[0], runs[0]])

    started = make_run(tmp_path / "started", "cpo", 0, [], [])
    res = runner.invoke(cli.main, ["plot", str(started), "--out", out])
    assert res.exit_code == 1 and "no rows" in res.output

    broken = make_run(tmp_path / "broken", "cpo", 0, [1.0], [2.0])
    (broken / "test.json").write_text('{"rows": [{"step": 0}]}')
    res = runner.invoke(cli.main, ["plot", str(broken), "--out", out])
    assert res.exit_code == 1 and "not the output of `cli.py test --json`" in res.output
    assert not (tmp_path / "x.png").exists()


def test_empty_test_json_is_a_warning(tmp_path):
    d = make_run(tmp_path, "meta-cpo", 0, [1.0, 2.0], [5.0, 6.0])
    (d / "test.json").write_text("")   # `cli.py test --json > test.json` still running
    out = tmp_path / "w.png"
    res = CliRunner().invoke(cli.main, ["plot", str(d), "--out", str(out)])
    assert res.exit_code == 0 and "warning:" in res.output and "still running" in res.output
    assert "(0 meta-tested)" in res.output
    png_size(out)


def test_test_option_reads_that_meta_test_file(tmp_path, runs):
    """``--test test-4x.json`` draws each run's test-4x.json (the campaign's meta-test with
    more episodes); a run without one is named with the command that writes it."""
    meta0 = runs[0]
    rows = json.loads((meta0 / "test.json").read_text())
    for r in rows["rows"]:
        r["cost"] += 100.0
    (meta0 / "test-4x.json").write_text(json.dumps(rows))
    loaded, warnings = load_runs(runs, "test-4x.json")
    assert [row["cost"] for row in loaded[0].test] == [120.0, 108.0, 106.0]
    assert [r.test is not None for r in loaded] == [True, False, False, False]
    assert f"{runs[1]} has no test-4x.json" in " ".join(warnings)
    assert [row["cost"] for row in load_runs(runs)[0][0].test] == [20.0, 8.0, 6.0]   # default: test.json
    res = CliRunner().invoke(cli.main, ["plot", *map(str, runs), "--test", "test-4x.json",
                                        "--out", str(tmp_path / "4x.png")])
    assert res.exit_code == 0, res.output
    assert "meta-cpo 2 runs (1 meta-tested)" in res.output and "cpo 2 runs (0 meta-tested)" in res.output
    assert f"--json > {runs[1]}/test-4x.json" in res.output


def test_cost_panels_name_the_runs_cost_measure():
    """The cost axis says what the limit is on: rows of a discounted run, of an old run (no
    ``cost_measure``: undiscounted), or both (named together, marked as mixed)."""
    from metacpo_ref.plots import _cost_label

    assert _cost_label([{"cost_measure": "discounted"}]) == "discounted cost J_C"
    assert _cost_label([{}, {"cost_measure": "episode"}]) == "episode cost (undiscounted)"
    assert _cost_label([{}, {"cost_measure": "discounted"}]) == \
        "discounted cost J_C / episode cost (undiscounted) (mixed measures)"
