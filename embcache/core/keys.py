"""Every Redis key and channel embcache uses is built here, and only here.

Layout (default prefix ``emb``)::

    emb:{_hub}:spaces                         set    names of all spaces
    emb:{_hub}:dispatcher                     string held (with a TTL) by the active dispatcher
    emb:{_hub}:principals                     hash   principal -> JSON (secret hash, grants); operator only
    emb:{movies}:space                        hash   the space's record (dim, metric, dtype, HNSW params)
    emb:{movies}:versions                     hash   version name -> JSON record (state, created, ...)
    emb:{movies}:seq                          string counter behind the default names v1, v2, ...
    emb:{movies}:aliases                      hash   alias -> version name
    emb:{movies}:alias:live                   list   history of the alias' targets, newest first
    emb:{movies}:parts:v1                     set    partitions of version v1
    emb:{movies}:vstate:v1                    string "open" or "sealed" (a string: writers cannot change it)
    emb:{movies}:dirty                        zset   "version/partition" -> time first marked dirty
    emb:{movies}:grants                       hash   principal -> JSON grant on this space (role, partitions)
    emb:{movies}:events                       channel snapshot publications of the space
    emb:{movies/v1/default}:vec               hash   item id -> raw little-endian vector bytes
    emb:{movies/v1/default}:meta              hash   item id -> metadata JSON
    emb:{movies/v1/default}:log               stream change log (op, ids) written with every change
    emb:{movies/v1/default}:state             hash   log position, trim point, build statistics
    emb:{movies/v1/default}:sealed            string "1" once the version is sealed (checked by every write)
    emb:{movies/v1/default}:snap              string manifest of the published snapshot (the pointer)
    emb:{movies/v1/default}:snap:7.a1b2c3:0   string chunk 0 of snapshot 7.a1b2c3 (generation 7, one build's nonce)
    emb:{movies/v1/default}:delta             string the delta chain: segments published after the snapshot
    emb:{movies/v1/default}:lease             string held (with a TTL) by the worker building the partition
    emb:{movies/v1}:vgraph                    string manifest of the version graph (all partitions in one index)
    emb:{movies/v1}:vgraph:4.a1b2c3:0         string chunk 0 of version graph 4.a1b2c3
    emb:{movies/v1}:vglease                   string held (with a TTL) by the worker updating the version graph
    emb:{movies/v1}:vgdirty                   string set when a partition build found the version graph busy
    emb:{movies/v1}:owners                    hash   item id -> the partition holding it (hints; '' = complete map)

The text between braces is the Redis Cluster hash tag: every key of one partition of one version lives in one
slot, so a partition's writes are atomic even on a cluster, and every space-level key lives in the space's slot.
Names are restricted to ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``, so no name can contain a brace, a glob character,
the ``/`` that separates the parts of a partition tag, or the ``:`` that separates key parts; ACL key patterns
built by :mod:`embcache.acl` rely on that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidName

__all__ = ["Keys", "PartitionKeys", "ParsedKey", "check_name", "NAME_PATTERN", "DEFAULT_PREFIX"]

DEFAULT_PREFIX = "emb"
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_NAME_RE = re.compile(NAME_PATTERN)
_HUB_TAG = "_hub"
# the key kinds :meth:`Keys.parse` recognises, by level
# (keep these in step with the builders below: tests/test_keys.py round-trips every builder through parse)
_HUB_KINDS = frozenset({"spaces", "principals", "dispatcher"})
_SPACE_KINDS = frozenset({"space", "versions", "seq", "aliases", "dirty", "grants", "events"})
_SPACE_NAMED_KINDS = frozenset({"alias", "parts", "vstate"})  # followed by one name
_PARTITION_KINDS = frozenset({"vec", "meta", "log", "state", "snap", "delta", "lease", "sealed"})
_VERSION_KINDS = {"vgraph": "version_graph", "vglease": "version_graph_lease", "vgdirty": "version_graph_dirty",
                  "owners": "owners"}
_SNAPSHOT_ID_RE = re.compile(r"[0-9]+(\.[0-9a-z]+)?")  # generation, then the build's nonce


def check_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is a safe space/version/alias/partition name, else raise :class:`InvalidName`."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidName(
            f"invalid {what} {name!r}: use 1-64 characters from A-Z a-z 0-9 _ . - starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class PartitionKeys:
    """The keys of one partition of one version; all share one hash tag (one Cluster slot)."""

    tag: str
    vec: str
    meta: str
    log: str
    state: str
    snap: str
    lease: str
    sealed: str
    delta: str  # the delta chain (see embcache.core.delta); its segments' chunks are named like snapshot chunks

    @property
    def writes(self) -> list[str]:
        """The keys an atomic write function is given (vec, meta, log, state, sealed)."""
        return [self.vec, self.meta, self.log, self.state, self.sealed]

    def names(self) -> tuple[str, str, str]:
        """``(space, version, partition)`` of these keys."""
        return tag_names(self.tag)

    def chunk(self, snapshot_id: str, index: int) -> str:
        """Key of chunk ``index`` of the snapshot ``snapshot_id`` (generation plus a per-build nonce, so two
        builds racing for one generation never write the same keys)."""
        return f"{self.snap}:{snapshot_id}:{index}"


def tag_names(tag: str) -> tuple[str, str, str]:
    """``(space, version, partition)`` of a partition's hash tag (:meth:`Keys.partition_tag`)."""
    space, version, partition = tag.split("/", 2)
    return space, version, partition


@dataclass(frozen=True)
class ParsedKey:
    """The parts of a key built by :class:`Keys` (None where a part does not apply)."""

    kind: str
    space: str | None = None
    version: str | None = None
    partition: str | None = None
    extra: tuple[str, ...] = ()


class Keys:
    """Builds the keys of one hub (one prefix)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", prefix):
            raise InvalidName(f"invalid key prefix {prefix!r}")
        self.prefix = prefix

    # hub level
    def spaces(self) -> str:
        return f"{self.prefix}:{{{_HUB_TAG}}}:spaces"

    def principals(self) -> str:
        """Hash of principal -> JSON record (secret hash and grants); the operator's only."""
        return f"{self.prefix}:{{{_HUB_TAG}}}:principals"

    def dispatcher_lock(self) -> str:
        """Held (with a TTL) by the one dispatcher that turns dirty marks into jobs."""
        return f"{self.prefix}:{{{_HUB_TAG}}}:dispatcher"

    # space level
    def _space(self, space: str, suffix: str) -> str:
        return f"{self.prefix}:{{{check_name(space, 'space name')}}}:{suffix}"

    def space(self, space: str) -> str:
        return self._space(space, "space")

    def versions(self, space: str) -> str:
        return self._space(space, "versions")

    def seq(self, space: str) -> str:
        return self._space(space, "seq")

    def aliases(self, space: str) -> str:
        return self._space(space, "aliases")

    def alias_history(self, space: str, alias: str) -> str:
        return self._space(space, f"alias:{check_name(alias, 'alias')}")

    def parts(self, space: str, version: str) -> str:
        return self._space(space, f"parts:{check_name(version, 'version name')}")

    def vstate(self, space: str, version: str) -> str:
        """String "open" or "sealed": the state every new partition's registration checks."""
        return self._space(space, f"vstate:{check_name(version, 'version name')}")

    def dirty(self, space: str) -> str:
        """Sorted set of :meth:`dirty_member` marks (score: the first mark's time) the dispatcher turns into jobs."""
        return self._space(space, "dirty")

    @staticmethod
    def dirty_member(version: str, partition: str) -> str:
        """The member of :meth:`dirty` that marks one partition."""
        return f"{version}/{partition}"

    @staticmethod
    def parse_dirty_member(member: bytes | str) -> tuple[str, str] | None:
        """``(version, partition)`` of a :meth:`dirty` member; None when it is malformed (writers can write the
        set, so anything may be there)."""
        text = member.decode(errors="replace") if isinstance(member, bytes) else member
        version, _, partition = text.partition("/")
        if not (_NAME_RE.fullmatch(version) and _NAME_RE.fullmatch(partition)):
            return None
        return version, partition

    def grants(self, space: str) -> str:
        """Hash of principal -> JSON grant on this space (role, partitions), readable by the space's principals."""
        return self._space(space, "grants")

    def events(self, space: str) -> str:
        return self._space(space, "events")

    def space_pattern(self, space: str, kind: str = "*") -> str:
        """Glob that matches every space-level key of ``space`` (for SCAN and ACL), or only those of one ``kind``
        with a name after it (``"parts"``: every version's partition set)."""
        return self._space(space, "*" if kind == "*" else f"{kind}:*")

    def space_scan_patterns(self, space: str) -> list[str]:
        """Globs that together match every key under the space's hash tags, whatever follows the tag: the
        space-level ``{space}`` and every ``{space/...}`` (for dropping a space, keys planted by writers too)."""
        check_name(space, "space name")
        return [f"{self.prefix}:{{{space}}}:*", f"{self.prefix}:{{{space}/*"]

    # partition level
    def partition_tag(self, space: str, version: str, partition: str) -> str:
        check_name(space, "space name")
        check_name(version, "version name")
        check_name(partition, "partition name")
        return f"{space}/{version}/{partition}"

    def partition(self, space: str, version: str, partition: str) -> PartitionKeys:
        tag = self.partition_tag(space, version, partition)
        base = f"{self.prefix}:{{{tag}}}"
        return PartitionKeys(
            tag=tag,
            vec=f"{base}:vec",
            meta=f"{base}:meta",
            log=f"{base}:log",
            state=f"{base}:state",
            snap=f"{base}:snap",
            lease=f"{base}:lease",
            sealed=f"{base}:sealed",
            delta=f"{base}:delta",
        )

    # version level: the version graph (one index over every partition; see embcache.core.vgraph)
    def _version(self, space: str, version: str, suffix: str) -> str:
        check_name(space, "space name")
        check_name(version, "version name")
        return f"{self.prefix}:{{{space}/{version}}}:{suffix}"

    def version_graph(self, space: str, version: str) -> str:
        """The version graph's manifest (its pointer); readable only by principals granted every partition."""
        return self._version(space, version, "vgraph")

    def version_graph_chunk(self, space: str, version: str, snapshot_id: str, index: int) -> str:
        return f"{self.version_graph(space, version)}:{snapshot_id}:{index}"

    def version_graph_lease(self, space: str, version: str) -> str:
        """Held (with a TTL) by the one worker updating the version graph."""
        return self._version(space, version, "vglease")

    def version_graph_dirty(self, space: str, version: str) -> str:
        """Set by a partition build that found the version graph's lease taken: its holder builds again."""
        return self._version(space, version, "vgdirty")

    def owners(self, space: str, version: str) -> str:
        """Hash item id -> the partition that claimed it (emb_claim), so an upsert checks every other partition
        of the version in one call; the field ``''`` says the map covers the version since its creation. It lives
        under the version's tag, outside what a partition-limited principal may read (it names every item)."""
        return self._version(space, version, "owners")

    def owners_pattern(self, space: str) -> str:
        """Glob over the owners maps of every version of ``space`` (for ACL)."""
        check_name(space, "space name")
        return f"{self.prefix}:{{{space}/*}}:owners"

    def version_graph_pattern(self, space: str) -> str:
        """Glob over the version graphs (manifests and chunks) of every version of ``space`` (for ACL)."""
        check_name(space, "space name")
        return f"{self.prefix}:{{{space}/*}}:vgraph*"

    def partition_pattern(self, space: str, version: str = "*", partition: str = "*", kind: str = "*") -> str:
        """Glob over partition keys of a space; ``*`` for any version or partition (for SCAN and ACL), and for
        any key kind unless ``kind`` names one (``"vec"``, ``"log"``, ...)."""
        check_name(space, "space name")
        if version != "*":
            check_name(version, "version name")
        if partition != "*":
            check_name(partition, "partition name")
        return f"{self.prefix}:{{{space}/{version}/{partition}}}:{kind}"

    # parsing
    def parse(self, key: str | bytes) -> ParsedKey:
        """Split a key built by this object back into its parts; raises :class:`InvalidName` otherwise."""
        if isinstance(key, bytes):
            try:
                key = key.decode()
            except UnicodeDecodeError:
                raise InvalidName(f"not an embcache key: {key!r}") from None
        if not isinstance(key, str):
            raise InvalidName(f"not an embcache key: {key!r}")
        m = re.fullmatch(re.escape(self.prefix) + r":\{([^{}]+)\}:(.+)", key)
        if not m:
            raise InvalidName(f"not an embcache key: {key!r}")
        tag, rest = m.group(1), m.group(2).split(":")
        kind, extra = rest[0], tuple(rest[1:])
        if tag == _HUB_TAG:
            if kind in _HUB_KINDS and not extra:
                return ParsedKey(kind=kind)
            raise InvalidName(f"not an embcache key: {key!r}")
        parts = tag.split("/")
        if not all(_NAME_RE.fullmatch(p) for p in parts):
            raise InvalidName(f"not an embcache key: {key!r}")
        if len(parts) == 1:
            if (kind in _SPACE_KINDS and not extra) or (
                kind in _SPACE_NAMED_KINDS and len(extra) == 1 and _NAME_RE.fullmatch(extra[0])
            ):
                return ParsedKey(kind=kind, space=parts[0], extra=extra)
        elif len(parts) == 2:
            if kind in _VERSION_KINDS and not extra:
                return ParsedKey(kind=_VERSION_KINDS[kind], space=parts[0], version=parts[1])
            if kind == "vgraph" and len(extra) == 2 and _SNAPSHOT_ID_RE.fullmatch(extra[0]) and extra[1].isascii() \
                    and extra[1].isdigit():
                return ParsedKey(kind="version_graph_chunk", space=parts[0], version=parts[1], extra=extra)
        elif len(parts) == 3:
            space, version, partition = parts
            if kind in _PARTITION_KINDS and not extra:
                return ParsedKey(kind=kind, space=space, version=version, partition=partition)
            if kind == "snap" and len(extra) == 2 and _SNAPSHOT_ID_RE.fullmatch(extra[0]) and extra[1].isascii() \
                    and extra[1].isdigit():
                return ParsedKey(kind="chunk", space=space, version=version, partition=partition, extra=extra)
        raise InvalidName(f"not an embcache key: {key!r}")
