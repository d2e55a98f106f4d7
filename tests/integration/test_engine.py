"""The query engine end to end: a worker-built version graph over several partitions (one of them tiny), every
plan's recall against exact brute force on real embeddings, consistency levels over the graph, a partition
added after load, a partition-limited principal served from its own partitions only, query_by_id without a
round trip, exclude."""

from __future__ import annotations

import numpy as np
import pytest
import redis

import embcache
from embcache.core.errors import NotFound, PermissionDenied
from embcache.core.vgraph import VersionBase
from embcache.redis import vgraph as vgraph_io
from tests.datasets import MiniLMSubset
from tests.workers_fixtures import brute_force, recall_at_k, wait_for

PARTS = ("p0", "p1", "p2", "p3")


def _layout(ds: MiniLMSubset) -> dict[str, np.ndarray]:
    rows = np.arange(len(ds.ids))
    out = {p: rows[rows % 4 == i] for i, p in enumerate(PARTS)}
    out["tiny"], out["p3"] = out["p3"][:3], out["p3"][3:]
    return out


@pytest.fixture
def built(redis_url, workers, hubs, minilm_subset: MiniLMSubset):  # noqa: ANN001, ANN201
    """The subset in five partitions (one of 3 items), built by a real worker, version graph published."""
    ds = minilm_subset
    hub = hubs(redis_url, refresh_interval=3600)
    v = hub.create_space("eng", dim=384, metric="cosine").create_version()
    layout = _layout(ds)
    for p, rows in layout.items():
        v.upsert([ds.ids[r] for r in rows], ds.base[rows], [ds.metadatas[r] for r in rows], partition=p)
    workers.start(redis_url)
    v.build(timeout=120)
    positions = {p: hub.store.position(hub.keys.partition("eng", v.name, p)) for p in layout}
    wait_for(lambda: (m := vgraph_io.read_manifest(hub.store.r, hub.keys, "eng", v.name)) is not None
             and m.parts == positions, 120, what="the version graph")
    hub.cache.refresh()
    return hub, v, layout


def _truth(ds: MiniLMSubset, rows: np.ndarray, k: int = 10, queries: np.ndarray | None = None) -> list[list[str]]:
    q = ds.queries if queries is None else queries
    top = brute_force(ds.base[rows], q, k)
    return [[ds.ids[rows[j]] for j in r] for r in top]


def test_every_plan_over_the_version_graph(built, minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    hub, v, layout = built
    ds = minilm_subset
    ex = v.explain(ds.queries[0], 10, consistency="eventual")
    assert "version graph" in ex.plan and ex.redis_round_trips == 0, ex.as_dict()
    assert isinstance(hub.cache.cached_graph("eng", v.name), VersionBase)
    res = v.query(ds.queries, 10, consistency="eventual")
    assert recall_at_k(res.ids, _truth(ds, np.arange(len(ds.ids)))) >= 0.95
    sections = np.array([m["section"] for m in ds.metadatas])
    small = "sound"
    few = next(s for s in sorted(set(sections)) if 0 < (sections == s).sum() < 10)
    for where, rows in [({"section": {"$ne": "libs"}}, np.flatnonzero(sections != "libs")),
                        ({"section": small}, np.flatnonzero(sections == small)),
                        ({"section": few}, np.flatnonzero(sections == few)),
                        ({"section": "no-such-section"}, np.zeros(0, np.int64))]:
        res = v.query(ds.queries, 10, where=where, consistency="eventual")
        assert all(len(r) == min(10, len(rows)) for r in res.ids), where  # never fewer when that many match
        if len(rows):
            assert recall_at_k(res.ids, _truth(ds, rows, min(10, len(rows)))) >= 0.95, where
            assert "version graph" in v.explain(ds.queries[0], 10, where=where, consistency="eventual").plan
    for names in (["tiny"], ["p0"], ["p1", "p2", "tiny"]):
        rows = np.concatenate([layout[p] for p in names])
        res = v.query(ds.queries, 10, partitions=names, consistency="eventual")
        assert all(set(r) <= {ds.ids[j] for j in rows} for r in res.ids)
        assert all(len(r) == min(10, len(rows)) for r in res.ids)
        assert recall_at_k(res.ids, _truth(ds, rows, min(10, len(rows)))) >= 0.95, names


def test_consistency_levels_over_the_version_graph(built, hubs, redis_url, minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    hub, v, layout = built
    ds = minilm_subset
    q = ds.queries[:5]
    before = v.query(q, 3, consistency="eventual")
    top = before.ids[0][0]
    replaced = before.ids[1][0]
    other = hubs(redis_url, refresh_interval=3600)
    ov = other.space("eng").version(v.name)
    ov.query(q, 3, consistency="eventual")  # loads the graph in the other hub too
    still = hubs(redis_url, refresh_interval=3600, follow=False)  # a hub that does not follow the logs
    sv = still.space("eng").version(v.name)
    sv.query(q, 3, consistency="eventual")
    v.delete([top])
    far = -ds.queries[1]  # the replaced item moves far away from query 1
    owner = next(p for p, rows in layout.items() if replaced in {ds.ids[r] for r in rows})
    v.upsert([replaced], far[None, :], partition=owner)
    v.upsert(["new-near-0"], ds.queries[0][None, :], partition="p2")
    v.upsert(["late-1"], ds.queries[2][None, :], partition="late")  # a partition added after load
    for res in (v.query(q, 3), v.query(q, 3, where={"section": {"$ne": "zzz"}}), ov.query(q, 3, consistency="strong")):
        assert res.ids[0][0] == "new-near-0" and top not in res.ids[0]
        assert replaced not in res.ids[1]
        assert res.ids[2][0] == "late-1"
    ex = v.explain(q, 3)
    assert "version graph" in ex.plan and ex.overlay_items >= 2, ex.as_dict()
    eventual = sv.query(q, 3, consistency="eventual")  # nothing of the other hub's writes, but no error either
    assert eventual.ids[0][0] != "new-near-0"

    def followed() -> bool:  # the following hub: the graph plus its partitions' followed overlays
        res = ov.query(q, 3, consistency="eventual")
        return res.ids[0][0] == "new-near-0" and top not in res.ids[0] and replaced not in res.ids[1]

    wait_for(followed, 10, 0.01, what="the other hub's follower")
    assert "version graph" in ov.explain(q, 3, consistency="eventual").plan
    assert v.query_by_id(["new-near-0"], 2).ids[0][0] != "new-near-0"
    with pytest.raises(NotFound):
        v.query_by_id([top], 2)


def test_partition_limited_principal_never_loads_other_partitions(built, redis_url,  # noqa: ANN001
                                                                  minilm_subset: MiniLMSubset) -> None:
    hub, v, layout = built
    ds = minilm_subset
    creds = hub.grant("p01", space="eng", role="reader", partitions=["p0", "p1"])
    with embcache.connect(redis_url, username=creds.username, password=creds.password, refresh_interval=3600) as lim:
        lv = lim.space("eng").version(v.name)
        res = lv.query(ds.queries, 10, consistency="eventual")
        allowed = {ds.ids[r] for p in ("p0", "p1") for r in layout[p]}
        assert all(set(r) <= allowed for r in res.ids)
        assert recall_at_k(res.ids, _truth(ds, np.concatenate([layout["p0"], layout["p1"]]))) >= 0.95
        assert lim.cache.cached_graph("eng", v.name) is None
        assert {pid[2] for pid in lim.cache._bases} == {"p0", "p1"}
        assert "version graph" not in lv.explain(ds.queries[0], 5).plan
        for level in ("session", "strong"):
            assert all(set(r) <= allowed for r in lv.query(ds.queries[:5], 10, consistency=level).ids)
    with redis.Redis.from_url(redis_url, username=creds.username, password=creds.password) as raw:
        with pytest.raises(redis.exceptions.NoPermissionError):
            raw.get(hub.keys.version_graph("eng", v.name))  # Redis itself refuses the graph to this principal
    with pytest.raises(PermissionDenied):
        vgraph_io.read_manifest(embcache.connect(redis_url, username=creds.username, password=creds.password,
                                                 refresh_interval=0).store.r, hub.keys, "eng", v.name)


def test_query_by_id_at_eventual_sends_nothing_to_redis(built, minilm_subset: MiniLMSubset,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    hub, v, _ = built
    ds = minilm_subset
    v.query(ds.queries[0], 1, consistency="eventual")  # bases loaded
    if hub.cache.follower is not None:  # its thread shares the client: stopped, so only queries are counted
        hub.cache.follower.close()
    r = hub.store.r
    sent: list[object] = []  # every command of this hub's client (workers share the server, so not INFO)
    real_execute, real_pipeline = r.execute_command, r.pipeline
    monkeypatch.setattr(r, "execute_command", lambda *a, **kw: sent.append(a) or real_execute(*a, **kw))
    monkeypatch.setattr(r, "pipeline", lambda *a, **kw: sent.append("pipeline") or real_pipeline(*a, **kw))
    res = v.query_by_id(ds.ids[:20], 5, consistency="eventual")
    res2 = v.query_by_id(ds.ids[:20], 5)  # session, nothing of this hub's own pending
    assert sent == []
    v.query_by_id(ds.ids[:1], 5, consistency="strong")  # strong reads the item and the log positions
    assert sent
    truth = _truth(ds, np.arange(len(ds.ids)), 6, ds.base[:20])
    assert recall_at_k(res.ids, [[i for i in t if i != own][:5] for t, own in zip(truth, ds.ids[:20])]) >= 0.95
    assert res.ids == res2.ids and all(own not in row for row, own in zip(res.ids, ds.ids[:20]))


def test_exclude(built, minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    hub, v, _ = built
    ds = minilm_subset
    q = ds.queries[:4]
    plain = v.query(q, 10, consistency="eventual")
    seen = [i for row in plain.ids for i in row[:5]]
    for where in (None, {"section": {"$ne": "zzz"}}):
        res = v.query(q, 10, consistency="eventual", exclude=seen, where=where)
        assert all(len(r) == 10 and not set(r) & set(seen) for r in res.ids)
    by_id = v.query_by_id(ds.ids[:2], 5, exclude=[ds.ids[1]], consistency="eventual")
    assert ds.ids[1] not in by_id.ids[0]
