"""Markdown tables for docs/results.md from the run directories of one family.

    python results/summarize.py results/point-circle [test.json test-4x.json ...]

For each algorithm (from each run's config.json): training return and cost
(pre-adaptation) over the last 10 iterations, and the meta-testing return and
cost after k = 0..K adaptation steps (mean over seeds of each seed's mean over
test tasks, +- standard error across seeds, or over test tasks for one seed), one
table per meta-test file named (default test.json); for meta-tests of issue 29's
protocol (separate evaluation episodes, every cost measure), a table of the measures at
k = 0 and k = K, with a uniformly random policy's row from ``FAMILY/random.json``
(``cli.py test FAMILY --random-policy --json``) when there is one;
for the meta algorithms, what their local steps did to the batch cost in training.
"""
import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metacpo_ref.config import Config  # noqa: E402
from metacpo_ref.run import rundir  # noqa: E402
from metacpo_ref.run.plots import VARIANTS, variant_name  # noqa: E402
from metacpo_ref.run.rundir import BEFORE_FIELD, read_config_json, read_test, scan_metrics  # noqa: E402


def mean_se(values, se_one=None):
    """``mean ± s.e.`` across seeds; with one seed, ``se_one`` (the s.e. over test
    tasks, marked with a *) or nothing."""
    v = np.asarray(values, dtype=float)
    if len(v) > 1:
        return f"{v.mean():.2f} ± {v.std(ddof=1) / np.sqrt(len(v)):.2f}"
    return f"{v.mean():.2f}" + (f" ± {se_one:.2f}*" if se_one is not None else "")


MEASURE_NAMES = {"discounted": "discounted J_C", "episode": "undiscounted cost"}


def label(raw):
    """A run's row from its ``config.json`` (``raw``): its algorithm, and for Meta-CPO the
    metrics of its local (inner) and meta (outer) steps (issue 15; runs from before
    ``inner_metric`` existed: the algorithm) and whether it takes the exact eq. 9 step above
    the limit, by name for the paper's setting and ours (:func:`metacpo_ref.run.plots.variant_name`),
    and the :data:`COMPARED` settings in which it differs from the defaults;
    a field the run predates has the value it ran with (:data:`BEFORE_FIELD`)."""
    compared = "".join(f", {k} {raw[k]}" for k in COMPARED if raw.get(k, COMPARED[k]) != COMPARED[k])
    if raw["algo"] != "meta-cpo" or "inner_metric" not in raw:
        return raw["algo"] + compared
    config = {**BEFORE_FIELD, **raw}
    if variant_name("meta-cpo", config):
        return variant_name("meta-cpo", config) + compared
    exact = "" if config["recover_above_limit"] else ", exact step above the limit"
    return f"meta-cpo inner {config['inner_metric']}, outer {config['outer_metric']}{exact}{compared}"


# Settings whose learning effect is compared in results/ (issue 34's speed variants), named
# in a row's label when a run's differs from the default (config.py).
COMPARED = {f.name: f.default for f in dataclasses.fields(Config)
            if f.name in ("fisher_subsample", "vf_ftol", "replay_warm_start")}


def local_step_changes(rows):
    """``{case: [cost of batch k+1 - cost of batch k, ...]}`` over the local steps of
    ``rows`` (metrics rows of a meta algorithm: per task, the K + 1 batch costs and the
    case of eq. 9 each step solved)."""
    out = defaultdict(list)
    for r in rows:
        for t in r.get("tasks", []):
            for k, case in enumerate(t.get("cases", [])):   # baselines' rows: no local steps
                out[case].append(t["costs"][k + 1] - t["costs"][k])
    return out


def local_step_table(runs):
    """Markdown lines: per meta algorithm and case, the local steps of the second half of
    training, the mean change of the batch cost per step and the fraction of steps after
    which it fell (mean ± s.e. over seeds), and all steps together. The case is chosen on
    the noisy batch before the step (recovery where it cost more than the limit), so per
    case the change includes a regression to the mean; the "all" row does not."""
    lines = []
    for algo, rows in runs.items():
        per_seed = [local_step_changes(rs[len(rs) // 2:]) for rs in rows]
        cases = [c for c in ("trust", "both", "recovery", "infeasible") if any(s.get(c) for s in per_seed)]
        for s in per_seed:
            s["all"] = [d for case in cases for d in s.get(case, [])]
        for case in cases + (["all"] if len(cases) > 1 else []):   # (one case: its row is all steps)
            seeds = [s[case] for s in per_seed if s.get(case)]
            if seeds:
                lines.append(f"| {algo} | {case} | {sum(map(len, seeds))} | "
                             f"{mean_se([np.mean(d) for d in seeds])} | "
                             f"{mean_se([np.mean(np.asarray(d) < 0) for d in seeds])} |")
    if not lines:
        return []
    return ["Local steps in the second half of training (eq. 9's case per step): episode cost of the "
            "batch after the step minus the batch before it (mean ± s.e. over seeds; the case is chosen on "
            "the batch before the step, so per case the change includes a regression to the mean)", "",
            "| algorithm | case | steps | cost change per step | fraction with cost falling |",
            "|---|---|---|---|---|", *lines, ""]


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


def load(root):
    """``{row label: [run directories]}`` of the runs under ``root`` with metrics rows."""
    runs = defaultdict(list)
    for d in sorted(Path(root).iterdir()):   # run directories with metrics rows (not logs, not fresh runs)
        if not d.is_dir():
            continue
        if not (d / rundir.CONFIG).exists():
            warn(f"{d} has no config.json: not counted")
        elif not (d / rundir.METRICS).exists() or not (d / rundir.METRICS).stat().st_size:
            warn(f"{d} has no metrics rows yet: not counted")
        else:
            runs[label(read_config_json(d))].append(d)
    return runs


def main(root, *test_names):
    if test_names[:1] == ("--glance",):
        return glance(load(root), test_names[1] if len(test_names) > 1 else "test-eval.json", Path(root))
    test_names = test_names or ("test.json",)
    runs = load(root)
    for dirs in runs.values():
        for d in dirs:
            for name in test_names:
                if not (d / name).exists():
                    warn(f"{d} has no {name}: left out of the meta-testing table (make one with "
                         f"`cli.py test FAMILY --checkpoint {d}/checkpoint.npz --json > {d}/{name}`)")
    metrics, table = {}, []
    for algo, dirs in runs.items():
        rows = []
        for d in dirs:
            good, bad = scan_metrics(d)
            if bad:
                warn(f"{d}/metrics.jsonl: line {', '.join(str(n) for n, _ in bad)} not a metrics row; left out")
            rows.append(good)
        metrics[algo] = rows
    measures = {algo: sorted({r.get("cost_measure", "episode") for rs in rows for r in rs})
                for algo, rows in metrics.items()}
    usual = max(sorted(map(tuple, measures.values())), key=lambda m: sum(tuple(v) == m for v in measures.values()))
    for algo, rows in metrics.items():
        steps = sorted({rs[-1]["env_steps"] for rs in rows})
        ret, cost = (mean_se([np.mean([r[key] for r in rs[-10:]]) for rs in rows]) for key in ("return", "cost"))
        if tuple(measures[algo]) != usual:   # e.g. the first campaign's runs beside the second's
            cost += f" ({' / '.join(MEASURE_NAMES[m] for m in measures[algo])})"
        table.append([algo, len(runs[algo]), f"{steps[0]:,}" + (f" - {steps[-1]:,}" if len(steps) > 1 else ""),
                      ret, cost])
    print_table(["algorithm", "seeds", "env steps", "train return (last 10 its)", "train cost (last 10 its)"], table)
    for line in local_step_table(metrics):
        print(line)
    for name in test_names:
        test_table(runs, name, heading=True)
        measures_table(runs, name, Path(root) / "random.json")
        welch_table(runs, name)


def read_tests(runs, test_name):
    """``{label: [each seed's meta-test rows]}``: the ``test_name`` files the runs have."""
    return {algo: [doc["rows"] for d in dirs if (doc := read_test(d, test_name)) is not None]
            for algo, dirs in runs.items()}


def test_table(runs, test_name, heading=False):
    """The meta-testing table of ``test_name`` (one ``cli.py test --json`` file per run):
    return / cost after k adaptation steps, per algorithm (with ``heading``, under a
    ``### test_name`` line, for a page with several meta-tests)."""
    if heading:
        print(f"### {test_name}")
        print()
    tests = read_tests(runs, test_name)
    if not any(tests.values()):
        print(f"(no run is meta-tested yet: no {test_name})")
        print()
        return
    K = min(len(t[0]) for t in tests.values() if t) - 1
    first = next(t[0] for t in tests.values() if t)
    limit, n_tasks = first[0]["cost_limit"], len(first[0]["tasks"])
    measure = MEASURE_NAMES[first[0].get("cost_measure", "episode")]
    print(f"Meta-testing on {n_tasks} unseen test tasks, cost limit {limit:g} per episode ({measure}): "
          "return / cost after k adaptation steps (mean ± s.e. over seeds; * one seed: s.e. over test tasks)")
    print()
    ks = [f"k={k}" for k in range(K + 1)]
    tested = {algo: t for algo, t in tests.items() if t}
    print_table(["algorithm", "seeds", *ks],
                [[algo, len(t), *(f"{step_cell(t, k, 'return')} / {step_cell(t, k, 'cost')}" for k in range(K + 1))]
                 for algo, t in tested.items()])
    print("Test tasks at or under the cost limit after k adaptation steps (over seeds and test tasks; a task's "
          "cost is the mean over its evaluation episodes, or, in meta-tests before issue 29, over the batch it "
          "adapted on)")
    print()
    print_table(["algorithm", *ks], [[algo, *(f"{n} of {total}" for n, total in tasks_within(t, K))]
                                     for algo, t in tested.items()])


MEASURES = (("return", "return"), ("cost_episode", "cost per episode"), ("cost_discounted", "discounted J_C"),
            ("cost_authors", "authors' measure (comparison only)"))


def measures_table(runs, test_name, random_file=None):
    """For meta-tests with every measure (issue 29): per algorithm and k in (0, K), the
    return and the three cost measures, mean ± s.e. over seeds; a uniformly random
    policy's row (``random_file``, one ``cli.py test --random-policy --json``: s.e. over
    test tasks) under them."""
    tests = read_tests(runs, test_name)
    tested = {algo: t for algo, t in tests.items() if t and "cost_discounted" in t[0][0]}
    if not tested:
        return
    K = min(len(t[0]) for t in tested.values()) - 1
    print(f"Every measure after k = 0 and k = {K} adaptation steps (evaluation episodes; mean ± s.e. over seeds)")
    print()
    rows = [[algo, len(t), k, *(step_cell(t, k, key) for key, _ in MEASURES)] for algo, t in tested.items()
            for k in (0, K)]
    doc = read_test(random_file.parent, random_file.name) if random_file is not None else None
    if doc:
        r = doc["rows"][0]
        rows.append(["uniformly random policy", "-", "-", *(f"{r[key]:.2f} ± {r[key + '_se']:.2f}*"
                                                             for key, _ in MEASURES)])
    print_table(["algorithm", "seeds", "k", *(name for _, name in MEASURES)], rows)
    limit = next(iter(tested.values()))[0][0]["cost_limit"]
    print(f"(Seed, task) pairs at or under the limit {limit:g} in each measure after k = 0 and k = {K} steps")
    print()
    within = [[algo, k, *(within_limit(t, k, key) for key, _ in MEASURES[1:])] for algo, t in tested.items()
              for k in (0, K)]
    if doc:
        within.append(["uniformly random policy", "-", *(within_limit([doc["rows"]], 0, key, limit)
                                                           for key, _ in MEASURES[1:])])
    print_table(["algorithm", "k", *(name for _, name in MEASURES[1:])], within)


def welch(a, b):
    """``(mean(a) - mean(b), p)``: Welch's two-sided t-test of two samples of per-seed means
    (unequal variances; ``nan`` for p with fewer than two values on a side)."""
    from scipy.stats import ttest_ind

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    p = float(ttest_ind(a, b, equal_var=False).pvalue) if min(len(a), len(b)) > 1 else float("nan")
    return float(a.mean() - b.mean()), p


def welch_table(runs, test_name):
    """Meta-CPO (each variant) against CPO, against Meta-TRPO and against the other variants
    at k = 0 and k = K: the
    difference of the means over seeds and Welch's p over the per-seed means (the training
    seeds are the only independent replicates: the test tasks and evaluation episodes are
    shared by every run, so a test paired over tasks would overstate significance), for the
    return and each cost measure the meta-test has."""
    tests = read_tests(runs, test_name)
    ours = [a for a in tests if a.startswith("meta-cpo") and tests[a]]
    pairs = [(a, b) for a in ours for b in ("cpo", "meta-trpo") if tests.get(b)]
    pairs += [(a, b) for i, a in enumerate(ours) for b in ours[i + 1:]]   # the variants against each other
    if not pairs:
        return
    keys = ["return", "cost_episode", "cost_discounted"] if "cost_episode" in tests[ours[0]][0][0] else ["return", "cost"]
    K = min(len(t[0]) for t in tests.values() if t) - 1
    print(f"Welch's t-test over per-seed means ({test_name}): difference of the means (first minus second), p")
    print()
    rows = []
    for a, b in pairs:
        for k in (0, K):
            cells = [welch([s[k][key] for s in tests[a]], [s[k][key] for s in tests[b]]) for key in keys]
            rows.append([f"{a} vs {b}", k, *(f"{d:+.2f} (p = {p:.2g})" for d, p in cells)])
    print_table(["comparison", "k", *keys], rows)


def short(v):
    """A number as the glance table shows it: two decimals under 10, one under 100, none above."""
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"


GLANCE = {VARIANTS[1][0]: "ours", VARIANTS[0][0]: "paper's", "cpo": "CPO"}   # the glance table's rows, short names


def glance(runs, test_name, root):
    """The results page's verdicts-at-a-glance rows of one family (``--glance``): per cost
    measure (``J_C``, per episode) the meta-test cost at k = 0 -> K of our Meta-CPO, the
    paper's and CPO (mean over seeds; the (seed, task) pairs at or under the limit at K),
    TRPO / Meta-TRPO at K, the random policy, and each Meta-CPO against CPO at K (Welch's
    difference of the means and p over per-seed means); the verdict column is left empty."""
    tests = read_tests(runs, test_name)
    first = next(t for t in tests.values() if t)[0]
    K = len(first) - 1
    train = scan_metrics(runs["cpo"][0])[0][0]   # the training limit of the constrained runs
    family = f"{read_config_json(runs['cpo'][0])['family']} ({train['cost_limit']:g} / {first[0]['cost_limit']:g})"
    random = read_test(root, "random.json")
    ours = list(GLANCE)[:2]
    columns = ["family (train / test limit)", "measure", *(f"{GLANCE[a]} k = 0 -> {K}" for a in GLANCE),
               f"TRPO / Meta-TRPO k = {K}", "random policy", *(f"{GLANCE[a]} - CPO, k = {K}" for a in ours),
               f"return k = {K} ({' / '.join(GLANCE.values())})", "verdict"]
    rows = []
    for key, name in (("cost_discounted", "discounted J_C"), ("cost_episode", "cost per episode")):
        cells = []
        for a in GLANCE:
            t = tests.get(a) or []
            cells.append(" -> ".join(short(np.mean([s[k][key] for s in t])) for k in (0, K))
                         + f" ({within_limit(t, K, key)})" if t else "-")
        cells.append(" / ".join(short(np.mean([s[K][key] for s in tests[a]])) if tests.get(a) else "-"
                                for a in ("trpo", "meta-trpo")))
        cells.append(short(random["rows"][0][key]) if random else "-")
        for a in ours:
            if tests.get(a) and tests.get("cpo"):
                d, p = welch([s[K][key] for s in tests[a]], [s[K][key] for s in tests["cpo"]])
                cells.append(f"{short(d) if d < 0 else '+' + short(d)} (p = {p:.2g})")
            else:
                cells.append("-")
        cells.append(" / ".join(short(np.mean([s[K]["return"] for s in tests[a]])) if tests.get(a) else "-"
                                for a in GLANCE) if not rows else "")
        rows.append([family if not rows else "", name, *cells, ""])
    print_table(columns, rows)


def within_limit(tests, k, key, limit=None):
    """``"n of N"``: the (seed, task) pairs of ``tests`` whose ``key`` after k steps is at or
    under the limit (each row's ``cost_limit``, or ``limit``)."""
    pairs = [(task[key], s[k]["cost_limit"] if limit is None else limit) for s in tests for task in s[k]["tasks"]]
    return f"{sum(v <= lim for v, lim in pairs)} of {len(pairs)}"


def step_cell(tests, k, key):
    """``key`` (return or cost) after k steps over the seeds' meta-test rows ``tests``:
    mean ± s.e. across seeds, or for one seed its s.e. over test tasks (marked *)."""
    return mean_se([s[k][key] for s in tests], tests[0][k][f"{key}_se"] if len(tests) == 1 else None)


def print_table(columns, rows):
    """A markdown table of ``rows`` (lists of cells) under ``columns``, and a blank line."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print()


def tasks_within(tests, K):
    """``[(tasks at or under the limit, tasks), ...]`` for k = 0..K, over the seeds'
    meta-test rows ``tests`` (the limit is each row's ``cost_limit``)."""
    return [(sum(task["cost"] <= s[k]["cost_limit"] for s in tests for task in s[k]["tasks"]),
             sum(len(s[k]["tasks"]) for s in tests)) for k in range(K + 1)]


if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__)
        sys.exit(0)
    if not sys.argv[1:]:
        print("usage: " + __doc__.split("\n\n")[1].strip())   # the docstring's command line
        sys.exit(2)
    if not Path(sys.argv[1]).is_dir():
        sys.exit(f"Error: {sys.argv[1]} is not a directory; give a family's folder of run directories, "
                 "e.g. results/campaign2/point-circle")
    main(*sys.argv[1:])
