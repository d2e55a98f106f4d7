"""Snapshots: a worker-built hnswlib index of one partition, stored in Redis in chunks with a manifest.

A snapshot is one blob cut into chunks of at most 8 MiB (far under Redis's 512 MB value limit)::

    [hnswlib index file][labels int64 little-endian][ids JSON list][metadatas JSON list]
    ([neighbour rows int32 (count, w)][neighbour distances float32 (count, w)])

(the last two sections only when the space asks for ``neighbours``: row ``i`` lists the rows, in the ids table,
of item ``i``'s ``w`` nearest other items, nearest first, ``-1`` after the last one, and their distances; ``w``
is the manifest's ``neighbours``) and a manifest (generation, change-log position, count, dim, metric,
parameters, section sizes, sha256 of the blob, builder, build time). Chunks are written first with an expiry, so
a builder that dies leaves nothing that outlives the expiry; the ``emb_publish`` function then checks the
generation it built on is still current, makes the chunks permanent, gives the previous generation's chunks a
grace period before they expire, trims the change log behind the previous generation and swaps the pointer (the
manifest key) in one step. Readers fetch the manifest, then its chunks, and verify the checksum before they use a
byte: they see the old snapshot or the new one, never a mix, and a corrupt one is refused.

This module is the format (pack, unpack, verify) and the loaded base that answers searches; reading and
publishing in Redis is :mod:`embcache.redis.snapshots`.

The index is loaded with hnswlib's own reader from a temporary file, never with ``pickle``: whoever can write
a snapshot must not be able to run code in the readers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import mmap
import os
import queue
import re
import secrets
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import hnswlib
import numpy as np

from .codec import MAX_DIM, MAX_NEIGHBOURS, METRICS
from .engine import FieldIndex, MaskCache, search_base
from .errors import SnapshotCorrupt
from .hnswfile import CPUS, index_params, index_vectors, level0_copy, level0_layout, level0_vectors
from .search import Ranked

__all__ = ["Manifest", "HnswBase", "LazyMetadata", "Receiver", "pack", "unpack", "check_index_header",
           "load_index_file", "pending_uploads", "valid_pos", "check_neighbour_lists", "CHUNK_BYTES", "UPLOAD_FIELD"]

log = logging.getLogger("embcache.snapshot")
CHUNK_BYTES = (8 << 20) - 4096  # just under 8 MiB: with Redis's string header an exact 8 MiB lands in 10 MiB
UPLOAD_FIELD = "upload:"  # state field upload:<sid> = "<chunks> <bytes>" while a build's chunks are unpublished
MAX_UPLOADS = 16  # upload records one build looks at (writers can write the state hash too)
MAX_UPLOAD_CHUNKS = 1 << 16  # chunks one record may name (512 GiB of snapshot)
_SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None


_POS_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_SID_RE = re.compile(r"([0-9]{1,16})\.[0-9a-f]{1,32}")
_INT_FIELDS = ("generation", "count", "dim", "M", "ef_construction", "chunks", "nbytes", "deleted", "max_label",
               "neighbours")
_LIMIT = 1 << 40  # no count, size or label of a real snapshot comes near it


def valid_pos(pos: object) -> bool:
    """True for a change-log position as Redis writes it (``ms-seq``)."""
    return isinstance(pos, str) and _POS_RE.fullmatch(pos) is not None


@dataclass(frozen=True)
class Manifest:
    """What a snapshot is, as published in the partition's pointer key.

    ``digest`` is the sha256 of every other field (canonical JSON), and ``sha256`` the blob's: one chain from
    the pointer to the last byte, so a changed byte anywhere is refused before anything reaches hnswlib."""

    generation: int
    sid: str  # names the chunk keys: generation and a nonce of the build that wrote them
    pos: str
    count: int
    dim: int
    metric: str
    M: int
    ef_construction: int
    chunks: int
    nbytes: int
    sections: tuple[int, ...]  # 4 sizes, 6 with neighbour lists
    sha256: str
    builder: str
    built_at: float
    build_seconds: float
    deleted: int = 0
    max_label: int = 0
    neighbours: int = 0  # width of the neighbour lists; 0: the snapshot has none
    digest: str = ""

    def _fields(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["sections"] = list(self.sections)
        d.pop("digest")
        if not self.neighbours:  # absent when 0: a snapshot without lists keeps the manifest (and digest) it had
            d.pop("neighbours")
        return d

    def compute_digest(self) -> str:
        return hashlib.sha256(json.dumps(self._fields(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def sealed(self) -> "Manifest":
        """This manifest with its digest filled in (what :func:`pack` publishes)."""
        return dataclasses.replace(self, digest=self.compute_digest())

    def to_json(self) -> str:
        d = self._fields()
        d["digest"] = self.digest
        return json.dumps(d)

    @classmethod
    def from_json(cls, raw: bytes | str) -> "Manifest":
        """Parse and verify a manifest: :class:`SnapshotCorrupt` unless every field has its type and bounds, the
        sizes add up and the digest matches. (:meth:`check` then compares it with the space.)"""
        try:
            d = json.loads(raw)
            if not isinstance(d, dict) or set(d) | {"neighbours"} != _FIELD_NAMES:
                raise ValueError(f"fields {sorted(d) if isinstance(d, dict) else type(d).__name__}")
            if not (isinstance(d["sections"], list) and len(d["sections"]) == (6 if d.get("neighbours") else 4)):
                raise ValueError("sections")
            d["sections"] = tuple(d["sections"])
            m = cls(**d)
            m._validate()
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise SnapshotCorrupt(f"unreadable snapshot manifest: {str(exc)[:200]}") from None
        return m

    def _validate(self) -> None:
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if type(v) is not int or not (-1 if name == "max_label" else 0) <= v < _LIMIT:  # -1: no item yet
                raise ValueError(f"{name}={v!r:.40}")
        if any(type(x) is not int or not 0 <= x < _LIMIT for x in self.sections):
            raise ValueError("sections")
        for name in ("built_at", "build_seconds"):
            v = getattr(self, name)
            if type(v) not in (int, float) or not math.isfinite(v):
                raise ValueError(name)
        for name in ("sid", "pos", "metric", "sha256", "builder", "digest"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(name)
        sid = _SID_RE.fullmatch(self.sid)
        if self.generation < 1 or sid is None or int(sid.group(1)) != self.generation:
            raise ValueError(f"generation {self.generation} / sid {self.sid[:40]!r}")
        if not valid_pos(self.pos):
            raise ValueError(f"pos {self.pos[:40]!r}")
        if self.metric not in METRICS or not 1 <= self.dim <= MAX_DIM or not 2 <= self.M <= 128 \
                or not 1 <= self.ef_construction <= 10_000:
            raise ValueError("index parameters out of bounds")
        if not 0 <= self.neighbours <= MAX_NEIGHBOURS:
            raise ValueError(f"neighbours={self.neighbours}")
        if sum(self.sections) != self.nbytes or self.chunks != max(1, -(-self.nbytes // CHUNK_BYTES)) \
                or self.sections[1] != 8 * self.count or self.sections[0] < _HNSW_HEADER.size \
                or self.sections[4:] != ((4 * self.count * self.neighbours,) * 2 if self.neighbours else ()):
            raise ValueError("sizes do not add up")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256) or self.digest != self.compute_digest():
            raise ValueError("digest mismatch")

    def check(self, dim: int, metric: str) -> None:
        """:class:`SnapshotCorrupt` unless the snapshot was built for a space of this ``dim`` and ``metric``."""
        if self.dim != dim or self.metric != metric:
            raise SnapshotCorrupt(f"snapshot generation {self.generation} is for dim={self.dim} metric={self.metric}, "
                                  f"the space has dim={dim} metric={metric}")


_FIELD_NAMES = {f.name for f in dataclasses.fields(Manifest)}
# hnswlib's file header (hnswalg.h saveIndex): offsetLevel0, max_elements, cur_element_count,
# size_data_per_element, label_offset, offsetData, maxlevel, enterpoint_node, maxM, maxM0, M, mult, ef_construction
_HNSW_HEADER = struct.Struct("<QQQQQQiIQQQdQ")


def check_index_header(head: bytes, manifest: Manifest) -> None:
    """Refuse an index file whose header disagrees with the manifest: hnswlib trusts the dim it is given, and a
    wrong one makes it read out of bounds (a crash, not an exception)."""
    if len(head) < _HNSW_HEADER.size:
        raise SnapshotCorrupt(f"snapshot generation {manifest.generation} has a truncated index header")
    (_, max_elements, cur, per_element, label_offset, offset_data, _, _, max_m, max_m0, m, _,
     _) = _HNSW_HEADER.unpack_from(head)
    links = max_m0 * 4 + 4
    if (m != manifest.M or max_m != manifest.M or max_m0 != 2 * manifest.M or offset_data != links
            or label_offset != links + 4 * manifest.dim or per_element != label_offset + 8 or cur > max_elements
            or cur < manifest.count or cur * per_element > manifest.sections[0]):
        raise SnapshotCorrupt(f"snapshot generation {manifest.generation}: the index file does not match its "
                              f"manifest (dim {manifest.dim}, M {manifest.M}, {manifest.count} items)")


class LazyMetadata:
    """A snapshot's metadata table (a JSON list, one object or null per item) kept as its bytes and parsed on
    first use: most serving never reads metadata (no filter, no ``include``), and the parsed dicts cost ~5x the
    bytes and ~40-80 ms of a cold start on 59,000 items. Parsing checks what loading used to: a list of
    ``count`` objects or nulls; otherwise every use raises :class:`SnapshotCorrupt`."""

    def __init__(self, raw: bytes, count: int, what: str) -> None:
        self._raw = raw
        self.count = count
        self._what = what
        self._rows: list[dict[str, Any] | None] | None = None
        self._error = ""
        self._lock = threading.Lock()

    def rows(self) -> list[dict[str, Any] | None]:
        rows = self._rows
        if rows is not None:
            return rows
        with self._lock:
            if self._rows is None and not self._error:
                try:
                    got = json.loads(self._raw)
                except (ValueError, RecursionError) as exc:
                    self._error = f"unreadable: {str(exc)[:200]}"
                else:
                    if isinstance(got, list) and len(got) == self.count \
                            and all(m is None or type(m) is dict for m in got):
                        self._rows, self._raw = got, b""
                    else:  # (``null`` too: a list is what was written)
                        self._error = f"not a list of {self.count} objects or nulls"
            if self._error:
                raise SnapshotCorrupt(f"{self._what} has a bad metadata table: {self._error}")
            return self._rows  # type: ignore[return-value]


class HnswBase:
    """A loaded snapshot: the hnswlib index, its label -> id table, the items' metadata and a float16 copy of the
    vectors for exact scans (hnswlib's ``get_items`` costs ~13-30 us a row). Searched by
    :func:`embcache.core.engine.search_base`.

    The float16 copy is 0.45x of hnswlib's memory for 384-d items, and only exact scans (selective filters) read
    it. A base loaded with ``lazy_vectors=True`` makes it on first use, from hnswlib's own memory (~130 ms for
    59k x 384, holding the GIL for the ~50 ms of hnswlib's copy), and then calls :attr:`on_vectors`, so that the
    cache can ask for the copy at load (from the received bytes, beside the first queries) the next time.

    Never mutated after construction while a query may read it; the worker mutates its own private copies.
    """

    has_graph = True

    def __init__(
        self, index: hnswlib.Index, labels: np.ndarray, ids: list[str],
        metas: list[dict[str, Any] | None] | LazyMetadata, manifest: Manifest, ef: int,
        vectors: np.ndarray | Future[np.ndarray] | None = None,
        neighbours: tuple[np.ndarray, np.ndarray] | None = None, *, lazy_vectors: bool = False,
    ) -> None:
        self.index = index
        self.manifest = manifest
        self.position = manifest.pos
        self.generation = manifest.generation
        self.metric = manifest.metric
        self.labels = labels.astype(np.int64, copy=False)
        self.ids = ids
        size = int(labels.max()) + 1 if len(labels) else 0
        self.id_of = np.empty(size, dtype=object)  # label -> id, None for deleted slots
        self.id_of[self.labels] = ids
        label_list = self.labels.tolist()
        self._dense = size == len(label_list) and bool(np.array_equal(self.labels, np.arange(size)))
        # metadata aligned with labels (metas) and by slot (meta_of), made on first use (see LazyMetadata)
        self._metas_in = metas
        self._metas: list[dict[str, Any] | None] | None = None
        self._meta_of: list[dict[str, Any] | None] | None = None
        self._meta_lock = threading.Lock()
        # called (with the reason) when the metadata table turns out bad on first use; set by the reader's cache
        self.on_corrupt: Callable[[str], None] | None = None
        self.label: dict[str, int] = dict(zip(ids, label_list))
        self.slot = self.label
        self.live = np.zeros(size, dtype=bool)
        self.live[self.labels] = True
        self.live_slots = self.labels.copy() if self._dense else np.sort(self.labels)
        # float16 (slots, dim), row = label; None in a worker's private copy. A reader gets it as a Future: the
        # copy is made beside the first queries, which do not need it (see Receiver.load)
        self._vectors: np.ndarray | Future[np.ndarray] | None = vectors
        self._vectors_nbytes = 2 * size * manifest.dim if vectors is not None else 0
        self._lazy_vectors = lazy_vectors and vectors is None  # made from hnswlib's memory on first use
        self._vectors_lock = threading.Lock()
        # called once the lazy copy was made (the cache then has it made at load for this partition's next base)
        self.on_vectors: Callable[[], None] | None = None
        self.masks = MaskCache()
        self._fields: FieldIndex | None = None
        self.default_ef = ef
        self._ef = ef
        index.set_ef(ef)
        self._ef_lock = threading.Lock()
        # neighbour lists by label: nb_labels[label] the labels of the item's nearest others (-1 past the end),
        # nb_dists their distances, nb_len how many there are; None without lists
        self.nb_labels: np.ndarray | None = None
        self.nb_dists: np.ndarray | None = None
        self.nb_len: np.ndarray | None = None
        self.nb_complete = False  # the lists hold every other item (a partition of at most w + 1 items)
        if neighbours is not None:
            rows, dists = neighbours
            w = rows.shape[1]
            self.nb_labels = np.full((size, w), -1, dtype=np.int64)
            self.nb_labels[self.labels] = np.where(rows >= 0, self.labels[np.maximum(rows, 0)], -1)
            self.nb_dists = np.full((size, w), np.inf, dtype=np.float32)
            self.nb_dists[self.labels] = dists
            self.nb_len = np.zeros(size, dtype=np.int64)
            self.nb_len[self.labels] = (rows >= 0).sum(axis=1)
            self.nb_complete = w >= len(ids) - 1
            for a in (self.nb_labels, self.nb_dists, self.nb_len):
                a.flags.writeable = False  # shared by every query (answers copy what they return)

    @property
    def metas(self) -> list[dict[str, Any] | None]:
        """The items' metadata, aligned with ``labels`` (:class:`SnapshotCorrupt` if its table is bad)."""
        if self._meta_of is None:
            self._load_metas()
        return self._metas  # type: ignore[return-value]

    @property
    def meta_of(self) -> list[dict[str, Any] | None]:
        """The items' metadata by slot (None for empty slots)."""
        if self._meta_of is None:
            self._load_metas()
        return self._meta_of  # type: ignore[return-value]

    def _load_metas(self) -> None:
        try:
            self._place_metas()
        except SnapshotCorrupt as exc:
            if self.on_corrupt is not None:
                self.on_corrupt(str(exc))  # the cache forgets this base and reports it (it was checked at load)
                exc.refused = True  # type: ignore[attr-defined]  # the call may be tried again: see hub._guard
            raise

    def _place_metas(self) -> None:
        with self._meta_lock:
            if self._meta_of is not None:
                return
            src = self._metas_in
            metas = src.rows() if isinstance(src, LazyMetadata) else src
            if self._dense:
                meta_of = list(metas)
            else:  # tombstoned or reused slots: place each item at its label
                meta_of = [None] * len(self.id_of)
                for lab, m in zip(self.labels.tolist(), metas):
                    meta_of[lab] = m
            self._metas = metas
            self._meta_of = meta_of  # last: readers check it first
            self._metas_in = metas

    @property
    def vectors(self) -> np.ndarray | None:
        """The float16 copy of the vectors (waits for it while it is still being made, or makes it if it is lazy);
        None when there is none."""
        if self._lazy_vectors:
            self._make_vectors()
        v = self._vectors
        if isinstance(v, Future):
            try:
                v = v.result()
            except Exception:  # noqa: BLE001 - e.g. MemoryError: hnswlib's own vectors serve (slower)
                v = None
            self._vectors = v
        return v

    def _make_vectors(self) -> None:
        with self._vectors_lock:
            if not self._lazy_vectors:
                return
            try:
                self._vectors = index_vectors(self.index, self.manifest.dim, len(self.id_of))
                self._vectors_nbytes = self._vectors.nbytes
            except Exception:  # noqa: BLE001 - MemoryError, a bad layout: hnswlib's own vectors serve (slower)
                log.warning("no float16 copy of a snapshot's vectors: exact scans read hnswlib's", exc_info=True)
            self._lazy_vectors = False
        if self._vectors is not None and self.on_vectors is not None:
            self.on_vectors()

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def index_bytes(self) -> int:
        """What hnswlib holds in memory (its file is its memory layout)."""
        return self.manifest.sections[0]

    @property
    def nbytes(self) -> int:
        # hnswlib's memory, the float16 vectors, the id/label/metadata tables (~400 B an item), compiled filters
        extra = self._vectors_nbytes + self.masks.nbytes
        if self.nb_labels is not None:
            extra += self.nb_labels.nbytes + self.nb_dists.nbytes + self.nb_len.nbytes  # type: ignore[union-attr]
        return self.index_bytes + extra + 400 * len(self.ids) + (self._fields.nbytes if self._fields else 0)

    @property
    def fields(self) -> FieldIndex:
        """Per-field value indexes of the metadata, built per field on first use."""
        if self._fields is None:
            self._fields = FieldIndex(self.meta_of, self.live)
        return self._fields

    def describe(self) -> str:
        return f"snapshot ({self.count} items, generation {self.generation})"

    def __contains__(self, id_: str) -> bool:
        return id_ in self.label

    def metadata(self, id_: str) -> dict[str, Any] | None:
        return self.meta_of[self.label[id_]]

    def vector(self, id_: str) -> np.ndarray | None:
        lab = self.label.get(id_)
        return None if lab is None else np.asarray(self.index.get_items([lab])[0], dtype=np.float32)

    def gather(self, slots: np.ndarray) -> np.ndarray:
        """float32 vectors of ``slots`` (from the float16 copy; hnswlib's own copy when there is none)."""
        if self.vectors is not None:
            out: np.ndarray = self.vectors[slots].astype(np.float32)
            return out
        return np.asarray(self.index.get_items(slots.tolist()), dtype=np.float32).reshape(len(slots), -1)

    def knn(self, queries: np.ndarray, k: int, ef: int | None, flt: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """hnswlib's ``(labels, distances)``; raises RuntimeError when fewer than ``k`` matches are found."""
        want_ef = max(ef or self.default_ef, k)
        threads = 1 if len(queries) == 1 else CPUS
        if want_ef == self._ef:
            found: tuple[np.ndarray, np.ndarray] = self.index.knn_query(queries, k=k, num_threads=threads, filter=flt)
            return found
        with self._ef_lock:  # ef is index state in hnswlib: set it and search under one lock
            self.index.set_ef(want_ef)
            try:
                found = self.index.knn_query(queries, k=k, num_threads=threads, filter=flt)
                return found
            finally:
                self.index.set_ef(self._ef)

    def search(
        self, queries: np.ndarray, k: int, predicate: Any, exclude: set[str], ef: int | None
    ) -> list[Ranked]:
        """The partition's answer (``predicate`` is a compiled :class:`~embcache.core.engine.Filter` or None)."""
        return search_base(self, queries, k, ef, where=predicate, hidden=exclude)


def index_bytes(index: hnswlib.Index) -> bytes:
    """hnswlib's file format, via a temporary file in memory-backed /dev/shm where there is one."""
    fd, path = tempfile.mkstemp(prefix="embcache-", suffix=".hnsw", dir=_SHM)
    os.close(fd)
    try:
        index.save_index(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def _load_index(path: str, metric: str, dim: int, max_elements: int, allow_replace_deleted: bool) -> hnswlib.Index:
    if metric not in ("cosine", "l2", "ip"):  # embcache's metric names are hnswlib's
        raise SnapshotCorrupt(f"snapshot manifest names an unknown metric {metric!r}")
    index = hnswlib.Index(space=metric, dim=dim)
    try:
        index.load_index(path, max_elements=max_elements, allow_replace_deleted=allow_replace_deleted)
    except RuntimeError as exc:
        raise SnapshotCorrupt(f"hnswlib could not read the snapshot index: {exc}") from None
    return index


def _level0(path: str, dim: int, n_slots: int, copy: bool) -> np.ndarray | None:
    """The float16 copy of the index's vectors, read from hnswlib's file (see :mod:`embcache.core.hnswfile`);
    with ``copy=False`` only the check that its labels fit the label table, and None."""
    if os.path.getsize(path) == 0:
        return np.zeros((n_slots, dim), dtype=np.float16) if copy else None
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
        try:
            if not copy:
                level0_layout(data.data, dim, n_slots)
                return None
            return level0_vectors(data.data, dim, n_slots)
        finally:
            del data
    except ValueError as exc:
        raise SnapshotCorrupt(f"the snapshot index does not hold the vectors its tables name: {exc}") from None


def load_index_file(data: bytes | memoryview, metric: str, dim: int, max_elements: int, allow_replace_deleted: bool,
                    *, n_slots: int, copy_vectors: bool = True) -> tuple[hnswlib.Index, np.ndarray | None]:
    """hnswlib's index from its file bytes, and (for readers, not ``allow_replace_deleted`` builders, unless
    ``copy_vectors=False``) the float16 copy of its vectors."""
    fd, path = tempfile.mkstemp(prefix="embcache-", suffix=".hnsw", dir=_SHM)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        index = _load_index(path, metric, dim, max_elements, allow_replace_deleted)
        vectors = None if allow_replace_deleted else _level0(path, dim, n_slots, copy_vectors)
    finally:
        os.unlink(path)
    return index, vectors


def pack(
    index: hnswlib.Index, labels: np.ndarray, ids: list[str], metas: list[Any], *, generation: int, pos: str,
    dim: int, metric: str, M: int, ef_construction: int, builder: str, build_seconds: float, deleted: int,
    max_label: int, neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[list[bytes], Manifest]:
    """Serialise a snapshot into chunks and its manifest. ``neighbours`` are the lists ``(rows, distances)``,
    both ``(len(ids), w)``, row ``i`` for ``ids[i]`` (see the module docstring), or None for none."""
    sections = [
        index_bytes(index),
        np.ascontiguousarray(labels, dtype="<i8").tobytes(),
        json.dumps(ids, ensure_ascii=False).encode(),
        json.dumps(metas, ensure_ascii=False, separators=(",", ":")).encode(),
    ]
    width = 0
    if neighbours is not None and neighbours[0].shape[1] > 0:
        rows, dists = neighbours
        check_neighbour_lists(rows, dists, len(ids))  # never publish what readers would refuse
        width = rows.shape[1]
        sections += [np.ascontiguousarray(rows, dtype="<i4").tobytes(), np.ascontiguousarray(dists, "<f4").tobytes()]
    blob = b"".join(sections)
    chunks = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
    manifest = Manifest(
        generation=generation, sid=f"{generation}.{secrets.token_hex(4)}", pos=pos, count=len(ids), dim=dim,
        metric=metric, M=M, ef_construction=ef_construction,
        chunks=len(chunks), nbytes=len(blob), sections=tuple(len(s) for s in sections),
        sha256=hashlib.sha256(blob).hexdigest(), builder=builder, built_at=time.time(),
        build_seconds=round(build_seconds, 4), deleted=deleted, max_label=max_label, neighbours=width,
    ).sealed()
    return chunks, manifest


class Receiver:
    """Where a snapshot's chunks land while they are fetched: one buffer of anonymous memory, every byte
    through sha256 in a thread beside the fetch (``hashlib`` releases the GIL), the tables parsed as soon as
    their chunks are in (they are fetched first), and nothing handed to hnswlib before the digest, the index
    file's structure (:func:`~embcache.core.hnswfile.index_params`) and the tables have been checked.

    The index is built with ``hnswlib.Index(params)`` from views of the buffer (hnswlib copies what it keeps):
    no temporary file, no second copy of the blob, and never ``pickle``. The I/O layer asks :meth:`segments`
    for chunk ``i``'s destination, fills it (``recv_into``) and calls :meth:`received`, or hands whole chunks to
    :meth:`write`. Always :meth:`close` it (or use it as a context)."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.sizes = [max(0, min(CHUNK_BYTES, manifest.nbytes - i * CHUNK_BYTES)) for i in range(manifest.chunks)]
        self._done = 0
        self._views: list[memoryview] = []
        self._keep = False  # the float16 copy is still being made from the buffer
        self._release_lock = threading.Lock()
        # anonymous memory, unmapped as soon as the index is loaded (no huge pages: where the kernel compacts
        # memory to make them, faulting them in cost more than it saved)
        self._map: mmap.mmap | None = mmap.mmap(-1, max(1, manifest.nbytes))
        self._buf = memoryview(self._map)[: manifest.nbytes]
        self._arrived: dict[int, list[memoryview]] = {}  # chunks received but not hashed yet (out of order)
        self._hashed = 0  # chunks before this one went to the hasher
        a = manifest.sections[0]
        self._table_chunks = set(range(min(a // CHUNK_BYTES, manifest.chunks - 1), manifest.chunks)) \
            if manifest.nbytes > a else set()
        self._tables: tuple[np.ndarray, Any, Any, Any] | SnapshotCorrupt | None = None
        self._digest = hashlib.sha256()
        self._queue: queue.SimpleQueue[memoryview | None] | None = None
        self._hasher: threading.Thread | None = None
        if manifest.chunks > 1:
            self._queue = queue.SimpleQueue()
            self._hasher = threading.Thread(target=self._hash_loop, name="embcache-sha256", daemon=True)
            self._hasher.start()

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _hash_loop(self) -> None:
        assert self._queue is not None
        while (view := self._queue.get()) is not None:
            self._digest.update(view)

    def order(self) -> list[int]:
        """The order to fetch the chunks in: those holding the tables first, so that they are parsed while the
        index's chunks are still on their way."""
        tables = sorted(self._table_chunks)
        return tables + [i for i in range(self.manifest.chunks) if i not in self._table_chunks]

    def segments(self, i: int) -> list[memoryview]:
        """Where chunk ``i``'s bytes go."""
        view = self._buf[i * CHUNK_BYTES : i * CHUNK_BYTES + self.sizes[i]]
        self._views.append(view)
        return [view]

    def received(self, i: int, segments: list[memoryview]) -> None:
        """Chunk ``i`` has filled its :meth:`segments` (chunks may arrive in any order, each once)."""
        if not 0 <= i < self.manifest.chunks or i < self._hashed or i in self._arrived:
            raise ValueError(f"chunk {i} received twice or out of range")
        self._done += 1
        self._arrived[i] = segments
        while self._hashed in self._arrived:  # sha256 runs over the blob in order
            for view in self._arrived.pop(self._hashed):
                if self._queue is not None:
                    self._queue.put(view)
                else:
                    self._digest.update(view)
            self._hashed += 1
        self._table_chunks.discard(i)
        if not self._table_chunks and self._tables is None:
            self._tables = self._parse_tables()

    def _parse_tables(self) -> tuple[np.ndarray, Any, Any, Any] | SnapshotCorrupt:
        """The label, id and metadata tables and the neighbour lists (not yet verified: :meth:`load` uses them
        once the digest matched), or the error they raised."""
        m = self.manifest
        a, b, c, d = m.sections[:4]
        with self._buf[a:] as tables:
            try:
                labels = np.frombuffer(tables, dtype="<i8", count=b // 8).astype(np.int64)
                ids = json.loads(bytes(tables[b : b + c]))
                metas = LazyMetadata(bytes(tables[b + c : b + c + d]), m.count, f"snapshot generation {m.generation}")
            except (ValueError, RecursionError) as exc:
                return SnapshotCorrupt(f"snapshot generation {m.generation} has unreadable tables: {str(exc)[:200]}")
            lists = None
            if m.neighbours:
                start, w = b + c + d, m.neighbours
                size = m.count * w
                rows = np.frombuffer(tables, dtype="<i4", count=size, offset=start).reshape(m.count, w)
                dists = np.frombuffer(tables, dtype="<f4", count=size, offset=start + 4 * size).reshape(m.count, w)
                lists = (rows.astype(np.int64), dists.astype(np.float32))  # copies: the buffer is unmapped later
                del rows, dists
                try:
                    check_neighbour_lists(*lists, m.count)
                except ValueError as exc:
                    return SnapshotCorrupt(f"snapshot generation {m.generation} has bad neighbour lists: {exc}")
        return labels, ids, metas, lists

    def write(self, i: int, chunk: bytes | bytearray | memoryview) -> None:
        """Chunk ``i`` as a whole (fetched by a client that returns values)."""
        if len(chunk) != self.sizes[i]:
            raise SnapshotCorrupt(f"snapshot generation {self.manifest.generation}: chunk {i} has {len(chunk)} bytes, "
                                  f"its manifest says {self.sizes[i]}")
        segs = self.segments(i)
        segs[0][:] = chunk
        self.received(i, segs)

    def _finish_digest(self) -> str:
        if self._queue is not None and self._hasher is not None:
            self._queue.put(None)
            self._hasher.join()
            self._queue = None
        return self._digest.hexdigest()

    def load(self, *, ef: int, for_update: bool = False, copy_vectors: bool = True) -> HnswBase:
        """Verify what was received and load it: :class:`SnapshotCorrupt` when a chunk is missing, the sha256
        fails, or the index file or the tables disagree with the manifest or with themselves. A reader's base gets
        its float16 copy of the vectors made from the received bytes beside its first queries, or, with
        ``copy_vectors=False``, on first use (see :class:`HnswBase`)."""
        m = self.manifest
        a = m.sections[0]
        gen = m.generation
        if self._done != m.chunks:
            self._finish_digest()
            raise SnapshotCorrupt(f"snapshot generation {gen} is missing chunks")
        # parsing (our code, on untrusted bytes: it raises, never crashes) runs while the hasher finishes; hnswlib
        # sees nothing before the digest matched
        index_file = self._buf[:a]
        check_index_header(bytes(index_file[: _HNSW_HEADER.size]), m)
        if self._tables is None:
            self._tables = self._parse_tables()
        if isinstance(self._tables, SnapshotCorrupt):
            if self._finish_digest() != m.sha256:
                raise SnapshotCorrupt(f"snapshot generation {gen} failed its sha256 check")
            raise self._tables
        labels, ids, metas, lists = self._tables
        if not (isinstance(ids, list) and len(labels) == len(ids) == m.count):  # metas: checked on first use
            raise SnapshotCorrupt(f"snapshot generation {gen} has inconsistent tables")
        n_slots = int(labels.max()) + 1 if len(labels) else 0
        if m.metric not in ("cosine", "l2", "ip"):  # embcache's metric names are hnswlib's
            raise SnapshotCorrupt(f"snapshot manifest names an unknown metric {m.metric!r}")
        try:
            params = index_params(index_file, m.metric, m.dim, allow_replace_deleted=for_update,
                                  max_elements=m.count + m.deleted + 1024 if for_update else 0)
            layout = None if for_update else level0_layout(index_file, m.dim, n_slots)
        except ValueError as exc:
            raise SnapshotCorrupt(f"snapshot generation {gen}: its index file is not a valid hnswlib index: "
                                  f"{exc}") from None
        if self._finish_digest() != m.sha256:
            raise SnapshotCorrupt(f"snapshot generation {gen} failed its sha256 check")
        if for_update:  # a worker reads every item's metadata: refuse a bad table here, where it rebuilds in full
            metas.rows()
        try:
            index = hnswlib.Index(params)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise SnapshotCorrupt(f"hnswlib could not load the snapshot index: {exc}") from None
        del params
        vectors: Future[np.ndarray] | None = None
        if layout is not None and copy_vectors:  # the float16 copy: checked above, cast beside the first queries
            vectors = Future()
            self._keep = True
            holder = [layout]  # the thread drops the last reference to the buffer's block before unmapping it
            threading.Thread(target=self._copy_vectors, args=(vectors, holder, m.dim, n_slots),
                             name="embcache-f16", daemon=True).start()
        layout = None  # no reference to the buffer's block past the load (it is unmapped on close)
        index_file.release()
        return HnswBase(index, labels, ids, metas, m, ef, vectors=vectors, neighbours=lists,
                        lazy_vectors=not (for_update or copy_vectors))

    def _copy_vectors(self, out: Future[np.ndarray], holder: list[tuple[np.ndarray, np.ndarray, int]], dim: int,
                      n_slots: int) -> None:
        try:
            out.set_result(level0_copy(*holder.pop(), dim, n_slots))
        except BaseException as exc:  # noqa: BLE001 - MemoryError: the base falls back to hnswlib's vectors
            out.set_exception(exc)
        finally:
            self._keep = False
            self._release()

    def close(self) -> None:
        """Free the buffer (at once, or when the float16 copy is made)."""
        self._finish_digest()
        if not self._keep:
            self._release()

    def _release(self) -> None:
        with self._release_lock:
            try:
                for view in self._views:
                    view.release()
                self._views.clear()
                self._buf.release()
                if self._map is not None:
                    self._map.close()
                    self._map = None
            except (BufferError, ValueError):  # still exported (an exception's frames): the collector unmaps it
                pass


def unpack(chunks: list[bytes | None], manifest: Manifest, *, ef: int, for_update: bool = False,
           copy_vectors: bool = True) -> HnswBase:
    """Verify and parse a snapshot from its chunks; :class:`SnapshotCorrupt` when a chunk is missing or the
    checksum fails (the same checks as a :class:`Receiver` fed while fetching)."""
    if len(chunks) != manifest.chunks or any(c is None for c in chunks):
        raise SnapshotCorrupt(f"snapshot generation {manifest.generation} is missing chunks")
    with Receiver(manifest) as receiver:
        for i, chunk in enumerate(chunks):
            receiver.write(i, chunk)  # type: ignore[arg-type]
        return receiver.load(ef=ef, for_update=for_update, copy_vectors=copy_vectors)


def check_neighbour_lists(rows: np.ndarray, dists: np.ndarray, count: int) -> None:
    """ValueError unless ``(rows, dists)`` are neighbour lists of ``count`` items: the same shape ``(count, w)``,
    rows in ``[0, count)`` and never the item itself, each list a prefix followed by ``-1`` only, distances finite
    and ascending along the prefix (``inf`` after it). A snapshot's lists are read back from Redis: an index out
    of range would read past the tables, so a hostile list is refused before anything uses it."""
    if rows.ndim != 2 or rows.shape != dists.shape or rows.shape[0] != count:
        raise ValueError(f"shape {rows.shape}/{dists.shape} for {count} items")
    if not rows.size:
        return
    valid = rows >= 0
    if (rows < -1).any() or (rows >= count).any():
        raise ValueError("a row out of range")
    if (valid[:, 1:] & ~valid[:, :-1]).any():
        raise ValueError("an entry after the end of a list")
    if (rows == np.arange(count)[:, None]).any():
        raise ValueError("an item listed as its own neighbour")
    d = np.where(valid, dists, np.inf)
    if not np.isfinite(dists[valid]).all() or (d[:, 1:] < d[:, :-1]).any():
        raise ValueError("distances that are not finite and ascending")
    ordered = np.sort(rows, axis=1)
    if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():
        raise ValueError("an item listed twice")
    if not np.isinf(dists[~valid]).all():
        raise ValueError("a distance past the end of a list")


def pending_uploads(state: dict[str, str]) -> dict[str, tuple[int, int]]:
    """``{sid: (chunks, bytes)}`` of the upload records in a partition's state (at most ``MAX_UPLOADS``; records
    that do not parse are left out)."""
    out: dict[str, tuple[int, int]] = {}
    for field, value in state.items():
        if not field.startswith(UPLOAD_FIELD) or len(out) >= MAX_UPLOADS:
            continue
        sid = field[len(UPLOAD_FIELD):]
        parts = value.split()
        if _SID_RE.fullmatch(sid) and len(parts) == 2 and all(x.isdigit() and len(x) < 13 for x in parts):
            n, size = int(parts[0]), int(parts[1])
            if n <= MAX_UPLOAD_CHUNKS:
                out[sid] = (n, size)
    return out
