"""Snapshot I/O: read a partition's manifest and chunks from Redis, write chunks and publish a new generation.

The format, its verification and the loaded base are :mod:`embcache.core.snapshot`; its docstring describes
the publication protocol these functions follow. Here are the checks that need Redis: the manifest against
the log's last entry, and the bookkeeping of uploads that a build killed before publication leaves behind.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from ..core.errors import PublishConflict, SnapshotCorrupt
from ..core.keys import PartitionKeys
from ..core.snapshot import UPLOAD_FIELD, HnswBase, Manifest, pending_uploads, unpack
from .store import lua_error

__all__ = ["read_manifest", "load", "write_chunks", "publish", "remove_uploads", "check_position",
           "last_log_position", "ORPHAN_TTL", "GRACE_SECONDS"]

ORPHAN_TTL = 600  # seconds an unpublished chunk lives (a builder that died); the next build removes it sooner
GRACE_SECONDS = 120  # seconds a superseded generation stays readable


def read_manifest(r: Any, pk: PartitionKeys) -> Manifest | None:
    """The published manifest, verified on its own (:class:`SnapshotCorrupt` if unreadable); None if none."""
    raw = r.get(pk.snap)
    return None if raw is None else Manifest.from_json(raw)


def last_log_position(r: Any, pk: PartitionKeys) -> str:
    """The id of the partition log's last entry ('0-0' for an empty log)."""
    last = r.xrevrange(pk.log, "+", "-", count=1)
    return last[0][0].decode() if last else "0-0"


def check_position(manifest: Manifest, log_pos: str) -> None:
    """A snapshot cannot cover writes its log does not hold yet: refuse one whose position is past the log's
    last entry (its queries would skip every write in between)."""
    if _pos(manifest.pos) > _pos(log_pos):
        raise SnapshotCorrupt(f"snapshot generation {manifest.generation} claims log position {manifest.pos}, past "
                              f"the log's last entry {log_pos}")


def _pos(p: str) -> tuple[int, int]:
    ms, _, seq = p.partition("-")
    return int(ms), int(seq)


def load(r: Any, pk: PartitionKeys, *, ef: int, dim: int, metric: str, for_update: bool = False,
         manifest: Manifest | None = None) -> HnswBase | None:
    """The partition's published snapshot, verified (manifest digest, the space's ``dim`` and ``metric``, the
    log position, the index header, the blob's sha256); None when there is none."""
    for _ in range(3):  # the pointer may move (and old chunks expire) between reading it and the chunks
        manifest = manifest or read_manifest(r, pk)
        if manifest is None:
            return None
        manifest.check(dim, metric)
        keys = [pk.chunk(manifest.sid, i) for i in range(manifest.chunks)]
        pipe = r.pipeline(transaction=False)  # one round trip (GETs, not MGET: a Cluster pipeline refuses MGET)
        for key in keys:
            pipe.get(key)
        pipe.xrevrange(pk.log, "+", "-", count=1)
        *chunks, last = pipe.execute()
        if any(c is None for c in chunks):
            latest = read_manifest(r, pk)
            if latest is not None and latest.generation != manifest.generation:
                manifest = latest
                continue
        check_position(manifest, last[0][0].decode() if last else "0-0")
        return unpack(chunks, manifest, ef=ef, for_update=for_update)
    raise SnapshotCorrupt(f"snapshot of {pk.tag} kept moving while it was read")


def write_chunks(r: Any, pk: PartitionKeys, sid: str, chunks: list[bytes]) -> None:
    """Store a new snapshot's chunks, expiring unless published. The upload is first recorded in the partition's
    state, so that a build killed before publication leaves a note that the next build (and ``stats``) find."""
    r.hset(pk.state, UPLOAD_FIELD + sid, f"{len(chunks)} {sum(len(c) for c in chunks)}")
    pipe = r.pipeline(transaction=False)
    for i, c in enumerate(chunks):
        pipe.set(pk.chunk(sid, i), c, ex=ORPHAN_TTL)
    pipe.execute()


def remove_uploads(r: Any, pk: PartitionKeys, keep: str | None = None) -> int:
    """Delete the chunks of every unpublished upload recorded in the state but ``keep`` (a killed build's
    leftovers) and their records; returns the bytes freed. Only chunks named by a record are touched, and never
    those of the published snapshot."""
    state = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in r.hgetall(pk.state).items()
             if k.startswith(UPLOAD_FIELD.encode())}
    raw = r.get(pk.snap)
    current = None
    try:
        current = Manifest.from_json(raw).sid if raw is not None else None
    except SnapshotCorrupt:
        pass
    freed = 0
    for sid, (n, size) in pending_uploads(state).items():
        if sid in (keep, current):
            continue
        r.delete(*[pk.chunk(sid, i) for i in range(n)])
        freed += size
    junk = [f for f in state if f[len(UPLOAD_FIELD):] != keep]
    if junk:
        r.hdel(pk.state, *junk)
    return freed


def publish(
    r: Any, pk: PartitionKeys, chunks: list[bytes], manifest: Manifest, previous: Manifest | None, channel: str,
    message: str, grace: int = GRACE_SECONDS, *, previous_raw: bytes | None = None,
    stale: list[tuple[str, int]] = (),  # type: ignore[assignment]
) -> None:
    """Write the chunks, then swap the pointer atomically (see the module docstring). ``previous_raw`` is the
    pointer exactly as the build read it (the publication fails if it changed); ``stale`` names chunk sets
    ``(sid, chunks)`` to expire with the previous generation's (the chunks of a pointer that could not be read)."""
    write_chunks(r, pk, manifest.sid, chunks)
    new_keys = [pk.chunk(manifest.sid, i) for i in range(len(chunks))]
    old = [(previous.sid, previous.chunks)] if previous else []
    old_keys = [pk.chunk(sid, i) for sid, n in [*old, *stale] for i in range(n)]
    keys = [pk.snap, pk.state, pk.log, *new_keys, *old_keys]
    if previous_raw is None and previous is not None:
        previous_raw = previous.to_json().encode()
    args = [manifest.to_json(), previous_raw or b"", len(new_keys), grace,
            previous.pos if previous else "", channel, message]
    try:
        r.fcall("emb_publish", len(keys), *keys, *args)
    except ResponseError as exc:
        err = lua_error(exc)
        if isinstance(err, PublishConflict):
            r.delete(*new_keys)
            r.hdel(pk.state, UPLOAD_FIELD + manifest.sid)
            raise err from None
        raise
