"""The asyncio client: the same API as the sync one, for async web backends (FastAPI, aiohttp, ...).

>>> import embcache.aio
>>> hub = await embcache.aio.connect("redis://localhost:6379/0")
>>> space = await hub.space("movies")
>>> res = await space.query(vector, n_results=10)          # served from the loaded snapshot: no Redis I/O
>>> await (await space.version("v2")).upsert(ids, vectors)
>>> await hub.close()

Every call runs the very plan the sync client runs (:mod:`embcache.plan`: reads, writes, queries, and the
administrative calls: spaces, versions, aliases, grants, seal, build, stats, compare), executed on
``redis.asyncio``; a query answered from loaded snapshots does no I/O at all, and the one-time load of a snapshot
runs in a worker thread, so the event loop never waits on Redis or on hnswlib's loader. One exception: a
partition's first exact scan in a process (a selective ``where`` filter) makes the float16 copy of its vectors on
the loop (~130 ms once at 59k x 384; docs/operations.md). Waiting for a build sleeps with ``asyncio.sleep``.

What a process has loaded is in-process state, not a connection: each :class:`AsyncHub` shares one
:class:`~embcache.client.Hub`'s state (``.sync``: the loaded snapshots, the refresher and follower threads that
keep them current, this hub's session writes), whose background threads use a sync connection pool of their
own. Only :func:`connect` (once: it may start the embedded server) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio
import redis.asyncio.cluster

from .client import hub as sync
from .client.drift import compare as compare_versions
from .client.hub import GetResult, QueryResult, _check_batch, _named
from .client.recommend import recommend_plan
from .core.drift import DriftReport
from .core.engine import Explain
from .core.errors import EmbcacheError
from .redis.acl import Credentials
from .redis.builds import BuildHandle, PartitionStats
from .redis.plan import Plan, arun
from .redis.store import Store, client_options

__all__ = ["connect", "AsyncHub", "AsyncSpace", "AsyncVersion", "AsyncBuildHandle"]

T = TypeVar("T")


async def connect(url: str | None = None, *, max_connections: int = 64, **kwargs: Any) -> "AsyncHub":
    """Connect to a hub; the arguments are those of :func:`embcache.connect` (no URL: the embedded server).
    ``max_connections`` bounds the asyncio connections (per node on a Cluster); more concurrent calls wait."""
    hub = await asyncio.to_thread(sync.connect, url, **kwargs)
    opts: dict[str, Any] = {"decode_responses": False, **client_options(asyncio_client=True)}
    if hub.username is not None:
        opts["username"] = hub.username
    if hub._password is not None:
        opts["password"] = hub._password
    try:
        if hub.is_cluster:  # redis.asyncio's Cluster client takes no retry_on_timeout (its `retry` covers it)
            opts.pop("retry_on_timeout", None)
            aclient: Any = redis.asyncio.cluster.RedisCluster.from_url(hub.url, max_connections=max_connections, **opts)
        else:  # under a burst of requests, wait for a free connection rather than fail
            pool = redis.asyncio.BlockingConnectionPool.from_url(hub.url, max_connections=max_connections, **opts)
            aclient = redis.asyncio.Redis.from_pool(pool)  # the client owns (and closes) the pool
    except Exception:
        hub.close()
        raise
    return AsyncHub(hub, aclient)


class AsyncHub:
    """The asyncio twin of :class:`embcache.Hub`. Create it with :func:`connect`."""

    def __init__(self, hub: sync.Hub, aclient: Any) -> None:
        self.sync = hub
        self.redis = aclient
        self.url = hub.url
        self.username = hub.username

    async def _run(self, plan: Plan[T]) -> T:
        return await arun(plan, self.redis)

    async def create_space(self, name: str, dim: int, metric: str = "cosine", *, dtype: str = "float32", M: int = 16,
                           ef_construction: int = 200, ef: int = 64, neighbours: int = 0,
                           exist_ok: bool = False) -> "AsyncSpace":
        """:meth:`embcache.Hub.create_space`."""
        return AsyncSpace(self, await self._run(self.sync._create_space(name, dim, metric, dtype, M, ef_construction,
                                                                        ef, neighbours, exist_ok)))

    async def space(self, name: str) -> "AsyncSpace":
        """:meth:`embcache.Hub.space`."""
        return AsyncSpace(self, await self._run(self.sync._space(name)))

    async def spaces(self) -> list[str]:
        """:meth:`embcache.Hub.spaces`."""
        return await self._run(self.sync.catalogue.list_spaces.plan())

    async def drop_space(self, name: str) -> None:
        """:meth:`embcache.Hub.drop_space`."""
        await self._run(self.sync._drop_space(name))

    async def grant(self, principal: str, *, space: str, role: str = "reader",
                    partitions: Sequence[str] | None = None) -> Credentials:
        """:meth:`embcache.Hub.grant`."""
        return await self._run(self.sync._grant(principal, space, role, partitions))

    async def revoke(self, principal: str, *, space: str | None = None) -> None:
        """:meth:`embcache.Hub.revoke`."""
        await self._run(self.sync.principals.revoke.plan(principal, space))

    async def list_principals(self) -> dict[str, dict[str, Any]]:
        """:meth:`embcache.Hub.list_principals`."""
        return await self._run(self.sync.principals.list.plan())

    async def rotate(self, principal: str) -> Credentials:
        """:meth:`embcache.Hub.rotate`."""
        return await self._run(self.sync.principals.rotate.plan(principal))

    async def create_worker_principal(self, name: str = "worker") -> Credentials:
        """:meth:`embcache.Hub.create_worker_principal`."""
        return await self._run(self.sync.principals.worker.plan(name))

    async def close(self) -> None:
        """Close both clients and stop the refresher."""
        try:
            await self.redis.aclose()
        finally:
            await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> "AsyncHub":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncHub({self.url!r})"


class AsyncSpace:
    """The asyncio twin of :class:`embcache.Space`."""

    def __init__(self, hub: AsyncHub, space: sync.Space) -> None:
        self.hub = hub
        self.sync = space
        self.name, self.dim, self.metric, self.dtype = space.name, space.dim, space.metric, space.dtype
        self.M, self.ef_construction, self.ef = space.M, space.ef_construction, space.ef
        self.neighbours = space.neighbours

    def __repr__(self) -> str:
        return f"Async{self.sync!r}"

    async def _run(self, operation: str, plan: Plan[T]) -> T:
        with _named(operation, self.name, self.hub.username):
            return await self.hub._run(plan)

    async def create_version(self, name: str | None = None, *, description: str = "") -> "AsyncVersion":
        """:meth:`embcache.Space.create_version`."""
        return AsyncVersion(self, await self._run("create_version", self.sync._create_version(name, description)))

    async def version(self, name: str) -> "AsyncVersion":
        """:meth:`embcache.Space.version`."""
        return AsyncVersion(self, await self._run("version", self.sync._version(name)))

    async def versions(self) -> list["AsyncVersion"]:
        """:meth:`embcache.Space.versions`."""
        return [AsyncVersion(self, v) for v in await self._run("versions", self.sync._versions())]

    async def drop_version(self, name: str) -> None:
        """:meth:`embcache.Space.drop_version`."""
        await self._run("drop_version", self.sync._drop_version(name))

    def allowed_partitions(self) -> list[str] | None:
        """:meth:`embcache.Space.allowed_partitions` (no I/O)."""
        return self.sync.allowed_partitions()

    async def default_version(self) -> "AsyncVersion":
        """:meth:`embcache.Space.default_version`."""
        return await self._default_version(True)

    async def _default_version(self, fresh: bool) -> "AsyncVersion":
        """The default version; ``fresh=False`` accepts the hub's cached answer."""
        return AsyncVersion(self, await self._run("default_version", self.sync._default_version(fresh)))

    async def set_alias(self, alias: str, version: "AsyncVersion | str") -> None:
        """:meth:`embcache.Space.set_alias`."""
        await self._run("set_alias", self.sync._set_alias(alias, _version(version)))

    async def promote(self, version: "AsyncVersion | str", alias: str = "live", *, max_drift: float | None = None,
                      sample: int = 1000, k: int = 10, seed: int = 0) -> DriftReport | None:
        """:meth:`embcache.Space.promote` (the drift check searches in batches of 1,000 queries on the loop)."""
        return await self._run("promote", self.sync._promote(_version(version), alias, max_drift, sample, k, seed))

    async def compare(self, a: "AsyncVersion | str", b: "AsyncVersion | str", *, sample: int = 1000, k: int = 10,
                      seed: int = 0, ef: int | None = None, consistency: str = "session") -> DriftReport:
        """:meth:`embcache.Space.compare` (its searches run on the loop, in batches of 1,000 queries: an
        administrative call, not one for a request handler)."""
        return await self._run("compare", compare_versions(self.sync, _version(a), _version(b), sample=sample, k=k,
                                                           seed=seed, ef=ef, consistency=consistency))

    async def aliases(self) -> dict[str, str]:
        """:meth:`embcache.Space.aliases`."""
        return await self._run("aliases", self.hub.sync.catalogue.aliases.plan(self.name))

    async def alias_history(self, alias: str) -> list[str]:
        """:meth:`embcache.Space.alias_history`."""
        return await self._run("alias_history", self.hub.sync.catalogue.alias_history.plan(self.name, alias))

    async def rollback(self, alias: str = "live") -> "AsyncVersion":
        """:meth:`embcache.Space.rollback`."""
        return AsyncVersion(self, await self._run("rollback", self.sync._rollback(alias)))

    async def query(self, query_embeddings: Any, n_results: int = 10, **kwargs: Any) -> QueryResult:
        """:meth:`embcache.Space.query`."""
        version = await self._default_version(kwargs.get("consistency") == "strong")
        return await version.query(query_embeddings, n_results, **kwargs)

    async def query_by_id(self, ids: Sequence[str], n_results: int = 10, **kwargs: Any) -> QueryResult:
        """:meth:`embcache.Space.query_by_id`."""
        version = await self._default_version(kwargs.get("consistency") == "strong")
        return await version.query_by_id(ids, n_results, **kwargs)

    async def recommend(self, positive: Sequence[Any], negative: Sequence[Any] | None = None, n_results: int = 10,
                        **kwargs: Any) -> QueryResult:
        """:meth:`embcache.Space.recommend`."""
        version = await self._default_version(kwargs.get("consistency") == "strong")
        return await version.recommend(positive, negative, n_results, **kwargs)


class AsyncVersion:
    """The asyncio twin of :class:`embcache.Version`."""

    def __init__(self, space: AsyncSpace, version: sync.Version) -> None:
        self.space = space
        self.hub = space.hub
        self.sync = version
        self.name = version.name

    @property
    def state(self) -> str:
        """``open``, ``sealed``, or ``sealing`` (a seal under way or cut short: seal again to complete it)."""
        return self.sync.state

    def __repr__(self) -> str:
        return f"Async{self.sync!r}"

    async def _run(self, operation: str, plan: Plan[T]) -> T:
        with _named(operation, self.space.name, self.hub.username):
            return await self.hub._run(plan)

    async def upsert(self, ids: Sequence[str], embeddings: Any,
                     metadatas: Sequence[dict[str, Any] | None] | None = None,
                     partition: str = "default") -> int:
        """:meth:`embcache.Version.upsert`."""
        return await self._run("upsert", self.sync._upsert(ids, embeddings, metadatas, partition))

    async def delete(self, ids: Sequence[str], partition: str | None = None) -> int:
        """:meth:`embcache.Version.delete`."""
        return await self._run("delete", self.sync._delete(ids, partition))

    async def get(self, ids: Sequence[str], include: Sequence[str] = ("embeddings", "metadatas"),
                  partitions: Sequence[str] | None = None) -> GetResult:
        """:meth:`embcache.Version.get`."""
        return await self._run("get", self.sync._get(ids, include, partitions))

    async def count(self, partition: str | None = None) -> int:
        """:meth:`embcache.Version.count`."""
        return await self._run("count", self.sync._count(partition))

    async def partitions(self) -> list[str]:
        """:meth:`embcache.Version.partitions`."""
        hub = self.hub.sync
        return await self._run("partitions", hub.partitions.get(self.space.name, self.name, True))

    async def ids(self, partition: str | None = None, *, batch: int = 1000) -> AsyncIterator[str]:
        """:meth:`embcache.Version.ids`, as an async iterator."""
        batch = _check_batch(batch)
        parts = await self._run("ids", self.sync._partitions_arg(None if partition is None else [partition]))
        for p in parts:
            cursor = None
            while cursor != 0:
                cursor, page = await self._run("ids", Store.id_page(self.sync._pk(p), cursor or 0, batch))
                for key in page:
                    yield key

    async def query(self, query_embeddings: Any, n_results: int = 10, *, partitions: Sequence[str] | None = None,
                    where: dict[str, Any] | None = None, ef: int | None = None, consistency: str = "session",
                    include: Sequence[str] = ("distances",), exclude: Sequence[str] | None = None) -> QueryResult:
        """:meth:`embcache.Version.query`. Served from loaded snapshots without I/O where the level allows."""
        v = self.sync
        q = v._make_query(query_embeddings, n_results, partitions, where, ef, consistency, include, exclude)
        if q.consistency != "strong":
            res = v._local(q)  # no I/O: fine on the loop
            if res is not None:
                return res
        return (await self._run("query", v._search(q))).result

    async def explain(self, query_embeddings: Any = None, n_results: int = 10, *, ids: Sequence[str] | None = None,
                      partitions: Sequence[str] | None = None, where: dict[str, Any] | None = None,
                      ef: int | None = None, consistency: str = "session",
                      exclude: Sequence[str] | None = None) -> Explain:
        """:meth:`embcache.Version.explain`."""
        return await self._run("query", self.sync._explain(query_embeddings, n_results, ids, partitions, where, ef,
                                                           consistency, exclude, probe=False))

    async def query_by_id(self, ids: Sequence[str], n_results: int = 10, *, partitions: Sequence[str] | None = None,
                          where: dict[str, Any] | None = None, ef: int | None = None, consistency: str = "session",
                          include: Sequence[str] = ("distances",), exclude: Sequence[str] | None = None) -> QueryResult:
        """:meth:`embcache.Version.query_by_id`."""
        v = self.sync
        if v.space.neighbours and consistency != "strong":  # the neighbour lists: no I/O, fine on the loop
            id_list, q = v._by_id_query(ids, n_results, partitions, where, ef, consistency, include, exclude)
            res = v._listed(id_list, q)
            if res is not None:
                return res
        return await self._run("query_by_id", self.sync._query_by_id(ids, n_results, partitions, where, ef,
                                                                     consistency, include, exclude))

    async def recommend(self, positive: Sequence[Any], negative: Sequence[Any] | None = None, n_results: int = 10,
                        *, strategy: str = "average", partitions: Sequence[str] | None = None,
                        where: dict[str, Any] | None = None, exclude: Sequence[str] | None = None,
                        exclude_examples: bool = True, ef: int | None = None, consistency: str = "session",
                        include: Sequence[str] = ("distances",)) -> QueryResult:
        """:meth:`embcache.Version.recommend`: the same plan, run on the event loop."""
        return await self._run("recommend", recommend_plan(self.sync, positive, negative, n_results, partitions, where,
                                                           exclude, exclude_examples, strategy, ef, consistency,
                                                           include))

    async def seal(self) -> None:
        """:meth:`embcache.Version.seal`."""
        await self._run("seal", self.sync._seal())

    async def build(self, wait: bool = True, *, timeout: float | None = 600.0,
                    on_progress: Callable[[int, int], None] | None = None) -> "AsyncBuildHandle":
        """:meth:`embcache.Version.build`; returns an :class:`AsyncBuildHandle` (await its ``progress()`` and
        ``wait()``)."""
        handle = await self._run("build", self.sync._build(wait, timeout, on_progress))
        return AsyncBuildHandle(handle, self.hub.redis)

    async def stats(self) -> list[PartitionStats]:
        """:meth:`embcache.Version.stats`."""
        return await self._run("stats", self.sync._stats())


class AsyncBuildHandle:
    """The asyncio twin of :class:`~embcache.builds.BuildHandle`: a requested build, followed on ``redis.asyncio``."""

    def __init__(self, handle: BuildHandle, aclient: Any) -> None:
        self.handle = handle
        self.redis = aclient
        self.targets = handle.targets  # partition -> the log position its snapshot must reach

    async def progress(self) -> tuple[int, int]:
        """:meth:`BuildHandle.progress`: ``(partitions done, partitions asked)``; done when both are equal
        (``BuildHandle.done`` has no twin here: an awaitable property would always look true in an ``if``)."""
        return await arun(self.handle.progress_plan(), self.redis)

    async def wait(self, timeout: float | None = 600.0, on_progress: Callable[[int, int], None] | None = None,
                   poll: float = 0.05) -> "AsyncBuildHandle":
        """:meth:`BuildHandle.wait`, sleeping with ``asyncio.sleep`` between polls."""
        await arun(self.handle.wait_plan(timeout, on_progress, poll), self.redis)
        return self


def _version(version: "AsyncVersion | str") -> "sync.Version | str":
    """The sync version behind an :class:`AsyncVersion` (its space is checked like the sync client's), else the name."""
    return version.sync if isinstance(version, AsyncVersion) else version


# keep the error tree reachable from here, as users of the async client expect
EmbcacheError = EmbcacheError
