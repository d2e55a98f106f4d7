"""``embcache recommend``: recommendation by liked and disliked examples."""

from __future__ import annotations

import json
import time
from typing import Any

import click
import numpy as np

from ..core.errors import InvalidInput
from .common import Settings, connection_options, format_table, hub, out, target_version

__all__ = ["recommend"]


def _where(text: str | None) -> dict[str, Any] | None:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--where is not valid JSON ({exc}); e.g. --where '{{\"genre\": \"drama\"}}'") from None


@click.command("recommend")
@click.argument("space")
@connection_options
@click.option("--version", default=None, help="version or alias (default: live, else the newest)")
@click.option("--positive", "positive", multiple=True, metavar="ID", help="a liked stored id (repeatable)")
@click.option("--negative", "negative", multiple=True, metavar="ID", help="a disliked stored id (repeatable)")
@click.option("--positive-vectors", default=None, metavar="FILE.npy", help="liked examples as vectors (one per row)")
@click.option("--negative-vectors", default=None, metavar="FILE.npy", help="disliked examples as vectors")
@click.option("-n", "n", type=int, default=10, show_default=True, help="results")
@click.option("--strategy", default="average", show_default=True, type=click.Choice(["average", "best_score"]),
              help="average: one query by 2 mean(P) - mean(N); best_score: each candidate by its best positive "
                   "vs best negative similarity")
@click.option("--where", default=None, help='metadata filter as JSON, e.g. \'{"genres": "Comedy"}\'')
@click.option("--partition", "partitions", multiple=True, help="only this partition (repeatable)")
@click.option("--exclude", multiple=True, metavar="ID", help="an id that must not come back (repeatable)")
@click.option("--include-examples", is_flag=True, help="let the example ids come back too")
@click.option("--consistency", default="session", show_default=True,
              type=click.Choice(["eventual", "session", "strong"]))
def recommend(settings: Settings, space: str, version: str | None, positive: tuple[str, ...],
              negative: tuple[str, ...], positive_vectors: str | None, negative_vectors: str | None, n: int,
              strategy: str, where: str | None, partitions: tuple[str, ...], exclude: tuple[str, ...],
              include_examples: bool, consistency: str) -> None:
    """Items like the --positive examples and unlike the --negative ones (stored ids or .npy vectors). Scores are
    bigger-is-nearer: the space's similarity to the average query for average, the best_score (in (-1, 1),
    positive when the item is nearer to a liked example than to every disliked one) for best_score."""
    pos: list[Any] = list(positive)
    neg: list[Any] = list(negative)
    if positive_vectors:
        pos += list(np.load(positive_vectors))
    if negative_vectors:
        neg += list(np.load(negative_vectors))
    if not pos:
        raise click.UsageError("give at least one liked example: --positive ID or --positive-vectors FILE.npy")
    flt = _where(where)
    with hub(settings) as h:
        v = target_version(h.space(space), version)
        t0 = time.perf_counter()
        res = v.recommend(pos, neg or None, n, strategy=strategy, where=flt, partitions=list(partitions) or None,
                          exclude=list(exclude) or None, exclude_examples=not include_examples,
                          consistency=consistency, include=("distances", "metadatas"))
        ms = (time.perf_counter() - t0) * 1000
    rows = [{"id": i, "score": float(s), "metadata": m}
            for i, s, m in zip(res.ids[0], res.scores[0], (res.metadatas or [[]])[0])]

    def table(rows: list[dict[str, Any]]) -> str:
        body = format_table([{"id": r["id"], "score": r["score"],
                              "metadata": json.dumps(r["metadata"])[:80] if r["metadata"] else ""} for r in rows])
        return f"{body}\n({ms:.2f} ms, {strategy}, {consistency}, version {v.name})"

    out(settings, rows, table)
