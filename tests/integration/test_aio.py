"""The asyncio client against real Redis, and the FastAPI example under concurrent requests."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import redis.client
import redis.cluster

import embcache
import embcache.aio
from embcache.core.snapshot import HnswBase
from embcache.redis.probe import StrongProbe
from tests.workers_fixtures import brute_force

DIM = 16
# what the query plans hand to a thread (embcache.plan.Offload): the cache's snapshot loads
LOADS = {"PartitionCache.get", "PartitionCache.get_graph", "PartitionCache.reload", "PartitionCache.exact"}


def _data(n: int = 300, seed: int = 0) -> tuple[list[str], np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return [f"i{i}" for i in range(n)], x


def test_async_api_matches_the_sync_one(redis_url: str) -> None:
    ids, x = _data()

    async def main() -> None:
        async with await embcache.aio.connect(redis_url, refresh_interval=0.05) as hub:
            space = await hub.create_space("a", DIM, "l2")
            v = await space.create_version()
            assert await v.upsert(ids, x, metadatas=[{"g": i % 3} for i in range(len(ids))], partition="p1") == 300
            await v.upsert(["extra"], x[:1] + 0.001, partition="p2")
            assert await v.count() == 301 and await v.partitions() == ["p1", "p2"]
            got = await v.get(["i5", "nope", "i7"])
            assert got.ids == ["i5", "i7"] and np.array_equal(got.embeddings, x[[5, 7]])
            assert got.metadatas == [{"g": 2}, {"g": 1}]
            res = await v.query(x[:3], 5, consistency="strong")
            for q in range(3):
                want = brute_force(np.vstack([x, x[:1] + 0.001]), x[q : q + 1], 5, "l2")[0]
                assert res.ids[q] == [([*ids, "extra"])[j] for j in want]
            res = await v.query(x[0], 4, where={"g": 1}, partitions=["p1"])
            assert all(int(i[1:]) % 3 == 1 for i in res.ids[0])
            by_id = await v.query_by_id(["i0"], 2)
            nearest_other = ids[1 + int(np.argmin(((x[1:] - x[0]) ** 2).sum(1)))]
            assert by_id.ids == [["extra", nearest_other]]
            assert await v.delete(["extra", "i1"]) == 2
            assert "extra" not in (await v.query(x[0], 3)).ids[0]  # session: own delete seen at once
            assert sorted([i async for i in v.ids(partition="p1")]) == sorted(set(ids) - {"i1"})
            await space.set_alias("live", v)
            assert (await space.default_version()).name == v.name
            assert (await space.query(x[2], 1)).ids == [["i2"]]
            with pytest.raises(embcache.NotFound):
                await v.query_by_id(["nope"], 3)
            with pytest.raises(embcache.DimensionMismatch):
                await v.upsert(["z"], np.ones((1, DIM + 1)))
            await v.seal()
            with pytest.raises(embcache.VersionSealed):
                await v.upsert(["z"], np.ones((1, DIM)))

    asyncio.run(main())


def test_permission_denied_is_named_in_the_async_client(redis_url: str) -> None:
    async def main() -> None:
        async with await embcache.aio.connect(redis_url, refresh_interval=0.05) as hub:
            space = await hub.create_space("a", DIM, "l2")
            v = await space.create_version()
            await v.upsert(["x"], np.ones((1, DIM)))
            creds = await hub.grant("rd", space="a", role="reader")
        async with await embcache.aio.connect(redis_url, username=creds.username, password=creds.password,
                                              refresh_interval=0.05) as reader:
            rv = await (await reader.space("a")).version("v1")
            assert (await rv.query(np.ones(DIM), 1)).ids == [["x"]]
            with pytest.raises(embcache.PermissionDenied, match="upsert"):
                await rv.upsert(["y"], np.ones((1, DIM)))

    asyncio.run(main())


def test_snapshot_queries_do_not_block_the_event_loop(redis_url: str, workers) -> None:  # noqa: ANN001
    """While a first query loads a snapshot (in a thread), other coroutines keep running; once loaded,
    queries are answered by hnswlib without Redis."""
    workers.start(redis_url)
    ids, x = _data(4000, seed=1)

    async def main() -> None:
        async with await embcache.aio.connect(redis_url, refresh_interval=0.05) as hub:
            v = await (await hub.create_space("a", DIM, "l2")).create_version()
            await v.upsert(ids, x)
            await v.build(timeout=60)
        async with await embcache.aio.connect(redis_url, refresh_interval=60) as hub:  # a fresh cache
            v = await (await hub.space("a")).version("v1")
            ticks: list[float] = []

            async def ticker() -> None:
                for _ in range(1000):
                    ticks.append(time.perf_counter())
                    await asyncio.sleep(0.001)

            t = asyncio.create_task(ticker())
            await asyncio.sleep(0.01)
            res = await v.query(x[:1], 10)  # loads the snapshot
            t.cancel()
            assert isinstance(hub.sync.cache.cached(("a", "v1", "default")), HnswBase)
            assert res.ids[0][0] == "i0"
            gaps = np.diff(ticks)
            assert len(ticks) > 5 and gaps.max() < 0.2, f"the event loop stalled for {gaps.max():.3f}s"
            await hub.redis.aclose()  # no Redis from here on: eventual and session answer from the snapshot
            for level in ("eventual", "session"):
                assert (await v.query(x[3], 1, consistency=level)).ids == [["i3"]]

    asyncio.run(main())


def test_fastapi_example_under_200_concurrent_requests(redis_url: str, workers) -> None:  # noqa: ANN001
    from examples.fastapi_app import create_app

    workers.start(redis_url)
    ids, x = _data(2000, seed=2)
    with embcache.connect(redis_url) as hub:
        space = hub.create_space("movies", DIM, "cosine")
        v = space.create_version()
        v.upsert(ids, x, metadatas=[{"n": i} for i in range(len(ids))])
        v.build(timeout=60)
        space.set_alias("live", v)
        want_similar = {i: v.query_by_id([i], 5, consistency="eventual").ids[0] for i in ids[:20]}
        want_rec = v.query(x[100], 5 + 2, consistency="eventual").ids[0]

    app = create_app(redis_url, "movies", refresh_interval=0.05)

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                exclude = want_rec[:2]
                requests = [client.get(f"/similar/{ids[i % 20]}", params={"n": 5}) for i in range(150)]
                requests += [client.post("/recommend", json={"vector": x[100].tolist(), "exclude": exclude, "n": 5})
                             for _ in range(50)]
                responses = await asyncio.gather(*requests)
                failed = [r.text for r in responses if r.status_code != 200][:2]
                assert [r.status_code for r in responses] == [200] * 200, failed
                for i, r in enumerate(responses[:150]):
                    body = r.json()
                    assert [row["id"] for row in body["results"]] == want_similar[ids[i % 20]]
                    assert body["results"][0]["metadata"] == {"n": int(body["results"][0]["id"][1:])}
                for r in responses[150:]:
                    assert [row["id"] for row in r.json()["results"]] == [i for i in want_rec if i not in exclude][:5]
                assert (await client.get("/similar/nope")).status_code == 404
                bad = await client.post("/recommend", json={"vector": [1.0, 2.0], "n": 5})
                assert bad.status_code == 422
                # the largest request the model allows (n 1000, 9,500 excluded ids) is answered, not refused
                many = exclude + [f"gone{i}" for i in range(9_498)]
                big = await client.post("/recommend", json={"vector": x[100].tolist(), "exclude": many, "n": 1000})
                assert big.status_code == 200, big.text
                got = [row["id"] for row in big.json()["results"]]
                assert len(got) == 1000 and not set(got) & set(exclude)

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_every_async_call_runs_on_the_asyncio_client(kind: str, request, workers, monkeypatch) -> None:  # noqa: ANN001
    """Issue 9.3: no async call sends a command through the sync client on the event loop (nor the strong
    probe, which has a sync connection of its own), nor runs a sync call in a worker thread: the admin calls
    (spaces, versions, aliases, grants, seal, build, stats, compare, explain, drop) run their plans on
    redis.asyncio, on a server and on a Cluster. The one thing handed to a thread is loading a snapshot
    (fetch and hnswlib's loader), which the cache does with its own connection."""
    url = request.getfixturevalue("redis_url" if kind == "standalone" else "cluster_url")
    if kind == "cluster":
        workers.start(url, queue_url=request.getfixturevalue("redis_url"))
    else:
        workers.start(url)
    ids, x = _data(400, seed=3)
    sent: list[str] = []

    def spy(cls: type, name: str, what: Any) -> None:
        real = getattr(cls, name)

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is threading.main_thread():  # the event loop's thread
                sent.append(what(args))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, call)

    threads: list[Any] = []
    real_to_thread = asyncio.to_thread

    async def to_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
        threads.append(fn)
        return await real_to_thread(fn, *args, **kwargs)

    async def main() -> None:
        # no follower and no refresh during the test: the sync pool serves only those background threads
        async with await embcache.aio.connect(url, refresh_interval=3600, follow=False) as hub:
            for cls in (redis.Redis, redis.cluster.RedisCluster):
                spy(cls, "execute_command", lambda args: str(args[0]))
            for cls in (redis.client.Pipeline, redis.cluster.ClusterPipeline):
                spy(cls, "execute", lambda args: "pipeline")
            spy(StrongProbe, "send", lambda args: "strong probe")
            monkeypatch.setattr(asyncio, "to_thread", to_thread)
            space = await hub.create_space("adm", DIM, "l2")
            assert (await hub.create_space("adm", DIM, "l2", exist_ok=True)).name == "adm"
            assert await hub.spaces() == ["adm"] and (await hub.space("adm")).dim == DIM
            v1 = await space.create_version(description="first")
            await v1.upsert(ids, x)
            handle = await v1.build(wait=False)
            await handle.wait(timeout=60)
            assert await handle.progress() == (1, 1)
            assert (await v1.stats())[0].snapshot_count == len(ids)
            v2 = await space.create_version("b")
            await v2.upsert(ids, x + 0.001)
            await v2.build(timeout=60)
            assert [v.name for v in await space.versions()] == ["v1", "b"]
            await space.set_alias("live", v1)
            report = await space.promote("b", max_drift=0.5, sample=100, k=5)
            assert report is not None and report.in_both == len(ids) and report.drift <= 0.5
            assert await space.aliases() == {"live": "b"} and await space.alias_history("live") == ["v1"]
            assert (await space.compare("v1", v2, sample=50, k=5)).sampled == 50
            assert (await space.rollback()).name == "v1" and (await space.version("live")).name == "v1"
            for level in ("session", "strong"):
                ex = await v1.explain(x[0], 3, consistency=level)
                assert ex.result.ids[0][0] == "i0"  # type: ignore[attr-defined]
            assert sorted([i async for i in v1.ids(batch=100)]) == sorted(ids)
            with pytest.raises(embcache.InvalidInput, match="batch"):
                [i async for i in v1.ids(batch=0)]
            other = await (await hub.create_space("adm2", DIM, "l2")).create_version()
            with pytest.raises(embcache.InvalidInput, match="belongs to space 'adm2'"):
                await space.set_alias("x", other)  # as the sync client: not space adm's version of that name
            await v2.seal()
            assert (await space.version("b")).state == "sealed"
            creds = await hub.grant("adm-reader", space="adm", role="reader")
            assert (await hub.list_principals())["adm-reader"]["grants"]["adm"]["role"] == "reader"
            assert (await hub.rotate("adm-reader")).password != creds.password
            await hub.revoke("adm-reader")
            assert "adm-reader" not in await hub.list_principals()
            assert (await hub.create_worker_principal("adm-worker")).username == "adm-worker"
            await hub.revoke("adm-worker")
            await space.set_alias("live", "b")
            await space.drop_version("v1")
            assert [v.name for v in await space.versions()] == ["b"]
            await hub.drop_space("adm")
            await hub.drop_space("adm2")
            assert await hub.spaces() == []
            monkeypatch.undo()
        assert sent == [], f"the sync client sent {sent[:10]} on the event loop"
        assert threads and {getattr(fn, "__qualname__", "") for fn in threads} <= LOADS, threads

    asyncio.run(main())
