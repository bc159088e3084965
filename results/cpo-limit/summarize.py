"""The CPO-at-its-limit benchmark of docs/results.md: a table and a figure from the run
directories under results/cpo-limit/.

    .venv/bin/python results/cpo-limit/summarize.py [--plot docs/cpo-limit.png]

Run directories are named VARIANT-L{limit}-s{seed} (point-circle, the stock task) or
VARIANT-s{seed} (car-circle-hazard, point-button at their defaults); VARIANT is
``exact`` (eq. 9 as it is, ``--exact-cpo-above-limit``), ``recover`` (above the limit,
recover: the default) or ``prototype-*`` (candidates measured with prototype code, metrics
only). Each run's number is its mean over the last 10 updates; the table gives the mean
+- standard error over seeds and every seed's value.
"""
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent


def runs():
    """``{(family, variant, limit): [(seed, rows), ...]}``."""
    out = defaultdict(list)
    for d in sorted(ROOT.glob("*/*")):
        m = re.fullmatch(r"(.+?)(?:-L(\d+))?-s(\d+)", d.name)
        if not (d / "metrics.jsonl").exists() or m is None:
            continue
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
        if rows:
            limit = float(m.group(2)) if m.group(2) else rows[0]["cost_limit"]
            out[(d.parent.name, m.group(1), limit)].append((int(m.group(3)), rows))
    return out


def last10(rows, key):
    return float(np.mean([r[key] for r in rows[-10:]]))


def mean_se(v):
    v = np.asarray(v, float)
    se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{v.mean():.1f} ± {se:.1f}"


def table(groups):
    print("| family | rule | limit | seeds | env steps | return, last 10 updates | cost, last 10 updates | "
          "cost per seed | seeds at or under the limit |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (family, variant, limit), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][2], kv[0][1])):
        R = [last10(rows, "return") for _, rows in rs]
        C = [last10(rows, "cost") for _, rows in rs]
        steps = sorted({rows[-1]["env_steps"] for _, rows in rs})
        print(f"| {family} | {variant} | {limit:g} | {','.join(str(s) for s, _ in rs)} | "
              f"{steps[0]:,}{'' if len(steps) == 1 else ' - ' + format(steps[-1], ',')} | {mean_se(R)} | "
              f"{mean_se(C)} | {' / '.join(f'{c:.1f}' for c in C)} | {sum(c <= limit for c in C)} of {len(C)} |")


def plot(groups, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(f, lim) for f, v, lim in groups if not v.startswith("prototype")},
                    key=lambda p: (p[0] != "point-circle", -p[1], p[0]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (family, limit) in zip(axes[0], panels):
        for variant, colour in (("exact", "tab:red"), ("recover", "tab:blue")):
            rs = groups.get((family, variant, limit))
            if not rs:
                continue
            n = min(len(rows) for _, rows in rs)
            x = np.array([r["env_steps"] for r in rs[0][1][:n]]) / 1e6
            c = np.array([[r["cost"] for r in rows[:n]] for _, rows in rs])
            k = 5   # moving average over 5 updates, then mean over seeds
            sm = np.array([np.convolve(ci, np.ones(k) / k, mode="valid") for ci in c])
            ax.plot(x[k - 1:], sm.mean(0), color=colour, label=f"{variant} ({len(rs)} seeds)")
            if len(rs) > 1:
                se = sm.std(0, ddof=1) / np.sqrt(len(rs))
                ax.fill_between(x[k - 1:], sm.mean(0) - se, sm.mean(0) + se, color=colour, alpha=0.2)
        ax.axhline(limit, color="k", ls="--", lw=1)
        ax.set_title(f"{family}, limit {limit:g}", fontsize=10)
        ax.set_xlabel("env steps (M)")
        ax.set_ylabel("episode cost (5-update mean)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    groups = runs()
    table(groups)
    if "--plot" in sys.argv:
        plot(groups, sys.argv[sys.argv.index("--plot") + 1])
