"""cli.py plot and metacpo_ref.run.plots on hand-made run directories: the PNG, the
aggregation (mean, standard error, common prefix, interpolation, smoothing,
meta-testing rows), and the errors."""
import json
import struct

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from metacpo_ref.run.plots import (PlotError, aggregate, aggregate_test, bin_rows, caption, figure, load_runs,
                               smooth, steps_per_point, training_curve)

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
    assert 800 <= w <= 3000 and 600 <= h <= 3000 and h > w * 0.55   # two rows of three panels
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
    from metacpo_ref.run.plots import _cost_label

    assert _cost_label([{"cost_measure": "discounted"}]) == "discounted cost J_C"
    assert _cost_label([{}, {"cost_measure": "episode"}]) == "episode cost (undiscounted)"
    assert _cost_label([{}, {"cost_measure": "discounted"}]) == \
        "discounted cost J_C / episode cost (undiscounted) (mixed measures)"


def _close(fig):
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_cost_panels_have_a_symlog_twin(runs):
    """Each cost panel (training, meta-testing) has a twin to its right on a symmetric-log axis,
    linear up to its row's limit, from 0, with the limit line; the full panel stays linear."""
    loaded, _ = load_runs(runs)
    fig = figure(loaded)
    try:
        axes = fig.get_axes()
        assert len(axes) == 6
        for full, zoom, limit in ((axes[1], axes[2], 10.0), (axes[4], axes[5], 10.0)):
            assert full.get_yscale() == "linear" and zoom.get_yscale() == "symlog"
            assert zoom.yaxis.get_transform().linthresh == limit
            highest = max(max(np.asarray(line.get_ydata(), dtype=float)) for line in zoom.get_lines())
            assert zoom.get_ylim()[0] == 0.0 and zoom.get_ylim()[1] >= highest   # every curve stays in view
            for ax in (full, zoom):
                assert any(line.get_label() == f"cost limit {limit:g}" for line in ax.get_lines())
            assert "symlog" in zoom.get_title()
    finally:
        _close(fig)


def test_baselines_binned_to_the_meta_resolution(tmp_path, runs):
    """On the env-steps axis a point covers one meta-iteration's env steps (900 here): the
    CPO/TRPO rows (300 steps each) are averaged in blocks of 3, at the block's last env steps, an
    incomplete last block left out; on the iteration axis nothing is binned."""
    np.testing.assert_allclose(bin_rows([1, 2, 3, 4, 5, 6, 7], [1.0, 2, 3, 4, 5, 6, 7], 3)[0], [3, 6])
    np.testing.assert_allclose(bin_rows([1, 2, 3, 4, 5, 6, 7], [1.0, 2, 3, 4, 5, 6, 7], 3)[1], [2.0, 5.0])
    np.testing.assert_allclose(bin_rows([1, 2], [1.0, 3.0], 3)[1], [2.0])   # no full block: the partial one
    loaded, _ = load_runs(runs)
    assert steps_per_point(loaded) == 900
    cpo = [r for r in loaded if r.algo == "cpo"]
    cur = training_curve(cpo, "cost", "env-steps", resolution=900)
    np.testing.assert_allclose(cur.x, [900])
    np.testing.assert_allclose(cur.mean, [(95.0 / 3 + 35.0) / 2])   # seeds' means of rows 0-2, row 3 left out
    long = make_run(tmp_path / "long", "trpo", 0, list(range(7)), [3.0, 3, 3, 6, 6, 6, 100])
    lr, _ = load_runs([long])
    np.testing.assert_allclose(training_curve(lr, "cost", "env-steps", resolution=300).mean, [3.0, 6.0])
    fig = figure(loaded)
    try:
        cpo_line = next(line for line in fig.get_axes()[1].get_lines() if line.get_label().startswith("cpo "))
        np.testing.assert_allclose(cpo_line.get_xdata(), [900])
    finally:
        _close(fig)
    fig = figure(loaded, x="iteration")
    try:
        cpo_line = next(line for line in fig.get_axes()[1].get_lines() if line.get_label().startswith("cpo "))
        np.testing.assert_allclose(cpo_line.get_xdata(), [0, 1, 2, 3])   # one point per iteration
    finally:
        _close(fig)


def test_seed_lines_and_adapted_bands(runs):
    """A thin line per seed under each mean (training: before and after adaptation; meta-testing:
    algorithms of two or more tested seeds), and the curve after the K local steps has a band."""
    from matplotlib.collections import PolyCollection

    loaded, _ = load_runs(runs)
    fig = figure(loaded)
    try:
        axes = fig.get_axes()
        for ax in axes[:3]:
            assert sum(line.get_gid() == "seed" for line in ax.get_lines()) == 6
            # meta-cpo: 2 seeds + their 2 curves after adaptation; cpo: 2 seeds
            bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
            assert len(bands) == 3   # meta-cpo, meta-cpo after K local steps, cpo
        for ax in axes[3:]:
            assert sum(line.get_gid() == "seed" for line in ax.get_lines()) == 2   # meta-cpo's 2 tested seeds
    finally:
        _close(fig)


def test_caption_states_protocol_and_measure(tmp_path, runs):
    """The caption under the figure names the cost measure of each row, the limits, the
    meta-test file with its tasks and evaluation episodes, and how CPO/TRPO are binned."""
    loaded, _ = load_runs(runs)
    text = " ".join(caption(loaded, "test.json", "env-steps", steps_per_point(loaded)))
    assert "cost = the undiscounted cost per episode, limit 10." in text
    assert "meta-cpo: one point per meta-iteration (3 tasks, K = 2 local steps" in text
    assert "cpo: mean of each block of 3 iterations, the same 900 env steps per point" in text
    assert "Meta-testing (row 2, test.json of 3 runs)" in text and "k = 0..2 adaptation steps" in text
    assert "evaluation episodes are not recorded in test.json" in text   # an old test.json
    assert "symmetric-log" in text
    assert "one point per iteration" in " ".join(caption(loaded, "test.json", "iteration", None))

    d = make_run(tmp_path / "new", "meta-cpo", 0, [1.0, 2.0], [5.0, 6.0], test=TEST["meta-cpo", 0], cost_limit=2.0)
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    (d / "metrics.jsonl").write_text("".join(json.dumps({**r, "cost_measure": "discounted"}) + "\n" for r in rows))
    doc = json.loads((d / "test.json").read_text())
    for r in doc["rows"]:
        r.update(cost_measure="episode", cost_limit=5.0, adapt_episodes=6, eval_episodes=24,
                 tasks=[{}, {}, {}, {}, {}])
    (d / "test-eval.json").write_text(json.dumps(doc))
    new, _ = load_runs([d], "test-eval.json")
    text = " ".join(caption(new, "test-eval.json", "env-steps", steps_per_point(new)))
    assert "cost = the discounted cost J_C (gamma-discounted sum over an episode), limit 2." in text
    assert "Meta-testing (row 2, test-eval.json of 1 runs): 5 unseen tasks per run" in text
    assert "of 6 episodes each, return and cost measured on 24 separate evaluation episodes" in text
    assert "cost = the undiscounted cost per episode, limit 5;" in text
    fig = figure(new, test_name="test-eval.json")
    try:
        assert any("Meta-testing (row 2, test-eval.json" in t.get_text().replace("\n", " ") for t in fig.texts)
        labels = {line.get_label() for ax in fig.get_axes() for line in ax.get_lines()}
        assert {"cost limit 2", "meta-testing cost limit 5"} <= labels
    finally:
        _close(fig)


def test_where_the_meta_gradient_is_computed_does_not_split_a_curve():
    """split_meta_gradient changes where eq. 11 is summed, not what it is (config.py): runs
    that differ only in it and the seed are one curve; a real setting still splits."""
    from types import SimpleNamespace

    from metacpo_ref.run.plots import group

    def run(seed, **kw):
        config = {"family": "point-circle", "algo": "meta-cpo", "seed": seed, **kw}
        return SimpleNamespace(config=config, algo="meta-cpo", path=f"r{seed}")

    pair = [run(0, split_meta_gradient=False), run(1, split_meta_gradient=True)]
    assert [len(rs) for rs in group(pair).values()] == [2]
    assert len(group([run(0, inner_metric="fisher"), run(1, inner_metric="identity")])) == 2


def test_meta_cpo_variants_are_named_and_meta_test_labels_stay_out_of_the_figure_legend(tmp_path):
    """The paper's Meta-CPO and ours are drawn under their names when they differ only in a
    variant's settings; other differences keep the settings in the label; the figure legend
    holds the training curves and the limit lines, not the meta-testing error bars (whose
    labels contain recover_above_limit and were once taken for limit lines)."""
    from metacpo_ref.run.plots import VARIANTS, _label, variant_name

    from metacpo_ref.config import Config

    paper, ours = (dict(fields) for _, fields in VARIANTS)
    # ours is what Config() runs; the paper's is Algorithm 1's Euclidean steps and exact eq. 9
    assert {k: getattr(Config(algo="meta-cpo"), k) for k in ours} == ours
    assert paper == {"inner_metric": "identity", "outer_metric": "identity", "recover_above_limit": False}
    assert variant_name("meta-cpo", paper) == "meta-cpo, paper's setting (H = I, exact eq. 9)"
    assert variant_name("meta-cpo", ours).startswith("meta-cpo, ours")
    assert variant_name("cpo", paper) is None and variant_name("meta-cpo", {**ours, "outer_metric": "identity"}) is None
    assert _label("meta-cpo", paper, [paper, ours]) == variant_name("meta-cpo", paper)
    assert _label("meta-cpo", ours, [ours]) == "meta-cpo"   # one curve: the algorithm's name
    other = {**paper, "local_steps": 3}
    assert _label("meta-cpo", other, [other, ours]).startswith("meta-cpo (")

    dirs = []
    for name, fields in VARIANTS:
        d = make_run(tmp_path / name[:12].replace(",", "").replace(" ", "-"), "meta-cpo", 0, [1.0, 2.0], [5.0, 6.0],
                     test=TEST["meta-cpo", 0])
        config = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**config, **fields}))
        dirs.append(d)
    fig = figure(load_runs(dirs)[0])
    try:
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert [t for t in legend if "(n=" in t] == [f"{name} (n=1)" for name, _ in VARIANTS]
        assert legend[-1] == "cost limit 10" and not any("seed" in t for t in legend)
    finally:
        _close(fig)


def test_runs_trained_under_another_cost_measure_get_no_training_cost_curve(tmp_path):
    """The first campaign's TRPO (rows without cost_measure: per episode) beside a second-campaign
    Meta-CPO (discounted): the training cost panels are in the measure of most runs, TRPO's
    return is drawn but not its training cost, the axis label is not mixed, and the caption
    says why; its meta-testing is drawn."""
    new = make_run(tmp_path, "meta-cpo", 0, [1.0, 2.0], [5.0, 6.0], test=TEST["meta-cpo", 0])
    rows = [json.loads(line) for line in (new / "metrics.jsonl").read_text().splitlines()]
    (new / "metrics.jsonl").write_text("".join(json.dumps({**r, "cost_measure": "discounted"}) + "\n" for r in rows))
    new2 = make_run(tmp_path / "b", "meta-cpo", 1, [1.0, 2.0], [5.0, 6.0], test=TEST["meta-cpo", 1])
    rows = [json.loads(line) for line in (new2 / "metrics.jsonl").read_text().splitlines()]
    (new2 / "metrics.jsonl").write_text("".join(json.dumps({**r, "cost_measure": "discounted"}) + "\n" for r in rows))
    old = make_run(tmp_path, "trpo", 0, [3.0, 4.0, 5.0], [50.0, 60.0, 70.0], test=TEST["cpo", 0])
    runs, _ = load_runs([new, new2, old])
    text = " ".join(caption(runs, "test.json"))
    assert "trpo: trained under the undiscounted cost per episode, its training cost not drawn" in text
    fig = figure(runs)
    try:
        axes = fig.get_axes()
        labels = [[line.get_label() for line in ax.get_lines()] for ax in axes]
        assert any(lab.startswith("trpo") for lab in labels[0])                  # its return
        assert not any(lab.startswith("trpo") for lab in labels[1] + labels[2])  # not its training cost
        assert axes[1].get_ylabel() == "discounted cost J_C"
        assert any(c.get_label().startswith("trpo") for c in axes[4].containers)   # its meta-testing cost
    finally:
        _close(fig)
