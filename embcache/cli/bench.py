"""``embcache bench``: scripts/bench.py, the side-by-side benchmark (from a source checkout)."""

from __future__ import annotations

import os
import sys

import click

from .common import CliError

__all__ = ["bench"]


@click.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                          "help_option_names": []})
@click.argument("bench_args", nargs=-1, type=click.UNPROCESSED)
def bench(bench_args: tuple[str, ...]) -> None:
    """Run the side-by-side benchmark against the peers (scripts/bench.py; its options follow, see --help)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = os.path.join(root, "scripts", "bench.py")
    if not os.path.exists(script):
        raise CliError(f"{script} not found: `embcache bench` runs from a source checkout (pip install -e .)")
    os.execv(sys.executable, [sys.executable, script, *bench_args])
