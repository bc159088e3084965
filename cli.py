"""Command line of metacpo_ref: parse, call, print. See README.md."""
import json
import sys

import click


@click.group()
def main():
    """metacpo_ref: a reference implementation of Meta-CPO (arXiv 2312.10230)."""


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
    if not all(c["passed"] for c in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
