"""Exact (brute-force) nearest-neighbour search and merging of ranked results: pure numpy, no I/O.

Distances follow hnswlib's conventions, so exact and indexed answers are comparable:
``l2`` is the squared Euclidean distance, ``ip`` is ``1 - <q, x>``, ``cosine`` is ``1 - cos(q, x)`` (vectors of
cosine spaces are normalised on write, queries on arrival, so it is computed as ``1 - <q, x>``).

The exact path ranks candidates in float32 and re-ranks a margin of them in float64, so its answers match an
independent float64 brute force up to genuine ties. For ``l2`` the float32 stage works on vectors centred on the
items' mean: squared distances are translation-invariant, and data far from the origin would otherwise lose the
distances between neighbours to cancellation (``|q|^2 + |x|^2 - 2<q, x>`` of large, nearly equal terms). Queries
are processed in blocks sized so that the temporary matrices stay within a fixed memory budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Ranked", "exact_search", "pairwise_distances", "merge_ranked", "EMPTY"]

# One query's answer from one source: ids nearest first and their distances (float32, ascending).
Ranked = tuple[list[str], np.ndarray]
EMPTY: Ranked = ([], np.zeros(0, dtype=np.float32))
_QUERY_BLOCK = 256  # at most this many queries at once
_BLOCK_BYTES = 256 << 20  # and no more temporary memory per block than this (distances, argpartition, re-rank)
_ROW_CHUNK = 8192  # items centred at once by the l2 candidate stage


def pairwise_distances(queries: np.ndarray, items: np.ndarray, metric: str,
                       dtype: type[np.floating[Any]] = np.float32) -> np.ndarray:
    """Distances ``(len(queries), len(items))`` in ``metric``, computed in ``dtype``."""
    q = queries.astype(dtype, copy=False)
    x = items.astype(dtype, copy=False)
    if metric == "l2":
        d: np.ndarray = (q * q).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2.0 * _dot(q, x)
        clipped: np.ndarray = np.maximum(d, 0.0, out=d)
        return clipped
    return 1.0 - _dot(q, x)


def _dot(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``q @ x.T``; one query on one thread (einsum, no BLAS: a BLAS library spreads even a small product over
    every core, which on a busy machine costs more than it saves)."""
    if len(q) == 1:
        one: np.ndarray = np.einsum("ij,j->i", x, q[0])[None, :]
        return one
    dots: np.ndarray = q @ x.T
    return dots


def _l2_candidates(queries: np.ndarray, items: np.ndarray, center: np.ndarray) -> np.ndarray:
    """float32 squared l2 distances ``(q, n)`` computed on vectors centred on ``center`` (chunk by chunk)."""
    qc = queries.astype(np.float32, copy=False) - center
    qq = (qc * qc).sum(1)
    out = np.empty((queries.shape[0], items.shape[0]), dtype=np.float32)
    for start in range(0, items.shape[0], _ROW_CHUNK):
        xc = items[start : start + _ROW_CHUNK].astype(np.float32, copy=False) - center
        out[:, start : start + xc.shape[0]] = qq[:, None] + (xc * xc).sum(1)[None, :] - 2.0 * _dot(qc, xc)
    return np.maximum(out, 0.0, out=out)


def _exact_rerank(queries: np.ndarray, items: np.ndarray, cand: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances of each query to its candidate rows ``cand`` (q, c)."""
    q = queries.astype(np.float64)
    x = items[cand].astype(np.float64)  # (q, c, dim)
    if metric == "l2":
        x -= q[:, None, :]
        squared: np.ndarray = np.einsum("qcd,qcd->qc", x, x)
        return squared
    dot: np.ndarray = np.einsum("qcd,qd->qc", x, q)
    return 1.0 - dot


def exact_search(
    items: np.ndarray, queries: np.ndarray, k: int, metric: str, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``items`` nearest to each query: ``(rows int64 (q, m), distances float32 (q, m))``.

    ``allowed`` is an optional boolean mask over rows; ``m = min(k, number of allowed rows)``.
    """
    n_q = queries.shape[0]
    rows = np.arange(items.shape[0]) if allowed is None else np.flatnonzero(allowed)
    m = min(k, rows.size)
    if m == 0:
        return np.zeros((n_q, 0), dtype=np.int64), np.zeros((n_q, 0), dtype=np.float32)
    pool = items[rows] if allowed is not None else items
    n, dim = pool.shape
    c = min(n, k + max(16, k // 2))  # float32 ranking, float64 re-rank of a margin
    per_query = 20 * n + 12 * c * dim + 32 * c  # float32 distances, argpartition's int64s, the re-rank's gather
    block = max(1, min(_QUERY_BLOCK, _BLOCK_BYTES // per_query))
    center = None
    if metric == "l2":  # the mean of up to ~1000 evenly spaced rows is as good a centre as the exact mean
        center = pool[:: max(1, n // 1024)].mean(axis=0, dtype=np.float64).astype(np.float32)
    out_rows = np.empty((n_q, m), dtype=np.int64)
    out_dist = np.empty((n_q, m), dtype=np.float32)
    for start in range(0, n_q, block):
        qb = queries[start : start + block]
        d = _l2_candidates(qb, pool, center) if center is not None else pairwise_distances(qb, pool, metric)
        cand = np.argpartition(d, c - 1, axis=1)[:, :c] if c < pool.shape[0] else np.tile(np.arange(c), (len(qb), 1))
        exact = _exact_rerank(qb, pool, cand, metric)
        order = np.argsort(exact, axis=1, kind="stable")[:, :m]
        out_rows[start : start + len(qb)] = rows[np.take_along_axis(cand, order, 1)]
        out_dist[start : start + len(qb)] = np.take_along_axis(exact, order, 1)
    return out_rows, out_dist


def merge_ranked(sources: Sequence[Ranked], k: int) -> Ranked:
    """The ``k`` nearest of several ranked lists of one query (one per partition or overlay).

    An id that appears in several sources keeps its smallest distance.
    """
    sources = [s for s in sources if s[0]]
    if not sources:
        return EMPTY
    if len(sources) == 1 and len(sources[0][0]) <= k:
        return sources[0]
    ids = [i for s in sources for i in s[0]]
    dists = np.concatenate([np.asarray(s[1], dtype=np.float32) for s in sources])
    order = np.argsort(dists, kind="stable")
    if len(set(ids)) == len(ids):  # the usual case (an overlay hides what it replaced): no duplicate to skip
        top = order[:k]
        return [ids[j] for j in top.tolist()], dists[top]
    out_ids: list[str] = []
    out_d: list[float] = []
    seen: set[str] = set()
    dl = dists.tolist()
    for j in order.tolist():
        if ids[j] in seen:
            continue
        seen.add(ids[j])
        out_ids.append(ids[j])
        out_d.append(dl[j])
        if len(out_ids) == k:
            break
    return out_ids, np.asarray(out_d, dtype=np.float32)
