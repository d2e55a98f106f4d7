"""``Version.recommend``: nearest neighbours of liked and disliked examples, as a plan that the sync and the asyncio
clients both run. The strategies' arithmetic is :mod:`embcache.core.examples`; the search is the version's own
query path (``Version._query``), so partitions, filters, consistency and snapshots behave exactly as for ``query``.
"""

from __future__ import annotations

from numbers import Real
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import codec
from ..core.errors import InvalidInput, ItemNotFound
from ..core.examples import MAX_EXAMPLES, STRATEGIES, average_query, best_scores, score_to_distance
from ..redis.plan import Plan
from .queries import _pad, _take
from .results import QueryResult

if TYPE_CHECKING:
    from .hub import Version

__all__ = ["recommend_plan", "MAX_EXCLUDE", "MAX_POOL", "MAX_BEST_POOL"]

MAX_EXCLUDE = 10_000  # ids in exclude=, as for query(exclude=)
MAX_POOL = 10_000  # results of one search at most (query's n_results limit)
MAX_BEST_POOL = 1024  # neighbours per positive best_score fetches at most (unless 2 n_results is more)
_INCLUDE = ("distances", "metadatas", "embeddings")


def _examples(examples: object, what: str, dim: int) -> list[str | np.ndarray]:
    """``examples`` as a list of ids (str) and float32 vectors ``(dim,)``."""
    if examples is None:
        return []
    if isinstance(examples, str):
        return [codec.check_ids([examples])[0]]
    if isinstance(examples, np.ndarray):
        mat = codec.check_matrix(examples, dim, what=what, allow_1d=True)
        return list(mat)
    if not isinstance(examples, (list, tuple)):
        raise InvalidInput(f"{what} must be a list of ids and/or vectors, got {type(examples).__name__}")
    if len(examples) == dim and all(isinstance(x, Real) and not isinstance(x, bool) for x in examples):
        return list(codec.check_matrix(examples, dim, what=what, allow_1d=True))  # one vector as a flat list
    if len(examples) > MAX_EXAMPLES:
        raise InvalidInput(f"{what} has {len(examples)} examples; the limit is {MAX_EXAMPLES}")
    out: list[str | np.ndarray] = []
    for j, x in enumerate(examples):
        if isinstance(x, str):
            out.append(codec.check_ids([x])[0])
        else:
            row = codec.check_matrix(x, dim, what=f"{what}[{j}]", allow_1d=True)
            if row.shape[0] != 1:
                raise InvalidInput(f"{what}[{j}] must be one id or one vector, got shape {row.shape}")
            out.append(row[0])
    return out


def recommend_plan(v: "Version", positive: Any, negative: Any, n_results: Any, partitions: Any, where: Any,
                   exclude: Any, exclude_examples: Any, strategy: Any, ef: Any, consistency: Any,
                   include: Any) -> Plan["QueryResult"]:
    """:meth:`embcache.Version.recommend` as a plan (see its docstring for the contract)."""
    dim, metric = v.space.dim, v.space.metric
    k = codec.check_n_results(n_results)
    if strategy not in STRATEGIES:
        raise InvalidInput(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not isinstance(exclude_examples, bool):
        raise InvalidInput("exclude_examples must be True or False")
    if isinstance(include, str):
        include = (include,)
    if not isinstance(include, (list, tuple)) or any(x not in _INCLUDE for x in include):
        raise InvalidInput(f"include must be a list drawn from {', '.join(_INCLUDE)}")
    pos, neg = _examples(positive, "positive", dim), _examples(negative, "negative", dim)
    if not pos:
        raise InvalidInput("positive is empty: recommend needs at least one liked example (an id or a vector)")
    if len(pos) + len(neg) > MAX_EXAMPLES:
        raise InvalidInput(f"{len(pos) + len(neg)} examples; the limit is {MAX_EXAMPLES} positives and negatives")
    extra = [] if exclude is None else codec.check_ids(exclude, allow_duplicates=True)
    if len(extra) > MAX_EXCLUDE:
        raise InvalidInput(f"exclude has {len(extra)} ids; the limit is {MAX_EXCLUDE}")

    example_ids = list(dict.fromkeys(x for x in pos + neg if isinstance(x, str)))
    stored: dict[str, np.ndarray] = {}
    if example_ids:  # every partition: an example may live outside the partitions searched
        got = yield from v._get(example_ids, ("embeddings",), None)
        assert got.embeddings is not None
        stored = dict(zip(got.ids, got.embeddings))
        absent = [i for i in example_ids if i not in stored]
        if absent:
            raise ItemNotFound(f"{v.space.name}/{v.name} has no item {absent[0]!r} (given as an example)")

    def matrix(examples: list[str | np.ndarray], what: str) -> np.ndarray | None:
        if not examples:
            return None
        mat = np.stack([stored[x] if isinstance(x, str) else x for x in examples]).astype(np.float32)
        # stored vectors of cosine spaces are unit vectors already; given ones are scaled so each weighs the same
        return codec.normalise(mat, what=what) if metric == "cosine" else mat

    P, N = matrix(pos, "positive"), matrix(neg, "negative")
    assert P is not None
    excluded = set(extra) | (set(example_ids) if exclude_examples else set())
    if strategy == "average":
        return (yield from _search_excluding(v, average_query(P, N), k, excluded, partitions, where, ef,
                                             consistency, tuple(include)))
    return (yield from _best_score(v, P, N, k, excluded, partitions, where, ef, consistency, tuple(include)))


def _search_excluding(v: "Version", queries: np.ndarray, k: int, excluded: set[str], partitions: Any, where: Any,
                      ef: Any, consistency: Any, include: tuple[str, ...]) -> Plan["QueryResult"]:
    """The query path's top ``k`` of each query, leaving out ``excluded``: it asks for ``k + |excluded|`` (the
    excluded ids can take at most that many places) and drops them."""
    want = k + len(excluded)
    if want > MAX_POOL:
        raise InvalidInput(f"n_results + excluded ids = {want}; the limit is {MAX_POOL}")
    res = yield from v._query(queries, want, partitions, where, ef, consistency, include)
    keep = [[j for j, x in enumerate(row) if x not in excluded][:k] for row in res.ids]
    return _take(res, keep, k)


def _best_score(v: "Version", P: np.ndarray, N: np.ndarray | None, k: int, excluded: set[str], partitions: Any,
                where: Any, ef: Any, consistency: Any, include: tuple[str, ...]) -> Plan["QueryResult"]:
    """Score a pool of candidates, the nearest neighbours of each positive, grown until no item outside it can
    rank higher.

    An item outside positive ``p``'s list is no nearer to ``p`` than the last one fetched for it (``last[p]``).
    So once the pool's ``k``-th best is accepted with ``pos = b``, an item outside the pool can only beat it
    through a positive with ``last[p] > b``: those positives (and only those) fetch 4 times as many, until none
    is left or its search ran out of candidates. The answer is then exact up to the search's own recall. While
    the pool has fewer than ``k`` accepted candidates every positive grows, up to ``MAX_BEST_POOL`` neighbours
    each (or ``2 n_results``); rejected candidates (nearer to a negative) are ranked from the pool.

    The search asks for distances only; the new candidates' vectors (and metadata) are then read with one
    ``get`` per round: one batched read is far cheaper than hnswlib's item-by-item ``get_items``, and it is the
    stored truth (an item deleted since the snapshot drops out, a replaced one is scored by its new vector).
    """

    metric = v.space.metric
    want_meta = "metadatas" in include
    cap = min(MAX_POOL, max(MAX_BEST_POOL, 2 * k))
    size = np.full(len(P), min(cap, max(2 * k, 16)), dtype=np.int64)
    last = np.full(len(P), np.inf)  # similarity of the farthest neighbour fetched per positive
    done = np.zeros(len(P), dtype=bool)  # its search ran out: every candidate is in its list
    lists: list[list[str]] = [[] for _ in range(len(P))]
    pool: dict[str, tuple[np.ndarray, Any]] = {}  # candidate -> (vector, metadata)
    todo = np.arange(len(P))
    while True:
        want = int(size[todo[0]])  # the positives that grow together have one size
        res = yield from v._query(P[todo], want, partitions, where, ef, consistency, ("distances",))
        for row, p in enumerate(todo):
            got = res.ids[row]
            lists[p] = got
            done[p] = len(got) < want
            d = float(res.distances[row][len(got) - 1]) if got else np.inf
            last[p] = -np.inf if not got else (-d if metric == "l2" else 1.0 - d)
        new = [x for x in dict.fromkeys(x for lst in lists for x in lst) if x not in excluded and x not in pool]
        if new:  # the candidates' vectors in one read (per partition): hnswlib hands them out one at a time
            stored = yield from v._get(new, ("embeddings", "metadatas") if want_meta else ("embeddings",),
                                       partitions)
            assert stored.embeddings is not None
            metas = stored.metadatas if stored.metadatas is not None else [None] * len(stored.ids)
            pool.update(zip(stored.ids, zip(stored.embeddings, metas)))  # ids deleted since are left out
        ids = list(pool)
        if ids:
            scores, best_pos = best_scores(np.stack([pool[x][0] for x in ids]), P, N, metric)
            order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))[:k]
        else:
            scores, best_pos, order = np.zeros(0), np.zeros(0), []
        if len(order) == k and scores[order[-1]] > 0:
            grow = ~done & (last > best_pos[order[-1]])
        else:
            grow = ~done
        grow &= size < cap
        if not grow.any():
            break
        todo = np.flatnonzero(grow)
        size[todo] = np.minimum(cap, size[todo] * 4)
    return QueryResult(
        ids=[[ids[i] for i in order]],
        distances=_pad([score_to_distance(scores[order], metric) if order else np.zeros(0, np.float32)], k),
        metadatas=[[pool[ids[i]][1] for i in order]] if want_meta else None,
        embeddings=[np.stack([pool[ids[i]][0] for i in order]) if order else np.zeros((0, v.space.dim), np.float32)]
        if "embeddings" in include else None,
        metric=metric,
    )
