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


def test_bench_does_not_import_cvxpy():
    code = "import sys, metacpo_ref.checks.bench, metacpo_ref.envs; sys.exit('cvxpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
