"""Learning curves as in the paper's Fig. 5: training and meta-testing return and cost.

Row 1 of the figure is training: mean episode return and cost per iteration
(``return`` and ``cost`` of ``metrics.jsonl``: for the meta algorithms the
pre-adaptation policy, with the policy after the K local steps, ``return_adapted``
and ``cost_adapted``, drawn dashed in the same colour) against cumulative
environment steps or the iteration. Row 2, drawn when some run has a
``test.json`` (the output of ``cli.py test --json``), is meta-testing: return
and cost on unseen tasks against the adaptation step k = 0..K. The cost limit is
a dashed black line in every cost panel (the training limit from the metrics
rows, the test limit from ``test.json``: they differ for car-circle-hazard).
Each cost panel has a twin on a symmetric-log axis, linear from 0 to the limit
(why: :func:`figure`), so the limit can be read next to costs 20-60 times it. On
the env-steps axis every training point covers the same environment steps, one
meta-iteration: CPO/TRPO iterations are averaged in blocks of K + 1
(:func:`bin_rows`). Thin lines under each mean are the single seeds, and a
caption under the figure states the protocol and cost measure of each row
(:func:`caption`).

Runs are pooled into one curve when their ``config.json`` settings agree apart from the
seed (and the number of iterations); runs of other settings are drawn apart, labelled
by what differs (:func:`group`); every algorithm has a fixed colour. Each cost limit
is a line of its own, labelled with its value. Each curve is the mean over that algorithm's runs (seeds) with a
band of one standard error, ``std(ddof=1) / sqrt(n)`` across runs (no band for
a single run). How runs of different lengths are combined, how smoothing is
done and how the test rows are aggregated: see :func:`aggregate`,
:func:`smooth` and :func:`aggregate_test`.

Pure functions apart from :func:`load_run` (reads a directory) and
:func:`plot` (writes the image); matplotlib runs headless (Agg).
"""
import dataclasses
import io
import json
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from metacpo_ref.config import ALGOS, OUR_META_CPO, PAPER_META_CPO  # noqa: E402
from metacpo_ref.run import rundir  # noqa: E402
from metacpo_ref.run.rundir import BEFORE_FIELD, CheckpointError, config_from_dict, scan_metrics  # noqa: E402

COLORS = {"meta-cpo": "tab:red", "meta-trpo": "tab:blue", "cpo": "tab:green", "trpo": "tab:orange"}
OTHER_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
TEST_KEYS = ("step", "return", "cost", "cost_limit", "return_se", "cost_se")
X_AXES = {"env-steps": ("env_steps", "environment steps"), "iteration": ("iteration", "iteration")}


class PlotError(ValueError):
    """The run directories cannot be plotted (missing files, mixed families, no runs)."""


@dataclass(frozen=True)
class Run:
    """One run directory: its config (a dict), metrics rows, and meta-test rows
    (``None`` without a usable ``test.json``)."""

    path: str
    config: dict
    rows: list
    test: list = None

    @property
    def algo(self):
        return self.config["algo"]

    @property
    def family(self):
        return self.config["family"]


@dataclass(frozen=True)
class Curve:
    """An aggregated curve: x, mean and standard error over ``n`` runs."""

    x: np.ndarray
    mean: np.ndarray
    se: np.ndarray
    n: int


def color(algo):
    """The fixed colour of ``algo`` (unknown names get a stable colour from their name)."""
    if algo in COLORS:
        return COLORS[algo]
    return OTHER_COLORS[sum(map(ord, algo)) % len(OTHER_COLORS)]


def colors(labels):
    """``{label: colour}``: an algorithm's fixed colour for a curve labelled by it alone, the
    other curves (an algorithm drawn apart by its settings) each a colour no other curve has."""
    out = {lab: COLORS[lab] for lab in labels if lab in COLORS}
    spare = [c for c in (*COLORS.values(), *OTHER_COLORS) if c not in out.values()]
    for i, lab in enumerate(lab for lab in labels if lab not in out):
        out[lab] = spare[i] if i < len(spare) else color(lab)
    return out


# --- loading ----------------------------------------------------------------------------

def _checkpoint_config(d, path):
    """The config of run directory ``d`` from its checkpoint, in config.json's form."""
    if not (d / rundir.CHECKPOINT).is_file():
        raise PlotError(f"{path} has neither config.json nor checkpoint.npz (not a run directory of `cli.py train`?)")
    try:
        return rundir.checkpoint_config_json(d)
    except CheckpointError as e:
        raise PlotError(f"{path} has no config.json, and {e}") from None


def load_run(path, test_name="test.json"):
    """``(Run, warnings)`` of a run directory, its meta-testing rows from ``test_name``
    (the campaign's runs also have e.g. ``test-4x.json``); :class:`PlotError` if it has no
    ``metrics.jsonl``, no config (``config.json``, or as resume does, with a warning, the
    checkpoint's) or no metrics rows. An empty
    ``test.json`` (meta-testing still running) is left out with a warning; an
    unreadable one is an error. Every line of ``metrics.jsonl`` that is not a row
    is named in a warning (never skipped silently), and so is a run without
    ``test.json``, with the command that makes one."""
    d = Path(path)
    if not d.is_dir():
        raise PlotError(f"{path} is not a directory")
    if not (d / rundir.METRICS).is_file():
        raise PlotError(f"{path} has no metrics.jsonl (not a run directory of `cli.py train`?)")
    warnings, test = [], None
    if (d / rundir.CONFIG).is_file():
        try:
            config = rundir.read_config_json(d)
        except json.JSONDecodeError as e:
            raise PlotError(f"{path}/config.json is not JSON ({e})") from None
    else:
        config = _checkpoint_config(d, path)
        warnings.append(f"{path} has no config.json; its settings are read from {path}/checkpoint.npz "
                        "(as resume reads them)")
    if not isinstance(config, dict) or "family" not in config or "algo" not in config:
        raise PlotError(f"{path}/config.json is not a run config (no family or algo)")
    family = config["family"]
    rows, bad = scan_metrics(d)
    if not rows:
        raise PlotError(f"{path}/metrics.jsonl has no rows yet")
    if bad:
        warnings.append(f"{path}/metrics.jsonl: line {', '.join(str(n) for n, _ in bad)} not a metrics row "
                        "(damaged, cut off, or a duplicated or out-of-order iteration); left out, the other "
                        f"{len(rows)} rows are plotted")
    for key in rundir.REQUIRED_KEYS:
        if key not in rows[0]:
            raise PlotError(f"{path}/metrics.jsonl: rows have no {key!r}")
    tpath = d / test_name
    if not tpath.exists():
        warnings.append(f"{path} has no {test_name}, so no meta-testing curve; make one with `cli.py test {family} "
                        f"--checkpoint {path}/checkpoint.npz --json > {path}/{test_name}`")
    elif tpath.is_file():
        text = tpath.read_text()
        if not text.strip():
            warnings.append(f"{tpath} is empty (meta-testing still running?); its test rows are left out")
        else:
            try:
                doc = json.loads(text)
                test = doc["rows"]
                missing = {k for r in test for k in TEST_KEYS if k not in r}
                if missing:
                    raise KeyError(", ".join(sorted(missing)))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise PlotError(f"{tpath} is not the output of `cli.py test --json` "
                                f"({type(e).__name__}: {e})") from None
            if doc.get("family", family) != family:
                raise PlotError(f"{tpath} meta-tests family {doc['family']!r}, but the run is {family!r}")
            if not test:
                warnings.append(f"{tpath} has no rows; left out")
                test = None
    return Run(str(path), config, rows, test), warnings


def load_runs(paths, test_name="test.json"):
    """The :class:`Run` of each directory, all of one family, and a list of warnings;
    :class:`PlotError` if there are none, a directory is not a run, the families
    differ, or two are copies of one run (:func:`same_seed` with the same numbers; with
    other numbers, a warning)."""
    paths = list(paths)
    if not paths:
        raise PlotError("no run directories given")
    seen = {}
    for p in paths:
        key = Path(p).resolve()
        if key in seen:
            raise PlotError(f"{p} is given twice (as {seen[key]} before); each run counts as one seed")
        seen[key] = p
    runs, warnings = [], []
    for p in list(paths):
        if Path(p).exists() and not Path(p).is_dir():   # e.g. the .log files of results/FAMILY/*
            warnings.append(f"skipped {p}: a file, not a run directory")
            paths.remove(p)
    if not paths:
        raise PlotError("no run directories among the paths given (" + ", ".join(map(str, seen.values())) + ")")
    for p in paths:
        run, w = load_run(p, test_name)
        runs.append(run)
        warnings += w
    families = sorted({r.family for r in runs})
    if len(families) > 1:
        detail = "; ".join(f"{f}: " + ", ".join(r.path for r in runs if r.family == f) for f in families)
        raise PlotError(f"runs of different families cannot share a plot ({detail})")
    for a, b in same_seed(runs):
        if _same_numbers(a, b):
            raise PlotError(f"{a.path} and {b.path} are one run twice (the same settings, seed "
                            f"{a.config.get('seed')} and numbers): pooled they would count as two seeds; "
                            "give only one of them")
        warnings.append(f"{a.path} and {b.path} have the same settings and seed {a.config.get('seed')} but "
                        "different numbers (other code?); pooled as two seeds")
    return runs, warnings


# What may differ between the runs of one curve: the seed, the iterations (see aggregate) and
# split_meta_gradient, where the meta-gradient is computed (the same gradient up to rounding:
# config.py), as in the first campaign's car runs made before its default changed.
POOLED_OVER = ("seed", "iterations", "split_meta_gradient")


def settings(run):
    """The settings of ``run`` that its curve is drawn for: its config (as it loads for resume,
    so fields added later take the value the run used) without :data:`POOLED_OVER`."""
    try:
        config = dataclasses.asdict(config_from_dict(run.config))
    except (KeyError, TypeError, ValueError):   # a hand-made or partial config: as written
        config = {**BEFORE_FIELD, **run.config}
    config = json.loads(json.dumps(config))   # as written to config.json (tuples as lists)
    return {k: v for k, v in config.items() if k not in POOLED_OVER}


def same_seed(runs):
    """The pairs ``(first, other)`` of ``runs`` with the same settings and seed."""
    seen, pairs = {}, []
    for r in runs:
        key = json.dumps([settings(r), r.config.get("seed")], sort_keys=True)
        if key in seen:
            pairs.append((seen[key], r))
        else:
            seen[key] = r
    return pairs


def _same_numbers(a, b):
    """Whether two runs' rows agree (return and cost) over the iterations both have: copies."""
    return all((x["return"], x["cost"]) == (y["return"], y["cost"]) for x, y in zip(a.rows, b.rows))


def group(runs):
    """``{label: [runs]}``: runs pooled into one curve only when their settings agree apart
    from the seed (:func:`settings`), algorithms in the order of ``config.ALGOS`` (others
    after, by name). The label is the algorithm, followed, when an algorithm has runs of
    different settings, by the settings in which its curves differ (e.g.
    ``meta-cpo (inner_metric=identity, outer_metric=identity)``)."""
    curves = []   # (algo, settings, runs)
    for r in runs:
        key = settings(r)
        for algo, k, rs in curves:
            if algo == r.algo and k == key:
                rs.append(r)
                break
        else:
            curves.append((r.algo, key, [r]))
    order = {a: i for i, a in enumerate(ALGOS)}
    out = {}
    for algo, key, rs in sorted(curves, key=lambda c: (order.get(c[0], len(order)), c[0])):
        out[_label(algo, key, [k for a, k, _ in curves if a == algo])] = rs
    return out


# Meta-CPO's two variants, named on figures and tables (their settings: config.py).
VARIANTS = (("meta-cpo, paper's setting (H = I, exact eq. 9)", PAPER_META_CPO),
            ("meta-cpo, ours (Fisher metric, recover rule)", OUR_META_CPO))


def variant_name(algo, config):
    """The name of Meta-CPO's variant (:data:`VARIANTS`) whose settings ``config`` (a dict)
    has; None for another algorithm or other settings."""
    if algo == "meta-cpo":
        for name, fields in VARIANTS:
            if all(config.get(k) == v for k, v in fields.items()):
                return name
    return None


def _label(algo, key, keys):
    """``algo`` and the settings of ``key`` that differ among ``keys`` (the algorithm's curves);
    the variant's name when they differ only in a variant's settings."""
    differ = sorted({name for k in keys for name in set(k) | set(key) if k.get(name) != key.get(name)})
    named = variant_name(algo, key)
    if differ and named and set(differ) <= set(VARIANTS[0][1]):
        return named
    return algo + (f" ({', '.join(f'{name}={key.get(name)}' for name in differ)})" if differ else "")


# --- aggregation ------------------------------------------------------------------------

def smooth(y, n):
    """Trailing moving average over ``n`` points; the first ``n - 1`` points average
    what exists so far, so the length is kept. ``n = 1`` returns ``y`` unchanged."""
    y = np.asarray(y, dtype=np.float64)
    n = int(n)
    if n < 1:
        raise PlotError(f"the smoothing window must be >= 1, got {n}")
    if n == 1 or len(y) == 0:
        return y
    c = np.concatenate([[0.0], np.cumsum(y)])
    i = np.arange(1, len(y) + 1)
    lo = np.maximum(i - n, 0)
    return (c[i] - c[lo]) / (i - lo)


def standard_error(values, axis=0):
    """``std(ddof=1) / sqrt(n)`` along ``axis``; zeros when n = 1."""
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[axis]
    if n < 2:
        return np.zeros(np.delete(v.shape, axis))
    return v.std(axis=axis, ddof=1) / np.sqrt(n)


def aggregate(curves):
    """Mean and standard error across runs of ``curves``, a list of ``(x, y)``.

    Runs may differ in length (and, on the env-steps axis, in steps per
    iteration). They are put on a common x grid by linear interpolation: the
    grid is every x of every run inside the range all runs cover (from the
    largest first x to the smallest last x), and each run is interpolated onto
    it. When the runs share their x values (same config, iterations or env steps
    of equal batches) this is exactly the common prefix: the shortest run's x,
    no value interpolated. :class:`PlotError` if the runs do not overlap."""
    if not curves:
        raise PlotError("nothing to aggregate")
    xs = [np.asarray(x, dtype=np.float64) for x, _ in curves]
    ys = [np.asarray(y, dtype=np.float64) for _, y in curves]
    for x, y in zip(xs, ys):
        if len(x) != len(y) or len(x) == 0:
            raise PlotError("a curve has no points or x and y of different lengths")
        if np.any(np.diff(x) <= 0):
            raise PlotError("a curve's x values are not increasing")
    lo, hi = max(x[0] for x in xs), min(x[-1] for x in xs)
    if lo > hi:
        raise PlotError("the runs do not overlap on the x axis (try --x iteration)")
    grid = np.unique(np.concatenate([x[(x >= lo) & (x <= hi)] for x in xs]))
    values = np.array([np.interp(grid, x, y) for x, y in zip(xs, ys)])
    return Curve(grid, values.mean(axis=0), standard_error(values), len(curves))


def steps_per_row(run):
    """The environment steps one metrics row of ``run`` covers (the median over its rows of
    the increase of ``env_steps``; a meta-iteration's rows cover all its tasks' batches)."""
    x = np.array([row["env_steps"] for row in run.rows], dtype=np.float64)
    return float(np.median(np.diff(np.concatenate([[0.0], x]))))


def steps_per_point(runs):
    """The environment steps each point of the training curves covers on the env-steps axis:
    the coarsest :func:`steps_per_row` among ``runs`` (with meta algorithms among them: one
    meta-iteration, the batches of its T tasks for the K + 1 policies, i.e. K + 1 CPO/TRPO
    iterations of T tasks each)."""
    return max(steps_per_row(r) for r in runs)


def bin_rows(x, y, f):
    """Means of ``y`` over consecutive blocks of ``f`` points, each at the last ``x`` of its
    block (the env steps once the block is done, as a meta-iteration's row is at its end).
    A last incomplete block is left out (its mean would cover fewer steps), unless there is
    no complete block at all: then the one partial block. ``f = 1`` returns the input."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    f = int(f)
    if f <= 1 or len(y) == 0:
        return x, y
    n = len(y) // f
    if n == 0:
        return x[-1:], y.mean(keepdims=True)
    return x[:n * f].reshape(n, f)[:, -1], y[:n * f].reshape(n, f).mean(axis=1)


def bin_factor(run, resolution):
    """How many of ``run``'s rows make one point of ``resolution`` environment steps (1 when
    ``resolution`` is ``None`` or no coarser than a row)."""
    if resolution is None:
        return 1
    return max(1, int(round(resolution / steps_per_row(run))))


def run_curves(runs, key, x="env-steps", n_smooth=1, resolution=None):
    """Each run's ``(x, y)`` of metrics column ``key``: binned to ``resolution`` environment
    steps per point (:func:`bin_rows`, :func:`bin_factor`), then smoothed (:func:`smooth`);
    ``None`` if some run lacks ``key``."""
    xkey = X_AXES[x][0]
    curves = []
    for r in runs:
        if any(key not in row for row in r.rows):
            return None
        bx, by = bin_rows([row[xkey] for row in r.rows], [row[key] for row in r.rows], bin_factor(r, resolution))
        curves.append((bx, smooth(by, n_smooth)))
    return curves


def training_curve(runs, key, x="env-steps", n_smooth=1, resolution=None):
    """The aggregated curve of metrics column ``key`` over ``runs`` (each run binned to
    ``resolution`` environment steps per point and smoothed first, see :func:`run_curves`);
    ``None`` if some run lacks ``key``."""
    curves = run_curves(runs, key, x, n_smooth, resolution)
    return None if curves is None else aggregate(curves)


def aggregate_test(tests, key):
    """Meta-testing curve of ``key`` ("return" or "cost") against the adaptation step.

    ``tests`` is a list of ``test.json`` row lists, one per seed; each row's value
    is already that seed's mean over its test tasks. With two or more seeds: the
    mean over seeds and the standard error across seeds; with one seed: its mean
    and the per-task standard error stored in the row (``return_se``,
    ``cost_se``). Seeds tested with different K share the steps 0..min K."""
    if not tests:
        raise PlotError("no test rows to aggregate")
    k = min(len(t) for t in tests)
    values = np.array([[row[key] for row in t[:k]] for t in tests], dtype=np.float64)
    steps = np.array([row["step"] for row in tests[0][:k]], dtype=np.float64)
    if len(tests) == 1:
        se = np.array([row[f"{key}_se"] for row in tests[0][:k]], dtype=np.float64)
    else:
        se = standard_error(values)
    return Curve(steps, values.mean(axis=0), se, len(tests))


# --- drawing ----------------------------------------------------------------------------

SEED_LINE = dict(linewidth=0.6, alpha=0.35, gid="seed")   # a seed's curve under the mean


def _band(ax, curve, c, label, band_alpha=0.2, **kw):
    marker = "o" if len(curve.x) == 1 else None
    ax.plot(curve.x, curve.mean, color=c, label=label, marker=marker, **kw)
    if curve.n > 1:
        ax.fill_between(curve.x, curve.mean - curve.se, curve.mean + curve.se, color=c, alpha=band_alpha,
                        linewidth=0)


def _seeds(ax, curves, c, **kw):
    """One thin line per run (``(x, y)`` each), unlabelled, under the mean."""
    for x, y in curves:
        ax.plot(x, y, color=c, **{**SEED_LINE, **kw})


COST_LABELS = {"discounted": "discounted cost J_C", "episode": "episode cost (undiscounted)"}
MEASURE_TEXT = {"discounted": "the discounted cost J_C (gamma-discounted sum over an episode)",
                "episode": "the undiscounted cost per episode"}


def _measures(rows):
    """The cost measures of ``rows`` (``cost_measure``; rows from before the setting: the
    undiscounted episode cost)."""
    return sorted({row.get("cost_measure", "episode") for row in rows})


def training_measure(runs):
    """The cost measures (a tuple) of most runs' metrics rows (ties: by name): what a figure's
    training cost panels show. A run trained under others (the first campaign's TRPO beside
    the second campaign's runs) gets no training cost curve there; the caption says so."""
    counts = Counter(tuple(_measures(r.rows)) for r in runs)
    return max(sorted(counts), key=counts.get)


def _cost_label(rows):
    """The y label of a cost panel from its rows' ``cost_measure`` (rows from before the
    setting: the undiscounted episode cost); several measures are named together."""
    measures = _measures(rows)
    return " / ".join(COST_LABELS[m] for m in measures) + (" (mixed measures)" if len(measures) > 1 else "")


LIMIT_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
ZOOM_LINSCALE = 1.0   # the zoomed cost panels: the linear part 0..limit as tall as one decade above it


def _limits(ax, limits, what="cost limit"):
    """One black line per cost limit, each labelled with its value and drawn in its own style."""
    for i, lim in enumerate(sorted(limits)):
        ax.axhline(lim, color="black", linestyle=LIMIT_STYLES[i % len(LIMIT_STYLES)], linewidth=1.5,
                   label=f"{what} {lim:g}", zorder=3)


def _zoom(ax, limits):
    """Make ``ax`` the zoomed view of a cost panel: a symmetric-log y axis, linear from 0 to
    the largest limit ``L`` and logarithmic above it, with ticks at 0, L/2, L and 2, 5, 10, 20,
    50, ... x L; the bottom at 0 (costs are never negative). Returns ``L``."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    lim = max(limits) if max(limits) > 0 else 1.0
    ax.set_yscale("symlog", linthresh=lim, linscale=ZOOM_LINSCALE)
    top = max(ax.get_ylim()[1], 2.0 * lim)
    ticks = [0.0, lim / 2, lim] + [m * lim for m in (2, 5, 10, 20, 50, 100, 200, 500, 1000) if m * lim <= top]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_yticklabels([f"{t:g}" for t in ticks])
    ax.set_ylim(0.0, top)
    return lim


def _values(values):
    """``values`` (a set) as text: one value, or all of them joined by "/"."""
    return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(values, key=str))


def caption(runs, test_name="test.json", x="env-steps", resolution=None):
    """The figure's caption: what each row shows under which protocol and cost measure.

    Training: mean and band, the seeds' thin lines, the cost measure and limit(s) of the
    metrics rows, the meta algorithms' tasks and local steps, and how many CPO/TRPO
    iterations are averaged into one point (``resolution``, see :func:`steps_per_point`).
    Meta-testing: the test file, its tasks, adaptation and evaluation episodes, cost
    measure and limit(s), as recorded in its rows (an old file without them says so)."""
    measure = training_measure(runs)
    rows = [row for r in runs if tuple(_measures(r.rows)) == measure for row in r.rows]
    groups = group(runs)
    meta = {a: rs for a, rs in groups.items() if any("return_adapted" in row for r in rs for row in r.rows)}
    other = {a: rs for a, rs in groups.items() if a not in meta}
    lines = []
    train = ("Training (row 1): mean over seeds with a band of ± 1 s.e., thin lines the single seeds; cost = "
             + " / ".join(MEASURE_TEXT[m] for m in _measures(rows))
             + f", limit {_values({row['cost_limit'] for row in rows})}.")
    if meta:
        ms = [r for rs in meta.values() for r in rs]
        train += (f" {'; '.join(meta)}: one point per meta-iteration "
                  f"({_values({r.config.get('tasks') for r in ms})} tasks, "
                  f"K = {_values({r.config.get('local_steps') for r in ms})} local steps; solid: the policy "
                  "before adaptation, dashed: after the K local steps).")
    if other:
        os_ = [r for rs in other.values() for r in rs]
        if x == "env-steps" and resolution is not None and any(bin_factor(r, resolution) > 1 for r in os_):
            blocks = _values({bin_factor(r, resolution) for r in os_})
            train += (f" {'; '.join(other)}: mean of each block of {blocks} iterations, the same "
                      f"{resolution:,.0f} env steps per point as the meta algorithms.")
        else:
            train += f" {'; '.join(other)}: one point per iteration."
    apart = {a: sorted({m for r in rs for m in _measures(r.rows)}) for a, rs in groups.items()
             if any(tuple(_measures(r.rows)) != measure for r in rs)}
    for a, ms in apart.items():
        train += (f" {a}: trained under {' / '.join(MEASURE_TEXT[m] for m in ms)}, its training cost not drawn "
                  "(its meta-testing is in every measure).")
    lines.append(train)
    tested = [r.test for r in runs if r.test]
    if tested:
        first = [t[0] for t in tested]
        test = (f"Meta-testing (row 2, {test_name} of {len(tested)} runs): "
                f"{_values({len(t[0].get('tasks') or []) for t in tested})} unseen tasks per run, "
                f"k = 0..{_values({len(t) - 1 for t in tested})} adaptation steps")
        if all("eval_episodes" in row for row in first):
            test += (f" of {_values({row.get('adapt_episodes') for row in first})} episodes each, return and cost "
                     f"measured on {_values({row['eval_episodes'] for row in first})} separate evaluation "
                     "episodes per task and step")
        else:
            test += f" (the evaluation episodes are not recorded in {test_name})"
        test += ("; cost = " + " / ".join(MEASURE_TEXT[m] for m in _measures(first))
                 + f", limit {_values({row['cost_limit'] for row in first})}; error bars ± 1 s.e. across seeds,"
                   " thin lines the single seeds")
        single = [a for a, rs in groups.items() if sum(r.test is not None for r in rs) == 1]
        test += (f" ({'; '.join(single)}: one seed, error bars ± 1 s.e. over its test tasks)." if single else ".")
        lines.append(test)
    lines.append("Right column: the cost panel again on a symmetric-log axis, linear from 0 to the largest limit and "
                 "logarithmic above it, to read whether the constrained algorithms meet the limit while every "
                 "curve stays in view.")
    return lines


def figure(runs, x="env-steps", n_smooth=1, adapted=True, test_name="test.json"):
    """The figure of ``runs`` (all of one family): training return, cost and cost zoomed
    (row 1) and, if any run has test rows, meta-testing return, cost and cost zoomed
    (row 2), with the :func:`caption` under it.

    Each cost panel has a twin to its right, the same curves on a symmetric-log y axis,
    linear from 0 to the largest limit L of its row and logarithmic above (:func:`_zoom`):
    the unconstrained algorithms reach costs 20-60 times the limit and squeeze the limit
    line into the bottom few percent of the full panel, which stays linear (their scale is
    part of the result). Not a linear zoom to 0..3 L: at meta-testing every algorithm of
    car-circle-hazard is above 3 L (such a panel is empty, showing neither by how much nor
    in which order), and in training the constrained curves would leave it at every
    spike. On the symlog axis the limit sits at a fixed height (about 40% of the panel), a
    cost of 0 stays on it, and the distance above the limit reads as a ratio.

    On the env-steps axis every training point covers the same environment steps,
    :func:`steps_per_point` (one meta-iteration): the CPO/TRPO rows are averaged in blocks
    of K + 1 iterations (:func:`bin_rows`) before ``n_smooth``. On the iteration axis each
    row is a point."""
    import matplotlib.pyplot as plt

    if x not in X_AXES:
        raise PlotError(f"unknown x axis {x!r}; valid: {', '.join(X_AXES)}")
    if not runs:
        raise PlotError("no runs to plot")
    groups = group(runs)
    palette = colors(list(groups))
    tested = {a: [r.test for r in rs if r.test is not None] for a, rs in groups.items()}
    tested = {a: t for a, t in tested.items() if t}
    nrows = 2 if tested else 1
    resolution = steps_per_point(runs) if x == "env-steps" else None
    text = [textwrap.fill(line, 190) for line in caption(runs, test_name, x, resolution)]
    text_lines = sum(t.count("\n") + 1 for t in text)
    fig, axes = plt.subplots(nrows, 3, figsize=(16, 4.6 * nrows + 0.9 + 0.16 * text_lines), squeeze=False)
    xlabel = X_AXES[x][1]

    measure = training_measure(runs)
    for algo, group_runs in groups.items():
        c = palette[algo]
        for col, key in enumerate(("return", "cost", "cost")):
            rs = group_runs if key == "return" else [r for r in group_runs if tuple(_measures(r.rows)) == measure]
            if not rs:
                continue
            ax = axes[0, col]
            _seeds(ax, run_curves(rs, key, x, n_smooth, resolution), c)
            _band(ax, training_curve(rs, key, x, n_smooth, resolution), c, f"{algo} (n={len(group_runs)})",
                  linewidth=1.8)
            seeds = run_curves(rs, f"{key}_adapted", x, n_smooth, resolution) if adapted else None
            if seeds is not None:
                ks = sorted({r.config.get("local_steps") for r in rs}, key=str)
                ktext = "/".join(str(k) for k in ks)
                _seeds(ax, seeds, c, linestyle=(0, (4, 2)))
                _band(ax, aggregate(seeds), c, f"{algo} after K={ktext} local steps", band_alpha=0.1,
                      linestyle=(0, (4, 2)), linewidth=1.1, alpha=0.85)
    drawn = [row for r in runs if tuple(_measures(r.rows)) == measure for row in r.rows]
    train_limits = {row["cost_limit"] for row in drawn}
    for ax in axes[0, 1:]:
        _limits(ax, train_limits)
    lim = _zoom(axes[0, 2], train_limits)
    smoothing = f", moving average of {n_smooth}" if n_smooth > 1 else ""
    cost_label = _cost_label(drawn)
    for col, title in enumerate(("training: return", "training: cost", f"training: cost, symlog (linear below {lim:g})")):
        ax = axes[0, col]
        ax.set_title(title + smoothing)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("episode return" if col == 0 else cost_label)
        if x == "env-steps":
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))

    if tested:
        order = list(groups)
        for i, (algo, tests) in enumerate(tested.items()):
            c = palette[algo]
            dodge = 0.06 * (order.index(algo) - (len(order) - 1) / 2)
            for col, key in enumerate(("return", "cost", "cost")):
                cur = aggregate_test(tests, key)
                note = f"{cur.n} seeds" if cur.n > 1 else "1 seed, s.e. over its test tasks"
                if cur.n > 1:
                    _seeds(axes[1, col], [(np.array([row["step"] for row in t], dtype=np.float64) + dodge,
                                           [row[key] for row in t]) for t in tests], c)
                axes[1, col].errorbar(cur.x + dodge, cur.mean, yerr=cur.se, color=c, marker="o", markersize=4,
                                      capsize=3, linewidth=1.8, label=f"{algo}: {note}")
        test_limits = {t[0]["cost_limit"] for tests in tested.values() for t in tests}
        for ax in axes[1, 1:]:
            _limits(ax, test_limits, "meta-testing cost limit" if test_limits != train_limits else "cost limit")
        lim = _zoom(axes[1, 2], test_limits)
        kmax = max(len(t) for tests in tested.values() for t in tests) - 1
        cost_label = _cost_label([t[0] for tests in tested.values() for t in tests])
        for col, title in enumerate(("meta-testing on unseen tasks: return", "meta-testing on unseen tasks: cost",
                                     f"meta-testing: cost, symlog (linear below {lim:g})")):
            ax = axes[1, col]
            ax.set_title(title)
            ax.set_xlabel("adaptation step k")
            ax.set_ylabel("episode return" if col == 0 else cost_label)
            ax.set_xticks(range(kmax + 1))

    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    handles = {}   # one entry per algorithm (its training label; its colour in row 2 too), adapted curve, limit
    for ax in [*axes[0], *axes[1:, 1].flat]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if ax in axes[0] or lab.startswith(("cost limit", "meta-testing cost limit")):
                handles.setdefault(lab.split(" (n=")[0], (h, lab))
    ncol = min(4 if max(map(len, handles)) < 40 else 3, len(handles))
    height = fig.get_figheight()
    legend_rows = -(-len(handles) // ncol)
    fig.text(0.01, 0.006, "\n".join(text), ha="left", va="bottom", fontsize=8.5)
    caption_h = (0.16 * text_lines + 0.1) / height
    fig.legend([h for h, _ in handles.values()], [lab for _, lab in handles.values()], loc="lower center",
               bbox_to_anchor=(0.5, caption_h), ncol=ncol, frameon=False, fontsize=9)
    family = runs[0].family
    fig.suptitle(f"{family}: mean ± standard error over seeds (n = runs per algorithm)", fontsize=12)
    fig.tight_layout(rect=(0, caption_h + (0.24 * legend_rows + 0.05) / height, 1, 1 - 0.35 / height))
    return fig


def plot(paths, out, x="env-steps", n_smooth=1, adapted=True, dpi=120, test_name="test.json"):
    """Load the run directories ``paths`` (meta-testing from each one's ``test_name``),
    draw :func:`figure`, save it to ``out`` (the format from its extension). Returns
    ``(runs, warnings)``."""
    import matplotlib.pyplot as plt

    runs, warnings = load_runs(paths, test_name)
    fig = figure(runs, x, n_smooth, adapted, test_name)
    out = Path(out)
    image = io.BytesIO()
    try:
        fig.savefig(image, dpi=dpi, format=out.suffix[1:] or None)
    except ValueError as e:   # an unknown extension
        raise PlotError(f"cannot write {out}: {e}") from None
    finally:
        plt.close(fig)
    try:   # written here, not by matplotlib, so that every OS error surfaces (e.g. ENOSPC of /dev/full)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:
            f.write(image.getvalue())
            f.flush()
    except OSError as e:
        raise PlotError(f"cannot write {e.filename or out}: {e.strerror or e}") from None
    return runs, warnings
