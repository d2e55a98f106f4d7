"""The live overlay: the changes a hub's follower read from a partition's change log after its base. Pure, no I/O.

A :class:`TailBuffer` holds one partition's followed changes as append-only rows of one contiguous float32 matrix
(grown by doubling, so appending costs amortised O(1) and a query never stacks vectors): one row per change, in
log order; a deletion is a row too (a zero vector, never live). A row never changes once written, so a query
reads the buffer through a :class:`TailView`, an immutable snapshot (row count, live mask, position) that the
follower publishes after each applied tail: a query never sees half a tail.

Past :data:`INDEX_FROM` rows the buffer is also indexed by hnswlib, so that a query does not scan tens of
thousands of rows. hnswlib is not safe for concurrent add and search, so there are two indexes (a *twin*): queries
search the serving one while the follower's indexer adds the rows it lacks to the other, then swaps them; each row
is added twice, and neither index is ever written while a query reads it (a reader count per index, taken under a
lock).
Rows past what the serving index covers are scanned exactly, so a query always sees every row of its view.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .search import EMPTY, Ranked, merge_ranked, pairwise_distances
from .views import OverlayItem, pos_key

__all__ = ["TailBuffer", "TailView", "INDEX_FROM"]

INDEX_FROM = 2048  # rows from which the overlay is indexed by hnswlib (below, an exact scan is cheaper)
INDEX_M = 16
INDEX_EF_CONSTRUCTION = 64  # a small, short-lived index: cheaper inserts matter more than the last 1 % of recall
_FIRST_ROWS = 64


class _Twin:
    """Two hnswlib indexes over a buffer's rows: one serves queries, the follower adds to the other."""

    def __init__(self, dim: int, metric: str, ef: int) -> None:
        self.dim, self.space, self.ef = dim, ("ip" if metric == "cosine" else metric), ef
        self.idx: list[Any] = [None, None]
        self.covered = [0, 0]  # rows [0, covered) were offered to the index (rows dead by then are left out)
        # the newest view (its row count) whose live mask fed the index: a query's view at least as new holds
        # every indexed row it has live (rows die, never come back); an older view may have live rows it lacks
        self.fed = [0, 0]
        self.readers = [0, 0]
        self.serving = -1
        self.lock = threading.Lock()
        self.nbytes = 0

    def acquire(self) -> tuple[int, Any, int, int] | None:
        """``(which, index, rows covered, rows of the newest view that fed it)`` of the serving index, held for
        a search until :meth:`release`; None before there is one."""
        with self.lock:
            s = self.serving
            if s < 0:
                return None
            self.readers[s] += 1
            return s, self.idx[s], self.covered[s], self.fed[s]

    def release(self, s: int) -> None:
        with self.lock:
            self.readers[s] -= 1

    def step(self, matrix: np.ndarray, live: np.ndarray, n: int, budget_s: float) -> int:
        """Add rows to the index that is not serving, up to ``n`` or for about ``budget_s`` seconds, then make it
        the serving one. Called by one thread only (the follower's indexer); returns the rows added."""
        import hnswlib

        t = 0 if self.serving < 0 else 1 - self.serving
        deadline = time.monotonic() + 0.05
        while True:  # queries hold an index for a search (~1 ms); wait until none reads the one to write
            with self.lock:
                if self.readers[t] == 0:
                    break
            if time.monotonic() > deadline:
                return 0
            time.sleep(0.0002)
        idx = self.idx[t]
        if idx is None:
            idx = hnswlib.Index(space=self.space, dim=self.dim)
            idx.init_index(max_elements=max(2 * n, 4096), ef_construction=INDEX_EF_CONSTRUCTION, M=INDEX_M)
            idx.set_ef(self.ef)
            self.idx[t] = idx
        elif idx.get_max_elements() < n:
            idx.resize_index(max(2 * idx.get_max_elements(), n))
        start, added, t0 = self.covered[t], 0, time.monotonic()
        while start < n:
            end = min(n, start + 16)
            rows = np.flatnonzero(live[start:end]) + start
            if len(rows):
                idx.add_items(matrix[rows], rows, num_threads=1)
                added += len(rows)
            start = end
            if time.monotonic() - t0 > budget_s:
                break
        with self.lock:
            self.covered[t] = start
            self.fed[t] = max(self.fed[t], n)
        self.nbytes = sum(i.get_max_elements() * (4 * self.dim + 8 * INDEX_M + 32) for i in self.idx if i is not None)
        with self.lock:
            if self.serving < 0 or self.covered[t] >= self.covered[self.serving]:
                self.serving = t
        return added


BLAS_ROWS = 4096  # up to this many rows a single query's product goes to BLAS (~3x einsum; 2 threads past ~1,100 rows)


def _distances(queries: np.ndarray, block: np.ndarray, metric: str) -> np.ndarray:
    """hnswlib's distances of each query to the rows of ``block`` (float32)."""
    if metric != "l2" and len(queries) == 1 and len(block) <= BLAS_ROWS:
        d: np.ndarray = (np.float32(1.0) - block @ queries[0])[None, :]
        return d
    return pairwise_distances(queries, block, metric)


class _Hides:
    """The slots of one base that a buffer's rows hide, in row order: ``slots[i]`` is hidden from row ``rows[i]``
    on (the first row of its id). Append-only like the rows, so a view takes a prefix; extended under the
    buffer's lock."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.rows = np.zeros(64, dtype=np.int64)
        self.slots = np.zeros(64, dtype=np.int64)
        self.count = 0  # entries in rows/slots
        self.scanned = 0  # buffer rows looked at
        self.seen: set[str] = set()

    def extend(self, ids: list[str], n: int) -> None:
        slot = self.base.slot
        for r in range(self.scanned, n):
            id_ = ids[r]
            if id_ in self.seen:
                continue
            self.seen.add(id_)
            s = slot.get(id_)
            if s is None:
                continue
            if self.count == len(self.slots):  # grown by doubling; views keep the old arrays (never rewritten)
                self.rows = np.concatenate([self.rows, np.zeros_like(self.rows)])
                self.slots = np.concatenate([self.slots, np.zeros_like(self.slots)])
            self.rows[self.count], self.slots[self.count] = r, s
            self.count += 1
        self.scanned = max(self.scanned, n)

    def upto(self, n: int) -> np.ndarray:
        """The slots hidden by rows ``[0, n)`` (a later view's rows must not hide anything from an older one)."""
        end = int(np.searchsorted(self.rows[: self.count], n))
        out = self.slots[:end]
        out.flags.writeable = False
        return out


class TailBuffer:
    """One partition's followed changes after ``start`` (a log position every loaded base of it covers).

    Written by the follower thread only (:meth:`apply`); queries read :attr:`view`."""

    def __init__(self, start: str, dim: int, metric: str, ef: int = 64) -> None:
        self.start = start
        self.dim, self.metric, self.ef = dim, metric, ef
        self.matrix = np.zeros((_FIRST_ROWS, dim), dtype=np.float32)
        self.ids: list[str] = []  # row -> id
        self.metas: list[dict[str, Any] | None] = []  # row -> metadata
        self.row_pos: list[str] = []  # row -> the position of the tail it came with
        self.latest: dict[str, int] = {}  # id -> its newest row
        self.prev: list[int] = []  # row -> the id's row before it (-1: none), for views older than its newest
        self._live = np.zeros(_FIRST_ROWS, dtype=bool)
        self.n = 0
        self.n_live = 0
        self.twin: _Twin | None = None
        self._lock = threading.Lock()  # extending the per-base and per-filter caches (queries)
        self._hides: dict[int, _Hides] = {}  # id(base) -> the slots of that base the rows hide
        self._masks: dict[str, np.ndarray] = {}  # filter key -> rows matching (grown as rows come)
        self._mask_rows: dict[str, int] = {}
        self.view = TailView(self, start, 0, self._live[:0].copy(), 0, self.matrix)

    @property
    def nbytes(self) -> int:
        """Memory held: the matrix, ~300 bytes of tables a row, the indexes."""
        return self.matrix.nbytes + 300 * self.n + (self.twin.nbytes if self.twin is not None else 0)

    def apply(self, pos: str, items: dict[str, OverlayItem]) -> "TailView":
        """Append the net changes read up to ``pos`` and publish a new view (the follower's thread)."""
        if pos_key(pos) <= pos_key(self.view.pos) and not items:
            return self.view
        need = self.n + len(items)
        if need > len(self.matrix):
            cap = max(need, 2 * len(self.matrix))
            grown = np.zeros((cap, self.dim), dtype=np.float32)
            grown[: self.n] = self.matrix[: self.n]
            live = np.zeros(cap, dtype=bool)
            live[: self.n] = self._live[: self.n]
            self.matrix, self._live = grown, live  # views keep the old arrays: rows never change once written
        for id_, it in items.items():
            old = self.latest.get(id_)
            if old is not None and self._live[old]:
                self._live[old] = False
                self.n_live -= 1
            r = self.n
            if it.vector is not None:
                self.matrix[r] = it.vector
                self._live[r] = True
                self.n_live += 1
            self.ids.append(id_)
            self.metas.append(it.metadata)
            self.row_pos.append(it.pos)
            self.prev.append(-1 if old is None else old)
            self.latest[id_] = r
            self.n += 1
        if pos_key(pos) > pos_key(self.view.pos) or items:
            newest = pos if pos_key(pos) > pos_key(self.view.pos) else self.view.pos
            self.view = TailView(self, newest, self.n, self._live[: self.n].copy(), self.n_live, self.matrix)
        return self.view

    def index_step(self, budget_s: float = 0.002) -> int:
        """Index rows the serving index lacks (from :data:`INDEX_FROM` rows on); one thread at a time (the
        follower's indexer) calls it, beside the thread that applies tails. Returns the rows added."""
        v = self.view
        if v.n < INDEX_FROM:
            return 0
        if self.twin is None:
            self.twin = _Twin(self.dim, self.metric, self.ef)
        if self.twin.serving >= 0 and self.twin.covered[self.twin.serving] >= v.n \
                and self.twin.covered[1 - self.twin.serving] >= v.n:
            return 0
        return self.twin.step(v.matrix, v.live, v.n, budget_s)

    def index_behind(self) -> bool:
        """True while either index of the twin lacks rows of the current view (more indexing to do)."""
        v = self.view
        if v.n < INDEX_FROM:
            return False
        t = self.twin
        return t is None or min(t.covered) < v.n

    def unindexed(self) -> int:
        """Rows of the current view that the serving index does not cover (scanned exactly by every query)."""
        v = self.view
        if v.n < INDEX_FROM:
            return 0
        t = self.twin
        return v.n if t is None or t.serving < 0 else max(0, v.n - t.covered[t.serving])

    def after(self, pos: str, dim: int | None = None) -> "TailBuffer":
        """A new buffer of the rows newer than ``pos`` (a base moved up to it), at the same view position."""
        out = TailBuffer(pos, self.dim if dim is None else dim, self.metric, self.ef)
        key = pos_key(pos)
        v = self.view
        keep: dict[str, OverlayItem] = {}
        for id_, r in self.latest.items():
            if r < v.n and pos_key(self.row_pos[r]) > key:
                keep[id_] = OverlayItem(self.row_pos[r], v.matrix[r].copy() if v.live[r] else None, self.metas[r])
        out.apply(v.pos if pos_key(v.pos) > key else pos, dict(sorted(keep.items(), key=lambda kv: self.latest[kv[0]])))
        return out

    # what queries ask (any thread) ----------------------------------------------------------------------------
    def row_in(self, id_: str, n: int) -> int | None:
        """The id's newest row among rows ``[0, n)`` (a view's), None when it has none there."""
        r = self.latest.get(id_)
        while r is not None and r >= n:  # rows newer than the view: walk back to the one it holds, if any
            r = self.prev[r] if self.prev[r] >= 0 else None
        return r

    def _hidden_slots(self, base: Any, n: int) -> np.ndarray:
        """Slots of ``base`` whose ids rows ``[0, n)`` replace or delete, each once (a read-only array)."""
        hides = self._hides.get(id(base))
        with self._lock:
            if hides is None or hides.base is not base:
                if len(self._hides) > 8:
                    self._hides.clear()
                hides = self._hides[id(base)] = _Hides(base)
            hides.extend(self.ids, n)
            return hides.upto(n)

    def _match(self, flt: Any, n: int) -> np.ndarray:
        """Rows ``[0, n)`` whose metadata pass the compiled filter ``flt`` (computed once per row)."""
        key = flt.key
        done = self._mask_rows.get(key, 0)
        mask = self._masks.get(key)
        if mask is None or done < n:
            with self._lock:
                done = self._mask_rows.get(key, 0)
                mask = self._masks.get(key)
                if mask is None or done < n:
                    grown = np.zeros(max(n, 2 * done, 64), dtype=bool)
                    if mask is not None:
                        grown[:done] = mask[:done]
                    pred = flt.predicate
                    for r in range(done, n):
                        grown[r] = bool(pred(self.metas[r]))
                    if len(self._masks) > 32:
                        self._masks.clear()
                        self._mask_rows.clear()
                    self._masks[key], self._mask_rows[key] = grown, n
                    mask = grown
        return mask[:n]


class TailView:
    """An immutable snapshot of a :class:`TailBuffer`: rows ``[0, n)``, which of them are live, and the log
    position ``pos`` up to which the partition's changes are in it."""

    __slots__ = ("buf", "pos", "n", "live", "n_live", "matrix", "_hides")

    def __init__(self, buf: TailBuffer, pos: str, n: int, live: np.ndarray, n_live: int, matrix: np.ndarray) -> None:
        self.buf, self.pos, self.n, self.live, self.n_live, self.matrix = buf, pos, n, live, n_live, matrix
        self._hides: dict[int, list[Any]] = {}  # id(base) -> what hide() and visible() found of it

    @property
    def start(self) -> str:
        return self.buf.start

    def covers(self, base_pos: str) -> bool:
        """True when the view can serve with a base at ``base_pos``: it holds every change after its start, and
        every row is at least as new as the base (``start <= base_pos <= pos``)."""
        k = pos_key(base_pos)
        return pos_key(self.buf.start) <= k <= pos_key(self.pos)

    def __contains__(self, id_: str) -> bool:
        return self.buf.row_in(id_, self.n) is not None

    def __len__(self) -> int:
        return self.n

    def item(self, id_: str) -> OverlayItem | None:
        """The id's change in this view (vector None: deleted); None when the view does not hold it."""
        r = self.buf.row_in(id_, self.n)
        if r is None:
            return None
        return OverlayItem(self.buf.row_pos[r], self.matrix[r] if self.live[r] else None, self.buf.metas[r])

    def ids(self) -> list[str]:
        return self.buf.ids[: self.n]

    def hide(self, base: Any) -> np.ndarray:
        """The slots of ``base`` whose ids this view replaced or deleted (read-only). Worked out on the first
        query with this base and kept: the view never changes, so no query loops over its rows again."""
        hidden: np.ndarray = self._kept(base)[1]
        return hidden

    def visible(self, base: Any) -> tuple[np.ndarray, int]:
        """``base.live`` without the slots :meth:`hide` gives (read-only), and how many that leaves: built on the
        first query that needs it (this view alone hides more than an over-fetch skips) and kept, like them."""
        entry = self._kept(base)
        if entry[2] is None:  # two queries may both build it: the same mask, the last one kept
            mask = base.live.copy()
            mask[entry[1]] = False
            mask.flags.writeable = False
            entry[2] = (mask, int(np.count_nonzero(mask)))
        out: tuple[np.ndarray, int] = entry[2]
        return out

    def _kept(self, base: Any) -> list[Any]:
        """``[base, hidden slots, visible mask and count or None]``, one per base this view served."""
        got = self._hides.get(id(base))
        if got is None or got[0] is not base:
            slots = self.buf._hidden_slots(base, self.n) if self.n else _NO_SLOTS
            if len(self._hides) > 4:  # a view serves one or two bases (a partition's, the version graph)
                self._hides.clear()
            got = self._hides[id(base)] = [base, slots, None]
        return got

    def search(self, queries: np.ndarray, k: int, where: Any = None,
               hidden: frozenset[str] | set[str] | Sequence[str] = ()) -> list[Ranked]:
        """The live rows nearest to each query (``where``: a compiled filter; ``hidden`` ids never returned)."""
        n = self.n
        if not self.n_live or k <= 0:
            return [EMPTY for _ in range(len(queries))]
        alive = self.live
        if where is not None:
            alive = alive & self.buf._match(where, n)
        if hidden:
            row_in = self.buf.row_in
            rows = [r for r in (row_in(i, n) for i in hidden) if r is not None]
            if rows:
                alive = alive.copy()
                alive[rows] = False
        twin = self.buf.twin
        got = twin.acquire() if twin is not None else None
        if got is None:
            return self._exact(queries, k, alive, 0, n)
        s, idx, indexed_rows, fed = got
        try:
            covered = min(indexed_rows, n)
            # rows the query may get among the indexed ones (with no filter or hidden ids, an indexed view's count)
            n_ok = self.n_live if alive is self.live and covered == n else int(np.count_nonzero(alive[:covered]))
            share = n_ok / max(1, covered)
            if fed > n:  # fed by a newer view: a row live here may be missing (a newer row of its id came)
                indexed: list[Ranked] | None = None
            elif n_ok == 0:
                indexed = [EMPTY for _ in range(len(queries))]
            elif share < 0.1 or n_ok <= 4 * k:
                indexed = None
            elif n_ok == indexed_rows:  # every row in the index may come back: ask for k, drop nothing
                indexed = self._from_index(idx, queries, k, k, None, covered, n_ok)
            else:  # over-fetch past the rows to skip (dead, filtered, hidden, newer than this view)
                ask = min(idx.get_current_count(), int(k / share * 1.5) + 8 + k)
                indexed = self._from_index(idx, queries, k, ask, alive, covered, n_ok)
        finally:
            twin.release(s)  # type: ignore[union-attr]
        if indexed is None:
            return self._exact(queries, k, alive, 0, n)
        if covered >= n:
            return indexed
        rest = self._exact(queries, k, alive, covered, n)
        return [merge_ranked([a, b], k) for a, b in zip(indexed, rest)]

    def _from_index(self, idx: Any, queries: np.ndarray, k: int, ask: int, alive: np.ndarray | None,
                    covered: int, n_ok: int) -> list[Ranked] | None:
        """The index's answer, without the rows ``alive`` leaves out (None: it leaves out none of the index's);
        None when the walk comes back short."""
        try:
            labels, dists = idx.knn_query(queries, k=max(1, ask), num_threads=1 if len(queries) == 1 else -1)
        except RuntimeError:  # the walk found fewer than asked
            return None
        ids = self.buf.ids
        if alive is None:
            return [([ids[j] for j in row], d) for row, d in zip(labels.tolist(), dists)]
        labels = labels.astype(np.int64)
        # the index may hold rows newer than this view (the follower indexes its newest): those count as dead
        ok = (labels < covered) & alive[np.minimum(labels, covered - 1)]
        out: list[Ranked] = []
        for row, d, m in zip(labels, dists, ok):
            sel = np.flatnonzero(m)[:k]
            if len(sel) < min(k, n_ok):
                return None  # too many dead or filtered rows in the over-fetch: the caller scans exactly
            out.append(([ids[j] for j in row[sel].tolist()], d[sel]))
        return out

    def _exact(self, queries: np.ndarray, k: int, alive: np.ndarray, lo: int, hi: int) -> list[Ranked]:
        """Brute force over the alive rows of ``[lo, hi)``: one product, one partition, no loop over rows."""
        ok = alive[lo:hi]
        m = int(np.count_nonzero(ok))
        if m == 0:
            return [EMPTY for _ in range(len(queries))]
        block = self.matrix[lo:hi]
        rows: np.ndarray | None = None  # the block's row numbers when gathered
        if m < (hi - lo) // 2:  # mostly dead or filtered out: gather the few that count
            rows = np.flatnonzero(ok) + lo
            block = self.matrix[rows]
        d = _distances(queries, block, self.buf.metric)
        if rows is None and m < len(ok):
            d[:, ~ok] = np.inf  # the m alive rows are finite, so the min(k, m) nearest are all alive
        kk, ids, out = min(k, m), self.buf.ids, []
        for row in d:  # one query, mostly
            top = _nearest(row, kk)
            absolute = (rows[top] if rows is not None else top + lo).tolist()
            out.append(([ids[j] for j in absolute], row[top]))
        return out


_NO_SLOTS = np.zeros(0, dtype=np.int64)
_NO_SLOTS.flags.writeable = False


def _nearest(d: np.ndarray, k: int) -> np.ndarray:
    """The positions of the ``k`` smallest values of ``d`` (one query's distances), smallest first."""
    top = np.argpartition(d, k - 1)[:k] if k < len(d) else np.arange(len(d))
    order: np.ndarray = top[np.argsort(d[top], kind="stable")]
    return order
