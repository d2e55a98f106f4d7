"""Snapshot I/O: read a partition's manifest and chunks from Redis, write chunks and publish a new generation.

The format, its verification and the loaded base are :mod:`embcache.core.snapshot`; its docstring describes
the publication protocol these functions follow. Here are the checks that need Redis: the manifest against
the log's last entry, and the bookkeeping of uploads that a build killed before publication leaves behind.
"""

from __future__ import annotations

import socket
from typing import Any

import redis
from redis import exceptions as rexc
from redis.exceptions import ResponseError

from ..core.delta import Chain, Segment, extending, unpack_segment
from ..core.errors import PublishConflict, SnapshotCorrupt
from ..core.keys import PartitionKeys
from ..core.snapshot import CHUNK_BYTES, UPLOAD_FIELD, HnswBase, Manifest, Receiver, pending_uploads
from .store import Tail, lua_error

__all__ = ["read_manifest", "load", "fetch_chunks", "write_chunks", "publish", "remove_uploads", "check_position",
           "last_log_position", "read_chain", "fetch_segments", "publish_delta", "expire_segments", "ORPHAN_TTL",
           "GRACE_SECONDS", "FETCH_WINDOW"]

ORPHAN_TTL = 600  # seconds an unpublished chunk lives (a builder that died); the next build removes it sooner
GRACE_SECONDS = 120  # seconds a superseded generation stays readable
#: Chunk requests a reader keeps in flight: Redis holds at most this many chunks (8 MiB each) in the reader's
#: output buffer, however large the partition (one MGET or pipeline of all chunks made it hold the whole
#: snapshot, and hit client-output-buffer limits past ~1 GB), and the next request is always queued behind the
#: current reply, so the stream never waits for a round trip.
FETCH_WINDOW = 4


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
         manifest: Manifest | None = None, copy_vectors: bool = True) -> HnswBase | None:
    """The partition's published snapshot, verified (manifest digest, the space's ``dim`` and ``metric``, the
    log position, the index header, the blob's sha256); None when there is none. ``copy_vectors``: see
    :meth:`embcache.core.snapshot.Receiver.load`."""
    for _ in range(3):  # the pointer may move (and old chunks expire) between reading it and the chunks
        manifest = manifest or read_manifest(r, pk)
        if manifest is None:
            return None
        manifest.check(dim, metric)
        with Receiver(manifest) as receiver:
            if not fetch_chunks(r, pk, manifest, receiver):
                latest = read_manifest(r, pk)
                if latest is not None and latest.generation != manifest.generation:
                    manifest = latest
                    continue
            check_position(manifest, last_log_position(r, pk))
            return receiver.load(ef=ef, for_update=for_update, copy_vectors=copy_vectors)
    raise SnapshotCorrupt(f"snapshot of {pk.tag} kept moving while it was read")


def fetch_chunks(r: Any, pk: PartitionKeys, manifest: Manifest, receiver: Receiver) -> bool:
    """Fetch the manifest's chunks into ``receiver`` (in its order: tables first), with at most
    :data:`FETCH_WINDOW` requests in flight; False when one is missing (the pointer moved and its chunks
    expired). Every chunk's size is checked against the manifest before a byte of it is read.

    On a standalone server the replies are read straight from the connection's socket into the receiver's
    buffers (``recv_into``: one copy from the kernel, none by a reply parser); otherwise (Cluster) GETs are
    pipelined in windows and their values copied in."""
    keys = [pk.chunk(manifest.sid, i) for i in range(manifest.chunks)]
    if type(r) is redis.Redis:
        return _stream(r, keys, receiver)
    order = receiver.order()
    for start in range(0, len(order), FETCH_WINDOW):
        pipe = r.pipeline(transaction=False)  # GETs, not MGET: a Cluster pipeline refuses MGET
        batch = order[start : start + FETCH_WINDOW]
        for i in batch:
            pipe.get(keys[i])
        for i, value in zip(batch, pipe.execute()):
            if value is None:
                return False
            receiver.write(i, value)
    return True


def _stream(r: Any, keys: list[str], receiver: Receiver) -> bool:
    conn = r.connection_pool.get_connection()
    clean = False
    try:
        sock = getattr(conn, "_sock", None)
        if sock is None:
            raise rexc.ConnectionError("not connected")
        try:
            clean = _stream_on(sock, keys, receiver)
        except TimeoutError as exc:  # socket.timeout
            raise rexc.TimeoutError(f"reading a snapshot: {exc}") from None
        except OSError as exc:
            raise rexc.ConnectionError(f"reading a snapshot: {exc}") from None
        return clean
    finally:
        if not clean:  # replies left unread (a missing chunk, an error, a bad size): the connection is dropped
            conn.disconnect()
        r.connection_pool.release(conn)


def _get(key: str) -> bytes:
    k = key.encode()
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k)


def _line(sock: socket.socket, pending: bytearray) -> bytes:
    while (j := pending.find(b"\r\n")) < 0:
        if len(pending) > 4096:
            raise rexc.InvalidResponse("a reply line longer than 4096 bytes")
        data = sock.recv(256)  # small: the payload that follows goes straight into its buffer
        if not data:
            raise rexc.ConnectionError("the connection closed while reading a snapshot")
        pending += data
    line = bytes(pending[:j])
    del pending[: j + 2]
    return line


def _fill(sock: socket.socket, view: memoryview, pending: bytearray) -> None:
    got = min(len(pending), len(view))
    if got:
        view[:got] = pending[:got]
        del pending[:got]
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise rexc.ConnectionError("the connection closed while reading a snapshot")
        got += n


def _stream_on(sock: socket.socket, keys: list[str], receiver: Receiver) -> bool:
    """True when every chunk was read and the connection is clean; False when one is missing."""
    from redis._parsers.base import BaseParser

    pending = bytearray()
    order = receiver.order()
    sent = min(FETCH_WINDOW, len(keys))
    sock.sendall(b"".join(_get(keys[j]) for j in order[:sent]))
    for i in order:
        line = _line(sock, pending)
        if line[:1] == b"-":
            raise BaseParser.parse_error(line[1:].decode(errors="replace"))
        if line[:1] == b"!" and line[1:].isdigit() and int(line[1:]) <= 4096:  # RESP3's blob error
            message = bytearray(int(line[1:]) + 2)
            _fill(sock, memoryview(message), pending)
            raise BaseParser.parse_error(message[:-2].decode(errors="replace"))
        if line in (b"$-1", b"_"):  # nil in RESP2, null in RESP3 (redis-py 8 speaks RESP3 where it can)
            return False
        if line[:1] != b"$" or not line[1:].isdigit() or len(line) > 21:
            raise rexc.InvalidResponse(f"unexpected reply to GET: {line[:40]!r}")
        size = int(line[1:])
        if size != receiver.sizes[i]:
            raise SnapshotCorrupt(f"snapshot generation {receiver.manifest.generation}: chunk {i} has {size} bytes, "
                                  f"its manifest says {receiver.sizes[i]}")
        segments = receiver.segments(i)
        for view in segments:
            _fill(sock, view, pending)
        crlf = bytearray(2)
        _fill(sock, memoryview(crlf), pending)
        if crlf != b"\r\n":
            raise rexc.InvalidResponse("a bulk reply not ended by CRLF")
        receiver.received(i, segments)
        if sent < len(keys):
            sock.sendall(_get(keys[order[sent]]))
            sent += 1
    return not pending


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
    raw, raw_chain = r.get(pk.snap), r.get(pk.delta)
    published: set[str | None] = {keep}  # never the published snapshot's chunks, nor its segments' (a writer
    try:                                 # can write an upload record naming them)
        published.add(Manifest.from_json(raw).sid if raw is not None else None)
    except SnapshotCorrupt:
        pass
    try:
        published |= {seg.sid for seg in Chain.from_json(raw_chain, None).segments} if raw_chain is not None else set()
    except SnapshotCorrupt:
        pass
    freed = 0
    for sid, (n, size) in pending_uploads(state).items():
        if sid in published:
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


# delta segments (issue 12.3; the format is embcache.core.delta) --------------------------------------------------
def read_chain(r: Any, pk: PartitionKeys, manifest: Manifest, width: int) -> Chain | None:
    """The delta chain that extends the snapshot ``manifest`` (None if there is none, or the chain key holds an
    older snapshot's); :class:`SnapshotCorrupt` when it cannot be read, or claims a position past the log."""
    chain = extending(r.get(pk.delta), manifest.sid, manifest.pos, width)
    if chain is not None and chain.segments and _pos(chain.pos) > _pos(last_log_position(r, pk)):
        raise SnapshotCorrupt(f"the delta chain of {pk.tag} claims log position {chain.pos}, past the log")
    return chain


def fetch_segments(r: Any, pk: PartitionKeys, segments: tuple[Segment, ...] | list[Segment],
                   width: int) -> list[tuple[Segment, Tail]] | None:
    """The segments' rows as log tails, verified; None when a chunk is gone (the chain was merged meanwhile and
    its grace ran out). Chunks are read :data:`FETCH_WINDOW` at a time, each checked against the size its
    segment gives it before it is kept."""
    keys = [(seg, i) for seg in segments for i in range(seg.chunks)]
    got: dict[str, list[bytes]] = {seg.sid: [] for seg in segments}
    for start in range(0, len(keys), FETCH_WINDOW):
        batch = keys[start : start + FETCH_WINDOW]
        pipe = r.pipeline(transaction=False)
        for seg, i in batch:
            pipe.get(pk.chunk(seg.sid, i))
        for (seg, i), value in zip(batch, pipe.execute()):
            if value is None:
                return None
            if len(value) != min(CHUNK_BYTES, seg.nbytes - i * CHUNK_BYTES) and seg.nbytes:
                raise SnapshotCorrupt(f"delta segment {seg.sid}: chunk {i} has {len(value)} bytes")
            got[seg.sid].append(value)
    out = []
    for seg in segments:
        ids, vectors, metadatas = unpack_segment(seg, got[seg.sid], width)
        out.append((seg, Tail(pos=seg.pos, ids=ids, vectors=vectors, metadatas=metadatas)))
    return out


def expire_segments(r: Any, pk: PartitionKeys, segments: tuple[Segment, ...] | list[Segment],
                    grace: int = GRACE_SECONDS) -> None:
    """Give the chunks of segments no chain names any more ``grace`` seconds (readers may be fetching them)."""
    pipe = r.pipeline(transaction=False)
    for seg in segments:
        for i in range(seg.chunks):
            pipe.expire(pk.chunk(seg.sid, i), grace)
    pipe.execute()


def publish_delta(r: Any, pk: PartitionKeys, chunks: list[bytes], chain: Chain, *, snap_raw: bytes,
                  chain_raw: bytes | None, channel: str, message: str) -> None:
    """Write the last segment's chunks (expiring unless published; none when ``chain`` carries published
    segments over to a new snapshot), then publish ``chain`` if the snapshot pointer is still ``snap_raw`` and the
    chain key still ``chain_raw`` (:class:`PublishConflict` otherwise)."""
    new_keys: list[str] = []
    if chunks:
        seg = chain.segments[-1]
        write_chunks(r, pk, seg.sid, chunks)
        new_keys = [pk.chunk(seg.sid, i) for i in range(len(chunks))]
    try:
        r.fcall("emb_publish_delta", 3 + len(new_keys), pk.snap, pk.delta, pk.state, *new_keys,
                snap_raw, chain_raw or b"", chain.to_json(), len(new_keys), channel, message)
    except ResponseError as exc:
        err = lua_error(exc)
        if isinstance(err, PublishConflict):
            if new_keys:
                r.delete(*new_keys)
                r.hdel(pk.state, UPLOAD_FIELD + chain.segments[-1].sid)
            raise err from None
        raise
