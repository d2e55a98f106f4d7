"""Access control that Redis itself enforces: the ACL rules of embcache's principals. Pure, no I/O.

A principal is a Redis ACL user. Each of its grants (one per space) is an ACL *selector*: the key patterns of
that space (or of some of its partitions) together with the commands its role needs there. Redis checks every
command, including each ``redis.call`` inside embcache's functions, against those rules, so raw ``redis-cli``
with a principal's credentials can do no more than embcache would let it.

========  =======================================================================================
role      may
========  =======================================================================================
reader    read the space's catalogue and items, query, read snapshots, get notifications
writer    reader + upsert/delete (through the functions), add partitions, ask for builds
admin     writer + create versions, seal, move aliases, roll back
worker    (hub-wide) read all data, write snapshots and leases, RQ's ``rq:*`` keys and channels
operator  the deployment's administrator (``default`` user): creates spaces, grants, revokes
========  =======================================================================================

Nobody but the worker principal may touch ``rq:*``: whoever can write RQ's keys can make a worker run code.
Snapshot keys are written by workers only, so a writer cannot plant a crafted index in every reader. Nobody
but the operator gets ``KEYS``, ``FLUSHALL``, ``CONFIG``, ``ACL``, ``DEBUG``, ``MODULE``, ``FUNCTION``,
``SCRIPT`` or ``EVAL``.

An admin cannot grant within its space: Redis has no ACL permission that lets a user create users with
narrower rights only (``ACL SETUSER`` is all or nothing), so granting stays with the operator.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.errors import InvalidInput
from ..core.keys import Keys, check_name

__all__ = ["ROLES", "Credentials", "Grant", "hash_secret", "new_secret", "user_rules", "worker_rules"]

ROLES = ("reader", "writer", "admin")

# Commands allowed with no key restriction: connection handling, topology discovery, notifications.
_ROOT = ["+ping", "+hello", "+auth", "+client|setinfo", "+client|setname", "+client|id", "+select", "+readonly",
         "+cluster|info", "+cluster|slots", "+cluster|shards", "+cluster|nodes", "+cluster|myid",
         "+subscribe", "+unsubscribe", "+reset", "+quit",
         "+command",  # redis-py's Cluster client reads the command table at start-up
         "+multi", "+exec", "+discard"]  # large upserts commit their chunks in one transaction
_READ = ["+get", "+mget", "+exists", "+type", "+ttl", "+pttl", "+hget", "+hmget", "+hgetall", "+hkeys", "+hlen",
         "+hexists", "+hscan", "+smembers", "+sismember", "+scard", "+xrange", "+xrevrange", "+xlen", "+lrange",
         "+llen", "+zrange", "+zscore", "+zcard", "+fcall_ro"]
# what the write functions run (each redis.call inside FCALL is checked against these rules too)
_WRITE = ["+fcall", "+hset", "+hdel", "+xadd", "+sadd", "+zadd"]
_ADMIN = ["+set", "+incr", "+lpush", "+ltrim", "+lpop", "+del"]


@dataclass(frozen=True)
class Grant:
    """A principal's rights on one space."""

    space: str
    role: str
    partitions: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_name(self.space, "space name")
        if self.role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.partitions is not None:
            if not self.partitions:
                raise InvalidInput("partitions must be None (all) or a non-empty list of partition names")
            for p in self.partitions:
                check_name(p, "partition name")

    def as_dict(self) -> dict[str, object]:
        return {"role": self.role, "partitions": list(self.partitions) if self.partitions else None}


@dataclass(frozen=True)
class Credentials:
    """What :meth:`Hub.grant` returns, once: pass ``username`` and ``password`` to :func:`embcache.connect`."""

    username: str
    password: str | None  # None when the grant was added to an existing principal (its secret is unchanged)
    persisted: bool = True  # False when the server has no ACL file: the user lives until the server restarts

    def __repr__(self) -> str:  # never print the secret by accident
        shown = "None" if self.password is None else "'***'"
        return f"Credentials(username={self.username!r}, password={shown}, persisted={self.persisted})"


def new_secret() -> str:
    """A strong random secret (256 bits)."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The SHA-256 hex digest Redis ACL stores instead of the secret (``#<hash>`` rules)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_principal(name: object) -> str:
    check_name(name, "principal name")
    if name == "default":
        raise InvalidInput("'default' is Redis's own user; choose another principal name")
    return name  # type: ignore[return-value]


def _selector(keys: Keys, grant: Grant) -> str:
    s = grant.space
    parts: Sequence[str] = grant.partitions or ["*"]
    rules = [f"%R~{keys.space_pattern(s)}"]
    for p in parts:
        rules.append(f"%R~{keys.partition_pattern(s, '*', p)}")
    if grant.partitions is None:  # the version graph spans every partition: only for principals granted them all
        rules.append(f"%R~{keys.version_graph_pattern(s)}")
    cmds = list(_READ)
    if grant.role in ("writer", "admin"):
        # FCALL asks read and write access (from one pattern) to every key it is given: the state flags (strings) are among them, and
        # a writer holds no command that changes a string
        space_base = keys.space_pattern(s)[:-1]
        rules += [f"%RW~{keys.dirty(s)}", f"%RW~{space_base}parts:*", f"%RW~{space_base}vstate:*"]
        for p in parts:
            base = keys.partition_pattern(s, "*", p)[:-1]  # "...}:" then the key kind
            rules += [f"%RW~{base}{kind}" for kind in ("vec", "meta", "log", "state", "sealed")]
        cmds += _WRITE
    if grant.role == "admin":
        rules.append(f"%RW~{keys.space_pattern(s)}")
        cmds += _ADMIN
    return "(" + " ".join(rules + cmds) + ")"


def user_rules(keys: Keys, secret_hash: str, grants: Sequence[Grant]) -> list[str]:
    """The full ``ACL SETUSER`` rule list of a principal with these grants (starts with ``reset``)."""
    rules = ["reset", "on", f"#{secret_hash}", "resetchannels", *_ROOT]
    for g in grants:
        rules.append(f"&{keys.events(g.space)}")
    rules += [_selector(keys, g) for g in grants]
    return rules


def worker_rules(keys: Keys, secret_hash: str) -> list[str]:
    """ACL rules of the worker principal: all embcache keys, RQ's keys and channels; no admin commands."""
    p = keys.prefix
    return ["reset", "on", f"#{secret_hash}",
            # every space and partition key (their tags start with a letter or digit), but of the hub keys only
            # the listing and the dispatcher lock: the principal registry stays the operator's
            f"~{p}:{{[A-Za-z0-9]*}}:*", f"~{keys.spaces()}", f"~{keys.dispatcher_lock()}", "~rq:*",
            f"&{p}:*", "&rq:*",
            "+@all", "-@dangerous", "+info", "+client|setname", "+client|setinfo", "+client|id",
            "+client|list", "+cluster|info", "+cluster|slots", "+cluster|shards", "+cluster|nodes",
            # RQ runs its Lua scripts (SCRIPT LOAD, EVALSHA) but has no business replacing embcache's functions
            "-function|load", "-function|delete", "-function|flush", "-function|restore", "-function|kill",
            "-script|flush", "-script|kill"]
