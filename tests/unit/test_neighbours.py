"""Neighbour lists (issue 14.1) without Redis: the space option's validation, the snapshot sections (round trip,
hostile lists refused, the old format unchanged at neighbours=0), and the workers' lists against a brute force
on real embeddings, after a full build and after an incremental one."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import hnswlib
import numpy as np
import pytest

from embcache.core import snapshot
from embcache.core.codec import MAX_NEIGHBOURS, check_space_params
from embcache.core.errors import CorruptRecord, InvalidInput, SnapshotCorrupt
from embcache.redis.catalogue import SpaceRecord, _load
from tests.datasets import MiniLMSubset
from workers import neighbours as nbl


# the space option ---------------------------------------------------------------------------------------------
def test_the_option_is_validated_like_the_other_parameters() -> None:
    assert check_space_params(8, "cosine", "float32", 16, 200, 64)["neighbours"] == 0
    assert check_space_params(8, "cosine", "float32", 16, 200, 64, 30)["neighbours"] == 30
    assert check_space_params(8, "cosine", "float32", 16, 200, 64, np.int64(100))["neighbours"] == MAX_NEIGHBOURS
    for bad in (-1, 101, True, 1.5, "10", None):
        with pytest.raises(InvalidInput, match="neighbours"):
            check_space_params(8, "cosine", "float32", 16, 200, 64, bad)


def test_a_stored_record_out_of_bounds_is_refused_where_read() -> None:
    rec = SpaceRecord(name="s", dim=8, metric="cosine", neighbours=10)
    assert _load(SpaceRecord, rec.model_dump_json(), "space s", name="s").neighbours == 10
    old = json.dumps({k: v for k, v in rec.model_dump().items() if k != "neighbours"})  # written before the option
    assert _load(SpaceRecord, old, "space s", name="s").neighbours == 0
    for bad in (101, -1, "10", 2.0, True):
        with pytest.raises(CorruptRecord, match="neighbours"):
            _load(SpaceRecord, json.dumps({**rec.model_dump(), "neighbours": bad}), "space s", name="s")


# the snapshot format ------------------------------------------------------------------------------------------
def _index(x: np.ndarray) -> hnswlib.Index:
    index = hnswlib.Index(space="cosine", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=8, ef_construction=100, random_seed=1)
    index.add_items(x, np.arange(len(x)), num_threads=1)
    return index


def _data(n: int = 60, dim: int = 8) -> tuple[hnswlib.Index, np.ndarray, list[str]]:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return _index(x), x, [f"i{j}" for j in range(n)]


def _pack(index: hnswlib.Index, n: int, ids: list[str], lists: tuple[np.ndarray, np.ndarray] | None,
          ) -> tuple[list[bytes], snapshot.Manifest]:
    return snapshot.pack(index, np.arange(n), ids, [None] * n, generation=1, pos="1-0", dim=8, metric="cosine", M=8,
                         ef_construction=100, builder="t", build_seconds=0.0, deleted=0, max_label=n - 1,
                         neighbours=lists)


def _lists(index: hnswlib.Index, x: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    full = nbl.full_lists(index, x, np.arange(len(x)), len(x), w, 64, 1)
    return nbl.as_rows(full, np.arange(len(x)))


def test_lists_round_trip_and_are_checksummed() -> None:
    index, x, ids = _data()
    rows, dists = _lists(index, x, 5)
    chunks, manifest = _pack(index, len(ids), ids, (rows, dists))
    assert manifest.neighbours == 5 and len(manifest.sections) == 6 and manifest.sections[4:] == (4 * 60 * 5,) * 2
    again = snapshot.Manifest.from_json(manifest.to_json())
    base = snapshot.unpack(chunks, again, ef=16)
    assert base.nb_labels is not None and base.nb_dists is not None and base.nb_len is not None
    assert (base.nb_labels[base.labels] == rows).all() and np.allclose(base.nb_dists[base.labels], dists)
    assert (base.nb_len == 5).all() and not base.nb_complete
    flipped = bytearray(chunks[0])
    flipped[-3] ^= 1  # a distance's byte: the blob's sha256 no longer matches
    with pytest.raises(SnapshotCorrupt, match="sha256"):
        snapshot.unpack([bytes(flipped)], again, ef=16)


def test_without_lists_the_format_and_digest_are_the_old_ones() -> None:
    index, _, ids = _data()
    chunks, manifest = _pack(index, len(ids), ids, None)
    fields = json.loads(manifest.to_json())
    assert "neighbours" not in fields and len(fields["sections"]) == 4  # byte for byte what older builds wrote
    assert snapshot.Manifest.from_json(manifest.to_json()) == manifest
    assert snapshot.unpack(chunks, manifest, ef=16).nb_labels is None


def _forged(chunks: list[bytes], manifest: snapshot.Manifest, rows: np.ndarray, dists: np.ndarray,
            ) -> tuple[list[bytes], snapshot.Manifest]:
    """The snapshot with other lists, checksums recomputed: what a writer of snapshot keys could publish."""
    blob = b"".join(chunks)
    head = sum(manifest.sections[:4])
    blob = blob[:head] + rows.astype("<i4").tobytes() + dists.astype("<f4").tobytes()
    m = dataclasses.replace(manifest, sha256=hashlib.sha256(blob).hexdigest(), nbytes=len(blob),
                            sections=(*manifest.sections[:4], 4 * rows.size, 4 * dists.size)).sealed()
    return [blob], snapshot.Manifest.from_json(m.to_json())


@pytest.mark.parametrize("harm", ["out of range", "negative", "self", "twice", "gap", "descending", "nan",
                                  "distance past the end"])
def test_hostile_lists_are_refused_on_load(harm: str) -> None:
    index, x, ids = _data()
    rows, dists = _lists(index, x, 5)
    chunks, manifest = _pack(index, len(ids), ids, (rows, dists))
    rows, dists = rows.copy(), dists.copy()
    if harm == "out of range":
        rows[7, 2] = 60
    elif harm == "negative":
        rows[7, 2] = -5
    elif harm == "self":
        rows[7, 0] = 7
    elif harm == "twice":
        rows[7, 1] = rows[7, 0]
    elif harm == "gap":
        rows[7, 1] = -1
    elif harm == "descending":
        dists[7, 3] = dists[7, 0] - 1
    elif harm == "nan":
        dists[7, 0] = np.nan
    else:
        rows[7, 4], dists[7, 3] = -1, 0.5
    bad_chunks, bad = _forged(chunks, manifest, rows, dists)
    with pytest.raises(SnapshotCorrupt, match="neighbour lists"):
        snapshot.unpack(bad_chunks, bad, ef=16)
    with pytest.raises(ValueError):
        snapshot.check_neighbour_lists(rows, dists, len(ids))


def test_list_sections_of_the_wrong_size_are_refused() -> None:
    index, x, ids = _data()
    rows, dists = _lists(index, x, 5)
    chunks, manifest = _pack(index, len(ids), ids, (rows, dists))
    for change in ({"neighbours": 6}, {"neighbours": 101}, {"sections": manifest.sections[:4]}):
        m = dataclasses.replace(manifest, **change).sealed()  # type: ignore[arg-type]
        with pytest.raises(SnapshotCorrupt):
            snapshot.Manifest.from_json(m.to_json())


# the workers' lists against a brute force --------------------------------------------------------------------
def _truth(x: np.ndarray, alive: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    sims = x[rows] @ x.T
    sims[:, ~alive] = -np.inf
    sims[np.arange(len(rows)), rows] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def test_full_and_incremental_lists_against_a_brute_force(minilm_subset: MiniLMSubset) -> None:
    x = minilm_subset.base / np.linalg.norm(minilm_subset.base, axis=1, keepdims=True)
    n, w = 4000, 30
    index = hnswlib.Index(space="cosine", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=16, ef_construction=200, random_seed=100, allow_replace_deleted=True)
    index.add_items(x[:n], np.arange(n), num_threads=1)
    lists = nbl.full_lists(index, x[:n], np.arange(n), n, w, 64, 1)
    sample = np.arange(0, n, 13)
    alive = np.zeros(len(x), dtype=bool)
    alive[:n] = True
    assert _recall(lists[0][sample, :10], _truth(x, alive, sample, 10)) >= 0.97
    assert (np.diff(lists[1][sample], axis=1) >= 0).all()

    # an incremental build: 200 deleted, 200 moved to another item's vector, 1000 new (reusing deleted slots)
    rng = np.random.default_rng(0)
    deleted, updated = list(range(0, 400, 2)), list(range(1, 400, 2))
    for lab in deleted:
        index.mark_deleted(lab)
    y = x.copy()
    y[updated] = x[rng.choice(np.arange(n, len(x)), len(updated), replace=False)]  # a replaced vector
    index.add_items(y[updated], np.asarray(updated))
    added = list(range(n, len(x)))
    index.add_items(y[added], np.asarray(added), replace_deleted=True)
    alive[deleted], alive[n:] = False, True
    live = np.flatnonzero(alive)
    lists = nbl.update_lists(index, lists, live, deleted, updated, added, len(x), w, 64, 1)
    assert not np.isin(lists[0][live], deleted).any()  # a deleted item is in no list
    assert (lists[0][deleted] == -1).all()
    for rows, bound in ((np.asarray(added[::5]), 0.97), (np.asarray(updated[::3]), 0.97),
                        (live[(live >= 400) & (live < n)][::11], 0.95)):
        assert _recall(lists[0][rows, :10], _truth(y, alive, rows, 10)) >= bound
    r, d = nbl.as_rows(lists, live)
    snapshot.check_neighbour_lists(r, d, len(live))


def test_small_partitions_list_every_other_item() -> None:
    index, x, _ = _data(n=4)
    assert nbl.list_width(30, 4) == 3 and nbl.list_width(30, 1) == 0
    nb, nd = nbl.full_lists(index, x, np.arange(4), 4, 3, 64, 1)
    for i in range(4):
        assert sorted(nb[i].tolist()) == sorted(set(range(4)) - {i})
