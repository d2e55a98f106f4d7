"""The client's cache of partition bases: loaded lazily, bounded by a memory budget (LRU), kept fresh by a
background thread, swapped by reference.

A partition with a published snapshot is served from it (see :mod:`embcache.snapshot`); one without is served
from an :class:`~embcache.views.ExactBase` of all its vectors. The refresher thread polls each cached
partition's log position and snapshot generation every ``refresh_interval`` seconds (and wakes early on a
snapshot notification), so ``eventual`` and ``session`` queries never wait on Redis once a base is loaded.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..core import snapshot
from ..core.codec import DTYPES, decode_stored, parse_stored_metadata
from ..core.errors import EmbcacheError, SnapshotCorrupt
from ..core.keys import PartitionKeys
from ..core.vgraph import VersionBase
from ..core.views import Base, ExactBase, Overlay, OverlayItem, pos_key
from ..redis import metrics, snapshots
from ..redis import vgraph as vgraph_io
from ..redis.store import PartitionData, Store, Tail, translate_errors
from .follow import FedSegment, Follower

__all__ = ["PartitionCache", "SpaceInfo", "tail_overlay", "DEFAULT_OVERLAY_BYTES"]

log = logging.getLogger("embcache.cache")
PartitionId = tuple[str, str, str]  # space, version, partition ("" for the version graph)
DEFAULT_OVERLAY_BYTES = 512 << 20  # the follower's overlays, all partitions together
GRAPH = ""  # the partition part of the version graph's cache id (no partition can be named "")


@dataclass(frozen=True)
class SpaceInfo:
    """What decoding needs to know of a space."""

    dim: int
    dtype: str
    metric: str
    ef: int = 64


def tail_overlay(tail: Tail, info: SpaceInfo) -> Overlay:
    """A log tail read from Redis as an overlay. An item whose stored vector is corrupt is hidden, as the exact
    base leaves it out (see :func:`embcache.core.codec.decode_stored`)."""
    present = [i for i, v in enumerate(tail.vectors) if v is not None]
    mat, bad = decode_stored([tail.vectors[i] for i in present], info.dim, info.dtype, "a log tail")
    rows = iter(mat)
    skip = {present[j] for j in bad}
    vecs = [None if v is None or i in skip else next(rows) for i, v in enumerate(tail.vectors)]
    return {id_: OverlayItem(tail.pos, vec, None if vec is None else parse_stored_metadata(m, "a log tail"))
            for id_, vec, m in zip(tail.ids, vecs, tail.metadatas)}


def exact_base(data: PartitionData, info: SpaceInfo) -> ExactBase:
    """All of a partition's items as an exact base; corrupt stored items are left out (and logged)."""
    matrix, bad = decode_stored(data.vectors, info.dim, info.dtype, "a partition")
    skip = set(bad)
    ids = [id_ for i, id_ in enumerate(data.ids) if i not in skip]
    metas = [parse_stored_metadata(m, "a partition") for i, m in enumerate(data.metadatas) if i not in skip]
    return ExactBase(data.pos, ids, matrix, metas, info.metric)


class PartitionCache:
    """Bases of the partitions this process queries, within ``budget_bytes``."""

    def __init__(self, store: Store, budget_bytes: int, refresh_interval: float = 1.0, *, follow: bool = True,
                 overlay_bytes: int = DEFAULT_OVERLAY_BYTES) -> None:
        self.store = store
        self.budget = budget_bytes
        self.refresh_interval = refresh_interval
        self._bases: OrderedDict[PartitionId, tuple[Base, SpaceInfo]] = OrderedDict()
        self._lock = threading.Lock()
        self._load_locks: dict[PartitionId, threading.Lock] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.corrupt_seen = 0
        self._refused: dict[str, str] = {}  # partition tag -> sid of a snapshot refused as corrupt
        self.on_refresh: list[Callable[[], None]] = []  # more things the refresher keeps current
        self._no_graph: set[tuple[str, str]] = set()  # versions seen without a version graph
        self._refused_graphs: dict[tuple[str, str], str] = {}  # version -> sid of a graph refused as corrupt
        # partitions (and version graphs) whose bases made their float16 copy for an exact scan: their next bases
        # make it at load, beside the first queries; the others only when an exact scan first asks for it
        self._scanned: set[PartitionId] = set()
        # bumped before and after any base is loaded, replaced, evicted or dropped (``_changing``): a query route
        # built at one generation still has the base it checked while the generation is the same, whether the
        # reader looks at the generation or the base first (both orders are used: client/queries.py, "routes")
        self.generation = 0
        # the live change-log follower (its own thread: a snapshot load must not hold up following); with
        # follow=False one that is not live, so that published delta segments still reach eventual reads
        self.follower = Follower(self, overlay_bytes, live=follow)

    def keys(self, pid: PartitionId) -> PartitionKeys:
        return self.store.keys.partition(*pid)

    def cached(self, pid: PartitionId) -> Base | None:
        """The base if loaded (no I/O)."""
        entry = self._bases.get(pid)
        return entry[0] if entry else None

    def loaded(self, space: str, version: str) -> list[PartitionId]:
        """The cache ids of the version's loaded bases (its partitions', its version graph's), no I/O."""
        return [pid for pid in list(self._bases) if pid[0] == space and pid[1] == version]

    def touch(self, pid: PartitionId) -> None:
        """Mark ``pid`` as just used (LRU)."""
        with self._lock:
            if pid in self._bases:
                self._bases.move_to_end(pid)

    def get(self, pid: PartitionId, info: SpaceInfo) -> Base:
        """The partition's base, loading it on first use."""
        entry = self._bases.get(pid)
        if entry is not None:
            with self._lock:
                if pid in self._bases:
                    self._bases.move_to_end(pid)
            return entry[0]
        with self._lock:
            load_lock = self._load_locks.setdefault(pid, threading.Lock())
        with load_lock:  # one load per partition, however many threads ask
            entry = self._bases.get(pid)
            if entry is not None:
                return entry[0]
            base = self._load(pid, info)
            self._put(pid, base, info)
            self._ensure_thread()
            self.follower.sync()  # the overlay and its delta segments before the first query, not after
            return base

    def exact(self, pid: PartitionId, info: SpaceInfo) -> Base:
        """A fresh exact base of ``pid`` (all its vectors), not cached: the fallback of last resort."""
        return exact_base(self.store.read_partition(self.keys(pid)), info)

    # the version graph: one index over every partition of a version (principals granted them all) ----------
    def cached_graph(self, space: str, version: str) -> VersionBase | None:
        """The version graph if loaded (no I/O)."""
        entry = self._bases.get((space, version, GRAPH))
        return entry[0] if entry else None  # type: ignore[return-value]

    def graph_absent(self, space: str, version: str) -> bool:
        """True when the version had no graph at the last look (the refresher looks again)."""
        return (space, version) in self._no_graph

    def get_graph(self, space: str, version: str, info: SpaceInfo) -> VersionBase | None:
        """The version graph, loading it on first use; None when the version has none (yet)."""
        pid = (space, version, GRAPH)
        entry = self._bases.get(pid)
        if entry is not None:
            return entry[0]  # type: ignore[return-value]
        with self._lock:
            load_lock = self._load_locks.setdefault(pid, threading.Lock())
        with load_lock:
            entry = self._bases.get(pid)
            if entry is not None:
                return entry[0]  # type: ignore[return-value]
            graph = self._load_graph(space, version, info)
            if graph is None:
                self._no_graph.add((space, version))
                return None
            self._no_graph.discard((space, version))
            self._put(pid, graph, info)
            self._ensure_thread()
            return graph

    def _load_graph(self, space: str, version: str, info: SpaceInfo,
                    manifest: Any = None) -> VersionBase | None:
        try:
            manifest = manifest or vgraph_io.read_manifest(self.store.r, self.store.keys, space, version)
            if manifest is None or self._refused_graphs.get((space, version)) == manifest.sid:
                return None  # none, or this one was refused already: not fetched again
            return vgraph_io.load(self.store.r, self.store.keys, space, version, ef=info.ef, manifest=manifest,
                                  copy_vectors=(space, version, GRAPH) in self._scanned)
        except SnapshotCorrupt as exc:  # serve from the partitions' own snapshots; the next build replaces it
            self._refuse((space, version, GRAPH), manifest.sid if manifest is not None else None, str(exc))
            return None

    def covered(self, pid: PartitionId) -> str | None:
        """The oldest log position of ``pid`` that a loaded base serves it from (its own base, the version
        graph); None when nothing of it is loaded. Session writes older than this are no longer needed."""
        entry = self._bases.get(pid)
        graph = self.cached_graph(pid[0], pid[1])
        positions = [entry[0].position] if entry is not None else []
        if graph is not None and pid[2] in graph.parts:
            positions.append(graph.parts[pid[2]])
        return min(positions, key=pos_key) if positions else None

    def reload(self, pid: PartitionId, info: SpaceInfo) -> Base:
        """Load ``pid`` afresh, replacing what is cached."""
        base = self._load(pid, info)
        self._put(pid, base, info)
        self.follower.sync()
        return base

    def _load(self, pid: PartitionId, info: SpaceInfo) -> Base:
        pk = self.keys(pid)
        base = self._load_snapshot(pk, info)
        return base if base is not None else exact_base(self.store.read_partition(pk), info)

    def _load_snapshot(self, pk: PartitionKeys, info: SpaceInfo,
                       manifest: snapshot.Manifest | None = None) -> Base | None:
        """The published snapshot, or None (none published, or refused as corrupt: reported for a rebuild)."""
        t0 = time.perf_counter()
        try:
            with translate_errors("load snapshot"):
                manifest = manifest or snapshots.read_manifest(self.store.r, pk)
            if manifest is None or self._refused.get(pk.tag) == manifest.sid:
                return None  # none published, or this one was refused already: do not fetch it again
            with translate_errors("load snapshot"):
                base = snapshots.load(self.store.r, pk, ef=info.ef, dim=info.dim, metric=info.metric, manifest=manifest,
                                      copy_vectors=pk.names() in self._scanned)
            if metrics.ENABLED and base is not None:
                metrics.observe_snapshot_load(pk.tag, "ok", time.perf_counter() - t0, base.manifest.built_at)
            if base is not None:
                held = self.follower.view(pk.names())  # what the overlay holds already (a merge's carried rows)
                segments = self._segments(pk, base, info, held.pos if held is not None else None)
                if segments:
                    self.follower.seed(pk.names(), segments)
            return base
        except SnapshotCorrupt as exc:
            if metrics.ENABLED:
                metrics.observe_snapshot_load(pk.tag, "corrupt", time.perf_counter() - t0)
            self._refuse(pk.names(), manifest.sid if manifest is not None else "unreadable", str(exc))
            return None

    def _segments(self, pk: PartitionKeys, base: snapshot.HnswBase, info: SpaceInfo,
                  after: str | None) -> list[FedSegment]:
        """The published delta segments that extend ``base`` and end after ``after`` (all if None), as overlays;
        [] when there are none, they do not follow on from ``after``, or they cannot be read (the follower's log
        reads cover them then)."""
        width = info.dim * DTYPES[info.dtype].itemsize
        try:
            with translate_errors("load delta segments"):
                chain = snapshots.read_chain(self.store.r, pk, base.manifest, width)
                wanted = [s for s in chain.segments if after is None or pos_key(s.pos) > pos_key(after)] \
                    if chain is not None else []
                if not wanted or (after is not None and pos_key(wanted[0].start) > pos_key(after)):
                    return []
                if sum(s.nbytes for s in wanted) > 4 * base.manifest.nbytes + (64 << 20):  # merged at 25 % of it
                    raise SnapshotCorrupt(f"the delta chain of {pk.tag} is larger than its snapshot allows")
                fetched = snapshots.fetch_segments(self.store.r, pk, wanted, width)
        except (SnapshotCorrupt, EmbcacheError) as exc:
            if isinstance(exc, SnapshotCorrupt):
                self.corrupt_seen += 1
            log.warning("delta segments of %s not used: %s", pk.tag, exc)
            return []
        return [(seg.start, seg.pos, tail_overlay(tail, info)) for seg, tail in fetched or []]

    def _hook(self, pid: PartitionId, base: Any) -> None:
        """Let ``base`` tell the cache when its metadata table, parsed on first use, is bad (see
        :class:`~embcache.core.snapshot.LazyMetadata`), and when it made its float16 copy for an exact scan."""
        if isinstance(base, snapshot.HnswBase):
            ref = weakref.ref(base)  # not the base itself: no cycle keeps an evicted index alive

            def refuse(reason: str) -> None:
                found = ref()
                if found is not None:
                    self._refuse_loaded(pid, found, reason)

            base.on_corrupt = refuse
            base.on_vectors = lambda: self._grew(pid)

    def _refuse_loaded(self, pid: PartitionId, base: Any, reason: str) -> None:
        """Forget a loaded base found corrupt after its load and refuse its snapshot as a corrupt load is refused:
        the next query serves the partition exactly until a rebuild is published (reported here), or a version's
        partitions from their own snapshots."""
        sid = base.manifest.sid
        with self._lock:
            if self._bases.get(pid, (None,))[0] is not base:
                return  # replaced or forgotten already
            with self._changing():
                del self._bases[pid]
        self._refuse(pid, sid, reason)

    def _refuse(self, pid: PartitionId, sid: str | None, reason: str) -> None:
        """Refuse the snapshot ``sid`` of ``pid`` as corrupt (at load or on first use): count it, do not fetch it
        again, and report a partition's for a rebuild (a version graph has no report: its partitions serve)."""
        self.corrupt_seen += 1
        if pid[2] == GRAPH:
            log.warning("refused the version graph of %s/%s: %s", pid[0], pid[1], reason)
            if sid is not None:
                self._refused_graphs[(pid[0], pid[1])] = sid
            return
        pk = self.keys(pid)
        log.warning("refused the snapshot of %s: %s; answering exactly until it is rebuilt", pk.tag, reason)
        self._refused[pk.tag] = sid or "unreadable"
        self.store.report_corrupt(pk, reason)

    def _put(self, pid: PartitionId, base: Base, info: SpaceInfo) -> None:
        self._hook(pid, base)
        with self._lock, self._changing():
            self._bases[pid] = (base, info)
            self._bases.move_to_end(pid)
            self._evict()

    def _grew(self, pid: PartitionId) -> None:
        """A cached base of ``pid`` grew (it made its float16 copy for an exact scan): keep it, and evict the
        least recently used others until the cache is within its budget again."""
        self._scanned.add(pid)
        with self._lock:
            if pid not in self._bases:
                return
            with self._changing():
                self._bases.move_to_end(pid)
                self._evict()

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """Around any change to the bases (under the lock): the generation moves before and after it, so a query
        route built at one generation still has the base it checked, in whichever order it read them."""
        self.generation += 1
        try:
            yield
        finally:
            self.generation += 1

    def _evict(self) -> None:
        """Evict the least recently used bases while over the budget, never the last one (under the lock)."""
        total = sum(b.nbytes for b, _ in self._bases.values())
        while total > self.budget and len(self._bases) > 1:
            old_pid, (old, _) = self._bases.popitem(last=False)
            total -= old.nbytes
            log.info("evicted %s from the cache (budget %d bytes)", "/".join(old_pid), self.budget)

    def drop(self, predicate: Callable[[PartitionId], bool]) -> None:
        """Forget the bases whose id matches (e.g. a dropped space)."""
        with self._lock, self._changing():
            for pid in [p for p in self._bases if predicate(p)]:
                del self._bases[pid]
        self.follower.forget(predicate)

    def nbytes(self) -> int:
        return sum(b.nbytes for b, _ in list(self._bases.values()))

    # refreshing ---------------------------------------------------------------------------------------------
    def wake(self) -> None:
        """Ask the refresher to look now (called on snapshot notifications)."""
        self._wake.set()

    def _ensure_thread(self) -> None:
        self.follower.start()
        if self._thread is None and self.refresh_interval > 0:
            self._thread = threading.Thread(target=self._run, name="embcache-refresh", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self.follower.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        pubsub: Any = None
        subscribed: set[str] = set()
        while not self._stop.is_set():
            try:  # a snapshot notification wakes us early; otherwise poll every refresh_interval
                channels = {self.store.keys.events(pid[0]) for pid in list(self._bases)}
                if pubsub is None:
                    pubsub = self.store.pubsub()
                    subscribed = set()
                if channels - subscribed:
                    pubsub.subscribe(*(channels - subscribed))
                    subscribed |= channels
                # wait for a notification in short slices, so that close() and wake() are not kept waiting
                deadline = time.monotonic() + self.refresh_interval
                while not self._wake.is_set() and (left := deadline - time.monotonic()) > 0:
                    if pubsub.get_message(timeout=min(0.1, left)) is not None:
                        while pubsub.get_message(timeout=0) is not None:
                            pass
                        break
            except Exception as exc:  # noqa: BLE001 - no pub/sub (ACL, Redis away): fall back to polling
                log.debug("notifications unavailable: %s", exc)
                pubsub = None
                self._wake.wait(self.refresh_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.refresh()
            except EmbcacheError as exc:  # Redis away: keep serving what is loaded
                log.debug("refresh skipped: %s", exc)
            except Exception:  # the refresher must outlive any one bad partition
                log.exception("refresh failed")
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001
                pass

    def refresh(self) -> int:
        """Bring every cached base up to date; returns how many were replaced."""
        for hook in self.on_refresh:
            hook()
        self._no_graph.clear()  # look again on next use (a graph may have been published)
        entries = list(self._bases.items())
        if not entries:
            return 0
        replaced = 0
        for pid, (base, info) in entries:
            new = self.refreshed(pid, base, info)
            if new is not None and new is not base:
                with self._lock:
                    if self._bases.get(pid, (None,))[0] is base:
                        self._hook(pid, new)
                        with self._changing():
                            self._bases[pid] = (new, info)
                        replaced += 1
        if replaced:
            self.follower.sync()  # the overlays shrink to what the new bases do not cover, at once
        for pid, (base, info) in entries:  # delta segments published since (none where the log reads are ahead)
            if self._bases.get(pid, (None,))[0] is base:
                self._feed_segments(pid, base, info)
        return replaced

    def _feed_segments(self, pid: PartitionId, base: Any, info: SpaceInfo) -> None:
        view = self.follower.view(pid)
        if view is not None and isinstance(base, snapshot.HnswBase) and pid not in self.follower.frozen:
            segments = self._segments(self.keys(pid), base, info, view.pos)
            if segments:
                self.follower.feed(pid, segments)

    def refreshed(self, pid: PartitionId, base: Base, info: SpaceInfo) -> Base | None:
        """A newer base for ``pid`` if there is one (None if ``base`` is current)."""
        if pid[2] == GRAPH:
            graph = vgraph_io.read_manifest(self.store.r, self.store.keys, pid[0], pid[1])
            if graph is None or graph.generation == getattr(base, "generation", None):
                return None
            return self._load_graph(pid[0], pid[1], info, graph)
        pk = self.keys(pid)
        try:
            with translate_errors("refresh"):
                manifest = snapshots.read_manifest(self.store.r, pk)
        except SnapshotCorrupt:  # an unreadable pointer: keep serving what is loaded; reported once
            if self._refused.get(pk.tag) != "unreadable":
                self._load_snapshot(pk, info)
            manifest = None
        if manifest is not None and manifest.generation != getattr(base, "generation", None) \
                and self._refused.get(pk.tag) != manifest.sid:
            new = self._load_snapshot(pk, info, manifest)
            if new is not None:
                return new
        if not isinstance(base, ExactBase):
            return None
        if self.store.position(pk) == base.position:
            return None
        tail = self.store.read_tail(pk, base.position)
        if tail is None:
            return exact_base(self.store.read_partition(pk), info)
        if pos_key(tail.pos) <= pos_key(base.position):
            return None
        return base.with_changes(tail.pos, tail_overlay(tail, info))
