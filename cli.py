"""Command line of metacpo_ref: parse, call, print. See README.md."""
import json
import sys

import click

from metacpo_ref.config import FAMILIES


@click.group()
def main():
    """metacpo_ref: a reference implementation of Meta-CPO (arXiv 2312.10230)."""


FAMILY = click.Choice(list(FAMILIES))


@main.command()
@click.argument("family", type=FAMILY)
def train(family):
    """Meta-train a policy on FAMILY (not implemented yet: see README)."""
    click.echo(f"train {family}: not implemented yet. The task families, rollouts, the CPO "
               "step and the policy are in place; Algorithm 1 lands with the training issue.",
               err=True)
    sys.exit(2)


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
    from metacpo_ref.rollouts import batch_seed, collect

    def act(obs, rng):
        return rng.uniform(-1.0, 1.0, 2), 0.0

    tasks = sample_tasks(family, n_tasks, split, seed=seed)
    env = make_env(family, tasks[0])
    click.echo(f"{'task':50s} {'return':>8s} {'cost':>8s} {'steps/s':>8s}")
    for i, task in enumerate(tasks):
        env.set_task(task)
        t0 = time.perf_counter()
        b = collect(env, act, episodes, seed=batch_seed(seed, 0, i, 0))
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


if __name__ == "__main__":
    main()
