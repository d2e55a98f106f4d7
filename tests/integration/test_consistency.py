"""Consistency levels across hubs (DESIGN guarantee 2), incremental builds and compaction, and availability while
Redis is away (guarantee 6), with snapshots built by real workers.

Hub A writes; hub B reads the same data with ``refresh_interval=60``, so its loaded snapshot changes only when a
new one is published (or the test calls ``B.cache.refresh()``). Both follow the change log (``follow=True``, the
default), so ``eventual`` and ``session`` show every hub's writes once the follower applied them; with
``follow=False`` they keep the old meaning (the snapshot, plus this hub's own writes at ``session``). Writers mark
partitions dirty and the workers' dispatcher builds them on its own within a moment, so the "not indexed yet"
phases hold the dispatcher lock (:func:`tests.workers_fixtures.paused_builds`) to keep new snapshots from
appearing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import redis
from rq.job import Job

import embcache
from embcache.core.snapshot import HnswBase
from embcache.redis.dispatcher import job_id
from embcache.redis.server import RedisServer, free_port
from embcache.redis.snapshots import read_manifest
from tests.workers_fixtures import brute_force, paused_builds, random_unit, wait_for
from workers.build import COMPACT_RATIO

DIM = 16
N = 400
LEVELS = ("eventual", "session", "strong")


@dataclass
class Pair:
    a: embcache.Hub
    b: embcache.Hub
    va: embcache.Version
    vb: embcache.Version
    data: np.ndarray
    url: str

    def pid(self, partition: str = "default") -> tuple[str, str, str]:
        return (self.va.space.name, self.va.name, partition)

    def generation(self) -> int:
        m = read_manifest(self.a.store.r, self.a.keys.partition(*self.pid()))
        return 0 if m is None else m.generation


FOLLOW_WITHIN = 5.0  # seconds a test waits for a follower (BENCHMARKS.md measures the real latency: ms)


@pytest.fixture(params=[True, False], ids=["follow", "nofollow"])
def pair(request, redis_url, workers, hubs) -> Pair:  # noqa: ANN001
    a = hubs(redis_url, follow=request.param)
    b = hubs(redis_url, refresh_interval=60, follow=request.param)
    space = a.create_space("cons", dim=DIM, metric="cosine")
    va = space.create_version()
    data = random_unit(N, DIM, 1)
    va.upsert([f"i{i}" for i in range(N)], data, [{"n": i} for i in range(N)])
    workers.start(redis_url)
    va.build(timeout=60)
    vb = b.space("cons").version(va.name)
    p = Pair(a, b, va, vb, data, redis_url)
    for hub, v in ((a, va), (b, vb)):  # both load the snapshot
        v.query(data[:1], n_results=1)
        assert isinstance(hub.cache.cached(p.pid()), HnswBase)
    return p


def _ids(v: embcache.Version, q: np.ndarray, level: str, k: int = 5) -> list[str]:
    return v.query(q, n_results=k, consistency=level, ef=400).ids[0]


# --- the three kinds of change, seen through each hub and level ----------------------------------------------

class Change:
    """A change made by hub A, and how to tell whether a view shows it."""

    def __init__(self, kind: str, data: np.ndarray) -> None:
        self.kind = kind
        rng = np.random.default_rng(7)
        self.q = random_unit(1, DIM, 42)
        order = np.argsort(-(data @ self.q[0]))
        if kind == "insert":
            self.id = "new"
            self.vector = (self.q + 0.01 * rng.standard_normal((1, DIM))).astype(np.float32)
        elif kind == "delete":
            self.id = f"i{order[0]}"  # the query's nearest item
        else:  # replace: the farthest item moves next to the query
            self.id = f"i{order[-1]}"
            self.old = data[order[-1] : order[-1] + 1]
            self.vector = (self.q + 0.01 * rng.standard_normal((1, DIM))).astype(np.float32)

    def apply(self, v: embcache.Version) -> None:
        if self.kind == "delete":
            assert v.delete([self.id]) == 1
        else:
            v.upsert([self.id], self.vector, [{"changed": True}])

    def shown(self, v: embcache.Version, level: str) -> bool:
        got = _ids(v, self.q, level)
        if self.kind == "insert":
            return got[0] == self.id
        if self.kind == "delete":
            return self.id not in got
        moved_here = got[0] == self.id
        still_there = _ids(v, self.old, level, k=1) == [self.id]
        assert moved_here != still_there, f"{self.id} is in both places at {level}"  # never a mix
        return moved_here


def _following(pair: Pair) -> bool:
    return pair.b.cache.follower is not None and pair.b.cache.follower.live


@pytest.mark.parametrize("kind", ["insert", "delete", "replace"])
def test_levels_across_hubs(pair: Pair, kind: str) -> None:
    change = Change(kind, pair.data)
    for v in (pair.va, pair.vb):
        assert not any(change.shown(v, level) for level in LEVELS), "the change is visible before it is made"
    gen = pair.generation()
    with paused_builds(pair.a):
        change.apply(pair.va)
        assert change.shown(pair.vb, "strong"), "B strong misses a committed write"
        assert change.shown(pair.va, "strong")
        assert change.shown(pair.va, "session"), "the writer's session misses its own write"
        if _following(pair):  # both followers apply the write: eventual and session show it, without a build
            for hub_v in (pair.va, pair.vb):
                wait_for(lambda v=hub_v: change.shown(v, "eventual"), FOLLOW_WITHIN, 0.005, what="the follower")
            assert change.shown(pair.vb, "session") and change.shown(pair.va, "eventual")
            assert change.shown(pair.vb, "strong") and change.shown(pair.va, "session")
            pair.b.cache.refresh()  # no new snapshot: the overlay stays
            assert change.shown(pair.vb, "eventual") and change.shown(pair.vb, "session")
        else:
            assert not change.shown(pair.va, "eventual"), "eventual answered from something other than the snapshot"
            assert not change.shown(pair.vb, "session"), "B session shows A's unindexed write"
            assert not change.shown(pair.vb, "eventual")
            pair.b.cache.refresh()  # no new snapshot: nothing to load
            assert not change.shown(pair.vb, "eventual") and not change.shown(pair.vb, "session")
        assert pair.generation() == gen
    pair.va.build(timeout=60)
    assert pair.generation() == gen + 1
    pair.b.cache.refresh()
    assert pair.b.cache.cached(pair.pid()).generation == gen + 1
    for level in LEVELS:
        assert change.shown(pair.vb, level), f"B {level} after the rebuild"
        assert change.shown(pair.va, level) or level == "eventual", f"A {level} after the rebuild"
    # A refreshes on its own (snapshot notification, refresh_interval=1)
    wait_for(lambda: change.shown(pair.va, "eventual"), 10, what="A to load the new snapshot")


@pytest.mark.parametrize("kind", ["insert", "delete"])
def test_session_of_a_writer_that_had_not_loaded_the_partition(pair: Pair, hubs, kind: str) -> None:  # noqa: ANN001
    c = hubs(pair.url)
    vc = c.space("cons").version(pair.va.name)
    change = Change(kind, pair.data)
    with paused_builds(pair.a):
        change.apply(vc)  # c has never queried: nothing loaded
        assert change.shown(vc, "strong")
        assert change.shown(vc, "session"), "the writer's session misses its own write"


def test_deleted_item_never_reappears_for_its_writer_or_at_strong(pair: Pair) -> None:
    victims = [f"i{i}" for i in range(0, N, 8)]
    q = pair.data[: N : 8]
    with paused_builds(pair.a):
        pair.va.delete(victims)
        for v, levels in ((pair.va, ("session", "strong")), (pair.vb, ("strong",))):
            for level in levels:
                got = v.query(q, n_results=10, consistency=level).ids
                assert not set(victims) & {i for row in got for i in row}, f"deleted ids returned at {level}"
        if _following(pair):  # B's follower hides them too, at every level
            wait_for(lambda: not set(victims) & {i for row in pair.vb.query(q, 10, consistency="eventual").ids
                                                 for i in row}, FOLLOW_WITHIN, 0.005, what="the follower")
        else:
            assert set(victims) <= {i for row in pair.vb.query(q, 10, consistency="eventual").ids for i in row}
        # re-inserting one of them brings it back at once for the writer
        pair.va.upsert([victims[0]], q[:1])
        assert _ids(pair.va, q[:1], "session", 1) == [victims[0]]
    pair.va.build(timeout=60)
    pair.b.cache.refresh()
    got = {i for row in pair.vb.query(q, 10, consistency="eventual").ids for i in row}
    assert victims[0] in got and not set(victims[1:]) & got


# --- incremental builds and compaction --------------------------------------------------------------------

def _job_kinds(queue_url: str, space: str, version: str, partition: str) -> dict[int, str]:
    """generation -> kind of the build jobs RQ kept a result of."""
    with redis.Redis.from_url(queue_url) as conn:
        job = Job.fetch(job_id("emb", space, version, partition), connection=conn)
        out = {}
        for res in job.results():
            value = res.return_value
            if isinstance(value, dict) and value.get("kind") != "unchanged":
                out[value["generation"]] = value["kind"]
        return out


def test_incremental_builds_tombstones_and_compaction(redis_url, workers, hubs) -> None:  # noqa: ANN001
    hub = hubs(redis_url)
    space = hub.create_space("inc", dim=DIM, metric="l2")
    v = space.create_version()
    live: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(3)

    def upsert(ids: list[str]) -> None:
        vecs = rng.standard_normal((len(ids), DIM)).astype(np.float32)
        v.upsert(ids, vecs)
        live.update(zip(ids, vecs))

    def delete(ids: list[str]) -> None:
        assert v.delete(ids) == len(ids)
        for i in ids:
            del live[i]

    def check(generation: int, tombstones: int, kind: str) -> None:
        (s,) = v.stats()
        assert (s.generation, s.count, s.snapshot_count, s.tombstones, s.unindexed_entries) == (
            generation, len(live), len(live), tombstones, 0), s
        wait_for(lambda: generation in _job_kinds(redis_url, "inc", v.name, "default"), 10, what="the job result")
        assert _job_kinds(redis_url, "inc", v.name, "default")[generation] == kind
        hub.cache.refresh()
        q = rng.standard_normal((30, DIM)).astype(np.float32)
        res = v.query(q, n_results=10, consistency="eventual", ef=1000)
        base = hub.cache.cached(("inc", v.name, "default"))
        assert isinstance(base, HnswBase) and base.generation == generation
        ids = list(live)
        top = brute_force(np.stack([live[i] for i in ids]), q, 10, "l2")
        assert res.ids == [[ids[j] for j in r] for r in top]

    upsert([f"i{i}" for i in range(1000)])
    workers.start(redis_url)
    v.build(timeout=60)
    v.query(np.zeros((1, DIM), np.float32) + 0.1, n_results=1)
    check(1, 0, "full")

    with paused_builds(hub):  # 100 new items, 50 replaced
        upsert([f"n{i}" for i in range(100)] + [f"i{i}" for i in range(50)])
    v.build(timeout=60)
    check(2, 0, "incremental")

    with paused_builds(hub):  # 150 deleted: 150 / 1100 < 20%, kept as tombstones
        delete([f"i{i}" for i in range(100, 250)])
    v.build(timeout=60)
    check(3, 150, "incremental")

    with paused_builds(hub):  # 60 new items reuse deleted slots
        upsert([f"m{i}" for i in range(60)])
    v.build(timeout=60)
    check(4, 90, "incremental")

    with paused_builds(hub):  # 90 + 200 tombstones > COMPACT_RATIO of the slots: compaction
        delete([f"i{i}" for i in range(300, 500)])
    assert (90 + 200) > COMPACT_RATIO * (len(live) + 290)
    v.build(timeout=60)
    check(5, 0, "full")
    manifest = read_manifest(hub.store.r, hub.keys.partition("inc", v.name, "default"))
    assert manifest.deleted == 0 and manifest.count == len(live) == 810


# --- availability ---------------------------------------------------------------------------------------

@pytest.fixture
def outage(tmp_path, workers, hubs):  # noqa: ANN001, ANN201
    """A private server with a worker-built snapshot loaded by a hub that also has an unindexed session write;
    then the server is stopped. Yields (hub, version, server, expected answers per level)."""
    server = RedisServer(tmp_path / "redis", port=free_port()).start()
    try:
        hub = hubs(server.url)
        space = hub.create_space("avail", dim=DIM)
        v = space.create_version()
        data = random_unit(300, DIM, 5)
        v.upsert([f"i{i}" for i in range(300)], data)
        workers.start(server.url)
        v.build(timeout=60)
        q = data[:5] + 0.01
        v.query(q, n_results=1)  # loads the snapshot
        with paused_builds(hub):
            v.upsert(["mine"], q[:1])  # unindexed: in the session overlay, and in the follower's once it applied it
            wait_for(lambda: v.query(q, n_results=5, consistency="eventual").ids[0][0] == "mine", 10, 0.005,
                     what="the follower")
            expected = {level: v.query(q, n_results=5, consistency=level).ids for level in ("eventual", "session")}
            assert expected["session"][0][0] == "mine" == expected["eventual"][0][0]
            for level in ("eventual", "session"):  # neighbours of stored items, and of this hub's own
                expected[f"by_id {level}"] = v.query_by_id(["i0", "i1"], n_results=3, consistency=level).ids
            expected["by_id mine"] = v.query_by_id(["mine"], n_results=3).ids
            assert expected["by_id session"][0][0] == "mine" == expected["by_id eventual"][0][0]
            workers.stop_all()
        server.stop()
        yield hub, v, server, q, expected
    finally:
        server.stop()


def test_writes_and_strong_queries_raise_unavailable_while_redis_is_down(outage) -> None:  # noqa: ANN001
    hub, v, server, q, _ = outage
    t0 = time.monotonic()
    with pytest.raises(embcache.Unavailable):
        v.query(q, n_results=5, consistency="strong")
    with pytest.raises(embcache.Unavailable):
        v.upsert(["lost"], q[:1])
    with pytest.raises(embcache.Unavailable):
        v.delete(["i1"])
    assert time.monotonic() - t0 < 30
    server.start()  # nothing was half-written
    assert v.count() == 301
    assert v.get(["lost", "i1"]).ids == ["i1"]


def test_eventual_and_session_answer_while_redis_is_down(outage) -> None:  # noqa: ANN001
    hub, v, server, q, expected = outage
    for level in ("eventual", "session"):
        assert v.query(q, n_results=5, consistency=level).ids == expected[level]
        assert v.query_by_id(["i0", "i1"], n_results=3, consistency=level).ids == expected[f"by_id {level}"]
    assert v.query_by_id(["mine"], n_results=3).ids == expected["by_id mine"]  # issue 15.3: no Redis needed


def test_close_is_prompt_with_a_long_refresh_interval(redis_url) -> None:  # noqa: ANN001
    hub = embcache.connect(redis_url, refresh_interval=3)  # 60 in the consistency tests
    v = hub.create_space("c", dim=4).create_version()
    v.upsert(["a"], [[1, 0, 0, 0]])
    v.query([[1, 0, 0, 0]])  # starts the refresher
    time.sleep(0.2)
    t0 = time.monotonic()
    hub.close()
    assert time.monotonic() - t0 < 1.0


def test_strong_and_session_see_writes_past_an_unreadable_tail(redis_url: str, workers, monkeypatch) -> None:  # noqa: ANN001
    """More log entries after a client's snapshot than one tail read returns: the client reloads the snapshot,
    reads the whole tail after it, and still sees every write."""
    import embcache.redis.store

    monkeypatch.setattr(embcache.redis.store.Store.read_tail.plan, "__defaults__", (5,))
    monkeypatch.setattr(embcache.redis.store.Store.read_tails.plan, "__defaults__", (5,))
    workers.start(redis_url)
    x = random_unit(40, DIM, seed=11)
    with embcache.connect(redis_url, refresh_interval=0) as a, embcache.connect(redis_url, refresh_interval=0) as b:
        va = a.create_space("s", dim=DIM, metric="cosine").create_version()
        va.upsert(["first"], x[:1])
        va.build(timeout=60)
        vb = b.space("s").version("v1")
        assert vb.query(x[0], 1, consistency="strong").ids == [["first"]]
        assert isinstance(b.cache.cached(("s", "v1", "default")), HnswBase)
        with paused_builds(a):
            for i in range(1, 30):  # 29 log entries after b's snapshot: more than a tail read returns
                va.upsert([f"w{i}"], x[i : i + 1])
            assert vb.query(x[29], 1, consistency="strong").ids == [["w29"]]
            assert vb.query(x[0], 1, consistency="strong").ids == [["first"]]


def test_strong_queries_from_many_threads_share_the_probe_connection_safely(redis_url: str, workers) -> None:  # noqa: ANN001
    """Strong queries on the serving path overlap a position check with the search; threads take turns on the
    hub's probe connection or use pooled ones, and every answer stays right while another hub writes."""
    import threading

    workers.start(redis_url)
    x = random_unit(300, DIM, seed=5)
    with embcache.connect(redis_url, refresh_interval=0.05) as a, embcache.connect(redis_url) as b:
        va = a.create_space("s", dim=DIM, metric="cosine").create_version()
        va.upsert([f"i{i}" for i in range(200)], x[:200])
        va.build(timeout=60)
        vb = b.space("s").version("v1")
        vb.query(x[0], 1, consistency="strong")
        errors: list[BaseException] = []

        def reader(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                for _ in range(150):
                    i = int(rng.integers(0, 200))
                    assert vb.query(x[i], 1, consistency="strong").ids == [[f"i{i}"]]
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for i in range(200, 260):  # writes land while the readers run: strong must see each at once
            va.upsert([f"i{i}"], x[i : i + 1])
            assert vb.query(x[i], 1, consistency="strong").ids == [[f"i{i}"]]
        for t in threads:
            t.join()
        assert not errors, errors[0]
