"""Command line of metacpo_ref: parse, call, print. See README.md."""
import json
import os
import sys
from dataclasses import fields

import click

from click.core import ParameterSource

from metacpo_ref.checks.bench import DURATION as BENCH_DURATION

from metacpo_ref.config import (ADAPT_STEPS, COUNT, EPISODES, META_TEST_TASKS, SMOOTH, WORKERS, Config,
                                field_choices, field_doc, field_range)


class Main(click.Group):
    """The command group; an OS error writing standard output (a full disk, a closed pipe)
    is one line on standard error, not a traceback."""

    def invoke(self, ctx):
        try:
            try:
                return super().invoke(ctx)
            finally:
                sys.stdout.flush()
        except OSError as e:
            if e.filename is not None:
                raise
            _stdout_to_devnull()
            raise click.ClickException(f"cannot write to standard output: {e.strerror or e}") from None


def _stdout_to_devnull():
    """Point file descriptor 1 at /dev/null, so the exit's flush of what could not be written succeeds."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):   # no file descriptor (a test runner's stream)
        pass


@click.group(cls=Main)
def main():
    """metacpo_ref: a reference implementation of Meta-CPO (arXiv 2312.10230)."""


FAMILY = click.Choice(list(field_choices("family")))


class Number(click.ParamType):
    """A number in a :class:`config.Range`: NaN, +-inf and values outside the range
    are refused while parsing, before any work, with the valid range."""

    def __init__(self, valid):
        self.valid = valid
        self.name = "integer" if valid.integer else "number"

    def get_metavar(self, param, ctx=None):
        """E.g. ``INTEGER>=1``: the valid range in every --help."""
        bound = self.valid.describe().split(" ", 2 if self.valid.integer else 3)[-1].removeprefix("in ")
        return self.name.upper() + bound.replace(" ", "")

    def convert(self, value, param, ctx):
        v = value
        if isinstance(value, str):
            try:
                v = int(value) if self.valid.integer else float(value)
            except ValueError:
                v = None
        if v is None or not self.valid.contains(v):
            self.fail(f"{value!r} is not {self.valid.describe()}", param, ctx)
        return abs(v) if v == 0 else v   # -0 is 0


class Sizes(click.ParamType):
    """Layer sizes, integers >= 1 separated by commas (``64,32``), refused while parsing otherwise."""

    name = "sizes"

    def get_metavar(self, param, ctx=None):
        return "N,N..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            sizes = tuple(int(s) for s in str(value).split(","))
        except ValueError:
            sizes = ()
        if not sizes or not all(COUNT.contains(s) for s in sizes):
            self.fail(f"{value!r} is not a list of integers >= 1 separated by commas, e.g. 64,32", param, ctx)
        return sizes


# Flags of the Config fields not spelled --field-name (booleans: both spellings)
FLAGS = {"recover_above_limit": "--recover-above-limit/--exact-cpo-above-limit",
         "split_meta_gradient": "--split-meta-gradient/--whole-meta-gradient",
         "replay_warm_start": "--replay-warm-start/--replay-cold-start"}


def config_option(name, flag=None, dest=None, **kw):
    """A click option for :class:`Config` field ``name``: its flag (``--field-name`` or
    ``FLAGS``), default, help line and valid range or names read from config.py
    (``flag``, ``dest`` and ``kw`` override them)."""
    valid, choices, default = field_range(name), field_choices(name), getattr(Config, name)
    opts = dict(default=default, show_default=default is not None, help=field_doc(name))
    if valid is not None:
        opts["type"] = Number(valid)
    elif choices is not None:
        opts["type"] = click.Choice(list(choices))
    elif Config.__dataclass_fields__[name].type is tuple:
        opts.update(type=Sizes(), show_default=",".join(map(str, default)))
    opts.update(kw)
    flag = flag or FLAGS.get(name, "--" + name.replace("_", "-"))
    return click.option(flag, dest or name, **opts)


def config_options(fn):
    """An option for every :class:`Config` field but ``family`` (the argument), in Config's order;
    ``--task`` takes the text :func:`envs.parse_task` reads (into ``task_text``)."""
    for f in reversed(fields(Config)):
        if f.name == "task":
            fn = config_option("task", dest="task_text", metavar="KEY=VALUE[,KEY=VALUE...]",
                               help="Train on this one task of FAMILY instead of sampling tasks (parameters not "
                                    "named: the middle of their train range), e.g. point-circle --task "
                                    "radius=1.5,wall_factor=0.75 (Safety-Gymnasium's SafetyPointCircle1-v0).")(fn)
        elif f.name != "family":
            fn = config_option(f.name)(fn)
    return fn


def config_values(settings, **values):
    """The :class:`Config` fields' values, in Config's order, from the options' ``settings``
    and ``values`` (those the command computes: the family, the task)."""
    settings = {**settings, **values}
    return {f.name: settings[f.name] for f in fields(Config)}


def execution_options(fn):
    """--workers, --backend, --ray-address: how the per-task work runs (never what it computes)."""
    fn = click.option("--ray-address", default=None, callback=_ray_address, metavar="HOST:PORT",
                      help="Address HOST:PORT (or ray://HOST:PORT, or auto) of an existing Ray cluster, checked "
                           "before anything is written [default: start a local one].")(fn)
    fn = click.option("--backend", type=click.Choice(["process", "ray"]), default="process", show_default=True,
                      help="process: a local process pool; ray: Ray actors (pip install '.[ray]').")(fn)
    return click.option("--workers", type=Number(WORKERS), default=os.cpu_count() or 1, show_default="cores",
                        help="Processes (or Ray actors) for the per-task work, at most one per task (and per core "
                             "for processes: more are capped, with a note); results do not depend on it.")(fn)


def _ray_address(ctx, param, value):
    """--ray-address in a form Ray takes (workers.ray_address_form), refused while parsing."""
    from metacpo_ref.envs.workers import ray_address_form

    try:
        return None if value is None else ray_address_form(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from None


def capped_workers(workers, tasks, backend):
    """The workers to start for ``tasks`` jobs at a time; a note when an explicit --workers is capped."""
    from metacpo_ref.envs.workers import worker_count

    n, why = worker_count(workers, tasks, backend)
    source = click.get_current_context().get_parameter_source("workers")
    if why and source is not ParameterSource.DEFAULT:
        click.echo(f"note: --workers {workers} capped to {n} ({why})", err=True)
    return n


def os_error(e):
    """One line for an operating-system failure: the path and the cause."""
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}"


# options a resumed run may change (the new total, and how the work runs)
RESUME_FREE = ("iterations",)


@main.command()
@click.argument("family", type=FAMILY)
@config_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory [default: runs/FAMILY-ALGO-seedS].")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out with its stored settings; only --iterations (the new total) "
                   "and --workers/--backend/--ray-address may change.")
@click.option("--finished-ok", is_flag=True,
              help="With --resume: a run that already has its iterations is not an error; say so and how to "
                   "continue it, exit 0 (make train).")
@execution_options
def train(family, task_text, out_dir, resume, finished_ok, workers, backend, ray_address, **settings):
    """Train ALGO on FAMILY; writes config.json, metrics.jsonl and checkpoint.npz.

    Every setting of the run is an option (config.Config's fields; their sources: docs/settings.md)."""
    from metacpo_ref.envs import parse_task
    from metacpo_ref.run.rundir import CheckpointError, RunBusy, run_lock
    from metacpo_ref.envs.workers import WorkerError

    try:
        task = None if task_text is None else parse_task(family, task_text, settings["car_walls"]).params
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--task")
    values = config_values(settings, family=family, task=task)
    out_dir = out_dir or f"runs/{family}-{values['algo']}-seed{values['seed']}"
    ctx = click.get_current_context()
    given = {k: v for k, v in values.items()
             if k == "family" or ctx.get_parameter_source("task_text" if k == "task" else k)
             is not ParameterSource.DEFAULT}
    try:
        with run_lock(out_dir):
            _train(values, given, out_dir, resume, workers, backend, ray_address, finished_ok)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; the checkpoint in {out_dir} (if any) is intact: continue with "
                   f"cli.py train {family} --resume --out {out_dir}", err=True)
        sys.exit(130)
    except (CheckpointError, RunBusy) as e:
        raise click.ClickException(str(e))
    except WorkerError as e:
        raise click.ClickException(f"{e}; the last checkpoint in {out_dir} is intact (--resume continues)")
    except OSError as e:
        raise click.ClickException(os_error(e))


def _train(values, given, out_dir, resume, workers, backend, ray_address, finished_ok=False):
    """The train command's work, in the locked run directory: open it, run, print."""
    from metacpo_ref.run.rundir import checkpoint_path, load_checkpoint
    from metacpo_ref.run.training import prepare_run, resume_config, run_iterations
    from metacpo_ref.envs.workers import WorkerError, check_ray_address

    warn = lambda m: click.echo(f"warning: {m}", err=True)
    config = resume_config(out_dir, given) if resume else Config(**values)
    if resume and finished_ok:
        done = load_checkpoint(checkpoint_path(out_dir)).iteration
        if config.iterations <= done:
            click.echo(f"{out_dir} is finished ({done} iterations); continue it with `cli.py train "
                       f"{config.family} --resume --iterations N --out {out_dir}` (N > {done}), or meta-test it "
                       f"with `cli.py test {config.family} --checkpoint {out_dir}/checkpoint.npz`")
            return
    if backend == "ray" and ray_address:
        try:
            check_ray_address(ray_address)   # before anything is written
        except WorkerError as e:
            raise click.ClickException(str(e)) from None
    state = prepare_run(config, out_dir, resume, warn=warn)
    workers = capped_workers(workers, config.tasks, backend)
    iterations = config.iterations
    click.echo(f"{config.algo} on {config.family}: iterations {state.iteration}..{iterations - 1}, "
               f"{config.tasks} tasks x {config.n_episodes} episodes per batch, "
               f"cost limit {config.train_cost_limit:g} ({MEASURE_NAMES[config.cost_measure]}), "
               f"run directory {out_dir}")
    last = {}
    rows = run_iterations(state, out_dir, workers, backend, ray_address)
    try:
        if sys.stdout.isatty():
            with click.progressbar(rows, length=iterations - state.iteration, label="training",
                                   item_show_func=_show, show_eta=True) as bar:
                for row in bar:
                    last = row
        else:   # redirected (nohup, a log file): a line per iteration instead of a bar nobody sees
            for row in rows:
                last = row
                click.echo(f"{_show(row)}, {row['time_total']:.1f} s")
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror or e}; the last checkpoint in {out_dir} is intact "
                      "(--resume continues)", e.filename) from None
    if last:
        click.echo(f"done: iteration {last['iteration']}, return {last['return']:.3f}, "
                   f"cost {last['cost']:.2f} (limit {last['cost_limit']:g}{_measure(last)}); {out_dir}/metrics.jsonl")
        click.echo(next_steps(config.family, out_dir))


def next_steps(family, out_dir):
    """What to do with a finished run: meta-test it, then plot it."""
    return (f"next: meta-test it with `cli.py test {family} --checkpoint {out_dir}/checkpoint.npz --out "
            f"{out_dir}/test.json`, then plot it with `cli.py plot {out_dir} --out {out_dir}/curves.png`")


def _show(row):
    """The progress of one iteration's metrics row."""
    if not row:
        return ""
    return (f"it {row['iteration']} return {row['return']:.2f} "
            f"cost {row['cost']:.1f} (limit {row['cost_limit']:g}{_measure(row)})")


MEASURE_NAMES = {"discounted": "discounted J_C per episode", "episode": "undiscounted cost per episode"}


def _measure(row):
    """``", discounted"`` after a limit in the discounted measure (rows of older runs have no name: episode)."""
    return ", discounted" if row.get("cost_measure") == "discounted" else ""


@main.command()
@click.argument("family", type=FAMILY)
@click.option("--checkpoint", "checkpoint", type=click.Path(), required=True,
              help="checkpoint.npz of a run of `cli.py train` on FAMILY.")
@config_option("local_steps", "--adapt-steps", type=Number(ADAPT_STEPS),
               help="Adaptation steps K on each test task (rows k = 0..K; the default is Config.local_steps).")
@config_option("tasks", default=META_TEST_TASKS, help="Unseen test tasks (Table 1 test ranges).")
@config_option("episodes", help="Episodes per adaptation batch [default: the run's batch size].")
@click.option("--eval-episodes", type=Number(EPISODES), default=None,
              help="Separate evaluation episodes of each adapted policy, the same layouts at every step and for "
                   "every checkpoint [default: the run's batch size].")
@config_option("cost_limit", help="Cost limit per episode, in the run's cost measure [default: the family's test "
                                  "limit]; 0 means no cost at all.")
@config_option("cost_measure", default=None, show_default=False,
               help="The cost measure the limit is on, which a constrained algorithm's adaptation aims at and the "
                    "rows' `cost` is in [default: the run's own]; every measure is reported either way.")
@click.option("--eval-deterministic", "--deterministic", "deterministic", is_flag=True,
              help="Evaluate the mean actions (adaptation always uses stochastic batches).")
@click.option("--random-policy", is_flag=True,
              help="Instead: a uniformly random policy on the same test tasks and evaluation episodes (one row).")
@config_option("seed", help="Seed of the test tasks and their batches.")
@execution_options
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (what plot reads as RUN/test.json) instead of a table.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Also write the JSON object to this file (e.g. RUN/test.json), atomically: a temporary file "
                   "renamed once complete; nothing is written when the test fails.")
def test(family, checkpoint, local_steps, tasks, episodes, eval_episodes, cost_limit, cost_measure, deterministic,
         random_policy, seed, workers, backend, ray_address, as_json, out_file):
    """Meta-test a checkpoint: adapt on unseen tasks of FAMILY, report each step."""
    from metacpo_ref.run.evaluation import meta_test
    from metacpo_ref.run.rundir import CheckpointError, write_test
    from metacpo_ref.envs.workers import WorkerError

    workers = capped_workers(workers, tasks, backend)
    try:
        rows = meta_test(checkpoint, family, tasks, local_steps, episodes, cost_limit, deterministic, seed, workers,
                         backend, ray_address, eval_episodes, random_policy, cost_measure)
    except (CheckpointError, WorkerError) as e:
        raise click.ClickException(str(e))
    except KeyboardInterrupt:
        click.echo("\ninterrupted; nothing written", err=True)
        sys.exit(130)
    doc = {"family": family, "checkpoint": checkpoint, "rows": rows}
    if out_file:
        try:
            write_test(out_file, doc)
        except OSError as e:
            raise click.ClickException(os_error(e))
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    click.echo(f"cost limit {rows[0]['cost_limit']:g} on the {MEASURE_NAMES[rows[0]['cost_measure']]}; "
               f"{rows[0]['eval_episodes']} evaluation episode{'s' if rows[0]['eval_episodes'] != 1 else ''} per task "
               "and step; authors': their logged "
               "measure (the batch discounted from its first step, never reset), for comparison only")
    click.echo(f"{'step':>4s} {'return':>9s} {'+-se':>7s} {'episode':>8s} {'+-se':>7s} {'discntd':>8s} {'+-se':>7s} "
               f"{'authors':>8s} {'cost/step':>9s}")
    for r in rows:
        click.echo(f"{r['step']:4d} {r['return']:9.3f} {r['return_se']:7.3f} {r['cost_episode']:8.2f} "
                   f"{r['cost_episode_se']:7.2f} {r['cost_discounted']:8.2f} {r['cost_discounted_se']:7.2f} "
                   f"{r['cost_authors']:8.2f} {r['cost_rate']:9.4f}")


@main.command()
@click.argument("run_dirs", nargs=-1, type=click.Path(exists=True))
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="Image file (.png, .pdf, .svg).")
@click.option("--x", "x_axis", type=click.Choice(["env-steps", "iteration"]), default="env-steps", show_default=True,
              help="x axis of the training curves.")
@click.option("--smooth", type=Number(SMOOTH), default=1, show_default=True,
              help="Moving average over N points of each run's training curves (1: none); on the env-steps "
                   "axis a point is one meta-iteration's env steps (CPO/TRPO iterations averaged to it).")
@click.option("--adapted/--no-adapted", default=True, show_default=True,
              help="Also draw the meta algorithms' curves after the local steps (dashed).")
@click.option("--test", "test_name", default="test.json", show_default=True,
              help="Each run's meta-testing file (the output of `cli.py test --json`), e.g. test-4x.json.")
def plot(run_dirs, out, x_axis, smooth, adapted, test_name):
    """Plot training and meta-testing curves of RUN_DIRS (as the paper's Fig. 5).

    RUN_DIRS may be a glob such as results/FAMILY/*: files among them (logs)
    are skipped with a note.

    Runs are pooled when their settings (config.json) agree apart from the seed, else drawn
    apart and labelled by what differs; mean and standard error over seeds, runs of different
    lengths on the x range they all cover (see metacpo_ref/run/plots.py); meta-testing from each run's test.json (or --test) when present."""
    from metacpo_ref.run.plots import PlotError, group, plot as draw

    try:
        runs, warnings = draw(run_dirs, out, x_axis, smooth, adapted, test_name=test_name)
    except PlotError as e:
        raise click.ClickException(str(e))
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    parts = [f"{algo} {len(rs)} runs ({sum(r.test is not None for r in rs)} meta-tested)"
             for algo, rs in group(runs).items()]
    click.echo(f"{runs[0].family}: {', '.join(parts)}; wrote {out}")


@main.command()
@click.argument("family", type=FAMILY)
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Table 1 range the tasks are drawn from.")
@config_option("tasks", dest="n_tasks", default=3, help="Tasks sampled.")
@config_option("episodes", default=1, show_default=True, help="Episodes per task.")
@config_option("seed", help="Seed of the tasks and episodes.")
def rollout(family, split, n_tasks, episodes, seed):
    """Run a uniformly random policy on sampled tasks of FAMILY and print return, cost and speed."""
    import time

    import numpy as np

    from metacpo_ref.envs import make_env, sample_tasks
    from metacpo_ref.envs.rollouts import batch_seed, collect, random_act

    tasks = sample_tasks(family, n_tasks, split, seed=seed)
    click.echo(f"{'task':50s} {'return':>8s} {'cost':>8s} {'steps/s':>8s}")
    with make_env(family, tasks[0]) as env:
        for i, task in enumerate(tasks):
            env.set_task(task)
            t0 = time.perf_counter()
            b = collect(env, random_act, episodes, seed=batch_seed(seed, 0, i, 0))
            rate = len(b) / (time.perf_counter() - t0)
            params = ", ".join(f"{k}={v:.3g}" for k, v in task.params.items())
            click.echo(f"{params:50s} {np.mean(b.ep_return):8.2f} {np.mean(b.ep_cost):8.1f} {rate:8.0f}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def gradcheck(as_json):
    """Check every derivative against central finite differences."""
    from metacpo_ref.checks.gradcheck import run_checks

    checks = run_checks()
    if as_json:
        click.echo(json.dumps({"checks": checks}, indent=1))
    else:
        click.echo(f"{'name':40s} {'max_rel_error':>14s} {'tol':>9s}  passed")
        for c in checks:
            click.echo(f"{c['name']:40s} {c['max_rel_error']:14.3e} {c['tol']:9.1e}  {c['passed']}")
            if c.get("detail"):
                click.echo(f"    {c['detail']}")
    if not all(c["passed"] for c in checks):
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--quick", is_flag=True,
              help=f"Fewer repeats: {BENCH_DURATION['quick']} instead of {BENCH_DURATION['full']}, noisier.")
def bench(as_json, quick):
    """Speed figures, each a ratio of two timings taken in this run (metacpo_ref/checks/bench.py)."""
    from metacpo_ref.checks.bench import run_bench

    figures = run_bench(cvxpy_cpo_oracle, quick=quick)
    if as_json:
        click.echo(json.dumps(figures, indent=1))
    else:
        for name, v in _flat(figures):
            click.echo(f"{name:64s} {v:12.3f}")


def _flat(figures, prefix=""):
    """``(name, number)`` of the bench's nested figures, the keys joined by spaces."""
    for key, value in figures.items():
        name = f"{prefix} {key}".strip()
        yield from _flat(value, name) if isinstance(value, dict) else [(name, value)]


def cvxpy_cpo_oracle(g, a, b, delta, xbar):
    """cvxpy + diffcp on the CPO problem (what cvxpylayers runs): a function that solves
    ``max g.x s.t. 0.5 |x|^2 <= delta, b + a.x <= 0`` and back-propagates ``xbar``.
    Only the bench command imports cvxpy (a test oracle, never a runtime dependency)."""
    import cvxpy as cp

    n = len(g)
    x = cp.Variable(n)
    gp, ap, bp, dp = cp.Parameter(n), cp.Parameter(n), cp.Parameter(), cp.Parameter(nonneg=True)
    problem = cp.Problem(cp.Maximize(gp @ x), [0.5 * cp.sum_squares(x) <= dp, bp + ap @ x <= 0])
    gp.value, ap.value, bp.value, dp.value = g, a, b, delta

    def solve_and_backward():
        problem.solve(requires_grad=True)
        x.gradient = xbar
        problem.backward()

    return solve_and_backward


@main.command("export-fixtures")
@click.argument("directory", type=click.Path(file_okay=False))
def export_fixtures(directory):
    """Write golden fixtures for ports (one .npz per numerical block, manifest.json) to DIRECTORY."""
    from metacpo_ref.checks.fixtures import export

    try:
        manifest = export(directory)
    except OSError as e:
        raise click.ClickException(os_error(e))
    click.echo(f"{len(manifest['blocks'])} blocks, metacpo_ref {manifest['version']}, written to {directory} "
               f"(see docs/porting.md)")


@main.command("verify-fixtures")
@click.argument("directory", type=click.Path(file_okay=False))
def verify_fixtures(directory):
    """Recompute every fixture block in DIRECTORY from its inputs; check outputs (within the reference's
    tolerances) and hashes."""
    from metacpo_ref import __version__
    from metacpo_ref.checks.fixture_files import manifest_version
    from metacpo_ref.checks.fixtures import verify

    try:
        rows = verify(directory)
    except OSError as e:
        raise click.ClickException(os_error(e))
    written = manifest_version(directory)
    if written is not None and written != __version__:
        click.echo(f"note: fixtures written by metacpo_ref {written}, checking with {__version__}")
    click.echo(f"tolerances: the reference's own (metacpo_ref.checks.fixtures, as in the committed tests/fixtures), "
               f"not those of {directory}/manifest.json")
    click.echo(f"{'block':30s} {'status':7s} {'worst output':14s} {'max|diff|':>10s} {'bound':>9s}  detail")
    for r in rows:
        click.echo(f"{r['block']:30s} {r['status']:7s} {r['worst']:14s} {r['max_abs_diff']:10.2e} "
                   f"{r['bound']:9.1e}  {r['detail']}")
    bad = [r for r in rows if r["status"] != "ok"]
    click.echo(f"{len(rows) - len(bad)} of {len(rows)} blocks ok")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
