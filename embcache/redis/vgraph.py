"""Reading and publishing version graphs (see :mod:`embcache.core.vgraph`): the Redis side.

A version graph is published like a partition snapshot: chunks first (expiring unless published), then one
transaction on the version's slot (``WATCH`` the pointer, check the generation it was built on is still
current, make the chunks permanent, give the previous generation a grace period, swap the pointer), then a
notification on the space's channel. All its keys share the hash tag ``{space/version}``, so this holds on a
Redis Cluster too.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import SnapshotCorrupt
from ..core.keys import Keys
from ..core.snapshot import CHUNK_BYTES
from ..core.vgraph import VersionBase, VersionManifest, unpack_version
from .snapshots import GRACE_SECONDS, ORPHAN_TTL
from .store import translate_errors

__all__ = ["read_manifest", "load", "publish", "CHUNK_BYTES", "GraphConflict"]


class GraphConflict(Exception):
    """Another worker published a version graph first: this one is dropped (the caller builds again)."""


def read_manifest(r: Any, keys: Keys, space: str, version: str) -> VersionManifest | None:
    """The published version graph's manifest, or None."""
    with translate_errors("read version graph"):
        raw = r.get(keys.version_graph(space, version))
    return None if raw is None else VersionManifest.from_json(raw)


def load(r: Any, keys: Keys, space: str, version: str, *, ef: int, for_update: bool = False,
         manifest: VersionManifest | None = None, copy_vectors: bool = True) -> VersionBase | None:
    """The published version graph, verified; None when there is none. ``copy_vectors``: see
    :meth:`embcache.core.snapshot.Receiver.load`."""
    for _ in range(3):  # the pointer may move (and old chunks expire) between reading it and its chunks
        manifest = manifest or read_manifest(r, keys, space, version)
        if manifest is None:
            return None
        names = [keys.version_graph_chunk(space, version, manifest.sid, i) for i in range(manifest.chunks)]
        with translate_errors("load version graph"):
            chunks = r.mget(names) if names else []
        if any(c is None for c in chunks):
            latest = read_manifest(r, keys, space, version)
            if latest is not None and latest.generation != manifest.generation:
                manifest = latest
                continue
        return unpack_version(chunks, manifest, ef=ef, for_update=for_update, copy_vectors=copy_vectors)
    raise SnapshotCorrupt(f"the version graph of {space}/{version} kept moving while it was read")


def publish(r: Any, keys: Keys, space: str, version: str, chunks: list[bytes], manifest: VersionManifest,
            previous: VersionManifest | None, message: str, grace: int = GRACE_SECONDS) -> None:
    """Write the chunks, then swap the pointer atomically; :class:`GraphConflict` if another build won."""
    from redis.exceptions import WatchError

    pointer = keys.version_graph(space, version)
    new = [keys.version_graph_chunk(space, version, manifest.sid, i) for i in range(len(chunks))]
    old = [keys.version_graph_chunk(space, version, previous.sid, i) for i in range(previous.chunks)] \
        if previous else []
    with translate_errors("publish version graph"):
        pipe = r.pipeline(transaction=False)
        for name, c in zip(new, chunks):
            pipe.set(name, c, ex=ORPHAN_TTL)
        pipe.execute()
        with r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(pointer)
                raw = pipe.get(pointer)
                current = VersionManifest.from_json(raw).generation if raw is not None else 0
                if current != (previous.generation if previous else 0):
                    raise GraphConflict(f"version graph generation {current} was published meanwhile")
                pipe.multi()
                for name in new:
                    pipe.persist(name)
                for name in old:
                    pipe.expire(name, grace)
                pipe.set(pointer, manifest.to_json())
                pipe.execute()
            except (WatchError, GraphConflict):
                r.delete(*new)
                raise GraphConflict("another version graph was published meanwhile") from None
        r.publish(keys.events(space), message)
