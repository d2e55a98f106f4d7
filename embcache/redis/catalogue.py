"""The catalogue: typed records of spaces and versions, aliases with history, partitions of a version.

Records are pydantic models stored as JSON in plain Redis keys of the space's hash tag (see ``docs/design.md``
for why these are not redis-om models). Multi-key changes (create a version, move an alias, seal) are functions
of the Functions library, so they are atomic.
"""

from __future__ import annotations

import json
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict
from redis.exceptions import ResponseError

from ..core.errors import AlreadyExists, NotFound
from ..core.keys import check_name
from .plan import Batch, Call, Plan, planned
from .store import Store, translate_errors

__all__ = ["SpaceRecord", "VersionRecord", "Catalogue"]


class SpaceRecord(BaseModel):
    """A space's parameters; fixed at creation."""

    model_config = ConfigDict(frozen=True)
    name: str
    dim: int
    metric: Literal["cosine", "l2", "ip"]
    dtype: Literal["float32", "float16"] = "float32"
    M: int = 16
    ef_construction: int = 200
    ef: int = 64
    created: float = 0.0


class VersionRecord(BaseModel):
    """One generation of a space's embeddings."""

    model_config = ConfigDict(frozen=True)
    name: str
    state: Literal["open", "sealed"] = "open"
    created: float = 0.0
    description: str = ""


def _d(x: bytes | str | None) -> str | None:
    return x.decode() if isinstance(x, bytes) else x


class Catalogue:
    """Catalogue operations over a :class:`~embcache.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.r = store.r
        self.k = store.keys

    # spaces
    def create_space(self, record: SpaceRecord) -> None:
        with translate_errors(f"create space {record.name}"):
            if not self.r.set(self.k.space(record.name), record.model_dump_json(), nx=True):
                raise AlreadyExists(f"space {record.name!r} already exists")
            self.r.sadd(self.k.spaces(), record.name)

    def get_space(self, name: str) -> SpaceRecord:
        check_name(name, "space name")
        with translate_errors(f"read space {name}"):
            raw = self.r.get(self.k.space(name))
        if raw is None:
            raise NotFound(f"no space named {name!r}")
        return SpaceRecord.model_validate_json(raw)

    def list_spaces(self) -> list[str]:
        with translate_errors("list spaces"):
            return sorted(x.decode() for x in self.r.smembers(self.k.spaces()))

    def space_keys(self, name: str) -> list[str]:
        """Every space-level key of ``name`` (they are all known, so no SCAN is needed)."""
        keys = [self.k.space(name), self.k.versions(name), self.k.seq(name), self.k.aliases(name), self.k.dirty(name),
                self.k.grants(name)]
        with translate_errors(f"read space {name}"):
            keys += [self.k.alias_history(name, a.decode()) for a in self.r.hkeys(self.k.aliases(name))]
            for v in self.r.hkeys(self.k.versions(name)):
                keys += [self.k.parts(name, v.decode()), self.k.vstate(name, v.decode())]
        return keys

    # versions
    def create_version(self, space: str, name: str | None, description: str = "") -> VersionRecord:
        if name is not None:
            check_name(name, "version name")
        rec = {"state": "open", "created": time.time(), "description": description}
        k = self.k
        for _ in range(100):
            expected = ""
            chosen = name
            if name is None:  # v<n+1>, checked atomically against the counter by the function
                with translate_errors(f"create version in {space}"):
                    expected = _d(self.r.get(k.seq(space))) or "0"
                chosen = f"v{int(expected) + 1}"
            try:
                created = self.store.fcall(
                    "emb_create_version", [k.space(space), k.versions(space), k.seq(space), k.vstate(space, chosen)],
                    [chosen, json.dumps(rec), expected], f"create version in {space}",
                )
            except ResponseError as exc:
                if str(exc).startswith("EMBRETRY"):
                    continue
                raise
            return VersionRecord(name=_d(created), **rec)  # type: ignore[arg-type]
        raise AlreadyExists(f"could not pick a free version name in {space!r}")

    @planned
    def get_version(self, space: str, name: str) -> Plan[VersionRecord]:
        check_name(name, "version name")
        with translate_errors(f"read version {space}/{name}"):
            raw = yield Call("hget", self.k.versions(space), name)
        if raw is None:
            raise NotFound(f"space {space!r} has no version {name!r}")
        return VersionRecord.model_validate_json(raw)

    @planned
    def list_versions(self, space: str) -> Plan[list[VersionRecord]]:
        with translate_errors(f"list versions of {space}"):
            raw = yield Call("hgetall", self.k.versions(space))
        recs = [VersionRecord.model_validate_json(v) for v in raw.values()]
        return sorted(recs, key=lambda r: (r.created, r.name))

    def seal(self, space: str, version: str) -> list[str]:
        """Seal the version; returns its partitions, which the caller then flags one by one."""
        k = self.k
        res = self.store.fcall("emb_seal", [k.versions(space), k.parts(space, version), k.vstate(space, version)],
                               [version], "seal")
        return sorted(_d(p) for p in res)  # type: ignore[misc]

    @planned
    def register_partition(self, space: str, version: str, partition: str) -> Plan[None]:
        yield from self.store.fcall_plan(
            "emb_register", [self.k.vstate(space, version), self.k.parts(space, version)], [partition],
            f"write to {space}/{version}",
        )

    @planned
    def partitions(self, space: str, version: str) -> Plan[list[str]]:
        with translate_errors(f"list partitions of {space}/{version}"):
            return sorted(p.decode() for p in (yield Call("smembers", self.k.parts(space, version))))

    # aliases
    def set_alias(self, space: str, alias: str, version: str) -> str | None:
        """Point ``alias`` at ``version``; returns the previous target (None for a new alias)."""
        check_name(alias, "alias")
        check_name(version, "version name")
        k = self.k
        old = self.store.fcall(
            "emb_set_alias", [k.versions(space), k.aliases(space), k.alias_history(space, alias)], [alias, version],
            f"set alias {alias}",
        )
        return _d(old)

    def rollback(self, space: str, alias: str) -> str:
        check_name(alias, "alias")
        k = self.k
        try:
            prev = self.store.fcall("emb_rollback", [k.aliases(space), k.alias_history(space, alias)], [alias], "rollback")
        except ResponseError as exc:
            if str(exc).startswith("EMBNOHISTORY"):
                raise NotFound(f"alias {alias!r} of space {space!r} has no previous target to roll back to") from None
            raise
        return _d(prev)  # type: ignore[return-value]

    @planned
    def aliases(self, space: str) -> Plan[dict[str, str]]:
        with translate_errors(f"list aliases of {space}"):
            return {a.decode(): v.decode() for a, v in (yield Call("hgetall", self.k.aliases(space))).items()}

    def alias_history(self, space: str, alias: str) -> list[str]:
        with translate_errors(f"read alias {alias}"):
            return [v.decode() for v in self.r.lrange(self.k.alias_history(space, alias), 0, -1)]

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
        raise NotFound(f"space {space!r} has no version or alias {name!r}")
