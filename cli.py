"""Command line of metacpo_ref: parse, call, print. See README.md."""
import json
import os
import sys

import click

from metacpo_ref.config import ALGOS, FAMILIES, OUTER_METRICS, Config


@click.group()
def main():
    """metacpo_ref: a reference implementation of Meta-CPO (arXiv 2312.10230)."""


FAMILY = click.Choice(list(FAMILIES))


ALGO = click.Choice(list(ALGOS))


@main.command()
@click.argument("family", type=FAMILY)
@click.option("--algo", type=ALGO, default="meta-cpo", show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=Config.iterations, show_default=True)
@click.option("--tasks", type=click.IntRange(min=1), default=Config.tasks, show_default=True,
              help="Tasks sampled per iteration (M).")
@click.option("--local-steps", type=click.IntRange(min=1), default=Config.local_steps, show_default=True,
              help="Local CPO steps per task (K).")
@click.option("--episodes", type=click.IntRange(min=1), default=None,
              help="Episodes per batch [default: 6 for the circle families, 3 for point-button].")
@click.option("--cost-limit", type=float, default=None,
              help="Cost limit per episode [default: the family's training limit].")
@click.option("--outer-metric", type=click.Choice(list(OUTER_METRICS)), default="identity", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--task", "task_text", default=None, metavar="KEY=VALUE[,KEY=VALUE...]",
              help="Train on this one task of FAMILY instead of sampling tasks (parameters not named: the "
                   "middle of their train range), e.g. point-circle --task radius=1.5,wall_factor=0.75.")
@click.option("--recover-above-limit/--exact-cpo-above-limit", default=Config.recover_above_limit,
              show_default=True,
              help="Above the cost limit take CPO's recovery step (pure cost descent; holds the limit, "
                   "docs/results.md), or eq. 9's mixed step aimed exactly at the limit (the old rule).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory [default: runs/FAMILY-ALGO-seedS].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default="cores",
              help="Processes (or Ray actors) for the per-task rollouts; results do not depend on it.")
@click.option("--backend", type=click.Choice(["process", "ray"]), default="process", show_default=True,
              help="ray: run the per-task work on a Ray cluster (pip install '.[ray]').")
@click.option("--ray-address", default=None, help="An existing Ray cluster [default: start a local one].")
def train(family, algo, iterations, tasks, local_steps, episodes, cost_limit, outer_metric, seed, task_text,
          recover_above_limit, out_dir, resume, workers, backend, ray_address):
    """Train ALGO on FAMILY; writes config.json, metrics.jsonl and checkpoint.npz."""
    from metacpo_ref.training import CheckpointError, prepare_run, run_iterations
    from metacpo_ref.workers import WorkerError

    from metacpo_ref.envs import parse_task

    try:
        task = None if task_text is None else parse_task(family, task_text).params
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--task")
    config = Config(family=family, algo=algo, iterations=iterations, tasks=tasks, local_steps=local_steps,
                    episodes=episodes, cost_limit=cost_limit, outer_metric=outer_metric, seed=seed, task=task,
                    recover_above_limit=recover_above_limit)
    out_dir = out_dir or f"runs/{family}-{algo}-seed{seed}"
    try:
        state = prepare_run(config, out_dir, resume)
    except CheckpointError as e:
        raise click.ClickException(str(e))
    click.echo(f"{algo} on {family}: iterations {state.iteration}..{iterations - 1}, "
               f"{config.tasks} tasks x {config.n_episodes} episodes per batch, run directory {out_dir}")
    last = {}

    def show(row):
        if not row:
            return ""
        return f"it {row['iteration']} return {row['return']:.2f} cost {row['cost']:.1f}"

    try:
        with click.progressbar(run_iterations(state, out_dir, workers, backend, ray_address), length=iterations - state.iteration,
                               label="training", item_show_func=show, show_eta=True) as bar:
            for row in bar:
                last = row
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; the checkpoint in {out_dir} is intact: continue with "
                   f"--resume --out {out_dir}", err=True)
        sys.exit(130)
    except WorkerError as e:
        raise click.ClickException(f"{e}; the last checkpoint in {out_dir} is intact (--resume continues)")
    if last:
        click.echo(f"done: iteration {last['iteration']}, return {last['return']:.3f}, "
                   f"cost {last['cost']:.2f} (limit {last['cost_limit']:g}); {out_dir}/metrics.jsonl")


@main.command()
@click.argument("family", type=FAMILY)
@click.option("--checkpoint", "checkpoint", type=click.Path(), required=True)
@click.option("--adapt-steps", type=click.IntRange(min=0), default=Config.local_steps, show_default=True)
@click.option("--tasks", type=click.IntRange(min=1), default=5, show_default=True, help="Unseen test tasks.")
@click.option("--episodes", type=click.IntRange(min=1), default=None,
              help="Episodes per batch [default: the run's].")
@click.option("--cost-limit", type=float, default=None, help="[default: the family's test limit]")
@click.option("--deterministic", is_flag=True, help="Report the mean action's episodes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default="cores")
@click.option("--backend", type=click.Choice(["process", "ray"]), default="process", show_default=True)
@click.option("--ray-address", default=None)
@click.option("--json", "as_json", is_flag=True)
def test(family, checkpoint, adapt_steps, tasks, episodes, cost_limit, deterministic, seed, workers, backend,
         ray_address, as_json):
    """Meta-test a checkpoint: adapt on unseen tasks of FAMILY, report each step."""
    from metacpo_ref.training import CheckpointError, meta_test

    try:
        rows = meta_test(checkpoint, family, tasks, adapt_steps, episodes, cost_limit, deterministic, seed, workers,
                         backend, ray_address)
    except CheckpointError as e:
        raise click.ClickException(str(e))
    if as_json:
        click.echo(json.dumps({"family": family, "checkpoint": checkpoint, "rows": rows}, indent=1))
        return
    click.echo(f"{'step':>4s} {'return':>9s} {'+-se':>7s} {'cost':>8s} {'+-se':>7s} {'cost/step':>9s}  (limit {rows[0]['cost_limit']:g})")
    for r in rows:
        click.echo(f"{r['step']:4d} {r['return']:9.3f} {r['return_se']:7.3f} {r['cost']:8.2f} "
                   f"{r['cost_se']:7.2f} {r['cost_rate']:9.4f}")


@main.command()
@click.argument("run_dirs", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="Image file (.png, .pdf, .svg).")
@click.option("--x", "x_axis", type=click.Choice(["env-steps", "iteration"]), default="env-steps", show_default=True)
@click.option("--smooth", type=click.IntRange(min=1), default=1, show_default=True,
              help="Moving average over N iterations of each run's training curves (1: none).")
@click.option("--adapted/--no-adapted", default=True, show_default=True,
              help="Also draw the meta algorithms' curves after the local steps (dashed).")
def plot(run_dirs, out, x_axis, smooth, adapted):
    """Plot training and meta-testing curves of RUN_DIRS (as the paper's Fig. 5).

    Runs are grouped by algorithm (config.json); mean and standard error over
    seeds, runs of different lengths on the x range they all cover (see
    metacpo_ref/plots.py); meta-testing from each run's test.json when present."""
    from metacpo_ref.plots import PlotError, group, plot as draw

    try:
        runs, warnings = draw(run_dirs, out, x_axis, smooth, adapted)
    except PlotError as e:
        raise click.ClickException(str(e))
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    parts = [f"{algo} {len(rs)} runs ({sum(r.test is not None for r in rs)} meta-tested)"
             for algo, rs in group(runs).items()]
    click.echo(f"{runs[0].family}: {', '.join(parts)}; wrote {out}")


@main.command()
@click.argument("family", type=FAMILY)
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--tasks", "n_tasks", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--episodes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def rollout(family, split, n_tasks, episodes, seed):
    """Run a uniformly random policy on sampled tasks of FAMILY and print return, cost and speed."""
    import time

    import numpy as np

    from metacpo_ref.envs import make_env, sample_tasks
    from metacpo_ref.rollouts import batch_seed, collect, random_act

    tasks = sample_tasks(family, n_tasks, split, seed=seed)
    env = make_env(family, tasks[0])
    click.echo(f"{'task':50s} {'return':>8s} {'cost':>8s} {'steps/s':>8s}")
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
    from metacpo_ref.gradcheck import run_checks

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
@click.option("--quick", is_flag=True, help="Fewer repeats: seconds instead of about half a minute.")
def bench(as_json, quick):
    """Speed figures, each a ratio of two timings taken in this run (metacpo_ref/bench.py)."""
    from metacpo_ref.bench import run_bench

    figures = run_bench(cvxpy_cpo_oracle, quick=quick)
    if as_json:
        click.echo(json.dumps(figures, indent=1))
    else:
        for name, value in figures.items():
            for sub, v in (value.items() if isinstance(value, dict) else [("", value)]):
                click.echo(f"{(name + ' ' + sub).strip():48s} {v:12.3f}")


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
    from metacpo_ref.fixtures import export

    manifest = export(directory)
    click.echo(f"{len(manifest['blocks'])} blocks, metacpo_ref {manifest['version']}, written to {directory} "
               f"(see docs/porting.md)")


@main.command("verify-fixtures")
@click.argument("directory", type=click.Path(file_okay=False))
def verify_fixtures(directory):
    """Recompute every fixture block in DIRECTORY from its inputs; check outputs and hashes."""
    from metacpo_ref import __version__
    from metacpo_ref.fixtures import manifest_version, verify

    rows = verify(directory)
    written = manifest_version(directory)
    if written is not None and written != __version__:
        click.echo(f"note: fixtures written by metacpo_ref {written}, checking with {__version__}")
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
