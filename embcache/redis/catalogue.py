"""The catalogue: typed records of spaces and versions, aliases with history, partitions of a version.

Records are pydantic models stored as JSON in plain Redis keys of the space's hash tag (see ``docs/design.md``
for why these are not redis-om models). Multi-key changes (create a version, move an alias, seal) are functions
of the Functions library, so they are atomic.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core import codec
from ..core.errors import (
    AlreadyExists,
    Conflict,
    CorruptRecord,
    EmbcacheError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    SpaceNotFound,
    Unavailable,
    VersionNotFound,
)
from ..core.keys import NAME_PATTERN, check_name
from .plan import Batch, Call, Plan, Scan, planned
from .store import Store, translate_errors

__all__ = ["SpaceRecord", "VersionRecord", "PartitionDigest", "Catalogue", "valid_names", "check_description",
           "MAX_DESCRIPTION_BYTES"]

log = logging.getLogger("embcache.catalogue")
MAX_DESCRIPTION_BYTES = 1024  # a version's description, in UTF-8 bytes (functions.lua checks the same)
MAX_RECORD_BYTES = 4 << 20  # a record read back larger than this is refused before it is parsed


def vstate_name(vstate: str) -> str:
    """The state a version's state string stands for. The string only grows (functions.lua): ``open``, then
    ``open:sealing``, then ``open:sealing:sealed``; whatever an admin appends after that cannot make it open
    again, and a string that is neither open nor sealed is a seal under way (``sealing``)."""
    if vstate == "open":
        return "open"
    if vstate == "sealed" or vstate.startswith("open:sealing:sealed"):  # "sealed": written by older releases
        return "sealed"
    return "sealing"


Name = Annotated[str, Field(pattern=f"^{NAME_PATTERN}$")]


class SpaceRecord(BaseModel):
    """A space's parameters; fixed at creation. Every field is bounded as :func:`codec.check_space_params`
    bounds it, and checked wherever a record is read (a worker must never hand hnswlib ``M=0``)."""

    model_config = ConfigDict(frozen=True, strict=True)
    name: Name
    dim: int = Field(ge=1, le=codec.MAX_DIM)
    metric: Literal["cosine", "l2", "ip"]
    dtype: Literal["float32", "float16"] = "float32"
    M: int = Field(16, ge=2, le=128)
    ef_construction: int = Field(200, ge=1, le=10_000)
    ef: int = Field(64, ge=1, le=10_000)
    neighbours: int = Field(0, ge=0, le=codec.MAX_NEIGHBOURS)  # precomputed neighbours per item, 0 = none
    created: float = 0.0


class PartitionDigest(BaseModel):
    """What a partition held when its version was sealed (see :func:`codec.partition_digest`)."""

    model_config = ConfigDict(frozen=True, strict=True)
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    count: int = Field(ge=0)
    pos: str = Field(pattern=r"^\d+-\d+$", max_length=41)


class VersionRecord(BaseModel):
    """One generation of a space's embeddings. ``state`` is ``sealing`` while a seal is under way (or was cut
    short: run ``seal()`` again); ``digests`` are the sealed partitions' contents."""

    model_config = ConfigDict(frozen=True, strict=True)
    name: Name
    state: Literal["open", "sealing", "sealed"] = "open"
    created: float = 0.0
    description: str = Field("", max_length=MAX_DESCRIPTION_BYTES)
    digests: dict[Name, PartitionDigest] = Field(default_factory=dict)


M = TypeVar("M", bound=BaseModel)


def _d(x: bytes | str | None) -> str | None:
    return x.decode() if isinstance(x, bytes) else x


def _load(model: type[M], raw: bytes | str, what: str, **expect: Any) -> M:
    """Parse and validate a record read back from Redis: :class:`CorruptRecord` when it is not one embcache
    wrote (too large, malformed, out of bounds, or not the record of the key it was read from)."""
    if len(raw) > MAX_RECORD_BYTES:
        raise CorruptRecord(f"{what}: the record is {len(raw)} bytes, over the {MAX_RECORD_BYTES} limit")
    try:
        rec = model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "record"
        raise CorruptRecord(f"{what}: the stored record is invalid ({where}: {first.get('msg')})") from None
    for field, value in expect.items():
        if getattr(rec, field) != value:
            raise CorruptRecord(f"{what}: the stored record names {field} {getattr(rec, field)!r}, not {value!r}")
    return rec


_reported: set[tuple[str, str]] = set()


def valid_names(members: Iterable[bytes | str], what: str) -> list[str]:
    """The valid names among ``members`` (a catalogue set read back from Redis), sorted. A name that a
    principal with raw access planted (``SADD parts "!bad name"``) is skipped and logged once, so one bad
    entry never breaks the space for everybody."""
    out = []
    for m in members:
        name = m.decode(errors="replace") if isinstance(m, bytes) else m
        try:
            out.append(check_name(name, what))
        except InvalidInput:
            if (what, name) not in _reported and len(_reported) < 10_000:
                _reported.add((what, name))
                log.warning("skipped an invalid %s %r: not a name embcache writes", what, name)
    return sorted(set(out))


def check_description(description: object) -> str:
    """A version description: a str of at most :data:`MAX_DESCRIPTION_BYTES` UTF-8 bytes."""
    if not isinstance(description, str):
        raise InvalidInput("description must be a str")
    try:
        size = len(description.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"description is not valid Unicode: {exc}") from None
    if size > MAX_DESCRIPTION_BYTES:
        raise InvalidInput(f"description is {size} bytes long as UTF-8; the limit is {MAX_DESCRIPTION_BYTES}")
    return description


def _version(raw: bytes | str, vstate: bytes | str | None, space: str, name: str) -> VersionRecord:
    """A version record with its state taken from the state string, which no principal can move backwards
    (an admin may rewrite the record's JSON, not unseal the version)."""
    rec = _load(VersionRecord, raw, f"version {space}/{name}", name=name)
    state = _d(vstate)
    if state is None:  # written before the state string existed
        return rec
    return rec.model_copy(update={"state": vstate_name(state)})


class Catalogue:
    """Catalogue operations over a :class:`~embcache.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.r = store.r
        self.k = store.keys

    # spaces
    @planned
    def create_space(self, record: SpaceRecord) -> Plan[None]:
        with translate_errors(f"create space {record.name}", write=True):
            if not (yield Call("set", self.k.space(record.name), record.model_dump_json(), nx=True)):
                raise AlreadyExists(f"space {record.name!r} already exists")
            yield Call("sadd", self.k.spaces(), record.name)

    @planned
    def get_space(self, name: str) -> Plan[SpaceRecord]:
        check_name(name, "space name")
        with translate_errors(f"read space {name}"):
            raw = yield Call("get", self.k.space(name))
        if raw is None:
            raise SpaceNotFound(f"no space named {name!r}")
        return _load(SpaceRecord, raw, f"space {name}", name=name)

    @planned
    def list_spaces(self) -> Plan[list[str]]:
        with translate_errors("list spaces"):
            return valid_names((yield Call("smembers", self.k.spaces())), "space name")

    @planned
    def delete_space_keys(self, name: str) -> Plan[int]:
        """Delete every key under the space's hash tags (``{name}`` and ``{name/...}``), found by SCAN: also the
        keys a principal planted for versions or partitions the catalogue does not list. Returns how many."""
        check_name(name, "space name")
        gone = 0
        with translate_errors(f"drop space {name}"):
            for pattern in self.k.space_scan_patterns(name):
                found = yield Scan(pattern)
                for start in range(0, len(found), 500):
                    gone += yield Call("delete", *found[start:start + 500])
        return gone

    @planned
    def unlist_space(self, name: str) -> Plan[None]:
        """Take ``name`` off the hub's listing of spaces (the last step of a drop)."""
        with translate_errors(f"drop space {name}"):
            yield Call("srem", self.k.spaces(), name)

    @planned
    def partition_lists(self, versions: Sequence[tuple[str, str]]) -> Plan[list[list[str]]]:
        """The sorted partition names of several ``(space, version)``, in one round trip on a standalone server."""
        with translate_errors("refresh partitions"):
            replies = yield Batch([Call("smembers", self.k.parts(space, version)) for space, version in versions])
            return [valid_names(members, "partition name") for members in replies]

    # versions
    @planned
    def create_version(self, space: str, name: str | None, description: str = "") -> Plan[VersionRecord]:
        if name is not None:
            check_name(name, "version name")
        rec = {"state": "open", "created": time.time(), "description": check_description(description)}
        k = self.k
        for _ in range(100):
            expected = ""
            chosen = name or ""
            if name is None:  # v<n+1>, checked atomically against the counter by the function
                with translate_errors(f"create version in {space}"):
                    expected = _d((yield Call("get", k.seq(space)))) or "0"
                chosen = f"v{int(expected) + 1}"
            try:
                created = yield from self.store.fcall_plan(
                    "emb_create_version", [k.versions(space), k.seq(space), k.vstate(space, chosen)],
                    [chosen, json.dumps(rec), expected], f"create version in {space}",
                )
            except Conflict:
                continue
            yield from self._start_owners_map(space, _d(created) or chosen)
            return VersionRecord(name=_d(created), **rec)  # type: ignore[arg-type]
        raise AlreadyExists(f"could not pick a free version name in {space!r}")

    def _start_owners_map(self, space: str, version: str) -> Plan[None]:
        """Mark the new version's owners map complete (its '' field), so upserts check other partitions with one
        call. It is another slot than the version record, so this is a second step: if it fails (an admin limited
        to some partitions may not write the map), the version works as one from before maps did."""
        try:
            with translate_errors(f"create version in {space}"):
                yield Call("hset", self.k.owners(space, version), "", "complete")
        except (PermissionDenied, Unavailable) as exc:
            log.warning("version %s/%s: no owners map (%s); upserts will ask every partition", space, version, exc)

    @planned
    def drop_version(self, space: str, version: str) -> Plan[None]:
        """Delete a version: its partitions' data and snapshots first, then its dirty marks, its place in the
        alias histories, its keys, and its record last, so that a drop cut short can simply be run again."""
        check_name(version, "version name")
        k = self.k
        for p in (yield from self.partitions.plan(space, version)):
            yield from self.store.delete_partition.plan(k.partition(space, version, p))
        with translate_errors(f"drop version {space}/{version}"):
            # the dirty set holds one "version/partition" member per partition waiting for a build: a few
            marks = [m for m in (yield Call("zrange", k.dirty(space), 0, -1))
                     if (k.parse_dirty_member(m) or ("",))[0] == version]
            if marks:
                yield Call("zrem", k.dirty(space), *marks)
            for alias in valid_names((yield Call("hkeys", k.aliases(space))), "alias"):
                yield Call("lrem", k.alias_history(space, alias), 0, version)
            yield Call("delete", k.parts(space, version), k.vstate(space, version))
            yield Call("delete", k.owners(space, version))  # another slot than the two above
            yield Call("hdel", k.versions(space), version)

    @planned
    def get_version(self, space: str, name: str) -> Plan[VersionRecord]:
        check_name(name, "version name")
        with translate_errors(f"read version {space}/{name}"):
            raw, vstate = yield Batch([Call("hget", self.k.versions(space), name),
                                       Call("get", self.k.vstate(space, name))])
        if raw is None:
            raise VersionNotFound(f"space {space!r} has no version {name!r}")
        return _version(raw, vstate, space, name)

    @planned
    def list_versions(self, space: str) -> Plan[list[VersionRecord]]:
        """Every valid version, oldest first; a record that is not one embcache wrote is skipped and logged."""
        with translate_errors(f"list versions of {space}"):
            raw = yield Call("hgetall", self.k.versions(space))
            names = valid_names(raw, "version name")
            states = (yield Batch([Call("get", self.k.vstate(space, n)) for n in names])) if names else []
        recs = []
        for n, vstate in zip(names, states):
            try:
                recs.append(_version(raw[n.encode()], vstate, space, n))
            except CorruptRecord as exc:
                log.warning("skipped %s", exc)
        return sorted(recs, key=lambda r: (r.created, r.name))

    @planned
    def seal(self, space: str, version: str) -> Plan[list[str]]:
        """Seal the version and return its partitions.

        Three steps, each safe to repeat: close the version to new partitions (state ``sealing``); flag every
        partition, after which its write functions refuse; record each partition's digest and mark the version
        ``sealed``. A seal cut short leaves ``sealing`` (never ``sealed`` with partitions that take writes);
        calling it again completes it. The digests let workers refuse to publish sealed data that a writer with
        raw Redis access changed afterwards."""
        k = self.k
        state, members = yield from self.store.fcall_plan(
            "emb_seal", [k.versions(space), k.parts(space, version), k.vstate(space, version)], [version], "seal")
        parts = valid_names(members, "partition name")
        for p in parts:
            yield from self.store.flag_sealed.plan(k.partition(space, version, p))
        if vstate_name(_d(state) or "") == "sealed":
            return parts  # sealed before: its digests stay the ones taken then
        digests = {}
        for p in parts:  # flagged: nothing more can be written through the functions
            data = yield from self.store.read_partition.plan(k.partition(space, version, p))
            digests[p] = {"sha256": codec.partition_digest(data.ids, data.vectors, data.metadatas),
                          "count": len(data.ids), "pos": data.pos}
        yield from self.store.fcall_plan("emb_sealed", [k.versions(space), k.vstate(space, version)],
                                         [version, json.dumps(digests)], "seal")
        return parts

    @planned
    def register_partition(self, space: str, version: str, partition: str) -> Plan[bool]:
        """Add the partition to the version's list; True when this call added it."""
        added = yield from self.store.fcall_plan(
            "emb_register", [self.k.vstate(space, version), self.k.parts(space, version)], [partition],
            f"write to {space}/{version}",
        )
        return bool(added)

    @planned
    def has_partition(self, space: str, version: str, partition: str) -> Plan[bool]:
        """True when the version is in the space's catalogue and the partition is registered in it (one round
        trip)."""
        with translate_errors(f"read partitions of {space}/{version}"):
            has_version, has_partition = yield Batch([Call("hexists", self.k.versions(space), version),
                                                      Call("sismember", self.k.parts(space, version), partition)])
        return bool(has_version and has_partition)

    @planned
    def unregister_empty(self, space: str, version: str, partition: str) -> Plan[None]:
        """Undo :meth:`register_partition` after the first write into the partition was refused, if the partition
        holds nothing. Best effort: principals hold no SREM (it stays listed, empty), and a concurrent first write
        by another hub between the check and the SREM would go unlisted (see docs/design.md)."""
        pk = self.k.partition(space, version, partition)
        try:
            with translate_errors(f"undo register {space}/{version}/{partition}", write=True):
                n = yield Call("exists", pk.vec, pk.log)
                if not n:
                    yield Call("srem", self.k.parts(space, version), partition)
        except EmbcacheError:
            pass

    @planned
    def partitions(self, space: str, version: str) -> Plan[list[str]]:
        with translate_errors(f"list partitions of {space}/{version}"):
            return valid_names((yield Call("smembers", self.k.parts(space, version))), "partition name")

    # aliases
    @planned
    def set_alias(self, space: str, alias: str, version: str) -> Plan[str | None]:
        """Point ``alias`` at ``version``; returns the previous target (None for a new alias)."""
        check_name(alias, "alias")
        check_name(version, "version name")
        k = self.k
        old = yield from self.store.fcall_plan(
            "emb_set_alias", [k.versions(space), k.aliases(space), k.alias_history(space, alias)], [alias, version],
            f"set alias {alias}",
        )
        return _d(old)

    @planned
    def rollback(self, space: str, alias: str) -> Plan[str]:
        check_name(alias, "alias")
        k = self.k
        try:
            keys = [k.aliases(space), k.alias_history(space, alias), k.versions(space)]
            prev = yield from self.store.fcall_plan("emb_rollback", keys, [alias], "rollback")
        except NotFound as exc:
            if getattr(exc, "code", None) == "EMBNOHISTORY":
                raise VersionNotFound(
                    f"alias {alias!r} of space {space!r} has no previous target to roll back to") from None
            raise
        return _d(prev)  # type: ignore[return-value]

    @planned
    def aliases(self, space: str) -> Plan[dict[str, str]]:
        with translate_errors(f"list aliases of {space}"):
            return {a.decode(): v.decode() for a, v in (yield Call("hgetall", self.k.aliases(space))).items()}

    @planned
    def alias_history(self, space: str, alias: str) -> Plan[list[str]]:
        with translate_errors(f"read alias {alias}"):
            return [v.decode() for v in (yield Call("lrange", self.k.alias_history(space, alias), 0, -1))]

    @planned
    def resolve(self, space: str, name: str) -> Plan[str]:
        """A version name, or the version an alias points at."""
        check_name(name, "version or alias name")
        with translate_errors(f"resolve {space}/{name}"):
            target, exists = yield Batch([Call("hget", self.k.aliases(space), name),
                                          Call("hexists", self.k.versions(space), name)])
            if target is not None:
                return target.decode()
            if exists:
                return name
        raise VersionNotFound(f"space {space!r} has no version or alias {name!r}")
