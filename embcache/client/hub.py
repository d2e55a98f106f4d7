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
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import numpy as np

from ..core import codec
from ..core.drift import DriftReport
from ..core.engine import Explain, Query, Step, check_include
from ..core.errors import (
    AlreadyExists,
    BuildTimeout,
    CorruptRecord,
    DriftTooLarge,
    EmbcacheError,
    InvalidInput,
    ItemNotFound,
    NotFound,
    OpenDefaultUserWarning,
    OutOfMemory,
    PartitionNotFound,
    PermissionDenied,
    Unavailable,
    VersionNotFound,
    VersionSealed,
)
from ..core.examples import Strategy
from ..core.keys import Keys, PartitionKeys, check_name
from ..core.search import Ranked, exact_search, merge_ranked
from ..core.tail import TailView
from ..core.vgraph import VersionBase
from ..core.views import Overlay, OverlayItem, pos_key, search_view
from ..redis import metrics
from ..redis.acl import Credentials, Grant
from ..redis.builds import BuildHandle, PartitionStats, partition_stats
from ..redis.catalogue import Catalogue, SpaceRecord, VersionRecord, valid_names
from ..redis.connection import (
    check_url,
    env_credentials,
    normalize_url,
    read_password_file,
    redact_url,
    url_username,
)
from ..redis.plan import Offload, Plan, Sleep
from ..redis.principals import Principals
from ..redis.probe import PendingProbe, StrongProbe, StrongProbes
from ..redis.store import Store, open_client, translate_errors
from .cache import DEFAULT_OVERLAY_BYTES, PartitionCache, SpaceInfo, tail_overlay
from .drift import check_max_drift
from .drift import compare as compare_versions
from .recommend import recommend_plan
from .state import SESSION_ITEMS, KnownPartitions, Pid, SessionWrites

__all__ = ["connect", "Hub", "Space", "Version", "QueryResult", "GetResult", "Consistency"]

T = TypeVar("T")
_log = logging.getLogger("embcache")
Consistency = Literal["eventual", "session", "strong"]
CONSISTENCY_LEVELS = ("eventual", "session", "strong")
DEFAULT_CACHE_BYTES = 2 << 30
_INCLUDE_GET = ("embeddings", "metadatas")
_INCLUDE_QUERY = ("distances", "metadatas", "embeddings")


@dataclass
class QueryResult:
    """Column-oriented answer of a query, one row per query embedding.

    ``ids[i]`` lists the ids nearest to query ``i``, nearest first. ``distances`` is a float32 array
    ``(n_queries, n_results)`` in the space's metric, smaller is nearer: for ``l2`` the *squared* Euclidean
    distance ``|q - x|^2``; for ``ip`` ``1 - <q, x>``; for ``cosine`` ``1 - cos(q, x)`` (0 for the same direction,
    2 for the opposite one). Where a query has fewer than ``n_results`` matches its row ends in ``inf``.
    :attr:`scores` is the same answer as a similarity, bigger is nearer. ``metadatas`` and ``embeddings`` are
    filled when ``include`` asks for them.

    >>> res = space.query(q, n_results=3)     # doctest: +SKIP
    >>> res.distances, res.scores             # cosine: scores are cosine similarities, 1 - distances
    """

    ids: list[list[str]]
    distances: np.ndarray
    metadatas: list[list[dict[str, Any] | None]] | None = None
    embeddings: list[np.ndarray] | None = None
    metric: str | None = None  # the space's: "l2", "ip" or "cosine"

    @property
    def scores(self) -> np.ndarray:
        """Similarities, bigger is nearer, in the shape of ``distances``: the cosine similarity ``cos(q, x)`` for
        ``cosine``, the inner product ``<q, x>`` for ``ip``, the negated squared distance ``-|q - x|^2`` for ``l2``;
        padding (``inf`` distances) becomes ``-inf``."""
        if self.metric not in ("l2", "ip", "cosine"):
            raise InvalidInput("this result does not know its metric, so it has no scores")
        return -self.distances if self.metric == "l2" else np.float32(1.0) - self.distances


@dataclass
class GetResult:
    """Column-oriented answer of :meth:`Version.get`: the ids found, in the order asked, and their data."""

    ids: list[str]
    embeddings: np.ndarray | None = None
    metadatas: list[dict[str, Any] | None] | None = None
    partitions: list[str] | None = None


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
    milliseconds (docs/consistency.md); ``overlay_bytes`` bounds the memory of those overlays.
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


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _guard(operation: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Name the operation, the space and the principal in a :class:`PermissionDenied` from Redis."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:  # a plain try, not a context manager: this wraps the query hot path
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
        version = Version(self, rec)
        self.hub.defaults[self.name] = version
        return version

    def query(self, query_embeddings: Any, n_results: int = 10, **kwargs: Any) -> QueryResult:
        """:meth:`Version.query` on :meth:`default_version` (resolved afresh for ``consistency="strong"``,
        from the hub's cache otherwise)."""
        version = self.hub.store.run(self._default_version(kwargs.get("consistency") == "strong"))
        return version.query(query_embeddings, n_results, **kwargs)

    def query_by_id(self, ids: Sequence[str], n_results: int = 10, **kwargs: Any) -> QueryResult:
        """:meth:`Version.query_by_id` on :meth:`default_version` (cached as for :meth:`query`)."""
        version = self.hub.store.run(self._default_version(kwargs.get("consistency") == "strong"))
        return version.query_by_id(ids, n_results, **kwargs)

    def recommend(self, positive: Sequence[Any], negative: Sequence[Any] | None = None, n_results: int = 10,
                  **kwargs: Any) -> QueryResult:
        """:meth:`Version.recommend` on :meth:`default_version` (cached as for :meth:`query`)."""
        version = self.hub.store.run(self._default_version(kwargs.get("consistency") == "strong"))
        return version.recommend(positive, negative, n_results, **kwargs)


class Version:
    """One generation of a space's embeddings: where items are written and queried."""

    def __init__(self, space: Space, record: VersionRecord) -> None:
        self.space = space
        self.hub = space.hub
        self.name = record.name
        self.state = record.state
        self.description = record.description
        self._probes: dict[tuple[tuple[str, ...], bool], StrongProbe] = {}  # partitions -> their strong probe
        self._plain: dict[tuple[int, str], Query] = {}  # query_by_id's Query for the default options, per (k, level)

    def __repr__(self) -> str:
        return f"Version({self.space.name!r}, {self.name!r}, state={self.state!r})"

    def _pid(self, partition: str) -> tuple[str, str, str]:
        return (self.space.name, self.name, partition)

    def _pk(self, partition: str) -> PartitionKeys:
        return self.hub.keys.partition(self.space.name, self.name, partition)

    # Each operation that talks to Redis is a plan (embcache.plan): the public method runs it with the sync
    # client; embcache.aio runs the very same plan with redis.asyncio.
    def _run(self, plan: Plan[T]) -> T:
        return self.hub.store.run(plan)

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
        """Per partition: items, snapshot generation/age/size, tombstones, unindexed log entries, last build time,
        a corrupt-snapshot report if a reader refused one, and (``follow``) this hub's live overlay of the
        partition when it follows it: items, bytes, position, log entries it is behind (``follow_lag_entries``),
        rows its overlay index does not cover yet, and whether the overlay hit its memory bound (``follow_frozen``)."""
        return self.hub.store.run(self._stats())

    def _stats(self) -> Plan[list[PartitionStats]]:
        out = []
        follower = self.hub.cache.follower
        for p in (yield from self._partitions_arg(None)):
            st = yield from partition_stats(self.hub.store, p, self._pk(p))
            followed = follower.stats(self._pid(p)) if follower is not None else None
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
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 1 <= batch <= 100_000:
            raise InvalidInput(f"batch must be an integer in [1, 100000], got {batch!r:.60}")
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
        q = self._make_query(query_embeddings, n_results, partitions, where, ef, consistency, include, exclude)
        return self._answer(q)

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
        return self._run(self._explain(query_embeddings, n_results, ids, partitions, where, ef, consistency, exclude))

    def _explain(self, query_embeddings: Any, n_results: Any, ids: Any, partitions: Any, where: Any, ef: Any,
                 consistency: Any, exclude: Any) -> Plan[Explain]:
        if (ids is None) == (query_embeddings is None):
            raise InvalidInput("explain takes query_embeddings or ids (for query_by_id), not both or neither")
        if ids is not None:
            id_list, q = self._by_id_query(ids, n_results, partitions, where, ef, consistency, ("distances",), exclude)
            ex = Explain(q.consistency)
            res = self._listed(id_list, q, ex) if self.space.neighbours and q.consistency != "strong" else None
            if res is None:
                ex.steps.clear()
                ex.overlay_items = 0
                res = yield from self._by_id_explained(id_list, q, ex)
            ex.result = res  # type: ignore[attr-defined]
            return ex
        q = self._make_query(query_embeddings, n_results, partitions, where, ef, consistency, ("distances",), exclude)
        ex = Explain(q.consistency)
        ex.result = yield from self._explained(q, ex)  # type: ignore[attr-defined]
        return ex

    def _explained(self, q: Query, ex: Explain) -> Plan[QueryResult]:
        """:meth:`_answer` as a plan, filling in ``ex``: the local answer, else the general plan."""
        res = self._local(q, ex)
        if res is None:
            ex.steps.clear()
            res = (yield from self._search(q, ex)).result
        return res

    def _by_id_explained(self, id_list: list[str], q: Query, ex: Explain) -> Plan[QueryResult]:
        """query_by_id's graph path, explained: the stored vectors as a query of ``n_results + 1``."""
        vectors = {} if q.consistency == "strong" else self._stored_locally(id_list, q.consistency == "session")
        missing = [i for i in dict.fromkeys(id_list) if i not in vectors]
        if missing:
            got = yield from self._get(missing, ("embeddings",), None)
            assert got.embeddings is not None
            vectors.update(zip(got.ids, got.embeddings))
        absent = [i for i in id_list if i not in vectors]
        if absent:
            raise ItemNotFound(f"{self.space.name}/{self.name} has no item {absent[0]!r}")
        queries = np.stack([vectors[i] for i in id_list]).astype(np.float32)
        res = yield from self._explained(replace(q, vectors=queries, k=q.k + 1), ex)
        return _drop_own(res, id_list, q.k)

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
        t0 = time.perf_counter()
        id_list, q = self._by_id_query(ids, n_results, partitions, where, ef, consistency, include, exclude)
        res = self._listed(id_list, q) if self.space.neighbours and q.consistency != "strong" else None
        if res is None and q.consistency != "strong":
            res = _without_io(self._by_id(id_list, q))
        if res is None:
            res = self._run(self._by_id(id_list, q))
        if metrics.ENABLED:
            metrics.observe_query(self.space.name, q.consistency, time.perf_counter() - t0)
        return res

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

    def _query_by_id(self, ids: Any, n_results: Any, partitions: Any, where: Any, ef: Any, consistency: Any,
                     include: Any, exclude: Any = None) -> Plan[QueryResult]:
        """:meth:`query_by_id` as a plan (for the asyncio client)."""
        id_list, q = self._by_id_query(ids, n_results, partitions, where, ef, consistency, include, exclude)
        return (yield from self._by_id(id_list, q))

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

    def _by_id(self, id_list: list[str], q: Query) -> Plan[QueryResult]:
        vectors = {} if q.consistency == "strong" else self._stored_locally(id_list, q.consistency == "session")
        missing = [i for i in dict.fromkeys(id_list) if i not in vectors]
        if missing:
            got = yield from self._get(missing, ("embeddings",), None)
            assert got.embeddings is not None
            vectors.update(zip(got.ids, got.embeddings))
        absent = [i for i in id_list if i not in vectors]
        if absent:
            raise ItemNotFound(f"{self.space.name}/{self.name} has no item {absent[0]!r}")
        queries = np.stack([vectors[i] for i in id_list]).astype(np.float32)  # stored: normalised for cosine
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
        if follower is not None and follower.buffers:  # the followed changes are newer than the bases
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
            for b in bases:
                vec = b.vector(i) if i in b else None
                if vec is not None:
                    found[i] = vec
                    break
        return found

    # the stages of every search ----------------------------------------------------------------------------
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
        if follower is not None and follower.buffers:
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


NAMED_GRAPH_SHARE = 0.2  # named partitions holding this share of a loaded version graph are searched there


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


@dataclass
class _Answer:
    result: QueryResult
    positions: dict[str, str]  # partition -> the position of the base that answered for it


def _unit_rows(queries: np.ndarray) -> np.ndarray:
    """Query rows scaled to unit length, bit for bit as codec.normalise does (which names a zero row, and
    handles every other case)."""
    if len(queries) == 1:  # the same float64 norm and division as codec.normalise, with less numpy machinery
        square = float(np.einsum("i,i->", queries[0], queries[0], dtype=np.float64))
        if 1e-30 < square < 1e30:
            unit: np.ndarray = (queries / np.float64(square ** 0.5)).astype(np.float32)
            return unit
    return codec.normalise(queries, what="query_embeddings")


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
    keep = [[j for j, x in enumerate(r) if x != own][:n_results] for r, own in zip(res.ids, id_list)]
    res.ids = [[r[j] for j in ks] for r, ks in zip(res.ids, keep)]
    res.distances = _pad([d[ks] for d, ks in zip(res.distances, keep)], n_results)
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
        for base, ov, views in zip(bases, overlays, tails):
            if id_ in ov:
                return getattr(ov[id_], what)
            for view in views.values():
                it = view.item(id_)
                if it is not None:
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

