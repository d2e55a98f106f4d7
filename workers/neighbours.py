"""Neighbour lists: each item's nearest other items in its partition, computed with the partition's own index.

A space with ``neighbours = n`` gets, in every partition snapshot, the ``w = min(n, items - 1)`` nearest other
items of each item (see :mod:`embcache.core.snapshot` for the format), so that ``query_by_id`` can answer from a
list instead of a graph search. Here the lists are kept by hnswlib label, as two arrays ``(labels, w)``: the
neighbours' labels (``-1`` past the end of a list) and their distances (``inf`` there).

A full build queries the index with every item (batched ``knn_query`` on every core). An incremental build
keeps the lists correct enough without that: it recomputes the lists of new and changed items, drops deleted and
changed items from the other lists (what is left of a list is still the true nearest, only shorter), recomputes
a list once a quarter of it is gone, and inserts each new or changed item into the lists of the items it
found near it (reverse insertion: the metrics are symmetric, so ``x`` near ``y`` at distance ``d`` is ``y`` near
``x`` at ``d``). What reverse insertion misses is an item ``y`` whose list should now hold ``x`` although ``y`` is
not among the ``2w`` nearest of ``x``; scripts/bench_neighbours.py measures the recall after incremental builds.
"""

from __future__ import annotations

import logging

import hnswlib
import numpy as np

__all__ = ["Lists", "full_lists", "update_lists", "as_rows", "list_width", "LIST_EF"]

log = logging.getLogger("embcache.workers")
Lists = tuple[np.ndarray, np.ndarray]  # by label: neighbour labels (int64, -1 padded), distances (float32, inf)
LIST_EF = 2  # the lists are searched with ef = max(space ef, LIST_EF * (w + 1)): they are built once, read often
_BATCH = 8192  # queries per knn_query call (bounds the result arrays)


def list_width(neighbours: int, live: int) -> int:
    """The width of a partition's lists: ``neighbours``, or every other item of a small partition."""
    return max(0, min(neighbours, live - 1))


def _nearest(index: hnswlib.Index, vectors: np.ndarray, own: np.ndarray, k: int, live: int, ef: int,
             threads: int) -> Lists:
    """The ``k`` nearest other items of each query (``own``: the query items' labels), rows ``(len(own), k)``."""
    ask = min(k + 1, live)
    out_l = np.full((len(own), k), -1, dtype=np.int64)
    out_d = np.full((len(own), k), np.inf, dtype=np.float32)
    index.set_ef(max(ef, ask))
    for s in range(0, len(own), _BATCH):
        q, mine = vectors[s : s + _BATCH], own[s : s + _BATCH]
        try:
            lab, dist = index.knn_query(q, k=ask, num_threads=threads)
        except RuntimeError:  # the graph walk found fewer than asked (tombstones): one by one, as many as found
            lab, dist = _one_by_one(index, q, ask)
        lab = lab.astype(np.int64)
        other = (lab != mine[:, None]) & (lab >= 0)
        order = np.argsort(~other, axis=1, kind="stable")  # the item itself (wherever it came) goes last
        lab, dist, other = (np.take_along_axis(a, order, 1)[:, :k] for a in (lab, dist, other))
        out_l[s : s + len(q), : lab.shape[1]] = np.where(other, lab, -1)
        out_d[s : s + len(q), : dist.shape[1]] = np.where(other, dist, np.inf)
    return out_l, out_d


def _one_by_one(index: hnswlib.Index, queries: np.ndarray, k: int) -> Lists:
    lab = np.full((len(queries), k), -1, dtype=np.int64)
    dist = np.full((len(queries), k), np.inf, dtype=np.float32)
    for i, q in enumerate(queries):
        for kk in range(k, 0, -1):
            try:
                row_l, row_d = index.knn_query(q[None, :], k=kk, num_threads=1)
            except RuntimeError:
                continue
            lab[i, :kk], dist[i, :kk] = row_l[0], row_d[0]
            break
    return lab, dist


def full_lists(index: hnswlib.Index, vectors: np.ndarray, labels: np.ndarray, size: int, w: int, ef: int,
               threads: int) -> Lists:
    """Every item's list (``vectors`` row ``i`` is the item of label ``labels[i]``), in tables of ``size`` labels."""
    nb = np.full((size, w), -1, dtype=np.int64)
    nd = np.full((size, w), np.inf, dtype=np.float32)
    if w and len(labels):
        nb[labels], nd[labels] = _nearest(index, vectors, labels, w, len(labels), max(ef, LIST_EF * (w + 1)),
                                          threads)
    return nb, nd


def update_lists(index: hnswlib.Index, lists: Lists | None, live: np.ndarray, deleted: list[int],
                 updated: list[int], added: list[int], size: int, w: int, ef: int, threads: int) -> Lists:
    """The lists after an incremental build (the index already holds the change); ``live``: every live label.
    Recomputed in full when there are none yet, their width changed, or most lists are touched."""
    if lists is None or lists[0].shape[1] != w or not w:
        return full_lists(index, _vectors(index, live), live, size, w, ef, threads)
    nb = np.full((size, w), -1, dtype=np.int64)
    nd = np.full((size, w), np.inf, dtype=np.float32)
    have = min(size, len(lists[0]))
    nb[:have], nd[:have] = lists[0][:have], lists[1][:have]
    gone = np.asarray(deleted + updated, dtype=np.int64)
    if len(deleted):
        nb[deleted], nd[deleted] = -1, np.inf
    touched = np.asarray(updated + added, dtype=np.int64)
    short = np.zeros(0, np.int64)
    if len(gone):  # drop deleted and changed items from the lists that hold them: the rest is still a true prefix
        hit = np.isin(nb, gone)
        lost = np.flatnonzero(hit.any(axis=1))
        keep = ~hit[lost]
        order = np.argsort(~keep, axis=1, kind="stable")
        nb[lost] = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(nb[lost], order, 1), -1)
        nd[lost] = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(nd[lost], order, 1), np.inf)
        short = lost[keep.sum(axis=1) < w - w // 4]  # recomputed once a quarter of a list is gone
    redo = np.union1d(touched, np.intersect1d(short, live))
    if len(redo) * 2 > len(live):
        return full_lists(index, _vectors(index, live), live, size, w, ef, threads)
    if not len(redo):
        return nb, nd
    k = min(2 * w, len(live) - 1)  # twice as deep as the lists: more items to insert into
    found_l, found_d = _nearest(index, _vectors(index, redo), redo, k, len(live), max(ef, LIST_EF * (k + 1)), threads)
    nb[redo], nd[redo] = found_l[:, :w], found_d[:, :w]
    redone = set(redo.tolist())
    where = {int(x): i for i, x in enumerate(redo.tolist())}
    for x in touched.tolist():  # reverse insertion
        row_l, row_d = found_l[where[x]], found_d[where[x]]
        for y, d in zip(row_l.tolist(), row_d.tolist()):
            if y < 0:
                break
            if y in redone or not d < nd[y, -1]:
                continue
            at = int(np.searchsorted(nd[y], d, side="right"))
            nb[y, at + 1 :], nd[y, at + 1 :] = nb[y, at:-1].copy(), nd[y, at:-1].copy()
            nb[y, at], nd[y, at] = x, d
    return nb, nd


def _vectors(index: hnswlib.Index, labels: np.ndarray) -> np.ndarray:
    if not len(labels):
        return np.zeros((0, index.dim), dtype=np.float32)
    return np.asarray(index.get_items(labels.tolist()), dtype=np.float32).reshape(len(labels), index.dim)


def as_rows(lists: Lists, labels: np.ndarray) -> Lists:
    """The lists in the snapshot's layout: row ``i`` for the item of ``labels[i]``, naming rows of that order
    (int32), a list's entries first and ``-1`` / ``inf`` after them."""
    nb, nd = lists
    row_of = np.full(len(nb), -1, dtype=np.int64)
    row_of[labels] = np.arange(len(labels))
    lab = nb[labels]
    rows = np.where(lab >= 0, row_of[np.maximum(lab, 0)], -1)
    dists = np.where(rows >= 0, nd[labels], np.inf).astype(np.float32)
    order = np.argsort(rows < 0, axis=1, kind="stable")
    return np.take_along_axis(rows, order, 1).astype(np.int32), np.take_along_axis(dists, order, 1)
