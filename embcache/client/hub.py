"""The synchronous client: :func:`connect`, :class:`Hub`, :class:`Space`, :class:`Version`.

>>> import embcache
>>> hub = embcache.connect()                                  # embedded Redis when no URL is given
>>> space = hub.create_space("movies", dim=64, metric="cosine")
>>> v1 = space.create_version()
>>> v1.upsert(["m1", "m2"], vectors, metadatas=[{"genre": "drama"}, {"genre": "comedy"}])
>>> v1.query(vectors[:1], n_results=2).ids
[['m1', 'm2']]
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np

from ..core import codec
from ..core.drift import DriftReport
from ..core.engine import Explain, Query, check_include
from ..core.errors import (
    AlreadyExists,
    BuildTimeout,
    CorruptRecord,
    DriftTooLarge,
    EmbcacheError,
    InvalidInput,
    NotFound,
    OpenDefaultUserWarning,
    OutOfMemory,
    PartitionNotFound,
    PermissionDenied,
    SnapshotCorrupt,
    Unavailable,
    VersionNotFound,
    VersionSealed,
)
from ..core.examples import Strategy
from ..core.keys import Keys, check_name
from ..core.views import OverlayItem
from ..redis import metrics
from ..redis.acl import Credentials, Grant
from ..redis.builds import BuildHandle, PartitionStats, partition_stats
from ..redis.catalogue import Catalogue, SpaceRecord, VersionRecord
from ..redis.connection import (
    check_url,
    env_credentials,
    normalize_url,
    read_password_file,
    redact_url,
    url_username,
)
from ..redis.plan import Plan, Sleep
from ..redis.principals import Principals
from ..redis.probe import StrongProbe, StrongProbes
from ..redis.store import Store, open_client, translate_errors
from .cache import DEFAULT_OVERLAY_BYTES, PartitionCache, SpaceInfo
from .drift import check_max_drift
from .drift import compare as compare_versions
from .queries import QueryPath, _without_io
from .recommend import recommend_plan
from .results import Consistency, GetResult, QueryResult
from .state import SESSION_ITEMS, KnownPartitions, SessionWrites

__all__ = ["connect", "Hub", "Space", "Version", "QueryResult", "GetResult", "Consistency"]

T = TypeVar("T")
_log = logging.getLogger("embcache")
DEFAULT_CACHE_BYTES = 2 << 30
_INCLUDE_GET = ("embeddings", "metadatas")
_INCLUDE_QUERY = ("distances", "metadatas", "embeddings")


def connect(
    url: str | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
    password_file: str | os.PathLike[str] | None = None,
    cluster: bool | None = None,
    prefix: str = "emb",
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    refresh_interval: float = 1.0,
    follow: bool = True,
    overlay_bytes: int = DEFAULT_OVERLAY_BYTES,
) -> "Hub":
    """Connect to a hub.

    ``url`` is ``redis://``, ``rediss://``, ``unix://``, ``valkey://`` or ``valkeys://``; without it
    ``EMBCACHE_URL`` is used, and without that the embedded server (see :mod:`embcache.server`) is started or
    reused, with its operator password. Credentials: ``username``/``password`` (or ``password_file``, whose
    first line is the password), else ``EMBCACHE_USERNAME`` and ``EMBCACHE_PASSWORD`` / ``EMBCACHE_PASSWORD_FILE``
    (which, unlike command-line arguments, ``ps`` does not show). Redis Cluster is detected unless ``cluster``
    says. ``cache_bytes`` bounds the memory of loaded partitions; ``refresh_interval`` is how often (seconds)
    loaded partitions are checked for new snapshots. ``follow`` (default on) keeps a live overlay of every
    loaded partition's change log, so ``eventual`` and ``session`` see every client's writes within
    milliseconds (docs/consistency.md); with ``follow=False`` they see what workers published (snapshots and
    delta segments); ``overlay_bytes`` bounds the memory of those overlays.
    """
    if password_file is not None:
        if password is not None:
            raise InvalidInput("give password or password_file, not both")
        password = read_password_file(password_file)
    if username is None and password is None:
        username, password = env_credentials()
    if url is None:
        url = os.environ.get("EMBCACHE_URL") or None
    embedded = None
    if url is None:
        from ..redis.server import attach

        embedded = attach()
        url = embedded.url
        if username is None and password is None:
            password = embedded.password  # the owner's own connection: the home's operator
    url = normalize_url(url)
    try:
        check_url(url)
        if not isinstance(cache_bytes, int) or cache_bytes <= 0:
            raise InvalidInput("cache_bytes must be a positive integer")
        if not isinstance(follow, bool):
            raise InvalidInput(f"follow must be True or False, got {follow!r:.60}")
        if isinstance(overlay_bytes, bool) or not isinstance(overlay_bytes, int) or overlay_bytes <= 0:
            raise InvalidInput("overlay_bytes must be a positive integer")
    except InvalidInput:
        if embedded is not None:
            embedded.close()
        raise
    if embedded is None and username is None and password is None:
        from ..redis.server import embedded_password

        password = embedded_password(url)  # the URL of this user's embedded server, given explicitly
    try:
        client = open_client(url, username=username, password=password, cluster=cluster)
        hub = Hub(client, url=url, prefix=prefix, cache_bytes=cache_bytes, refresh_interval=refresh_interval,
                  username=username if username is not None else url_username(url), password=password,
                  follow=follow, overlay_bytes=overlay_bytes)
    except BaseException:
        if embedded is not None:
            embedded.close()
        raise
    hub._embedded = embedded
    return hub


class Hub:
    """One Redis deployment holding many spaces. Create it with :func:`connect`; close it (or use ``with``)."""

    def __init__(
        self,
        client: Any,
        *,
        url: str = "",
        prefix: str = "emb",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        refresh_interval: float = 1.0,
        username: str | None = None,
        password: str | None = None,
        follow: bool = True,
        overlay_bytes: int = DEFAULT_OVERLAY_BYTES,
    ) -> None:
        self.url = url
        self.username = username
        self._password = password
        self.keys = Keys(prefix)
        self.store = Store(client, self.keys)
        self.store.ensure_functions()
        self.catalogue = Catalogue(self.store)
        self.principals = Principals(self.store)
        self.cache = PartitionCache(self.store, cache_bytes, refresh_interval, follow=follow,
                                    overlay_bytes=overlay_bytes)
        self.partitions = KnownPartitions(self.catalogue)  # partition lists of the versions this hub uses
        self.session = SessionWrites()  # this hub's own writes not yet in a loaded base (session reads)
        self.defaults: dict[str, Version] = {}  # space -> its default version, for Space.query
        self.cache.on_refresh += [self.partitions.refresh, self._refresh_defaults]
        self._records: dict[str, SpaceRecord] = {}
        self.probes = StrongProbes(client)  # the connection strong probes use (see Version._strong_probe_send)
        self._embedded: Any = None  # this hub's share of the embedded server (embcache.server.Embedded), if any

    @property
    def is_cluster(self) -> bool:
        """True when the data lives on Redis Cluster."""
        return self.store.is_cluster

    # spaces -----------------------------------------------------------------------------------------------
    def create_space(
        self,
        name: str,
        dim: int,
        metric: str = "cosine",
        *,
        dtype: str = "float32",
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        neighbours: int = 0,
        exist_ok: bool = False,
    ) -> "Space":
        """Create a space; :class:`~embcache.errors.AlreadyExists` if the name is taken.

        ``neighbours`` (0 = off, at most 100): the workers also store each item's ``neighbours`` nearest items in
        its partition's snapshot, and :meth:`Version.query_by_id` answers from those lists (microseconds instead
        of a graph search) when they cover ``n_results``.

        With ``exist_ok`` (get-or-create, for apps that create their space at every start) an existing space of
        that name is returned when its parameters are the ones asked for; one with other parameters is still
        :class:`~embcache.errors.AlreadyExists`, naming the difference.
        """
        return self.store.run(self._create_space(name, dim, metric, dtype, M, ef_construction, ef, neighbours,
                                                 exist_ok))

    def _create_space(self, name: str, dim: int, metric: str, dtype: str, M: int, ef_construction: int, ef: int,
                      neighbours: int, exist_ok: bool) -> Plan["Space"]:
        check_name(name, "space name")
        params = codec.check_space_params(dim, metric, dtype, M, ef_construction, ef, neighbours)
        record = SpaceRecord(name=name, created=time.time(), **params)
        try:
            yield from self.catalogue.create_space.plan(record)
        except AlreadyExists:
            if not exist_ok:
                raise
            existing = yield from self.catalogue.get_space.plan(name)
            differ = {f: (getattr(existing, f), v) for f, v in params.items() if getattr(existing, f) != v}
            if differ:
                raise AlreadyExists(f"space {name!r} exists with other parameters: " + ", ".join(
                    f"{f}={have!r} (asked for {want!r})" for f, (have, want) in differ.items())) from None
            record = existing
        self._records[name] = record
        return (yield from self._open_space(record))

    def space(self, name: str) -> "Space":
        """An existing space; :class:`~embcache.errors.NotFound` otherwise."""
        return self.store.run(self._space(name))

    def _space(self, name: str) -> Plan["Space"]:
        return (yield from self._open_space((yield from self._record(name))))

    def _open_space(self, record: SpaceRecord) -> Plan["Space"]:
        """The :class:`Space` of ``record``, with this hub's principal's grant on it (when it is not the operator)."""
        grant = None
        if self.username not in (None, "default"):
            with contextlib.suppress(PermissionDenied):
                grant = yield from self.principals.grant_of.plan(record.name, self.username)
        return Space(self, record, grant)

    def spaces(self) -> list[str]:
        """Names of all spaces, sorted."""
        return self.catalogue.list_spaces()

    def drop_space(self, name: str) -> None:
        """Delete a space with all its versions, data and snapshots, and every principal's grant on it."""
        self.store.run(self._drop_space(name))

    def _drop_space(self, name: str) -> Plan[None]:
        check_name(name, "space name")
        with contextlib.suppress(CorruptRecord):  # a damaged record is one more reason to drop the space
            yield from self._record(name)
        with _named("drop_space", name, self.username), translate_errors(f"drop space {name}", write=True):
            # grants first, so nobody writes while the keys go; then every key under the space's tags, also
            # keys planted for versions or partitions the catalogue does not list; the listing last: a drop
            # cut short can simply be run again
            yield from self.principals.revoke_space.plan(name)
            yield from self.catalogue.delete_space_keys.plan(name)
            yield from self.catalogue.unlist_space.plan(name)
        self._records.pop(name, None)
        self.defaults.pop(name, None)
        self.cache.drop(lambda pid: pid[0] == name)
        self.session.drop(lambda pid: pid[0] == name)
        self.partitions.drop(lambda pid: pid[0] == name)

    def _forget_version(self, space: str, version: str) -> None:
        """Drop what this hub keeps about a deleted version: loaded partitions, session writes, defaults."""
        self.defaults.pop(space, None)
        self.cache.drop(lambda pid: pid[0] == space and pid[1] == version)
        self.session.drop(lambda pid: pid[:2] == (space, version))
        self.partitions.drop(lambda pid: pid[:2] == (space, version))

    def _record(self, name: str) -> Plan[SpaceRecord]:
        rec = self._records.get(name)
        if rec is None:
            rec = yield from self.catalogue.get_space.plan(name)
            self._records[name] = rec
        return rec

    # access control (operator) ---------------------------------------------------------------------------
    def grant(self, principal: str, *, space: str, role: str = "reader",
              partitions: Sequence[str] | None = None) -> Credentials:
        """Create or update the Redis ACL user ``principal`` with ``role`` on ``space`` (optionally only on
        ``partitions``). Returns the credentials; the password is shown once, for a new principal only.

        Roles: ``reader`` (get, query, stats), ``writer`` (+ upsert, delete, build requests), ``admin``
        (+ versions, aliases, seal, rollback). Redis enforces them: see :mod:`embcache.acl`.
        """
        return self.store.run(self._grant(principal, space, role, partitions))

    def _grant(self, principal: str, space: str, role: str, partitions: Sequence[str] | None) -> Plan[Credentials]:
        if isinstance(partitions, str):
            partitions = [partitions]
        if partitions is not None and not isinstance(partitions, (list, tuple)):
            raise InvalidInput(f"partitions must be None (all) or a list of partition names, got {partitions!r:.60}")
        grant = Grant(space, role, tuple(partitions) if partitions is not None else None)
        yield from self._record(space)  # the space must exist
        if (yield from self.principals.default_user_open.plan()):
            self._warn_default_user_open()
        return (yield from self.principals.grant.plan(principal, grant))

    @staticmethod
    def _warn_default_user_open() -> None:
        """Warn (OpenDefaultUserWarning, and the log) that anyone can log in as ``default``: grants then protect
        nothing, since every principal can ``AUTH default x`` and become the operator."""
        msg = ("the Redis default user has no password: any principal can run `AUTH default <anything>` and "
               "become the operator, so this grant protects nothing. Give the default user a password "
               "(`requirepass`, or `user default on >PASSWORD` in the ACL file) or turn it off; see "
               "docs/access-control.md. (The embedded server does this itself.)")
        _log.warning(msg)
        warnings.warn(OpenDefaultUserWarning(msg), stacklevel=_outside_embcache())

    def revoke(self, principal: str, *, space: str | None = None) -> None:
        """Remove ``principal``'s grant on ``space``, or the principal itself when ``space`` is None."""
        self.principals.revoke(principal, space)

    def list_principals(self) -> dict[str, dict[str, Any]]:
        """Every principal with its grants (never secrets)."""
        return self.principals.list()

    def rotate(self, principal: str) -> Credentials:
        """A new secret for ``principal``; the old one stops working at once."""
        return self.principals.rotate(principal)

    def create_worker_principal(self, name: str = "worker") -> Credentials:
        """Create (or re-key) the principal workers connect with: the only one allowed RQ's keys."""
        return self.principals.worker(name)

    # lifecycle --------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the refresher and close the connections."""
        self.probes.close()
        self.cache.close()
        self.store.close()
        if self._embedded is not None:
            self._embedded.close()
            self._embedded = None

    def __enter__(self) -> "Hub":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Hub({redact_url(self.url)!r})"

    def _refresh_defaults(self) -> None:
        for name in list(self.defaults):
            try:
                self.space(name).default_version()
            except NotFound:  # dropped, or no versions any more
                self.defaults.pop(name, None)


def _check_batch(batch: object) -> int:
    """``ids``'s page size: an integer in [1, 100000]."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 1 <= batch <= 100_000:
        raise InvalidInput(f"batch must be an integer in [1, 100000], got {batch!r:.60}")
    return int(batch)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _outside_embcache() -> int:
    """The ``stacklevel`` of the caller's first frame outside this package, so a warning names the user's line
    (a plan runs at a different depth under the sync and the asyncio driver)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


@contextlib.contextmanager
def _named(operation: str, space: str, who: str | None) -> Iterator[None]:
    """Name the operation, the space and the principal in a :class:`PermissionDenied` from Redis."""
    try:
        yield
    except PermissionDenied as exc:
        if getattr(exc, "named", False):
            raise
        err = PermissionDenied(
            f"{operation} on space {space!r} is not allowed for principal {who or 'default'!r} ({exc})")
        err.named = True  # type: ignore[attr-defined]
        raise err from None


def _plain_options(where: Any, ef: Any, exclude: Any, include: Any) -> bool:
    """True for the default options of a query: what a route can answer (client/queries.py, "routes")."""
    return where is None and ef is None and exclude is None and type(include) is tuple and include == ("distances",)


_READS = frozenset({"query", "query_by_id", "recommend", "get", "compare"})  # calls that write nothing


def _guard(operation: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Name the operation, the space and the principal in a :class:`PermissionDenied` from Redis; call a read
    again, once, when a loaded base was refused as corrupt during the call."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:  # a plain try, not a context manager: this wraps the query hot path
                return fn(self, *args, **kwargs)
            except SnapshotCorrupt as exc:
                if operation not in _READS or not getattr(exc, "refused", False):
                    raise
                # a loaded base's metadata table was bad on first use (core.snapshot.LazyMetadata): the cache
                # has forgotten it and refused its snapshot, so the call again is answered without it, once
                return fn(self, *args, **kwargs)
            except PermissionDenied:
                space = self.name if isinstance(self, Space) else self.space.name
                with _named(operation, space, self.hub.username):
                    raise

        return wrapper

    return decorate


class Space:
    """A named embedding space. Get one from :meth:`Hub.create_space` or :meth:`Hub.space`."""

    def __init__(self, hub: Hub, record: SpaceRecord, grant: dict[str, Any] | None = None) -> None:
        self.hub = hub
        self.record = record
        self.name = record.name
        self.dim = record.dim
        self.metric = record.metric
        self.dtype = record.dtype
        self.M = record.M
        self.ef_construction = record.ef_construction
        self.ef = record.ef
        self.neighbours = record.neighbours
        self.info = SpaceInfo(record.dim, record.dtype, record.metric, record.ef)
        self.grant = grant  # this hub's principal's grant, when it is not the operator

    def allowed_partitions(self) -> list[str] | None:
        """The partitions this hub's principal was granted on the space (None: all)."""
        return None if self.grant is None else self.grant.get("partitions")

    def _require(self, role: str, operation: str, partition: str | None = None) -> None:
        """Refuse early, before anything is written, what Redis would refuse part-way."""
        if self.grant is None:
            return
        order = ["reader", "writer", "admin"]
        who = self.hub.username
        err = None
        if order.index(self.grant["role"]) < order.index(role):
            err = PermissionDenied(f"{operation} on space {self.name!r} needs the {role} role; "
                                   f"principal {who!r} is a {self.grant['role']}")
        parts = self.allowed_partitions()
        if err is None and partition is not None and parts is not None and partition not in parts:
            err = PermissionDenied(f"{operation} on partition {partition!r} of space {self.name!r} is not granted "
                                   f"to principal {who!r} (granted: {', '.join(parts)})")
        if err is not None:
            err.named = True  # type: ignore[attr-defined]
            raise err

    def __repr__(self) -> str:
        return f"Space({self.name!r}, dim={self.dim}, metric={self.metric!r}, dtype={self.dtype!r})"

    @_guard("create_version")
    def create_version(self, name: str | None = None, *, description: str = "") -> "Version":
        """A new open version, named ``v1``, ``v2``, ... unless ``name`` is given."""
        return self.hub.store.run(self._create_version(name, description))

    def _create_version(self, name: str | None, description: str) -> Plan["Version"]:
        if not isinstance(description, str):
            raise InvalidInput("description must be a str")
        try:
            description.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate: Redis's JSON decoder would refuse it half-way
            raise InvalidInput(f"description is not valid Unicode: {exc}") from None
        rec = yield from self.hub.catalogue.create_version.plan(self.name, name, description)
        self.hub.defaults.pop(self.name, None)
        return Version(self, rec)

    def version(self, name: str) -> "Version":
        """A version by name or alias (``space.version("live")``)."""
        return self.hub.store.run(self._version(name))

    def _version(self, name: str) -> Plan["Version"]:
        target = yield from self.hub.catalogue.resolve.plan(self.name, name)
        return Version(self, (yield from self.hub.catalogue.get_version.plan(self.name, target)))

    def versions(self) -> list["Version"]:
        """All versions, oldest first."""
        return self.hub.store.run(self._versions())

    def _versions(self) -> Plan[list["Version"]]:
        return [Version(self, r) for r in (yield from self.hub.catalogue.list_versions.plan(self.name))]

    @_guard("drop_version")
    def drop_version(self, name: str) -> None:
        """Delete the version ``name`` with its items and snapshots (give its name, not an alias).

        :class:`~embcache.errors.InvalidInput` while an alias points at it (move the alias first: it would point at
        nothing), :class:`~embcache.errors.NotFound` if there is no such version. Its name is not reused by
        :meth:`create_version`'s numbering. Only the operator may drop a version: an ``admin`` principal gets
        :class:`~embcache.errors.PermissionDenied` (Redis does not let it delete keys, so that it cannot drop a
        sealed version and recreate it unsealed).
        """
        self.hub.store.run(self._drop_version(name))

    def _drop_version(self, name: str) -> Plan[None]:
        cat = self.hub.catalogue
        yield from cat.get_version.plan(self.name, name)
        pointing = sorted(a for a, v in (yield from cat.aliases.plan(self.name)).items() if v == name)
        if pointing:
            raise InvalidInput(f"alias {', '.join(map(repr, pointing))} of space {self.name!r} points at {name!r}: "
                               "point it at another version first (set_alias, or `embcache promote`)")
        yield from cat.drop_version.plan(self.name, name)
        self.hub._forget_version(self.name, name)

    @_guard("set_alias")
    def set_alias(self, alias: str, version: "Version | str") -> None:
        """Point ``alias`` at ``version`` atomically; the previous target is kept for :meth:`rollback`."""
        self.hub.store.run(self._set_alias(alias, version))

    def _set_alias(self, alias: str, version: "Version | str") -> Plan[None]:
        name = version.name if isinstance(version, Version) else version
        if isinstance(version, Version) and version.space.name != self.name:
            raise InvalidInput(f"version {name!r} belongs to space {version.space.name!r}, not {self.name!r}")
        yield from self.hub.catalogue.set_alias.plan(self.name, alias, name)
        self.hub.defaults.pop(self.name, None)

    @_guard("promote")
    def promote(self, version: "Version | str", alias: str = "live", *, max_drift: float | None = None,
                sample: int = 1000, k: int = 10, seed: int = 0) -> DriftReport | None:
        """Point ``alias`` at ``version`` (``set_alias(alias, version)``), optionally only if it has not drifted.

        With ``max_drift`` (a number in ``[0, 1]``) the version the alias points at now is first compared with
        ``version`` (:meth:`compare` with ``sample``, ``k``, ``seed``): ``drift = 1 - mean neighbour overlap@k``,
        0 when every sampled shared item kept its ``k`` nearest neighbours, 1 when none did. Above ``max_drift``
        the alias is not moved and :class:`~embcache.errors.DriftTooLarge` is raised, its ``report`` attribute
        holding the :class:`~embcache.core.drift.DriftReport`. ``max_drift=0.3`` accepts a new model whose items
        keep 70 % of their neighbours on average. The report is returned (None without ``max_drift``, or when
        the alias does not exist yet or already points at ``version``: nothing to compare with).
        """
        return self.hub.store.run(self._promote(version, alias, max_drift, sample, k, seed))

    def _promote(self, version: "Version | str", alias: str, max_drift: float | None, sample: int, k: int,
                 seed: int) -> Plan[DriftReport | None]:
        bound = check_max_drift(max_drift)
        report = None
        if bound is not None:
            name = version.name if isinstance(version, Version) else version
            current = (yield from self.hub.catalogue.aliases.plan(self.name)).get(alias)
            if current is not None and current != name:
                report = yield from compare_versions(self, current, version, sample=sample, k=k, seed=seed)
                if report.drift > bound:
                    raise DriftTooLarge(
                        f"not promoting {self.name}/{report.b} to {alias!r}: drift {report.drift:.3f} (mean "
                        f"neighbour overlap@{report.k} {report.overlap_mean:.3f} over {report.sampled} shared items, "
                        f"vs {report.a}) is above max_drift={bound}", report)
        yield from self._set_alias(alias, version)
        return report

    @_guard("compare")
    def compare(self, a: "Version | str", b: "Version | str", *, sample: int = 1000, k: int = 10, seed: int = 0,
                ef: int | None = None, consistency: Consistency = "session") -> DriftReport:
        """How version ``b`` differs from version ``a`` (names, aliases or :class:`Version` objects), as a
        :class:`~embcache.core.drift.DriftReport` (frozen; ``str()`` is a readable summary, ``as_dict()`` JSON).

        - ids only in ``a``, only in ``b``, in both (all ids are listed, with ``HSCAN``);
        - neighbour overlap@``k`` over a sample of ``sample`` shared items (chosen at random with ``seed``, so a
          rerun compares the same items): ``|N_a(i) & N_b(i)| / k``, where ``N_v(i)`` is the item's ``k`` nearest
          neighbours in version ``v`` (itself left out, over all of ``v``'s items, with ``ef`` and
          ``consistency`` as in :meth:`Version.query`); its mean, quantiles and histogram, and the ids whose
          neighbourhoods changed most;
        - the shift of the sampled items' norms and of their centroid.

        :class:`~embcache.errors.InvalidInput` when the versions share no item. Costs two ``get`` and two batched
        queries per 1000 sampled items, plus listing both versions' ids.
        """
        return self.hub.store.run(compare_versions(self, a, b, sample=sample, k=k, seed=seed, ef=ef,
                                                   consistency=consistency))

    def aliases(self) -> dict[str, str]:
        """``{alias: version name}``."""
        return self.hub.catalogue.aliases(self.name)

    def alias_history(self, alias: str) -> list[str]:
        """Previous targets of ``alias``, most recent first."""
        return self.hub.catalogue.alias_history(self.name, alias)

    @_guard("rollback")
    def rollback(self, alias: str = "live") -> "Version":
        """Point ``alias`` back at its previous target and return that version."""
        return self.hub.store.run(self._rollback(alias))

    def _rollback(self, alias: str) -> Plan["Version"]:
        target = yield from self.hub.catalogue.rollback.plan(self.name, alias)
        self.hub.defaults.pop(self.name, None)
        return (yield from self._version(target))

    def default_version(self) -> "Version":
        """The version ``live`` points at, else the newest one."""
        return self.hub.store.run(self._default_version(True))

    def _default_version(self, fresh: bool) -> Plan["Version"]:
        """The default version; ``fresh=False`` accepts the hub's cached answer (the refresher keeps it current,
        and this hub's own alias moves and new versions update it at once)."""
        cached = None if fresh else self.hub.defaults.get(self.name)
        if cached is not None:
            return cached
        cat = self.hub.catalogue
        aliases = yield from cat.aliases.plan(self.name)
        if "live" in aliases:
            rec = yield from cat.get_version.plan(self.name, aliases["live"])
        else:
            versions = yield from cat.list_versions.plan(self.name)
            if not versions:
                raise VersionNotFound(f"space {self.name!r} has no versions")
            rec = versions[-1]
        version = self.hub.defaults.get(self.name)
        if version is not None and version.name == rec.name:  # the same version: keep its object (and routes)
            version.state, version.description = rec.state, rec.description
            return version
        version = Version(self, rec)
        self.hub.defaults[self.name] = version
        return version

    def _default(self, kwargs: dict[str, Any]) -> "Version":
        """The default version for a call with ``kwargs``: resolved afresh at strong, else the hub's cached one
        (no plan to run on the query hot path)."""
        strong = kwargs.get("consistency") == "strong"
        version = None if strong else self.hub.defaults.get(self.name)
        return version if version is not None else self.hub.store.run(self._default_version(strong))

    def query(self, query_embeddings: Any, n_results: int = 10, **kwargs: Any) -> QueryResult:
        """:meth:`Version.query` on :meth:`default_version` (resolved afresh for ``consistency="strong"``,
        from the hub's cache otherwise)."""
        return self._default(kwargs).query(query_embeddings, n_results, **kwargs)

    def query_by_id(self, ids: Sequence[str], n_results: int = 10, **kwargs: Any) -> QueryResult:
        """:meth:`Version.query_by_id` on :meth:`default_version` (cached as for :meth:`query`)."""
        return self._default(kwargs).query_by_id(ids, n_results, **kwargs)

    def recommend(self, positive: Sequence[Any], negative: Sequence[Any] | None = None, n_results: int = 10,
                  **kwargs: Any) -> QueryResult:
        """:meth:`Version.recommend` on :meth:`default_version` (cached as for :meth:`query`)."""
        return self._default(kwargs).recommend(positive, negative, n_results, **kwargs)


class Version(QueryPath):
    """One generation of a space's embeddings: where items are written and queried."""

    def __init__(self, space: Space, record: VersionRecord) -> None:
        self.space = space
        self.hub = space.hub
        self.name = record.name
        self.state = record.state
        self.description = record.description
        self._probes: dict[tuple[tuple[str, ...], bool], StrongProbe] = {}  # partitions -> their strong probe
        self._plain: dict[tuple[int, str], Query] = {}  # query_by_id's Query for the default options, per (k, level)
        self._routes: dict[tuple[tuple[str, ...] | None, str], Any] = {}  # the common query's routes (QueryPath)

    def __repr__(self) -> str:
        return f"Version({self.space.name!r}, {self.name!r}, state={self.state!r})"

    # writes -----------------------------------------------------------------------------------------------
    @_guard("upsert")
    def upsert(
        self, ids: Sequence[str], embeddings: Any, metadatas: Sequence[dict[str, Any] | None] | None = None,
        partition: str = "default",
    ) -> int:
        """Insert or replace items in ``partition``; returns how many were written.

        ``embeddings`` is array-like ``(n, dim)``. The whole call is atomic on its partition: all items and the
        change-log entry are written together, or nothing is. Metadata replaces the item's previous metadata
        (``None`` clears it). An id may live in only one partition of a version.
        """
        return self._run(self._upsert(ids, embeddings, metadatas, partition))

    def _upsert(self, ids: Any, embeddings: Any, metadatas: Any, partition: str) -> Plan[int]:
        check_name(partition, "partition name")
        self.space._require("writer", "upsert", partition)
        id_list = codec.check_ids(ids)
        mat = codec.check_matrix(embeddings, self.space.dim)
        if mat.shape[0] != len(id_list):
            raise InvalidInput(f"got {len(id_list)} ids but {mat.shape[0]} embeddings")
        meta_texts = codec.check_metadatas(metadatas, len(id_list))
        if self.space.metric == "cosine":
            mat = codec.normalise(mat)
        blobs = codec.encode_vectors(mat, self.space.dtype)
        hub, store = self.hub, self.hub.store
        claim = yield from self._refuse_ids_elsewhere(partition, id_list)  # before registering: a refusal adds nothing
        pid = self._pid(partition)
        added = yield from hub.partitions.register(pid)
        try:
            pos = yield from store.write_upserts.plan(self._pk(partition), id_list, blobs, meta_texts)
        except VersionSealed:
            raise self._sealed() from None
        except (OutOfMemory, PermissionDenied, Unavailable):  # refused: nothing written, so register nothing
            if added:
                yield from hub.partitions.unregister_empty(pid)
            raise
        if claim:
            yield from self._claim(partition, id_list)
        yield from self._mark_dirty(partition)
        if len(id_list) > SESSION_ITEMS:
            hub.session.remember(pid, {}, pos, overflow=True)  # a bulk load: session reads the log tail instead
        else:
            stored = codec.decode_vectors(blobs, self.space.dim, self.space.dtype)
            metas = codec.parse_json_objects(meta_texts)  # copies: the caller may change its dicts afterwards
            hub.session.remember(pid, {i: OverlayItem(pos, stored[j], metas[j]) for j, i in enumerate(id_list)}, pos)
        return len(id_list)

    @_guard("delete")
    def delete(self, ids: Sequence[str], partition: str | None = None) -> int:
        """Delete items (from ``partition``, or wherever they are); returns how many existed."""
        return self._run(self._delete(ids, partition))

    def _delete(self, ids: Any, partition: str | None) -> Plan[int]:
        id_list = list(dict.fromkeys(codec.check_ids(ids, allow_duplicates=True)))
        self.space._require("writer", "delete", partition)
        parts = yield from self._partitions_arg(None if partition is None else [partition])
        rec = yield from self.hub.catalogue.get_version.plan(self.space.name, self.name)
        self.state = rec.state
        if rec.state != "open":
            raise self._sealed()
        store, total = self.hub.store, 0
        for p in parts:
            try:
                gone, pos = yield from store.write_deletes.plan(self._pk(p), id_list)
            except VersionSealed:
                raise self._sealed() from None
            if pos is not None:
                yield from self._mark_dirty(p)
                self.hub.session.remember(self._pid(p), {i: OverlayItem(pos, None, None) for i in gone}, pos)
                if gone:
                    yield from self._unclaim(p, gone)
            total += len(gone)
        return total

    def _claim(self, partition: str, ids: list[str]) -> Plan[None]:
        """Record the written ids in the owners map. A failure is logged, not raised: the write committed, and
        the partition's next build claims them (until then an upsert elsewhere is checked against the map only)."""
        store = self.hub.store
        try:
            yield from store.claim.plan(self.space.name, self.name, partition, ids)
        except EmbcacheError as exc:
            _log.warning("wrote to %s/%s/%s, but could not claim the ids in the owners map: %s", self.space.name,
                         self.name, partition, exc)

    def _unclaim(self, partition: str, ids: list[str]) -> Plan[None]:
        """Drop deleted ids from the owners map. A failure is logged, not raised: the delete committed, and a stale
        claim only costs the next upsert of the id elsewhere one lookup."""
        store = self.hub.store
        try:
            yield from store.unclaim.plan(self.space.name, self.name, partition, ids)
        except EmbcacheError as exc:
            _log.warning("deleted from %s/%s/%s, but the owners map kept the claims: %s", self.space.name, self.name,
                        partition, exc)

    def _mark_dirty(self, partition: str) -> Plan[None]:
        """Ask for a build after a write that committed. A refused mark (memory limit, outage) is logged, not
        raised: the data is stored, and the dispatcher's reconciliation finds the partition behind its log."""
        store = self.hub.store
        try:
            yield from store.mark_dirty.plan(self.space.name, self.name, partition)
        except EmbcacheError as exc:
            _log.warning("wrote to %s/%s/%s but could not mark it for a build (%s); the workers' reconciliation "
                        "will pick it up", self.space.name, self.name, partition, exc)

    def _sealed(self) -> VersionSealed:
        self.state = "sealed"
        return VersionSealed(f"version {self.space.name}/{self.name} is sealed (read-only): write to a new version "
                             f"(space.create_version()) instead")

    @_guard("seal")
    def seal(self) -> None:
        """Make the version read-only (idempotent; a seal that was cut short is completed)."""
        self.hub.store.run(self._seal())

    def _seal(self) -> Plan[None]:
        yield from self.hub.catalogue.seal.plan(self.space.name, self.name)
        self.state = "sealed"

    @_guard("build")
    def build(self, wait: bool = True, *, timeout: float | None = 600.0,
              on_progress: Callable[[int, int], None] | None = None) -> BuildHandle:
        """Ask the workers to (re)index every partition with unindexed changes.

        Without this call the workers build a partition once its writes have paused for their settle time
        (``embcache worker --settle``, 0.5 s by default; at most ``--max-delay`` after its first unindexed write),
        so a bulk load in many upsert calls is one build; this request is served at once, so call it after the
        last write of a load to get its snapshot without waiting for the settle time.

        With ``wait`` (default), block until the snapshots cover everything written before the call
        (:class:`~embcache.errors.BuildTimeout` after ``timeout`` seconds); otherwise return at once a
        :class:`~embcache.builds.BuildHandle` whose ``progress()`` and ``wait()`` follow it.
        ``on_progress(done, total)`` is called as partitions complete.
        """
        return self.hub.store.run(self._build(wait, timeout, on_progress))

    def _build(self, wait: bool, timeout: float | None,
               on_progress: Callable[[int, int], None] | None) -> Plan[BuildHandle]:
        if not isinstance(wait, bool):
            raise InvalidInput(f"wait must be True or False, got {wait!r:.60}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 < timeout < float("inf")):
            raise InvalidInput(f"timeout must be a positive number of seconds or None, got {timeout!r:.60}")
        if on_progress is not None and not callable(on_progress):
            raise InvalidInput("on_progress must be callable")
        store = self.hub.store
        keys = {p: self._pk(p) for p in (yield from self._partitions_arg(None))}
        targets = {}
        for p, pk in keys.items():
            targets[p] = yield from store.position.plan(pk)
        for p in keys:  # urgent: the dispatcher does not wait for the partition's writes to settle
            yield from store.mark_dirty.plan(self.space.name, self.name, p, urgent=True)
        handle = BuildHandle(store, keys, targets)
        if not wait:
            return handle
        done, total = yield from handle.progress_plan()
        if done < total:
            yield from self._require_dispatcher(min(5.0, timeout) if timeout is not None else 5.0)
        return (yield from handle.wait_plan(timeout, on_progress))

    def _require_dispatcher(self, grace: float) -> Plan[None]:
        """Fail fast, rather than after the whole timeout, when no worker runs: the active dispatcher holds a
        lock it renews every tick (a principal that may not read it skips this check)."""
        deadline = time.monotonic() + grace
        try:
            while not (yield from self.hub.store.dispatcher_seen.plan()):
                if time.monotonic() > deadline:
                    raise BuildTimeout(
                        f"no embcache worker is running on this hub (no dispatcher seen for {grace:.0f} s): "
                        "start one with `embcache worker` (same --url / EMBCACHE_URL as this client)"
                    )
                yield Sleep(0.1)
        except PermissionDenied:
            return

    @_guard("stats")
    def stats(self) -> list[PartitionStats]:
        """Per partition: items, snapshot generation/age/size, tombstones, the delta segments published after the
        snapshot (``delta_segments``, ``delta_rows``, ``delta_bytes``; ``indexed_pos``: the log position the
        snapshot and its segments cover), log entries after that (``unindexed_entries``), last build time,
        a corrupt-snapshot report if a reader refused one, and (``follow``) this hub's live overlay of the
        partition when it follows it: items, bytes, position, log entries it is behind (``follow_lag_entries``),
        rows its overlay index does not cover yet, and whether the overlay hit its memory bound (``follow_frozen``)."""
        return self.hub.store.run(self._stats())

    def _stats(self) -> Plan[list[PartitionStats]]:
        out = []
        follower = self.hub.cache.follower
        for p in (yield from self._partitions_arg(None)):
            st = yield from partition_stats(self.hub.store, p, self._pk(p))
            followed = follower.stats(self._pid(p))
            if followed is not None:
                lag = yield from self.hub.store.unindexed.plan(self._pk(p), followed["follow_position"], 1000)
                st = replace(st, follow={**followed, "follow_lag_entries": lag})
            out.append(st)
        return out

    def _refuse_ids_elsewhere(self, partition: str, ids: list[str]) -> Plan[bool]:
        """Refuse ids that live in another partition, in round trips that do not grow with the version's
        partitions: one read of the version's owners map, then at most one lookup where it points (claims are
        hints: a claim by another partition is verified there). When the map cannot answer (see
        :meth:`~embcache.redis.store.Store.owners_check`), and for a principal limited to some partitions (it may
        not read the map), every partition it can see is asked. Returns whether to claim the ids once written."""
        store = self.hub.store
        ask = None
        if self.space.allowed_partitions() is None:
            ask = yield from store.owners_check.plan(self.space.name, self.name, partition, ids)
        claim = ask is not None
        if ask is None:
            ask = {p: ids for p in (yield from self._partitions_arg(None)) if p != partition}
        if ask:
            names = sorted(ask)
            there = yield from store.existing.plan([(self._pk(p), ask[p]) for p in names])
            for p, found in zip(names, there):
                hits = [i for i, t in zip(ask[p], found) if t]
                if hits:
                    raise InvalidInput(
                        f"id {hits[0]!r} already lives in partition {p!r} of {self.space.name}/{self.name}; "
                        "an item lives in one partition: delete it there first"
                    )
        return claim

    # reads ------------------------------------------------------------------------------------------------
    def partitions(self) -> list[str]:
        """Names of the partitions that hold (or held) items, sorted."""
        return self._run(self.hub.partitions.get(self.space.name, self.name, True))

    def _partitions_arg(self, partitions: object, *, fresh: bool = True) -> Plan[list[str]]:
        """Validated partition names (all of the version's, limited to the principal's grant, for None).
        ``fresh=False`` lets a query use the hub's cached list (kept current by the refresher thread)."""
        if isinstance(partitions, str):
            partitions = [partitions]
        if partitions is not None and (not isinstance(partitions, (list, tuple)) or not partitions):
            raise InvalidInput("partitions must be a non-empty list of partition names, or None for all")
        known = yield from self.hub.partitions.get(self.space.name, self.name, fresh)
        asked = {p for p in partitions or [] if isinstance(p, str)}
        if not fresh and partitions is not None and not asked <= set(known):
            known = yield from self.hub.partitions.get(self.space.name, self.name, True)  # new since cached?
        granted = self.space.allowed_partitions()
        if partitions is None:
            return known if granted is None else [p for p in known if p in granted]
        for p in partitions:
            check_name(p, "partition name")
            if granted is not None and p not in granted:
                self.space._require("reader", "read", p)
            if p not in known:
                raise PartitionNotFound(f"version {self.space.name}/{self.name} has no partition {p!r}")
        return list(dict.fromkeys(partitions))

    @_guard("ids")
    def ids(self, partition: str | None = None, *, batch: int = 1000) -> Iterator[str]:
        """Every stored id (of one partition, or of all), read in pieces with HSCAN so Redis never blocks."""
        batch = _check_batch(batch)
        for p in self._run(self._partitions_arg(None if partition is None else [partition])):
            cursor = None
            while cursor != 0:  # HSCAN pages: an id written during the scan may or may not appear
                cursor, page = self._run(Store.id_page(self._pk(p), cursor or 0, batch))
                yield from page

    @_guard("count")
    def count(self, partition: str | None = None) -> int:
        """Number of items (in one partition, or in all)."""
        return self._run(self._count(partition))

    def _count(self, partition: str | None) -> Plan[int]:
        parts = yield from self._partitions_arg(None if partition is None else [partition])
        store = self.hub.store
        return sum((yield from store.counts.plan([self._pk(p) for p in parts])))

    @_guard("recommend")
    def recommend(
        self,
        positive: Sequence[Any],
        negative: Sequence[Any] | None = None,
        n_results: int = 10,
        *,
        strategy: Strategy = "average",
        partitions: Sequence[str] | None = None,
        where: dict[str, Any] | None = None,
        exclude: Sequence[str] | None = None,
        exclude_examples: bool = True,
        ef: int | None = None,
        consistency: Consistency = "session",
        include: Sequence[str] = ("distances",),
    ) -> QueryResult:
        """Items like the ``positive`` examples and unlike the ``negative`` ones: one row of ``n_results``.

        An example is a stored id (looked up in every partition of the version) or a vector; a 2-D array is one
        vector per row. At least one positive; at most 1000 examples. The example ids are left out of the
        answer unless ``exclude_examples=False``; ``exclude`` leaves out more ids (items already seen, say;
        ``n_results`` plus the excluded ids at most 10,000).
        ``partitions``, ``where``, ``ef`` and ``consistency`` restrict and tune the search as in :meth:`query`.
        For ``cosine`` each example is scaled to unit length first, so each weighs the same.

        ``strategy``:

        - ``"average"`` (default): one query by the vector ``q = mean(P) + (mean(P) - mean(N))`` (``mean(P)``
          without negatives), as Qdrant's ``average_vector``. ``distances`` are the space's distances to ``q``.
        - ``"best_score"``: each candidate ``c`` is compared with every example in the space's similarity ``s``
          (cosine, inner product, or ``-|c - x|^2`` for ``l2``): ``pos(c) = max_p s(c, p)``,
          ``neg(c) = max_n s(c, n)``. If ``pos(c) > neg(c)`` its score is ``sigma(pos(c))`` in ``(0, 1)``, else
          ``-sigma(neg(c))`` in ``(-1, 0)``, with ``sigma(x) = (1 + x / (1 + |x|)) / 2``: candidates nearer to
          some positive than to every negative come first, by their best positive; the others after, farthest
          from the negatives first (Qdrant's ``best_score`` with its sigmoid). The candidates are the
          neighbours of each positive, fetched until no item outside them could rank higher (see
          :mod:`embcache.core.examples`). :attr:`QueryResult.scores` gives these scores (``distances`` hold
          ``1 - score``, for ``l2`` ``-score``).

        >>> v.recommend(positive=["m1", "m7"], negative=["m3"], n_results=10).ids   # doctest: +SKIP
        """
        return self._run(recommend_plan(self, positive, negative, n_results, partitions, where, exclude,
                                        exclude_examples, strategy, ef, consistency, include))

    @_guard("get")
    def get(
        self, ids: Sequence[str], include: Sequence[str] = _INCLUDE_GET, partitions: Sequence[str] | None = None
    ) -> GetResult:
        """Stored items by id, in the order asked; ids that do not exist are left out.

        Embeddings of ``cosine`` spaces come back normalised (they are stored that way).
        """
        return self._run(self._get(ids, include, partitions))

    def _get(self, ids: Any, include: Any, partitions: Any) -> Plan[GetResult]:
        id_list = codec.check_ids(ids, allow_duplicates=True)
        include = check_include(include, _INCLUDE_GET)
        store = self.hub.store
        found: dict[str, tuple[bytes, bytes | None, str]] = {}
        for p in (yield from self._partitions_arg(partitions)):
            vecs, metas = yield from store.read_items.plan(self._pk(p), id_list)
            for i, v, m in zip(id_list, vecs, metas):
                if v is not None:
                    found[i] = (v, m, p)
        order = [i for i in dict.fromkeys(id_list) if i in found]
        mat, bad = codec.decode_stored([found[i][0] for i in order], self.space.dim, self.space.dtype, "get")
        if bad:  # corrupt stored vectors: left out, as readers leave them out of every answer
            skip = set(bad)
            order = [i for j, i in enumerate(order) if j not in skip]
        res = GetResult(ids=order, partitions=[found[i][2] for i in order])
        if "embeddings" in include:
            res.embeddings = mat
        if "metadatas" in include:
            res.metadatas = [codec.parse_stored_metadata(found[i][1], "get") for i in order]
        return res

    # queries: one validated Query, one staged search (docs/design.md, "The query engine") ------------------
    @_guard("query")
    def query(
        self,
        query_embeddings: Any,
        n_results: int = 10,
        *,
        partitions: Sequence[str] | None = None,
        where: dict[str, Any] | None = None,
        ef: int | None = None,
        consistency: Consistency = "session",
        include: Sequence[str] = ("distances",),
        exclude: Sequence[str] | None = None,
    ) -> QueryResult:
        """Nearest neighbours of each query embedding.

        ``query_embeddings`` is ``(n, dim)`` or one vector ``(dim,)``. ``partitions`` restricts the search;
        ``where`` filters on metadata (see :mod:`embcache.filters`); ``ef`` overrides the space's search width;
        ``exclude`` lists ids that must not come back (items a user has already seen, say; at most 10,000).
        ``consistency``: ``eventual`` answers from loaded bases only; ``session`` (default) adds this hub's own
        writes; ``strong`` adds every write committed before the call (one round trip). :meth:`explain` shows
        how a query is answered.
        """
        plain = _plain_options(where, ef, exclude, include)
        if plain:  # the common query: over a route when one is valid (client/queries.py, "routes")
            t0 = time.perf_counter() if metrics.ENABLED else 0.0
            res = self._routed(query_embeddings, n_results, partitions, consistency)
            if res is not None:
                if metrics.ENABLED:
                    metrics.observe_query(self.space.name, str(consistency), time.perf_counter() - t0)
                return res
        q = self._make_query(query_embeddings, n_results, partitions, where, ef, consistency, include, exclude)
        res = self._answer(q)
        if plain:
            self._route(q.partitions, q.consistency)
        return res

    @_guard("query")
    def explain(
        self,
        query_embeddings: Any = None,
        n_results: int = 10,
        *,
        ids: Sequence[str] | None = None,
        partitions: Sequence[str] | None = None,
        where: dict[str, Any] | None = None,
        ef: int | None = None,
        consistency: Consistency = "session",
        exclude: Sequence[str] | None = None,
    ) -> Explain:
        """Run the query and say how it was answered: an :class:`~embcache.core.engine.Explain` whose ``plan``
        is one line (``"graph on version graph (59000 items, 58 partitions, generation 3)"``), ``steps`` the
        structures searched (exact or graph, matches, candidates examined, filter cache hit), and ``result``
        the :class:`QueryResult`. ``explain(...).as_dict()`` is JSON-ready. With ``ids`` instead of query
        embeddings it explains :meth:`query_by_id` (``"neighbour list on partition p: ..."`` when the precomputed
        lists answer)."""
        return self._run(self._explain(query_embeddings, n_results, ids, partitions, where, ef, consistency, exclude,
                                       probe=True))

    def _explain(self, query_embeddings: Any, n_results: Any, ids: Any, partitions: Any, where: Any, ef: Any,
                 consistency: Any, exclude: Any, *, probe: bool) -> Plan[Explain]:
        if (ids is None) == (query_embeddings is None):
            raise InvalidInput("explain takes query_embeddings or ids (for query_by_id), not both or neither")
        if ids is not None:
            id_list, q = self._by_id_query(ids, n_results, partitions, where, ef, consistency, ("distances",), exclude)
            ex = Explain(q.consistency)
            res = self._listed(id_list, q, ex) if self.space.neighbours and q.consistency != "strong" else None
            if res is None:
                ex.steps.clear()
                ex.overlay_items = 0
                res = yield from self._by_id_explained(id_list, q, ex, probe)
            ex.result = res  # type: ignore[attr-defined]
            return ex
        q = self._make_query(query_embeddings, n_results, partitions, where, ef, consistency, ("distances",), exclude)
        ex = Explain(q.consistency)
        ex.result = yield from self._explained(q, ex, probe)  # type: ignore[attr-defined]
        return ex

    def _query(self, query_embeddings: Any, n_results: Any, partitions: Any, where: Any, ef: Any,
               consistency: Any, include: Any, exclude: Any = None) -> Plan[QueryResult]:
        """:meth:`query` as a plan (for the asyncio client)."""
        q = self._make_query(query_embeddings, n_results, partitions, where, ef, consistency, include, exclude)
        return (yield from self._search(q)).result

    @_guard("query_by_id")
    def query_by_id(
        self,
        ids: Sequence[str],
        n_results: int = 10,
        *,
        partitions: Sequence[str] | None = None,
        where: dict[str, Any] | None = None,
        ef: int | None = None,
        consistency: Consistency = "session",
        include: Sequence[str] = ("distances",),
        exclude: Sequence[str] | None = None,
    ) -> QueryResult:
        """Neighbours of stored items (each item itself excluded, and the ids in ``exclude``), one row per id.

        At ``eventual`` and ``session`` the items' vectors come from the loaded bases (and this hub's own
        writes) when they hold them: no Redis round trip. In a space with ``neighbours`` the answer comes from the
        snapshot's precomputed lists when they cover ``n_results`` (after ``where``, ``exclude`` and this query's
        overlay are applied; ``ef`` does not apply to them), merged with the overlay's items, and from the graph
        otherwise. :class:`~embcache.errors.NotFound` if an id is not stored in this version.
        """
        t0 = time.perf_counter() if metrics.ENABLED else 0.0
        plain = _plain_options(where, ef, exclude, include)
        res = self._routed_by_id(ids, n_results, partitions, consistency) if plain else None
        if res is None:
            id_list, q = self._by_id_query(ids, n_results, partitions, where, ef, consistency, include, exclude)
            res = self._listed(id_list, q) if self.space.neighbours and q.consistency != "strong" else None
            if res is None and q.consistency != "strong":
                res = _without_io(self._by_id(id_list, q))
            if res is None:
                res = self._run(self._by_id(id_list, q))
            if plain and len(id_list) == 1:
                self._route(q.partitions, q.consistency)
        if metrics.ENABLED:
            metrics.observe_query(self.space.name, str(consistency), time.perf_counter() - t0)
        return res

    def _query_by_id(self, ids: Any, n_results: Any, partitions: Any, where: Any, ef: Any, consistency: Any,
                     include: Any, exclude: Any = None) -> Plan[QueryResult]:
        """:meth:`query_by_id` as a plan (for the asyncio client)."""
        id_list, q = self._by_id_query(ids, n_results, partitions, where, ef, consistency, include, exclude)
        return (yield from self._by_id(id_list, q))

