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

How it maps onto embcache: each Embeddinghub space is one embcache space (metric ``l2``, Embeddinghub's, unless
``metric`` says otherwise); its items live in one version, ``v1``, created on the first write and aliased
``live``, in the partition ``default``. The space stays an ordinary embcache space: ``hub.hub.space(name)``
reaches it with the full API (versions, filters, snapshots, access control).

Semantics kept from Embeddinghub:

- ``nearest_neighbors`` returns keys only, nearest first; asked by ``key``, the key itself is left out, so a
  full answer has ``num`` other keys. When the space holds fewer items, the answer is shorter.
- ``get``/``multiget`` return embeddings as lists of Python floats (float32 precision, like Embeddinghub's
  protobuf floats); ``multiset`` takes a mapping or an iterable of ``(key, embedding)`` pairs, later pairs
  winning; keys are strings, and integers are turned into strings as Embeddinghub did.
- Reads see every write committed before them, from any process (embcache's ``strong`` consistency; pass
  ``consistency="session"`` to :func:`connect` to read from loaded snapshots plus this process's own writes).

Differences:

- Errors are embcache's (one tree, see :mod:`embcache.errors`): :class:`~embcache.NotFound` (a ``KeyError``) for
  an unknown space or key, :class:`~embcache.DimensionMismatch` / :class:`~embcache.InvalidInput` (``ValueError``)
  for a bad vector or key, :class:`~embcache.AlreadyExists` for a taken space name,
  :class:`~embcache.VersionSealed` for a write to a frozen space.
- Space names follow embcache's rules (1-64 characters from ``A-Za-z0-9_.-``, starting with a letter or digit)
  and keys are at most 512 UTF-8 bytes.
- ``multiset`` is atomic (all pairs or none); ``multidelete`` checks that every key exists before deleting.
- ``iterator`` walks every key in pieces; ``get_space(download_snapshot=...)`` accepts the flag and ignores it
  (embcache clients load snapshots themselves). ``LocalConfig`` (an in-memory hub) is not offered.
- With ``metric="cosine"`` embcache stores vectors normalised, so ``get`` returns unit vectors.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import embcache
from embcache import AlreadyExists, DimensionMismatch, InvalidInput, NotFound

__all__ = ["Config", "EmbeddingHub", "Space", "connect", "VERSION", "ALIAS", "PARTITION", "DEFAULT_METRIC"]

VERSION = "v1"
"""The version every facade space keeps its items in."""
ALIAS = "live"
"""The alias pointed at :data:`VERSION` when the facade creates it (and followed when it reads)."""
PARTITION = "default"
"""The partition every facade item lives in."""
DEFAULT_METRIC = "l2"
"""Embeddinghub's metric (its index is an hnswlib ``l2`` index)."""

Embedding = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class Config:
    """Where the Redis behind the hub is (Embeddinghub's ``Config(host, port)``, pointed at Redis instead).

    >>> Config("redis.internal", 6380, db=2).url
    'redis://redis.internal:6380/2'
    """

    host: str = "127.0.0.1"
    port: int | str = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @property
    def url(self) -> str:
        """The ``redis://`` (``rediss://`` with ``tls``) URL of this configuration, without credentials."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}"


def connect(
    config: Config | None = None,
    url: str | None = None,
    *,
    metric: str = DEFAULT_METRIC,
    consistency: str = "strong",
    **kwargs: Any,
) -> "EmbeddingHub":
    """Connect like ``embeddinghub.connect(embeddinghub.Config(host, port))``.

    Give a :class:`Config` or a ``url`` (``redis://``, ``rediss://``, ``unix://``), not both; with neither,
    :func:`embcache.connect` decides (``EMBCACHE_URL``, else the embedded Redis). ``metric`` is the metric of
    spaces created through the facade; ``consistency`` that of its reads. Other keyword arguments go to
    :func:`embcache.connect`.
    """
    if config is not None and url is not None:
        raise InvalidInput("give a Config or a url, not both")
    if config is not None and not isinstance(config, Config):
        raise InvalidInput(f"config must be an embcache.compat.embeddinghub.Config, got {type(config).__name__}")
    if consistency not in ("eventual", "session", "strong"):
        raise InvalidInput(f"consistency must be eventual, session or strong, got {consistency!r}")
    if metric not in ("l2", "ip", "cosine"):
        raise InvalidInput(f"metric must be l2, ip or cosine, got {metric!r}")
    if config is not None:
        url = config.url
        if config.username is not None:
            kwargs.setdefault("username", config.username)
        if config.password is not None:
            kwargs.setdefault("password", config.password)
    hub = embcache.connect(url, **kwargs)
    return EmbeddingHub(hub, metric=metric, consistency=consistency, owns_hub=True)


class EmbeddingHub:
    """Embeddinghub's hub object: creates, opens and deletes spaces. Get one from :func:`connect`."""

    def __init__(
        self, hub: embcache.Hub, *, metric: str = DEFAULT_METRIC, consistency: str = "strong", owns_hub: bool = False
    ) -> None:
        self.hub = hub
        self.metric = metric
        self.consistency = consistency
        self._owns_hub = owns_hub

    def create_space(self, name: str, dims: int, *, metric: str | None = None) -> "Space":
        """Create a space of ``dims`` dimensions; :class:`~embcache.AlreadyExists` if the name is taken."""
        space = self.hub.create_space(name, dim=dims, metric=metric or self.metric)
        return Space(self, space)

    def get_space(self, name: str, download_snapshot: bool = False) -> "Space":
        """An existing space; :class:`~embcache.NotFound` otherwise. ``download_snapshot`` is accepted and
        ignored: embcache clients load snapshots themselves."""
        return Space(self, self.hub.space(name))

    def delete_space(self, name: str) -> None:
        """Delete a space and everything in it; :class:`~embcache.NotFound` if there is no such space."""
        self.hub.drop_space(name)

    def freeze_space(self, name: str) -> None:
        """Make a space read-only for good (its version is sealed); later writes raise
        :class:`~embcache.VersionSealed`."""
        space = self.get_space(name)
        space._version(create=True).seal()  # type: ignore[union-attr]

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

    # validation -------------------------------------------------------------------------------------------
    @staticmethod
    def _key(key: object) -> str:
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise InvalidInput(f"keys must be strings, got {type(key).__name__}")
        return key if isinstance(key, str) else str(key)

    def _keys(self, keys: Iterable[object]) -> list[str]:
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
            raise InvalidInput(f"keys must be a list of strings, got {type(keys).__name__}")
        return [self._key(k) for k in keys]

    def _vector(self, vector: object, what: str) -> np.ndarray:
        if vector is None or isinstance(vector, (str, bytes, Mapping)):
            raise InvalidInput(f"{what} must be a list of {self.dims} numbers, got {type(vector).__name__}")
        try:
            arr = np.asarray(vector)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{what} is not a flat list of numbers: {exc}") from None
        if arr.ndim != 1:
            raise InvalidInput(f"{what} must be one flat vector of {self.dims} numbers, got shape {arr.shape}")
        if arr.shape[0] != self.dims:
            raise DimensionMismatch(f"{what} has {arr.shape[0]} dimensions, space {self.name!r} has {self.dims}")
        return arr

    @staticmethod
    def _num(num: object) -> int:
        if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
            raise InvalidInput(f"num must be a positive integer, got {num!r}")
        return int(num)

    # key-value interface ----------------------------------------------------------------------------------
    def set(self, key: str, embedding: Embedding) -> None:
        """Store ``embedding`` under ``key`` (replacing what was there)."""
        k = self._key(key)
        vec = self._vector(embedding, f"embedding of {k!r}")
        self._version(create=True).upsert([k], vec[None, :], partition=PARTITION)  # type: ignore[union-attr]

    def multiset(self, embeddings: Mapping[str, Embedding] | Iterable[tuple[str, Embedding]]) -> None:
        """Store many embeddings at once, atomically: a mapping ``{key: embedding}`` or ``(key, embedding)``
        pairs (a later pair for the same key wins). Nothing is written if any pair is invalid."""
        pairs = embeddings.items() if isinstance(embeddings, Mapping) else embeddings
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
            raise InvalidInput(f"multiset takes a mapping or (key, embedding) pairs, got {type(embeddings).__name__}")
        batch: dict[str, np.ndarray] = {}
        for pair in pairs:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InvalidInput(f"multiset takes (key, embedding) pairs, got {pair!r:.80}")
            k = self._key(pair[0])
            batch[k] = self._vector(pair[1], f"embedding of {k!r}")
        if not batch:
            return
        try:
            matrix = np.stack(list(batch.values()))
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"embeddings are not numbers: {exc}") from None
        self._version(create=True).upsert(list(batch), matrix, partition=PARTITION)  # type: ignore[union-attr]

    def get(self, key: str) -> list[float]:
        """The embedding stored under ``key``; :class:`~embcache.NotFound` (a ``KeyError``) if there is none."""
        return self.multiget([key])[0]

    def multiget(self, keys: Iterable[str]) -> list[list[float]]:
        """The embeddings of ``keys``, in order; :class:`~embcache.NotFound` if any key is missing."""
        wanted = self._keys(keys)
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
        k = self._key(key)
        version = self._version(create=False)
        if version is None or version.delete([k]) == 0:
            raise NotFound(f"space {self.name!r} has no key {k!r}")

    def multidelete(self, keys: Iterable[str]) -> None:
        """Delete several keys at once; :class:`~embcache.NotFound` (and nothing deleted) if one is missing."""
        wanted = list(dict.fromkeys(self._keys(keys)))
        if not wanted:
            return
        version = self._written(wanted[0])
        there = set(version.get(wanted, include=()).ids)
        missing = [k for k in wanted if k not in there]
        if missing:
            raise NotFound(f"space {self.name!r} has no key {missing[0]!r}")
        version.delete(wanted)

    def delete_all(self) -> None:
        """Delete every key of the space (the space itself stays)."""
        for version, keys in list(self._key_batches()):
            version.delete(keys)

    def iterator(self) -> Iterator[tuple[str, list[float]]]:
        """Every ``(key, embedding)`` of the space, read in pieces."""
        for version, keys in self._key_batches():
            got = version.get(keys, include=("embeddings",))
            for key, vec in zip(got.ids, got.embeddings):
                yield key, vec.tolist()

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
        n = self._num(num)
        if (keys is None) == (vectors is None):
            raise InvalidInput("give exactly one of key(s) and vector(s)")
        consistency = self.owner.consistency
        if keys is not None:
            wanted = self._keys(keys)
            if not wanted:
                return []
            version = self._written(wanted[0])
            res = version.query_by_id(wanted, n, consistency=consistency)  # type: ignore[arg-type]
            return res.ids
        assert vectors is not None
        if isinstance(vectors, (str, bytes)) or not isinstance(vectors, Iterable):
            raise InvalidInput(f"vectors must be a list of vectors, got {type(vectors).__name__}")
        arrays = [self._vector(v, f"vectors[{i}]") for i, v in enumerate(vectors)]
        if not arrays:
            return []
        try:
            queries = np.stack(arrays)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"vectors are not numbers: {exc}") from None
        version = self._version(create=False)
        if version is None:  # nothing was ever written: validate here what the query would have
            if not np.issubdtype(queries.dtype, np.number) or not np.isfinite(queries.astype(np.float64)).all():
                raise InvalidInput("vectors must be finite numbers")
            return [[] for _ in arrays]
        res = version.query(queries, n, consistency=consistency)  # type: ignore[arg-type]
        return res.ids
