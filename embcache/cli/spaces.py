"""``embcache spaces | create-space | describe | drop-space``."""

from __future__ import annotations

from typing import Any

import click

from .common import CliError, Settings, connection_options, format_table, hub, out

__all__ = ["create_space", "describe", "drop_space", "spaces"]


@click.command("spaces")
@connection_options
def spaces(settings: Settings) -> None:
    """List spaces."""
    with hub(settings) as h:
        rows = [h.space(n).record.model_dump() for n in h.spaces()]
    out(settings, rows, lambda r: format_table(r, ["name", "dim", "metric", "dtype", "M", "ef_construction", "ef",
                                                          "neighbours"]))


@click.command("create-space")
@click.argument("name")
@connection_options
@click.option("--dim", type=int, required=True, help="vector length")
@click.option("--metric", default="cosine", show_default=True, type=click.Choice(["cosine", "l2", "ip"]))
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16"]))
@click.option("--M", "m", type=int, default=16, show_default=True, help="HNSW links per node")
@click.option("--ef-construction", type=int, default=200, show_default=True)
@click.option("--ef", type=int, default=64, show_default=True, help="default query ef")
@click.option("--neighbours", type=int, default=0, show_default=True,
              help="precomputed neighbours per item (0 = off, at most 100): query_by_id answers from these lists")
@click.option("--exist-ok", is_flag=True, help="a space of that name with the same parameters is fine (re-runs)")
def create_space(settings: Settings, name: str, dim: int, metric: str, dtype: str, m: int, ef_construction: int,
                 ef: int, neighbours: int, exist_ok: bool) -> None:
    """Create a space."""
    with hub(settings) as h:
        sp = h.create_space(name, dim, metric, dtype=dtype, M=m, ef_construction=ef_construction, ef=ef,
                            neighbours=neighbours, exist_ok=exist_ok)
        verb = "space" if exist_ok else "created space"
        out(settings, sp.record.model_dump(), lambda r: f"{verb} {r['name']} (dim={r['dim']}, {r['metric']})")


@click.command("describe")
@click.argument("space")
@connection_options
def describe(settings: Settings, space: str) -> None:
    """Show a space: parameters, versions, aliases."""
    with hub(settings) as h:
        sp = h.space(space)
        data = {**sp.record.model_dump(), "aliases": sp.aliases(),
                "versions": [{"name": v.name, "state": v.state, "count": v.count(), "partitions": len(v.partitions())}
                             for v in sp.versions()]}

    def table(d: dict[str, Any]) -> str:
        head = (f"space {d['name']}: dim={d['dim']} metric={d['metric']} dtype={d['dtype']} M={d['M']} "
                f"ef_construction={d['ef_construction']} ef={d['ef']} neighbours={d.get('neighbours', 0)}")
        aliases = ", ".join(f"{a} -> {v}" for a, v in d["aliases"].items()) or "(none)"
        return f"{head}\naliases: {aliases}\n{format_table(d['versions'])}"

    out(settings, data, table)


@click.command("drop-space")
@click.argument("space")
@connection_options
@click.option("--yes", is_flag=True, help="confirm: every version, item and snapshot of the space is deleted")
def drop_space(settings: Settings, space: str, yes: bool) -> None:
    """Delete a space and everything in it."""
    if not yes:
        raise CliError("drop-space deletes all data of the space: add --yes to confirm")
    with hub(settings) as h:
        h.drop_space(space)
    out(settings, {"dropped": space}, lambda d: f"dropped space {d['dropped']}")
