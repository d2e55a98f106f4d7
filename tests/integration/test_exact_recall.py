"""Exact recall on real data: the shipped debian-minilm subset (5,000 x 384, cosine) and its 100 held-out queries.

No workers run, so queries are answered by the exact path and must agree with an independent float64 brute force
computed here: recall@10 is 1.0 (ties within 1e-6 count either way) and the distances match.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import embcache
from tests.datasets import MiniLMSubset
from tests.storecheck import assert_knn, brute_distances, stored_form

K = 10
TIE = 1e-6


@pytest.fixture(scope="module")
def truth(minilm_subset: MiniLMSubset) -> tuple[np.ndarray, np.ndarray]:
    """float64 cosine distances of the 100 queries to the stored form of the 5,000 items, and their top-10."""
    d = brute_distances(minilm_subset.queries, stored_form(minilm_subset.base, "cosine"), "cosine")
    return d, np.argsort(d, axis=1, kind="stable")[:, :K]


def _recall(res: embcache.QueryResult, ids: list[str], dists: np.ndarray, allowed: np.ndarray | None = None) -> float:
    """Fraction of returned ids that belong to the true top-10 (an id tied with the 10th within TIE counts)."""
    row = {i: j for j, i in enumerate(ids)}
    masked = dists if allowed is None else np.where(allowed[None, :], dists, np.inf)
    hits = total = 0
    for qi, got in enumerate(res.ids):
        m = min(K, int(np.isfinite(masked[qi]).sum()))
        kth = np.sort(masked[qi])[m - 1]
        hits += sum(1 for i in got[:m] if masked[qi, row[i]] <= kth + TIE)
        total += m
    return hits / total


def _store(hub: embcache.Hub, data: MiniLMSubset, n_partitions: int) -> tuple[embcache.Version, list[np.ndarray]]:
    v = hub.create_space("minilm", dim=384, metric="cosine").create_version()
    splits = np.array_split(np.arange(len(data.ids)), n_partitions)
    for p, rows in enumerate(splits):
        v.upsert([data.ids[j] for j in rows], data.base[rows], metadatas=[data.metadatas[j] for j in rows],
                 partition=f"part{p}")
    return v, splits


@pytest.fixture
def hub(any_redis_url: str) -> Iterator[embcache.Hub]:
    with embcache.connect(any_redis_url, refresh_interval=0.05) as h:
        yield h


@pytest.mark.parametrize("n_partitions", [1, 3])
def test_exact_recall_at_10_is_one(hub: embcache.Hub, minilm_subset: MiniLMSubset, truth, n_partitions: int) -> None:
    d, top = truth
    data = minilm_subset
    v, splits = _store(hub, data, n_partitions)
    assert v.count() == 5000 and len(v.partitions()) == n_partitions

    res = v.query(data.queries, n_results=K)
    assert res.distances.shape == (100, K)
    assert _recall(res, data.ids, d) == 1.0
    assert_knn(res, d, data.ids, K, tol=TIE * 10)
    strict = np.mean([len(set(g) & {data.ids[j] for j in t}) / K for g, t in zip(res.ids, top)])
    assert strict >= 0.999  # id-for-id as well, but for genuine ties (duplicate packages)
    # one query at a time gives the same answers as the batch
    for qi in (0, 57, 99):
        one = v.query(data.queries[qi], n_results=K)
        assert one.ids == [res.ids[qi]]
    # the stored vectors are the normalised float32 rows, byte for byte
    sample = [0, 1234, 4999]
    np.testing.assert_array_equal(v.get([data.ids[j] for j in sample]).embeddings,
                                  stored_form(data.base[sample], "cosine"))

    if n_partitions == 3:  # one named partition: the brute force over its rows only
        allowed = np.zeros(5000, dtype=bool)
        allowed[splits[1]] = True
        part = v.query(data.queries, n_results=K, partitions=["part1"])
        assert _recall(part, data.ids, d, allowed) == 1.0
        assert_knn(part, d, data.ids, K, allowed=allowed, tol=TIE * 10)
    else:  # a metadata filter: the brute force over the matching rows only
        section = max({m["section"] for m in data.metadatas}, key=[m["section"] for m in data.metadatas].count)
        allowed = np.array([m["section"] == section for m in data.metadatas])
        filtered = v.query(data.queries, n_results=K, where={"section": section})
        assert _recall(filtered, data.ids, d, allowed) == 1.0
        assert_knn(filtered, d, data.ids, K, allowed=allowed, tol=TIE * 10)


def test_query_by_id_on_real_data(hub: embcache.Hub, minilm_subset: MiniLMSubset) -> None:
    data = minilm_subset
    v, _ = _store(hub, data, 3)
    stored = stored_form(data.base, "cosine")
    rows = [3, 2500, 4999]
    res = v.query_by_id([data.ids[j] for j in rows], n_results=K)
    d = brute_distances(stored[rows], stored, "cosine")
    for r, own in enumerate(rows):
        allowed = np.ones(5000, dtype=bool)
        allowed[own] = False
        one = embcache.QueryResult(ids=[res.ids[r]], distances=res.distances[r : r + 1])
        assert_knn(one, d[r : r + 1], data.ids, K, allowed=allowed, tol=TIE * 10)
