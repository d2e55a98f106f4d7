"""The follower: every loaded partition's change log, read live into an overlay (:mod:`embcache.core.tail`).

One thread per hub reads the logs. On a standalone server it waits on the change logs of every partition this
process has loaded with one ``XREAD BLOCK`` (all keys, one connection), and reads the net effect since its position
with ``emb_tail`` in the same pipeline (Redis runs them as soon as the XREAD returns: one round trip per change;
past :data:`PIPELINED_TAILS` partitions, the moved ones' tails in a second pipeline), then publishes a new overlay
view per partition. Where it cannot block on them all (Redis Cluster: a multi-key ``XREAD`` wants one slot, and each
partition is its own slot; or a principal granted before readers got ``XREAD``) it polls the partitions' positions
in one pipeline every ``poll`` seconds instead. Errors (Redis away, a killed connection) are retried with a backoff;
once back, the next read catches up from the follower's position. A log trimmed past that position makes it reload
the partition (the cache's reload: the newest snapshot) and follow from there, so no write is skipped.

A second thread indexes the overlays (:meth:`TailBuffer.index_step`, hnswlib releases the GIL), so that the
reading thread is always back in its ``XREAD`` at once: a write that comes while rows are being indexed is not
kept waiting behind them (with both in one thread, a round read, then indexed for a few milliseconds, which put
2-10 ms between a commit and its overlay whenever there was indexing to do). Queries scan a view's rows past
what its index covers, so an index that trails never hides a row.

The overlays are bounded by ``budget_bytes`` in all: a partition whose overlay would pass it stops being followed
(*frozen*, reported by :meth:`stats`) and keeps serving what it has, until a newer base lets it shrink.

Delta segments a worker published after a snapshot (:mod:`embcache.core.delta`) reach the overlays too: the
cache hands them over when it loads the snapshot (:meth:`seed`, so a new overlay starts where the segments end,
and its first read from the log is short) and as more are published (:meth:`feed`). A hub connected with
``follow=False`` has a follower that is not ``live``: no thread, no log reads, only the published segments.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ..core.errors import EmbcacheError, PermissionDenied, RedisRefused
from ..core.tail import TailBuffer, TailView
from ..core.views import pos_key
from ..redis import metrics
from ..redis.store import TAIL_LIMIT, Tail

if TYPE_CHECKING:
    from .cache import PartitionCache, PartitionId, SpaceInfo

__all__ = ["Follower", "FollowStats", "FedSegment"]

log = logging.getLogger("embcache.follow")
BLOCK_SECONDS = 0.1  # one XREAD waits at most this long, so close() and new partitions are not kept waiting
INDEX_STEP = 0.02  # seconds of one overlay's indexing before the indexer looks at the others (and at close())
INDEX_RETRY = 1.0  # seconds before the indexer tries again an overlay whose indexing failed
PIPELINED_TAILS = 16  # up to this many partitions, every tail read rides in the XREAD's pipeline
INDEX_STATIC = 2.0  # seconds the refresher spends indexing a fed overlay of a hub that does not follow


FedSegment = tuple[str, str, dict[str, Any]]  # a delta segment's rows as an overlay: (start, pos, id -> OverlayItem)


class FollowStats(dict[str, Any]):
    """What :meth:`Follower.stats` reports for one partition (a dict, JSON-ready)."""


class Follower:
    """Follows the change logs of the partitions ``cache`` holds bases of. Queries read :meth:`view`."""

    def __init__(self, cache: "PartitionCache", budget_bytes: int, poll: float = 0.02, *, live: bool = True) -> None:
        self.live = live  # False: no thread, no log reads; only published delta segments (follow=False)
        self.cache = cache
        self.store = cache.store
        self.budget = budget_bytes
        self.poll = poll
        self.buffers: dict[PartitionId, TailBuffer] = {}
        # bumped after a buffer is added, replaced, dropped or given rows (every change to what views hold; a route
        # reads it before it looks at the views): a query route checked at one epoch is stale after it
        self.epoch = 0
        self.infos: dict[PartitionId, SpaceInfo] = {}
        self.frozen: set[PartitionId] = set()
        self.floors: dict[PartitionId, str] = {}  # partitions followed from a trim point (a base behind it)
        self.mode = "poll" if self.store.is_cluster else "xread"
        self.connected = False
        self.rounds = 0
        self.reloads = 0
        self._pending: set[PartitionId] = set()
        self._seeds: dict[PartitionId, list[FedSegment]] = {}  # segments handed over with a base just loaded
        self._checked: set[PartitionId] = set()  # partitions whose sealed flag was read (sealing never ends)
        self._sealed: set[PartitionId] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._work = threading.Event()  # rows came: the indexer has work
        self._thread: threading.Thread | None = None
        self._indexer: threading.Thread | None = None

    # what queries read ------------------------------------------------------------------------------------
    def view(self, pid: "PartitionId") -> TailView | None:
        """The partition's overlay as last published (no I/O, no lock)."""
        buf = self.buffers.get(pid)
        return None if buf is None else buf.view

    # lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:  # two loads at once must not start two indexers on the same twin indexes
            if self._thread is not None or not self.live:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="embcache-follow", daemon=True)
            self._thread.start()
            self._indexer = threading.Thread(target=self._index_loop, name="embcache-overlay-index", daemon=True)
            self._indexer.start()

    def close(self) -> None:
        self._stop.set()
        self._work.set()
        for t in (self._thread, self._indexer):
            if t is not None:
                t.join(timeout=5)
        self._thread = self._indexer = None

    def forget(self, predicate: Any) -> None:
        """Drop the overlays of the partitions ``predicate`` accepts (their space or version was dropped)."""
        with self._lock:
            for pid in [p for p in self.buffers if predicate(p)]:
                self._drop(pid)

    def _drop(self, pid: "PartitionId") -> None:
        self.buffers.pop(pid, None)
        self._seeds.pop(pid, None)
        self.infos.pop(pid, None)
        self.frozen.discard(pid)
        self._pending.discard(pid)
        self.epoch += 1

    # which partitions, from which position -------------------------------------------------------------------
    def _wanted(self) -> dict["PartitionId", tuple[str, "SpaceInfo"]]:
        """Every partition a loaded base serves, with the oldest position one of its bases covers."""
        from .cache import GRAPH

        out: dict[PartitionId, tuple[str, SpaceInfo]] = {}

        def want(pid: PartitionId, pos: str, info: SpaceInfo) -> None:
            floor = self.floors.get(pid)
            if floor is not None and pos_key(pos) < pos_key(floor):
                pos = floor
            have = out.get(pid)
            if have is None or pos_key(pos) < pos_key(have[0]):
                out[pid] = (pos, info)

        for pid, (base, info) in list(self.cache._bases.items()):
            if pid[2] == GRAPH:
                for p, pos in dict(getattr(base, "parts", {})).items():
                    want((pid[0], pid[1], p), pos, info)
            else:
                want(pid, base.position, info)
        return out

    def sync(self) -> None:
        """Match the overlays to the loaded bases: follow new partitions, forget evicted ones, and shrink an
        overlay whose bases moved on (a new snapshot) to the changes after them. Called by both threads."""
        wanted = self._wanted()
        for pid in [p for p in wanted if p not in self.buffers and p not in self._checked]:
            # a sealed partition never changes legitimately: it is not followed, so that data a writer with raw
            # access changed after sealing never reaches eventual readers (the worker refuses to publish it)
            if self.store.sealed(self.cache.keys(pid)):
                self._sealed.add(pid)
            self._checked.add(pid)
        for pid in self._sealed:
            wanted.pop(pid, None)
            self._seeds.pop(pid, None)  # never followed: its segments are not wanted either
        with self._lock:
            for pid in [p for p in self.buffers if p not in wanted]:
                self._drop(pid)
            for pid, (start, info) in wanted.items():
                buf = self.buffers.get(pid)
                if buf is None or pos_key(start) < pos_key(buf.start):
                    self.buffers[pid] = TailBuffer(start, info.dim, info.metric, info.ef)
                    self.epoch += 1
                    self.infos[pid] = info
                    self.frozen.discard(pid)
                    self._pending.add(pid)  # read what was written since the base, without waiting for a new write
                elif pos_key(start) > pos_key(buf.start):
                    self.buffers[pid] = buf.after(start)
                    self.epoch += 1
                    if pid in self.frozen and self._total() <= self.budget:
                        self.frozen.discard(pid)
                        self._pending.add(pid)
            for pid in [p for p in self._seeds if p in self.buffers]:  # published segments before the log's
                self._feed(pid, self.buffers[pid], self._seeds.pop(pid))

    # delta segments (issue 12.3) ------------------------------------------------------------------------------
    def seed(self, pid: "PartitionId", segments: list[FedSegment]) -> None:
        """Segments ``(start, pos, items)`` that extend a base just loaded, for the partition's overlay (fed to it
        by the next :meth:`sync`, once the base is in the cache)."""
        with self._lock:
            self._seeds[pid] = segments

    def feed(self, pid: "PartitionId", segments: list[FedSegment]) -> int:
        """Add published segments ``(start, pos, items)`` newer than the partition's overlay to it; returns how
        many were added. One that starts after the overlay's position is left (with the segments after it) to
        the log reads; so are all when the overlay is frozen."""
        with self._lock:
            buf = self.buffers.get(pid)
            added = 0 if buf is None else self._feed(pid, buf, segments)
        if added and not self.live and buf is not None:  # no indexer thread: the caller's indexes it
            deadline = time.monotonic() + INDEX_STATIC
            while buf.index_behind() and time.monotonic() < deadline:
                buf.index_step(0.05)
        elif added:
            self._work.set()
        return added

    def _feed(self, pid: "PartitionId", buf: TailBuffer, segments: list[FedSegment]) -> int:
        added = 0
        for start, pos, items in segments:
            if pid in self.frozen or pos_key(pos) <= pos_key(buf.view.pos):
                continue
            if pos_key(start) > pos_key(buf.view.pos):
                break
            if items and self._total() + _growth(buf, len(items)) > self.budget:
                log.warning("%s: the overlay passed its memory bound (%d bytes) with a delta segment; eventual "
                            "reads of it stay at %s until a newer snapshot is loaded", "/".join(pid), self.budget,
                            buf.view.pos)
                self.frozen.add(pid)
                break
            self._publish(buf, pos, items)
            added += 1
        return added

    def _publish(self, buf: TailBuffer, pos: str, items: dict[str, Any]) -> None:
        """Apply changes read up to ``pos`` to ``buf`` (under the lock); a new view moves the epoch."""
        view = buf.view
        if buf.apply(pos, items) is not view:
            self.epoch += 1

    def _total(self) -> int:
        return sum(b.nbytes for b in self.buffers.values())

    # the thread ----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                self.sync()
                self.round()
                if not self.connected:
                    log.info("following change logs again (%s)", self.mode)
                self.connected = True
                backoff = 0.05
            except EmbcacheError as exc:  # Redis away, a killed connection: retry; the next read catches up
                if self.connected:
                    log.warning("following change logs paused: %s", exc)
                self.connected = False
                self._stop.wait(backoff)
                backoff = min(1.0, backoff * 2)
            except Exception:  # the follower must outlive any one bad partition
                log.exception("following change logs failed")
                self.connected = False
                self._stop.wait(backoff)
                backoff = min(1.0, backoff * 2)

    def round(self) -> int:
        """Wait for changes (up to :data:`BLOCK_SECONDS`) and apply them; returns the partitions updated."""
        with self._lock:
            active = {pid: buf for pid, buf in self.buffers.items() if pid not in self.frozen}
            pending = [pid for pid in self._pending if pid in active]
        if not active:
            self._stop.wait(BLOCK_SECONDS)
            return 0
        keys = {pid: self.cache.keys(pid) for pid in active}
        got: list[tuple[PartitionId, str, Tail | None]] = []
        if not pending and self.mode == "xread" and len(active) <= PIPELINED_TAILS:
            got = self._wait_and_read(active, keys, BLOCK_SECONDS)  # one round trip: wait, then every tail
        else:
            if not pending:
                pending = self._moved(active, keys, BLOCK_SECONDS)
            if pending:
                requests = [(keys[pid], active[pid].view.pos) for pid in pending]
                tails = self.store.read_tails(requests, TAIL_LIMIT)
                got = [(pid, since, tail) for pid, (_, since), tail in zip(pending, requests, tails)]
        updated = self._apply(got, keys) if got else 0
        self.rounds += 1
        if updated:
            self._work.set()
        return updated

    def _wait_and_read(self, active: dict["PartitionId", TailBuffer], keys: dict["PartitionId", Any],
                       block: float) -> list[tuple["PartitionId", str, Tail | None]]:
        pids = list(active)
        streams = {keys[pid].log: active[pid].view.pos for pid in pids}
        requests = [(keys[pid], active[pid].view.pos) for pid in pids]
        try:
            _, tails = self.store.wait_and_read_tails(streams, int(block * 1000), requests)
        except (PermissionDenied, RedisRefused) as exc:  # no XREAD for this principal, or keys across slots
            log.info("cannot block on the change logs (%s); polling every %.3f s", exc, self.poll)
            self.mode = "poll"
            return []
        return [(pid, since, tail) for pid, (_, since), tail in zip(pids, requests, tails)
                if tail is None or tail.pos != since]

    def _apply(self, got: list[tuple["PartitionId", str, Tail | None]], keys: dict["PartitionId", Any]) -> int:
        updated = 0
        for pid, since, tail in got:
            pk = keys[pid]
            if tail is None:  # more than one call's worth, or trimmed: page through it, else reload
                tail = self.store.read_tail(pk, since, 1 << 30)
            if tail is None:
                self._trimmed(pid)
                continue
            items = _overlay(tail, self.infos.get(pid))
            with self._lock:
                self._pending.discard(pid)
                buf = self.buffers.get(pid)
                if buf is None or pos_key(since) > pos_key(buf.view.pos):
                    continue  # replaced meanwhile by a buffer that starts earlier: it is pending itself
                if pos_key(tail.pos) <= pos_key(buf.view.pos) and since != buf.view.pos:
                    continue  # a delta segment fed meanwhile is as new (its values may be newer than this read)
                if items and self._total() + _growth(buf, len(items)) > self.budget:
                    if pid not in self.frozen:
                        log.warning("%s: the overlay passed its memory bound (%d bytes); eventual reads of it stay "
                                    "at %s until a newer snapshot is loaded", pk.tag, self.budget, buf.view.pos)
                    self.frozen.add(pid)
                    continue
                self._publish(buf, tail.pos, items)
                updated += 1
            if metrics.ENABLED:
                metrics.set_overlay(pk.tag, buf.view.n_live, buf.nbytes, buf.unindexed())
        return updated

    def _moved(self, active: dict["PartitionId", TailBuffer], keys: dict["PartitionId", Any],
               block: float) -> list["PartitionId"]:
        """The partitions whose log moved past the overlay's position: one blocking XREAD, or one poll."""
        if self.mode == "xread":
            streams = {keys[pid].log: buf.view.pos for pid, buf in active.items()}
            try:
                moved = set(self.store.wait_logs(streams, int(block * 1000)))
            except (PermissionDenied, RedisRefused) as exc:  # no XREAD for this principal, or keys across slots
                log.info("cannot block on the change logs (%s); polling every %.3f s", exc, self.poll)
                self.mode = "poll"
                return []
            return [pid for pid in active if keys[pid].log in moved]
        pids = list(active)
        positions = self.store.positions([keys[pid] for pid in pids])
        moved_pids = [pid for pid, pos in zip(pids, positions) if pos != active[pid].view.pos
                      and pos_key(pos) > pos_key(active[pid].view.pos)]
        if not moved_pids:
            self._stop.wait(min(self.poll, block))
        return moved_pids

    def _index_loop(self) -> None:
        """The indexer thread: index what the overlays' serving indexes lack, a step per overlay in turn, until
        none lacks rows; then wait for rows (or look again after :data:`BLOCK_SECONDS`: a replaced buffer). An
        overlay whose step fails (hnswlib out of memory, say) is left for :data:`INDEX_RETRY` seconds, its rows
        scanned exactly meanwhile, and the others go on."""
        failed: dict[PartitionId, float] = {}  # partition -> when its overlay may be tried again
        while not self._stop.is_set():
            self._work.wait(BLOCK_SECONDS)
            self._work.clear()
            while not self._stop.is_set():
                now = time.monotonic()
                behind = [(pid, buf) for pid, buf in list(self.buffers.items())
                          if pid not in self.frozen and failed.get(pid, 0.0) <= now and buf.index_behind()]
                if not behind:
                    break
                for pid, buf in behind:
                    try:
                        buf.index_step(INDEX_STEP)
                        failed.pop(pid, None)
                        if metrics.ENABLED:  # the unindexed rows go down here, not where tails are applied
                            metrics.set_overlay(self.cache.keys(pid).tag, buf.view.n_live, buf.nbytes,
                                                buf.unindexed())
                    except Exception:  # the indexer must outlive any one bad overlay
                        if pid not in failed:
                            log.exception("indexing the overlay of %s failed; its rows are scanned exactly",
                                          "/".join(pid))
                        failed[pid] = time.monotonic() + INDEX_RETRY

    def _trimmed(self, pid: "PartitionId") -> None:
        """The log no longer reaches back to the overlay's position: load the partition afresh (its newest
        snapshot) and follow from there; a version graph behind the trim point is followed from the log's end."""
        from .cache import GRAPH

        self.reloads += 1
        info = self.infos.get(pid)
        if pid in self.cache._bases and info is not None:
            log.info("%s: the change log was trimmed past the follower; reloading the partition", "/".join(pid))
            self.floors[pid] = self.cache.reload(pid, info).position
        else:
            self.floors[pid] = self.store.position(self.cache.keys(pid))
            graph = (pid[0], pid[1], GRAPH)
            if graph in self.cache._bases:
                log.info("%s: the version graph is behind the log's trim point; following from its end",
                         "/".join(pid))
        with self._lock:
            self.buffers.pop(pid, None)
            self._pending.discard(pid)
            self.epoch += 1
        self.sync()

    # reporting -----------------------------------------------------------------------------------------------
    def stats(self, pid: "PartitionId") -> FollowStats | None:
        """The partition's overlay: items, bytes, position, rows not indexed, frozen; None when not followed."""
        buf = self.buffers.get(pid)
        if buf is None:
            return None
        v = buf.view
        return FollowStats(overlay_items=v.n_live, overlay_rows=v.n, overlay_bytes=buf.nbytes,
                           follow_position=v.pos, follow_start=buf.start, overlay_unindexed=buf.unindexed(),
                           follow_frozen=pid in self.frozen, follow_mode=self.mode if self.live else "deltas",
                           follow_connected=self.connected)


def _overlay(tail: Any, info: "SpaceInfo | None") -> dict[str, Any]:
    from .cache import tail_overlay

    if info is None:
        return {}
    return tail_overlay(tail, info)


def _growth(buf: TailBuffer, rows: int) -> int:
    """Bytes ``rows`` more rows may add (a doubling of the matrix counts in full)."""
    need = buf.n + rows
    extra = 300 * rows
    if need > len(buf.matrix):
        extra += max(need, 2 * len(buf.matrix)) * buf.dim * 4
    return extra
