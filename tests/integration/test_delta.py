"""Delta segments (issue 12.3): between two full snapshots a worker publishes only the changes since the last
one; readers add them to their overlays without downloading the snapshot again; past a share of the snapshot the
worker merges them into a new full snapshot. Real redis-server, real ``python -m workers`` processes."""

from __future__ import annotations

import numpy as np
import pytest
import redis

import embcache
from embcache.core.delta import Chain
from embcache.core.keys import PartitionKeys
from embcache.redis import snapshots
from tests.workers_fixtures import brute_force, random_unit, wait_for

DIM = 16
WIDTH = 4 * DIM
# deltas for every snapshot size; a merge once a chain passes 100 rows (or 10 % of the snapshot)
DELTA_ENV = {"EMBCACHE_DELTA_FROM_BYTES": "0", "EMBCACHE_DELTA_MIN_ROWS": "100", "EMBCACHE_DELTA_SHARE": "0.1",
             "EMBCACHE_BUILD_SETTLE": "0", "EMBCACHE_BUILD_MAX_DELAY": "0"}


def _published(r: redis.Redis, pk) -> tuple[snapshots.Manifest, Chain | None]:  # type: ignore[name-defined]  # noqa: ANN001
    m = snapshots.read_manifest(r, pk)
    assert m is not None
    chain = snapshots.read_chain(r, pk, m, WIDTH)
    return m, chain if chain is not None and chain.segments else None


def _exact_top(ids: list[str], mat: np.ndarray, q: np.ndarray, k: int) -> list[list[str]]:
    return [[ids[j] for j in row] for row in brute_force(mat, q, k)]


class Data:
    """What the partition holds, kept beside it: the reference the answers are checked against."""

    def __init__(self) -> None:
        self.items: dict[str, np.ndarray] = {}

    def upsert(self, v: embcache.Version, ids: list[str], x: np.ndarray) -> None:
        v.upsert(ids, x)
        self.items.update(zip(ids, x))

    def delete(self, v: embcache.Version, ids: list[str]) -> None:
        v.delete(ids)
        for i in ids:
            del self.items[i]

    def top(self, q: np.ndarray, k: int) -> list[list[str]]:
        ids = list(self.items)
        return _exact_top(ids, np.stack([self.items[i] for i in ids]), q, k)

    def exact(self, got: list[list[str]], q: np.ndarray, k: int) -> bool:
        """True when every row of ``got`` is a true top ``k`` of its query: live ids whose cosine distances are
        the brute-force ones (ties may come in either order)."""
        for row, want, x in zip(got, self.top(q, k), q):
            if len(row) != len(want) or not set(row) <= set(self.items):
                return False
            if not np.allclose(self._dist(row, x), self._dist(want, x), atol=1e-5):
                return False
        return True

    def _dist(self, ids: list[str], x: np.ndarray) -> np.ndarray:
        m = np.stack([self.items[i] for i in ids]).astype(np.float64)
        return np.sort(1 - m @ x / np.linalg.norm(m, axis=1) / np.linalg.norm(x))


def _built(a: embcache.Hub, name: str, n: int) -> tuple[embcache.Version, PartitionKeys, redis.Redis, "Data"]:
    """A new space ``name`` with ``n`` random items in one partition, built into its first snapshot: the version,
    its partition keys, the hub's client and the reference data."""
    v = a.create_space(name, dim=DIM).create_version()
    data = Data()
    data.upsert(v, [f"a{i}" for i in range(n)], random_unit(n, DIM, 1))
    v.build(timeout=60)
    return v, a.keys.partition(name, v.name, "default"), a.store.r, data


def test_deltas_extend_the_snapshot_until_a_merge(redis_url: str, workers, hubs) -> None:  # noqa: ANN001
    a = hubs(redis_url)
    workers.start(redis_url, env=DELTA_ENV)
    v, pk, r, data = _built(a, "dl", 500)
    base, chain = _published(r, pk)
    assert base.generation == 1 and chain is None
    empty = snapshots.read_chain(r, pk, base, WIDTH)  # its worker keeps the index: an empty chain says so
    assert empty is not None and not empty.segments

    # a reader that does not follow the log: only published segments can move it
    b = hubs(redis_url, follow=False, refresh_interval=0.05)
    vb = b.space("dl").version(v.name)
    q = random_unit(30, DIM, 9)
    assert data.exact(vb.query(q, 5).ids, q, 5)

    new = random_unit(20, DIM, 2)
    data.upsert(v, [f"n{i}" for i in range(20)], new)
    data.delete(v, [f"a{i}" for i in range(5)])
    moved = random_unit(5, DIM, 3)
    data.upsert(v, [f"a{i}" for i in range(10, 15)], moved)  # replaced: must be found where they are now
    v.build(timeout=60)
    m, chain = _published(r, pk)
    assert m.sid == base.sid, "a delta build rewrote the snapshot"
    assert chain is not None and len(chain.segments) == 1 and chain.rows == 30
    assert chain.segments[0].start == base.pos and chain.pos == snapshots.last_log_position(r, pk)
    seg = chain.segments[0]
    assert all(r.ttl(pk.chunk(seg.sid, i)) == -1 for i in range(seg.chunks)), "a published segment expires"
    assert seg.nbytes < base.nbytes / 5
    st = v.stats()[0]
    assert (st.generation, st.delta_segments, st.delta_rows, st.unindexed_entries) == (1, 1, 30, 0)

    wait_for(lambda: vb.query(new[:1], 1).ids == [["n0"]], 10, what="the reader to add the delta segment")
    assert data.exact(vb.query(q, 5).ids, q, 5)
    assert vb.query(moved, 1).ids == [[f"a{i}"] for i in range(10, 15)]
    got = {i for row in vb.query(q, 40).ids for i in row}
    assert not got & {f"a{i}" for i in range(5)}, "a deleted item came back from a delta"
    assert b.cache.cached(("dl", v.name, "default")).generation == 1  # type: ignore[union-attr]

    # a second segment, then one past the chain's limit: a merge into generation 2
    data.upsert(v, [f"m{i}" for i in range(30)], random_unit(30, DIM, 4))
    v.build(timeout=60)
    m, chain = _published(r, pk)
    assert m.generation == 1 and chain is not None and len(chain.segments) == 2 and chain.rows == 60
    old_segments = chain.segments
    data.upsert(v, [f"z{i}" for i in range(60)], random_unit(60, DIM, 5))
    v.build(timeout=60)
    # past the chain's limit: the 60 rows are published as a third segment and indexed, and the index, which now
    # holds more than the limit's rows past the snapshot, becomes generation 2 at the segment's end
    wait_for(lambda: _published(r, pk)[0].generation == 2, 30, what="the merge")
    m, chain = _published(r, pk)
    assert m.pos == snapshots.last_log_position(r, pk) and m.count == len(data.items) and chain is None
    for s in old_segments:  # the merged chain's chunks expire with the snapshot they extended
        assert 0 < r.ttl(pk.chunk(s.sid, 0)) <= snapshots.GRACE_SECONDS
    wait_for(lambda: b.cache.cached(("dl", v.name, "default")).generation == 2, 10,  # type: ignore[union-attr]
             what="the reader to load the merged snapshot")
    assert data.exact(vb.query(q, 5).ids, q, 5)
    for level in ("eventual", "session", "strong"):
        assert data.exact(v.query(q, 5, consistency=level).ids, q, 5), level


def test_a_new_reader_starts_from_the_segments(redis_url: str, workers, hubs) -> None:  # noqa: ANN001
    a = hubs(redis_url)
    workers.start(redis_url, env=DELTA_ENV)
    v, pk, _, data = _built(a, "dn", 300)
    data.upsert(v, [f"n{i}" for i in range(40)], random_unit(40, DIM, 2))
    data.delete(v, ["a1", "a2"])
    v.build(timeout=60)
    _, chain = _published(a.store.r, pk)
    assert chain is not None and chain.rows == 42
    q = random_unit(20, DIM, 7)
    for follow in (True, False):
        b = hubs(redis_url, follow=follow)
        vb = b.space("dn").version(v.name)
        assert data.exact(vb.query(q, 5).ids, q, 5), f"follow={follow}"
        st = b.cache.follower.stats(("dn", v.name, "default"))  # type: ignore[union-attr]
        assert st is not None and st["overlay_rows"] >= 42 and st["follow_start"] == chain.start
        if not follow:  # nothing but the segments moved it
            assert st["follow_position"] == chain.pos and st["follow_mode"] == "deltas"


@pytest.mark.slow
def test_worker_killed_between_a_delta_and_the_merge(redis_url: str, workers, hubs) -> None:  # noqa: ANN001
    """A worker killed after publishing deltas loses the index it kept in memory; the next worker merges from the
    log (never trimmed past the snapshot the chain extends): no write is lost, no deleted item returns."""
    a = hubs(redis_url)
    w1 = workers.start(redis_url, env=DELTA_ENV)
    v, pk, r, data = _built(a, "dk", 400)
    data.upsert(v, [f"d{i}" for i in range(30)], random_unit(30, DIM, 2))
    data.delete(v, [f"a{i}" for i in range(10)])
    v.build(timeout=60)
    base, chain = _published(r, pk)
    assert chain is not None and chain.rows == 40
    w1.kill()
    data.upsert(v, [f"e{i}" for i in range(20)], random_unit(20, DIM, 3))  # after the kill: in no segment yet
    data.delete(v, ["d0", "d1"])
    q = np.concatenate([random_unit(20, DIM, 8), np.stack([data.items[f"e{i}"] for i in range(20)])])
    fresh = hubs(redis_url, follow=False).space("dk").version(v.name)
    assert data.exact(fresh.query(q, 5, consistency="strong").ids, q, 5)  # snapshot + segment + the log
    workers.start(redis_url, env=DELTA_ENV)
    v.build(timeout=60)
    m, chain = _published(r, pk)
    assert m.generation == base.generation + 1 and chain is None and m.count == len(data.items)
    later = hubs(redis_url, follow=False).space("dk").version(v.name)
    for level in ("eventual", "strong"):
        assert data.exact(later.query(q, 5, consistency=level).ids, q, 5), level
    got = {i for row in later.query(q, 50).ids for i in row}
    assert not got & ({f"a{i}" for i in range(10)} | {"d0", "d1"})


def test_readers_may_read_segments_and_writers_cannot_write_them(redis_url: str, workers, hubs) -> None:  # noqa: ANN001
    a = hubs(redis_url)
    workers.start(redis_url, env=DELTA_ENV)
    v = a.create_space("da", dim=DIM).create_version()
    v.upsert([f"a{i}" for i in range(200)], random_unit(200, DIM, 1))
    v.build(timeout=60)
    v.upsert(["n"], random_unit(1, DIM, 2))
    v.build(timeout=60)
    pk = a.keys.partition("da", v.name, "default")
    _, chain = _published(a.store.r, pk)
    assert chain is not None
    reader = a.grant("dr", space="da", role="reader")
    writer = a.grant("dw", space="da", role="writer")
    conn = a.store.r.connection_pool.connection_kwargs
    host, port = conn["host"], conn["port"]
    as_reader = redis.Redis(host=host, port=port, username=reader.username, password=reader.password)
    assert as_reader.get(pk.delta) is not None and as_reader.get(pk.chunk(chain.segments[0].sid, 0)) is not None
    as_writer = redis.Redis(host=host, port=port, username=writer.username, password=writer.password)
    for command in (("SET", pk.delta, "{}"), ("SET", pk.chunk("1.abc", 0), "x"), ("DEL", pk.delta)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_writer.execute_command(*command)
    with pytest.raises(redis.exceptions.ResponseError):  # nor through the worker's function
        as_writer.fcall("emb_publish_delta", 4, pk.snap, pk.delta, pk.state, pk.chunk("1.abc", 0), "", "", "{}",
                        1, "c", "m")


def test_an_index_that_lags_the_chain_by_parts_of_segments(redis_url: str, workers, hubs) -> None:  # noqa: ANN001
    """Inserts slower than writes (here: 7 rows a build): segments are still published at once, the worker's
    index moves a part at a time behind them, and the merge, taken only between segments, holds exactly the
    data up to its position."""
    a = hubs(redis_url)
    workers.start(redis_url, env={**DELTA_ENV, "EMBCACHE_DELTA_INDEX_BUDGET": "0", "EMBCACHE_DELTA_INDEX_PART": "7"})
    v, pk, r, data = _built(a, "dg", 400)
    reader = hubs(redis_url, follow=False, refresh_interval=0.05).space("dg").version(v.name)
    q = random_unit(25, DIM, 6)
    for round_ in range(6):  # 30 writes a round: the chain passes its 100-row limit while the index lags
        data.upsert(v, [f"r{round_}_{i}" for i in range(25)], random_unit(25, DIM, 10 + round_))
        data.delete(v, [f"a{round_ * 5 + i}" for i in range(5)])
        v.build(timeout=60)  # returns once a segment covers the writes, whatever the index did
        wait_for(lambda: data.exact(reader.query(q, 5).ids, q, 5), 10, what="the reader to see the round")
    wait_for(lambda: _published(r, pk)[0].generation >= 2, 60, what="a merge")
    fresh = hubs(redis_url, follow=False).space("dg").version(v.name)
    for level in ("eventual", "strong"):
        assert data.exact(fresh.query(q, 5, consistency=level).ids, q, 5), level
    # the merged snapshot, with its chain's segments applied in order, is exactly the live data
    _, chain = _published(r, pk)
    base = snapshots.load(r, pk, ef=64, dim=DIM, metric="cosine")
    assert base is not None and base.generation >= 2
    items = set(base.ids)
    if chain is not None and chain.base == base.manifest.sid:
        for _, tail in snapshots.fetch_segments(r, pk, chain.segments, WIDTH) or []:
            for id_, vec in zip(tail.ids, tail.vectors):
                (items.discard if vec is None else items.add)(id_)
    assert items == set(data.items)


@pytest.mark.cluster
def test_deltas_on_redis_cluster(cluster_url: str, redis_url: str, workers, hubs) -> None:  # noqa: ANN001
    """Segments, their chain and the function that publishes it live in the partition's slot: publication,
    reading and the merge work on a 3-master Cluster as on one server (RQ on a standalone Redis)."""
    a = hubs(cluster_url)
    workers.start(cluster_url, queue_url=redis_url, env=DELTA_ENV)
    v, pk, r, data = _built(a, "dc", 300)
    reader = hubs(cluster_url, follow=False, refresh_interval=0.05).space("dc").version(v.name)
    q = random_unit(20, DIM, 5)
    assert data.exact(reader.query(q, 5).ids, q, 5)
    data.upsert(v, [f"n{i}" for i in range(40)], random_unit(40, DIM, 2))
    data.delete(v, ["a1", "a2", "a3"])
    v.build(timeout=60)
    m, chain = _published(r, pk)
    assert m.generation == 1 and chain is not None and chain.rows == 43
    wait_for(lambda: data.exact(reader.query(q, 5).ids, q, 5), 10, what="the reader to add the segment")
    data.upsert(v, [f"z{i}" for i in range(80)], random_unit(80, DIM, 3))  # past the limit: a merge
    v.build(timeout=60)
    wait_for(lambda: _published(r, pk)[0].generation == 2, 30, what="the merge")
    wait_for(lambda: data.exact(reader.query(q, 5).ids, q, 5), 10, what="the reader to load the merge")
    for level in ("eventual", "session", "strong"):
        assert data.exact(v.query(q, 5, consistency=level).ids, q, 5), level


def test_a_worker_that_forks_writes_no_chain(redis_url: str, workers, hubs) -> None:  # noqa: ANN001
    """A work-horse per job keeps no index: it rewrites the snapshot, announces no chain, and the dispatcher
    keeps its longer delay for it."""
    a = hubs(redis_url)
    workers.start(redis_url, env=DELTA_ENV, args=["--fork"])
    v = a.create_space("df", dim=DIM).create_version()
    pk = a.keys.partition("df", v.name, "default")
    r = a.store.r
    v.upsert([f"a{i}" for i in range(200)], random_unit(200, DIM, 1))
    v.build(timeout=60)
    v.upsert(["n"], random_unit(1, DIM, 2))
    v.build(timeout=60)
    m = snapshots.read_manifest(r, pk)
    assert m is not None and m.generation == 2 and r.get(pk.delta) is None
