"""Principals: creating, updating, listing and removing the Redis ACL users of :mod:`embcache.acl`.

The operator's registry (``emb:{_hub}:principals``) keeps each principal's secret *hash* and grants, so a grant
on one space can be added without forgetting the others; Redis keeps the same hash, never the secret. On Redis
Cluster every rule is set on every node (ACL users are per node). ``ACL SAVE`` persists the users where the
server has an ACL file (the embedded server has one).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any

from redis import exceptions as rexc

from ..core.errors import InvalidInput, InvalidName, PrincipalNotFound
from .acl import (
    Credentials,
    Grant,
    check_principal,
    hash_secret,
    new_secret,
    user_rules,
    worker_rules,
)
from .plan import Call, OnAllNodes, Plan, planned
from .store import Store, translate_errors

__all__ = ["Principals"]

WORKER = "worker"


class Principals:
    """ACL users of one hub. Every method needs the operator's rights."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.r = store.r
        self.k = store.keys
        # the hub's database: the one database its principals may SELECT (always 0 on a Cluster)
        self.db = 0 if store.is_cluster else int(store.r.connection_pool.connection_kwargs.get("db") or 0)

    def _save(self) -> Plan[bool]:
        try:
            yield OnAllNodes("ACL", "SAVE")
            return True
        except rexc.ResponseError:  # no aclfile configured: the users live until the server restarts
            return False

    def _record(self, name: str) -> Plan[dict[str, Any] | None]:
        raw = yield Call("hget", self.k.principals(), name)
        return None if raw is None else json.loads(raw)

    def _apply(self, name: str, rec: dict[str, Any]) -> Plan[bool]:
        if rec.get("worker"):
            rules = worker_rules(self.k, rec["hash"], self.db)
        else:
            grants = [Grant(s, g["role"], tuple(g["partitions"]) if g["partitions"] else None)
                      for s, g in sorted(rec["grants"].items())]
            rules = user_rules(self.k, rec["hash"], grants, self.db)
        for _ in range(10):  # drop rules naming commands this server version lacks (CLIENT SETINFO is 7.2+)
            try:
                yield OnAllNodes("ACL", "SETUSER", name, *rules)
                break
            except rexc.ResponseError as exc:
                m = re.search(r"modifier '(\+[a-z|_-]+)': Unknown command", str(exc))
                if not m or m.group(1) not in rules:
                    raise
                rules.remove(m.group(1))
        yield Call("hset", self.k.principals(), name, json.dumps(rec))
        return (yield from self._save())

    @planned
    def grant(self, name: str, grant: Grant) -> Plan[Credentials]:
        """Add or replace ``name``'s grant on ``grant.space``; the password is returned only for a new principal."""
        check_principal(name)
        with translate_errors(f"grant {grant.role} on {grant.space} to {name}"):
            rec = yield from self._record(name)
            secret = None
            if rec is None:
                secret = new_secret()
                rec = {"hash": hash_secret(secret), "grants": {}, "created": time.time()}
            if rec.get("worker"):
                raise InvalidInput(f"{name!r} is the worker principal; choose another name")
            old = rec["grants"].get(grant.space)
            rec["grants"][grant.space] = grant.as_dict()
            persisted = yield from self._apply(name, rec)
            yield Call("hset", self.k.grants(grant.space), name, json.dumps(grant.as_dict()))
            if old != grant.as_dict():
                yield from self._owners_maps_incomplete(grant.space, old)
        return Credentials(name, secret, persisted)

    def _owners_maps_incomplete(self, space: str, old: Any) -> Plan[None]:
        """A partition-limited writer or admin lost its grant: the ids it wrote are in no version's owners map (it
        could not write them), so mark every version's map as incomplete (upserts then ask every partition)."""
        if not (isinstance(old, dict) and old.get("role") in ("writer", "admin") and old.get("partitions")):
            return
        for v in (yield Call("hkeys", self.k.versions(space))):
            with contextlib.suppress(InvalidName):
                yield Call("hdel", self.k.owners(space, v.decode(errors="replace")), "")

    @planned
    def revoke(self, name: str, space: str | None = None) -> Plan[None]:
        """Remove ``name``'s grant on ``space`` (all grants and the user itself when ``space`` is None)."""
        check_principal(name)
        with translate_errors(f"revoke {name}"):
            rec = yield from self._record(name)
            if rec is None:
                raise PrincipalNotFound(f"no principal named {name!r}")
            spaces = list(rec["grants"]) if space is None else [space]
            if space is not None and space not in rec["grants"]:
                raise PrincipalNotFound(f"principal {name!r} has no grant on space {space!r}")
            for s in spaces:
                old = rec["grants"].pop(s, None)
                yield Call("hdel", self.k.grants(s), name)
                yield from self._owners_maps_incomplete(s, old)
            if rec["grants"] or (rec.get("worker") and space is not None):
                yield from self._apply(name, rec)
            else:
                yield OnAllNodes("ACL", "DELUSER", name)  # Redis closes the user's connections itself
                yield Call("hdel", self.k.principals(), name)
                yield from self._save()

    @planned
    def revoke_space(self, space: str) -> Plan[list[str]]:
        """Remove every principal's grant on ``space`` (for dropping it: a space created later under the same
        name must not be readable with the old credentials). Returns the principals changed."""
        with translate_errors(f"revoke grants on {space}"):
            names = [n.decode() for n, v in (yield Call("hgetall", self.k.principals())).items()
                     if space in json.loads(v).get("grants", {})]
        for name in names:
            yield from self.revoke.plan(name, space)
        return names

    @planned
    def rotate(self, name: str) -> Plan[Credentials]:
        """A new secret for ``name``; the old one stops working at once."""
        check_principal(name)
        with translate_errors(f"rotate {name}"):
            rec = yield from self._record(name)
            if rec is None:
                raise PrincipalNotFound(f"no principal named {name!r}")
            secret = new_secret()
            rec["hash"] = hash_secret(secret)
            rec["rotated"] = time.time()
            persisted = yield from self._apply(name, rec)
            yield from self._disconnect(name)
        return Credentials(name, secret, persisted)

    def _disconnect(self, name: str) -> Plan[None]:
        """Close the connections ``name`` already has open (ACL changes apply to new commands, but a connection
        authenticated with an old secret would otherwise stay signed in)."""
        try:
            yield OnAllNodes("CLIENT KILL", "USER", name)
        except rexc.ResponseError:  # no such connection on a node
            pass

    @planned
    def list(self) -> Plan[dict[str, dict[str, Any]]]:
        """``{principal: {"grants": {space: {"role", "partitions"}}, "worker": bool}}``."""
        with translate_errors("list principals"):
            raw = yield Call("hgetall", self.k.principals())
        out = {}
        for name, v in raw.items():
            rec = json.loads(v)
            out[name.decode()] = {"grants": rec["grants"], "worker": bool(rec.get("worker")),
                                  "created": rec.get("created")}
        return dict(sorted(out.items()))

    @planned
    def worker(self, name: str = WORKER) -> Plan[Credentials]:
        """Create (or re-key) the worker principal: the only one with RQ's keys."""
        check_principal(name)
        with translate_errors(f"create worker principal {name}"):
            rec = yield from self._record(name)
            if rec is not None and not rec.get("worker"):
                raise InvalidInput(f"{name!r} is a client principal, not a worker")
            secret = new_secret()
            rec = {"hash": hash_secret(secret), "grants": {}, "worker": True, "created": time.time()}
            persisted = yield from self._apply(name, rec)
        return Credentials(name, secret, persisted)

    @planned
    def default_user_open(self) -> Plan[bool]:
        """True when Redis's ``default`` user is on with no password (anyone can become the operator); False
        also when the server has no ACLs or this principal may not look."""
        with translate_errors("check the default user"):
            try:
                info = yield Call("acl_getuser", "default")
            except rexc.ResponseError:  # a server without ACLs, or not allowed: nothing to check
                return False
        flags = {f.decode() if isinstance(f, bytes) else str(f) for f in (info or {}).get("flags", [])}
        return "on" in flags and "nopass" in flags

    @planned
    def grant_of(self, space: str, name: str) -> Plan[dict[str, Any] | None]:
        """``name``'s grant on ``space`` as the space's principals may read it."""
        with translate_errors(f"read the grant of {name} on {space}"):
            raw = yield Call("hget", self.k.grants(space), name)
        return None if raw is None else json.loads(raw)
