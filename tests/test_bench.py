"""The quick bench runs and reports every figure as a positive finite number (no timing asserts)."""
import math
import subprocess
import sys

from metacpo_ref.bench import run_bench

KEYS = ("cpo_layer_speedup_vs_cvxpy", "fast_reset_speedup", "rollout_speedup_vs_stock",
        "rollout_fraction_of_physics", "rollout_steps_per_s", "lean_step_speedup_point_circle",
        "lean_step_speedup_car_circle_hazard", "lean_step_speedup_point_button")


def test_quick_bench_reports_every_figure():
    out = run_bench(quick=True)
    assert set(KEYS) <= set(out)
    assert "meta_gradient_cost_ratio" not in out      # reserved, not measured yet
    for key in KEYS:
        assert isinstance(out[key], float) and math.isfinite(out[key]) and out[key] > 0, (key, out[key])


def test_bench_does_not_import_cvxpy():
    code = "import sys, metacpo_ref.bench, metacpo_ref.envs; sys.exit('cvxpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
