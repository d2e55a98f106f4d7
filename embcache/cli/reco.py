"""``embcache recommend`` (recommendation by liked and disliked examples) and ``embcache compare`` (how two
versions differ, before one is promoted)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import click
import numpy as np

if TYPE_CHECKING:
    from ..core.drift import DriftReport

from ..core.errors import InvalidInput
from .common import CliError, Settings, connection_options, format_table, hub, out, target_version

__all__ = ["recommend", "compare", "plot_overlap"]


def _where(text: str | None) -> dict[str, Any] | None:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--where is not valid JSON ({exc}); e.g. --where '{{\"genre\": \"drama\"}}'") from None


def _vectors(path: str) -> np.ndarray:
    """The example vectors of a .npy file (one per row), or a CliError that names the file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CliError(f"{path}: not a readable .npy file ({exc})") from None
    if arr.ndim not in (1, 2) or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CliError(f"{path}: example vectors must be a numeric array (rows, dim), got {arr.dtype} {arr.shape}")
    return arr.reshape(1, -1) if arr.ndim == 1 else arr


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
        pos += list(_vectors(positive_vectors))
    if negative_vectors:
        neg += list(_vectors(negative_vectors))
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


@click.command("compare")
@click.argument("space")
@click.argument("a")
@click.argument("b")
@connection_options
@click.option("--sample", type=int, default=1000, show_default=True, help="shared items whose neighbours are compared")
@click.option("-k", "k", type=int, default=10, show_default=True, help="neighbours per item")
@click.option("--seed", type=int, default=0, show_default=True, help="which items are sampled")
@click.option("--plot", "plot", default=None, metavar="FILE.png",
              help="also draw the overlap histogram (needs matplotlib: pip install 'embcache[plot]')")
def compare(settings: Settings, space: str, a: str, b: str, sample: int, k: int, seed: int, plot: str | None) -> None:
    """How version B differs from version A (names or aliases): items only in one, the neighbour overlap@k of a
    sample of shared items (mean, quantiles, histogram, the items that changed most), norm and centroid shift.
    drift = 1 - mean overlap; `embcache promote SPACE B --max-drift X` refuses a promotion above X."""
    if plot is not None:
        _require_matplotlib()
    with hub(settings) as h:
        report = h.space(space).compare(a, b, sample=sample, k=k, seed=seed)
    if plot is not None:
        plot_overlap(report, plot)
    out(settings, report.as_dict(), lambda _: str(report) + (f"\n  plot: {plot}" if plot else ""))


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CliError("--plot needs matplotlib, which is not installed: pip install 'embcache[plot]' "
                       "(or pip install matplotlib)") from None


def plot_overlap(report: "DriftReport", path: str) -> None:
    """Write a bar chart of ``report``'s overlap histogram to ``path`` (PNG); needs matplotlib (the ``plot``
    extra)."""
    _require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = np.arange(report.k + 1)
    ax.bar(xs, report.overlap_histogram, color="#4c72b0")
    ax.axvline(report.overlap_mean * report.k, color="#c44e52", linestyle="--",
               label=f"mean overlap {report.overlap_mean:.3f}")
    ax.set_xlabel(f"neighbours kept (of {report.k})")
    ax.set_ylabel("sampled items")
    ax.set_title(f"{report.space}: {report.a} -> {report.b}, {report.sampled} items")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
