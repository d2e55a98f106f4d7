"""Writes, reads and exact queries against real Redis, standalone and 3-master Cluster (``any_redis_url``).

No workers run here, so every query is answered by the exact path; each answer is compared with an independent
float64 brute force computed in the test (tests/storecheck.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import embcache
import embcache.redis.store
from tests.storecheck import assert_knn, brute_distances, raw_client, stored_form

METRICS = ("cosine", "l2", "ip")


@pytest.fixture
def hub(any_redis_url: str) -> Iterator[embcache.Hub]:
    # a short refresh interval: Hub.close() waits for the refresher thread, which sleeps up to that long
    with embcache.connect(any_redis_url, refresh_interval=0.05) as h:
        yield h


def _items(seed: int, n: int, dim: int, prefix: str = "i") -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"{prefix}{j}" for j in range(n)], rng.standard_normal((n, dim)).astype(np.float32)


def _meta(j: int) -> dict | None:
    """Varied metadata: None for every 11th item, no ``year`` for every 7th, lists in ``tags``."""
    if j % 11 == 0:
        return None
    m: dict = {"genre": ("drama", "comedy", "horror")[j % 3], "score": (j * 37 % 100) / 100.0,
               "tags": [t for t, mod in (("a", 2), ("b", 3), ("c", 5)) if j % mod == 0]}
    if j % 7:
        m["year"] = 1980 + j % 40
    return m


# --- writes and reads ------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", METRICS)
def test_upsert_get_round_trip_float32(hub: embcache.Hub, metric: str) -> None:
    space = hub.create_space("s", dim=12, metric=metric)
    v = space.create_version()
    ids, x = _items(1, 40, 12)
    metas = [_meta(j) for j in range(40)]
    assert v.upsert(ids, x, metadatas=metas) == 40
    assert v.count() == 40 and v.partitions() == ["default"]

    ask = ["i5", "nope", "i0", "i39", "i5"]  # order kept, missing left out, duplicates once
    got = v.get(ask)
    assert got.ids == ["i5", "i0", "i39"]
    assert got.partitions == ["default"] * 3
    assert got.embeddings is not None and got.embeddings.dtype == np.float32
    expected = stored_form(x, metric)[[5, 0, 39]]
    np.testing.assert_array_equal(got.embeddings, expected)  # exact: raw little-endian bytes, no text
    if metric == "cosine":
        np.testing.assert_allclose(np.linalg.norm(got.embeddings, axis=1), 1.0, rtol=1e-6)
    assert got.metadatas == [metas[5], metas[0], metas[39]]

    only = v.get(["i1"], include=("metadatas",))
    assert only.embeddings is None and only.metadatas == [metas[1]]


def test_vectors_are_stored_as_raw_little_endian_bytes(hub: embcache.Hub, any_redis_url: str) -> None:
    space = hub.create_space("raw", dim=4, metric="l2", dtype="float16")
    v = space.create_version()
    x = np.array([[1.0, -2.5, 1e-3, 65504.0]], dtype=np.float32)
    v.upsert(["a"], x)
    pk = hub.keys.partition("raw", v.name, "default")
    with raw_client(any_redis_url) as r:
        assert r.hget(pk.vec, "a") == x.astype("<f2").tobytes()


@pytest.mark.parametrize("metric", METRICS)
def test_float16_values_round_trip_with_float16_rounding(hub: embcache.Hub, metric: str) -> None:
    space = hub.create_space("h", dim=24, metric=metric, dtype="float16")
    v = space.create_version()
    ids, x = _items(2, 300, 24)
    x[0, 0] = 1.0001  # not representable in float16: must come back rounded
    v.upsert(ids, x)
    expected = stored_form(x, metric, "float16")
    got = v.get(ids, include=("embeddings",))
    np.testing.assert_array_equal(got.embeddings, expected)
    if metric != "cosine":
        assert got.embeddings[0, 0] == np.float32(np.float16(1.0001)) != np.float32(1.0001)
    # distances are those of the stored (rounded) vectors
    q = np.random.default_rng(3).standard_normal((5, 24)).astype(np.float32)
    res = v.query(q, n_results=7)
    assert_knn(res, brute_distances(q, expected, metric), ids, 7)


def test_upsert_replaces_vector_and_metadata(hub: embcache.Hub) -> None:
    v = hub.create_space("r", dim=3, metric="l2").create_version()
    v.upsert(["a", "b"], [[1, 0, 0], [0, 1, 0]], metadatas=[{"k": 1}, {"k": 2}])
    v.upsert(["a", "b"], [[0, 0, 5], [0, 2, 0]], metadatas=[None, {"k": 3}])  # None clears
    assert v.count() == 2
    got = v.get(["a", "b"])
    np.testing.assert_array_equal(got.embeddings, [[0, 0, 5], [0, 2, 0]])
    assert got.metadatas == [None, {"k": 3}]
    res = v.query([0, 0, 5], n_results=2)
    assert res.ids == [["a", "b"]]
    np.testing.assert_allclose(res.distances, [[0.0, 29.0]])


def test_delete_count_and_several_partitions(hub: embcache.Hub) -> None:
    v = hub.create_space("d", dim=5, metric="ip").create_version()
    ids, x = _items(4, 30, 5)
    for p, sl in (("p1", slice(0, 10)), ("p2", slice(10, 25)), ("p3", slice(25, 30))):
        v.upsert(ids[sl], x[sl], partition=p)
    assert v.partitions() == ["p1", "p2", "p3"]
    assert (v.count(), v.count("p1"), v.count("p2"), v.count("p3")) == (30, 10, 15, 5)
    assert v.get(["i3", "i12", "i29"]).partitions == ["p1", "p2", "p3"]
    assert v.get(["i3", "i12"], partitions=["p2"]).ids == ["i12"]

    assert v.delete(["i0", "i10", "missing", "i0"]) == 2  # duplicates allowed, missing ids not counted
    assert v.delete(["i11"], partition="p1") == 0  # lives in p2: untouched
    assert v.count("p2") == 14 and v.get(["i11"]).ids == ["i11"]
    assert v.delete(["i11"], partition="p2") == 1
    assert v.delete(["i25", "i26", "i27", "i28", "i29"]) == 5
    assert (v.count(), v.count("p1"), v.count("p2"), v.count("p3")) == (22, 9, 13, 0)
    assert v.get(["i0", "i10", "i11", "i25"]).ids == []
    assert v.partitions() == ["p1", "p2", "p3"]  # a partition that held items stays listed
    q = np.random.default_rng(5).standard_normal((3, 5)).astype(np.float32)
    alive = np.array([i not in {"i0", "i10", "i11", "i25", "i26", "i27", "i28", "i29"} for i in ids])
    assert_knn(v.query(q, n_results=30), brute_distances(q, x, "ip"), ids, 30, allowed=alive)


def test_batches_larger_than_the_write_chunk_are_complete(hub: embcache.Hub, any_redis_url: str) -> None:
    n = 2500
    assert n > 2 * embcache.redis.store.WRITE_CHUNK_ITEMS  # three chunks
    v = hub.create_space("big", dim=8, metric="l2").create_version()
    ids, x = _items(6, n, 8)
    metas = [{"j": j} for j in range(n)]
    assert v.upsert(ids, x, metadatas=metas, partition="p") == n
    assert v.count() == n
    got = v.get(ids)
    assert got.ids == ids
    np.testing.assert_array_equal(got.embeddings, x)
    assert got.metadatas == metas
    pk = hub.keys.partition("big", v.name, "p")
    with raw_client(any_redis_url) as r:
        assert r.hlen(pk.vec) == n and r.hlen(pk.meta) == n
    # every chunk is searchable: the last item of each chunk finds itself
    for j in (0, 999, 1000, 1999, 2000, n - 1):
        assert v.query(x[j], n_results=1).ids == [[ids[j]]]
    assert v.delete(ids) == n and v.count() == 0


# --- exact queries ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("metric", METRICS)
def test_query_equals_brute_force_across_partitions(hub: embcache.Hub, metric: str, dtype: str) -> None:
    dim, n = 16, 600
    v = hub.create_space("q", dim=dim, metric=metric, dtype=dtype).create_version()
    ids, x = _items(7, n, dim)
    for p, sl in (("a", slice(0, 100)), ("b", slice(100, 450)), ("c", slice(450, n))):
        v.upsert(ids[sl], x[sl], partition=p)
    stored = stored_form(x, metric, dtype)
    q = np.random.default_rng(8).standard_normal((9, dim)).astype(np.float32)
    full = brute_distances(q, stored, metric)

    batched = v.query(q, n_results=10)
    assert batched.distances.dtype == np.float32 and batched.distances.shape == (9, 10)
    assert_knn(batched, full, ids, 10)
    single = v.query(q[4], n_results=10)  # one 1-D vector: one row
    assert single.ids == [batched.ids[4]]
    np.testing.assert_array_equal(single.distances[0], batched.distances[4])
    assert_knn(v.query(q.tolist(), n_results=1), full, ids, 1)  # nested lists are accepted
    for c in ("eventual", "session", "strong"):  # without snapshots all levels answer exactly
        assert v.query(q, n_results=10, consistency=c).ids == batched.ids


def test_partitions_argument_restricts_the_search(hub: embcache.Hub) -> None:
    v = hub.create_space("p", dim=8, metric="l2").create_version()
    ids, x = _items(9, 90, 8)
    where = {}
    for j, i in enumerate(ids):
        where[i] = ("p1", "p2", "p3")[j % 3]
    for p in ("p1", "p2", "p3"):
        sel = [j for j in range(90) if where[ids[j]] == p]
        v.upsert([ids[j] for j in sel], x[sel], partition=p)
    q = np.random.default_rng(10).standard_normal((6, 8)).astype(np.float32)
    full = brute_distances(q, x, "l2")
    part = np.array([where[i] for i in ids])
    assert_knn(v.query(q, n_results=12, partitions=["p1", "p3"]), full, ids, 12, allowed=part != "p2")
    assert_knn(v.query(q, n_results=12, partitions="p2"), full, ids, 12, allowed=part == "p2")
    res = v.query(q, n_results=90, partitions=["p3", "p3"])  # all of p3, duplicates ignored
    assert all(len(r) == 30 and {where[i] for i in r} == {"p3"} for r in res.ids)


WHERE_CASES = [
    ({"genre": "drama"}, lambda m: m is not None and m.get("genre") == "drama"),
    ({"genre": {"$eq": "comedy"}}, lambda m: m is not None and m.get("genre") == "comedy"),
    ({"genre": {"$ne": "drama"}}, lambda m: not (m is not None and m.get("genre") == "drama")),
    ({"genre": {"$in": ["comedy", "horror"]}}, lambda m: m is not None and m.get("genre") in ("comedy", "horror")),
    ({"genre": {"$nin": ["comedy"]}}, lambda m: not (m is not None and m.get("genre") == "comedy")),
    ({"year": {"$gte": 1990, "$lt": 2000}}, lambda m: m is not None and "year" in m and 1990 <= m["year"] < 2000),
    ({"score": {"$gt": 0.5}}, lambda m: m is not None and m["score"] > 0.5),
    ({"year": {"$lte": 1985}}, lambda m: m is not None and "year" in m and m["year"] <= 1985),
    ({"tags": "a"}, lambda m: m is not None and "a" in m["tags"]),
    ({"$or": [{"genre": "horror"}, {"year": {"$lte": 1983}}]},
     lambda m: m is not None and (m["genre"] == "horror" or m.get("year", 9999) <= 1983)),
    ({"$and": [{"tags": {"$in": ["b"]}}, {"score": {"$lt": 0.5}}], "genre": {"$ne": "comedy"}},
     lambda m: m is not None and "b" in m["tags"] and m["score"] < 0.5 and m["genre"] != "comedy"),
    ({"year": {"$gt": 2100}}, lambda m: False),
]


@pytest.mark.parametrize("where,pred", WHERE_CASES, ids=[str(i) for i in range(len(WHERE_CASES))])
def test_where_filters_equal_brute_force(hub: embcache.Hub, where: dict, pred) -> None:  # noqa: ANN001
    v = hub.create_space("w", dim=10, metric="cosine").create_version()
    ids, x = _items(11, 200, 10)
    metas = [_meta(j) for j in range(200)]
    v.upsert(ids[:120], x[:120], metadatas=metas[:120], partition="x")
    v.upsert(ids[120:], x[120:], metadatas=metas[120:], partition="y")
    allowed = np.array([pred(m) for m in metas])
    q = np.random.default_rng(12).standard_normal((4, 10)).astype(np.float32)
    res = v.query(q, n_results=15, where=where, include=("distances", "metadatas"))
    assert_knn(res, brute_distances(q, stored_form(x, "cosine"), "cosine"), ids, 15, allowed=allowed)
    row = {i: j for j, i in enumerate(ids)}
    assert res.metadatas == [[metas[row[i]] for i in r] for r in res.ids]
    if not allowed.any():
        assert res.ids == [[], [], [], []] and res.distances.shape[0] == 4


def test_where_combined_with_partitions(hub: embcache.Hub) -> None:
    v = hub.create_space("wp", dim=6, metric="l2").create_version()
    ids, x = _items(13, 100, 6)
    metas = [_meta(j) for j in range(100)]
    v.upsert(ids[:50], x[:50], metadatas=metas[:50], partition="left")
    v.upsert(ids[50:], x[50:], metadatas=metas[50:], partition="right")
    allowed = np.array([j >= 50 and m is not None and m["genre"] == "drama" for j, m in enumerate(metas)])
    q = np.random.default_rng(14).standard_normal((3, 6)).astype(np.float32)
    res = v.query(q, n_results=8, partitions=["right"], where={"genre": "drama"})
    assert_knn(res, brute_distances(q, x, "l2"), ids, 8, allowed=allowed)


@pytest.mark.parametrize("metric", METRICS)
def test_query_by_id_excludes_the_item_itself(hub: embcache.Hub, metric: str) -> None:
    v = hub.create_space("b", dim=8, metric=metric).create_version()
    ids, x = _items(15, 120, 8)
    x[1] = x[0]  # a twin: the query item is excluded, its twin (distance ~0) is not
    v.upsert(ids[:60], x[:60], partition="one")
    v.upsert(ids[60:], x[60:], partition="two")
    stored = stored_form(x, metric)
    asked = ["i0", "i70", "i119"]
    rows = [0, 70, 119]
    res = v.query_by_id(asked, n_results=10)
    full = brute_distances(stored[rows], stored, metric)
    for r, own in enumerate(rows):
        allowed = np.ones(120, dtype=bool)
        allowed[own] = False
        one = embcache.QueryResult(ids=[res.ids[r]], distances=res.distances[r : r + 1])
        assert_knn(one, full[r : r + 1], ids, 10, allowed=allowed)
        assert asked[r] not in res.ids[r]
    if metric != "ip":  # under ip an item need not be its own nearest neighbour
        assert res.ids[0][0] == "i1"
    # restricted to a partition the item is not in
    other = v.query_by_id(["i0"], n_results=5, partitions=["two"])
    assert all(int(i[1:]) >= 60 for i in other.ids[0]) and len(other.ids[0]) == 5


def test_n_results_larger_than_the_item_count(hub: embcache.Hub) -> None:
    v = hub.create_space("few", dim=4, metric="l2").create_version()
    ids, x = _items(16, 5, 4)
    v.upsert(ids[:2], x[:2], partition="a")
    v.upsert(ids[2:], x[2:], partition="b")
    q = np.random.default_rng(17).standard_normal((2, 4)).astype(np.float32)
    res = v.query(q, n_results=50)
    assert_knn(res, brute_distances(q, x, "l2"), ids, 50)  # every item, nearest first
    assert all(len(r) == 5 for r in res.ids)
    by_id = v.query_by_id(["i0"], n_results=50)
    assert sorted(by_id.ids[0]) == ["i1", "i2", "i3", "i4"]


def test_distances_shape_is_n_queries_by_n_results(hub: embcache.Hub) -> None:
    v = hub.create_space("pad", dim=4, metric="l2").create_version()
    ids, x = _items(18, 5, 4)
    v.upsert(ids, x)
    res = v.query(x[:2], n_results=8)
    assert res.distances.shape == (2, 8)
    assert np.isinf(res.distances[:, 5:]).all()


def test_query_by_id_validates_n_results_like_query(hub: embcache.Hub) -> None:
    # regression (fixed in 00c6072): it passed n_results + 1 to query() unchecked
    v = hub.create_space("nr", dim=2, metric="l2").create_version()
    v.upsert(["a", "b", "c"], [[0, 0], [1, 0], [0, 2]])
    assert len(v.query_by_id(["a"], n_results=10_000).ids[0]) == 2  # the limit query() accepts
    for bad in (0, -1, True, "3", None, 2.5, 10_001):
        with pytest.raises(embcache.InvalidInput, match=repr(bad).replace("(", r"\(")):
            v.query_by_id(["a"], n_results=bad)


def test_empty_version_and_unwritten_partition(hub: embcache.Hub) -> None:
    v = hub.create_space("e", dim=3, metric="l2").create_version()
    assert v.count() == 0 and v.partitions() == []
    res = v.query([[1, 2, 3]], n_results=3)
    assert res.ids == [[]]
    assert v.get(["x"]).ids == []
    assert v.delete(["x"]) == 0
