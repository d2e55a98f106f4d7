"""Unit tests of embcache.search: exact search against an independent float64 brute force, and result merging.

No Redis. The oracle below is written from the metric definitions in the module docstring (hnswlib's
conventions: ``l2`` squared Euclidean, ``ip`` ``1 - <q, x>``, ``cosine`` ``1 - cos``), in float64.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from embcache.core import search
from embcache.core.search import EMPTY, exact_search, merge_ranked, pairwise_distances
from tests.datasets import MINILM_DIR

METRICS = ("l2", "ip", "cosine")


def brute(items: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """Full float64 distance matrix (q, n)."""
    x = items.astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "l2":
        return ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    if metric == "ip":
        return 1.0 - q @ x.T
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    return 1.0 - qn @ xn.T


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def check_topk(
    rows: np.ndarray,
    dists: np.ndarray,
    items: np.ndarray,
    queries: np.ndarray,
    metric: str,
    k: int,
    allowed: np.ndarray | None = None,
    atol: float = 1e-5,
) -> None:
    """``rows``/``dists`` are a correct top-k: right length, allowed rows only, no repeats, ascending, each
    reported distance the true one, and no better row left out (ties may be broken either way)."""
    full = brute(items, queries, metric)
    ok = np.ones(items.shape[0], bool) if allowed is None else allowed
    m = min(k, int(ok.sum()))
    assert rows.shape == (len(queries), m) and dists.shape == (len(queries), m)
    assert rows.dtype == np.int64 and dists.dtype == np.float32
    for i in range(len(queries)):
        r = rows[i]
        assert len(set(r.tolist())) == m
        assert ok[r].all()
        np.testing.assert_allclose(dists[i], full[i, r], rtol=1e-5, atol=atol)
        assert (np.diff(dists[i]) >= -atol).all()
        expected = np.sort(full[i, ok])[:m]
        np.testing.assert_allclose(dists[i], expected, rtol=1e-5, atol=atol)


def data(metric: str, n: int, q: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n, dim)).astype(np.float32)
    queries = rng.normal(size=(q, dim)).astype(np.float32)
    if metric == "cosine":  # cosine spaces hold normalised vectors and normalise queries on arrival
        items, queries = unit(items), unit(queries)
    return items, queries


# --- exact search ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(("n", "k"), [(1, 1), (50, 1), (500, 10), (3000, 25), (200, 200)])
def test_exact_search_random(metric: str, n: int, k: int) -> None:
    items, queries = data(metric, n, 20, 24, seed=n + k)
    rows, dists = exact_search(items, queries, k, metric)
    check_topk(rows, dists, items, queries, metric, k)


@pytest.mark.parametrize("metric", METRICS)
def test_exact_search_k_larger_than_n(metric: str) -> None:
    items, queries = data(metric, 7, 3, 5, seed=1)
    rows, dists = exact_search(items, queries, 50, metric)
    assert rows.shape == (3, 7)
    for r in rows:
        assert sorted(r.tolist()) == list(range(7))
    check_topk(rows, dists, items, queries, metric, 50)


@pytest.mark.parametrize("metric", METRICS)
def test_exact_search_allowed_mask(metric: str) -> None:
    items, queries = data(metric, 400, 15, 16, seed=2)
    allowed = np.random.default_rng(3).random(400) < 0.3
    rows, dists = exact_search(items, queries, 10, metric, allowed)
    check_topk(rows, dists, items, queries, metric, 10, allowed)
    # without the mask the answers differ (the mask does something)
    free, _ = exact_search(items, queries, 10, metric)
    assert not np.array_equal(free, rows)


def test_exact_search_allowed_fewer_than_k() -> None:
    items, queries = data("l2", 100, 4, 8, seed=4)
    allowed = np.zeros(100, bool)
    allowed[[5, 17, 99]] = True
    rows, dists = exact_search(items, queries, 10, "l2", allowed)
    assert rows.shape == (4, 3)
    assert all(set(r.tolist()) == {5, 17, 99} for r in rows)
    check_topk(rows, dists, items, queries, "l2", 10, allowed)


def test_exact_search_nothing_allowed_or_no_items() -> None:
    items, queries = data("ip", 30, 4, 8, seed=5)
    rows, dists = exact_search(items, queries, 5, "ip", np.zeros(30, bool))
    assert rows.shape == (4, 0) and dists.shape == (4, 0)
    rows, dists = exact_search(np.zeros((0, 8), np.float32), queries, 5, "ip")
    assert rows.shape == (4, 0) and dists.shape == (4, 0)


def test_exact_search_no_queries() -> None:
    items, _ = data("l2", 30, 1, 8, seed=6)
    rows, dists = exact_search(items, np.zeros((0, 8), np.float32), 5, "l2")
    assert rows.shape == (0, 5) and dists.shape == (0, 5)


def test_exact_search_query_equal_to_an_item_is_first_at_zero() -> None:
    items, _ = data("l2", 1000, 1, 32, seed=7)
    queries = items[[3, 500, 999]]
    rows, dists = exact_search(items, queries, 5, "l2")
    assert rows[:, 0].tolist() == [3, 500, 999]
    assert (dists[:, 0] == 0).all()
    assert (dists[:, 1] > 0).all()


def test_exact_search_l2_far_from_origin() -> None:
    """Neighbours 0.01 apart around a point at distance ~600 from the origin: a float32 expansion
    |q|^2 + |x|^2 - 2<q,x> loses them all to cancellation; the answers must still be exact."""
    rng = np.random.default_rng(8)
    offset = 100.0 + rng.normal(size=36)
    items = (offset + rng.normal(scale=0.01, size=(3000, 36))).astype(np.float32)
    queries = (offset + rng.normal(scale=0.01, size=(40, 36))).astype(np.float32)
    rows, dists = exact_search(items, queries, 10, "l2")
    check_topk(rows, dists, items, queries, "l2", 10, atol=1e-9)


def test_exact_search_ip_unnormalised() -> None:
    rng = np.random.default_rng(9)
    items = (rng.normal(size=(800, 12)) * rng.uniform(0.1, 10, size=(800, 1))).astype(np.float32)
    queries = rng.normal(size=(10, 12)).astype(np.float32)
    rows, dists = exact_search(items, queries, 15, "ip")
    check_topk(rows, dists, items, queries, "ip", 15, atol=1e-4)
    assert (dists[:, 0] < 0).all()  # long vectors give inner products above 1


@pytest.mark.parametrize("metric", METRICS)
def test_exact_search_many_small_blocks_and_chunks(metric: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Force one query per block and tiny l2 chunks: the block/chunk loops must stitch answers correctly."""
    monkeypatch.setattr(search, "_BLOCK_BYTES", 1)
    monkeypatch.setattr(search, "_ROW_CHUNK", 7)
    items, queries = data(metric, 120, 9, 10, seed=10)
    rows, dists = exact_search(items, queries, 6, metric)
    check_topk(rows, dists, items, queries, metric, 6)


def test_exact_search_more_queries_than_one_block() -> None:
    items, queries = data("l2", 300, search._QUERY_BLOCK + 37, 8, seed=11)
    rows, dists = exact_search(items, queries, 3, "l2")
    check_topk(rows, dists, items, queries, "l2", 3)


def test_exact_search_memory_is_bounded() -> None:
    """256 queries x n_results=1000 at dim 384 once needed ~2.4 GB of float64 re-rank temporaries."""
    items, queries = data("l2", 3000, 256, 384, seed=12)
    tracemalloc.start()
    try:
        rows, _ = exact_search(items, queries, 1000, "l2")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows.shape == (256, 1000)
    assert peak < 600 << 20, f"peak {peak / 2**20:.0f} MiB"


def test_exact_search_ties_are_all_valid() -> None:
    # 10 copies of one vector and the query equal to it: any 4 of the copies are a right answer
    rng = np.random.default_rng(13)
    items = rng.normal(size=(50, 6)).astype(np.float32)
    items[10:20] = items[10]
    rows, dists = exact_search(items, items[10:11], 4, "l2")
    assert set(rows[0].tolist()) <= set(range(10, 20))
    assert (dists == 0).all()


@pytest.mark.skipif(not (MINILM_DIR / "base.f16.npy").exists(), reason="tests/data/minilm not present")
@pytest.mark.parametrize("metric", METRICS)
def test_exact_search_real_minilm(metric: str, minilm_subset) -> None:  # noqa: ANN001
    base = minilm_subset.base
    queries = minilm_subset.queries
    if metric == "cosine":
        base, queries = unit(base), unit(queries)
    rows, dists = exact_search(base, queries, 10, metric)
    check_topk(rows, dists, base, queries, metric, 10)
    if metric == "cosine":
        # agrees with the data set's own ground truth up to ties
        truth = minilm_subset.exact_neighbours(10)
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), truth.tolist())])
        assert overlap > 0.99


@pytest.mark.skipif(not (MINILM_DIR / "base.f16.npy").exists(), reason="tests/data/minilm not present")
def test_exact_search_real_minilm_with_filter(minilm_subset) -> None:  # noqa: ANN001
    base, queries = unit(minilm_subset.base), unit(minilm_subset.queries[:20])
    sections = np.array([m["section"] for m in minilm_subset.metadatas])
    allowed = sections == "libs"
    assert 0 < allowed.sum() < len(base)
    rows, dists = exact_search(base, queries, 10, "cosine", allowed)
    check_topk(rows, dists, base, queries, "cosine", 10, allowed)
    assert (sections[rows] == "libs").all()


# --- pairwise distances ------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distances(metric: str) -> None:
    items, queries = data(metric, 60, 7, 9, seed=14)
    got = pairwise_distances(queries, items, metric)
    assert got.shape == (7, 60)
    np.testing.assert_allclose(got, brute(items, queries, metric), rtol=1e-4, atol=1e-4)
    got64 = pairwise_distances(queries, items, metric, dtype=np.float64)
    assert got64.dtype == np.float64
    # cosine inputs are float32 unit vectors, which the oracle normalises again in float64
    tol = 1e-6 if metric == "cosine" else 1e-10
    np.testing.assert_allclose(got64, brute(items, queries, metric), rtol=tol, atol=tol)


def test_pairwise_l2_never_negative() -> None:
    items, _ = data("l2", 20, 1, 16, seed=15)
    d = pairwise_distances(items, items, "l2")
    assert (d >= 0).all()


# --- merge_ranked ------------------------------------------------------------------------------------------


def f32(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float32)


def test_merge_two_sources_sorted_and_cut() -> None:
    a = (["a1", "a2", "a3"], f32(0.1, 0.4, 0.9))
    b = (["b1", "b2"], f32(0.2, 0.3))
    ids, d = merge_ranked([a, b], 4)
    assert ids == ["a1", "b1", "b2", "a2"]
    np.testing.assert_array_equal(d, f32(0.1, 0.2, 0.3, 0.4))
    assert d.dtype == np.float32


def test_merge_duplicates_keep_smallest_distance() -> None:
    a = (["x", "y", "z"], f32(0.5, 0.6, 0.7))
    b = (["y", "x", "w"], f32(0.1, 0.8, 0.9))
    ids, d = merge_ranked([a, b], 10)
    assert ids == ["y", "x", "z", "w"]
    np.testing.assert_allclose(d, f32(0.1, 0.5, 0.7, 0.9))


def test_merge_duplicates_do_not_use_up_k() -> None:
    a = (["x", "y"], f32(0.1, 0.2))
    b = (["x", "y", "z"], f32(0.15, 0.25, 0.3))
    ids, d = merge_ranked([a, b], 3)
    assert ids == ["x", "y", "z"]
    np.testing.assert_allclose(d, f32(0.1, 0.2, 0.3))


def test_merge_k_cut_single_source() -> None:
    a = (["a", "b", "c", "d"], f32(1, 2, 3, 4))
    ids, d = merge_ranked([a], 2)
    assert ids == ["a", "b"]
    np.testing.assert_array_equal(d, f32(1, 2))


def test_merge_single_short_source_unchanged() -> None:
    a = (["a", "b"], f32(1, 2))
    ids, d = merge_ranked([a, EMPTY, ([], f32())], 5)
    assert ids == ["a", "b"]
    np.testing.assert_array_equal(d, f32(1, 2))


def test_merge_all_empty() -> None:
    ids, d = merge_ranked([], 3)
    assert ids == [] and d.shape == (0,)
    ids, d = merge_ranked([EMPTY, EMPTY], 3)
    assert ids == [] and d.shape == (0,)


def test_merge_many_sources_against_oracle() -> None:
    rng = np.random.default_rng(16)
    sources = []
    best: dict[str, float] = {}
    for _ in range(6):
        ids = [f"id{j}" for j in rng.choice(40, size=12, replace=False)]
        dist = np.sort(rng.random(12).astype(np.float32))
        sources.append((ids, dist))
        for i, x in zip(ids, dist):
            best[i] = min(best.get(i, np.inf), float(x))
    for k in (1, 5, 17, 100):
        ids, d = merge_ranked(sources, k)
        expected = sorted(best.items(), key=lambda kv: kv[1])[:k]
        assert len(ids) == len(expected) == len(set(ids))
        np.testing.assert_allclose(d, [v for _, v in expected])
        assert all(best[i] == pytest.approx(float(x)) for i, x in zip(ids, d))
