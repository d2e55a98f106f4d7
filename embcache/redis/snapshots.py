"""Snapshot I/O: read a partition's manifest and chunks from Redis, write chunks and publish a new generation.

The format, its verification and the loaded base are :mod:`embcache.core.snapshot`; its docstring describes
the publication protocol these functions follow.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from ..core.errors import PublishConflict, SnapshotCorrupt
from ..core.keys import PartitionKeys
from ..core.snapshot import HnswBase, Manifest, unpack
from .store import lua_error

__all__ = ["read_manifest", "load", "write_chunks", "publish", "ORPHAN_TTL", "GRACE_SECONDS"]

ORPHAN_TTL = 3600  # seconds an unpublished chunk lives (a builder that died)
GRACE_SECONDS = 120  # seconds a superseded generation stays readable


def read_manifest(r: Any, pk: PartitionKeys) -> Manifest | None:
    raw = r.get(pk.snap)
    return None if raw is None else Manifest.from_json(raw)


def load(r: Any, pk: PartitionKeys, *, ef: int, for_update: bool = False,
         manifest: Manifest | None = None) -> HnswBase | None:
    """The partition's published snapshot, verified; None when there is none."""
    for _ in range(3):  # the pointer may move (and old chunks expire) between reading it and the chunks
        manifest = manifest or read_manifest(r, pk)
        if manifest is None:
            return None
        keys = [pk.chunk(manifest.sid, i) for i in range(manifest.chunks)]
        chunks = r.mget(keys) if keys else []
        if any(c is None for c in chunks):
            latest = read_manifest(r, pk)
            if latest is not None and latest.generation != manifest.generation:
                manifest = latest
                continue
        return unpack(chunks, manifest, ef=ef, for_update=for_update)
    raise SnapshotCorrupt(f"snapshot of {pk.tag} kept moving while it was read")


def write_chunks(r: Any, pk: PartitionKeys, sid: str, chunks: list[bytes]) -> None:
    """Store a new snapshot's chunks, expiring unless published."""
    pipe = r.pipeline(transaction=False)
    for i, c in enumerate(chunks):
        pipe.set(pk.chunk(sid, i), c, ex=ORPHAN_TTL)
    pipe.execute()


def publish(
    r: Any, pk: PartitionKeys, chunks: list[bytes], manifest: Manifest, previous: Manifest | None, channel: str,
    message: str, grace: int = GRACE_SECONDS,
) -> None:
    """Write the chunks, then swap the pointer atomically (see the module docstring)."""
    write_chunks(r, pk, manifest.sid, chunks)
    new_keys = [pk.chunk(manifest.sid, i) for i in range(len(chunks))]
    old_keys = [pk.chunk(previous.sid, i) for i in range(previous.chunks)] if previous else []
    keys = [pk.snap, pk.state, pk.log, *new_keys, *old_keys]
    args = [manifest.to_json(), previous.generation if previous else 0, len(new_keys), grace,
            previous.pos if previous else "", channel, message]
    try:
        r.fcall("emb_publish", len(keys), *keys, *args)
    except ResponseError as exc:
        err = lua_error(exc)
        if isinstance(err, PublishConflict):
            r.delete(*new_keys)
            raise err from None
        raise
