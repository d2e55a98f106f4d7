"""The query engine over loaded bases: one validated query, compiled filters, the planner. Pure, no I/O.

A query is validated once into a :class:`Query`, which every query shape (single or batched, any partitions,
filters, ``exclude``, ``query_by_id``) carries through the same stages. A ``where`` filter is compiled once
into a :class:`Filter`: its predicate (for overlay items) and a tree that a base evaluates into a boolean row
mask with per-field value indexes (:class:`FieldIndex`), cached per base under the filter's canonical JSON, so
a filter that repeats costs one dictionary lookup.

The planner (:func:`choose`) picks, per searched structure, from the number of items a query may match:

=================  ==========================================================================================
``exact``          brute force over the matching rows (few matches, or no graph): always complete
``graph``          hnswlib's search, nothing to leave out
``graph+overfetch``  hnswlib's search for more than ``k`` and drop what may not match: when most items match
``graph+filter``   hnswlib's search with a filter callback (costs ~1 us per visited node, so only in between)
=================  ==========================================================================================

A plan never returns fewer than ``min(k, matches)`` results: a graph walk that comes back short is redone
exactly. :class:`Explain` records what was done, for :meth:`embcache.client.Version.explain`.
"""

from __future__ import annotations

import json
import math
import threading
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInput
from .filters import Predicate, compile_where
from .search import exact_search

__all__ = [
    "Query", "Filter", "compile_filter", "FieldIndex", "MaskCache", "Step", "Explain", "choose",
    "EXACT_ROWS", "EXACT_VALUES", "OVERFETCH_SHARE", "MAX_FETCH", "CONSISTENCY_LEVELS", "check_ef", "check_include",
]

CONSISTENCY_LEVELS = ("eventual", "session", "strong")
# up to this many matches a brute force beats a graph walk that must skip the rest (measured at dim 384 on 59k
# items: 6,181 rows scanned in ~350 us, 1.3x an unfiltered walk, where an over-fetch of 152 cost 2.6x); at a larger
# dim the scan costs more per row, so at most EXACT_VALUES numbers are scanned
EXACT_ROWS = 8192
EXACT_VALUES = EXACT_ROWS * 384
OVERFETCH_SHARE = 0.08  # from this share of matching items up, over-fetch from the graph and drop the rest
MAX_FETCH = 1000  # the most results asked from hnswlib for one over-fetched query
FILTER_CALLBACK_SHARE = 0.5  # below this share a graph+filter walk is tried only when exact would cost more
MAX_EXCLUDE = 10_000  # ids one query may exclude
GATHER_BYTES = 32 << 20  # per base: float32 copies of the rows of repeated filters, for exact scans


# the query ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """One validated query: what every stage of a search reads. Build it with :meth:`Query.build`."""

    vectors: np.ndarray  # (q, dim) float32, normalised for cosine spaces
    k: int
    partitions: tuple[str, ...] | None  # as asked (checked against the version later), None for all
    where: "Filter | None"
    ef: int | None
    consistency: str
    include: tuple[str, ...]
    exclude: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls, vectors: np.ndarray, k: int, *, partitions: object = None, where: object = None, ef: object = None,
        consistency: object = "session", include: object = ("distances",), exclude: object = None,
        allowed_include: Sequence[str] = ("distances", "metadatas", "embeddings"),
    ) -> "Query":
        """Validate the query options (vectors and ``k`` are validated by the caller, with the space's dim)."""
        inc = check_include(include, allowed_include)
        flt = compile_filter(where)
        ef_ = check_ef(ef)
        if consistency not in CONSISTENCY_LEVELS:
            raise InvalidInput(f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}, got {consistency!r}")
        return cls(vectors, k, _check_partitions(partitions), flt, ef_, str(consistency), inc, _check_exclude(exclude))


def _check_partitions(partitions: object) -> tuple[str, ...] | None:
    if partitions is None:
        return None
    if isinstance(partitions, str):
        partitions = [partitions]
    if not isinstance(partitions, (list, tuple)) or not partitions:
        raise InvalidInput("partitions must be a non-empty list of partition names, or None for all")
    from .keys import check_name

    for p in partitions:
        check_name(p, "partition name")
    return tuple(dict.fromkeys(partitions))


def _check_exclude(exclude: object) -> frozenset[str]:
    if exclude is None:
        return frozenset()
    if isinstance(exclude, str):
        exclude = [exclude]
    if isinstance(exclude, (set, frozenset)):
        exclude = sorted(exclude, key=str)
    if not isinstance(exclude, (list, tuple)):
        raise InvalidInput(f"exclude must be a list of ids, got {type(exclude).__name__}")
    if len(exclude) > MAX_EXCLUDE:
        raise InvalidInput(f"exclude holds {len(exclude)} ids; at most {MAX_EXCLUDE}")
    for i in exclude:
        if not isinstance(i, str) or not i:
            raise InvalidInput(f"exclude must hold non-empty string ids, got {i!r}")
    return frozenset(exclude)


def check_include(include: object, allowed: Sequence[str]) -> tuple[str, ...]:
    """``include`` as a tuple of known field names."""
    if isinstance(include, str):
        include = (include,)
    if not isinstance(include, (list, tuple)):
        raise InvalidInput(f"include must be a list drawn from {', '.join(allowed)}")
    for x in include:
        if x not in allowed:
            raise InvalidInput(f"include: unknown field {x!r}; use {', '.join(allowed)}")
    return tuple(include)


def check_ef(ef: object) -> int | None:
    """``ef`` as an int in [1, 10000], or None for the space's default."""
    if ef is None:
        return None
    if isinstance(ef, bool) or not isinstance(ef, (int, np.integer)) or not 1 <= ef <= 10_000:
        raise InvalidInput(f"ef must be an integer in [1, 10000], got {ef!r}")
    return int(ef)


# filters ------------------------------------------------------------------------------------------------------
# A filter tree: ("and", nodes) ("or", nodes) ("eq"|"ne", field, value) ("in"|"nin", field, values)
# ("cmp", field, op, operand). It mirrors embcache.filters' semantics exactly (tests compare both on real data).
Node = tuple[Any, ...]


@dataclass(frozen=True)
class Filter:
    """A compiled ``where``: the predicate (for overlay items), the tree bases evaluate into masks, and the
    canonical JSON that keys the masks' cache."""

    key: str
    predicate: Predicate
    tree: Node


def compile_filter(where: object) -> Filter | None:
    """Validate ``where`` (see :mod:`embcache.filters`) and compile it; None for no filter."""
    predicate = compile_where(where)  # validates, and raises the errors users know
    if predicate is None:
        return None
    assert isinstance(where, dict)
    return Filter(json.dumps(where, sort_keys=True, separators=(",", ":")), predicate, _tree(where))


def _tree(where: dict[str, Any]) -> Node:
    nodes: list[Node] = []
    for key, value in where.items():
        if key in ("$and", "$or"):
            nodes.append((key[1:], tuple(_tree(v) for v in value)))
        elif isinstance(value, dict):
            for op, operand in value.items():
                nodes.append(_leaf(key, op, operand))
        else:
            nodes.append(("eq", key, value))
    return nodes[0] if len(nodes) == 1 else ("and", tuple(nodes))


def _leaf(fieldname: str, op: str, operand: Any) -> Node:
    if op in ("$eq", "$ne"):
        return (op[1:], fieldname, operand)
    if op in ("$in", "$nin"):
        return (op[1:], fieldname, tuple(operand))
    return ("cmp", fieldname, op, operand)


def _vkey(value: object) -> tuple[bool, object]:
    """The index key of a scalar: ``True`` must not equal ``1`` (filters' rule), ``1`` equals ``1.0``."""
    return (isinstance(value, bool), value)


# a field's index: value -> rows, (sorted numbers, their rows), (sorted strings, their rows)
_FieldParts = tuple[dict[Any, np.ndarray], tuple[list[float], np.ndarray], tuple[list[str], np.ndarray]]


class FieldIndex:
    """Per-field value -> rows indexes of one base's metadata, built per field on first use.

    For each field: the rows of every scalar value (list fields: of every scalar element), and the sorted
    numbers and strings with their rows, for ``$gt``/``$gte``/``$lt``/``$lte``."""

    def __init__(self, metas: Sequence[dict[str, Any] | None], live: np.ndarray) -> None:
        self.metas = metas  # aligned with rows (None where a row holds no item or no metadata)
        self.live = live
        self.n = len(live)
        self._fields: dict[str, _FieldParts] = {}
        self._lock = threading.Lock()
        self.nbytes = 0

    def _field(self, name: str) -> _FieldParts:
        got = self._fields.get(name)
        if got is not None:
            return got
        with self._lock:
            got = self._fields.get(name)
            if got is None:
                got = self._build(name)
                self._fields[name] = got
        return got

    def _build(self, name: str) -> _FieldParts:
        rows: dict[Any, list[int]] = {}
        nums: list[tuple[float, int]] = []
        strs: list[tuple[str, int]] = []
        for r, m in enumerate(self.metas):
            if not m:
                continue
            v = m.get(name, _ABSENT)
            if v is _ABSENT:
                continue
            if isinstance(v, list):
                for e in v:
                    if e is None or isinstance(e, (str, int, float, bool)):
                        rows.setdefault(_vkey(e), []).append(r)
                continue
            if v is None or isinstance(v, (str, int, float, bool)):
                rows.setdefault(_vkey(v), []).append(r)
                if isinstance(v, str):
                    strs.append((v, r))
                elif not isinstance(v, bool) and v is not None:
                    nums.append((v, r))
        values = {k: np.unique(np.asarray(v, dtype=np.int64)) for k, v in rows.items()}
        nums.sort(key=lambda t: t[0])
        strs.sort(key=lambda t: t[0])
        num_part = ([t[0] for t in nums], np.asarray([t[1] for t in nums], dtype=np.int64))
        str_part = ([t[0] for t in strs], np.asarray([t[1] for t in strs], dtype=np.int64))
        self.nbytes += sum(a.nbytes + 100 for a in values.values()) + 16 * (len(nums) + len(strs))
        return values, num_part, str_part

    def mask(self, tree: Node) -> np.ndarray:
        """Rows (of live items) that the filter tree matches, as a boolean array."""
        out: np.ndarray = self._eval(tree) & self.live
        return out

    def _eval(self, node: Node) -> np.ndarray:
        kind = node[0]
        if kind == "and":
            out = self._eval(node[1][0]).copy()
            for sub in node[1][1:]:
                out &= self._eval(sub)
            return out
        if kind == "or":
            out = self._eval(node[1][0]).copy()
            for sub in node[1][1:]:
                out |= self._eval(sub)
            return out
        if kind in ("eq", "ne", "in", "nin"):
            values = self._field(node[1])[0]
            options = node[2] if kind in ("in", "nin") else (node[2],)
            out = np.zeros(self.n, dtype=bool)
            for o in options:
                rows = values.get(_vkey(o))
                if rows is not None:
                    out[rows] = True
            return ~out if kind in ("ne", "nin") else out
        _, name, op, operand = node
        _, (nv, nr), (sv, sr) = self._field(name)
        keys, rows = (sv, sr) if isinstance(operand, str) else (nv, nr)
        if op == "$gt":
            sel = rows[bisect_right(keys, operand):]
        elif op == "$gte":
            sel = rows[bisect_left(keys, operand):]
        elif op == "$lt":
            sel = rows[: bisect_left(keys, operand)]
        else:
            sel = rows[: bisect_right(keys, operand)]
        out = np.zeros(self.n, dtype=bool)
        out[sel] = True
        return out


_ABSENT = object()


class MaskCache:
    """A base's compiled filters: canonical filter JSON -> (row mask, match count), the most recent
    ``size`` of them (filters repeat in serving; a new filter object per query still hits)."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[np.ndarray, int]] = OrderedDict()
        self._gathered: OrderedDict[str, tuple[np.ndarray, Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, build: Callable[[], np.ndarray]) -> tuple[np.ndarray, int, bool]:
        """``(mask, count, hit)`` for ``key``, building the mask on a miss."""
        hit = self._items.get(key)
        if hit is not None:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
            return hit[0], hit[1], True
        mask = build()
        mask.flags.writeable = False  # shared by every query with this filter
        entry = (mask, int(np.count_nonzero(mask)))
        with self._lock:
            self._items[key] = entry
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return entry[0], entry[1], False

    def gathered(self, key: str, build: Callable[[], tuple[np.ndarray, Any, int]]) -> tuple[np.ndarray, Any, int]:
        """``(slots, brute-force index, bytes)`` of a cached mask's rows: hnswlib's ``BFIndex`` over their float32
        vectors, so an exact scan of a repeated filter is one SIMD pass on one thread (a float16 gather and
        conversion costs ~0.3 us a row, and numpy's BLAS spreads a small product over every core). Bounded by
        ``GATHER_BYTES``; past it the oldest go first, and a set larger than the bound is not kept."""
        hit = self._gathered.get(key)
        if hit is not None:
            return hit
        entry = build()
        if entry[2] <= GATHER_BYTES:
            with self._lock:
                self._gathered[key] = entry
                while sum(e[2] for e in self._gathered.values()) > GATHER_BYTES:
                    self._gathered.popitem(last=False)
        return entry

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m, _ in list(self._items.values())) + sum(e[2] for e in list(self._gathered.values()))


# the planner and explain --------------------------------------------------------------------------------------
@dataclass
class Step:
    """How one structure was searched for a query."""

    structure: str  # e.g. "version graph v1 (59000 items)", "partition p snapshot", "partition p exact"
    plan: str  # "exact", "graph", "graph+overfetch", "graph+filter", "empty", "overlay"
    items: int  # items in the structure
    matches: int  # items the query may match there (filter, partitions, exclusions applied)
    candidates: int  # rows scanned (exact) or results asked of hnswlib (graph)
    ef: int = 0
    filter_cache: str = ""  # "hit", "miss" or "" (no filter)
    fallback: str = ""  # why a graph walk was redone exactly

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", None)}


@dataclass
class Explain:
    """How a query was answered: the structures searched, exact or graph, candidates examined."""

    consistency: str
    steps: list[Step] = field(default_factory=list)
    overlay_items: int = 0
    redis_round_trips: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def plan(self) -> str:
        """One line: ``"graph on version graph v1 (59000 items)"``, several steps joined by ``" + "``."""
        parts = [f"{s.plan} on {s.structure}" for s in self.steps] or ["nothing to search"]
        if self.overlay_items:
            parts.append(f"exact on {self.overlay_items} overlay items")
        return " + ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "consistency": self.consistency, "steps": [s.as_dict() for s in self.steps],
                "overlay_items": self.overlay_items, "redis_round_trips": self.redis_round_trips,
                "notes": list(self.notes)}

    def __str__(self) -> str:
        return self.plan


def choose(live: int, matches: int, k: int, has_graph: bool, dim: int = 384) -> tuple[str, int]:
    """The plan for one structure: ``(plan, results to ask of the graph)``.

    ``live`` items are in the structure, ``matches`` of them may be returned (filter, partitions and exclusions
    applied); ``dim`` is the vectors' dimension."""
    if matches <= 0:
        return "empty", 0
    if has_graph and matches >= live:
        return "graph", k  # nothing to leave out: what raw hnswlib does
    if not has_graph or matches <= max(min(EXACT_ROWS, EXACT_VALUES // max(1, dim)), 4 * k):
        return "exact", matches
    share = matches / live
    fetch = math.ceil(k / share * 1.5) + 8
    if share >= OVERFETCH_SHARE and fetch <= MAX_FETCH:
        return "graph+overfetch", min(fetch, live)
    return "graph+filter", k




# searching one base -------------------------------------------------------------------------------------------
Ranked = tuple[list[str], np.ndarray]
HIDE_BY_OVERFETCH = 64  # up to this many hidden items (overlay, exclude) are dropped from an over-fetch


def search_base(
    base: Any, queries: np.ndarray, k: int, ef: int | None, *, where: Filter | None = None,
    restrict: Sequence[str] | None = None, hidden: frozenset[str] | set[str] = frozenset(), step: Step | None = None,
    gone_slots: Sequence[int] | np.ndarray = (), visible: tuple[np.ndarray, int] | None = None,
) -> list[Ranked]:
    """One base's answer to each query: ids nearest first and their distances.

    ``base`` offers ``count``, ``live`` (bool per slot), ``slot`` (id -> slot), ``id_of`` (slot -> id),
    ``has_graph``, ``knn(queries, k, ef, filter)``, ``gather(slots)`` (float32 vectors), ``fields``
    (:class:`FieldIndex`), ``masks`` (:class:`MaskCache`), ``metric``, and for a version graph
    ``partition_mask(names)``. ``restrict`` limits a version graph to some partitions; ``hidden`` ids
    (replaced or deleted by an overlay, or excluded by the query) never come back, nor do the slots ``gone_slots``
    (those a followed tail replaced or deleted, found once per tail rather than per query). ``visible`` is
    ``base.live`` without ``gone_slots`` and its count, when the caller keeps it (so no query builds it again)."""
    step = step if step is not None else Step("", "", 0, 0, 0)
    step.items = base.count
    allowed, matches, key = _allowed(base, where, restrict, step)
    gone = [s for s in (base.slot.get(i) for i in hidden) if s is not None]
    n_gone = len(gone) + len(gone_slots)
    if n_gone and (allowed is not None or n_gone > HIDE_BY_OVERFETCH):
        allowed, matches = _without(base, allowed, gone, gone_slots, visible)
        gone, key = [], None
    elif n_gone:
        gone = list(set(gone).union(np.asarray(gone_slots).tolist())) if len(gone_slots) else gone
        matches = base.count - len(gone)
    step.matches = matches
    plan, fetch = choose(base.count, matches, k, base.has_graph, queries.shape[1])
    step.plan, step.candidates = plan, fetch
    kk = min(k, matches)
    if plan == "empty":
        return [([], np.zeros(0, np.float32)) for _ in range(len(queries))]
    if plan == "exact":
        return _exact(base, queries, kk, allowed if allowed is not None or not gone else _hide(base, gone),
                      key if not gone else None)
    try:
        if plan == "graph+filter":
            mask = allowed if allowed is not None else _hide(base, gone)  # a few hidden ids, no other mask
            step.ef = ef or base.default_ef
            labels, dists = base.knn(queries, kk, ef, lambda label: bool(mask[label]))
            return _ranked(base, labels, dists)
        want_ef = max(ef or base.default_ef, fetch + len(gone))  # over-fetching k' results needs ef >= k'
        # a walk of width ef finds ef results for the price of k: an over-fetch takes them all
        ask = min(want_ef if plan == "graph+overfetch" else fetch + len(gone), base.count)
        step.candidates, step.ef = ask, want_ef
        labels, dists = base.knn(queries, ask, want_ef, None)
    except RuntimeError:  # hnswlib found fewer than asked: the graph walk starved
        step.fallback = "graph walk returned too few results"
        step.plan, step.candidates = "exact", matches
        mask = allowed if allowed is not None else _hide(base, gone)
        return _exact(base, queries, kk, mask, key if not gone else None)
    keep = allowed if allowed is not None else (_hide(base, gone) if gone else None)
    if keep is None:
        return _ranked(base, labels, dists)
    ok = keep[labels]
    wider = min(4 * ask, MAX_FETCH, base.count)
    if (ok.sum(axis=1) < kk).any() and wider > ask:  # a filter correlated with the query: a 4x wider walk, once
        try:
            labels, dists = base.knn(queries, wider, max(want_ef, wider), None)
            ok = keep[labels]
            step.candidates, step.ef = wider, max(want_ef, wider)
        except RuntimeError:
            pass
    if (ok.sum(axis=1) < kk).any():  # still too few: answer exactly
        step.fallback = f"over-fetch of {step.candidates} kept fewer than {kk}"
        step.plan, step.candidates = "exact", matches
        return _exact(base, queries, kk, keep, key if not gone else None)
    out = []
    for row, d, m in zip(labels, dists, ok):
        sel = np.flatnonzero(m)[:kk]
        out.append((base.id_of[row[sel]].tolist(), d[sel]))
    return out


def _allowed(base: Any, where: Filter | None, restrict: Sequence[str] | None,
             step: Step) -> tuple[np.ndarray | None, int, str | None]:
    """The mask of what the query may match (None: every live item), its count, and its cache key."""
    if where is None and restrict is None:
        return None, base.count, None
    fkey = where.key if where is not None else ""
    rkey = "\x00partitions:" + ",".join(sorted(restrict)) if restrict is not None else ""
    if where is not None:
        mask, n, hit = base.masks.get(fkey, lambda: base.fields.mask(where.tree))
        step.filter_cache = "hit" if hit else "miss"
        if restrict is None:
            return mask, n, fkey
    pmask, n, _ = base.masks.get(rkey, lambda: base.partition_mask(restrict))
    if where is None:
        return pmask, n, rkey
    both, n, _ = base.masks.get(fkey + rkey, lambda: mask & pmask)
    return both, n, fkey + rkey


def _without(base: Any, allowed: np.ndarray | None, gone: list[int], gone_slots: Sequence[int] | np.ndarray,
             visible: tuple[np.ndarray, int] | None) -> tuple[np.ndarray, int]:
    """``allowed`` (None: every live item) without the slots ``gone`` and ``gone_slots``, and its count.
    ``visible`` (``base.live`` without ``gone_slots``, kept by the caller) saves building that part."""
    if visible is not None and allowed is None and not gone:
        return visible  # shared and read-only, like the cached filter masks
    if visible is not None:
        mask: np.ndarray = visible[0] & (base.live if allowed is None else allowed)  # a new array
    else:
        mask = (base.live if allowed is None else allowed).copy()
        mask[np.asarray(gone_slots, dtype=np.int64)] = False
    mask[gone] = False
    return mask, int(np.count_nonzero(mask))


def _hide(base: Any, gone: list[int]) -> np.ndarray:
    keep: np.ndarray = base.live.copy()
    keep[gone] = False
    return keep


def _ranked(base: Any, labels: np.ndarray, dists: np.ndarray) -> list[Ranked]:
    id_of = base.id_of
    return [(id_of[row].tolist(), d) for row, d in zip(labels, dists)]


def _exact(base: Any, queries: np.ndarray, k: int, allowed: np.ndarray | None, key: str | None = None) -> list[Ranked]:
    slots = base.live_slots if allowed is None else np.flatnonzero(allowed)
    if k <= 0 or not len(slots):
        return [([], np.zeros(0, np.float32)) for _ in range(len(queries))]
    id_of = base.id_of
    if key is not None and getattr(base, "vectors", None) is not None:  # a snapshot's float16 copy: keep the scan
        slots, bf, _ = base.masks.gathered(key, lambda: _brute_force_index(base, slots))
        rows, dists = bf.knn_query(queries, k=k, num_threads=1 if len(queries) == 1 else -1)
        return [(id_of[slots[r]].tolist(), d) for r, d in zip(rows.astype(np.int64), dists)]
    rows, dists = exact_search(base.gather(slots), queries, k, base.metric)
    return [(id_of[slots[r]].tolist(), d) for r, d in zip(rows, dists)]


def _brute_force_index(base: Any, slots: np.ndarray) -> tuple[np.ndarray, Any, int]:
    import hnswlib

    vectors = base.gather(slots)
    bf = hnswlib.BFIndex(space=base.metric, dim=vectors.shape[1])
    bf.init_index(max_elements=len(slots))
    bf.add_items(vectors, np.arange(len(slots)))
    return slots, bf, vectors.nbytes + 16 * len(slots)
