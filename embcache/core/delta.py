"""Delta segments: the changes a worker indexed after a partition's full snapshot, published without rewriting it.
Pure, no I/O.

A full snapshot of 59,000 x 384 items is ~100 MB; rewriting it for every few hundred writes made Redis take in
and append to its AOF 15-34 MB/s at 200-1,000 writes/s, and every reader download it again (issue 12.3). Between
two full snapshots a worker now publishes *segments*: each is the net effect of the change log over one interval
``(start, pos]``, exactly what a log-tail read returns (ids, their stored vector bytes or a deletion, their stored
metadata), frozen in chunks with a sha256. The partition's *chain* (the ``delta`` key, written by workers only)
names the full snapshot it extends and its segments in log order, each starting where the one before ended and the
first where the snapshot ends. Readers add the segments' rows to the partition's overlay (the follower's buffer,
:mod:`embcache.core.tail`) as they would a tail read from the log, so the same checks of stored data apply to
them, and never download the snapshot again for them. When the segments' rows pass a share of the snapshot, the
worker publishes a new full snapshot (a *merge*), and the chain of the old one is ignored and expires.

Segment blob::

    [ids JSON list][kinds: 1 byte a row, 1 vector / 0 deleted][vectors: the rows of kind 1, stored bytes]
    [metadata lengths int64 little-endian, -1 for none][metadata bytes]
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SnapshotCorrupt
from .snapshot import _SID_RE, CHUNK_BYTES, valid_pos
from .views import pos_key

__all__ = ["Segment", "Chain", "extending", "pack_segment", "unpack_segment", "MAX_SEGMENTS", "MAX_SEGMENT_ROWS",
           "MAX_SEGMENT_BYTES", "MAX_CHAIN_JSON"]

MAX_SEGMENTS = 64  # segments a chain holds; a worker merges before it would pass this
MAX_SEGMENT_ROWS = 1 << 22  # rows one segment may hold (a bound on what a reader allocates)
MAX_SEGMENT_BYTES = 1 << 32  # bytes (512 chunks): what a reader fetches or a deletion names, per segment
MAX_CHAIN_JSON = 4096 + 512 * MAX_SEGMENTS  # bytes of a chain key (emb_publish_delta refuses more too)
_SHA_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Segment:
    """One published interval of the change log: ``(start, pos]``, ``rows`` entries, in ``chunks`` chunks."""

    sid: str
    start: str
    pos: str
    rows: int
    sizes: tuple[int, int, int, int, int]
    sha256: str

    @property
    def nbytes(self) -> int:
        return sum(self.sizes)

    @property
    def chunks(self) -> int:
        return max(1, -(-self.nbytes // CHUNK_BYTES))

    def as_dict(self) -> dict[str, Any]:
        return {"sid": self.sid, "start": self.start, "pos": self.pos, "rows": self.rows, "sizes": list(self.sizes),
                "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: object, width: int | None) -> "Segment":
        if not isinstance(d, dict) or set(d) != {"sid", "start", "pos", "rows", "sizes", "sha256"}:
            raise ValueError("segment fields")
        sizes = d["sizes"]
        rows = d["rows"]
        if not isinstance(sizes, list) or len(sizes) != 5 or any(type(x) is not int or not 0 <= x < 1 << 40
                                                                 for x in sizes):
            raise ValueError("segment sizes")
        if type(rows) is not int or not 0 <= rows <= MAX_SEGMENT_ROWS:
            raise ValueError("segment rows")
        vectors_ok = width is None or (sizes[2] % width == 0 and sizes[2] // width <= rows)
        if sum(sizes) > MAX_SEGMENT_BYTES or sizes[1] != rows or sizes[3] != 8 * rows or not vectors_ok:
            raise ValueError("segment sizes do not add up")
        for name in ("sid", "start", "pos", "sha256"):
            if not isinstance(d[name], str):
                raise ValueError(name)
        if not _SID_RE.fullmatch(d["sid"]) or not valid_pos(d["start"]) or not valid_pos(d["pos"]) \
                or not _SHA_RE.fullmatch(d["sha256"]) or pos_key(d["pos"]) <= pos_key(d["start"]):
            raise ValueError("segment names")
        return cls(d["sid"], d["start"], d["pos"], rows, (sizes[0], sizes[1], sizes[2], sizes[3], sizes[4]),
                   d["sha256"])


@dataclass(frozen=True)
class Chain:
    """A partition's published segments: they extend the full snapshot ``base`` (its sid) from ``start`` (its
    position) on, in log order."""

    base: str
    start: str
    segments: tuple[Segment, ...] = ()

    @property
    def pos(self) -> str:
        return self.segments[-1].pos if self.segments else self.start

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments)

    def extended(self, segment: Segment) -> "Chain":
        return Chain(self.base, self.start, (*self.segments, segment))

    def to_json(self) -> str:
        return json.dumps({"base": self.base, "start": self.start, "segments": [s.as_dict() for s in self.segments]})

    @classmethod
    def from_json(cls, raw: bytes | str, width: int | None) -> "Chain":
        """Parse and check a chain (``width``: bytes of one stored vector; None to leave the segments' vector
        sizes unchecked, for what only reads positions). :class:`SnapshotCorrupt` unless every field has its type
        and bounds and the segments follow one another from ``start``."""
        try:
            if len(raw) > MAX_CHAIN_JSON:
                raise ValueError("too long")
            d = json.loads(raw)
            if not isinstance(d, dict) or set(d) != {"base", "start", "segments"}:
                raise ValueError("fields")
            if not isinstance(d["base"], str) or not _SID_RE.fullmatch(d["base"]) or not valid_pos(d["start"]):
                raise ValueError("base")
            if not isinstance(d["segments"], list) or len(d["segments"]) > MAX_SEGMENTS:
                raise ValueError("segments")
            segments = tuple(Segment.from_dict(s, width) for s in d["segments"])
            at = d["start"]
            for s in segments:
                if s.start != at:
                    raise ValueError(f"segment {s.sid} starts at {s.start}, not where the chain is ({at})")
                at = s.pos
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise SnapshotCorrupt(f"unreadable delta chain: {str(exc)[:200]}") from None
        return cls(d["base"], d["start"], segments)


def extending(raw: bytes | str | None, sid: str, pos: str, width: int | None) -> Chain | None:
    """The chain in ``raw`` (a chain key's value) if it extends the snapshot ``sid`` published at ``pos``; None
    when there is none or it extends another snapshot (an older one's, left by a merge). :class:`SnapshotCorrupt`
    when it cannot be read. Every reader of a chain goes through here, so none trusts one that starts elsewhere."""
    if raw is None:
        return None
    chain = Chain.from_json(raw, width)
    return chain if chain.base == sid and chain.start == pos else None


def pack_segment(generation: int, start: str, pos: str, ids: list[str], vectors: list[bytes | None],
                 metadatas: list[bytes | None], width: int) -> tuple[list[bytes], Segment]:
    """A log tail ``(start, pos]`` (ids, stored vector bytes or None for a deletion, stored metadata) as a
    segment's chunks and description; ``generation`` is the full snapshot's (it names the chunk keys). A stored
    vector that is not ``width`` bytes is written as a deletion: readers hide such an item, as they do when
    they read it from the log."""
    vectors = [v if isinstance(v, bytes) and len(v) == width else None for v in vectors]
    kinds = bytes(0 if v is None else 1 for v in vectors)
    lengths = np.array([-1 if m is None else len(m) for m in metadatas], dtype="<i8")
    sections = [json.dumps(ids, ensure_ascii=False).encode(), kinds, b"".join(v for v in vectors if v is not None),
                lengths.tobytes(), b"".join(m for m in metadatas if m is not None)]
    blob = b"".join(sections)
    chunks = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
    seg = Segment(f"{generation}.{secrets.token_hex(4)}", start, pos, len(ids),
                  tuple(len(s) for s in sections), hashlib.sha256(blob).hexdigest())  # type: ignore[arg-type]
    return chunks, seg


def unpack_segment(segment: Segment, chunks: list[bytes], width: int) -> tuple[list[str], list[bytes | None],
                                                                                  list[bytes | None]]:
    """The segment's rows (ids, stored vectors or None, stored metadata or None), verified against its sha256
    and sizes; :class:`SnapshotCorrupt` otherwise. The rows are stored data: decode them as a log tail is."""
    blob = b"".join(chunks)
    if len(blob) != segment.nbytes or hashlib.sha256(blob).hexdigest() != segment.sha256:
        raise SnapshotCorrupt(f"delta segment {segment.sid} does not match its checksum")
    a, b, c, d, _ = segment.sizes
    try:
        ids = json.loads(blob[:a])
        if not isinstance(ids, list) or len(ids) != segment.rows or not all(isinstance(i, str) for i in ids) \
                or len(set(ids)) != len(ids):
            raise ValueError("ids")
        kinds = blob[a : a + b]
        if kinds.translate(None, b"\x00\x01") or kinds.count(1) * width != c:
            raise ValueError("kinds")
        lengths = np.frombuffer(blob[a + b + c : a + b + c + d], dtype="<i8")
        if (lengths < -1).any() or (lengths > segment.sizes[4]).any() \
                or sum(n for n in lengths.tolist() if n > 0) != segment.sizes[4]:  # Python ints: no wrap-around
            raise ValueError("metadata lengths")
    except (ValueError, RecursionError) as exc:
        raise SnapshotCorrupt(f"delta segment {segment.sid}: {str(exc)[:200]}") from None
    vectors: list[bytes | None] = []
    at = a + b
    for k in kinds:
        vectors.append(blob[at : at + width] if k else None)
        at += width if k else 0
    metadatas: list[bytes | None] = []
    at = a + b + c + d
    for n in lengths.tolist():
        metadatas.append(None if n < 0 else blob[at : at + n])
        at += max(n, 0)
    return ids, vectors, metadatas
