"""Query routes (client/queries.py): the common single query over a remembered base must answer exactly as the
general plan does, and must never serve once anything it depends on changed (this hub's writes, another hub's
writes followed, a new partition, a new snapshot, grants). Snapshots and the version graph are built in this
process with the workers' own build functions, on a real redis-server."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import embcache
from embcache.client.cache import exact_base
from embcache.core.errors import DimensionMismatch, InvalidInput, ItemNotFound, PartitionNotFound, PermissionDenied
from embcache.redis.catalogue import Catalogue
from tests.datasets import MiniLMSubset
from tests.workers_fixtures import wait_for
from workers import build as wbuild
from workers.vgraph import build_version_graph

N = 1500
N_NEW = N + 10
PARTS = {"a": slice(0, 700), "b": slice(700, 1400), "c": slice(1400, N)}


def _build_all(hub: embcache.Hub, space: str, version: str) -> None:
    record = Catalogue(hub.store).get_space(space)
    for p in hub.space(space).version(version).partitions():
        wbuild.build_snapshot(hub.store, record, version, p)
    build_version_graph(hub.store, record, version)
    hub.cache.refresh()


@pytest.fixture
def routed(redis_url: str, hubs: Callable[..., embcache.Hub], minilm_subset: MiniLMSubset):  # noqa: ANN201
    ds = minilm_subset
    hub = hubs(redis_url, refresh_interval=3600)
    v = hub.create_space("rt", dim=384, metric="cosine").create_version()
    for p, rows in PARTS.items():
        v.upsert(ds.ids[rows], ds.base[rows], partition=p)
    _build_all(hub, "rt", v.name)
    return hub, v


def _err(call: Callable[[], Any]) -> Any:
    """``("ok", ids)`` or ``("raise", the error's class name)``."""
    try:
        return ("ok", call().ids)
    except Exception as exc:  # noqa: BLE001
        return ("raise", type(exc).__name__)


def _general(v: Any, call: Callable[[], Any]) -> Any:
    """``call``'s answer with no route (the general plan's), leaving the routes as they were."""
    saved = dict(v._routes)
    v._routes.clear()
    try:
        return call()
    finally:
        v._routes.clear()
        v._routes.update(saved)


def _no_general_plan(v: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: Any, **_kw: Any) -> Any:
        raise AssertionError("the general plan ran where a route should answer")

    monkeypatch.setattr(v, "_search", refuse)


@pytest.mark.parametrize("partitions", [None, ["a"], ["c"]])
@pytest.mark.parametrize("level", ["eventual", "session"])
def test_a_route_answers_as_the_general_plan(routed, minilm_subset: MiniLMSubset, monkeypatch: pytest.MonkeyPatch,
                                             partitions: list[str] | None, level: str) -> None:  # noqa: ANN001
    hub, v = routed
    ds = minilm_subset
    queries = ds.queries[:30] * np.float32(3.0)  # not unit length: the route must scale cosine queries too
    general = [_general(v, lambda q=q: v.query(q, 10, partitions=partitions, consistency=level)) for q in queries]
    by_id = [_general(v, lambda i=i: v.query_by_id([i], 7, partitions=partitions, consistency=level))
             for i in ds.ids[690:710]]
    v.query(queries[0], 10, partitions=partitions, consistency=level)  # the general plan, then the route is kept
    assert len(v._routes) == 1
    _no_general_plan(v, monkeypatch)
    for q, want in zip(queries, general):
        for shape in (q, q[None, :]):  # one vector, or a batch of one
            got = v.query(shape, 10, partitions=partitions, consistency=level)
            assert got.ids == want.ids
            np.testing.assert_allclose(got.distances, want.distances, rtol=0, atol=2e-6)
            assert got.distances.shape == (1, 10) and got.distances.dtype == np.float32 and got.metric == "cosine"
    batch = v.query(queries, 10, partitions=partitions, consistency=level)  # a batch takes the same route
    assert batch.ids == [w.ids[0] for w in general]
    np.testing.assert_allclose(batch.distances, np.concatenate([w.distances for w in general]), rtol=0, atol=2e-6)
    assert batch.distances.shape == (30, 10) and batch.distances.dtype == np.float32
    monkeypatch.undo()  # query_by_id over some partitions takes the plan (their route is not the whole version)
    strided = v.query(np.asfortranarray(queries), 10, partitions=partitions, consistency=level)  # the plan's
    assert strided.ids == batch.ids
    if partitions is None:
        _no_general_plan(v, monkeypatch)
    for i, want in zip(ds.ids[690:710], by_id):
        got = v.query_by_id([i], 7, partitions=partitions, consistency=level)
        assert got.ids == want.ids and i not in got.ids[0] and len(got.ids[0]) == 7
        np.testing.assert_array_equal(got.distances, want.distances)


@pytest.mark.parametrize("partitions", [None, ["b"]])
def test_a_route_over_followed_changes_answers_as_the_general_plan(
        routed, redis_url: str, hubs: Callable[..., embcache.Hub], minilm_subset: MiniLMSubset,
        monkeypatch: pytest.MonkeyPatch, partitions: list[str] | None) -> None:  # noqa: ANN001
    """Writes another hub made after the snapshots, followed into this hub's overlay: new items, replaced items
    (moved vectors) and deleted items, searched with the base over the route as the plan searches them."""
    hub, v = routed
    ds = minilm_subset
    other = hubs(redis_url).space("rt").version(v.name)
    v.query(ds.queries[0], 1, partitions=partitions, consistency="eventual")  # bases loaded, hence followed
    fresh = ds.base[N:N + 60]
    other.upsert([f"new{i}" for i in range(60)], fresh, partition="b")
    replaced = ds.ids[700:720]  # items of b, given the vectors of other items
    other.upsert(replaced, ds.base[N + 60:N + 80], partition="b")
    deleted = ds.ids[720:740]
    other.delete(deleted, partition="b")
    pid = ("rt", v.name, "b")
    wait_for(lambda: (view := hub.cache.follower.view(pid)) is not None and view.n == 100, 10,
             what="the follower's overlay")  # all three writes read (60 new, 20 replaced, 20 deleted rows)
    queries = np.concatenate([ds.queries[:20], fresh[:5], ds.base[N + 60:N + 65]])
    general = [_general(v, lambda q=q: v.query(q, 10, partitions=partitions, consistency="eventual"))
               for q in queries]
    probes = [*ds.ids[740:750], *ds.ids[:5]]  # unchanged items (of b, and of a when all partitions are searched)
    by_id = {i: _general(v, lambda i=i: v.query_by_id([i], 6, partitions=partitions, consistency="eventual"))
             for i in probes}
    v.query(queries[0], 10, partitions=partitions, consistency="eventual")  # the plan; the route is kept
    (route,) = v._routes.values()
    assert route.tails  # the followed changes travel with the route
    _no_general_plan(v, monkeypatch)
    for q, want in zip(queries, general):
        got = v.query(q, 10, partitions=partitions, consistency="eventual")
        assert got.ids == want.ids
        np.testing.assert_allclose(got.distances, want.distances, rtol=0, atol=2e-6)
        assert not set(got.ids[0]) & set(deleted)
    batch = v.query(queries, 10, partitions=partitions, consistency="eventual")
    assert batch.ids == [w.ids[0] for w in general]
    np.testing.assert_allclose(batch.distances, np.concatenate([w.distances for w in general]), rtol=0, atol=2e-6)
    assert any(i.startswith("new") for q in fresh[:5] for i in v.query(q, 3, partitions=partitions,
                                                                       consistency="eventual").ids[0])
    monkeypatch.undo()  # query_by_id over some partitions takes the plan (their route is not the whole version)
    if partitions is None:
        _no_general_plan(v, monkeypatch)
    for i, want in by_id.items():
        got = v.query_by_id([i], 6, partitions=partitions, consistency="eventual")
        assert got.ids == want.ids and i not in got.ids[0]
        np.testing.assert_array_equal(got.distances, want.distances)


def test_a_route_never_hides_this_hubs_writes(routed, redis_url: str, hubs: Callable[..., embcache.Hub],
                                             minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    _, built = routed
    ds = minilm_subset
    hub = hubs(redis_url, refresh_interval=3600, follow=False)  # no follower: only the session writes tell
    v = hub.space("rt").version(built.name)
    q = ds.queries[0]
    top = v.query(q, 3).ids[0]
    v.query(q, 3)  # over the route
    v.upsert(["mine"], q[None, :], partition="b")
    assert v.query(q, 3).ids[0] == ["mine", *top[:2]]  # session: at once
    v.delete(["mine"], partition="b")
    assert v.query(q, 3).ids[0] == top
    v.delete([top[0]], partition=next(p for p, rows in PARTS.items() if top[0] in ds.ids[rows]))
    assert v.query(q, 3).ids[0][:2] == top[1:]
    assert top[0] not in v.query(q, 10).ids[0]
    assert top[0] in v.query(q, 3, consistency="eventual").ids[0]  # eventual: the snapshot, as before


def test_a_route_checks_the_base_it_finds(routed, minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    """A base replaced in the cache by one that cannot be routed (an exact base: the partition's snapshot is gone)
    is answered by the general plan, even where nothing else changed. (Two things see to it: the cache's generation
    and the exact base's refusal of a graph search; this test fails only when both are gone.)"""
    hub, v = routed
    ds = minilm_subset
    q = ds.queries[2]
    want = v.query(q, 5, partitions=["a"], consistency="eventual")
    v.query(q, 5, partitions=["a"], consistency="eventual")  # over the route
    pid = ("rt", v.name, "a")
    info = hub.cache._bases[pid][1]
    hub.cache._put(pid, exact_base(hub.store.read_partition(hub.cache.keys(pid)), info), info)
    got = v.query(q, 5, partitions=["a"], consistency="eventual")
    assert got.ids == want.ids  # the same items, now by brute force
    assert "exact" in v.explain(q, 5, partitions=["a"], consistency="eventual").plan


def test_a_route_never_hides_what_the_follower_read(routed, redis_url: str, hubs: Callable[..., embcache.Hub],
                                                    minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    hub, v = routed
    ds = minilm_subset
    other = hubs(redis_url).space("rt").version(v.name)
    q = ds.queries[5]

    def check(level: str, partitions: list[str] | None) -> None:
        def top() -> list[str]:
            return v.query(q, 2, partitions=partitions, consistency=level).ids[0]

        before = top()
        top()  # over the route
        new = f"theirs-{level}-{partitions}"
        other.upsert([new], q[None, :], partition="a")
        wait_for(lambda: top() == [new, before[0]], 10, what=f"another hub's write at {level} over {partitions}")
        other.delete([new], partition="a")
        wait_for(lambda: top() == before, 10, what=f"another hub's delete at {level} over {partitions}")

    for level in ("eventual", "session"):
        for partitions in (None, ["a"]):
            check(level, partitions)


def test_a_route_never_hides_a_new_partition_or_snapshot(redis_url: str, hubs: Callable[..., embcache.Hub],
                                                          minilm_subset: MiniLMSubset) -> None:
    ds = minilm_subset
    hub = hubs(redis_url, refresh_interval=0.2)
    v = hub.create_space("rt2", dim=384, metric="cosine").create_version()
    v.upsert(ds.ids[:600], ds.base[:600], partition="a")
    _build_all(hub, "rt2", v.name)
    q = ds.queries[7]
    v.query(q, 1, consistency="eventual")
    v.query(q, 1, consistency="eventual")  # over the route of the one partition
    other = hubs(redis_url).space("rt2").version(v.name)
    other.upsert(["elsewhere"], q[None, :], partition="z")
    wait_for(lambda: v.query(q, 1, consistency="eventual").ids[0] == ["elsewhere"], 10,
             what="a partition another hub created")
    other.delete(["elsewhere"], partition="z")
    other.upsert(["rebuilt"], q[None, :], partition="a")
    _build_all(hub, "rt2", v.name)  # a new snapshot (and graph) replaces the routed bases
    for level in ("eventual", "session"):
        assert v.query(q, 1, consistency=level).ids[0] == ["rebuilt"]
        assert v.query(q, 1, consistency=level).ids[0] == ["rebuilt"]


def test_bad_input_is_refused_with_a_route_kept(routed, minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    hub, v = routed
    ds = minilm_subset
    q = ds.queries[0]
    for parts in (None, ["a"]):
        v.query(q, 5, partitions=parts)
        v.query_by_id([ds.ids[0]], 5, partitions=parts)
    assert v._routes
    nan, inf, zero = q.copy(), q.copy(), np.zeros_like(q)
    nan[3], inf[4] = np.nan, np.inf
    for bad in (nan, inf, zero, nan[None, :], np.stack([q, nan, q]), np.stack([q, zero]), np.stack([inf, q])):
        with pytest.raises(InvalidInput):
            v.query(bad, 5)
    with pytest.raises(DimensionMismatch):
        v.query(q[:100], 5)
    with pytest.raises(InvalidInput):
        v.query(np.stack([q, q])[None], 5)  # 3-D
    for k in (0, -1, True, "5", 10_001):
        with pytest.raises(InvalidInput):
            v.query(q, k)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            v.query_by_id([ds.ids[0]], k)  # type: ignore[arg-type]
    with pytest.raises(PartitionNotFound):
        v.query(q, 5, partitions=["nope"])
    with pytest.raises(InvalidInput):
        v.query(q, 5, partitions=[["a"]])  # type: ignore[list-item]
    with pytest.raises(ItemNotFound):
        v.query_by_id(["no-such-id"], 5, partitions=["a"])
    with pytest.raises(InvalidInput):
        v.query_by_id([], 5)
    assert v.query(q, 5, partitions="a").ids == v.query(q, 5, partitions=["a"]).ids  # a name, not its letters
    assert v.query(q.astype(np.float64), 5).ids == v.query(q, 5).ids  # other dtypes: the general plan
    big = v.query(q, N + 5)  # more than the route's base holds: padded by the general plan
    assert len(big.ids[0]) == N and np.isinf(big.distances[0, N:]).all()
    assert v.query_by_id([ds.ids[0]], 5, partitions=["b"]).ids[0]  # an item of another partition, searched in b


def test_a_partition_limited_principal_is_routed_within_its_grant(routed, redis_url: str,
                                                                  minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    hub, v = routed
    ds = minilm_subset
    creds = hub.grant("only-a", space="rt", role="reader", partitions=["a"])
    allowed = set(ds.ids[PARTS["a"]])
    with embcache.connect(redis_url, username=creds.username, password=creds.password, refresh_interval=3600) as lim:
        lv = lim.space("rt").version(v.name)
        for _ in range(3):  # the general plan, then the route
            for q in ds.queries[:10]:
                assert set(lv.query(q, 10, consistency="eventual").ids[0]) <= allowed
            for parts in (["b"], ["a", "b"]):
                with pytest.raises(PermissionDenied):
                    lv.query(ds.queries[0], 10, partitions=parts, consistency="eventual")
        assert lim.cache.cached_graph("rt", v.name) is None


@pytest.mark.parametrize("partitions", [None, ["a"]])
def test_a_strong_route_answers_as_the_plan_and_misses_no_committed_write(
        routed, redis_url: str, hubs: Callable[..., embcache.Hub], minilm_subset: MiniLMSubset,
        monkeypatch: pytest.MonkeyPatch, partitions: list[str] | None) -> None:  # noqa: ANN001
    """At strong a route sends the probe, searches, and keeps its answer only when the logs are where its base and
    views stand: a write another hub committed a moment ago (not followed yet) or a partition it created sends the
    query to the plan, which reads the tail."""
    hub, v = routed
    ds = minilm_subset
    queries = ds.queries[:15]
    general = [_general(v, lambda q=q: v.query(q, 10, partitions=partitions, consistency="strong")) for q in queries]
    v.query(queries[0], 10, partitions=partitions, consistency="strong")
    assert (None if partitions is None else tuple(partitions), "strong") in v._routes
    with monkeypatch.context() as m:
        _no_general_plan(v, m)
        for q, want in zip(queries, general):
            got = v.query(q, 10, partitions=partitions, consistency="strong")
            assert got.ids == want.ids
            np.testing.assert_allclose(got.distances, want.distances, rtol=0, atol=2e-6)
    other = hubs(redis_url).space("rt").version(v.name)
    hub.cache.follower.close()  # nothing followed from here on: only the probe can tell
    q = queries[3]
    other.upsert(["committed"], q[None, :], partition="a")
    assert v.query(q, 1, partitions=partitions, consistency="strong").ids[0] == ["committed"]
    assert v.query(np.stack([queries[0], q]), 1, partitions=partitions, consistency="strong").ids[1] == ["committed"]
    other.delete(["committed"], partition="a")
    assert v.query(q, 1, partitions=partitions, consistency="strong").ids[0] != ["committed"]
    if partitions is None:
        other.upsert(["elsewhere"], q[None, :], partition="new")
        assert v.query(q, 1, consistency="strong").ids[0] == ["elsewhere"]


# found by a review of the routes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: {"a"}, lambda: frozenset({"a"}), lambda: (p for p in ["a"]),
                                  lambda: {"a": 1}, lambda: np.array(["a"]), lambda: iter(["a"])])
def test_partitions_of_other_types_are_refused_with_a_route_kept(routed, minilm_subset: MiniLMSubset,
                                                                 make: Callable[[], Any]) -> None:  # noqa: ANN001
    """A set, generator, iterator, dict or array of names is refused by the plan; a route kept for the same names
    as a list must not answer it."""
    hub, v = routed
    q = minilm_subset.queries[0]
    assert _err(lambda: v.query(q, 5, partitions=make())) == ("raise", "InvalidInput")  # no route yet
    for level in ("session", "strong"):
        v.query(q, 5, partitions=["a"], consistency=level)
        v.query(q, 5, partitions=["a"], consistency=level)  # a route kept for ("a",)
        assert (("a",), level) in v._routes
        assert _err(lambda lv=level: v.query(q, 5, partitions=make(), consistency=lv)) == ("raise", "InvalidInput")
    assert _err(lambda: v.query_by_id([minilm_subset.ids[0]], 5, partitions=make())) == ("raise", "InvalidInput")


@pytest.fixture
def big(redis_url: str, hubs: Callable[..., embcache.Hub]):  # noqa: ANN201
    """10,050 items in one partition: a route could hold more than the 10,000 results a query may ask for."""
    rng = np.random.default_rng(0)
    n = 10_050
    hub = hubs(redis_url, refresh_interval=3600)
    v = hub.create_space("bigsp", dim=8, metric="l2").create_version()
    data = rng.standard_normal((n, 8)).astype(np.float32)
    ids = [f"i{j}" for j in range(n)]
    for s in range(0, n, 2000):
        v.upsert(ids[s:s + 2000], data[s:s + 2000], partition="a")
    _build_all(hub, "bigsp", v.name)
    return hub, v, data, ids


def test_n_results_above_the_limit_is_refused_with_a_route_kept(big) -> None:  # noqa: ANN001
    hub, v, data, ids = big
    q = data[0] + np.float32(0.01)
    assert _err(lambda: v.query(q, 10_001)) == ("raise", "InvalidInput")  # the plan refuses
    v.query(q, 5)
    v.query(q, 5)
    v.query_by_id([ids[0]], 5)
    v.query_by_id([ids[0]], 5)
    assert v._routes
    assert _err(lambda: v.query(q, 10_001)) == ("raise", "InvalidInput")
    assert _err(lambda: v.query_by_id([ids[0]], 10_001)) == ("raise", "InvalidInput")
    assert len(v.query(q, 10_000).ids[0]) == 10_000  # the limit itself is allowed
    assert len(v.query_by_id([ids[0]], 10_000).ids[0]) == 10_000


def test_a_route_built_during_this_hubs_write_does_not_hide_it(routed, redis_url: str,
                                                                hubs: Callable[..., embcache.Hub],
                                                                minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    """A route reads SessionWrites.stamp, then asks quiet(): the stamp must move after a write is stored, not
    before (it moved first). The window is widened (a dict whose setdefault sleeps) and a route built in it."""
    _, built = routed
    ds = minilm_subset
    hub = hubs(redis_url, refresh_interval=3600, follow=False)  # no follower: only the session writes tell
    v = hub.space("rt").version(built.name)
    q = ds.queries[0]
    v.query(q, 3, partitions=["a"], consistency="session")
    entered = threading.Event()

    class Slow(dict):  # type: ignore[type-arg]
        def setdefault(self, *a: Any) -> Any:
            entered.set()
            time.sleep(0.5)
            return super().setdefault(*a)

    hub.session._writes = Slow(hub.session._writes)
    v._routes.clear()
    writer = threading.Thread(target=lambda: v.upsert(["mine"], q[None, :], partition="a"))
    writer.start()
    assert entered.wait(10)
    v.query(q, 3, partitions=["a"], consistency="session")  # the plan, then a route built mid-write
    writer.join()
    got = v.query(q, 3, partitions=["a"], consistency="session")  # after the upsert returned
    want = _general(v, lambda: v.query(q, 3, partitions=["a"], consistency="session"))
    assert want.ids[0][0] == "mine" and got.ids == want.ids


def test_a_route_built_while_a_base_is_replaced_is_not_used_for_the_new_one(routed,
                                                                            minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    """PartitionCache stores a base between two bumps of its generation; a route reads the generation, then the
    base (no lock). A route built in between must not serve the new base (with one bump before the store,
    query_by_id over such a route met an exact base and raised AttributeError). Two checks see to it now: the
    bump after the store, and the route's look at whether the base it finds has a graph."""
    hub, v = routed
    ds = minilm_subset
    q, x = ds.queries[2], ds.ids[3]
    pid = ("rt", v.name, "a")
    v.query(q, 5, partitions=["a"], consistency="eventual")
    want = v.query_by_id([x], 5, partitions=["a"], consistency="eventual")
    info = hub.cache._bases[pid][1]
    exact = exact_base(hub.store.read_partition(hub.cache.keys(pid)), info)
    entered = threading.Event()

    class Slow(OrderedDict):  # type: ignore[type-arg]
        def __setitem__(self, key: Any, value: Any) -> None:
            if key == pid and value[0] is exact:
                entered.set()
                time.sleep(0.5)
            super().__setitem__(key, value)

    hub.cache._bases = Slow(hub.cache._bases)
    v._routes.clear()
    putter = threading.Thread(target=lambda: hub.cache._put(pid, exact, info))
    putter.start()
    assert entered.wait(10)
    v.query(q, 5, partitions=["a"], consistency="eventual")  # the plan, then a route built mid-store
    putter.join()
    assert _err(lambda: v.query_by_id([x], 5, partitions=["a"], consistency="eventual")) == ("ok", want.ids)


@pytest.mark.parametrize("follow", [False, True])
def test_query_by_id_takes_the_newest_loaded_vector_with_or_without_a_route(
        routed, redis_url: str, hubs: Callable[..., embcache.Hub], minilm_subset: MiniLMSubset,
        follow: bool) -> None:  # noqa: ANN001
    """The version graph lags a partition whose snapshot was rebuilt: the item's vector comes from the newer
    base, by the plan and over a route alike (the plan had taken the graph's, the route its own base's)."""
    _, built = routed
    ds = minilm_subset
    hub = hubs(redis_url, refresh_interval=3600, follow=follow)
    v = hub.space("rt").version(built.name)
    x = ds.ids[0]  # in partition a
    v.query(ds.queries[0], 3, consistency="eventual")  # loads the version graph
    v.query(ds.queries[0], 3, partitions=["a"], consistency="eventual")  # loads a's snapshot
    hubs(redis_url).space("rt").version(v.name).upsert([x], ds.base[N_NEW:N_NEW + 1], partition="a")  # x moves
    wbuild.build_snapshot(hub.store, Catalogue(hub.store).get_space("rt"), v.name, "a")  # a rebuilt, not the graph
    hub.cache.refresh()
    want = _general(v, lambda: v.query_by_id([x], 5, partitions=["a"], consistency="eventual"))
    v.query_by_id([x], 5, partitions=["a"], consistency="eventual")
    assert v.query_by_id([x], 5, partitions=["a"], consistency="eventual").ids == want.ids
    new_top = v.query(ds.base[N_NEW], 6, partitions=["a"], consistency="eventual").ids[0]
    assert want.ids[0] == [i for i in new_top if i != x][:5]  # the new vector's neighbours


@pytest.mark.parametrize("follow", [False, True])
def test_session_reads_see_own_writes_and_deletes_while_others_query(
        routed, redis_url: str, hubs: Callable[..., embcache.Hub], minilm_subset: MiniLMSubset,
        follow: bool) -> None:  # noqa: ANN001
    """Two threads query (routes kept and dropped all the time) while this hub upserts and deletes: a session read
    after each write sees it, and never the item just deleted (an older follower view did not hide an id that a
    newer row of it had deleted)."""
    _, built = routed
    ds = minilm_subset
    hub = hubs(redis_url, refresh_interval=0.3, follow=follow)
    v = hub.space("rt").version(built.name)
    stop = threading.Event()
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            try:
                q = ds.queries[int(rng.integers(0, 50))]
                level = ["eventual", "session"][int(rng.integers(0, 2))]
                v.query(q, 5, partitions=[None, ["a"], ["b"]][int(rng.integers(0, 3))], consistency=level)
                v.query_by_id([ds.ids[int(rng.integers(0, 1400))]], 3, consistency=level)
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    misses = []
    try:
        for j in range(60):
            q, part = ds.queries[j % 50], ["a", "b"][j % 2]
            v.upsert([f"mine{j}"], q[None, :], partition=part)
            for parts in (None, [part]):
                if v.query(q, 1, partitions=parts, consistency="session").ids[0] != [f"mine{j}"]:
                    misses.append((j, parts, "missed"))
            v.delete([f"mine{j}"], partition=part)
            for parts in (None, [part]):
                if v.query(q, 1, partitions=parts, consistency="session").ids[0] == [f"mine{j}"]:
                    misses.append((j, parts, "deleted but returned"))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    assert not misses, misses[:5]


def test_query_by_id_over_a_partition_route_defers_to_a_newer_version_graph(
        routed, redis_url: str, hubs: Callable[..., embcache.Hub], minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    """The reverse of the above: a's snapshot was loaded before a rebuild, the version graph after it. The plan
    takes the item's vector from the (newer) graph; a route over a's older snapshot must leave the call to it."""
    _, built = routed
    ds = minilm_subset
    hub = hubs(redis_url, refresh_interval=3600, follow=False)
    v = hub.space("rt").version(built.name)
    x = ds.ids[0]  # in partition a
    pid = ("rt", v.name, "a")
    v.query(ds.queries[0], 3, partitions=["a"], consistency="eventual")  # loads a's snapshot
    old, info = hub.cache._bases[pid]
    hubs(redis_url).space("rt").version(v.name).upsert([x], ds.base[N_NEW:N_NEW + 1], partition="a")  # x moves
    record = Catalogue(hub.store).get_space("rt")
    wbuild.build_snapshot(hub.store, record, v.name, "a")
    build_version_graph(hub.store, record, v.name)
    v.query(ds.queries[0], 3, consistency="eventual")  # loads the new version graph
    hub.cache._put(pid, old, info)  # a's snapshot as it was before the rebuild (the refresher would reload it)
    want = _general(v, lambda: v.query_by_id([x], 5, partitions=["a"], consistency="eventual"))
    v.query_by_id([x], 5, partitions=["a"], consistency="eventual")
    assert v.query_by_id([x], 5, partitions=["a"], consistency="eventual").ids == want.ids
    new_top = v.query(ds.base[N_NEW], 6, partitions=["a"], consistency="eventual").ids[0]
    assert want.ids[0] == [i for i in new_top if i != x][:5]  # the graph's (new) vector's neighbours in a


def test_space_queries_keep_their_routes_at_every_level(routed, minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    """Space.query resolves the default version afresh at strong: the same version keeps its Version object, and
    so its routes (a new object each call had kept none)."""
    hub, v = routed
    space = hub.space("rt")
    q = minilm_subset.queries[4]
    space.query(q, 5)
    default = hub.defaults["rt"]
    for level in ("eventual", "session", "strong"):
        want = space.query(q, 5, consistency=level)
        assert space.query(q, 5, consistency=level).ids == want.ids == v.query(q, 5, consistency=level).ids
        assert hub.defaults["rt"] is default and (None, level) in default._routes


# found by a second review ---------------------------------------------------------------------------------------
def test_an_id_moved_between_partitions_keeps_its_new_metadata_and_vector(routed, redis_url: str,
                                                                          hubs: Callable[..., embcache.Hub],
                                                                          minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    """X moves from a to b (a delete in a, an upsert in b) after the version graph: a query over every partition
    finds it through b's followed view, and its metadata and vector are b's, not a's delete row."""
    hub, v = routed
    ds = minilm_subset
    v.query(ds.queries[0], 3, consistency="eventual")  # the graph loaded, every partition followed
    other = hubs(redis_url).space("rt").version(v.name)
    x, new = ds.ids[0], ds.base[N_NEW]
    other.delete([x], partition="a")
    other.upsert([x], new[None, :], metadatas=[{"m": 1}], partition="b")
    for p in ("a", "b"):
        wait_for(lambda p=p: (view := hub.cache.follower.view(("rt", v.name, p))) is not None and x in view, 10,
                 what=f"the move in {p}'s view")
    res = v.query(new, 3, consistency="eventual", include=("metadatas", "embeddings"))
    assert res.ids[0][0] == x and res.metadatas is not None and res.metadatas[0][0] == {"m": 1}
    assert res.embeddings is not None
    np.testing.assert_allclose(res.embeddings[0][0], new / np.linalg.norm(new), atol=1e-5)


@pytest.mark.parametrize("level", ["eventual", "session"])
def test_query_by_id_after_an_id_moved_between_partitions(routed, redis_url: str,
                                                          hubs: Callable[..., embcache.Hub],
                                                          minilm_subset: MiniLMSubset, level: str) -> None:  # noqa: ANN001
    """X leaves a for b with a new vector (another hub's move, b's new snapshot loaded; or at session this hub's
    own upsert into b): query_by_id answers from X's new vector with or without a route (a route over a's
    snapshot had taken its stale one)."""
    _, built = routed
    ds = minilm_subset
    hub = hubs(redis_url, refresh_interval=3600, follow=False)
    v = hub.space("rt").version(built.name)
    x = ds.ids[0]
    v.query(ds.queries[0], 3, partitions=["a"], consistency=level)  # a's snapshot loaded
    other = hubs(redis_url).space("rt").version(v.name)
    other.delete([x], partition="a")
    if level == "session":
        v.upsert([x], ds.base[N_NEW:N_NEW + 1], partition="b")
    else:
        other.upsert([x], ds.base[N_NEW:N_NEW + 1], partition="b")
        wbuild.build_snapshot(hub.store, Catalogue(hub.store).get_space("rt"), v.name, "b")
        v.query(ds.queries[0], 3, partitions=["b"], consistency=level)  # b's new snapshot loaded
    for parts in (["a"], None):
        want = _general(v, lambda parts=parts: v.query_by_id([x], 5, partitions=parts, consistency=level))
        v.query_by_id([x], 5, partitions=parts, consistency=level)
        assert v.query_by_id([x], 5, partitions=parts, consistency=level).ids == want.ids


@pytest.mark.parametrize("level", ["eventual", "session"])
def test_a_large_k_with_one_hidden_id(big, level: str) -> None:  # noqa: ANN001
    """700 results, one id excluded (or replaced by this hub): a filtered walk that hides it (it had crashed)."""
    hub, v, data, ids = big
    q = data[0] + np.float32(0.01)
    plain = v.query(q, 700, consistency="eventual")
    drop = plain.ids[0][3]
    if level == "session":
        v.upsert([drop], data[1:2] * 50, partition="a")  # moved far away
        got = v.query(q, 700, consistency="session")
    else:
        got = v.query(q, 700, consistency="eventual", exclude=[drop])
    assert len(got.ids[0]) == 700 and drop not in got.ids[0]
    assert got.ids[0][:600] == [i for i in plain.ids[0] if i != drop][:600]
