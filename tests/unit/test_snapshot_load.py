"""Loading a snapshot without a temporary file (issue 12 part 5): ``Receiver`` + ``hnswlib.Index(params)``.

The index built from memory must answer exactly as hnswlib's own ``load_index`` of the same file, keep deletes
and reused labels, serve a worker's updates, and refuse (never crash on) index files whose sha256 was recomputed
after tampering: out-of-range neighbour ids and entry points are what make hnswlib read out of bounds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import tempfile
import types

import hnswlib
import numpy as np
import pytest

from embcache.client.cache import PartitionCache
from embcache.core import snapshot
from embcache.core.engine import compile_filter
from embcache.core.errors import SnapshotCorrupt
from embcache.core.hnswfile import CPUS, HEADER, index_params, index_vectors, level0_vectors
from tests.datasets import MiniLMSubset

DIM = 384


def _build(ds: MiniLMSubset, n: int, *, deletes: int = 0) -> tuple[hnswlib.Index, np.ndarray, list[str]]:
    index = hnswlib.Index(space="cosine", dim=DIM)
    index.init_index(max_elements=n + 16, M=16, ef_construction=100, random_seed=1, allow_replace_deleted=True)
    labels = np.arange(n, dtype=np.int64) * 2  # sparse labels: rows are labels, not positions
    # one thread: the same graph, hence the same bytes, every run (tests below flip bytes at fixed places; with
    # hnswlib's threads the byte could land in a link list one run and in a vector the next)
    index.add_items(ds.base[:n], labels, num_threads=1)
    ids = [ds.ids[i] for i in range(n)]
    for j in range(deletes):  # tombstones, then new items that reuse their slots under new labels
        index.mark_deleted(int(labels[j]))
    if deletes:
        new = np.arange(deletes, dtype=np.int64) + 2 * n
        index.add_items(ds.base[n : n + deletes], new, replace_deleted=True, num_threads=1)
        labels = np.concatenate([labels[deletes:], new])
        ids = ids[deletes:] + [ds.ids[n + j] for j in range(deletes)]
    return index, labels, ids


def _pack(index: hnswlib.Index, labels: np.ndarray, ids: list[str]) -> tuple[list[bytes], snapshot.Manifest]:
    return snapshot.pack(index, labels, ids, [{"i": i} for i in range(len(ids))], generation=3, pos="9-0", dim=DIM,
                         metric="cosine", M=16, ef_construction=100, builder="t", build_seconds=0.0, deleted=0,
                         max_label=int(labels.max()))


def _reseal(chunks: list[bytes], manifest: snapshot.Manifest, index_file: bytes) -> tuple[list[bytes],
                                                                                         snapshot.Manifest]:
    """A snapshot with another index file and a digest chain recomputed to match (what a forger would write)."""
    blob = b"".join(chunks)
    a = manifest.sections[0]
    blob = index_file + blob[a:]
    step = snapshot.CHUNK_BYTES
    new_chunks = [blob[i : i + step] for i in range(0, len(blob), step)]
    m = dataclasses.replace(manifest, sections=(len(index_file), *manifest.sections[1:]), nbytes=len(blob),
                            chunks=len(new_chunks), sha256=hashlib.sha256(blob).hexdigest()).sealed()
    return new_chunks, m


def _file_loaded(index_file: bytes) -> hnswlib.Index:
    fd, path = tempfile.mkstemp(suffix=".hnsw")
    try:
        os.write(fd, index_file)
        os.close(fd)
        index = hnswlib.Index(space="cosine", dim=DIM)
        index.load_index(path)
        return index
    finally:
        os.unlink(path)


@pytest.mark.parametrize("deletes", [0, 40])
def test_loaded_from_memory_answers_as_hnswlib_load_index(minilm_subset: MiniLMSubset, deletes: int) -> None:
    ds = minilm_subset
    index, labels, ids = _build(ds, 1500, deletes=deletes)
    chunks, m = _pack(index, labels, ids)
    base = snapshot.unpack(chunks, m, ef=64)
    reference = _file_loaded(b"".join(chunks)[: m.sections[0]])
    reference.set_ef(64)
    got_l, got_d = base.index.knn_query(ds.queries, k=10)
    ref_l, ref_d = reference.knn_query(ds.queries, k=10)
    assert np.array_equal(got_l, ref_l) and np.allclose(got_d, ref_d)
    assert base.index.get_current_count() == reference.get_current_count()
    # batches search on this process's CPUs (the state's -1 had made hnswlib's default thread count useless)
    assert base.index.num_threads == CPUS >= 1
    assert sorted(base.index.get_ids_list()) == sorted(reference.get_ids_list())
    if deletes:  # the reused slots hold the new items, the deleted labels are gone
        assert not set(base.index.get_ids_list()) & set(range(0, 2 * deletes, 2))
    # the float16 copy (made beside the first queries) is the one read from the file
    assert base.vectors is not None
    expect = level0_vectors(b"".join(chunks)[: m.sections[0]], DIM, int(labels.max()) + 1)
    assert np.array_equal(base.vectors, expect)
    assert np.allclose(base.gather(labels[:5]), ds.base[[ds.ids.index(i) for i in ids[:5]]], atol=1e-2)


@pytest.mark.parametrize("deletes", [0, 40])
def test_a_lazy_float16_copy_is_made_on_first_use_from_hnswlibs_memory(minilm_subset: MiniLMSubset,
                                                                        deletes: int) -> None:
    """``copy_vectors=False``: no copy at load (nor in ``nbytes``); the first use makes the very copy an eager
    load makes (read from hnswlib's memory instead of the file), once, and says so through ``on_vectors``."""
    ds = minilm_subset
    index, labels, ids = _build(ds, 1200, deletes=deletes)
    chunks, m = _pack(index, labels, ids)
    eager = snapshot.unpack(chunks, m, ef=64)
    lazy = snapshot.unpack(chunks, m, ef=64, copy_vectors=False)
    assert lazy._vectors is None and lazy.nbytes < eager.nbytes
    calls: list[int] = []
    lazy.on_vectors = lambda: calls.append(1)
    assert eager.vectors is not None and lazy.vectors is not None
    assert np.array_equal(lazy.vectors, eager.vectors) and calls == [1]
    assert lazy.nbytes == eager.nbytes
    slots = labels[::7]
    assert np.array_equal(lazy.gather(slots), eager.gather(slots))


def test_index_vectors_refuses_labels_beyond_the_table(minilm_subset: MiniLMSubset) -> None:
    index, labels, _ = _build(minilm_subset, 300)
    with pytest.raises(ValueError):
        index_vectors(index, DIM, int(labels.max()))  # one slot short
    with pytest.raises(ValueError):
        index_vectors(index, DIM + 1, int(labels.max()) + 1)
    assert index_vectors(index, DIM, int(labels.max()) + 1).shape == (int(labels.max()) + 1, DIM)


def test_a_worker_copy_takes_updates_and_reuses_deleted_slots(minilm_subset: MiniLMSubset) -> None:
    ds = minilm_subset
    index, labels, ids = _build(ds, 800, deletes=10)
    chunks, m = _pack(index, labels, ids)
    m = dataclasses.replace(m, deleted=0).sealed()
    base = snapshot.unpack(chunks, m, ef=64, for_update=True)
    assert base.vectors is None
    idx = base.index
    before = idx.get_current_count()
    idx.mark_deleted(int(labels[0]))
    idx.add_items(ds.base[900:901], np.array([99_999]), replace_deleted=True)  # reuses the slot just freed
    assert idx.get_current_count() == before
    room = idx.get_max_elements() - idx.get_current_count()
    assert room >= 1024  # headroom for the next build's new items
    idx.add_items(ds.base[901:950], np.arange(100_000, 100_049))
    assert idx.knn_query(ds.base[900:901], k=1)[0][0][0] == 99_999


def test_chunks_may_arrive_in_any_order(minilm_subset: MiniLMSubset) -> None:
    ds = minilm_subset
    index, labels, ids = _build(ds, 5000)  # ~8.4 MB: two chunks, the tables in the second
    chunks, m = _pack(index, labels, ids)
    assert m.chunks == 2
    with snapshot.Receiver(m) as rec:
        assert rec.order() == [1, 0]  # the tables' chunk first
        for i in rec.order():
            rec.write(i, chunks[i])
        base = rec.load(ef=64)
    assert base.count == 5000 and base.metadata(ids[7]) == {"i": 7}
    with snapshot.Receiver(m) as rec, pytest.raises(SnapshotCorrupt, match="missing"):
        rec.write(1, chunks[1])
        rec.load(ef=64)
    with snapshot.Receiver(m) as rec, pytest.raises(SnapshotCorrupt, match="bytes"):
        rec.write(0, chunks[0][:-1])
    flipped = [chunks[0][:-1] + bytes([chunks[0][-1] ^ 1]), chunks[1]]
    with pytest.raises(SnapshotCorrupt, match="sha256"):
        snapshot.unpack(flipped, m, ef=64)


# --- forged index files (digest recomputed): refused before hnswlib sees them ----------------------------------
def _layout(index_file: bytes) -> dict[str, int]:
    (_, _, count, size, label_off, data_off, max_level, entry, max_m, max_m0, *_rest) = HEADER.unpack_from(index_file)
    return dict(count=count, size=size, label_off=label_off, data_off=data_off, max_level=max_level, entry=entry,
                max_m=max_m, max_m0=max_m0, end0=HEADER.size + count * size)


def _upper_record(index_file: bytes) -> tuple[int, int]:
    """Offset and byte size of the first element's upper-level link record."""
    lay = _layout(index_file)
    at = lay["end0"]
    while True:
        (n,) = struct.unpack_from("<I", index_file, at)
        if n:
            return at, n
        at += 4


def _patch(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def _forgeries(index_file: bytes) -> dict[str, bytes]:
    lay = _layout(index_file)
    first = HEADER.size  # element 0's level-0 record: [count | flags][ids...]
    up, up_size = _upper_record(index_file)
    header_fields = struct.Struct("<6Qii3QdQ")
    fields = list(header_fields.unpack_from(index_file))

    def header(i: int, value: int) -> bytes:
        f = list(fields)
        f[i] = value
        return header_fields.pack(*f) + index_file[header_fields.size :]

    return {
        "level-0 neighbour id past the elements": _patch(index_file, first + 4, "<I", lay["count"] + 5),
        "level-0 neighbour id 2**31": _patch(index_file, first + 4, "<I", 1 << 31),
        "level-0 link count past maxM0": _patch(index_file, first, "<H", lay["max_m0"] + 1),
        "upper-level neighbour id past the elements": _patch(index_file, up + 8, "<I", lay["count"] + 1),
        "upper-level link count past maxM": _patch(index_file, up + 4, "<H", lay["max_m"] + 1),
        "link record size not a whole level": _patch(index_file, up, "<I", up_size + 4),
        "link record past the end of the file": _patch(index_file, up, "<I", 1 << 30),
        "entry point past the elements": header(7, lay["count"] + 3),
        "entry point on a lower level": header(7, 0) if _level_of(index_file, 0) != lay["max_level"] else
        header(7, 1),
        "top level higher than any element's": header(6, lay["max_level"] + 1),
        "element count past the file": header(2, lay["count"] + 10),
        "a byte appended": index_file + b"\0\0\0\0",
        "the last link record cut": index_file[:-4],
        "maxM0 not 2 M (the stride hnswlib trusts)": header(9, 2 * fields[10] + 2),
    }


def _level_of(index_file: bytes, element: int) -> int:
    params = index_params(index_file, "cosine", DIM)
    return int(params["element_levels"][element])  # type: ignore[index]


def test_forged_index_files_are_refused_not_crashed_on(minilm_subset: MiniLMSubset) -> None:
    ds = minilm_subset
    index, labels, ids = _build(ds, 2000, deletes=20)
    chunks, m = _pack(index, labels, ids)
    index_file = b"".join(chunks)[: m.sections[0]]
    index_params(index_file, "cosine", DIM)  # the genuine file passes
    forgeries = _forgeries(index_file)
    assert len(set(forgeries.values())) == len(forgeries)
    for label, forged in forgeries.items():
        with pytest.raises(ValueError):
            index_params(forged, "cosine", DIM)
        forged_chunks, fm = _reseal(chunks, m, forged)  # (a header change may be caught by check_index_header)
        with pytest.raises(SnapshotCorrupt):
            snapshot.unpack(forged_chunks, fm, ef=64)
            raise AssertionError(f"{label}: loaded")
    assert snapshot.unpack(chunks, m, ef=64).count == len(ids)  # and the genuine one still loads


def test_an_empty_index_loads(minilm_subset: MiniLMSubset) -> None:
    index = hnswlib.Index(space="cosine", dim=DIM)
    index.init_index(max_elements=16, M=16, ef_construction=100, random_seed=1, allow_replace_deleted=True)
    chunks, m = snapshot.pack(index, np.zeros(0, dtype=np.int64), [], [], generation=1, pos="1-0", dim=DIM,
                              metric="cosine", M=16, ef_construction=100, builder="t", build_seconds=0.0,
                              deleted=0, max_label=-1)
    base = snapshot.unpack(chunks, m, ef=64)
    assert base.count == 0 and base.index.get_current_count() == 0
    worker = snapshot.unpack(chunks, m, ef=64, for_update=True)
    worker.index.add_items(minilm_subset.base[:3], np.arange(3))
    assert worker.index.knn_query(minilm_subset.base[1:2], k=1)[0][0][0] == 1


def _with_metadata_table(chunks: list[bytes], manifest: snapshot.Manifest, table: bytes) -> tuple[list[bytes],
                                                                                                   snapshot.Manifest]:
    """The snapshot with another metadata table and its digest chain recomputed (what a forging worker writes)."""
    blob = b"".join(chunks)
    a, b, c, d = manifest.sections[:4]
    blob = blob[: a + b + c] + table + blob[a + b + c + d :]
    step = snapshot.CHUNK_BYTES
    new_chunks = [blob[i : i + step] for i in range(0, len(blob), step)]
    m = dataclasses.replace(manifest, sections=(a, b, c, len(table), *manifest.sections[4:]), nbytes=len(blob),
                            chunks=len(new_chunks), sha256=hashlib.sha256(blob).hexdigest()).sealed()
    return new_chunks, m


def test_metadata_is_parsed_on_first_use(minilm_subset: MiniLMSubset) -> None:
    """A reader keeps the metadata table as bytes until a query needs it (filters, include), then serves the
    same metadata a worker's copy parses at once."""
    index, labels, ids = _build(minilm_subset, 300, deletes=20)  # reused labels: metadata placed by slot
    chunks, m = _pack(index, labels, ids)
    base = snapshot.unpack(chunks, m, ef=64)
    assert base._metas is None and base._meta_of is None  # nothing parsed by the load or a plain search
    base.knn(minilm_subset.queries[:1], 5, None)
    assert base._metas is None
    assert base.metadata(ids[7]) == {"i": 7} and base.metas == [{"i": i} for i in range(len(ids))]
    assert all(base.meta_of[lab] == {"i": i} for i, lab in enumerate(labels.tolist()))
    assert base.fields.mask(compile_filter({"i": {"$lt": 10}}).tree).sum() == 10  # type: ignore[union-attr]
    worker = snapshot.unpack(chunks, m, ef=64, for_update=True)
    assert worker.metas == base.metas


@pytest.mark.parametrize("table", [b"[{\"i\": 0}", b"{}", b"[]", b"[1, 2]", b"[[]]", b"\"x\"", b"null",
                                   b"[" * 100_000 + b"]" * 100_000])
def test_a_bad_metadata_table_is_refused_on_first_use(minilm_subset: MiniLMSubset, table: bytes) -> None:
    """Not JSON, not a list, the wrong length, or items that are not objects or null: the first use raises
    SnapshotCorrupt (and tells the cache), every later use too; a worker refuses the snapshot at load."""
    index, labels, ids = _build(minilm_subset, 2)
    chunks, m = _with_metadata_table(*_pack(index, labels, ids), table)
    base = snapshot.unpack(chunks, m, ef=64)  # the load does not read the table
    told: list[str] = []
    base.on_corrupt = told.append
    assert base.knn(minilm_subset.queries[:1], 1, None)[0].shape == (1, 1)
    for use in (lambda: base.metas, lambda: base.metadata(ids[0]), lambda: base.fields):
        with pytest.raises(SnapshotCorrupt, match="bad metadata table") as exc:
            use()
        assert exc.value.refused  # type: ignore[attr-defined]  # the cache was told: a read may be tried again
    assert len(told) == 3 and "bad metadata table" in told[0] and len(set(told)) == 1  # the same reason each time
    with pytest.raises(SnapshotCorrupt, match="bad metadata table"):
        snapshot.unpack(chunks, m, ef=64, for_update=True)


def _budget_base(n: int = 4000, dim: int = 64) -> snapshot.HnswBase:
    x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    index = hnswlib.Index(space="l2", dim=dim)
    index.init_index(max_elements=n, M=16, ef_construction=50, random_seed=1)
    labels = np.arange(n)
    index.add_items(x, labels, num_threads=1)
    chunks, m = snapshot.pack(index, labels, [f"i{i}" for i in labels], [None] * n, generation=3, pos="9-0",
                              dim=dim, metric="l2", M=16, ef_construction=50, builder="t", build_seconds=0.0,
                              deleted=0, max_label=n - 1)
    return snapshot.unpack(chunks, m, ef=64, copy_vectors=False)


def test_the_cache_stays_within_its_budget_when_a_lazy_copy_is_made() -> None:
    """A base grows when it makes its float16 copy (found by review: the budget was only checked at load, so two
    bases that fit without their copies stayed over it): the cache evicts the least recently used other base."""
    a, b = _budget_base(), _budget_base()
    cache = PartitionCache(types.SimpleNamespace(is_cluster=False), budget_bytes=2 * a.nbytes + 1000,  # type: ignore[arg-type]
                           refresh_interval=0, follow=False)
    cache._put(("s", "v", "a"), a, None)  # type: ignore[arg-type]
    cache._put(("s", "v", "b"), b, None)  # type: ignore[arg-type]
    assert cache.cached(("s", "v", "a")) is a and cache.cached(("s", "v", "b")) is b
    assert a.vectors is not None  # a's first exact scan: a is kept, b goes
    assert cache.nbytes() <= cache.budget and cache.cached(("s", "v", "a")) is a
    assert cache.cached(("s", "v", "b")) is None and ("s", "v", "a") in cache._scanned


def test_a_tombstone_above_every_live_label_is_neither_refused_nor_copied() -> None:
    """A worker's tombstone keeps its label in level 0; when it is the highest label, it lies beyond the label
    table. Found by review: readers refused such a snapshot as corrupt. A live label beyond the table still is."""
    x = np.random.default_rng(0).standard_normal((200, 64)).astype(np.float32)
    index = hnswlib.Index(space="l2", dim=64)
    index.init_index(max_elements=250, M=16, ef_construction=50, random_seed=1, allow_replace_deleted=True)
    index.add_items(x, np.arange(200), num_threads=1)
    index.mark_deleted(199)
    labels = np.arange(199)
    common = dict(generation=3, pos="9-0", dim=64, metric="l2", M=16, ef_construction=50, builder="t",
                  build_seconds=0.0, max_label=199)
    chunks, m = snapshot.pack(index, labels, [f"i{i}" for i in labels], [None] * 199, deleted=1, **common)
    for copy in (True, False):
        base = snapshot.unpack(chunks, m, ef=64, copy_vectors=copy)
        assert base.vectors is not None and base.vectors.shape == (199, 64)
        assert np.allclose(base.vectors.astype(np.float32), x[:199], atol=1e-2)
    index.unmark_deleted(199)  # now live, and beyond the table
    chunks, m = snapshot.pack(index, labels, [f"i{i}" for i in labels], [None] * 199, deleted=0, **common)
    with pytest.raises(SnapshotCorrupt):
        snapshot.unpack(chunks, m, ef=64)
