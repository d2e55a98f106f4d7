"""What a client holds of one partition, and how it answers a query from it: pure, no I/O.

A partition view is a *base* loaded at a change-log position (an :class:`ExactBase` of all vectors, or a
worker-built :class:`~embcache.snapshot.HnswBase`) plus an *overlay* of changes after that position (this hub's
own writes at ``session``, the Redis log tail at ``strong``). Bases are immutable once built: a refresh builds a
new one and swaps the reference, so a query never sees one half-updated.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .engine import HIDE_BY_OVERFETCH, FieldIndex, Filter, MaskCache, Step, search_base
from .filters import Predicate
from .search import EMPTY, Ranked, exact_search, merge_ranked

__all__ = ["Base", "ExactBase", "Overlay", "OverlayItem", "search_view", "pos_key", "predicate_mask"]


@functools.lru_cache(maxsize=1 << 16)  # positions repeat (every query compares its bases' positions)
def pos_key(pos: str | bytes | None) -> tuple[int, int]:
    """A change-log position (Redis stream id ``ms-seq``) as a comparable tuple."""
    if not pos:
        return (0, 0)
    if isinstance(pos, bytes):
        pos = pos.decode()
    ms, _, seq = pos.partition("-")
    return (int(ms), int(seq or 0))


@dataclass(frozen=True)
class OverlayItem:
    """A change not in the base: the current vector (None when deleted) and metadata."""

    pos: str
    vector: np.ndarray | None
    metadata: dict[str, Any] | None


Overlay = dict[str, OverlayItem]


class Base(Protocol):
    """What every base offers the query planner."""

    position: str
    metric: str

    @property
    def count(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    def search(
        self, queries: np.ndarray, k: int, predicate: Predicate | None, exclude: set[str], ef: int | None
    ) -> list[Ranked]: ...

    def metadata(self, id_: str) -> dict[str, Any] | None: ...

    def vector(self, id_: str) -> np.ndarray | None: ...

    def __contains__(self, id_: str) -> bool: ...


def predicate_mask(metas: Sequence[dict[str, Any] | None], predicate: Predicate) -> np.ndarray:
    """Boolean mask of the rows whose metadata passes ``predicate``."""
    return np.fromiter((predicate(m) for m in metas), dtype=bool, count=len(metas))


class ExactBase:
    """All vectors of a partition in one matrix, searched by brute force (a partition with no snapshot yet)."""

    has_graph = False

    def __init__(
        self, position: str, ids: list[str], matrix: np.ndarray, metas: list[dict[str, Any] | None], metric: str
    ) -> None:
        self.position = position
        self.ids = ids
        self.matrix = matrix
        self.metas = metas
        self.metric = metric
        self.row = {id_: i for i, id_ in enumerate(ids)}
        self.slot = self.row
        self.id_of = np.empty(len(ids), dtype=object)
        self.id_of[:] = ids
        self.live = np.ones(len(ids), dtype=bool)
        self.live_slots = np.arange(len(ids))
        self.masks = MaskCache()
        self._fields: FieldIndex | None = None

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return self.matrix.nbytes + 200 * len(self.ids) + self.masks.nbytes

    @property
    def fields(self) -> FieldIndex:
        if self._fields is None:
            self._fields = FieldIndex(self.metas, self.live)
        return self._fields

    def describe(self) -> str:
        return f"exact copy ({self.count} items, no snapshot yet)"

    def __contains__(self, id_: str) -> bool:
        return id_ in self.row

    def metadata(self, id_: str) -> dict[str, Any] | None:
        return self.metas[self.row[id_]]

    def vector(self, id_: str) -> np.ndarray | None:
        i = self.row.get(id_)
        return None if i is None else self.matrix[i]

    def gather(self, slots: np.ndarray) -> np.ndarray:
        return self.matrix if len(slots) == len(self.ids) else self.matrix[slots]

    def knn(self, queries: np.ndarray, k: int, ef: int | None, flt: Any = None) -> Any:
        raise RuntimeError("an exact base has no graph")

    def search(
        self, queries: np.ndarray, k: int, predicate: Any, exclude: set[str], ef: int | None = None
    ) -> list[Ranked]:
        """The partition's answer (``predicate`` is a compiled :class:`~embcache.core.engine.Filter` or None)."""
        return search_base(self, queries, k, ef, where=predicate, hidden=exclude)

    def with_changes(self, position: str, overlay: Overlay) -> "ExactBase":
        """A new base with ``overlay`` applied (the old one is left untouched for queries still reading it)."""
        keep = [i for i, id_ in enumerate(self.ids) if id_ not in overlay]
        added = [(id_, it) for id_, it in overlay.items() if it.vector is not None]
        ids = [self.ids[i] for i in keep] + [id_ for id_, _ in added]
        parts = [self.matrix[keep]]
        if added:
            parts.append(np.stack([it.vector for _, it in added]).astype(np.float32))  # type: ignore[misc]
        matrix = np.concatenate(parts) if len(parts) > 1 else parts[0]
        metas = [self.metas[i] for i in keep] + [it.metadata for _, it in added]
        return ExactBase(position, ids, np.ascontiguousarray(matrix), metas, self.metric)


def overlay_from_rows(
    pos: str, ids: Sequence[str], vectors: Sequence[np.ndarray | None], metas: Sequence[bytes | str | None]
) -> Overlay:
    return {
        id_: OverlayItem(pos, vec, None if vec is None or m is None else json.loads(m))
        for id_, vec, m in zip(ids, vectors, metas)
    }


def search_view(
    base: Base | None,
    overlay: Overlay,
    queries: np.ndarray,
    k: int,
    where: Filter | None,
    ef: int | None,
    metric: str,
    *,
    exclude: frozenset[str] = frozenset(),
    restrict: Sequence[str] | None = None,
    step: Step | None = None,
    tails: Sequence[Any] = (),
) -> list[Ranked]:
    """One base's answer with its overlays: the base without what the overlays replaced or deleted (and without
    ``exclude``), plus the overlays' live items, merged by distance. ``restrict`` limits a version graph to some
    partitions (the overlay is the union of theirs). ``tails`` are followed change logs
    (:class:`~embcache.core.tail.TailView`, one per partition, older than ``overlay``): ``overlay`` (this hub's
    writes, a strong tail) wins over them, and they over the base."""
    hidden = exclude | overlay.keys() if overlay else exclude
    results = None
    if base is not None and base.count:
        gone, visible = _hidden_by(tails, base)
        results = search_base(base, queries, k, ef, where=where, restrict=restrict, hidden=hidden, step=step,
                              gone_slots=gone, visible=visible)
    parts = [results] if results is not None else []
    for t in tails:
        found = t.search(queries, k, where, hidden)
        parts.append([_closer(f, r, k) for f, r in zip(found, results)] if results is not None else found)
    live = [(id_, it) for id_, it in overlay.items() if it.vector is not None and id_ not in exclude
            and (where is None or where.predicate(it.metadata))]
    if live:
        ids = [id_ for id_, _ in live]
        mat = np.stack([it.vector for _, it in live]).astype(np.float32)  # type: ignore[misc]
        rows, dists = exact_search(mat, queries, k, metric)
        parts.append([([ids[j] for j in r], d) for r, d in zip(rows, dists)])
    if not parts:
        return [EMPTY for _ in range(len(queries))]
    if len(parts) == 1:
        return parts[0]
    return [merge_ranked([p[i] for p in parts], k) for i in range(len(queries))]


def _closer(ranked: Ranked, first: Ranked, k: int) -> Ranked:
    """``ranked`` cut where it can no longer enter the top ``k`` of a merge with ``first`` (``first`` wins ties):
    at ``first``'s ``k``-th distance. Mostly nothing of an overlay is left, and the merge is the base's answer."""
    if len(first[0]) < k or not ranked[0]:
        return ranked
    end = int(np.searchsorted(ranked[1], first[1][k - 1], side="left"))
    return ranked if end == len(ranked[0]) else (ranked[0][:end], ranked[1][:end])


def _hidden_by(tails: Sequence[Any], base: Base) -> tuple[np.ndarray, tuple[np.ndarray, int] | None]:
    """The slots of ``base`` that the followed ``tails`` hide, and (one tail hiding more than an over-fetch skips)
    the base's live mask without them with its count, as the tail keeps them: a query does not look at the tails'
    rows, nor copy the base's mask."""
    hides = [(t, s) for t, s in ((t, t.hide(base)) for t in tails) if len(s)]
    if not hides:
        return _NO_SLOTS, None
    if len(hides) == 1:
        t, slots = hides[0]
        return slots, t.visible(base) if len(slots) > HIDE_BY_OVERFETCH else None
    return np.concatenate([s for _, s in hides]), None  # several partitions' tails on a version graph


_NO_SLOTS = np.zeros(0, dtype=np.int64)
