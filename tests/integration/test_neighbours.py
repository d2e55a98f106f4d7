"""Neighbour lists end to end (issue 14.1): snapshots built by the workers' build function against a real Redis,
``query_by_id`` answered from the lists (explain says so) with recall checked against a brute force on real
embeddings (debian-minilm, MovieLens), merged with the overlay (new, replaced and deleted items), the fallbacks
to the graph, incremental builds, hostile lists in Redis, and the CLI option."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

import embcache
import embcache.aio
from embcache.core import snapshot
from embcache.core.errors import InvalidInput
from embcache.redis import snapshots
from tests.datasets import MiniLMSubset
from tests.workers_fixtures import recall_at_k
from workers.build import build_snapshot

W = 30  # the spaces' neighbours


def _build(hub: embcache.Hub, v: embcache.Version) -> None:
    record = hub.catalogue.get_space(v.space.name)
    for p in v.partitions():
        build_snapshot(hub.store, record, v.name, p)
    hub.cache.refresh()


def _exact(x: np.ndarray, ids: list[str], alive: np.ndarray, rows: list[int], k: int) -> list[list[str]]:
    """Brute-force cosine top-k of the items ``rows`` (themselves left out) among the ``alive`` ones."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn[rows] @ xn.T
    sims[:, ~alive] = -np.inf
    sims[np.arange(len(rows)), rows] = -np.inf
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in r] for r in top]


@pytest.fixture
def listed(redis_url: str, hubs, minilm_subset: MiniLMSubset):  # noqa: ANN001, ANN201
    hub = hubs(redis_url, refresh_interval=3600)
    v = hub.create_space("nb", dim=384, metric="cosine", neighbours=W).create_version()
    ds = minilm_subset
    v.upsert(ds.ids, ds.base, ds.metadatas)
    _build(hub, v)
    v.query_by_id(ds.ids[:1], 1)  # loaded
    return hub, v, ds


def test_recall_against_a_brute_force_and_no_round_trip(listed, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    hub, v, ds = listed
    rows = list(range(0, 5000, 25))
    asked = [ds.ids[r] for r in rows]
    r = hub.store.r
    sent: list[object] = []
    real_execute, real_pipeline = r.execute_command, r.pipeline
    monkeypatch.setattr(r, "execute_command", lambda *a, **kw: sent.append(a) or real_execute(*a, **kw))
    monkeypatch.setattr(r, "pipeline", lambda *a, **kw: sent.append("pipeline") or real_pipeline(*a, **kw))
    for level in ("eventual", "session"):
        res = v.query_by_id(asked, 10, consistency=level, include=("distances", "metadatas"))
        assert recall_at_k(res.ids, _exact(ds.base, ds.ids, np.ones(5000, bool), rows, 10)) >= 0.95
        assert all(len(row) == 10 and own not in row for row, own in zip(res.ids, asked))
        assert (np.diff(res.distances, axis=1) >= 0).all() and res.distances.shape == (len(rows), 10)
        assert res.metadatas is not None and res.metadatas[0][0] == ds.metadatas[ds.ids.index(res.ids[0][0])]
    assert sent == []
    ex = v.explain(ids=asked[:1], n_results=10, consistency="eventual")
    assert ex.plan.startswith("neighbour list on partition default"), ex.plan
    assert ex.result.ids == v.query_by_id(asked[:1], 10, consistency="eventual").ids  # type: ignore[attr-defined]
    # the graph answers the same question with the same distances (the lists' come from the same index)
    graph = v.query_by_id(asked[:20], 10, consistency="strong")
    assert recall_at_k(v.query_by_id(asked[:20], 10).ids, graph.ids) >= 0.95
    res = v.query_by_id(asked[:20], 10)
    common = [(i, j) for i in range(20) for j in range(10) if res.ids[i][j] in graph.ids[i]]
    for i, j in common:
        assert res.distances[i, j] == pytest.approx(graph.distances[i, graph.ids[i].index(res.ids[i][j])], abs=1e-5)


def test_the_overlay_new_replaced_and_deleted_items(listed) -> None:  # noqa: ANN001
    hub, v, ds = listed
    own = ds.ids[100]
    before = v.query_by_id([own], 10).ids[0]
    near = ds.base[100] + 0.01 * ds.base[101]  # nearer to item 100 than any stored item
    v.upsert(["fresh"], near[None, :])
    far_of = before[0]
    v.upsert([far_of], -ds.base[100][None, :])  # its nearest neighbour replaced by the opposite vector
    gone = before[1]
    v.delete([gone])
    v.upsert([ds.ids[4000]], ds.base[100][None, :] + 0.02 * ds.base[4000][None, :])  # a far item moved near
    ex = v.explain(ids=[own], n_results=10)
    assert ex.plan.startswith("neighbour list") and ex.overlay_items == 3, ex.as_dict()
    got = ex.result.ids[0]  # type: ignore[attr-defined]
    assert got[0] == "fresh" and ds.ids[4000] in got[:3]
    assert far_of not in got and gone not in got
    # the whole answer is the brute force over what the session sees
    x = np.vstack([ds.base, near[None, :]])
    ids = [*ds.ids, "fresh"]
    x[ds.ids.index(far_of)] = -ds.base[100]
    x[4000] = ds.base[100] + 0.02 * ds.base[4000]
    alive = np.ones(len(ids), bool)
    alive[ds.ids.index(gone)] = False
    assert recall_at_k([got], _exact(x, ids, alive, [100], 10)) >= 0.9
    # eventual sees none of it (the snapshot's answer); strong sees it all through the graph
    assert v.query_by_id([own], 10, consistency="eventual").ids[0] == before
    assert v.query_by_id([own], 10, consistency="strong").ids[0][0] == "fresh"
    # the item itself changed: its list is stale, the graph answers with its new vector
    v.upsert([own], ds.base[200][None, :])
    ex = v.explain(ids=[own], n_results=5)
    assert not ex.plan.startswith("neighbour list") and ds.ids[200] == ex.result.ids[0][0], ex.plan  # type: ignore
    v.delete([own])
    with pytest.raises(embcache.errors.NotFound):
        v.query_by_id([own], 5)
    # after a rebuild the lists hold the changes themselves
    _build(hub, v)
    ex = v.explain(ids=["fresh"], n_results=10)
    assert ex.plan.startswith("neighbour list") and ds.ids[4000] in ex.result.ids[0][:3]  # type: ignore


def test_fallbacks_to_the_graph(listed) -> None:  # noqa: ANN001
    hub, v, ds = listed
    own = ds.ids[7]
    sections = [m["section"] for m in ds.metadatas]

    def plan(**kw: object) -> str:
        return v.explain(ids=[own], **kw).plan  # type: ignore[arg-type]

    assert plan(n_results=W).startswith("neighbour list")
    assert plan(n_results=W + 1).startswith("graph")
    res = v.query_by_id([own], W + 1)
    assert len(res.ids[0]) == W + 1 and own not in res.ids[0]
    # a where filter that keeps enough of the list is answered from it, one that empties it by the graph
    listed_ids = v.query_by_id([own], W).ids[0]
    common = max(set(sections), key=lambda s: sum(ds.metadatas[ds.ids.index(i)]["section"] == s for i in listed_ids))
    for where in ({"section": common}, {"section": "no-such-section"}, {"section": {"$ne": common}}):
        ex = v.explain(ids=[own], n_results=3, where=where)
        rows = [j for j in range(5000) if j != 7 and ds.metadatas[j]["section"] == where["section"]] \
            if isinstance(where["section"], str) else [j for j in range(5000) if sections[j] != common]
        got = ex.result.ids[0]  # type: ignore[attr-defined]
        assert len(got) == min(3, len(rows)) and all(ds.ids.index(i) in rows for i in got), where
        alive = np.zeros(5000, bool)
        alive[rows] = True
        if rows:
            assert recall_at_k([got], _exact(ds.base, ds.ids, alive, [7], min(3, len(rows)))) >= 2 / 3, where
    n_common = sum(ds.metadatas[ds.ids.index(i)]["section"] == common for i in listed_ids)
    assert (plan(n_results=3, where={"section": common}).startswith("neighbour list")) == (n_common >= 3)
    assert not plan(n_results=3, where={"section": "no-such-section"}).startswith("neighbour list")
    # exclude: the rest of the list answers
    head = v.query_by_id([own], 12).ids[0]
    res = v.query_by_id([own], 10, exclude=head[:2])
    assert res.ids[0] == head[2:12]
    # partitions: the list covers the item's own partition only
    assert plan(n_results=5, partitions=["default"]).startswith("neighbour list")
    v.upsert(["other"], ds.base[7][None, :] * 1.0, partition="second")  # a twin in another partition
    _build(hub, v)
    ex = v.explain(ids=[own], n_results=5, consistency="eventual")
    assert not ex.plan.startswith("neighbour list") and ex.result.ids[0][0] == "other", ex.plan  # type: ignore
    assert plan(n_results=5, partitions=["default"]).startswith("neighbour list")
    ex = v.explain(ids=[own], n_results=5, partitions=["second"])
    assert ex.result.ids[0] == ["other"] and not ex.plan.startswith("neighbour list")  # type: ignore


def test_incremental_builds_keep_the_lists(redis_url: str, hubs, minilm_subset: MiniLMSubset) -> None:  # noqa: ANN001
    hub = hubs(redis_url, refresh_interval=3600)
    v = hub.create_space("inc", dim=384, metric="cosine", neighbours=W).create_version()
    ds = minilm_subset
    v.upsert(ds.ids[:4000], ds.base[:4000])
    _build(hub, v)
    rng = np.random.default_rng(1)
    x = ds.base.copy()
    alive = np.zeros(5000, bool)
    alive[:4000] = True
    deleted = [int(j) for j in rng.choice(4000, 150, replace=False)]
    moved = [j for j in rng.choice(4000, 300, replace=False).tolist() if j not in set(deleted)][:150]
    v.delete([ds.ids[j] for j in deleted])
    alive[deleted] = False
    x[moved] = ds.base[4000:4000 + len(moved)] + 0.01 * ds.base[moved]
    v.upsert([ds.ids[j] for j in moved], x[moved])
    v.upsert(ds.ids[4200:], ds.base[4200:])
    alive[4200:] = True
    record = hub.catalogue.get_space("inc")
    assert build_snapshot(hub.store, record, v.name, "default").kind == "incremental"
    hub.cache.refresh()
    live = np.flatnonzero(alive)
    sample = [int(j) for j in live[::17]]
    res = v.query_by_id([ds.ids[j] for j in sample], 10, consistency="eventual")
    assert recall_at_k(res.ids, _exact(x, ds.ids, alive, sample, 10)) >= 0.95
    assert not {ds.ids[j] for j in deleted} & {i for row in res.ids for i in row}
    plans = [v.explain(ids=[ds.ids[j]], n_results=10, consistency="eventual").plan for j in sample[:40]]
    assert sum(p.startswith("neighbour list") for p in plans) >= 36, plans


def test_movielens_similar_movies(redis_url: str, hubs) -> None:  # noqa: ANN001
    from embcache.demo import find_movielens
    from embcache.movielens import item_embeddings, load_ratings

    f = item_embeddings(load_ratings(find_movielens()), rank=32)
    hub = hubs(redis_url, refresh_interval=3600)
    v = hub.create_space("ml", dim=32, metric="cosine", neighbours=10).create_version()
    ids = [str(m) for m in f.movie_ids]
    v.upsert(ids, f.item_vectors)
    _build(hub, v)
    rows = list(range(0, len(ids), 7))
    res = v.query_by_id([ids[r] for r in rows], 10, consistency="eventual")
    assert recall_at_k(res.ids, _exact(f.item_vectors, ids, np.ones(len(ids), bool), rows, 10)) >= 0.95
    assert v.explain(ids=[ids[0]], n_results=10).plan.startswith("neighbour list")


def test_hostile_lists_in_redis_are_refused(listed) -> None:  # noqa: ANN001
    hub, v, ds = listed
    pk = hub.keys.partition("nb", v.name, "default")
    r = hub.store.r
    manifest = snapshot.Manifest.from_json(r.get(pk.snap))
    blob = b"".join(r.get(pk.chunk(manifest.sid, i)) for i in range(manifest.chunks))
    head = sum(manifest.sections[:4])
    rows = np.frombuffer(blob, "<i4", manifest.count * W, head).copy()
    rows[5] = 1 << 30  # a row far out of range
    blob = blob[:head] + rows.tobytes() + blob[head + 4 * rows.size:]
    forged = dataclasses.replace(manifest, generation=manifest.generation + 1, sid=f"{manifest.generation + 1}.bad",
                                 sha256=hashlib.sha256(blob).hexdigest()).sealed()
    chunks = [blob[i:i + snapshot.CHUNK_BYTES] for i in range(0, len(blob), snapshot.CHUNK_BYTES)]
    for i, c in enumerate(chunks):
        r.set(pk.chunk(forged.sid, i), c)
    r.set(pk.snap, forged.to_json())
    with pytest.raises(embcache.errors.SnapshotCorrupt, match="neighbour lists"):
        snapshots.load(r, pk, ef=64, dim=384, metric="cosine")
    seen = hub.cache.corrupt_seen
    hub.cache.refresh()
    assert hub.cache.corrupt_seen == seen + 1 and r.hexists(pk.state, "corrupt")
    res = v.query_by_id([ds.ids[5]], 10)  # still answered (the previous snapshot stays loaded)
    assert len(res.ids[0]) == 10 and ds.ids[5] not in res.ids[0]
    assert json.loads(r.get(pk.snap))["neighbours"] == W


def test_the_option_at_create_space_and_in_the_cli(redis_url: str, hubs, capsys: pytest.CaptureFixture[str],
                                                   ) -> None:  # noqa: ANN001
    from tests.integration.test_cli import cli, cli_json

    hub = hubs(redis_url)
    for bad in (-1, 101, 2.5):
        with pytest.raises(InvalidInput, match="neighbours"):
            hub.create_space("bad", dim=4, neighbours=bad)  # type: ignore[arg-type]
    assert "bad" not in hub.spaces()
    sp = hub.create_space("opt", dim=4, neighbours=12)
    assert sp.neighbours == 12 and hub.space("opt").record.neighbours == 12
    assert hub.create_space("opt", dim=4, neighbours=12, exist_ok=True).neighbours == 12
    with pytest.raises(embcache.errors.AlreadyExists, match="neighbours"):
        hub.create_space("opt", dim=4, neighbours=3, exist_ok=True)
    assert cli_json(capsys, redis_url, "create-space", "clio", "--dim", 4, "--neighbours", 20)["neighbours"] == 20
    assert cli_json(capsys, redis_url, "describe", "clio")["neighbours"] == 20
    code, out, _ = cli(capsys, redis_url, "describe", "clio")
    assert code == 0 and "neighbours=20" in out
    code, _, err = cli(capsys, redis_url, "create-space", "clio2", "--dim", 4, "--neighbours", 101)
    assert code != 0 and "neighbours" in err


def test_the_asyncio_client_answers_from_the_lists(listed, redis_url: str) -> None:  # noqa: ANN001
    import asyncio

    hub, v, ds = listed

    async def run() -> tuple[list[list[str]], str, list[list[str]]]:
        async with await embcache.aio.connect(redis_url, refresh_interval=3600) as ahub:
            av = await (await ahub.space("nb")).version(v.name)
            await av.query_by_id(ds.ids[:1], 1)  # loads the snapshot (in a thread)
            res = await av.query_by_id(ds.ids[:3], 10, consistency="eventual")
            ex = await av.explain(ids=ds.ids[:1], n_results=10, consistency="eventual")
            big = await av.query_by_id(ds.ids[:1], W + 5)  # past the lists: the graph
            return res.ids, ex.plan, big.ids

    ids, plan, big = asyncio.run(run())
    assert ids == v.query_by_id(ds.ids[:3], 10, consistency="eventual").ids
    assert plan.startswith("neighbour list") and len(big[0]) == W + 5
