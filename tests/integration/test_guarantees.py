"""The store's guarantees (DESIGN.md 1, 2, 4, 7) against real Redis: atomic batches, isolation of versions and
partitions, sealed versions, alias rollback, rejected calls that change nothing byte for byte, one partition per
id, consistency levels across two hubs, and durability of the embedded server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

import embcache
import embcache.redis.server
import embcache.redis.store
from embcache import (
    AlreadyExists,
    DimensionMismatch,
    Indeterminate,
    InvalidInput,
    InvalidName,
    NotFound,
    ServerError,
    Unavailable,
    VersionSealed,
)
from embcache.core.errors import ItemNotFound, PartitionNotFound, SpaceNotFound, VersionNotFound
from embcache.redis.server import RedisServer, ensure_embedded, find_redis_server, free_port
from tests.storecheck import assert_db_unchanged, assert_knn, brute_distances, db_snapshot, node_urls, raw_client

FAST = 0.05  # refresh interval: Hub.close() waits for the refresher thread, which sleeps up to this long


@pytest.fixture
def hub(any_redis_url: str) -> Iterator[embcache.Hub]:
    with embcache.connect(any_redis_url, refresh_interval=FAST) as h:
        yield h


def _items(seed: int, n: int, dim: int, prefix: str = "i") -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"{prefix}{j}" for j in range(n)], rng.standard_normal((n, dim)).astype(np.float32)


def _answers(v: embcache.Version, q: np.ndarray, **kw) -> tuple:  # noqa: ANN003
    res = v.query(q, n_results=20, include=("distances", "metadatas"), **kw)
    return res.ids, res.distances.tobytes(), res.metadatas


# --- 1. atomic writes ------------------------------------------------------------------------------------

def test_one_upsert_call_is_observed_all_or_nothing(hub: embcache.Hub, any_redis_url: str) -> None:
    """A 3,000-item call is written in 3 chunks (WRITE_CHUNK_ITEMS = 1000), which commit in one MULTI/EXEC: a
    concurrent reader (raw HLEN on a second connection, and version.count()) sees the old or the new total,
    never a count in between. The control writes the same items in three calls and must be seen in between,
    which shows the observer is fast enough to catch a non-atomic write."""
    assert 3000 > 2 * embcache.redis.store.WRITE_CHUNK_ITEMS
    v = hub.create_space("atomic", dim=64, metric="l2").create_version()
    old_ids, old_x = _items(1, 500, 64, "old")
    v.upsert(old_ids, old_x, partition="p")
    ids, x = _items(2, 3000, 64)
    pk = hub.keys.partition("atomic", v.name, "p")

    def observe(write: Callable[[list[int]], None]) -> tuple[list[int], int]:
        seen: list[int] = []
        during = 0
        stop = threading.Event()
        started = threading.Event()
        writer = threading.Thread(target=write, args=(seen,))

        def watch() -> None:
            nonlocal during
            with raw_client(any_redis_url) as r:
                while not stop.is_set():
                    alive = writer.is_alive()
                    seen.append(int(r.hlen(pk.vec)))
                    seen.append(v.count("p"))
                    during += alive
                    started.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        started.wait(5)
        writer.start()
        writer.join()
        time.sleep(0.05)
        stop.set()
        watcher.join()
        return seen, during

    seen, during = observe(lambda _: v.upsert(ids, x, partition="p"))
    assert during > 0, "the observer took no sample while the write ran"
    assert set(seen) == {500, 3500}, f"counts observed in between: {sorted(set(seen) - {500, 3500})}"

    v.delete(ids, partition="p")
    assert v.count() == 500

    def three_calls(seen: list[int]) -> None:
        for s in (slice(0, 1000), slice(1000, 2000), slice(2000, 3000)):
            v.upsert(ids[s], x[s], partition="p")
            # wait until the observer has sampled this state (a fixed sleep missed it on a loaded machine)
            n, deadline = len(seen), time.monotonic() + 10
            while len(seen) < n + 4 and time.monotonic() < deadline:
                time.sleep(0.005)

    seen, _ = observe(three_calls)
    assert {1500, 2500} <= set(seen), "control: separate calls must be visible one by one"


BAD_LAST = {
    "nan": lambda ids, x, m: (ids, np.vstack([x[:-1], np.full((1, x.shape[1]), np.nan, np.float32)]), m),
    "inf": lambda ids, x, m: (ids, np.vstack([x[:-1], np.full((1, x.shape[1]), np.inf, np.float32)]), m),
    "empty id": lambda ids, x, m: (ids[:-1] + [""], x, m),
    "513-byte id": lambda ids, x, m: (ids[:-1] + ["x" * 513], x, m),
    "duplicate id": lambda ids, x, m: (ids[:-1] + [ids[0]], x, m),
    "non-str id": lambda ids, x, m: (ids[:-1] + [7], x, m),
    "metadata not a dict": lambda ids, x, m: (ids, x, m[:-1] + ["drama"]),
    "metadata NaN": lambda ids, x, m: (ids, x, m[:-1] + [{"s": float("nan")}]),
    "metadata $key": lambda ids, x, m: (ids, x, m[:-1] + [{"$set": 1}]),
    "metadata not JSON": lambda ids, x, m: (ids, x, m[:-1] + [{"s": {1, 2}}]),
    "zero vector (cosine)": lambda ids, x, m: (ids, np.vstack([x[:-1], np.zeros((1, x.shape[1]), np.float32)]), m),
    "one id short": lambda ids, x, m: (ids[:-1], x, m[:-1]),
}


@pytest.mark.parametrize("case", list(BAD_LAST))
def test_a_batch_whose_last_item_is_invalid_writes_nothing(redis_url: str, case: str) -> None:
    with embcache.connect(redis_url, refresh_interval=FAST) as hub:
        v = hub.create_space("s", dim=16, metric="cosine").create_version()
        v.upsert(["keep"], np.ones((1, 16), np.float32), partition="p")
        ids, x = _items(3, 2500, 16)  # three chunks: nothing of the first two may land either
        metas = [{"j": j} for j in range(2500)]
        bad_ids, bad_x, bad_m = BAD_LAST[case](ids, x, metas)
        before = db_snapshot(redis_url)
        with pytest.raises(InvalidInput):
            v.upsert(bad_ids, bad_x, metadatas=bad_m, partition="p")
        assert_db_unchanged(before, db_snapshot(redis_url), case)
        assert v.count() == 1


# --- 4. isolation ----------------------------------------------------------------------------------------

def test_writes_to_one_version_never_change_another(hub: embcache.Hub, any_redis_url: str) -> None:
    space = hub.create_space("iso", dim=8, metric="cosine")
    v1 = space.create_version()
    ids, x = _items(4, 200, 8)
    metas = [{"g": j % 4} for j in range(200)]
    v1.upsert(ids[:120], x[:120], metadatas=metas[:120], partition="a")
    v1.upsert(ids[120:], x[120:], metadatas=metas[120:], partition="b")
    q = np.random.default_rng(5).standard_normal((5, 8)).astype(np.float32)
    answers = {c: _answers(v1, q, consistency=c) for c in ("eventual", "session", "strong")}
    filtered = _answers(v1, q, where={"g": 1})
    counts = (v1.count(), v1.count("a"), v1.count("b"), v1.partitions())
    got = v1.get(ids)

    def v1_keys() -> dict:
        snap = db_snapshot(any_redis_url)
        return {n: {k: val for k, val in s["keys"].items() if f"/{v1.name}/".encode() in k} for n, s in snap.items()}

    keys_before = v1_keys()

    v2 = space.create_version()
    _, y = _items(6, 200, 8)
    v2.upsert(ids[:120], y[:120], metadatas=[{"g": 1}] * 120, partition="a")  # same ids, other vectors
    v2.upsert(ids[120:150], y[120:150], partition="c")
    v2.delete(ids[:60])
    v2.upsert(["new"], q[:1], partition="b")  # exactly the first query: would be its nearest in v1
    v2.seal()

    for c in answers:
        assert _answers(v1, q, consistency=c) == answers[c], c
    assert _answers(v1, q, where={"g": 1}) == filtered
    assert (v1.count(), v1.count("a"), v1.count("b"), v1.partitions()) == counts
    again = v1.get(ids)
    assert again.ids == got.ids and again.metadatas == got.metadatas
    np.testing.assert_array_equal(again.embeddings, got.embeddings)
    assert v1_keys() == keys_before
    assert v1.state == "open" and space.version(v1.name).state == "open"
    with embcache.connect(any_redis_url, refresh_interval=0) as fresh:  # nothing cached: straight from Redis
        assert _answers(fresh.space("iso").version(v1.name), q, consistency="strong") == answers["strong"]


def test_a_query_naming_partitions_returns_only_their_items(hub: embcache.Hub) -> None:
    v = hub.create_space("parts", dim=6, metric="l2").create_version()
    ids, x = _items(7, 150, 6)
    home = {}
    for j, i in enumerate(ids):
        home[i] = ("a", "b", "c")[j % 3]
    for p in "abc":
        sel = [j for j in range(150) if home[ids[j]] == p]
        v.upsert([ids[j] for j in sel], x[sel], partition=p)
    q = np.random.default_rng(8).standard_normal((10, 6)).astype(np.float32)
    v.query(q, n_results=5)  # bases loaded: later writes reach queries through the overlays
    # this hub's own new writes in b, right on top of the queries
    v.upsert([f"near{j}" for j in range(10)], q, partition="b")
    for j in range(10):
        home[f"near{j}"] = "b"
    for c in ("eventual", "session", "strong"):
        for named in (["a"], ["c"], ["a", "c"]):
            res = v.query(q, n_results=200, partitions=named, consistency=c)
            for row in res.ids:
                assert row and {home[i] for i in row} <= set(named), (c, named)
                assert len(row) == 50 * len(named)
        res = v.query(q, n_results=1, partitions=["b"], consistency=c)
        if c != "eventual":
            assert res.ids == [[f"near{j}"] for j in range(10)]


# --- 4. sealed versions ----------------------------------------------------------------------------------

def test_sealed_version_refuses_writes_and_stays_byte_for_byte(hub: embcache.Hub, any_redis_url: str) -> None:
    space = hub.create_space("seal", dim=4, metric="l2")
    v = space.create_version()
    ids, x = _items(9, 20, 4)
    v.upsert(ids[:10], x[:10], partition="a")
    v.upsert(ids[10:], x[10:], partition="b")
    with embcache.connect(any_redis_url, refresh_interval=0) as other:
        ov = other.space("seal").version(v.name)
        ov.upsert(["from-other"], x[:1] + 1, partition="a")  # `other` now knows partition a is registered
        v.seal()
        assert v.state == "sealed" and space.version(v.name).state == "sealed"
        v.seal()  # idempotent
        before = db_snapshot(any_redis_url)
        q = x[:3]
        answers = _answers(v, q, consistency="strong")
        attempts = {
            "upsert existing partition": lambda ver: ver.upsert(["n"], x[:1], partition="a"),
            "upsert replaces": lambda ver: ver.upsert(["i0"], x[1:2], partition="a"),
            "upsert new partition": lambda ver: ver.upsert(["n"], x[:1], partition="z"),
            "delete": lambda ver: ver.delete(["i0", "i11"]),
            "delete in partition": lambda ver: ver.delete(["i0"], partition="a"),
            "delete missing id": lambda ver: ver.delete(["nope"]),
        }
        for who, ver in (("sealing hub", v), ("other hub", ov), ("reloaded", space.version(v.name))):
            for what, call in attempts.items():
                with pytest.raises(VersionSealed):
                    call(ver)
                assert_db_unchanged(before, db_snapshot(any_redis_url), f"{what} by the {who}")
        assert _answers(v, q, consistency="strong") == answers
        assert ov.count() == 21


# --- aliases ---------------------------------------------------------------------------------------------

def test_alias_rollback_restores_the_previous_target(hub: embcache.Hub) -> None:
    space = hub.create_space("al", dim=2, metric="l2")
    v1, v2, v3 = (space.create_version() for _ in range(3))
    for j, v in enumerate((v1, v2, v3)):
        v.upsert([f"only-in-{v.name}"], [[float(j), 0.0]])
    assert [v.name for v in space.versions()] == ["v1", "v2", "v3"]
    assert space.aliases() == {}
    assert space.query([0.0, 0.0], n_results=1).ids == [["only-in-v3"]]  # no live: the newest

    space.set_alias("live", v1)
    assert space.query([0.0, 0.0], n_results=1).ids == [["only-in-v1"]]
    space.set_alias("live", v2)
    space.set_alias("live", "v3")
    space.set_alias("live", v3)  # same target again: no history entry
    space.set_alias("canary", v1)
    assert space.aliases() == {"live": "v3", "canary": "v1"}
    assert space.alias_history("live") == ["v2", "v1"]
    assert space.version("live").name == "v3"

    back = space.rollback("live")
    assert back.name == "v2" and space.aliases()["live"] == "v2"
    assert space.query([0.0, 0.0], n_results=1).ids == [["only-in-v2"]]
    assert space.rollback("live").name == "v1"
    assert space.alias_history("live") == []
    with pytest.raises(NotFound):
        space.rollback("live")
    assert space.aliases() == {"live": "v1", "canary": "v1"}
    with pytest.raises(NotFound):
        space.rollback("canary")  # never moved: no history
    with pytest.raises(NotFound):
        space.rollback("nope")


# --- 1. rejected calls change nothing --------------------------------------------------------------------

def test_rejected_calls_change_nothing_byte_for_byte(hub: embcache.Hub, any_redis_url: str) -> None:
    space = hub.create_space("s", dim=8, metric="cosine")
    v1 = space.create_version()
    ids, x = _items(10, 40, 8)
    v1.upsert(ids[:20], x[:20], metadatas=[{"g": j % 3} for j in range(20)], partition="p1")
    v1.upsert(ids[20:], x[20:], partition="p2")
    space.set_alias("live", v1)
    sealed = space.create_version("sv")
    sealed.upsert(["s0"], x[:1], partition="p1")
    sealed.seal()
    half = hub.create_space("h", dim=4, metric="l2", dtype="float16").create_version()
    half.upsert(["h0"], [[1, 2, 3, 4]])
    gone = hub.create_space("gone", dim=2, metric="l2")
    hub.drop_space("gone")
    v1.query(x[:2], n_results=3)  # bases loaded: rejected calls must not disturb them either
    good = x[:2]
    q = x[0]
    D = DimensionMismatch
    I = InvalidInput  # noqa: E741
    N = InvalidName
    F = NotFound
    S = VersionSealed
    cases: list[tuple[str, type, Callable[[], object]]] = [
        # upsert: vectors
        ("wrong dimension", D, lambda: v1.upsert(["a", "b"], np.ones((2, 7)))),
        ("wrong dimension, wider", D, lambda: v1.upsert(["a"], np.ones((1, 9)))),
        ("1-D embeddings", I, lambda: v1.upsert(["a"], np.ones(8))),
        ("3-D embeddings", I, lambda: v1.upsert(["a"], np.ones((1, 1, 8)))),
        ("NaN", I, lambda: v1.upsert(["a", "b"], np.vstack([good[0], np.full(8, np.nan)]))),
        ("inf", I, lambda: v1.upsert(["a"], np.full((1, 8), np.inf))),
        ("-inf", I, lambda: v1.upsert(["a"], np.full((1, 8), -np.inf))),
        ("too large for float32", I, lambda: v1.upsert(["a"], np.full((1, 8), 1e300))),
        ("too large for float16", I, lambda: half.upsert(["a"], [[1, 2, 3, 70000]])),
        ("non-numeric strings", I, lambda: v1.upsert(["a"], [["x"] * 8])),
        ("ragged lists", I, lambda: v1.upsert(["a", "b"], [[1.0] * 8, [1.0] * 7])),
        ("None embeddings", I, lambda: v1.upsert(["a"], None)),
        ("a string as embeddings", I, lambda: v1.upsert(["a"], "12345678")),
        ("complex numbers", I, lambda: v1.upsert(["a"], np.ones((1, 8), dtype=complex))),
        ("zero vector in a cosine space", I, lambda: v1.upsert(["a"], np.zeros((1, 8)))),
        # upsert: ids and batch shape
        ("empty batch", I, lambda: v1.upsert([], np.zeros((0, 8)))),
        ("duplicate ids", I, lambda: v1.upsert(["a", "a"], good)),
        ("empty id", I, lambda: v1.upsert(["a", ""], good)),
        ("513-byte id", I, lambda: v1.upsert(["a", "x" * 513], good)),
        ("513-byte id in 3-byte characters", I, lambda: v1.upsert(["\u20ac" * 171], good[:1])),
        ("lone surrogate id", I, lambda: v1.upsert(["\ud800"], good[:1])),
        ("non-str id", I, lambda: v1.upsert(["a", 2], good)),
        ("ids not a list", I, lambda: v1.upsert(5, good[:1])),
        ("more ids than embeddings", I, lambda: v1.upsert(["a", "b", "c"], good)),
        ("fewer ids than embeddings", I, lambda: v1.upsert(["a"], good)),
        # upsert: metadata
        ("metadatas too short", I, lambda: v1.upsert(["a", "b"], good, metadatas=[{"g": 1}])),
        ("a single dict as metadatas", I, lambda: v1.upsert(["a"], good[:1], metadatas={"g": 1})),
        ("metadata not a dict", I, lambda: v1.upsert(["a"], good[:1], metadatas=["g"])),
        ("metadata $-key", I, lambda: v1.upsert(["a"], good[:1], metadatas=[{"$g": 1}])),
        ("metadata empty key", I, lambda: v1.upsert(["a"], good[:1], metadatas=[{"": 1}])),
        ("metadata non-str key", I, lambda: v1.upsert(["a"], good[:1], metadatas=[{1: 1}])),
        ("metadata NaN", I, lambda: v1.upsert(["a"], good[:1], metadatas=[{"g": float("nan")}])),
        ("metadata set", I, lambda: v1.upsert(["a"], good[:1], metadatas=[{"g": {1}}])),
        ("metadata over 64 KiB", I, lambda: v1.upsert(["a"], good[:1], metadatas=[{"g": "x" * 70000}])),
        # names
        ("partition with braces", N, lambda: v1.upsert(["a"], good[:1], partition="{p1}")),
        ("partition with a glob", N, lambda: v1.upsert(["a"], good[:1], partition="p*")),
        ("partition with a slash", N, lambda: v1.upsert(["a"], good[:1], partition="p1/x")),
        ("partition with a colon", N, lambda: v1.upsert(["a"], good[:1], partition="p:1")),
        ("empty partition name", N, lambda: v1.upsert(["a"], good[:1], partition="")),
        ("65-character partition", N, lambda: v1.upsert(["a"], good[:1], partition="p" * 65)),
        ("space with braces", N, lambda: hub.create_space("a{b}", dim=2)),
        ("space with a glob", N, lambda: hub.create_space("a*", dim=2)),
        ("space with ?", N, lambda: hub.create_space("a?", dim=2)),
        ("space with brackets", N, lambda: hub.create_space("[ab]", dim=2)),
        ("space starting with a dot", N, lambda: hub.create_space(".hidden", dim=2)),
        ("look up a space with braces", N, lambda: hub.space("s}")),
        ("version with braces", N, lambda: space.create_version("v{1}")),
        ("version with a glob", N, lambda: space.create_version("v*")),
        ("alias with braces", N, lambda: space.set_alias("li{ve}", v1)),
        ("alias with a glob", N, lambda: space.set_alias("l*", v1)),
        ("version lookup with a glob", N, lambda: space.version("v*")),
        # space parameters
        ("space dim 0", I, lambda: hub.create_space("ok", dim=0)),
        ("space unknown metric", I, lambda: hub.create_space("ok", dim=2, metric="hamming")),
        ("space dtype float64", I, lambda: hub.create_space("ok", dim=2, dtype="float64")),
        ("space M 1", I, lambda: hub.create_space("ok", dim=2, M=1)),
        ("space ef 0", I, lambda: hub.create_space("ok", dim=2, ef=0)),
        ("space exists", AlreadyExists, lambda: hub.create_space("s", dim=8)),
        ("version exists", AlreadyExists, lambda: space.create_version("v1")),
        ("description not a str", I, lambda: space.create_version(description=3)),
        # unknown things
        ("unknown space", SpaceNotFound, lambda: hub.space("nope")),
        ("drop unknown space", SpaceNotFound, lambda: hub.drop_space("nope")),
        ("create version in a dropped space", F, lambda: gone.create_version()),
        ("unknown version", VersionNotFound, lambda: space.version("v9")),
        ("alias to unknown version", F, lambda: space.set_alias("live", "v9")),
        ("rollback unknown alias", F, lambda: space.rollback("canary")),
        ("rollback without history", VersionNotFound, lambda: space.rollback("live")),
        ("alias to another space's version", I, lambda: space.set_alias("live", half)),
        ("count unknown partition", PartitionNotFound, lambda: v1.count("p9")),
        ("get unknown partition", PartitionNotFound, lambda: v1.get(["i0"], partitions=["p9"])),
        ("delete in unknown partition", PartitionNotFound, lambda: v1.delete(["i0"], partition="p9")),
        ("query unknown partition", PartitionNotFound, lambda: v1.query(q, partitions=["p1", "p9"])),
        ("query_by_id unknown id", ItemNotFound, lambda: v1.query_by_id(["i0", "nope"])),
        # writes to a sealed version
        ("upsert sealed", S, lambda: sealed.upsert(["s1"], good[:1], partition="p1")),
        ("upsert sealed, new partition", S, lambda: sealed.upsert(["s1"], good[:1], partition="p7")),
        ("delete sealed", S, lambda: sealed.delete(["s0"])),
        ("delete sealed in partition", S, lambda: sealed.delete(["s0"], partition="p1")),
        # delete / get arguments
        ("delete empty ids", I, lambda: v1.delete([])),
        ("delete non-str id", I, lambda: v1.delete([3])),
        ("delete bad partition name", N, lambda: v1.delete(["i0"], partition="p{1}")),
        ("get bad include", I, lambda: v1.get(["i0"], include=("vectors",))),
        ("get empty ids", I, lambda: v1.get([])),
        # queries
        ("n_results 0", I, lambda: v1.query(q, n_results=0)),
        ("n_results negative", I, lambda: v1.query(q, n_results=-1)),
        ("n_results True", I, lambda: v1.query(q, n_results=True)),
        ("n_results 2.5", I, lambda: v1.query(q, n_results=2.5)),
        ("n_results above limit", I, lambda: v1.query(q, n_results=10_001)),
        ("query wrong dimension", D, lambda: v1.query(np.ones(7))),
        ("query NaN", I, lambda: v1.query(np.full(8, np.nan))),
        ("query zero vector, cosine", I, lambda: v1.query(np.zeros(8))),
        ("query empty", I, lambda: v1.query(np.zeros((0, 8)))),
        ("where not a dict", I, lambda: v1.query(q, where="g=1")),
        ("where unknown top-level operator", I, lambda: v1.query(q, where={"$nor": [{"g": 1}]})),
        ("where unknown operator", I, lambda: v1.query(q, where={"g": {"$regex": "x"}})),
        ("where empty $and", I, lambda: v1.query(q, where={"$and": []})),
        ("where $or not a list", I, lambda: v1.query(q, where={"$or": {"g": 1}})),
        ("where empty $in", I, lambda: v1.query(q, where={"g": {"$in": []}})),
        ("where $in not a list", I, lambda: v1.query(q, where={"g": {"$in": "x"}})),
        ("where $gt None", I, lambda: v1.query(q, where={"g": {"$gt": None}})),
        ("where $gt a list", I, lambda: v1.query(q, where={"g": {"$gt": [1]}})),
        ("where NaN operand", I, lambda: v1.query(q, where={"g": float("nan")})),
        ("where empty operator object", I, lambda: v1.query(q, where={"g": {}})),
        ("bad consistency", I, lambda: v1.query(q, consistency="linearizable")),
        ("consistency None", I, lambda: v1.query(q, consistency=None)),
        ("partitions empty list", I, lambda: v1.query(q, partitions=[])),
        ("partitions with braces", N, lambda: v1.query(q, partitions=["{p1}"])),
        ("partitions with a glob", N, lambda: v1.query(q, partitions=["p?"])),
        ("ef 0", I, lambda: v1.query(q, ef=0)),
        ("bad include", I, lambda: v1.query(q, include=("ids",))),
        ("query_by_id empty ids", I, lambda: v1.query_by_id([])),
        ("query_by_id n_results 0", I, lambda: v1.query_by_id(["i0"], n_results=0)),
        ("space.query bad consistency", I, lambda: space.query(q, consistency="linearizable")),
        # connect
        ("connect with an http URL", I, lambda: embcache.connect("http://127.0.0.1:1/0")),
        ("connect with cache_bytes 0", I, lambda: embcache.connect(any_redis_url, cache_bytes=0)),
    ]
    assert len({name for name, _, _ in cases}) == len(cases)
    before = db_snapshot(any_redis_url)
    wrong: list[str] = []
    for name, expected, call in cases:
        try:
            call()
        except embcache.EmbcacheError as exc:
            if type(exc) is not expected:
                wrong.append(f"{name}: raised {type(exc).__name__} ({exc}), expected {expected.__name__}")
        except Exception as exc:  # noqa: BLE001 - collected: every case must raise embcache's own type
            wrong.append(f"{name}: raised {type(exc).__name__} ({exc}), expected {expected.__name__}")
        else:
            wrong.append(f"{name}: did not raise, expected {expected.__name__}")
        assert_db_unchanged(before, db_snapshot(any_redis_url), name)
    assert not wrong, "\n".join(wrong)
    assert v1.count() == 40 and space.aliases() == {"live": "v1"}


# --- an id lives in one partition ------------------------------------------------------------------------

def _one_partition_setup(hub: embcache.Hub) -> tuple[embcache.Version, np.ndarray]:
    v = hub.create_space("one", dim=3, metric="l2").create_version()
    v.upsert(["a", "b"], [[1, 0, 0], [0, 1, 0]], partition="p1")
    v.upsert(["c"], [[0, 0, 1]], partition="p2")
    return v, np.eye(3, dtype=np.float32)


def test_an_id_moved_to_another_existing_partition_is_refused(hub: embcache.Hub, any_redis_url: str) -> None:
    v, e = _one_partition_setup(hub)
    before = db_snapshot(any_redis_url)
    with pytest.raises(InvalidInput) as info:
        v.upsert(["new", "a"], e[:2], partition="p2")
    assert type(info.value) is InvalidInput and "'a'" in str(info.value)
    assert_db_unchanged(before, db_snapshot(any_redis_url), "upsert of an id living in another partition")
    assert v.get(["a", "new"]).partitions == ["p1"]
    v.upsert(["a"], e[2:], partition="p1")  # same partition: a normal replace
    v.delete(["a"])
    v.upsert(["a"], e[:1], partition="p2")  # deleted first: may move
    assert v.get(["a"]).partitions == ["p2"] and v.count() == 3


def test_an_id_moved_to_a_new_partition_is_refused_and_changes_nothing(hub: embcache.Hub, any_redis_url: str) -> None:
    v, e = _one_partition_setup(hub)
    before = db_snapshot(any_redis_url)
    with pytest.raises(InvalidInput):
        v.upsert(["a"], e[:1], partition="p3")
    assert v.partitions() == ["p1", "p2"]
    assert_db_unchanged(before, db_snapshot(any_redis_url), "upsert of an id living in another partition")


def test_the_owners_map_checks_every_partition_in_one_call(hub: embcache.Hub, any_redis_url: str) -> None:
    """The id -> partition map makes an upsert's "lives elsewhere?" check cost the same however many partitions
    the version has; a stale claim (planted, or left by a delete) never refuses a write; a version without a
    complete map (from before maps existed) is still checked partition by partition."""
    v = hub.create_space("own", dim=3, metric="l2").create_version()
    e = np.eye(3, dtype=np.float32)
    for p in range(40):
        v.upsert([f"i{p}"], e[:1], partition=f"p{p}")
    raw = raw_client(any_redis_url)
    nodes = [redis.Redis.from_url(u) for u in node_urls(any_redis_url)]  # command statistics are per node
    owners = hub.keys.owners("own", v.name)
    assert raw.hget(owners, "i7") == b"p7" and raw.hget(owners, "") == b"complete"

    def commands(call: Callable[[], object]) -> int:
        """The lookups and writes ``call`` makes Redis run (the hub's refresher thread sends none of these)."""
        kinds = ("fcall", "hexists", "hmget", "hset", "zadd")

        def count() -> int:
            stats = [n.info("commandstats") for n in nodes]
            return sum(int(st.get(f"cmdstat_{c}", {}).get("calls", 0)) for st in stats for c in kinds)
        before = count()
        call()
        return count() - before

    few = commands(lambda: v.upsert(["n1"], e[:1], partition="p0"))
    many = commands(lambda: v.upsert(["n2", "n3"], e[:2], partition="p39"))
    assert few == many and few <= 8, (few, many)
    with pytest.raises(InvalidInput, match="'i3'.*partition 'p3'"):
        v.upsert(["i3"], e[:1], partition="p4")
    raw.hset(owners, "ghost", "p5")  # a claim with nothing behind it
    raw.hset(owners, "ghost2", "no such {name}")
    v.upsert(["ghost", "ghost2"], e[:2], partition="p6")
    assert raw.hget(owners, "ghost") == b"p6" and v.get(["ghost", "ghost2"]).partitions == ["p6", "p6"]
    v.delete(["i9"])
    assert raw.hget(owners, "i9") is None
    v.upsert(["i9"], e[:1], partition="p10")  # deleted first: may move
    raw.hdel(owners, "")  # as if the version predated the map: every partition is asked
    with pytest.raises(InvalidInput, match="'i3'.*partition 'p3'"):
        v.upsert(["i3"], e[:1], partition="p4")
    assert commands(lambda: v.upsert(["n4"], e[:1], partition="p0")) >= few + 38


# --- 2. consistency levels across two hubs (exact bases, no workers) --------------------------------------

def test_strong_sees_another_hubs_writes_and_session_sees_its_own(any_redis_url: str) -> None:
    # hub B never refreshes on its own (refresh_interval=0: no refresher thread at all, a stronger form of
    # "a large interval", and no follower): whatever it sees of A's writes comes from the strong read of the log
    # tail (tests/integration/test_follow.py covers what the follower adds)
    with embcache.connect(any_redis_url, refresh_interval=FAST) as a, \
            embcache.connect(any_redis_url, refresh_interval=0, follow=False) as b:
        va = a.create_space("c", dim=4, metric="l2").create_version()
        ids, x = _items(11, 50, 4)
        va.upsert(ids[:30], x[:30], metadatas=[{"k": 1}] * 30, partition="p")
        va.upsert(ids[30:], x[30:], metadatas=[{"k": 2}] * 20, partition="r")
        vb = b.space("c").version(va.name)
        q = np.array([[10.0, 10.0, 10.0, 10.0]], np.float32)  # far from every item
        for v in (va, vb):  # both hubs load their bases now
            assert v.query(q, n_results=1).ids[0][0] != "new"

        va.upsert(["new"], q, metadatas=[{"k": 1}], partition="p")
        assert vb.query(q, n_results=1, consistency="strong").ids == [["new"]]
        assert vb.query(q, n_results=1, consistency="strong", where={"k": 1}).ids == [["new"]]
        assert vb.query(q, n_results=1, consistency="strong", where={"k": 2}).ids[0][0] != "new"
        assert vb.query(q, n_results=1, consistency="strong", partitions=["r"]).ids[0][0] != "new"
        assert va.query(q, n_results=1, consistency="session").ids == [["new"]]
        assert va.query(q, n_results=1).ids == [["new"]]  # session is the default
        assert vb.query(q, n_results=1, consistency="eventual").ids[0][0] != "new"  # B's base is as loaded
        assert vb.query_by_id(["i0"], n_results=1, consistency="strong").ids == \
            va.query_by_id(["i0"], n_results=1).ids

        # a replaced vector: the new one counts at once
        va.upsert(["i0"], q + 0.5, partition="p")
        res = vb.query(q, n_results=2, consistency="strong")
        assert res.ids == [["new", "i0"]]
        np.testing.assert_allclose(res.distances[0], [0.0, 1.0])
        assert va.query(q, n_results=2).ids == [["new", "i0"]]

        # a new partition written after B loaded: B's strong query finds it
        va.upsert(["fresh"], q + 0.1, partition="late")
        assert vb.query(q, n_results=2, consistency="strong").ids == [["new", "fresh"]]

        # deletes are honoured the same way
        assert va.delete(["new", "fresh"]) == 2
        assert vb.query(q, n_results=1, consistency="strong").ids == [["i0"]]
        assert va.query(q, n_results=1, consistency="session").ids == [["i0"]]
        # the full answer equals the brute force over what is in Redis now
        live_ids = ids
        live_x = x.copy()
        live_x[0] = q[0] + 0.5
        for res in (vb.query(x[:5], n_results=10, consistency="strong"), va.query(x[:5], n_results=10)):
            assert_knn(res, brute_distances(x[:5], live_x, "l2"), live_ids, 10)


def test_session_overlay_matches_what_was_stored(any_redis_url: str) -> None:
    """What this hub's session overlay returns must be what Redis holds (and what strong returns)."""
    with embcache.connect(any_redis_url, refresh_interval=0) as a:
        v = a.create_space("so", dim=2, metric="l2").create_version()
        v.upsert(["x"], [[5.0, 5.0]], metadatas=[{"genre": "comedy", "tags": ["b"]}])
        v.query([0.0, 0.0], n_results=1)  # base loaded: the next write goes through the session overlay
        v.upsert(["y"], [[0.0, 0.0]], metadatas=[{"genre": "drama", "tags": ["a"]}])
        for c in ("session", "strong"):
            res = v.query([0.0, 0.0], n_results=1, where={"tags": "a"}, include=("metadatas",), consistency=c)
            assert res.ids == [["y"]] and res.metadatas == [[{"genre": "drama", "tags": ["a"]}]], c


@pytest.mark.parametrize("case", ["mutated after upsert", "tuple value"])
def test_session_overlay_holds_the_stored_metadata_not_the_callers_object(any_redis_url: str, case: str) -> None:
    # regression (fixed in 00c6072): the overlay held the caller's dicts, so later mutation or a tuple value
    # (stored as a JSON list) made session answers differ from what Redis holds
    with embcache.connect(any_redis_url, refresh_interval=0) as a:
        v = a.create_space("so", dim=2, metric="l2").create_version()
        v.upsert(["x"], [[5.0, 5.0]], metadatas=[{"genre": "comedy", "tags": ["b"]}])
        v.query([0.0, 0.0], n_results=1)  # base loaded: the next write goes through the session overlay
        meta = {"genre": "drama", "tags": ("a",) if case == "tuple value" else ["a"]}
        v.upsert(["y"], [[0.0, 0.0]], metadatas=[meta])
        if case == "mutated after upsert":
            meta["genre"] = "horror"
            meta["tags"].append("z")
        assert v.get(["y"]).metadatas == [{"genre": "drama", "tags": ["a"]}]
        answers = {}
        for c in ("session", "strong"):
            res = v.query([0.0, 0.0], n_results=1, where={"genre": "drama", "tags": "a"}, include=("metadatas",),
                          consistency=c)
            answers[c] = (res.ids, res.metadatas)
        assert answers["session"] == answers["strong"] == ([["y"]], [[{"genre": "drama", "tags": ["a"]}]])


def test_hub_close_is_prompt(redis_url: str) -> None:
    hub = embcache.connect(redis_url, refresh_interval=2.0)
    try:
        v = hub.create_space("cl", dim=2, metric="l2").create_version()
        v.upsert(["a"], [[1.0, 2.0]])
        v.query([1.0, 2.0], n_results=1)  # starts the refresher
        time.sleep(0.3)  # it is now waiting for a notification
    finally:
        t0 = time.monotonic()
        hub.close()
        took = time.monotonic() - t0
    assert took < 0.5, f"close() took {took:.2f}s"


# --- 7. durability of the embedded server ----------------------------------------------------------------

def test_acknowledged_writes_survive_sigkill_of_the_server(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "data", port=free_port(), appendfsync="always").start()
    try:
        acked: list[str] = []
        rng = np.random.default_rng(12)
        vectors: dict[str, np.ndarray] = {}
        with embcache.connect(server.url, refresh_interval=0) as hub:
            space = hub.create_space("dur", dim=8, metric="l2")
            v1 = space.create_version()
            v2 = space.create_version()
            space.set_alias("live", v1)
            space.set_alias("live", v2)
            ids, x = _items(13, 1500, 8)
            v1.upsert(ids, x, metadatas=[{"j": j} for j in range(1500)], partition="big")  # two chunks
            v1.delete(ids[:100])
            v1.seal()
            for i, row in zip(ids[100:], x[100:]):
                vectors[i] = row
            errors: list[BaseException] = []
            in_flight: list[str] = []
            stop = threading.Event()

            def write() -> None:
                n = 0
                while not stop.is_set():
                    batch = [f"w{n}-{k}" for k in range(5)]
                    vec = rng.standard_normal((5, 8)).astype(np.float32)
                    try:
                        v2.upsert(batch, vec, metadatas=[{"n": n}] * 5, partition=f"p{n % 3}")
                    except Exception as exc:  # noqa: BLE001 - the crash: stop writing
                        errors.append(exc)
                        in_flight.extend(batch)
                        return
                    acked.extend(batch)  # acknowledged: upsert returned
                    for b, row in zip(batch, vec):
                        vectors[b] = row
                    n += 1

            writer = threading.Thread(target=write)
            writer.start()
            deadline = time.monotonic() + 10
            while len(acked) < 200 and time.monotonic() < deadline:
                time.sleep(0.01)
            server.kill()  # SIGKILL while the writer is mid-stream
            # the call in flight may still return (written, only its dirty mark refused): keep writing until one
            # fails, so the test does not depend on where the kill fell
            deadline = time.monotonic() + 30
            while not errors and time.monotonic() < deadline:
                time.sleep(0.01)
            stop.set()
            writer.join(30)
            assert not writer.is_alive()
            # Unavailable: the call never reached Redis; Indeterminate: it was sent and no answer came (issue 15.3)
            assert errors and isinstance(errors[0], (Unavailable, Indeterminate)), errors
        assert len(acked) >= 200

        server.start()  # same directory, same port
        with embcache.connect(server.url, refresh_interval=0) as hub:
            space = hub.space("dur")
            assert [v.name for v in space.versions()] == ["v1", "v2"]
            assert space.aliases() == {"live": "v2"} and space.alias_history("live") == ["v1"]
            v1 = space.version("v1")
            assert v1.state == "sealed" and v1.count() == 1400
            got = v1.get(ids)
            assert got.ids == ids[100:]
            np.testing.assert_array_equal(got.embeddings, x[100:])
            assert got.metadatas == [{"j": j} for j in range(100, 1500)]
            v2 = space.version("v2")
            got = v2.get(acked)
            missing = sorted(set(acked) - set(got.ids))
            assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
            np.testing.assert_array_equal(got.embeddings, np.stack([vectors[i] for i in acked]))
            landed = len(v2.get(in_flight).ids)
            assert landed in (0, 5) and v2.count() == len(acked) + landed  # all or nothing
            if isinstance(errors[0], Unavailable):  # "nothing was written" must be true
                assert landed == 0, "an upsert that raised Unavailable was written"
            assert v2.query(vectors[acked[-1]], n_results=1, consistency="strong").ids == [[acked[-1]]]
    finally:
        server.stop()


def test_ensure_embedded_reuses_a_running_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBCACHE_REDIS_SERVER", raising=False)
    home = tmp_path / "home"
    url = ensure_embedded(home)
    try:
        state = json.loads((home / "server.json").read_text())
        pid = int((home / "redis.pid").read_text())
        assert state["pid"] == pid
        password = embcache.redis.server.embedded_password(url)
        assert password == (home / "operator.password").read_text().strip()
        with redis.Redis.from_url(url, password=password, decode_responses=True) as r:
            assert r.config_get("appendonly") == {"appendonly": "yes"}
            assert url.startswith("unix://") and r.config_get("port") == {"port": "0"}
            r.set("marker", "1")
        assert ensure_embedded(home) == url  # reused: same URL ...
        assert ensure_embedded(str(home)) == url
        assert int((home / "redis.pid").read_text()) == pid  # ... and the same process
        with redis.Redis.from_url(url, password=password, decode_responses=True) as r:
            assert r.get("marker") == "1"
        with embcache.connect(url, refresh_interval=0) as hub:  # the owner's URL gets the operator password
            hub.create_space("e", dim=2).create_version().upsert(["a"], [[1.0, 0.0]])
    finally:
        embcache.redis.server.stop_embedded(home)


def test_find_redis_server_without_any_binary_raises_server_error_with_the_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EMBCACHE_REDIS_SERVER", raising=False)
    monkeypatch.setattr(embcache.redis.server.shutil, "which", lambda name: None)
    monkeypatch.setattr(embcache.redis.server.os, "access", lambda path, mode: False)
    with pytest.raises(ServerError, match="apt-get install"):
        find_redis_server()


@pytest.mark.parametrize("call", ["find_redis_server", "ensure_embedded"])
def test_a_missing_binary_raises_server_error_with_the_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    monkeypatch.setenv("EMBCACHE_REDIS_SERVER", str(tmp_path / "nonexistent" / "redis-server"))
    with pytest.raises(ServerError, match="install"):
        if call == "find_redis_server":
            find_redis_server()
        else:
            ensure_embedded(tmp_path / "home")
    assert not (tmp_path / "home" / "url").exists()



def test_sealed_errors_name_the_version_and_what_to_do(redis_url: str) -> None:
    with embcache.connect(redis_url, refresh_interval=0) as hub:
        v = hub.create_space("sealname", dim=2, metric="l2").create_version()
        v.upsert(["a"], [[1.0, 0.0]])
        v.seal()
        for call in (lambda: v.upsert(["b"], [[0.0, 1.0]]), lambda: v.delete(["a"])):
            with pytest.raises(embcache.VersionSealed, match="sealname/v1 is sealed.*new version"):
                call()
        stale = hub.space("sealname").versions()[0]  # a Version object made before it knew: the function refuses
        stale.state = "open"
        with pytest.raises(embcache.VersionSealed, match="sealname/v1"):
            stale.upsert(["c"], [[0.0, 1.0]])
