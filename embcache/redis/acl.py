"""Access control that Redis itself enforces: the ACL rules of embcache's principals. Pure, no I/O.

A principal is a Redis ACL user. Each of its grants (one per space) is an ACL *selector*: the key patterns of
that space (or of some of its partitions) together with the commands its role needs there. Redis checks every
command, including each ``redis.call`` inside embcache's functions, against those rules, so raw ``redis-cli``
with a principal's credentials can do no more than embcache would let it.

========  =======================================================================================
role      may
========  =======================================================================================
reader    read the space's catalogue and items, query, read snapshots, get notifications, follow the logs
writer    reader + upsert/delete (through the functions), add partitions, ask for builds
admin     writer + create versions, seal, move aliases, roll back
worker    (hub-wide) read all data, write snapshots and leases, RQ's ``rq:*`` keys and channels
operator  the deployment's administrator (``default`` user): creates spaces, grants, revokes
========  =======================================================================================

Nobody but the worker principal may touch ``rq:*``: whoever can write RQ's keys can make a worker run code.
Snapshot keys are written by workers only, so a writer cannot plant a crafted index in every reader. Nobody
but the operator gets ``KEYS``, ``SCAN``, ``FLUSHALL``, ``CONFIG``, ``ACL``, ``DEBUG``, ``MODULE``,
``FUNCTION``, ``SCRIPT`` or ``EVAL``, nor ``SELECT`` of a database other than the hub's. The threat model (who
can do what, what the operator must configure) is in ``docs/access-control.md``.

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

# Commands allowed with no key restriction: connection handling, topology discovery, notifications. SELECT is
# not among them: each user may select the hub's own database only (ACL key patterns hold in every database).
_ROOT = ["+ping", "+hello", "+auth", "+client|setinfo", "+client|setname", "+client|id", "+readonly",
         "+cluster|info", "+cluster|slots", "+cluster|shards", "+cluster|nodes", "+cluster|myid",
         "+subscribe", "+unsubscribe", "+reset", "+quit",
         "+command",  # redis-py's Cluster client reads the command table at start-up
         "+multi", "+exec", "+discard"]  # large upserts commit their chunks in one transaction
_READ = ["+get", "+mget", "+exists", "+type", "+ttl", "+pttl", "+hget", "+hmget", "+hgetall", "+hkeys", "+hlen",
         "+hexists", "+hscan", "+smembers", "+sismember", "+scard", "+xrange", "+xrevrange", "+xlen", "+lrange",
         "+llen", "+zrange", "+zscore", "+zcard", "+fcall_ro"]


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


def _selectors(keys: Keys, grant: Grant) -> list[str]:
    """The ACL selectors of one grant.

    Each write command is allowed only on the key kinds it is meant for (``HSET`` on hashes, ``XADD`` on the
    log, ``SADD`` on the partition lists, ``ZADD`` on the dirty set, ``HSET``/``HDEL`` on the owners maps), so
    a principal cannot create one of its keys with the wrong type (a hash where the dispatcher expects a sorted
    set). The owners maps and version graphs name every item of a version: only principals granted every
    partition may read or write them. ``FCALL`` asks read and write
    access to every key it is given, so one selector gives it (and nothing else) all the keys the role's
    functions take; each ``redis.call`` inside is then checked against the selectors of its own command.
    Admins get ``SETNX`` and ``APPEND`` on the state strings and never ``SET`` or ``DEL``: sealing cannot be
    undone. The space record and its grants stay read-only (operator only).
    """
    s = grant.space
    space = keys.space_pattern(s)[:-1]  # "emb:{s}:" then the key kind
    bases = [keys.partition_pattern(s, "*", p)[:-1] for p in (grant.partitions or ["*"])]  # "emb:{s/*/p}:"

    def sel(patterns: list[str], commands: list[str]) -> str:
        return "(" + " ".join([f"%RW~{k}" for k in patterns] + commands) + ")"

    # the version graph and the owners map span every partition: readable only by principals granted them all
    graphs = [f"%R~{keys.version_graph_pattern(s)}", f"%R~{keys.owners_pattern(s)}"] if grant.partitions is None \
        else []
    read = "(" + " ".join([f"%R~{space}*"] + [f"%R~{b}*" for b in bases] + graphs + _READ) + ")"
    # XREAD (the follower's one blocking read for all its partitions) on the granted partitions' logs only
    follow = "(" + " ".join([f"%R~{b}log" for b in bases] + ["+xread"]) + ")"
    if grant.role == "reader":
        return [read, follow]

    def part(*kinds: str) -> list[str]:
        return [f"{b}{kind}" for b in bases for kind in kinds]

    fcall = part("vec", "meta", "log", "state", "sealed") + [f"{space}vstate:*", f"{space}parts:*"]
    hset = part("state")
    stamp = []  # SETNX / APPEND: create or extend, never overwrite
    selectors = [read, follow, sel(part("vec", "meta"), ["+hset", "+hdel"]), sel(part("log"), ["+xadd"]),
                 sel([f"{space}parts:*"], ["+sadd"]), sel([keys.dirty(s)], ["+zadd"])]
    if grant.partitions is None:  # the owners maps name every item: only for principals granted all partitions
        fcall.append(keys.owners_pattern(s))
        selectors.append(sel([keys.owners_pattern(s)], ["+hset", "+hdel"]))
    if grant.role == "admin":
        fcall += [keys.versions(s), keys.seq(s), keys.aliases(s), f"{space}alias:*"]
        hset += [keys.versions(s), keys.aliases(s)]
        stamp = [f"{space}vstate:*", *part("sealed")]
        selectors += [sel([keys.seq(s)], ["+incr"]), sel(stamp, ["+setnx", "+append"]),
                      sel([f"{space}alias:*"], ["+lpush", "+ltrim", "+lpop"])]
    return selectors + [sel(hset, ["+hset"]), sel(fcall, ["+fcall"])]


def user_rules(keys: Keys, secret_hash: str, grants: Sequence[Grant], db: int = 0) -> list[str]:
    """The full ``ACL SETUSER`` rule list of a principal with these grants (starts with ``reset``); ``db`` is the
    hub's database, the only one the principal may ``SELECT``."""
    rules = ["reset", "on", f"#{secret_hash}", "resetchannels", *_ROOT, f"+select|{int(db)}"]
    for g in grants:
        rules.append(f"&{keys.events(g.space)}")
    for g in grants:
        rules += _selectors(keys, g)
    return rules


def worker_rules(keys: Keys, secret_hash: str, db: int = 0) -> list[str]:
    """ACL rules of the worker principal: all space and partition keys, two hub keys, RQ's keys and channels.

    It may run every command of Redis's ``@read``/``@write``/``@pubsub``/... categories on those keys, less
    ``@dangerous`` (server administration, KEYS, FLUSH*, SORT, MIGRATE, RESTORE, ...) and less what neither RQ
    nor embcache's jobs use: SCAN and RANDOMKEY (nothing is found by listing), MOVE/COPY/SELECT of another
    database, RENAME, EVAL (RQ's Lua scripts run by EVALSHA), CLIENT beyond naming its own connection (no
    TRACKING, LIST, KILL), PUBSUB introspection, and FUNCTION LOAD/DELETE/... (it must not replace embcache's
    functions). INFO stays: RQ reads the server version from it.
    """
    p = keys.prefix
    return ["reset", "on", f"#{secret_hash}",
            # every space and partition key (their tags start with a letter or digit), but of the hub keys only
            # the listing and the dispatcher lock: the principal registry stays the operator's
            f"~{p}:{{[A-Za-z0-9]*}}:*", f"~{keys.spaces()}", f"~{keys.dispatcher_lock()}", "~rq:*",
            f"&{p}:*", "&rq:*",
            "+@all", "-@dangerous", "+info",
            "-scan", "-randomkey", "-move", "-copy", "-select", f"+select|{int(db)}", "-rename", "-renamenx",
            "-eval", "-eval_ro", "-pubsub", "-function", "-script|flush", "-script|kill",
            "-client", "+client|setname", "+client|getname", "+client|setinfo", "+client|id", "+client|info",
            "+cluster|info", "+cluster|slots", "+cluster|shards", "+cluster|nodes"]
