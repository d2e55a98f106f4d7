"""``embcache build | stats | query``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

import click

from ..core.errors import InvalidInput
from .common import Settings, connection_options, format_table, hub, out, progress, target_version
from .sources import load_query_vectors

__all__ = ["build", "query", "stats"]

_VERSION_HELP = "version or alias (default: live, else the newest)"


@click.command("build")
@click.argument("space")
@click.argument("version", required=False, default=None)
@connection_options
@click.option("--timeout", type=float, default=600.0, show_default=True, help="seconds to wait for the snapshots")
def build(settings: Settings, space: str, version: str | None, timeout: float) -> None:
    """Ask the workers for snapshots and wait for them, with progress. VERSION: a version or alias (default:
    live, else the newest)."""
    with hub(settings) as h:
        v = target_version(h.space(space), version)
        t0 = time.perf_counter()
        bar = progress("build", unit="partition")
        try:
            v.build(timeout=timeout, on_progress=bar)
        finally:
            bar.close()
        data = {"version": f"{space}/{v.name}", "seconds": round(time.perf_counter() - t0, 3),
                "partitions": len(v.partitions())}
    out(settings, data, lambda d: f"built {d['version']}: {d['partitions']} partition(s) in {d['seconds']}s")


@click.command("stats")
@click.argument("space")
@click.argument("version", required=False, default=None)
@connection_options
def stats(settings: Settings, space: str, version: str | None) -> None:
    """Per-partition counts, snapshot generation/age, tombstones, index lag, last build time."""
    with hub(settings) as h:
        v = target_version(h.space(space), version)
        rows = [asdict(s) for s in v.stats()]
    out(settings, rows, lambda r: f"{space}/{v.name}:\n{format_table(r)}")


@click.command("query")
@click.argument("space")
@connection_options
@click.option("--version", default=None, help=_VERSION_HELP)
@click.option("--id", "ids", multiple=True, metavar="ID", help="a stored id (repeatable)")
@click.option("--vectors", default=None, metavar="FILE.npy", help=".npy file of query vectors")
@click.option("-n", "n", type=int, default=10, show_default=True, help="results per query")
@click.option("--where", default=None, help='metadata filter as JSON, e.g. \'{"genres": "Comedy"}\'')
@click.option("--partition", "partitions", multiple=True, help="only this partition (repeatable)")
@click.option("--consistency", default="session", show_default=True,
              type=click.Choice(["eventual", "session", "strong"]))
@click.option("--exclude", "exclude", multiple=True, metavar="ID", help="an id that must not come back (repeatable)")
@click.option("--explain", is_flag=True, help="also say how the query was answered (structures, exact or graph, "
              "candidates examined)")
def query(settings: Settings, space: str, version: str | None, ids: tuple[str, ...], vectors: str | None, n: int,
          where: str | None, partitions: tuple[str, ...], consistency: str, exclude: tuple[str, ...],
          explain: bool) -> None:
    """Nearest neighbours of stored ids (--id) or of vectors in a .npy file (--vectors). Distances are the
    space's: squared L2 for l2, 1 - inner product for ip, 1 - cosine similarity for cosine (smaller is nearer).
    --explain runs Version.explain on the same query (for --id: explain(ids=...), which names the neighbour
    lists when they answer)."""
    if bool(ids) == bool(vectors):
        raise click.UsageError("give either --id ID [--id ID ...] or --vectors FILE.npy")
    try:
        flt = json.loads(where) if where else None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--where is not valid JSON ({exc}); e.g. --where '{{\"genre\": \"drama\"}}'") from None
    with hub(settings) as h:
        v = target_version(h.space(space), version)
        kw: dict[str, Any] = dict(n_results=n, where=flt, consistency=consistency, partitions=list(partitions) or None,
                                  include=("distances", "metadatas"), exclude=list(exclude) or None)
        t0 = time.perf_counter()
        if ids:
            res = v.query_by_id(list(ids), **kw)
            labels = list(ids)
        else:
            assert vectors is not None  # one of the two, checked above
            qv = load_query_vectors(vectors)
            res = v.query(qv, **kw)
            labels = [f"row {i}" for i in range(len(res.ids))]
        ms = (time.perf_counter() - t0) * 1000
        plan = None
        if explain:
            kw.pop("include")
            plan = (v.explain(ids=list(ids), **kw) if ids else v.explain(qv, **kw)).as_dict()
    rows = [{"query": lab, "results": [{"id": i, "distance": float(d), "metadata": m}
                                       for i, d, m in zip(got, dist, metas)]}
            for lab, got, dist, metas in zip(labels, res.ids, res.distances, res.metadatas or [])]

    def table(rows: list[dict[str, Any]]) -> str:
        parts = []
        for r in rows:
            parts.append(f"{r['query']}:")
            parts.append(format_table([{"id": x["id"], "distance": x["distance"],
                                        "metadata": json.dumps(x["metadata"])[:80] if x["metadata"] else ""}
                                       for x in r["results"]]))
        parts.append(f"({ms:.2f} ms, {consistency}, version {v.name})")
        if plan is not None:
            parts.append(f"plan: {plan['plan']}")
            parts += [f"  {json.dumps(step)}" for step in plan["steps"]]
        return "\n".join(parts)

    out(settings, rows if plan is None else {"results": rows, "explain": plan},
        table if plan is None else lambda d: table(d["results"]))
