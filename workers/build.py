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
from dataclasses import dataclass
from typing import Any

import hnswlib
import numpy as np

from embcache.core import codec, snapshot
from embcache.core.errors import CorruptRecord, SnapshotCorrupt
from embcache.core.keys import PartitionKeys
from embcache.core.views import pos_key
from embcache.redis import snapshots
from embcache.redis.catalogue import Catalogue, SpaceRecord, VersionRecord
from embcache.redis.store import PartitionData, Store

__all__ = ["BuildResult", "build_snapshot", "COMPACT_RATIO"]

log = logging.getLogger("embcache.workers")
COMPACT_RATIO = 0.2  # rebuild from scratch when deleted slots pass this share of the index
BUILDER = f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class BuildResult:
    """What one build did."""

    partition: str
    kind: str  # "full", "incremental", "unchanged"
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
    previous = snapshots.read_manifest(r, pk)
    corrupt = r.hexists(pk.state, "corrupt")  # a reader refused the published snapshot: rebuild it in full
    full = full or bool(corrupt)
    if previous is not None and previous.pos == store.position(pk) and not full:
        return BuildResult(partition, "unchanged", previous.generation, previous.count, previous.pos, 0.0)
    data = None
    if vrec.state == "sealed":  # nothing may have changed since the seal: read it all and compare
        data = _verified(store, vrec, partition, pk)
        full = True
    state = None
    if previous is not None and not full and previous.dim == space.dim and previous.M == space.M:
        state = _incremental(store, space, pk, previous)
    kind = "incremental"
    if state is None:
        state = _full(store, space, pk, data)
        kind = "full"
    index, labels, ids, metas, pos, deleted, max_label, label, meta = state
    generation = (previous.generation if previous else 0) + 1
    chunks, manifest = snapshot.pack(
        index, labels, ids, metas, generation=generation, pos=pos, dim=space.dim, metric=space.metric, M=space.M,
        ef_construction=space.ef_construction, builder=BUILDER, build_seconds=time.perf_counter() - t0,
        deleted=deleted, max_label=max_label,
    )
    message = json.dumps({"version": version, "partition": partition, "generation": generation, "pos": pos})
    snapshots.publish(r, pk, chunks, manifest, previous, store.keys.events(space.name), message)
    _keep(pk.tag, Kept(manifest.sid, index, label, meta, manifest.nbytes))
    if pos_key(store.position(pk)) > pos_key(pos):
        store.mark_dirty(space.name, version, partition)  # writes landed while we built
    seconds = time.perf_counter() - t0
    log.info("%s build of %s: %d items, generation %d, %.2fs", kind, pk.tag, len(ids), generation, seconds)
    return BuildResult(partition, kind, generation, len(ids), pos, seconds)


# index, labels, ids, metadatas, log position, deleted, max label, id -> label, id -> metadata
State = tuple[hnswlib.Index, np.ndarray, list[str], list[Any], str, int, int, dict[str, int], dict[str, Any]]


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
    n = len(data.ids)
    mat = codec.decode_vectors(data.vectors, space.dim, space.dtype)
    index = _new_index(space, n + n // 4)
    labels = np.arange(n, dtype=np.int64)
    if n:
        index.add_items(mat, labels, num_threads=_threads())
    metas = [None if m is None else json.loads(m) for m in data.metadatas]
    return (index, labels, data.ids, metas, data.pos, 0, n - 1, dict(zip(data.ids, labels.tolist())),
            dict(zip(data.ids, metas)))


@dataclass
class Kept:
    """The index this worker process built last for a partition, kept so the next incremental build neither
    downloads nor parses the snapshot it just published (only valid while that snapshot is the current one)."""

    sid: str
    index: hnswlib.Index
    label: dict[str, int]
    meta: dict[str, Any]
    nbytes: int


_kept: OrderedDict[str, Kept] = OrderedDict()
KEEP_BYTES = int(os.environ.get("EMBCACHE_WORKER_KEEP_BYTES", str(4 << 30)))


def _keep(tag: str, kept: Kept) -> None:
    _kept[tag] = kept
    _kept.move_to_end(tag)
    while sum(k.nbytes for k in _kept.values()) > KEEP_BYTES and len(_kept) > 1:
        _kept.popitem(last=False)


def _incremental(store: Store, space: SpaceRecord, pk: PartitionKeys, previous: snapshot.Manifest) -> State | None:
    """Apply the log tail to the published snapshot; None when a full build is due instead."""
    kept = _kept.pop(pk.tag, None)  # taken out: it is about to change, and is put back only once published
    if kept is not None and kept.sid == previous.sid:
        index, label, meta = kept.index, kept.label, kept.meta
    else:
        try:
            base = snapshots.load(store.r, pk, ef=space.ef, for_update=True, manifest=previous)
        except SnapshotCorrupt as exc:
            log.warning("%s: %s; rebuilding in full", pk.tag, exc)
            return None
        if base is None:
            return None
        index, label = base.index, dict(base.label)
        meta = {id_: m for id_, m in zip(base.ids, base.metas)}
    tail = store.read_tail(pk, previous.pos, limit=1 << 30)
    if tail is None:
        return None
    index.set_num_threads(_threads())
    deleted = previous.deleted
    next_label = previous.max_label + 1
    new_ids, new_vecs, upd_labels, upd_vecs = [], [], [], []
    for id_, vec, m in zip(tail.ids, tail.vectors, tail.metadatas):
        if vec is None:
            lab = label.pop(id_, None)
            meta.pop(id_, None)
            if lab is not None:
                index.mark_deleted(lab)
                deleted += 1
            continue
        v = codec.decode_vectors([vec], space.dim, space.dtype)[0]
        meta[id_] = None if m is None else json.loads(m)
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
    return index, labels, ids, [meta[i] for i in ids], tail.pos, deleted, next_label - 1, label, meta
