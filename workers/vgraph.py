"""Building the version graph: one hnswlib index over every partition of a version (see embcache.core.vgraph).

``update_version_graph`` runs after every partition build (workers/jobs.py). One worker at a time updates a
version's graph (a lease in the version's slot); a build that finds the lease taken sets the version's
*dirty* flag, and the holder, after publishing, builds again while the flag is set, so no change is left out:
the holder clears the flag before it reads the partitions, and a newcomer sets it before it asks for the lease.

The graph reads the partitions' data and change logs, not their snapshots, so it may run ahead of them. An
update is incremental from the positions the published graph covers (kept in this process between builds, like
partition snapshots); a partition new to the graph, or whose log no longer reaches back, is read in full;
tombstones past 20 % rebuild the graph from scratch. A version of one partition has no version graph (its
partition snapshot is the same index).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import hnswlib
import numpy as np

from embcache.core import codec
from embcache.core.snapshot import CHUNK_BYTES
from embcache.core.vgraph import pack_version
from embcache.core.views import pos_key
from embcache.redis import vgraph as vg_io
from embcache.redis.catalogue import SpaceRecord
from embcache.redis.store import Store

from .build import BUILDER, COMPACT_RATIO, _new_index, _threads

__all__ = ["build_version_graph", "update_version_graph", "GraphResult"]

log = logging.getLogger("embcache.workers")
LEASE_MS = 30_000
MAX_ROUNDS = 20  # builds one update_version_graph call may run while others keep marking the graph dirty


@dataclass
class GraphResult:
    kind: str  # "full", "incremental", "unchanged", "single-partition"
    generation: int
    count: int
    partitions: int
    seconds: float


@dataclass
class _Kept:
    sid: str
    index: hnswlib.Index
    label: dict[str, int]
    meta: dict[str, Any]
    part: dict[str, str]
    nbytes: int


_kept: OrderedDict[str, _Kept] = OrderedDict()
KEEP_BYTES = int(os.environ.get("EMBCACHE_WORKER_KEEP_BYTES", str(4 << 30)))


def update_version_graph(store: Store, space: SpaceRecord, version: str) -> GraphResult | None:
    """Bring the version graph up to every partition's log, unless another worker is on it (it then builds
    again for us). Returns the last build's result, None when another worker holds the lease."""
    r, keys = store.r, store.keys
    lease, dirty = keys.version_graph_lease(space.name, version), keys.version_graph_dirty(space.name, version)
    r.set(dirty, "1", px=LEASE_MS * 4)
    result = None
    for _ in range(MAX_ROUNDS):
        if not r.set(lease, BUILDER, nx=True, px=LEASE_MS):
            return result  # the holder will see the dirty flag after its build
        stop = threading.Event()
        beat = threading.Thread(target=_beat, args=(r, lease, stop), daemon=True)
        beat.start()
        try:
            r.delete(dirty)
            result = build_version_graph(store, space, version)
        except vg_io.GraphConflict:
            r.set(dirty, "1", px=LEASE_MS * 4)  # someone published meanwhile: build again on top of theirs
        finally:
            stop.set()
            beat.join()
            r.delete(lease)
        if not r.exists(dirty):
            return result
    return result


def _beat(r: Any, key: str, stop: threading.Event) -> None:
    while not stop.wait(LEASE_MS / 3000):
        r.pexpire(key, LEASE_MS)


def build_version_graph(store: Store, space: SpaceRecord, version: str, *, full: bool = False) -> GraphResult:
    """Build or update the version graph of ``version`` and publish it."""
    t0 = time.perf_counter()
    r, keys = store.r, store.keys
    parts = sorted(m.decode() for m in r.smembers(keys.parts(space.name, version)))
    if len(parts) < 2:
        return GraphResult("single-partition", 0, 0, len(parts), 0.0)
    previous = vg_io.read_manifest(r, keys, space.name, version)
    positions = {p: store.position(keys.partition(space.name, version, p)) for p in parts}
    if previous is not None and previous.parts == positions and not full:
        return GraphResult("unchanged", previous.generation, previous.count, len(parts), 0.0)
    tag = f"{space.name}/{version}"
    state = None
    if previous is not None and not full and previous.dim == space.dim and previous.M == space.M:
        state = _incremental(store, space, version, parts, previous, tag)
    kind = "incremental"
    if state is None:
        state, kind = _full(store, space, version, parts), "full"
    index, label, meta, part, covered, deleted, max_label = state
    names = sorted(covered)
    where = {n: i for i, n in enumerate(names)}
    ids = list(label)
    labels = np.fromiter((label[i] for i in ids), dtype=np.int64, count=len(ids))
    part_idx = np.fromiter((where[part[i]] for i in ids), dtype=np.int32, count=len(ids))
    generation = (previous.generation if previous else 0) + 1
    chunks, manifest = pack_version(
        index, labels, part_idx, ids, [meta[i] for i in ids], generation=generation, parts=covered, dim=space.dim,
        metric=space.metric, M=space.M, ef_construction=space.ef_construction, builder=BUILDER,
        build_seconds=time.perf_counter() - t0, deleted=deleted, max_label=max_label, chunk_bytes=CHUNK_BYTES,
    )
    message = json.dumps({"version": version, "graph": True, "generation": generation})
    vg_io.publish(r, keys, space.name, version, chunks, manifest, previous, message)
    _keep(tag, _Kept(manifest.sid, index, label, meta, part, manifest.nbytes))
    seconds = time.perf_counter() - t0
    log.info("%s build of the version graph of %s: %d items in %d partitions, generation %d, %.2fs", kind, tag,
             len(ids), len(names), generation, seconds)
    return GraphResult(kind, generation, len(ids), len(names), seconds)


# index, id -> label, id -> metadata, id -> partition, partition -> position covered, deleted slots, max label
State = tuple[hnswlib.Index, dict[str, int], dict[str, Any], dict[str, str], dict[str, str], int, int]


def _full(store: Store, space: SpaceRecord, version: str, parts: list[str]) -> State:
    ids: list[str] = []
    blobs: list[bytes] = []
    meta: dict[str, Any] = {}
    part: dict[str, str] = {}
    covered: dict[str, str] = {}
    for p in parts:
        data = store.read_partition(store.keys.partition(space.name, version, p))
        covered[p] = data.pos
        for i, v, m in zip(data.ids, data.vectors, data.metadatas):
            if i in part:  # an id in two partitions (a documented race of concurrent writers): keep one
                continue
            ids.append(i)
            blobs.append(v)
            meta[i] = None if m is None else json.loads(m)
            part[i] = p
    n = len(ids)
    index = _new_index(space, n + n // 4)
    if n:
        index.add_items(codec.decode_vectors(blobs, space.dim, space.dtype), np.arange(n), num_threads=_threads())
    return index, dict(zip(ids, range(n))), meta, part, covered, 0, n - 1


def _incremental(store: Store, space: SpaceRecord, version: str, parts: list[str], previous: Any,
                 tag: str) -> State | None:
    kept = _kept.pop(tag, None)
    if kept is not None and kept.sid == previous.sid:
        index, label, meta, part = kept.index, kept.label, kept.meta, kept.part
    else:
        try:
            base = vg_io.load(store.r, store.keys, space.name, version, ef=space.ef, for_update=True, manifest=previous)
        except Exception as exc:  # noqa: BLE001 - corrupt or unreadable: rebuild in full
            log.warning("version graph of %s: %s; rebuilding in full", tag, exc)
            return None
        if base is None:
            return None
        index, label = base.index, dict(base.label)
        meta = dict(zip(base.ids, base.metas))
        part = {i: base.names[int(base.part_of[lab])] for i, lab in label.items()}
    covered = dict(previous.parts)
    deleted, next_label = previous.deleted, previous.max_label + 1
    changes: list[tuple[str, str, bytes | None, bytes | None]] = []  # partition, id, vector, metadata
    for p in parts:
        pk = store.keys.partition(space.name, version, p)
        since = covered.get(p)
        tail = store.read_tail(pk, since, limit=1 << 30) if since is not None else None
        if tail is not None:
            if pos_key(tail.pos) > pos_key(since):
                changes += [(p, i, v, m) for i, v, m in zip(tail.ids, tail.vectors, tail.metadatas)]
                covered[p] = tail.pos
            continue
        data = store.read_partition(pk)  # new to the graph, or its log no longer reaches back: in full
        now = set(data.ids)
        changes += [(p, i, None, None) for i, q in part.items() if q == p and i not in now]
        changes += [(p, i, v, m) for i, v, m in zip(data.ids, data.vectors, data.metadatas)]
        covered[p] = data.pos
    upd_labels, upd_vecs, new_labels, new_vecs = [], [], [], []
    for p, id_, vec, m in changes:
        if vec is None:
            if part.get(id_) == p:  # a delete in the partition that holds it (an id may have moved)
                index.mark_deleted(label.pop(id_))
                meta.pop(id_, None)
                part.pop(id_)
                deleted += 1
            continue
        v = codec.decode_vectors([vec], space.dim, space.dtype)[0]
        meta[id_] = None if m is None else json.loads(m)
        part[id_] = p
        if id_ in label:
            upd_labels.append(label[id_])
            upd_vecs.append(v)
        else:
            label[id_] = next_label
            new_labels.append(next_label)
            new_vecs.append(v)
            next_label += 1
    if deleted > COMPACT_RATIO * max(len(label) + deleted, 1):
        return None  # compaction
    index.set_num_threads(_threads())
    if upd_labels:
        index.add_items(np.stack(upd_vecs), np.asarray(upd_labels), num_threads=_threads())
    if new_labels:
        reused = min(len(new_labels), deleted)
        needed = index.get_current_count() + len(new_labels) - reused
        if needed > index.get_max_elements():
            index.resize_index(needed + needed // 4)
        index.add_items(np.stack(new_vecs), np.asarray(new_labels), num_threads=_threads(), replace_deleted=True)
        deleted -= reused
    return index, label, meta, part, covered, deleted, next_label - 1


def _keep(tag: str, kept: _Kept) -> None:
    _kept[tag] = kept
    _kept.move_to_end(tag)
    while sum(k.nbytes for k in _kept.values()) > KEEP_BYTES and len(_kept) > 1:
        _kept.popitem(last=False)
