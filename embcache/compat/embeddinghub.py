"""An Embeddinghub-compatible facade: code written for Featureform's Embeddinghub client runs on embcache.

>>> from embcache.compat import embeddinghub
>>> hub = embeddinghub.connect(embeddinghub.Config(host="localhost", port=6379))
>>> space = hub.create_space("words", 3)
>>> space.set("apple", [1.0, 0.0, 0.0])
>>> space.multiset({"pear": [0.9, 0.1, 0.0], "car": [0.0, 0.0, 1.0]})
>>> space.get("pear")
[0.8999999761581421, 0.10000000149011612, 0.0]
>>> space.nearest_neighbors(2, key="apple")
['pear', 'car']
>>> space.nearest_neighbors(1, vector=[0.0, 0.1, 0.9])
['car']

Both of Embeddinghub's client styles are here: the hub/space objects (``connect(Config())``, ``hub.create_space``,
``space.set``...) and the flat :class:`EmbeddingHubClient`, whose calls take the space name first
(``client.set(space, key, embedding)``). ``Config()`` without a host or port means embcache's default hub
(``EMBCACHE_URL``, else the embedded Redis); ``LocalConfig(directory)`` is the embedded Redis keeping its data in
``directory``.

How it maps onto embcache: each Embeddinghub space is one embcache space (metric ``l2``, Embeddinghub's, unless
``metric`` says otherwise); its items live in one version, ``v1``, created on the first write and aliased
``live``, in the partition ``default``. The space stays an ordinary embcache space: ``hub.hub.space(name)``
reaches it with the full API (versions, filters, snapshots, access control).

Semantics kept from Embeddinghub:

- ``nearest_neighbors`` returns keys only, nearest first; asked by ``key``, the key itself is left out, so a
  full answer has ``num`` other keys. When the space holds fewer items, the answer is shorter.
  ``nearest_neighbor`` and ``multi_nearest_neighbor`` (the names some of Embeddinghub's documentation and its
  ``Space`` class use) are the same calls.
- ``get``/``multiget`` return embeddings as lists of Python floats (float32 precision, like Embeddinghub's
  protobuf floats); ``multiset`` takes a mapping or an iterable of ``(key, embedding)`` pairs, later pairs
  winning; keys are strings, and integers are turned into strings as Embeddinghub did; space names are turned
  into strings with ``str()`` (a ``uuid.UUID`` names a space, as in Embeddinghub's own tests).
- ``multidelete`` deletes the keys that exist and ignores the others.
- A write to a frozen space raises :class:`~embcache.errors.SpaceFrozen`, which is a ``TypeError`` as in
  Embeddinghub (and an embcache :class:`~embcache.VersionSealed`).
- ``download_snapshot()`` (and ``get_space(name, download_snapshot=True)``) returns a :class:`SpaceSnapshot`: an
  in-memory copy with the same key-value and nearest-neighbour calls (exact search), ``refresh``,
  ``write_to_space`` and ``overwrite_space``.
- Reads see every write committed before them, from any process (embcache's ``strong`` consistency; pass
  ``consistency="session"`` to :func:`connect` to read from loaded snapshots plus this process's own writes).

Differences:

- Errors are embcache's (one tree, see :mod:`embcache.errors`): :class:`~embcache.NotFound` (a ``KeyError``) for
  an unknown space or key, :class:`~embcache.DimensionMismatch` / :class:`~embcache.InvalidInput` (``ValueError``)
  for a bad vector or key, :class:`~embcache.AlreadyExists` for a taken space name.
- Space names follow embcache's rules (1-64 characters from ``A-Za-z0-9_.-``, starting with a letter or digit)
  and keys are at most 512 UTF-8 bytes.
- ``multiset`` is atomic (all pairs or none).
- ``Config``'s default port is Redis's (6379), not Embeddinghub's gRPC port; there is no gRPC channel.
- ``wait=False`` on :class:`EmbeddingHubClient` calls returns a future that is already done (the call ran).
- With ``metric="cosine"`` embcache stores vectors normalised, so ``get`` returns unit vectors.

docs/migrating-from-embeddinghub.md lists every test and documented example of Embeddinghub and how each runs here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

import embcache
from embcache import AlreadyExists, DimensionMismatch, InvalidInput, NotFound, VersionSealed
from embcache.core import codec
from embcache.core.errors import SpaceFrozen

__all__ = [
    "Config",
    "LocalConfig",
    "EmbeddingHub",
    "EmbeddingHubClient",
    "Space",
    "SpaceSnapshot",
    "connect",
    "VERSION",
    "ALIAS",
    "PARTITION",
    "DEFAULT_METRIC",
]

VERSION = "v1"
"""The version every facade space keeps its items in."""
ALIAS = "live"
"""The alias pointed at :data:`VERSION` when the facade creates it (and followed when it reads)."""
PARTITION = "default"
"""The partition every facade item lives in."""
DEFAULT_METRIC = "l2"
"""Embeddinghub's metric (its index is an hnswlib ``l2`` index)."""

Embedding = Sequence[float] | np.ndarray
T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    """Where the Redis behind the hub is (Embeddinghub's ``Config(host, port)``, pointed at Redis instead).

    Without ``host`` and ``port`` it names embcache's default hub (``EMBCACHE_URL``, else the embedded Redis),
    as Embeddinghub's ``Config()`` named the local server.

    >>> Config("redis.internal", 6380, db=2).url
    'redis://redis.internal:6380/2'
    >>> Config().url is None
    True
    """

    host: str | None = None
    port: int | str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @property
    def url(self) -> str | None:
        """The ``redis://`` (``rediss://`` with ``tls``) URL of this configuration, without credentials; None for
        the default hub (no host and no port given). A missing host is 127.0.0.1, a missing port 6379."""
        if self.host is None and self.port is None:
            return None
        host = self.host or "127.0.0.1"
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port or 6379}/{self.db}"


@dataclass(frozen=True)
class LocalConfig:
    """Embeddinghub's local mode: here, the embedded Redis keeping its data in ``directory`` (default: embcache's
    data directory, ``EMBCACHE_HOME``). The data is durable (AOF); ``hub.save()`` has nothing left to do."""

    directory: str | None = None

    @property
    def url(self) -> str:
        """The URL of the embedded server of :attr:`directory` (started when none runs there)."""
        from embcache.redis.server import ensure_embedded

        # absolute: redis-server runs in its directory, where a relative --dir would not be found
        return ensure_embedded(None if self.directory is None else os.path.abspath(self.directory))


def connect(
    config: Config | LocalConfig | None = None,
    url: str | None = None,
    *,
    metric: str = DEFAULT_METRIC,
    consistency: str = "strong",
    **kwargs: Any,
) -> "EmbeddingHub":
    """Connect like ``embeddinghub.connect(embeddinghub.Config(host, port))``.

    Give a :class:`Config`, a :class:`LocalConfig` or a ``url`` (``redis://``, ``rediss://``, ``unix://``), not
    two; with none, :func:`embcache.connect` decides (``EMBCACHE_URL``, else the embedded Redis). ``metric`` is
    the metric of spaces created through the facade; ``consistency`` that of its reads. Other keyword arguments
    go to :func:`embcache.connect`.
    """
    if config is not None and url is not None:
        raise InvalidInput("give a Config or a url, not both")
    if config is not None and not isinstance(config, (Config, LocalConfig)):
        raise InvalidInput(f"config must be an embcache.compat.embeddinghub.Config or LocalConfig, got "
                           f"{type(config).__name__}")
    if consistency not in ("eventual", "session", "strong"):
        raise InvalidInput(f"consistency must be eventual, session or strong, got {consistency!r}")
    if metric not in ("l2", "ip", "cosine"):
        raise InvalidInput(f"metric must be l2, ip or cosine, got {metric!r}")
    if config is not None:
        url = config.url
        if isinstance(config, Config):
            if config.username is not None:
                kwargs.setdefault("username", config.username)
            if config.password is not None:
                kwargs.setdefault("password", config.password)
    hub = embcache.connect(url, **kwargs)
    return EmbeddingHub(hub, metric=metric, consistency=consistency, owns_hub=True)


def space_name(name: object) -> str:
    """A space name as Embeddinghub took it: anything but ``None`` and bytes, turned into a string with ``str()``."""
    if name is None or isinstance(name, (bytes, bytearray)):
        raise InvalidInput(f"a space name must be a string, got {type(name).__name__}")
    return name if isinstance(name, str) else str(name)


def _key(key: object) -> str:
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise InvalidInput(f"keys must be strings, got {type(key).__name__}")
    return key if isinstance(key, str) else str(key)


def _keys(keys: Iterable[object]) -> list[str]:
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        raise InvalidInput(f"keys must be a list of strings, got {type(keys).__name__}")
    return [_key(k) for k in keys]


def _vector(vector: object, dims: int, what: str, space: str) -> np.ndarray:
    if vector is None or isinstance(vector, (str, bytes, Mapping)):
        raise InvalidInput(f"{what} must be a list of {dims} numbers, got {type(vector).__name__}")
    try:
        arr = np.asarray(vector)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{what} is not a flat list of numbers: {exc}") from None
    if arr.ndim != 1:
        raise InvalidInput(f"{what} must be one flat vector of {dims} numbers, got shape {arr.shape}")
    if arr.shape[0] != dims:
        raise DimensionMismatch(f"{what} has {arr.shape[0]} dimensions, space {space!r} has {dims}")
    return arr


def _pairs(embeddings: Mapping[str, Embedding] | Iterable[tuple[str, Embedding]], dims: int,
           space: str) -> dict[str, np.ndarray]:
    """``multiset``'s argument as ``{key: vector}`` (later pairs win), every pair checked before anything is used."""
    pairs = embeddings.items() if isinstance(embeddings, Mapping) else embeddings
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
        raise InvalidInput(f"multiset takes a mapping or (key, embedding) pairs, got {type(embeddings).__name__}")
    batch: dict[str, np.ndarray] = {}
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InvalidInput(f"multiset takes (key, embedding) pairs, got {pair!r:.80}")
        k = _key(pair[0])
        batch[k] = _vector(pair[1], dims, f"embedding of {k!r}", space)
    return batch


def _num(num: object) -> int:
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
        raise InvalidInput(f"num must be a positive integer, got {num!r}")
    return int(num)


def _stack(arrays: list[np.ndarray], what: str) -> np.ndarray:
    try:
        return np.stack(arrays)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{what} are not numbers: {exc}") from None


class EmbeddingHub:
    """Embeddinghub's hub object: creates, opens and deletes spaces. Get one from :func:`connect`."""

    def __init__(
        self, hub: embcache.Hub, *, metric: str = DEFAULT_METRIC, consistency: str = "strong", owns_hub: bool = False
    ) -> None:
        self.hub = hub
        self.metric = metric
        self.consistency = consistency
        self._owns_hub = owns_hub

    def create_space(self, name: object, dims: int, *, metric: str | None = None) -> "Space":
        """Create a space of ``dims`` dimensions; :class:`~embcache.AlreadyExists` if the name is taken."""
        space = self.hub.create_space(space_name(name), dim=dims, metric=metric or self.metric)
        return Space(self, space)

    def get_space(self, name: object, download_snapshot: bool = False) -> "Space | SpaceSnapshot":
        """An existing space; :class:`~embcache.NotFound` otherwise. With ``download_snapshot``, an in-memory
        :class:`SpaceSnapshot` of it instead."""
        space = Space(self, self.hub.space(space_name(name)))
        return space.download_snapshot() if download_snapshot else space

    def delete_space(self, name: object) -> None:
        """Delete a space and everything in it; :class:`~embcache.NotFound` if there is no such space."""
        self.hub.drop_space(space_name(name))

    def freeze_space(self, name: object) -> None:
        """Make a space read-only for good (its version is sealed); later writes raise
        :class:`~embcache.errors.SpaceFrozen`, a ``TypeError``."""
        space = Space(self, self.hub.space(space_name(name)))
        space._version(create=True).seal()  # type: ignore[union-attr]

    def save(self) -> None:
        """Embeddinghub's local hub saved itself to disk here; embcache's data is already durable in Redis."""

    def close(self) -> None:
        """Close the connection (when :func:`connect` opened it)."""
        if self._owns_hub:
            self.hub.close()

    def __enter__(self) -> "EmbeddingHub":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddingHub({self.hub!r})"


class Space:
    """One Embeddinghub space: key-value access to embeddings and nearest-neighbour search."""

    def __init__(self, owner: EmbeddingHub, space: embcache.Space) -> None:
        self.owner = owner
        self.space = space
        self.name = space.name
        self.dims = space.dim
        self._v: embcache.Version | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Space({self.name!r}, dims={self.dims})"

    # the version behind the space -------------------------------------------------------------------------
    def _written(self, first_key: str) -> embcache.Version:
        """The version, for a call about existing keys: :class:`~embcache.NotFound` when nothing was written."""
        version = self._version(create=False)
        if version is None:
            raise NotFound(f"space {self.name!r} has no key {first_key!r}")
        return version

    def _version(self, create: bool) -> embcache.Version | None:
        """The version items live in; created (with its alias) on the first write, None before that."""
        if self._v is not None:
            return self._v
        with self._lock:
            if self._v is not None:
                return self._v
            try:
                version = self.space.version(ALIAS)
            except NotFound:
                if not create:
                    return None
                try:
                    version = self.space.create_version(VERSION)
                except AlreadyExists:  # another process got there first
                    version = self.space.version(VERSION)
                self.space.set_alias(ALIAS, version)
            self._v = version
            return version

    def _write(self, fn: Callable[[embcache.Version], T], version: embcache.Version | None = None) -> T:
        """Run a write on the version; a sealed one is a frozen space (:class:`SpaceFrozen`, a ``TypeError``)."""
        try:
            return fn(version or self._version(create=True))  # type: ignore[arg-type]
        except VersionSealed as exc:
            if isinstance(exc, SpaceFrozen):
                raise
            raise SpaceFrozen(f"space {self.name!r} is frozen (read-only): {exc}") from None

    def _vector(self, vector: object, what: str) -> np.ndarray:
        return _vector(vector, self.dims, what, self.name)

    # key-value interface ----------------------------------------------------------------------------------
    def set(self, key: str, embedding: Embedding) -> None:
        """Store ``embedding`` under ``key`` (replacing what was there)."""
        k = _key(key)
        vec = self._vector(embedding, f"embedding of {k!r}")
        self._write(lambda v: v.upsert([k], vec[None, :], partition=PARTITION))

    def multiset(self, embeddings: Mapping[str, Embedding] | Iterable[tuple[str, Embedding]]) -> None:
        """Store many embeddings at once, atomically: a mapping ``{key: embedding}`` or ``(key, embedding)``
        pairs (a later pair for the same key wins). Nothing is written if any pair is invalid."""
        batch = _pairs(embeddings, self.dims, self.name)
        if not batch:
            return
        matrix = _stack(list(batch.values()), "embeddings")
        self._write(lambda v: v.upsert(list(batch), matrix, partition=PARTITION))

    def get(self, key: str) -> list[float]:
        """The embedding stored under ``key``; :class:`~embcache.NotFound` (a ``KeyError``) if there is none."""
        return self.multiget([key])[0]

    def multiget(self, keys: Iterable[str]) -> list[list[float]]:
        """The embeddings of ``keys``, in order; :class:`~embcache.NotFound` if any key is missing."""
        wanted = _keys(keys)
        if not wanted:
            return []
        version = self._written(wanted[0])
        res = version.get(wanted, include=("embeddings",))
        row = {k: i for i, k in enumerate(res.ids)}
        missing = [k for k in wanted if k not in row]
        if missing:
            raise NotFound(f"space {self.name!r} has no key {missing[0]!r}")
        assert res.embeddings is not None
        return [res.embeddings[row[k]].tolist() for k in wanted]

    def delete(self, key: str) -> None:
        """Delete ``key``; :class:`~embcache.NotFound` if there is no such key."""
        k = _key(key)
        version = self._version(create=False)
        if version is None or self._write(lambda v: v.delete([k]), version) == 0:
            raise NotFound(f"space {self.name!r} has no key {k!r}")

    def multidelete(self, keys: Iterable[str]) -> None:
        """Delete several keys at once (atomically); keys that are not there are ignored, as in Embeddinghub."""
        wanted = list(dict.fromkeys(_keys(keys)))
        version = self._version(create=False)
        if wanted and version is not None:
            self._write(lambda v: v.delete(wanted), version)

    def delete_all(self) -> None:
        """Delete every key of the space (the space itself stays)."""
        for version, keys in list(self._key_batches()):
            def drop(v: Any, keys: list[str] = keys) -> Any:
                return v.delete(keys)

            self._write(drop, version)

    def iterator(self) -> Iterator[tuple[str, list[float]]]:
        """Every ``(key, embedding)`` of the space, read in pieces."""
        for version, keys in self._key_batches():
            got = version.get(keys, include=("embeddings",))
            for key, vec in zip(got.ids, got.embeddings):
                yield key, vec.tolist()

    def download_snapshot(self) -> "SpaceSnapshot":
        """An in-memory copy of the space (a :class:`SpaceSnapshot`): reads and searches without Redis, writes
        stay local until :meth:`SpaceSnapshot.write_to_space`."""
        return SpaceSnapshot(self.iterator(), self.dims, metric=self.space.metric, source=self)

    def _key_batches(self, size: int = 1000) -> Iterator[tuple[embcache.Version, list[str]]]:
        """The space's keys in batches of ``size`` (nothing when nothing was ever written)."""
        version = self._version(create=False)
        if version is None:
            return
        batch: list[str] = []
        for key in version.ids():
            batch.append(key)
            if len(batch) == size:
                yield version, batch
                batch = []
        if batch:
            yield version, batch

    # nearest-neighbour interface --------------------------------------------------------------------------
    def nearest_neighbors(self, num: int, key: str | None = None, vector: Embedding | None = None) -> list[str]:
        """The keys of the ``num`` items nearest to the item ``key`` (itself left out) or to ``vector``.

        Give exactly one of ``key`` and ``vector``. :class:`~embcache.NotFound` if ``key`` is not stored.
        """
        return self.multi_nearest_neighbors(
            num, keys=None if key is None else [key], vectors=None if vector is None else [vector]
        )[0]

    def multi_nearest_neighbors(
        self, num: int, keys: Sequence[str] | None = None, vectors: Sequence[Embedding] | None = None
    ) -> list[list[str]]:
        """:meth:`nearest_neighbors` of several keys or several vectors at once, one list per key/vector."""
        n = _num(num)
        if (keys is None) == (vectors is None):
            raise InvalidInput("give exactly one of key(s) and vector(s)")
        consistency = self.owner.consistency
        if keys is not None:
            wanted = _keys(keys)
            if not wanted:
                return []
            written = self._written(wanted[0])
            res = written.query_by_id(wanted, n, consistency=consistency)
            return res.ids
        assert vectors is not None
        if isinstance(vectors, (str, bytes)) or not isinstance(vectors, Iterable):
            raise InvalidInput(f"vectors must be a list of vectors, got {type(vectors).__name__}")
        arrays = [self._vector(v, f"vectors[{i}]") for i, v in enumerate(vectors)]
        if not arrays:
            return []
        queries = _stack(arrays, "vectors")
        version = self._version(create=False)
        if version is None:  # nothing was ever written: validate here what the query would have
            if not np.issubdtype(queries.dtype, np.number) or not np.isfinite(queries.astype(np.float64)).all():
                raise InvalidInput("vectors must be finite numbers")
            return [[] for _ in arrays]
        res = version.query(queries, n, consistency=consistency)
        return res.ids

    nearest_neighbor = nearest_neighbors
    multi_nearest_neighbor = multi_nearest_neighbors


class SpaceSnapshot:
    """An in-memory space: Embeddinghub's snapshot (and its local index), with the key-value and
    nearest-neighbour calls of :class:`Space`. Search is exact (a brute force in the space's metric).

    Made by :meth:`Space.download_snapshot`, or directly from ``(key, embedding)`` pairs (``dims`` is taken from the
    first embedding when not given). Writes change only this copy; :meth:`write_to_space` and
    :meth:`overwrite_space` send it to the hub, :meth:`refresh` reads the space again.
    """

    def __init__(self, keyed_embeddings: Mapping[str, Embedding] | Iterable[tuple[str, Embedding]] = (),
                 dims: int | None = None, *, metric: str = DEFAULT_METRIC, source: Space | None = None) -> None:
        if metric not in ("l2", "ip", "cosine"):
            raise InvalidInput(f"metric must be l2, ip or cosine, got {metric!r}")
        pairs = list(keyed_embeddings.items() if isinstance(keyed_embeddings, Mapping) else keyed_embeddings)
        if dims is None:
            if not pairs:
                raise InvalidInput("give dims, or at least one embedding to take it from")
            dims = len(pairs[0][1])
        if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
            raise InvalidInput(f"dims must be a positive integer, got {dims!r}")
        self.dims = dims
        self.metric = metric
        self.source = source
        self.name = source.name if source is not None else None
        self._keys: list[str] = []
        self._row: dict[str, int] = {}
        self._mat = np.zeros((16, dims), dtype=np.float32)
        self._lock = threading.RLock()
        self.multiset(pairs)

    def __repr__(self) -> str:
        return f"SpaceSnapshot({self.name!r}, dims={self.dims}, size={len(self._keys)})"

    def __len__(self) -> int:
        return len(self._keys)

    def size(self) -> int:
        """How many keys the snapshot holds."""
        return len(self._keys)

    def _checked(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        mat = codec.check_matrix(_stack(list(batch.values()), "embeddings"), self.dims, what="embedding")
        return codec.normalise(mat, what="embedding") if self.metric == "cosine" else mat

    # key-value interface ----------------------------------------------------------------------------------
    def set(self, key: str, embedding: Embedding) -> None:
        """Store ``embedding`` under ``key`` in this copy."""
        self.multiset([(key, embedding)])

    def multiset(self, embeddings: Mapping[str, Embedding] | Iterable[tuple[str, Embedding]]) -> None:
        """Store many embeddings in this copy; nothing changes if any pair is invalid."""
        batch = _pairs(embeddings, self.dims, self.name or "snapshot")
        if not batch:
            return
        mat = self._checked(batch)
        with self._lock:
            for key, vec in zip(batch, mat):
                row = self._row.get(key)
                if row is None:
                    row = len(self._keys)
                    if row == self._mat.shape[0]:
                        self._mat = np.concatenate([self._mat, np.zeros_like(self._mat)])
                    self._keys.append(key)
                    self._row[key] = row
                self._mat[row] = vec

    def get(self, key: str) -> list[float]:
        """The embedding of ``key``; :class:`~embcache.NotFound` if there is none."""
        return self.multiget([key])[0]

    def multiget(self, keys: Iterable[str]) -> list[list[float]]:
        """The embeddings of ``keys``, in order; :class:`~embcache.NotFound` if any key is missing."""
        wanted = _keys(keys)
        with self._lock:
            missing = [k for k in wanted if k not in self._row]
            if missing:
                raise NotFound(f"the snapshot has no key {missing[0]!r}")
            return [self._mat[self._row[k]].tolist() for k in wanted]

    def delete(self, key: str) -> None:
        """Delete ``key`` from this copy; :class:`~embcache.NotFound` if there is no such key."""
        k = _key(key)
        if k not in self._row:
            raise NotFound(f"the snapshot has no key {k!r}")
        self.multidelete([k])

    def multidelete(self, keys: Iterable[str]) -> None:
        """Delete several keys from this copy; keys that are not there are ignored."""
        wanted = _keys(keys)
        with self._lock:
            for k in wanted:
                row = self._row.pop(k, None)
                if row is None:
                    continue
                last = len(self._keys) - 1  # move the last row into the hole
                if row != last:
                    moved = self._keys[last]
                    self._keys[row] = moved
                    self._row[moved] = row
                    self._mat[row] = self._mat[last]
                self._keys.pop()

    def delete_all(self) -> None:
        """Empty this copy."""
        with self._lock:
            self._keys.clear()
            self._row.clear()

    def iterator(self) -> Iterator[tuple[str, list[float]]]:
        """Every ``(key, embedding)`` of this copy (as it was when the call was made)."""
        with self._lock:
            items = [(k, self._mat[i].tolist()) for i, k in enumerate(self._keys)]
        return iter(items)

    # nearest-neighbour interface --------------------------------------------------------------------------
    def nearest_neighbors(self, num: int, key: str | None = None, vector: Embedding | None = None) -> list[str]:
        """The keys of the ``num`` nearest items to ``key`` (itself left out) or to ``vector``, exactly."""
        return self.multi_nearest_neighbors(
            num, keys=None if key is None else [key], vectors=None if vector is None else [vector]
        )[0]

    def multi_nearest_neighbors(
        self, num: int, keys: Sequence[str] | None = None, vectors: Sequence[Embedding] | None = None
    ) -> list[list[str]]:
        """:meth:`nearest_neighbors` of several keys or vectors, one list each."""
        n = _num(num)
        if (keys is None) == (vectors is None):
            raise InvalidInput("give exactly one of key(s) and vector(s)")
        with self._lock:
            size = len(self._keys)
            base = self._mat[:size]
            if keys is not None:
                wanted = _keys(keys)
                missing = [k for k in wanted if k not in self._row]
                if missing:
                    raise NotFound(f"the snapshot has no key {missing[0]!r}")
                rows = [self._row[k] for k in wanted]
                queries = base[rows] if rows else np.zeros((0, self.dims), dtype=np.float32)
            else:
                if isinstance(vectors, (str, bytes)) or not isinstance(vectors, Iterable):
                    raise InvalidInput(f"vectors must be a list of vectors, got {type(vectors).__name__}")
                name = self.name or "snapshot"
                arrays = [_vector(v, self.dims, f"vectors[{i}]", name) for i, v in enumerate(vectors)]
                if not arrays:
                    return []
                queries = self._checked(dict(enumerate(arrays)))  # type: ignore[arg-type]
                rows = []
            if not size:
                return [[] for _ in range(len(queries))]
            dist = self._distances(queries.astype(np.float64), base.astype(np.float64))
            out = []
            for i in range(len(queries)):
                d = dist[i]
                if rows:
                    d[rows[i]] = np.inf  # the item itself is left out
                order = np.argsort(d, kind="stable")[: min(n, size - (1 if rows else 0))]
                out.append([self._keys[j] for j in order])
            return out

    def _distances(self, queries: np.ndarray, base: np.ndarray) -> np.ndarray:
        """embcache's distances: squared L2, or 1 - inner product (``ip``, and ``cosine`` on unit vectors)."""
        if self.metric == "l2":
            return (queries**2).sum(1)[:, None] - 2 * queries @ base.T + (base**2).sum(1)[None, :]
        return 1.0 - queries @ base.T

    nearest_neighbor = nearest_neighbors
    multi_nearest_neighbor = multi_nearest_neighbors

    # back to the hub --------------------------------------------------------------------------------------
    def _owner(self) -> EmbeddingHub:
        if self.source is None:
            raise InvalidInput("this snapshot was not downloaded from a hub: it has nowhere to write to")
        return self.source.owner

    def refresh(self, wait: bool = True) -> "Future[None] | None":
        """Read the space again into this copy (local writes to keys the space also holds are replaced).
        With ``wait=False`` the call returns a future (already done: the refresh ran)."""
        if self.source is None:
            raise InvalidInput("this snapshot was not downloaded from a hub: it has nothing to refresh from")
        return _run(lambda: self.multiset(self.source.iterator()), wait)  # type: ignore[union-attr]

    def write_to_space(self, name: object, create: bool = False) -> None:
        """Write every key of this copy to the space ``name`` (created first with ``create``)."""
        owner = self._owner()
        target = owner.create_space(name, self.dims) if create else owner.get_space(name)
        assert isinstance(target, Space)
        target.multiset(self.iterator())

    def overwrite_space(self, name: object) -> None:
        """Make the space ``name`` hold exactly this copy: its other keys are deleted, then this copy is written."""
        target = self._owner().get_space(name)
        assert isinstance(target, Space)
        keep = set(self._row)
        target.multidelete([k for k, _ in target.iterator() if k not in keep])
        target.multiset(self.iterator())


def _run(fn: Callable[[], T], wait: bool) -> "T | Future[T]":
    """``fn()``; with ``wait=False`` its result (or error) in a done future, like Embeddinghub's async calls."""
    if wait:
        return fn()
    future: Future[T] = Future()
    try:
        future.set_result(fn())
    except Exception as exc:  # noqa: BLE001 - the caller reads it from the future, as from gRPC's
        future.set_exception(exc)
    return future


class EmbeddingHubClient:
    """Embeddinghub's flat client: every call names its space first (``client.set(space, key, embedding)``).

    ``EmbeddingHubClient(host, port)`` connects to the Redis at ``host:port``; without them, to embcache's default
    hub; ``url=`` (or ``config=``) says it directly. ``wait=False`` returns a future that is already done.
    Other keyword arguments go to :func:`connect` (``metric``, ``consistency``, ``username``, ``password``...).
    """

    def __init__(self, host: str | None = None, port: int | str | None = None, grpc_channel: object = None, *,
                 url: str | None = None, config: Config | LocalConfig | None = None, **kwargs: Any) -> None:
        if grpc_channel is not None:
            raise InvalidInput("embcache has no gRPC server: give host and port of Redis, a url or a config")
        if (host is not None or port is not None) and (url is not None or config is not None):
            raise InvalidInput("give host/port, a url or a config, not several")
        if config is None and url is None:
            config = Config(host, port)
        self._hub = connect(config, url, **kwargs)
        self._spaces: dict[str, Space] = {}

    def _space(self, name: object) -> Space:
        key = space_name(name)
        space = self._spaces.get(key)
        if space is None:
            space = self._hub.get_space(key)  # type: ignore[assignment]
            assert isinstance(space, Space)
            self._spaces[key] = space
        return space

    def close(self) -> None:
        """Close the connection."""
        self._hub.close()

    def __enter__(self) -> "EmbeddingHubClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_space(self, name: object, dims: int, wait: bool = True) -> Any:
        """Create a space of ``dims`` dimensions."""
        return _run(lambda: self._spaces.__setitem__(space_name(name), self._hub.create_space(name, dims)), wait)

    def check_space(self, name: object, wait: bool = True) -> Any:
        """:class:`~embcache.NotFound` unless the space exists."""
        return _run(lambda: self._space(name) and None, wait)

    def delete_space(self, name: object, wait: bool = True) -> Any:
        """Delete a space and everything in it."""
        self._spaces.pop(space_name(name), None)
        return _run(lambda: self._hub.delete_space(name), wait)

    def freeze_space(self, name: object, wait: bool = True) -> Any:
        """Make a space read-only for good; later writes raise :class:`~embcache.errors.SpaceFrozen` (``TypeError``)."""
        return _run(lambda: self._hub.freeze_space(name), wait)

    def set(self, space: object, key: str, embedding: Embedding, wait: bool = True) -> Any:
        """Store ``embedding`` under ``key`` in ``space``."""
        return _run(lambda: self._space(space).set(key, embedding), wait)

    def get(self, space: object, key: str, wait: bool = True) -> Any:
        """The embedding of ``key`` in ``space``."""
        return _run(lambda: self._space(space).get(key), wait)

    def delete(self, space: object, key: str, wait: bool = True) -> Any:
        """Delete ``key`` from ``space``."""
        return _run(lambda: self._space(space).delete(key), wait)

    def multiset(self, space: object,
                 embedding_tuples: Mapping[str, Embedding] | Iterable[tuple[str, Embedding]]) -> None:
        """Store a mapping or ``(key, embedding)`` pairs in ``space``, atomically."""
        self._space(space).multiset(embedding_tuples)

    def multiget(self, space: object, keys: Iterable[str]) -> list[list[float]]:
        """The embeddings of ``keys`` in ``space``, in order."""
        return self._space(space).multiget(keys)

    def multidelete(self, space: object, keys: Iterable[str]) -> None:
        """Delete the keys of ``space`` that exist (the others are ignored)."""
        self._space(space).multidelete(keys)

    def nearest_neighbor(self, space: object, num: int, key: str | None = None, embedding: Embedding | None = None,
                         wait: bool = True) -> Any:
        """The ``num`` keys nearest to ``key`` (itself left out) or to ``embedding`` in ``space``."""
        return _run(lambda: self._space(space).nearest_neighbors(num, key=key, vector=embedding), wait)

    def download(self, space: object) -> Iterator[tuple[str, list[float]]]:
        """Every ``(key, embedding)`` of ``space``."""
        return self._space(space).iterator()
