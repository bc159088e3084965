"""Issue 15's 2 x 2 comparison, per (family, seed): each Meta-CPO metric pair and CPO on
meta-test return / cost after 0 and 5 adaptation steps (5 unseen tasks, the family's test
limit) and training return / cost after adaptation over the last 10 iterations, and the
mean seconds per iteration.

    .venv/bin/python results/metric-2x2/compare.py
"""
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
NAMES = ("meta-cpo-identity-identity", "meta-cpo-identity-fisher", "meta-cpo-fisher-identity",
         "meta-cpo-fisher-fisher", "cpo")


def row(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = rows[-10:]
    ret = np.mean([r.get("return_adapted", r["return"]) for r in last])
    cost = np.mean([r.get("cost_adapted", r["cost"]) for r in last])
    secs = np.mean([r["time_env"] + r["time_learner"] for r in rows])
    test = json.loads((run / "test.json").read_text())["rows"] if (run / "test.json").exists() else None
    t = (f"{test[0]['return']:5.2f} / {test[0]['cost']:6.1f} | {test[-1]['return']:5.2f} / {test[-1]['cost']:6.1f}"
         if test else "not meta-tested | ")
    return f"| {ret:5.2f} / {cost:6.1f} | {t} | {secs:5.1f} |"


def main():
    print("| family | seed | run | train return / cost (adapted, last 10 its) | meta-test k=0 | meta-test k=5 "
          "| s per it |")
    print("|---|---|---|---|---|---|---|")
    for fam in ("car-circle-hazard", "point-button"):
        for seed in (0, 1):
            for name in NAMES:
                run = ROOT / fam / f"{name}-s{seed}"
                if (run / "metrics.jsonl").exists():
                    print(f"| {fam} | {seed} | {name.replace('meta-cpo-', '')} {row(run)}")


if __name__ == "__main__":
    main()
