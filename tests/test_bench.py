"""The quick bench runs and reports every figure as a positive finite number (no timing asserts)."""
import math
import subprocess
import sys

from cli import cvxpy_cpo_oracle
from metacpo_ref.checks.bench import run_bench

KEYS = ("cpo_layer_speedup_vs_cvxpy", "fast_reset_speedup", "rollout_speedup_vs_stock",
        "rollout_fraction_of_physics", "rollout_steps_per_s", "lean_step_speedup_point_circle",
        "lean_step_speedup_car_circle_hazard", "lean_step_speedup_point_button")


def test_quick_bench_reports_every_figure():
    out = run_bench(cvxpy_cpo_oracle, quick=True)
    assert set(KEYS) <= set(out)
    for key in KEYS + ("workers_2_speedup", "workers_2_speedup_whole_meta_gradient"):
        assert isinstance(out[key], float) and math.isfinite(out[key]) and out[key] > 0, (key, out[key])
    assert len(out["meta_gradient_cost_ratio"]) == 2
    assert len(out["meta_gradient_cost_ratio_fisher"]) == 2
    assert all(math.isfinite(v) and v > 0 for v in out["meta_gradient_cost_ratio_fisher"].values())
    assert set(out["meta_iteration_learner_share"]) == {"point-circle", "car-circle-hazard", "point-button"}
    for value in [*out["meta_gradient_cost_ratio"].values(), *out["meta_iteration_learner_share"].values()]:
        assert math.isfinite(value) and value > 0
    assert all(v < 1 for v in out["meta_iteration_learner_share"].values())
    for key in ("meta_iteration_serial_fraction", "meta_iteration_serial_fraction_whole_meta_gradient"):
        assert 0 < out[key] < 1, (key, out[key])
    for family, products in out["meta_iteration_fisher_products"].items():
        # Meta-CPO's default metric is the Fisher matrix: every site makes products, counted where made
        assert set(products["by_site"]) == {"local steps taken", "meta-gradient replay", "outer line search",
                                            "outer step"}, (family, products)
        assert sum(products["by_site"].values()) == products["per_iteration"] > 0
        assert 0 < products["share_of_learner"] < 1
        seconds = out["meta_iteration_seconds"][family]
        assert 0 < seconds["env_2_cores"] < seconds["env_1_core"] < seconds["workers_1"]


def test_bench_table_prints_every_nested_figure():
    from cli import _flat

    rows = list(_flat({"a": 1.0, "b": {"x": 2.0, "y": {"z": 3}}}))
    assert rows == [("a", 1.0), ("b x", 2.0), ("b y z", 3)]


def test_bench_does_not_import_cvxpy():
    code = "import sys, metacpo_ref.checks.bench, metacpo_ref.envs; sys.exit('cvxpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
