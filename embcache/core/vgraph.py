"""The version graph: one worker-built hnswlib index over every partition of a version. Pure, no I/O.

Searching P per-partition graphs costs about P graph walks (hnswlib's cost grows with the number of graphs,
not with their size), so for queries that may read the whole version the workers also build one graph of all
its items, whose labels map to partitions. It is a snapshot of several partitions at once: the manifest records,
per partition, the change-log position it covers, so ``session`` and ``strong`` queries add each partition's
overlay exactly as they do over a partition snapshot. A principal limited to some partitions never reads it
(its key is outside their ACL patterns) and is served from per-partition snapshots.

Layout, cut into chunks like a partition snapshot (see :mod:`embcache.core.snapshot`)::

    [hnswlib index file][labels int64][partition index int32 per item][ids JSON list][metadatas JSON list]

The manifest lists the partitions (sorted; the index into that list is what the third section holds) with
their positions.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import hnswlib
import numpy as np

from .errors import SnapshotCorrupt
from .snapshot import HnswBase, LazyMetadata, index_bytes, load_index_file
from .views import pos_key

__all__ = ["VersionManifest", "VersionBase", "pack_version", "unpack_version", "MAX_PARTITIONS"]

MAX_PARTITIONS = 100_000  # a manifest naming more is refused as corrupt


@dataclass(frozen=True)
class VersionManifest:
    """What a version graph is: per partition the log position covered, and the snapshot's sections."""

    generation: int
    sid: str
    parts: dict[str, str]  # partition -> change-log position covered
    count: int
    dim: int
    metric: str
    M: int
    ef_construction: int
    chunks: int
    nbytes: int
    sections: tuple[int, int, int, int, int]
    sha256: str
    builder: str
    built_at: float
    build_seconds: float
    deleted: int = 0
    max_label: int = 0

    @property
    def names(self) -> list[str]:
        return sorted(self.parts)

    @property
    def pos(self) -> str:
        return ""  # no single position: see ``parts``

    def to_json(self) -> str:
        d = self.__dict__.copy()
        d["sections"] = list(self.sections)
        return json.dumps(d)

    @classmethod
    def from_json(cls, raw: bytes | str) -> "VersionManifest":
        try:
            d = json.loads(raw)
            d["sections"] = tuple(int(x) for x in d["sections"])
            m = cls(**d)
        except (ValueError, TypeError, KeyError) as exc:
            raise SnapshotCorrupt(f"unreadable version graph manifest: {exc}") from None
        if (not isinstance(m.parts, dict) or len(m.parts) > MAX_PARTITIONS or len(m.sections) != 5
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in m.parts.items())
                or not isinstance(m.chunks, int) or not 0 <= m.chunks <= 1 << 16 or m.count < 0):
            raise SnapshotCorrupt("version graph manifest fails its checks")
        return m


class VersionBase(HnswBase):
    """A loaded version graph: an :class:`HnswBase` whose slots also know their partition."""

    kind = "version"

    def __init__(self, index: hnswlib.Index, labels: np.ndarray, part_idx: np.ndarray, ids: list[str],
                 metas: list[dict[str, Any] | None] | LazyMetadata, manifest: VersionManifest, ef: int,
                 vectors: np.ndarray | None = None, *, lazy_vectors: bool = False) -> None:
        super().__init__(index, labels, ids, metas, manifest, ef, vectors=vectors,  # type: ignore[arg-type]
                         lazy_vectors=lazy_vectors)
        self.parts = dict(manifest.parts)  # partition -> position covered
        self.names = manifest.names
        self.position = ""  # no single position: see ``parts``
        self.oldest = min((pos_key(p) for p in self.parts.values()), default=(0, 0))
        self.part_of = np.full(len(self.id_of), -1, dtype=np.int32)
        self.part_of[self.labels] = part_idx
        self.part_counts = np.bincount(part_idx, minlength=len(self.names)) if len(part_idx) else \
            np.zeros(len(self.names), dtype=np.int64)

    def partition_mask(self, names: Any) -> np.ndarray:
        """Slots of the items of the partitions ``names`` (names the graph does not cover match nothing)."""
        idx = [i for i, n in enumerate(self.names) if n in set(names)]
        return np.isin(self.part_of, np.asarray(idx, dtype=np.int32)) & self.live

    def partition_items(self, names: Any) -> int:
        """How many items the graph holds for the partitions ``names``."""
        want = set(names)
        return int(sum(int(c) for n, c in zip(self.names, self.part_counts) if n in want))

    def partition_of(self, id_: str) -> str | None:
        lab = self.label.get(id_)
        return None if lab is None else self.names[int(self.part_of[lab])]

    def describe(self) -> str:
        return f"version graph ({self.count} items, {len(self.names)} partitions, generation {self.generation})"


def pack_version(
    index: hnswlib.Index, labels: np.ndarray, part_idx: np.ndarray, ids: list[str], metas: list[Any], *,
    generation: int, parts: dict[str, str], dim: int, metric: str, M: int, ef_construction: int, builder: str,
    build_seconds: float, deleted: int, max_label: int, chunk_bytes: int,
) -> tuple[list[bytes], VersionManifest]:
    """Serialise a version graph into chunks and its manifest."""
    sections = [
        index_bytes(index),
        np.ascontiguousarray(labels, dtype="<i8").tobytes(),
        np.ascontiguousarray(part_idx, dtype="<i4").tobytes(),
        json.dumps(ids, ensure_ascii=False).encode(),
        json.dumps(metas, ensure_ascii=False, separators=(",", ":")).encode(),
    ]
    blob = b"".join(sections)
    chunks = [blob[i : i + chunk_bytes] for i in range(0, len(blob), chunk_bytes)] or [b""]
    manifest = VersionManifest(
        generation=generation, sid=f"{generation}.{secrets.token_hex(4)}", parts=dict(parts), count=len(ids),
        dim=dim, metric=metric, M=M, ef_construction=ef_construction, chunks=len(chunks), nbytes=len(blob),
        sections=tuple(len(s) for s in sections),  # type: ignore[arg-type]
        sha256=hashlib.sha256(blob).hexdigest(), builder=builder, built_at=time.time(),
        build_seconds=round(build_seconds, 4), deleted=deleted, max_label=max_label,
    )
    return chunks, manifest


def unpack_version(chunks: list[bytes | None], manifest: VersionManifest, *, ef: int,
                   for_update: bool = False, copy_vectors: bool = True) -> VersionBase:
    """Verify and parse a version graph; :class:`SnapshotCorrupt` when a chunk is missing, the checksum fails or
    the tables disagree. ``copy_vectors=False``: its float16 copy is made on first use (see :class:`HnswBase`)."""
    if len(chunks) != manifest.chunks or any(c is None for c in chunks):
        raise SnapshotCorrupt(f"version graph generation {manifest.generation} is missing chunks")
    blob = b"".join(chunks)  # type: ignore[arg-type]
    if len(blob) != manifest.nbytes or hashlib.sha256(blob).hexdigest() != manifest.sha256:
        raise SnapshotCorrupt(f"version graph generation {manifest.generation} failed its sha256 check")
    a, b, c, d, e = manifest.sections
    if a + b + c + d + e != len(blob):
        raise SnapshotCorrupt(f"version graph generation {manifest.generation} has inconsistent sections")
    try:
        labels = np.frombuffer(blob, dtype="<i8", count=b // 8, offset=a).astype(np.int64)
        part_idx = np.frombuffer(blob, dtype="<i4", count=c // 4, offset=a + b).astype(np.int32)
        ids = json.loads(blob[a + b + c : a + b + c + d])
    except ValueError as exc:
        raise SnapshotCorrupt(f"version graph generation {manifest.generation} has unreadable tables: {exc}") from None
    n = manifest.count
    metas = LazyMetadata(blob[a + b + c + d :], n, f"version graph generation {manifest.generation}")
    if not (len(labels) == len(part_idx) == len(ids) == n) or not isinstance(ids, list) \
            or (n and (part_idx.min() < 0 or part_idx.max() >= len(manifest.parts) or labels.min() < 0
                       or labels.max() > manifest.max_label)):
        raise SnapshotCorrupt(f"version graph generation {manifest.generation} has inconsistent tables")
    if for_update:  # a worker reads every item's metadata: refuse a bad table here
        metas.rows()
    headroom = n + manifest.deleted + 1024 if for_update else 0
    index, vectors = load_index_file(memoryview(blob)[:a], manifest.metric, manifest.dim, headroom, for_update,
                                     n_slots=int(labels.max()) + 1 if n else 0, copy_vectors=copy_vectors)
    del blob
    return VersionBase(index, labels, part_idx, ids, metas, manifest, ef, vectors=vectors,
                       lazy_vectors=not (for_update or copy_vectors))
