"""Snapshots built by real RQ workers (``python -m workers`` subprocesses): recall on real embeddings, queries
during rebuilds, and an end-to-end run on Redis Cluster with the queue on a standalone Redis."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import redis
from redis.cluster import key_slot

import embcache
from embcache.core.snapshot import HnswBase
from embcache.redis.snapshots import read_manifest
from tests.datasets import MiniLMSubset
from tests.workers_fixtures import brute_force, random_unit, recall_at_k, wait_for

RECALL = 0.95
WIDE = {"section": {"$in": ["libs", "libdevel", "doc", "devel"]}}  # ~30% of the subset
NARROW = {"section": "sound"}  # ~1.3% of the subset


@pytest.fixture
def minilm_built(redis_url, workers, hubs, minilm_subset: MiniLMSubset):  # noqa: ANN001, ANN201
    """The subset in one partition, indexed by a worker at the default parameters; the hub has the snapshot loaded."""
    hub = hubs(redis_url)
    space = hub.create_space("minilm", dim=384, metric="cosine")
    assert (space.M, space.ef_construction, space.ef) == (16, 200, 64)
    version = space.create_version()
    version.upsert(minilm_subset.ids, minilm_subset.base, minilm_subset.metadatas)
    workers.start(redis_url)
    version.build(timeout=120)
    version.query(minilm_subset.queries[:1], n_results=1)  # loads the partition
    hub.cache.refresh()
    pid = ("minilm", version.name, "default")
    base = hub.cache.cached(pid)
    manifest = read_manifest(hub.store.r, hub.keys.partition(*pid))
    assert isinstance(base, HnswBase), f"the partition is served by {type(base).__name__}, not a worker snapshot"
    assert manifest is not None and base.generation == manifest.generation and base.count == 5000
    return hub, version


def _truth(ds: MiniLMSubset, mask: np.ndarray | None = None, k: int = 10) -> list[list[str]]:
    rows = np.arange(len(ds.ids)) if mask is None else np.flatnonzero(mask)
    top = brute_force(ds.base[rows], ds.queries, k)
    return [[ds.ids[rows[j]] for j in r] for r in top]


def test_recall_of_worker_built_snapshot(minilm_built, minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    """One snapshot, three measurements (one build keeps the suite lean): unfiltered, a ~30% filter, a <2% one."""
    hub, version = minilm_built
    ds = minilm_subset
    res = version.query(ds.queries, n_results=10, consistency="eventual")
    assert all(len(r) == 10 for r in res.ids)
    recall = recall_at_k(res.ids, _truth(ds))
    print(f"recall@10 = {recall:.3f}")
    assert recall >= RECALL, f"recall@10 = {recall:.3f}"
    d = res.distances  # cosine distances of the returned items, ascending
    assert np.all(np.diff(d, axis=1) >= -1e-6)
    got = version.get(res.ids[0], include=("embeddings",)).embeddings
    q = ds.queries[0] / np.linalg.norm(ds.queries[0])
    np.testing.assert_allclose(d[0], 1.0 - got @ q, atol=1e-4)

    for where, values, lo, hi in ((WIDE, WIDE["section"]["$in"], 0.25, 0.35), (NARROW, ["sound"], 0.0, 0.02)):
        mask = np.array([m["section"] in values for m in ds.metadatas])
        share = mask.mean()
        assert lo < share < hi
        res = version.query(ds.queries, n_results=10, where=where, consistency="eventual",
                            include=("distances", "metadatas"))
        assert all(m["section"] in values for row in res.metadatas for m in row)
        recall = recall_at_k(res.ids, _truth(ds, mask))
        print(f"filtered recall@10 ({share:.1%} match) = {recall:.3f}")
        assert recall >= RECALL, f"filtered recall@10 ({share:.1%} match) = {recall:.3f}"


def test_queries_during_repeated_rebuilds(redis_url, workers, hubs) -> None:  # noqa: ANN001
    hub = hubs(redis_url)
    space = hub.create_space("busy", dim=32, metric="cosine")
    version = space.create_version()
    version.upsert([f"a-{i}" for i in range(1500)], random_unit(1500, 32, 1), partition="a")
    version.upsert([f"b-{i}" for i in range(1500)], random_unit(1500, 32, 2), partition="b")
    workers.start(redis_url)
    version.build(timeout=60)
    pid = ("busy", version.name, "a")

    stop = threading.Event()
    errors: list[BaseException] = []
    stray: list[str] = []
    generations: set[int] = set()
    counts = [0] * 4

    def reader(n: int) -> None:
        rng = np.random.default_rng(100 + n)
        levels = ("eventual", "session", "strong")
        while not stop.is_set():
            try:
                q = rng.standard_normal((1 + counts[n] % 3, 32)).astype(np.float32)
                res = version.query(q, n_results=10, partitions=["a"], consistency=levels[counts[n] % 3])
                stray.extend(i for row in res.ids for i in row if not i.startswith("a-"))
                assert all(len(row) == 10 for row in res.ids)
                base = hub.cache.cached(pid)
                if isinstance(base, HnswBase):
                    generations.add(base.generation)
                counts[n] += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    try:
        for round_ in range(5):
            for p, seed in (("a", 10 + round_), ("b", 20 + round_)):
                ids = [f"{p}-r{round_}-{i}" for i in range(300)]
                version.upsert(ids, random_unit(300, 32, seed), partition=p)
            version.delete([f"a-{round_ * 10 + i}" for i in range(10)], partition="a")
            version.build(timeout=60)
        wait_for(lambda: max(generations, default=0) >= 6 or errors, 10, what="the readers to see the last snapshot")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, f"a query raised: {errors[0]!r}"
    assert not stray, f"ids outside partition 'a' were returned: {sorted(set(stray))[:10]}"
    assert min(counts) > 0
    assert len(generations) >= 2, f"the readers never saw a snapshot swap (generations {generations})"
    assert version.count("a") == 1500 + 5 * 300 - 50


@pytest.mark.cluster
def test_build_and_query_on_cluster(cluster_url, redis_url, redis_cluster, workers, hubs) -> None:  # noqa: ANN001
    hub = hubs(cluster_url)
    assert hub.is_cluster
    space = hub.create_space("spread", dim=24, metric="l2")
    version = space.create_version()
    parts = [f"p{i}" for i in range(6)]
    data = {p: (np.random.default_rng(i).standard_normal((250, 24)) * 3 + i).astype(np.float32)
            for i, p in enumerate(parts)}
    for p in parts:
        version.upsert([f"{p}-{j}" for j in range(250)], data[p], partition=p)
    slots = {p: key_slot(hub.keys.partition("spread", version.name, p).vec.encode()) for p in parts}
    assert len(set(slots.values())) == len(parts), f"partitions share slots: {slots}"
    for p in parts:  # every key of a partition is in its slot
        pk = hub.keys.partition("spread", version.name, p)
        assert {key_slot(k.encode()) for k in (pk.vec, pk.meta, pk.log, pk.state, pk.snap, pk.lease)} == {slots[p]}
    masters_with_data = 0
    for node in redis_cluster.node_clients():
        with node:
            masters_with_data += node.dbsize() > 0
    assert masters_with_data >= 2, "all partitions landed on one master"

    workers.start(cluster_url, queue_url=redis_url)
    version.build(timeout=120)
    with redis.Redis.from_url(redis_url) as q:  # RQ lives on the standalone Redis, not on the cluster
        assert q.keys("rq:*")
    for node in redis_cluster.node_clients():
        with node:
            assert not node.keys("rq:*")
    stats = {s.partition: s for s in version.stats()}
    assert all(stats[p].generation == 1 and stats[p].snapshot_count == 250 and stats[p].unindexed_entries == 0
               for p in parts), stats

    queries = np.random.default_rng(99).standard_normal((20, 24)).astype(np.float32) * 3 + 2.5
    res = version.query(queries, n_results=10, ef=500, consistency="eventual")
    graph = hub.cache.cached_graph("spread", version.name)  # the version graph, when the worker built it already
    for p in parts:  # served by a worker-built index: the partition's own snapshot or the version graph
        assert isinstance(hub.cache.cached(("spread", version.name, p)), HnswBase) or (graph and p in graph.parts)
    all_ids = [f"{p}-{j}" for p in parts for j in range(250)]
    top = brute_force(np.concatenate([data[p] for p in parts]), queries, 10, "l2")
    assert res.ids == [[all_ids[j] for j in r] for r in top]
    # one partition only: answers come from it alone
    res = version.query(queries, n_results=5, partitions=["p3"], ef=500, consistency="eventual")
    top = brute_force(data["p3"], queries, 5, "l2")
    assert res.ids == [[f"p3-{j}" for j in r] for r in top]


def test_build_without_any_worker_fails_fast_with_a_hint(redis_url: str) -> None:
    import time as _time

    with embcache.connect(redis_url, refresh_interval=0) as hub:
        v = hub.create_space("s", dim=4, metric="l2").create_version()
        v.upsert(["a"], np.ones((1, 4)))
        t0 = _time.perf_counter()
        with pytest.raises(embcache.BuildTimeout, match="embcache worker"):
            v.build(timeout=600)
        assert _time.perf_counter() - t0 < 15  # not the 600 s timeout
        handle = v.build(wait=False)  # asking without waiting is fine: a worker may come later
        assert handle.progress() == (0, 1)
