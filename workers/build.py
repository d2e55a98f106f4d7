"""Building a partition's snapshot: full build, incremental update from the change-log tail, compaction.

``build_snapshot`` is what the RQ job runs. It is safe to run twice at once for one partition (the second
publication fails its generation check and is dropped), and safe to kill at any moment (unpublished chunks
expire; the pointer only ever moves to a complete, verified generation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, cast

import hnswlib
import numpy as np

from embcache.core import codec, delta, snapshot
from embcache.core.errors import CorruptRecord, SnapshotCorrupt
from embcache.core.keys import PartitionKeys
from embcache.core.views import pos_key
from embcache.redis import settings, snapshots
from embcache.redis.catalogue import Catalogue, SpaceRecord, VersionRecord
from embcache.redis.store import PartitionData, Store, Tail

from . import neighbours as nbl

__all__ = ["BuildResult", "build_snapshot", "COMPACT_RATIO"]

log = logging.getLogger("embcache.workers")
COMPACT_RATIO = 0.2  # rebuild from scratch when deleted slots pass this share of the index
BUILDER = f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class BuildResult:
    """What one build did."""

    partition: str
    kind: str  # "full", "incremental" (a new full snapshot from the last one), "delta", "unchanged"
    generation: int
    count: int
    pos: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _new_index(space: SpaceRecord, capacity: int) -> hnswlib.Index:
    index = hnswlib.Index(space=space.metric, dim=space.dim)
    index.init_index(max_elements=max(capacity, 16), M=space.M, ef_construction=space.ef_construction,
                     random_seed=100, allow_replace_deleted=True)
    index.set_num_threads(_threads())
    return index


def _previous(store: Store, space: SpaceRecord, pk: PartitionKeys) -> tuple[snapshot.Manifest | None, bytes | None,
                                                                            list[tuple[str, int]], int]:
    """The published snapshot a build starts from: ``(manifest or None, the pointer's raw bytes, chunk sets of an
    unusable pointer to expire, its generation)``. A pointer that does not parse, or was not built for this
    space, is replaced by a full build like a missing one, and its chunks (named in the state) expire."""
    r = store.r
    raw = r.get(pk.snap)
    if raw is None:
        return None, None, [], 0
    try:
        previous = snapshot.Manifest.from_json(raw)
        previous.check(space.dim, space.metric)
        return previous, raw, [], previous.generation
    except SnapshotCorrupt as exc:
        log.warning("%s: %s; rebuilding in full", pk.tag, exc)
    sid, n, gen = (x.decode(errors="replace") if x else "" for x in r.hmget(pk.state, "sid", "chunks", "generation"))
    stale = []
    if snapshot._SID_RE.fullmatch(sid) and n.isdigit() and int(n) <= 1 << 16:
        stale.append((sid, int(n)))
    return None, raw, stale, int(gen) if gen.isdigit() and len(gen) < 16 else 0


def build_snapshot(
    store: Store, space: SpaceRecord, version: str, partition: str, *, full: bool = False
) -> BuildResult:
    """Bring the partition's snapshot up to its change log and publish it.

    ``space`` is the validated record of the job's own space (every key is built from the job's arguments). A
    partition of a sealed version is published only when its contents still match the digest taken at seal
    time; otherwise :class:`CorruptRecord` is raised, the refusal is recorded in the partition's state, and the
    published snapshot stays as it was."""
    t0 = time.perf_counter()
    pk = store.keys.partition(space.name, version, partition)
    r = store.r
    vrec = Catalogue(store).get_version(space.name, version)
    snapshots.remove_uploads(r, pk)  # what builds killed before publication left behind
    previous, previous_raw, stale, generation = _previous(store, space, pk)
    # a reader reported the published snapshot as corrupt: verify it ourselves (anyone who may write the state
    # can write that report) rather than rebuilding in full every time it appears
    corrupt = r.hexists(pk.state, "corrupt")
    verified = None
    if corrupt and previous is not None and not full:
        _kept.pop(pk.tag, None)
        try:
            verified = snapshots.load(r, pk, ef=space.ef, dim=space.dim, metric=space.metric, for_update=True,
                                     manifest=previous)
        except SnapshotCorrupt as exc:
            log.warning("%s: the reported snapshot is corrupt (%s); rebuilding in full", pk.tag, exc)
            full = True
    position = store.position(pk)
    if previous is not None and pos_key(previous.pos) > pos_key(position):
        log.warning("%s: the snapshot claims log position %s, past the log (%s); rebuilding in full", pk.tag,
                    previous.pos, position)
        stale.append((previous.sid, previous.chunks))  # replaced like an unreadable one: no log trim at its position
        previous, verified = None, None
    if previous is not None and previous.pos == position and not full:
        if corrupt:  # verified above: the snapshot is intact
            if vrec.state == "sealed":  # and a sealed partition's items too (CorruptRecord if changed)
                _verified(store, vrec, partition, pk)
            r.hdel(pk.state, "corrupt")
        return BuildResult(partition, "unchanged", previous.generation, previous.count, previous.pos, 0.0)
    if previous is not None and previous_raw is not None and not full and not corrupt and vrec.state != "sealed":
        done = _delta(store, space, version, partition, pk, previous, previous_raw, t0)
        if done is not None:
            return done
    data = None
    if vrec.state == "sealed":  # nothing may have changed since the seal: read it all and compare
        data = _verified(store, vrec, partition, pk)
        full = True
    state = None
    merge: Kept | None = None  # the index kept, when this build publishes it as it stands (a merge)
    if previous is not None and not full and previous.M == space.M:
        held = _kept.get(pk.tag)
        ahead = held is not None and held.sid == previous.sid and bool(held.at) \
            and (held.partial or pos_key(held.at) > pos_key(previous.pos))
        if ahead and held is not None and not held.partial and verified is None and data is None:
            # a merge: the index holds the snapshot and the segments up to the boundary it has reached; it is
            # published as it is, and the segments after that boundary carry over to the new snapshot
            merge = _kept.pop(pk.tag)
            state = _kept_state(merge)
        else:
            if ahead:  # part of a segment in it: a tail from the snapshot cannot resume it exactly
                _kept.pop(pk.tag, None)
            state = _incremental(store, space, pk, previous, verified)
    kind = "incremental"
    if state is None:
        state = _full(store, space, pk, data)
        kind = "full"
    if vrec.state != "sealed" and merge is None:
        state = _catch_up(store, space, pk, state)
    index, labels, ids, metas, pos, deleted, max_label, label, meta, lists = state
    generation += 1
    chunks, manifest = snapshot.pack(
        index, labels, ids, metas, generation=generation, pos=pos, dim=space.dim, metric=space.metric, M=space.M,
        ef_construction=space.ef_construction, builder=BUILDER, build_seconds=time.perf_counter() - t0,
        deleted=deleted, max_label=max_label, neighbours=nbl.as_rows(lists, labels) if lists is not None else None,
    )
    message = json.dumps({"version": version, "partition": partition, "generation": generation, "pos": pos})
    merged, carried, chain_raw = _split_chain(store, space, pk, previous, pos)
    if merge is not None and [t.pos for t in merge.pending] != [seg.pos for seg in carried]:
        merge = None  # the chain is not what this process published after its index: build it again from the log
    if merge is None:  # built from the log: it covers every segment
        merged, carried = merged + [(seg.sid, seg.chunks) for seg in carried], []
    snapshots.publish(r, pk, chunks, manifest, previous, store.keys.events(space.name), message,
                     previous_raw=previous_raw, stale=[*stale, *merged])
    kept = Kept(manifest.sid, index, label, meta, manifest.nbytes, lists, at=manifest.pos, deleted=deleted,
                max_label=max_label)
    # the new snapshot's chain: a merge's carried segments, or an empty one from a worker that keeps its index
    # (then the next build, here, is a segment, and the dispatcher waits less for it); None: no chain
    pending = merge.pending if merge is not None else [] if _deltas_for(space, manifest) \
        and settings.keeps_indexes() and vrec.state != "sealed" else None
    try:
        if pending is not None:
            snapshots.publish_delta(r, pk, [], delta.Chain(manifest.sid, manifest.pos, tuple(carried)),
                                    snap_raw=manifest.to_json().encode(), chain_raw=chain_raw,
                                    channel=store.keys.events(space.name), message=message)
            kept.pending = pending
        _keep(pk.tag, kept)
    except Exception as exc:  # noqa: BLE001 - a conflict, or a reply lost: what was published is not known, so
        log.warning("%s: the chain of generation %d was not published (%s); the next build starts afresh",
                    pk.tag, generation, exc)  # nothing is kept
    if pos_key(store.position(pk)) > pos_key(pos):
        store.mark_dirty(space.name, version, partition)  # writes landed while we built
    seconds = time.perf_counter() - t0
    log.info("%s build of %s: %d items, generation %d, %.2fs", kind, pk.tag, len(ids), generation, seconds)
    return BuildResult(partition, kind, generation, len(ids), pos, seconds)


# index, labels, ids, metadatas, log position, deleted, max label, id -> label, id -> metadata, neighbour lists
State = tuple[hnswlib.Index, np.ndarray, list[str], list[Any], str, int, int, dict[str, int], dict[str, Any],
              "nbl.Lists | None"]


def _verified(store: Store, vrec: VersionRecord, partition: str, pk: PartitionKeys) -> PartitionData:
    """The sealed partition's contents, if they match the digest recorded when its version was sealed."""
    position = store.position(pk)
    known = store.r.hget(pk.state, "refused")
    if known is not None:  # refused before at this very position: do not read it all again
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            if json.loads(known)["pos"] == position:
                raise CorruptRecord(f"{pk.tag}: {json.loads(known)['reason']}")
    data = store.read_partition(pk)
    sealed = vrec.digests.get(partition)
    reason = None
    if sealed is None:
        reason = "sealed without a recorded digest; refusing to publish it"
    elif codec.partition_digest(data.ids, data.vectors, data.metadatas) != sealed.sha256:
        reason = (f"changed since its version was sealed ({len(data.ids)} items, {sealed.count} at seal time); "
                  "refusing to publish it")
    if reason is not None:
        store.r.hset(pk.state, "refused", json.dumps({"pos": data.pos, "reason": reason}))
        log.error("%s: %s", pk.tag, reason)
        raise CorruptRecord(f"{pk.tag}: {reason}")
    return data


def _full(store: Store, space: SpaceRecord, pk: PartitionKeys, data: PartitionData | None = None) -> State:
    if data is None:
        data = store.read_partition(pk)
    mat, bad = codec.decode_stored(data.vectors, space.dim, space.dtype, pk.tag)  # corrupt items: left out
    skip = set(bad)
    ids = [id_ for i, id_ in enumerate(data.ids) if i not in skip]
    n = len(ids)
    index = _new_index(space, n + n // 4)
    labels = np.arange(n, dtype=np.int64)
    if n:
        index.add_items(mat, labels, num_threads=_threads())
    metas = [codec.parse_stored_metadata(m, pk.tag) for i, m in enumerate(data.metadatas) if i not in skip]
    w = nbl.list_width(space.neighbours, n)
    lists = nbl.full_lists(index, mat, labels, n, w, space.ef, _threads()) if w else None
    return (index, labels, ids, metas, data.pos, 0, n - 1, dict(zip(ids, labels.tolist())), dict(zip(ids, metas)),
            lists)


@dataclass
class Kept:
    """The index this worker process built last for a partition, kept so the next incremental build neither
    downloads nor parses the snapshot it just published (only valid while that snapshot is the current one)."""

    sid: str
    index: hnswlib.Index
    label: dict[str, int]
    meta: dict[str, Any]
    nbytes: int
    lists: "nbl.Lists | None" = None
    at: str = ""  # the log position the index is at (past the snapshot's by the deltas published since)
    deleted: int = 0
    max_label: int = 0
    pending: list[Tail] = field(default_factory=list)  # segments this process published, not in the index yet
    partial: bool = False  # pending[0] is what is left of a segment the index holds part of

    @property
    def end(self) -> str:
        """Where the chain this process published ends."""
        return self.pending[-1].pos if self.pending else self.at


@dataclass(frozen=True)
class _Resume:
    """Where an index being built stands (what ``_incremental`` reads of a manifest), to add a tail to it."""

    sid: str
    pos: str
    deleted: int
    max_label: int


#: Seconds of inserts a delta build does after publishing its segment (at least one part, so the index always
#: moves), and the rows added at a time, so that the budget holds however large a segment is.
INDEX_BUDGET = float(os.environ.get("EMBCACHE_DELTA_INDEX_BUDGET", "1.0"))
INDEX_PART = max(1, int(os.environ.get("EMBCACHE_DELTA_INDEX_PART", "256")))
CATCH_UP_ROUNDS = 8  # tails a build adds before it publishes (each one smaller than the last)
_CATCH_UP = "catch-up"  # the Kept sid of an index being caught up (no published snapshot has it)


def _catch_up(store: Store, space: SpaceRecord, pk: PartitionKeys, state: State) -> State:
    """Add the writes that landed while the index was built before publishing it, as long as each round adds
    fewer items than the one before (issue 12.6: a build overtaken by a bulk load publishes once, at its end,
    instead of a generation the next build supersedes at once; a stream that writes as fast as the index takes it
    is published after one more round, since its tails do not shrink). The rounds are incremental builds from the
    state in memory, at most ``CATCH_UP_ROUNDS``."""
    last = len(state[2])  # the build's own work, in items
    for _ in range(CATCH_UP_ROUNDS):
        index, _labels, _ids, _metas, pos, deleted, max_label, label, meta, lists = state
        if store.unindexed(pk, pos, 1) == 0:
            break
        _kept[pk.tag] = Kept(_CATCH_UP, index, label, meta, 0, lists)
        resumed = _incremental(store, space, pk, cast(snapshot.Manifest, _Resume(_CATCH_UP, pos, deleted, max_label)))
        if resumed is None:  # compaction due (the index may have taken the tail's deletes): build it afresh
            _kept.pop(pk.tag, None)
            return _full(store, space, pk)
        state = resumed
        work = (state[6] - max_label) + abs(state[5] - deleted)  # new labels, tombstones made or reused
        log.info("%s: caught up %s (%d items) before publishing", pk.tag, state[4], work)
        if work >= last:
            break  # not shrinking: publish what is built
        last = work
    return state


_kept: OrderedDict[str, Kept] = OrderedDict()
KEEP_BYTES = int(os.environ.get("EMBCACHE_WORKER_KEEP_BYTES", str(4 << 30)))


def _keep(tag: str, kept: Kept) -> None:
    _kept[tag] = kept
    _kept.move_to_end(tag)
    while sum(k.nbytes for k in _kept.values()) > KEEP_BYTES and len(_kept) > 1:
        _kept.popitem(last=False)


def _incremental(store: Store, space: SpaceRecord, pk: PartitionKeys, previous: snapshot.Manifest,
                 base: snapshot.HnswBase | None = None, tail: Tail | None = None) -> State | None:
    """Apply the log tail (``tail``, when it was read already) to the published snapshot (``base``, when it was
    loaded already); None when a full build is due instead."""
    kept = _kept.pop(pk.tag, None)  # taken out: it is about to change, and is put back only once published
    if base is None and kept is not None and kept.sid == previous.sid:
        index, label, meta, lists = kept.index, kept.label, kept.meta, kept.lists
    else:
        if base is None:
            try:
                base = snapshots.load(store.r, pk, ef=space.ef, dim=space.dim, metric=space.metric, for_update=True,
                                     manifest=previous)
            except SnapshotCorrupt as exc:
                log.warning("%s: %s; rebuilding in full", pk.tag, exc)
                return None
        if base is None:
            return None
        index, label = base.index, dict(base.label)
        meta = {id_: m for id_, m in zip(base.ids, base.metas)}
        lists = (base.nb_labels, base.nb_dists) if base.nb_labels is not None and base.nb_dists is not None else None
    if tail is None:
        tail = store.read_tail(pk, previous.pos, limit=1 << 30)
    if tail is None:
        return None
    index.set_num_threads(_threads())
    deleted = previous.deleted
    next_label = previous.max_label + 1
    new_ids, new_vecs, upd_labels, upd_vecs, gone = [], [], [], [], []
    for id_, vec, m in zip(tail.ids, tail.vectors, tail.metadatas):
        decoded, bad = codec.decode_stored([vec], space.dim, space.dtype, pk.tag) if vec is not None else (None, [0])
        if bad:  # deleted, or a corrupt stored vector (treated as absent, as readers treat it)
            lab = label.pop(id_, None)
            meta.pop(id_, None)
            if lab is not None:
                index.mark_deleted(lab)
                deleted += 1
                gone.append(lab)
            continue
        v = decoded[0]  # type: ignore[index]
        meta[id_] = codec.parse_stored_metadata(m, pk.tag)
        if id_ in label:
            upd_labels.append(label[id_])
            upd_vecs.append(v)
        else:
            label[id_] = next_label
            next_label += 1
            new_ids.append(label[id_])
            new_vecs.append(v)
    live = len(label)
    if deleted > COMPACT_RATIO * max(live + deleted, 1):
        return None  # compaction: too many tombstones
    if upd_labels:
        index.add_items(np.stack(upd_vecs), np.asarray(upd_labels), num_threads=_threads())
    if new_ids:
        reused = min(len(new_ids), deleted)
        needed = index.get_current_count() + len(new_ids) - reused
        if needed > index.get_max_elements():
            index.resize_index(needed + needed // 4)
        index.add_items(np.stack(new_vecs), np.asarray(new_ids), num_threads=_threads(), replace_deleted=True)
        deleted -= reused
    ids = list(label)
    labels = np.fromiter((label[i] for i in ids), dtype=np.int64, count=len(ids))
    w = nbl.list_width(space.neighbours, len(ids))
    if w:
        lists = nbl.update_lists(index, lists, labels, gone, upd_labels,
                                 new_ids, next_label, w, space.ef, _threads())
    else:
        lists = None
    return index, labels, ids, [meta[i] for i in ids], tail.pos, deleted, next_label - 1, label, meta, lists


def _kept_state(kept: Kept) -> State:
    """A kept index as a build's state, at the position it is at."""
    ids = list(kept.label)
    labels = np.fromiter((kept.label[i] for i in ids), dtype=np.int64, count=len(ids))
    return (kept.index, labels, ids, [kept.meta[i] for i in ids], kept.at, kept.deleted, kept.max_label, kept.label,
            kept.meta, kept.lists)


def _deltas_for(space: SpaceRecord, manifest: snapshot.Manifest) -> bool:
    """Whether a snapshot is extended by delta segments rather than rewritten (see the settings)."""
    return manifest.nbytes >= settings.DELTA_FROM_BYTES and settings.DELTA_SHARE > 0 and not space.neighbours \
        and manifest.M == space.M


def _tail_bytes(tail: Tail) -> int:
    return sum(len(v) for v in tail.vectors if v) + sum(len(m) for m in tail.metadatas if m) + 16 * len(tail.ids) \
        + sum(len(i) for i in tail.ids)


def _delta_limit(count: int) -> int:
    return max(settings.DELTA_MIN_ROWS, int(settings.DELTA_SHARE * count)) if settings.DELTA_SHARE > 0 else -1


def _read_chain(store: Store, space: SpaceRecord, pk: PartitionKeys,
                previous: snapshot.Manifest | None) -> tuple[delta.Chain | None, delta.Chain | None, bytes | None]:
    """The chain key: the chain that extends ``previous`` (or None), one of another snapshot (or None: its
    chunks are to expire), and the key's raw bytes (what a publication compares)."""
    raw = store.r.get(pk.delta)
    if raw is None:
        return None, None, None
    try:
        chain = delta.Chain.from_json(raw, space.dim * codec.DTYPES[space.dtype].itemsize)
    except SnapshotCorrupt as exc:
        log.warning("%s: %s; it is replaced", pk.tag, exc)
        return None, None, raw
    if previous is not None and chain.base == previous.sid and chain.start == previous.pos:
        return chain, None, raw
    return None, chain, raw


def _split_chain(store: Store, space: SpaceRecord, pk: PartitionKeys, previous: snapshot.Manifest | None,
                 pos: str) -> tuple[list[tuple[str, int]], list[delta.Segment], bytes | None]:
    """What becomes of the chain key when a snapshot at ``pos`` replaces ``previous``: the chunk sets to expire
    with ``previous`` (the segments it covers, and every segment of a chain of an older snapshot), the segments
    after ``pos`` (they extend the new snapshot: a merge at a segment boundary), and the key's raw bytes."""
    chain, stale, raw = _read_chain(store, space, pk, previous)
    if chain is None:
        return [(seg.sid, seg.chunks) for seg in stale.segments] if stale is not None else [], [], raw
    after = [seg for seg in chain.segments if pos_key(seg.start) >= pos_key(pos)]
    if after and after[0].start != pos:  # not at a boundary (a snapshot built from the log): start afresh
        after = []
    return [(seg.sid, seg.chunks) for seg in chain.segments if seg not in after], after, raw


def _delta(store: Store, space: SpaceRecord, version: str, partition: str, pk: PartitionKeys,
           previous: snapshot.Manifest, previous_raw: bytes, t0: float) -> BuildResult | None:
    """Publish the log tail after the chain (or the snapshot) as one more delta segment, then add published
    segments to the index kept in memory for up to :data:`INDEX_BUDGET` seconds (a part at a time, in order: the
    index lags the chain when inserts are slower than writes, and publication does not wait for it). None when a
    full snapshot is due instead: a merge (the index holds more than the limit's rows past the snapshot and is at
    a segment boundary: the caller publishes it as it stands), a small snapshot, a tail larger than the limit (a
    bulk load), neighbour lists (they are in full snapshots only), or an index this process does not hold for
    this chain (a restarted worker merges from the log, which is never trimmed past the snapshot). A chain of
    :data:`~embcache.core.delta.MAX_SEGMENTS` takes no more segment until a merge."""
    if not _deltas_for(space, previous):
        return None
    found, stale, chain_raw = _read_chain(store, space, pk, previous)
    chain = found if found is not None else delta.Chain(previous.sid, previous.pos)
    kept = _kept.get(pk.tag)
    # the index kept must be this chain's: at one of its boundaries, with exactly its segments after it pending
    # (a publication whose reply was lost would leave a segment in the chain that the index never gets)
    after = [seg.pos for seg in chain.segments if kept is not None and pos_key(seg.pos) > pos_key(kept.at)]
    if kept is None or kept.sid != previous.sid or kept.end != chain.pos or [t.pos for t in kept.pending] != after:
        _kept.pop(pk.tag, None)
        return None
    tail = store.read_tail(pk, chain.pos, limit=1 << 30)
    limit = _delta_limit(previous.count)
    if tail is None or len(tail.ids) > min(limit, delta.MAX_SEGMENT_ROWS) \
            or _tail_bytes(tail) > delta.MAX_SEGMENT_BYTES:  # a bulk load: one new snapshot, not a segment as large
        return None
    new = tail.pos != chain.pos and len(chain.segments) < delta.MAX_SEGMENTS
    if new:  # published first, indexed after: readers need the rows, not our graph
        width = space.dim * codec.DTYPES[space.dtype].itemsize
        chunks, segment = delta.pack_segment(previous.generation, chain.pos, tail.pos, tail.ids, tail.vectors,
                                             tail.metadatas, width)
        message = json.dumps({"version": version, "partition": partition, "generation": previous.generation,
                              "pos": tail.pos, "delta": len(chain.segments) + 1})
        try:
            snapshots.publish_delta(store.r, pk, chunks, chain.extended(segment), snap_raw=previous_raw,
                                    chain_raw=chain_raw, channel=store.keys.events(space.name), message=message)
        except Exception:  # a conflict (another build published), or a reply lost: start afresh next time
            _kept.pop(pk.tag, None)
            raise
        if stale is not None:  # the chain key held an older snapshot's chain: its chunks expire now
            snapshots.expire_segments(store.r, pk, stale.segments)
        chain = chain.extended(segment)
        kept.pending.append(tail)
    published = time.perf_counter() - t0

    def merge_due(k: Kept) -> bool:
        """At a boundary, and the index holds more rows past the snapshot than the limit (or the chain is full
        and the index is at its end: nothing else can move it)."""
        indexed = sum(seg.rows for seg in chain.segments if pos_key(seg.pos) <= pos_key(k.at))
        full_chain = len(chain.segments) >= delta.MAX_SEGMENTS and not k.pending
        return not k.partial and pos_key(k.at) > pos_key(previous.pos) and (indexed > limit or full_chain)

    if merge_due(kept):
        return None
    if tail.pos == chain.pos and not kept.pending:
        return BuildResult(partition, "unchanged", previous.generation, len(kept.label), chain.pos, 0.0)
    parts = 0
    while kept.pending and (parts == 0 or time.perf_counter() - t0 < INDEX_BUDGET):
        parts += 1
        # a segment's rows are distinct ids, so adding them a part at a time ends where adding them at once does;
        # the index is at a log position (what a merge needs) only between segments
        seg = kept.pending[0]
        part = Tail(seg.pos, seg.ids[:INDEX_PART], seg.vectors[:INDEX_PART], seg.metadatas[:INDEX_PART])
        rest = Tail(seg.pos, seg.ids[INDEX_PART:], seg.vectors[INDEX_PART:], seg.metadatas[INDEX_PART:])
        state = _incremental(store, space, pk, cast(snapshot.Manifest, _Resume(previous.sid, kept.at, kept.deleted,
                                                                                kept.max_label)), tail=part)
        if state is None:  # compaction due (the index is dropped): the next build is a full one
            store.mark_dirty(space.name, version, partition)
            return BuildResult(partition, "delta", previous.generation, len(kept.label), chain.pos, published)
        index, _labels, _ids, _metas, _pos, deleted, max_label, label, meta, lists = state
        pending, at = kept.pending, kept.at
        if rest.ids:
            pending[0] = rest
        else:
            pending.pop(0)
            at = seg.pos
        _keep(pk.tag, Kept(previous.sid, index, label, meta, previous.nbytes, lists, at=at, deleted=deleted,
                           max_label=max_label, pending=pending, partial=bool(rest.ids)))
        kept = _kept[pk.tag]
        if merge_due(kept):
            return None
    if kept.pending or pos_key(store.position(pk)) > pos_key(chain.pos) or not new and tail.pos != chain.pos:
        store.mark_dirty(space.name, version, partition)  # more to index, or writes landed meanwhile
    seconds = time.perf_counter() - t0
    log.info("delta of %s: %d rows (%d in the chain), published in %.2fs; index at %s, %d segments behind, "
             "%.2fs", pk.tag, len(tail.ids) if new else 0, chain.rows, published, kept.at, len(kept.pending), seconds)
    return BuildResult(partition, "delta", previous.generation, len(kept.label), chain.pos, seconds)
