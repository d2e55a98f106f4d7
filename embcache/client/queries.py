"""The query path of a version: one validated :class:`~embcache.core.engine.Query`, answered from the partitions
loaded in this process when the consistency level allows (:meth:`QueryPath._local`, no I/O), else by the general
plan (:meth:`QueryPath._search`) in named stages: strong positions, sources (bases and graphs to search),
overlays (this hub's session writes and the followed log tails), then the search and the merge.

:class:`QueryPath` is the part of :class:`~embcache.client.hub.Version` that answers queries; the facade
(``Version.query``, ``query_by_id``, ``explain``, ``recommend``) validates and calls it. It lives here so that the
facade stays readable and the query path can be read on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..core import codec
from ..core.engine import Explain, Query, Step
from ..core.errors import (
    ItemNotFound,
)
from ..core.keys import PartitionKeys
from ..core.search import Ranked, exact_search, merge_ranked
from ..core.tail import TailView
from ..core.vgraph import VersionBase
from ..core.views import Overlay, pos_key, search_view
from ..redis import metrics
from ..redis.catalogue import valid_names
from ..redis.plan import Offload, Plan
from ..redis.probe import PendingProbe, StrongProbe
from .cache import GRAPH, PartitionCache, tail_overlay
from .results import CONSISTENCY_LEVELS, GetResult, QueryResult
from .state import Pid

if TYPE_CHECKING:
    from .hub import Hub, Space

__all__ = ["QueryPath"]

T = TypeVar("T")
try:  # np.einsum is this function behind numpy's dispatch wrapper, which costs ~2 us of a ~40 us query
    from numpy._core.multiarray import c_einsum as _einsum
except ImportError:  # numpy < 2
    _einsum = np.einsum
NAMED_GRAPH_SHARE = 0.2  # named partitions holding this share of a loaded version graph are searched there
ROUTES = 64  # query routes kept per version (the sets of partitions queried are few in practice)
_INCLUDE_QUERY = ("distances", "metadatas", "embeddings")


class QueryPath:
    """The query path of :class:`~embcache.client.hub.Version` (a mixin: it reads the version's hub, space
    and name, and its partition helpers)."""

    hub: Hub
    space: Space
    name: str
    _probes: dict[tuple[tuple[str, ...], bool], StrongProbe]  # partitions -> their strong probe
    _plain: dict[tuple[int, str], Query]  # query_by_id's Query for the default options, per (k, level)
    _routes: dict[tuple[tuple[str, ...] | None, str], "_Route"]  # (partitions, level) -> its route

    if TYPE_CHECKING:  # the version's reads, which the query path uses
        def _partitions_arg(self, partitions: object, *, fresh: bool = True) -> Plan[list[str]]: ...
        def _get(self, ids: Any, include: Any, partitions: Any) -> Plan[GetResult]: ...

    def _pid(self, partition: str) -> tuple[str, str, str]:
        return (self.space.name, self.name, partition)

    def _pk(self, partition: str) -> PartitionKeys:
        return self.hub.keys.partition(self.space.name, self.name, partition)

    # Each operation that talks to Redis is a plan (embcache.plan): the public method runs it with the sync
    # client; embcache.aio runs the very same plan with redis.asyncio.
    def _run(self, plan: Plan[T]) -> T:
        return self.hub.store.run(plan)

    def _explained(self, q: Query, ex: Explain, probe: bool) -> Plan[QueryResult]:
        """:meth:`_answer` as a plan, filling in ``ex``: the local answer, else the general plan. At ``strong``
        the local answer sends the strong probe on the sync connection: ``probe=False`` (the asyncio client)
        leaves strong to the general plan, whose position check is a plan step."""
        res = self._local(q, ex) if probe or q.consistency != "strong" else None
        if res is None:
            ex.steps.clear()
            res = (yield from self._search(q, ex)).result
        return res

    def _by_id_explained(self, id_list: list[str], q: Query, ex: Explain, probe: bool) -> Plan[QueryResult]:
        """query_by_id's graph path, explained: the stored vectors as a query of ``n_results + 1``."""
        queries = yield from self._stored_vectors(id_list, q)
        res = yield from self._explained(replace(q, vectors=queries, k=q.k + 1), ex, probe)
        return _drop_own(res, id_list, q.k)

    # routes: the common single query without the general plan -------------------------------------------------
    # Most serving calls are one vector, default options, ``eventual`` or ``session``, over the same partitions,
    # and most of the time nothing is newer than the loaded base that answers them: then the general plan
    # (partitions, sources, overlays, search, merge) comes down to one hnswlib search, and its ~50 us of Python
    # are most of a small partition's query. A route remembers that outcome (the base, and the follower's views
    # to search with it) with what it depends on (the cache's generation, the partition list, the grant, the
    # follower's epoch, this hub's writes, each by identity or counter); while none of them changed, the query is
    # that one search. Anything else takes the general plan. docs/design.md, "Routes".
    def _routed_base(self, partitions: Any, consistency: Any) -> tuple[Any, "_Route"] | None:
        """The base of a still-valid route for ``partitions`` at ``consistency`` (see above) and the route, else
        None."""
        kind = type(partitions)
        if partitions is None:
            key = None
        elif kind is str:
            key = (partitions,)
        elif kind is list or kind is tuple:  # what the plan accepts; anything else gets its error there
            key = tuple(partitions)
        else:
            return None
        try:
            route = self._routes.get((key, consistency))
        except TypeError:  # unhashable names: the plan names the error
            return None
        if route is None:
            return None
        hub, cache = self.hub, self.hub.cache
        base: Any = cache.cached(route.bkey)  # before the generation: a base replaced after the check is not used
        if (base is None or not base.has_graph or cache.generation != route.gen
                or cache.follower.epoch != route.follow or self.space.grant is not route.grant
                or hub.partitions.cached(self.space.name, self.name) is not route.known
                or (consistency == "session" and hub.session.stamp != route.session)):
            return None
        return base, route

    def _routed(self, x: Any, k: Any, partitions: Any, consistency: Any) -> QueryResult | None:
        """:meth:`query` of one vector or a batch with the default options over a still-valid route; None when
        there is none or the input is not plain (the general plan then validates it and answers, or raises the
        error). At ``strong`` the probe goes out first and the answer stands only if the positions it reads are
        those the route's base and views cover (else the plan reads the tails)."""
        found = self._routed_base(partitions, consistency)
        if found is None or type(x) is not np.ndarray or x.dtype != np.float32 or type(k) is not int \
                or not 0 < k <= min(found[0].count, codec.MAX_N_RESULTS):
            return None
        (base, route), dim = found, self.space.dim
        if x.shape == (dim,):
            rows = x.reshape(1, dim)
        elif x.ndim == 2 and x.shape[1] == dim and len(x) and x.flags.c_contiguous:
            rows = x  # a batch takes the same route: one knn_query over every row
        else:
            return None
        # float32 squares: NaN or inf anywhere (or values past ~1e19) give a sum that is not finite. hnswlib scales
        # a cosine query to unit length itself, in float32, which is exact enough in this range; the general plan
        # hands it a float64-normalised copy (needed for its exact scans), so distances agree to float32 rounding.
        if len(rows) == 1:
            square = float(np.dot(rows[0], rows[0]))
            if not 1e-30 < square < 1e30:
                return None  # the general plan raises for NaN, inf or a zero vector, and handles the extremes
        else:
            squares = np.einsum("ij,ij->i", rows, rows)
            if not ((squares > 1e-30) & (squares < 1e30)).all():
                return None
        if consistency != "strong":
            return self._route_search(base, route, rows, k, False)
        pending = self._strong_probe_send(route.parts, partitions is None)  # ask Redis first, search meanwhile
        try:
            res = self._route_search(base, route, rows, k, False)
        finally:  # read the answer whatever happened, so the connection stays in step
            positions, members = pending.read()
        if positions != route.covers or (members is not None and members != route.known):
            return None  # the logs moved past what the route covers, or partitions were added: the plan merges
        return res

    def _route_search(self, base: Any, route: "_Route", rows: np.ndarray, k: int, unit: bool) -> QueryResult | None:
        """Query rows ``(n, dim)`` searched over a route: the base's graph, with the route's views when it has
        any (their exact scans need unit rows in a cosine space: ``unit`` says they are already); None when
        hnswlib finds fewer than ``k`` (the general plan then answers exactly)."""
        if route.tails:  # the followed changes on top: the engine's search of one base and its views
            if not unit and self.space.metric == "cosine":
                rows = _unit_rows(rows)
            found = search_view(base, {}, rows, k, None, None, self.space.metric, tails=route.tails)
            return QueryResult(ids=[ids for ids, _ in found], distances=_pad([d for _, d in found], k),
                               metric=self.space.metric)
        try:
            labels, dists = base.knn(rows, k, None)
        except RuntimeError:
            return None
        return QueryResult(ids=base.id_of[labels].tolist(), distances=dists, metric=self.space.metric)

    def _routed_by_id(self, ids: Any, k: Any, partitions: Any, consistency: Any) -> QueryResult | None:
        """:meth:`query_by_id` of one id with the default options over a still-valid route of the whole version,
        when the route's base holds the newest loaded copy of the id (its stored vector is then the query, as the
        general plan takes it); else None. Not at strong, nor in a space with neighbour lists (they answer)."""
        routed = None if consistency == "strong" else self._routed_base(partitions, consistency)
        if routed is None or type(ids) not in (list, tuple) or len(ids) != 1 or type(k) is not int \
                or not 0 < k < min(routed[0].count, codec.MAX_N_RESULTS + 1) or self.space.neighbours:
            return None  # (strong reads the item itself from Redis: the plan)
        (base, route), own = routed, ids[0]
        # the plan takes the id's vector from this hub's writes, the followed views of every partition, else the
        # newest loaded base that holds it: a route over every partition (its views are all of them, and at
        # session this hub has nothing of its own in any) agrees when no other loaded base holds it newer
        label = base.label.get(own) if type(own) is str and route.whole else None
        if label is None or any(own in t for t in route.tails):
            return None  # in no loaded base of the route, changed since, in Redis only or not stored: the plan
        cache = self.hub.cache
        for pid in route.others:
            other = cache.cached(pid)
            if other is not None and own in other and _covered(other, own) > _covered(base, own):
                return None
        # the stored vector (unit length in a cosine space), as the plan takes it, asked for one more than k
        res = self._route_search(base, route, base.index.get_items([label]), k + 1, True)
        return None if res is None else _drop_own(res, [own], k)

    def _route(self, partitions: tuple[str, ...] | None, consistency: str) -> None:
        """Remember a route for ``partitions`` at ``consistency`` when one base answers them with nothing to merge
        (called after the general plan answered, so names and grants are checked and the bases loaded)."""
        hub, cache = self.hub, self.hub.cache
        # read first: a change during the checks leaves the route stale at once
        gen, follow, session = cache.generation, cache.follower.epoch, hub.session.stamp
        known = hub.partitions.cached(self.space.name, self.name)
        if known is None or consistency not in CONSISTENCY_LEVELS or (consistency == "strong" and hub.is_cluster):
            return  # (a cluster has no single-connection strong probe)
        granted = self.space.allowed_partitions()
        parts = list(partitions or known)
        if granted is not None:
            parts = [p for p in parts if p in granted]
            if len(parts) != 1:
                return  # several partitions of a partial grant are searched one by one
        if len(parts) == 1:
            bkey = self._pid(parts[0])
        else:
            graph = cache.cached_graph(self.space.name, self.name)
            if graph is None or len(graph.parts) != len(parts) or not all(p in graph.parts for p in parts):
                return  # not one version graph of exactly these partitions
            bkey = (self.space.name, self.name, GRAPH)
        base: Any = cache.cached(bkey)
        if base is None or not base.has_graph:
            return
        tails, covers = [], []
        strong = consistency == "strong"
        for p in parts:
            pos = base.parts[p] if isinstance(base, VersionBase) else base.position
            if consistency == "session" and not hub.session.quiet(self._pid(p), pos):
                return  # this hub's own writes to merge
            view = cache.follower.view(self._pid(p))
            if view is not None and _usable(view, pos, strong):
                tails.append(view)  # as the plan's overlay stage takes it (a view never changes: new rows, new view)
            elif strong and view is not None and view.n:
                return  # a view that does not start at the base: strong reads the tail
            covers.append(view.pos if view is not None and view in tails else pos)
        others = tuple(pid for pid in cache.loaded(self.space.name, self.name) if pid != bkey)
        if len(self._routes) >= ROUTES:
            self._routes.clear()
        self._routes[(partitions, consistency)] = _Route(bkey, gen, known, self.space.grant, follow, session,
                                                         tuple(tails), tuple(parts), covers,
                                                         granted is None and len(parts) == len(known), others)

    def _make_query(self, query_embeddings: Any, n_results: Any, partitions: Any, where: Any, ef: Any,
                    consistency: Any, include: Any, exclude: Any) -> Query:
        queries = codec.check_matrix(query_embeddings, self.space.dim, what="query_embeddings", allow_1d=True)
        k = codec.check_n_results(n_results)
        if self.space.metric == "cosine":
            queries = _unit_rows(queries)
        return Query.build(queries, k, partitions=partitions, where=where, ef=ef, consistency=consistency,
                           include=include, exclude=exclude, allowed_include=_INCLUDE_QUERY)

    def _answer(self, q: Query) -> QueryResult:
        """Answer from what is loaded when the query needs no Redis (or, at ``strong``, only the probe);
        otherwise run the general plan."""
        t0 = time.perf_counter()
        res = self._local(q)
        if res is None:
            res = self._run(self._search(q)).result
        if metrics.ENABLED:
            metrics.observe_query(self.space.name, q.consistency, time.perf_counter() - t0)
        return res

    def _local(self, q: Query, ex: Explain | None = None) -> QueryResult | None:
        """The answer with no Redis round trip beyond the strong probe; None when the plan needs Redis."""
        if q.consistency != "strong":
            ans = _without_io(self._search(q, ex))
            return None if ans is None else ans.result
        if self.hub.is_cluster:
            return None
        parts = _without_io(self._partitions_arg(q.partitions, fresh=False))
        if parts is None:
            return None
        with_members = q.partitions is None
        pending = self._strong_probe_send(tuple(parts), with_members)  # ask Redis first, search while it answers
        try:
            ans = _without_io(self._search(q, ex, covered=True))
        finally:  # read the answer whatever happened, so the connection stays in step
            positions, members = pending.read()
        if ans is None or any(ans.positions.get(p) != pos for p, pos in zip(parts, positions)):
            return None  # the log moved past a base: the general path merges its tail
        if members is not None and members != sorted(self.hub.partitions.cached(self.space.name, self.name) or []):
            return None  # partitions were added: the general path searches them too
        if ex is not None:
            ex.redis_round_trips = 1
            ex.notes.append("strong: the bases cover every partition's log (checked while searching)")
        return ans.result

    def _strong_probe_send(self, partitions: tuple[str, ...], with_members: bool) -> PendingProbe:
        """Send (without waiting) the partitions' log positions and, querying them all, the version's partition
        list (see :mod:`embcache.redis.probe`); one prepared probe is kept per set of partitions."""
        key = (partitions, with_members)
        probe = self._probes.get(key)
        if probe is None:
            parts_key = self.hub.keys.parts(self.space.name, self.name) if with_members else None
            probe = self.hub.probes.prepare([self._pk(p).state for p in partitions], parts_key)
            if len(self._probes) >= 64:  # bounded: the sets of partitions queried are few in practice
                self._probes.clear()
            self._probes[key] = probe
        return probe.send()

    def _by_id_query(self, ids: Any, n_results: Any, partitions: Any, where: Any, ef: Any, consistency: Any,
                     include: Any, exclude: Any) -> tuple[list[str], Query]:
        id_list = codec.check_ids(ids, allow_duplicates=True)
        k = codec.check_n_results(n_results)
        if partitions is None and where is None and ef is None and exclude is None and include == ("distances",) \
                and consistency in CONSISTENCY_LEVELS:  # the defaults: nothing else to check (the hot path)
            q = self._plain.get((k, consistency))  # a Query is immutable: one per (k, level) serves every call
            if q is None:
                if len(self._plain) >= 64:
                    self._plain.clear()
                q = self._plain[(k, consistency)] = Query(np.zeros((0, self.space.dim), np.float32), k, None, None,
                                                          None, str(consistency), ("distances",))
            return id_list, q
        q = Query.build(np.zeros((0, self.space.dim), np.float32), k, partitions=partitions, where=where, ef=ef,
                        consistency=consistency, include=include, exclude=exclude, allowed_include=_INCLUDE_QUERY)
        return id_list, q

    def _listed(self, id_list: list[str], q: Query, ex: Explain | None = None) -> QueryResult | None:
        """:meth:`query_by_id` from the neighbour lists of the loaded snapshot, with no I/O; None when they cannot
        answer (no lists, several partitions searched, the item changed in the overlay, a list too short once
        the overlay, ``exclude`` and ``where`` are applied): the caller then searches the graph.

        A list is the item's nearest others in the snapshot, nearest first, so what is left of it after dropping
        items is still the nearest of those that remain: when ``n_results`` of them are left (or the list holds
        the whole partition) they are the answer among the snapshot's items, and the overlay's items (written
        after the snapshot) are searched exactly against the item's vector and merged in."""
        if "embeddings" in q.include:
            return None
        parts = self.hub.partitions.cached(self.space.name, self.name)
        if parts is None:
            return None
        searched = parts if q.partitions is None else q.partitions
        granted = self.space.allowed_partitions()
        if len(searched) != 1 or searched[0] not in parts or (granted is not None and searched[0] not in granted):
            return None  # a list covers its own partition only (and the general path names what is refused)
        base = self.hub.cache.cached(self._pid(searched[0]))
        lists = getattr(base, "nb_labels", None)
        if lists is None:
            return None
        src = _Source(base, [searched[0]], None)
        overlays = _without_io(self._overlays([src], q, {}, False))
        if overlays is None:
            return None
        ov = overlays[0]
        # followed change logs the overlay stage attached to the source (views with ``item``, ``search``), if any
        tails = list(getattr(src, "tails", {}).values())
        rows = []
        for id_ in id_list:
            lab = base.label.get(id_)  # type: ignore[union-attr]
            if lab is None or id_ in ov or any(id_ in t for t in tails):
                return None  # not in this snapshot, or changed since: the general path finds its vector
            row = _from_list(base, lab, id_, ov, q, tails)
            if row is None:
                return None
            rows.append(row)
        if ex is not None:
            ex.steps.append(Step(f"partition {searched[0]}: {base.describe()}", "neighbour list",  # type: ignore
                                 base.count, base.count, int(base.nb_len[lab])))  # type: ignore[union-attr]
            ex.overlay_items += sum(1 for it in ov.values() if it.vector is not None) + sum(t.n_live for t in tails)
        k = q.k
        if len(rows) == 1 and len(rows[0][1]) == k:
            res = QueryResult(ids=[rows[0][0]], distances=rows[0][1].reshape(1, k).copy(), metric=self.space.metric)
        else:
            res = QueryResult(ids=[r[0] for r in rows], distances=_pad([r[1] for r in rows], k),
                              metric=self.space.metric)
        if "metadatas" in q.include:
            res.metadatas = [[_metadata(i, ov, tails, base) for i in row] for row in res.ids]
        return res

    def _stored_vectors(self, id_list: list[str], q: Query) -> Plan[np.ndarray]:
        """The stored vectors of ``id_list`` (normalised for cosine), one row per id: from what is loaded where the
        level allows, the rest from Redis; :class:`ItemNotFound` for an id this version does not hold."""
        vectors = {} if q.consistency == "strong" else self._stored_locally(id_list, q.consistency == "session")
        missing = [i for i in dict.fromkeys(id_list) if i not in vectors]
        if missing:
            got = yield from self._get(missing, ("embeddings",), None)
            assert got.embeddings is not None
            vectors.update(zip(got.ids, got.embeddings))
        absent = [i for i in id_list if i not in vectors]
        if absent:
            raise ItemNotFound(f"{self.space.name}/{self.name} has no item {absent[0]!r}")
        return np.stack([vectors[i] for i in id_list]).astype(np.float32)

    def _by_id(self, id_list: list[str], q: Query) -> Plan[QueryResult]:
        queries = yield from self._stored_vectors(id_list, q)
        res = (yield from self._search(replace(q, vectors=queries, k=q.k + 1))).result
        return _drop_own(res, id_list, q.k)

    def _stored_locally(self, ids: list[str], session: bool) -> dict[str, np.ndarray]:
        """Vectors of ``ids`` from the loaded bases (and, at ``session``, this hub's own writes); ids not found
        there, or deleted by this hub, are left out (Redis answers for them)."""
        hub, cache = self.hub, self.hub.cache
        parts = hub.partitions.cached(self.space.name, self.name)
        if parts is None:
            return {}
        found: dict[str, np.ndarray] = {}
        skip: set[str] = set()
        if session:
            own = hub.session.lookup([self._pid(p) for p in parts], ids, _base_position(cache))
            if own is None:
                return {}  # this hub's writes are not all in memory: Redis knows best
            found, skip = own
        granted = self.space.allowed_partitions()
        graph = cache.cached_graph(self.space.name, self.name) if granted is None else None
        bases: list[Any] = [graph] if graph is not None else []
        bases += [b for b in (cache.cached(self._pid(p)) for p in (parts if granted is None else
                                                                    [p for p in parts if p in granted])) if b]
        follower = cache.follower
        if follower.buffers:  # the followed changes are newer than the bases
            views = [v for v in (follower.view(self._pid(p)) for p in parts if granted is None or p in granted) if v]
            for i in ids:
                if i in found or i in skip:
                    continue
                for v in views:
                    it = v.item(i)
                    if it is not None:
                        if it.vector is None:
                            skip.add(i)
                        else:
                            found[i] = it.vector
                        break
        for i in ids:
            if i in found or i in skip:
                continue
            holders = [b for b in bases if i in b]
            if holders:  # the newest of the bases that hold it (the version graph may lag a partition's snapshot)
                vec = max(holders, key=lambda b: _covered(b, i)).vector(i)
                if vec is not None:
                    found[i] = vec
        return found

    def _search(self, q: Query, ex: Explain | None = None, *, covered: bool = False,
                use_graph: bool = True) -> Plan["_Answer"]:
        """Partitions -> (strong) log positions -> sources -> overlays -> search -> result. ``covered`` (the
        strong probe's local run) searches the bases alone and reports the positions they cover."""
        parts = yield from self._partitions_arg(q.partitions, fresh=False)
        positions: dict[str, str | None] = {}
        if q.consistency == "strong" and not covered:
            parts, positions = yield from self._strong_positions(parts, q.partitions is None)
        sources = yield from self._sources(parts, q, use_graph)
        overlays = yield from self._overlays(sources, q, positions, covered)
        if overlays is None:  # a partition's log no longer reaches back to the version graph's position
            return (yield from self._search(q, ex, covered=covered, use_graph=False))
        result = self._search_sources(sources, overlays, q, ex)
        return _Answer(result, {p: s.covers(p) for s in sources for p in s.parts} if covered else {})

    def _strong_positions(self, parts: list[str], all_parts: bool) -> Plan[tuple[list[str], dict[str, str | None]]]:
        """One round trip: every partition's log position and (querying them all) the partition list, so a
        partition another hub created before this query began is not missed."""
        hub, store = self.hub, self.hub.store
        read, members = yield from store.strong_positions.plan(
            [self._pk(p) for p in parts], hub.keys.parts(self.space.name, self.name) if all_parts else None)
        positions: dict[str, str | None] = dict(zip(parts, read))
        if members is not None:
            fresh = valid_names(members, "partition name")
            hub.partitions.set(self.space.name, self.name, fresh)
            granted = self.space.allowed_partitions()
            new = [p for p in fresh if p not in positions and (granted is None or p in granted)]
            parts = parts + new
            positions.update({p: None for p in new})  # no position read: their tail is read from their base
        return parts, positions

    def _sources(self, parts: list[str], q: Query, use_graph: bool) -> Plan[list["_Source"]]:
        """The bases that answer: the version graph for the partitions it covers (principals granted every
        partition, several partitions queried), and each other partition's own base."""
        cache, info = self.hub.cache, self.space.info
        sources: list[_Source] = []
        rest = parts
        if use_graph and len(parts) > 1 and self.space.allowed_partitions() is None:
            graph = cache.cached_graph(self.space.name, self.name)
            if graph is None and not cache.graph_absent(self.space.name, self.name):
                graph = yield Offload(cache.get_graph, (self.space.name, self.name, info))
            inside = [p for p in parts if graph is not None and p in graph.parts]
            if graph is not None and inside and (
                    q.partitions is None or graph.partition_items(inside) >= NAMED_GRAPH_SHARE * graph.count):
                restrict = None if len(inside) == len(graph.parts) else tuple(inside)
                sources.append(_Source(graph, inside, restrict))
                rest = [p for p in parts if p not in graph.parts]
        for p in rest:  # a loaded base costs nothing; a first load is blocking work, off the event loop
            pid = self._pid(p)
            base = cache.cached(pid)
            sources.append(_Source(base if base is not None else (yield Offload(cache.get, (pid, info))), [p], None))
        return sources

    def _overlays(self, sources: list["_Source"], q: Query, positions: dict[str, str | None],
                  covered: bool) -> Plan[list[Overlay] | None]:
        """Each source's overlays: the follower's live views of its partitions (every level; at ``strong`` only
        a view that starts where the base does), plus this hub's own writes newer than them (session), plus the
        log tail after them for partitions whose log moved further (strong). None when the version graph cannot
        be caught up."""
        overlays: list[Overlay] = [{} for _ in sources]
        follower = self.hub.cache.follower
        if follower.buffers:
            exact = q.consistency == "strong"
            for src in sources:
                for p in src.parts:
                    view = follower.view(self._pid(p))
                    if view is not None and _usable(view, src.position(p), exact):
                        src.tails[p] = view
        if q.consistency == "eventual" or covered:
            return overlays
        need: list[tuple[int, str, str]] = []
        for si, src in enumerate(sources):
            parts = src.parts
            if q.consistency == "session":
                parts = self.hub.session.candidates(self.space.name, self.name, parts, src.position, src.base)
            for p in parts:
                pos = src.covers(p)  # the base's position, or its view's when the follower serves it
                if q.consistency == "session":
                    pid = self._pid(p)
                    ov = self.hub.session.overlay(pid, pos, self.hub.cache.covered(pid))
                else:
                    ov = {} if positions.get(p) is not None and positions[p] == pos else None
                if ov is None:
                    need.append((si, p, pos))
                elif ov:
                    _merge_overlay(overlays[si], ov)
        if need:  # the log tails of what moved (or session writes no longer all in memory), one round trip
            store, info = self.hub.store, self.space.info
            tails = yield from store.read_tails.plan([(self._pk(p), pos) for _, p, pos in need])
            for (si, p, _), tail in zip(need, tails):
                if tail is None and sources[si].tails.pop(p, None) is not None:  # read it from the base instead
                    tail = yield from store.read_tail.plan(self._pk(p), sources[si].position(p), 1 << 30)
                if tail is None and isinstance(sources[si].base, VersionBase):
                    return None
                if tail is None:
                    sources[si].base, tail = yield from self._reload_with_tail(p)
                    sources[si].tails.clear()
                if tail is not None:
                    _merge_overlay(overlays[si], tail_overlay(tail, info))
        return overlays

    def _reload_with_tail(self, partition: str) -> Plan[tuple[Any, Any]]:
        """The log no longer reaches back to the base (or is very long): load the newest snapshot and read its
        whole tail; answer exactly from a fresh copy if even that cannot be read."""
        cache, store, info = self.hub.cache, self.hub.store, self.space.info
        pid, pk = self._pid(partition), self._pk(partition)
        base = yield Offload(cache.reload, (pid, info))
        tail = yield from store.read_tail.plan(pk, base.position, 1 << 30)
        if tail is None:
            base = yield Offload(cache.exact, (pid, info))
            tail = yield from store.read_tail.plan(pk, base.position, 1 << 30)
        return base, tail

    def _search_sources(self, sources: list["_Source"], overlays: list[Overlay], q: Query,
                        ex: Explain | None) -> QueryResult:
        """Search every source with its overlay and merge: the query's result."""
        k, ef, metric = q.k, q.ef, self.space.metric
        per_source = []
        for src, ov in zip(sources, overlays):
            step = None
            tails = list(src.tails.values())
            if ex is not None:
                step = Step(_describe(src), "", 0, 0, 0)
                ex.steps.append(step)
                ex.overlay_items += sum(1 for it in ov.values() if it.vector is not None)
                ex.overlay_items += sum(t.n_live for t in tails)
            per_source.append(search_view(src.base, ov, q.vectors, k, q.where, ef, metric, exclude=q.exclude,
                                          restrict=src.restrict, step=step, tails=tails))
        if len(per_source) == 1:
            merged = per_source[0]
        else:
            merged = [merge_ranked([pp[i] for pp in per_source], k) for i in range(len(q.vectors))]
        res = QueryResult(ids=[m[0] for m in merged], distances=_pad([m[1] for m in merged], k),
                          metric=self.space.metric)
        if "metadatas" in q.include or "embeddings" in q.include:
            where_is = _locator([s.base for s in sources], overlays, [s.tails for s in sources])
            if "metadatas" in q.include:
                res.metadatas = [[where_is(i, "metadata") for i in row] for row in res.ids]
            if "embeddings" in q.include:
                res.embeddings = [
                    np.stack([where_is(i, "vector") for i in row]) if row else np.zeros((0, self.space.dim), np.float32)
                    for row in res.ids
                ]
        return res


@dataclass
class _Source:
    """A base and the partitions of the query it answers (``restrict``: a version graph limited to some), with
    the follower's views that serve on top of it (partition -> view)."""

    base: Any
    parts: list[str]
    restrict: tuple[str, ...] | None
    tails: dict[str, TailView] = field(default_factory=dict)

    def position(self, partition: str) -> str:
        """The change-log position of ``partition`` that the base covers."""
        return self.base.parts[partition] if isinstance(self.base, VersionBase) else self.base.position

    def covers(self, partition: str) -> str:
        """The position the answer for ``partition`` covers: its view's when the follower serves it."""
        view = self.tails.get(partition)
        return view.pos if view is not None else self.position(partition)

    def oldest(self) -> tuple[int, int]:
        """The oldest position the base covers (of any partition it holds)."""
        if isinstance(self.base, VersionBase):
            return self.base.oldest
        return pos_key(self.base.position)


@dataclass(frozen=True)
class _Route:
    """What one route's answer depends on, each compared by identity or counter (see QueryPath._routed)."""

    bkey: tuple[str, str, str]  # the cache id of the base that answers
    gen: int  # the cache's generation when checked (the route holds no base: eviction frees it)
    known: list[str]  # the hub's partition list of the version when checked
    grant: object  # the space's grant when checked
    follow: int  # the follower's epoch when checked
    session: int  # this hub's session-writes stamp when checked
    tails: tuple[TailView, ...]  # the follower's views to search with the base (as of that epoch)
    parts: tuple[str, ...]  # the partitions searched
    covers: list[str]  # the log position the base and views cover, per partition (what strong compares)
    whole: bool  # it searches every partition of the version (query_by_id may use it)
    others: tuple[tuple[str, str, str], ...]  # the version's other loaded bases (query_by_id asks them)


@dataclass
class _Answer:
    result: QueryResult
    positions: dict[str, str]  # partition -> the position of the base that answered for it


def _unit_rows(queries: np.ndarray) -> np.ndarray:
    """Query rows scaled to unit length, bit for bit as codec.normalise does (which names a zero row, and
    handles every other case)."""
    if len(queries) == 1:  # the same float64 norm and division as codec.normalise, with less numpy machinery
        square = float(_einsum("ij,ij->", queries, queries, dtype=np.float64))
        if 1e-30 < square < 1e30:
            unit: np.ndarray = np.divide(queries, np.float64(square ** 0.5), out=np.empty(queries.shape, np.float32),
                                         casting="unsafe", dtype=np.float64)
            return unit
    return codec.normalise(queries, what="query_embeddings")


def _covered(base: Any, id_: str) -> tuple[int, int]:
    """The log position up to which ``base`` covers the partition of ``id_`` (which it holds), as a sort key."""
    if isinstance(base, VersionBase):
        part = base.partition_of(id_)
        return pos_key(base.parts[part]) if part is not None else (0, 0)
    return pos_key(base.position)


def _base_position(cache: PartitionCache) -> Callable[[Pid], str | None]:
    """The log position of a partition's loaded base (None when none is loaded), for the session lookup."""

    def position(pid: Pid) -> str | None:
        base = cache.cached(pid)
        return None if base is None else base.position

    return position


def _without_io(plan: Plan[T]) -> T | None:
    """The plan's value if it completes without asking for any I/O; None (and the plan closed) otherwise."""
    try:
        plan.send(None)
    except StopIteration as stop:
        return stop.value
    plan.close()
    return None


def _describe(src: _Source) -> str:
    name = src.base.describe() if hasattr(src.base, "describe") else type(src.base).__name__
    if isinstance(src.base, VersionBase):
        return name + (f" limited to {', '.join(src.restrict)}" if src.restrict else "")
    return f"partition {src.parts[0]}: {name}"


def _merge_overlay(into: Overlay, ov: Overlay) -> None:
    """Add one partition's overlay to a source's: a deletion in one partition never hides the id's new home
    in another (an id moved between partitions)."""
    for id_, it in ov.items():
        if it.vector is None and id_ in into and into[id_].vector is not None:
            continue
        into[id_] = it


def _from_list(base: Any, lab: int, own: str, ov: Overlay, q: Query,
               tails: Sequence[Any] = ()) -> tuple[list[str], np.ndarray] | None:
    """One row of a neighbour-list answer (see :meth:`Version._listed`), None when the list falls short.
    ``ov`` is the query's overlay, ``tails`` the followed change logs under it (the overlay wins over them)."""
    k, n = q.k, int(base.nb_len[lab])
    labs, dists = base.nb_labels[lab, :n], base.nb_dists[lab, :n]
    if not ov and not tails and not q.exclude and q.where is None:  # the common case: the list's head
        if n < k and not base.nb_complete:
            return None
        return base.id_of[labs[:k]].tolist(), dists[:k]
    ids = base.id_of[labs].tolist()
    pred = q.where.predicate if q.where is not None else None
    keep = [j for j, (i, lb) in enumerate(zip(ids, labs.tolist())) if i not in ov and i not in q.exclude
            and not any(i in t for t in tails) and (pred is None or pred(base.meta_of[lb]))]
    if len(keep) < k and not base.nb_complete:
        return None  # items beyond the list may rank before what is left: search the graph
    keep = keep[:k]
    parts: list[Ranked] = [([ids[j] for j in keep], dists[keep])]
    extra = [(i, it) for i, it in ov.items() if it.vector is not None and i != own and i not in q.exclude
             and (pred is None or pred(it.metadata))]
    if not extra and not any(t.n_live for t in tails):
        return parts[0]
    vec = base.vector(own)[None, :]  # hnswlib's float32 copy: the exact distances the graph path would give
    if extra:
        mat = np.stack([it.vector for _, it in extra]).astype(np.float32)  # type: ignore[misc]
        found, d = exact_search(mat, vec, k, base.metric)
        parts.append(([extra[j][0] for j in found[0]], d[0]))
    hidden = q.exclude | ov.keys() | {own}
    parts += [t.search(vec, k, q.where, hidden)[0] for t in tails if t.n_live]
    return merge_ranked(parts, k)


def _metadata(id_: str, ov: Overlay, tails: Sequence[Any], base: Any) -> dict[str, Any] | None:
    """An answer's metadata, from the newest place that holds the id (overlay, followed log, snapshot)."""
    if id_ in ov:
        return ov[id_].metadata
    for t in tails:
        it = t.item(id_)
        if it is not None:
            return it.metadata
    return base.metadata(id_)


def _drop_own(res: QueryResult, id_list: list[str], n_results: int) -> QueryResult:
    """A query_by_id result without each row's own item, cut to ``n_results``."""
    return _take(res, [[j for j, x in enumerate(r) if x != own][:n_results] for r, own in zip(res.ids, id_list)],
                 n_results)


def _take(res: QueryResult, keep: list[list[int]], k: int) -> QueryResult:
    """``res`` reduced to the columns ``keep`` of each row, padded to ``k`` columns as the query path pads."""
    res.ids = [[r[j] for j in ks] for r, ks in zip(res.ids, keep)]
    res.distances = _pad([d[ks] for d, ks in zip(res.distances, keep)], k)
    if res.metadatas is not None:
        res.metadatas = [[m[j] for j in ks] for m, ks in zip(res.metadatas, keep)]
    if res.embeddings is not None:
        res.embeddings = [e[ks] for e, ks in zip(res.embeddings, keep)]
    return res


def _usable(view: TailView, base_pos: str, exact: bool) -> bool:
    """Whether the follower's ``view`` serves on top of a base at ``base_pos``. Exactly (strong, and what the
    strong probe compares) when it holds every change after the base: ``start <= base_pos <= view.pos``. For
    eventual and session also a view that starts after the base (just loaded, changes in between not read yet):
    it is newer than the base for every id it holds. Never one the base is newer than (``view.pos < base_pos``)."""
    if not view.n and view.start == base_pos:
        return False  # nothing to add
    if exact:
        return view.covers(base_pos)
    return pos_key(base_pos) <= pos_key(view.pos)


def _locator(bases: list[Any], overlays: list[Overlay], tails: list[dict[str, TailView]]):  # noqa: ANN202
    def find(id_: str, what: str) -> Any:
        # an answer's id is live somewhere: a delete row (the id moved to another partition) is not its data
        for base, ov, views in zip(bases, overlays, tails):
            if id_ in ov and ov[id_].vector is not None:
                return getattr(ov[id_], what)
            for view in views.values():
                it = view.item(id_)
                if it is not None and it.vector is not None:
                    return getattr(it, what)
            if id_ in base:
                return base.metadata(id_) if what == "metadata" else base.vector(id_)
        return None

    return find


def _pad(rows: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Distances as one float32 array ``(len(rows), k)``; a row with fewer than ``k`` matches ends in inf."""
    if all(len(r) == k for r in rows):
        return np.array(rows, dtype=np.float32).reshape(len(rows), k)
    out = np.full((len(rows), k), np.inf, dtype=np.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r[:k]
    return out
