"""Access control enforced by Redis itself (DESIGN.md guarantee 5, issue 4), tested the way an attacker would.

Every role (``reader``, ``writer``, ``admin`` and a ``writer`` limited to partition ``p1``) gets its credentials
from :meth:`Hub.grant` and then, through embcache and through a raw redis-py client with those credentials:

* does everything its role allows (and checks the answers);
* tries everything it must not: writes by a reader, other spaces, partitions not granted, RQ's ``rq:*`` keys,
  server administration (``KEYS``, ``FLUSHALL``, ``CONFIG``, ``ACL``, ``FUNCTION``, ``SCRIPT``/``EVAL``,
  ``DEBUG``, ``MODULE``, ``SHUTDOWN``, ``MIGRATE``, ...), snapshot and lease keys, the sealed flags and version
  state, foreign channels. Each attempt is counted; none may succeed, and the whole database (``DUMP`` + ``PTTL``
  of every key of every db, read by the operator) plus the ACL users, the loaded functions and a probe config
  value must be byte-for-byte the same before and after.

Tests named ``test_bug_*`` pin bugs that were found and fixed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

import embcache
from embcache.core.errors import InvalidName, NotFound, PermissionDenied, VersionSealed
from embcache.core.keys import Keys
from embcache.core.snapshot import HnswBase
from embcache.redis.acl import Credentials
from embcache.redis.server import RedisServer, free_port

K = Keys()
DIM = 4
ROLES = ["reader", "writer", "admin", "writer_p1"]
PRINCIPAL = {"reader": "rd", "writer": "wr", "admin": "ad", "writer_p1": "wp"}

# How many forbidden things each role tries in test_forbidden_attempts_fail_and_change_nothing (embcache + raw).
# The test asserts the count, so a change to the attack list shows up here.
FORBIDDEN_ATTEMPTS = {"reader": 197, "writer": 188, "admin": 162, "writer_p1": 227}
_counted: dict[str, int] = {}
# every Attacker of the session adds here: (principal, channel) -> [attempts, succeeded]; channel is "embcache"
# (the library's API) or "raw" (redis-py with the principal's credentials). tests/test_security.py prints it.
TALLY: dict[tuple[str, str], list[int]] = {}


@pytest.fixture
def connect(hubs):  # noqa: ANN001, ANN201, F811
    """``hubs`` (closed after the test) with a short refresh interval, so that closing them is quick."""

    def go(url: str, **kwargs: Any) -> embcache.Hub:
        kwargs.setdefault("refresh_interval", 0.1)
        return hubs(url, **kwargs)

    return go


def vec(i: int, scale: float = 1.0) -> np.ndarray:
    return (np.eye(DIM, dtype=np.float32)[i % DIM] * scale)[None, :]


# --------------------------------------------------------------------------------------------------------------
# the world every role test runs in
# --------------------------------------------------------------------------------------------------------------
@dataclass
class World:
    url: str
    op: embcache.Hub
    raw: redis.Redis  # the operator, raw
    creds: dict[str, Credentials]
    evil_sha: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    def password(self, role: str) -> str:
        pw = self.creds[role].password
        assert pw is not None
        return pw

    def raw_as(self, role: str) -> redis.Redis:
        return redis.Redis.from_url(self.url, username=PRINCIPAL[role], password=self.password(role))


def build_world(url: str, hub_factory: Callable[..., embcache.Hub]) -> World:
    """Space ``a`` (v1 open: p1 {x1, x2}, p2 {y1}; v2 sealed: p1 {s1}; alias live -> v1 with history [v2]),
    space ``b`` (v1: default {q1}, p1 {q2}), RQ keys as a worker would leave them, and the four principals."""
    op = hub_factory(url)
    a = op.create_space("alpha", dim=DIM, metric="l2")
    v1, v2 = a.create_version(), a.create_version()
    v1.upsert(["x1", "x2"], np.vstack([vec(0), vec(0, 0.5)]), [{"n": 1}, None], partition="p1")
    v1.upsert(["y1"], vec(2), partition="p2")
    v2.upsert(["s1"], vec(0), partition="p1")
    v2.seal()
    a.set_alias("live", v2)
    a.set_alias("live", v1)
    b = op.create_space("bravo", dim=DIM, metric="l2")
    bv = b.create_version()
    bv.upsert(["q1"], vec(3))
    bv.upsert(["q2"], vec(0), partition="p1")
    raw = redis.Redis.from_url(url)
    raw.lpush("rq:queue:embcache", "x")
    raw.hset("rq:job:x", mapping={"data": b"pickled", "status": "queued"})
    raw.sadd("rq:queues", "rq:queue:embcache")
    creds = {
        "reader": op.grant("rd", space="alpha", role="reader"),
        "writer": op.grant("wr", space="alpha", role="writer"),
        "admin": op.grant("ad", space="alpha", role="admin"),
        "writer_p1": op.grant("wp", space="alpha", role="writer", partitions=["p1"]),
    }
    world = World(url, op, raw, creds)
    world.evil_sha = raw.script_load("return redis.call('SET', 'emb:{bravo}:space', 'pwned')")
    return world


@pytest.fixture
def world(redis_url: str, connect) -> World:  # noqa: ANN001, F811
    return build_world(redis_url, connect)


def _db_url(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


def snapshot_server(url: str) -> dict[str, Any]:
    """Everything an attack could change, read by the operator: DUMP + PTTL of every key of every db, the ACL
    users, the loaded functions, the script cache's attacker-visible entry, and a probe config value."""
    keys: dict[tuple[int, bytes], tuple[bytes | None, Any]] = {}
    with redis.Redis.from_url(url) as r:
        dbs = sorted({0, *(int(k[2:]) for k in r.info("keyspace"))})
        state = {
            "acl": sorted(r.acl_list()),
            "functions": r.function_dump(),
            "config": r.config_get("slowlog-log-slower-than"),
            "dbs": dbs,
        }
    for db in dbs:
        with redis.Redis.from_url(_db_url(url, db)) as r:
            for key in r.scan_iter(count=1000):
                pttl = r.pttl(key)
                keys[(db, key)] = (r.dump(key), -1 if pttl == -1 else "has-ttl")
    state["keys"] = keys
    return state


def assert_same(before: dict[str, Any], after: dict[str, Any], who: str) -> None:
    changed = sorted(k for k in set(before["keys"]) | set(after["keys"])
                     if before["keys"].get(k) != after["keys"].get(k))
    assert not changed, f"{who}: keys changed by forbidden attempts: {changed[:20]}"
    for part in ("acl", "functions", "config", "dbs"):
        assert before[part] == after[part], f"{who}: {part} changed by forbidden attempts"


# --------------------------------------------------------------------------------------------------------------
# attempts
# --------------------------------------------------------------------------------------------------------------
def _text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def _acl_denied(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, NoPermissionError) or "NOPERM" in text or "no permissions" in text


@dataclass
class Attacker:
    """Runs forbidden attempts and records any that did not fail the expected way."""

    who: str
    attempts: int = 0
    problems: list[str] = field(default_factory=list)

    def run(self, label: str, fn: Callable[[], Any], expect: str | type[BaseException] = "NOPERM") -> None:
        """``expect``: "NOPERM" (Redis ACL refusal), an error-text prefix (e.g. "EMBSEALED"), or an exception
        class (embcache's PermissionDenied, VersionSealed)."""
        self.attempts += 1
        tally = TALLY.setdefault((self.who, "embcache" if label.startswith("embcache") else "raw"), [0, 0])
        tally[0] += 1
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - every outcome is judged below
            if expect == "NOPERM":
                ok = _acl_denied(exc)
            elif isinstance(expect, str):
                ok = isinstance(exc, ResponseError) and str(exc).startswith(expect)
            else:
                ok = isinstance(exc, expect)
            if not ok:
                self.problems.append(f"{label}: failed the wrong way: {type(exc).__name__}: {str(exc)[:160]}")
            return
        tally[1] += 1
        self.problems.append(f"{label}: SUCCEEDED ({str(result)[:80]!r})")

    def raw(self, r: redis.Redis, *cmd: Any, expect: str = "NOPERM") -> None:
        self.run(" ".join(str(c)[:40] for c in cmd), lambda: r.execute_command(*cmd), expect)

    def raw_fresh(self, url: str, user: str, pw: str, *cmd: Any) -> None:
        """On a connection of its own (for commands that would change the connection's mode if allowed)."""

        def go() -> Any:
            with redis.Redis.from_url(url, username=user, password=pw, socket_timeout=2) as r:
                return r.execute_command(*cmd)

        self.run(" ".join(str(c)[:40] for c in cmd) + " (own connection)", go)

    def subscribe(self, r: redis.Redis, kind: str, channel: str) -> None:
        def go() -> Any:
            ps = r.pubsub()
            try:
                getattr(ps, kind)(channel)
                msg = ps.get_message(timeout=1.0)
                if msg is None or msg["type"] not in ("subscribe", "psubscribe", "ssubscribe"):
                    raise AssertionError(f"no confirmation: {msg}")
                return msg
            finally:
                ps.close()

        self.run(f"{kind.upper()} {channel}", go)

    def embcache(self, label: str, fn: Callable[[], Any], space: str | None = None, operation: str | None = None,
                 expect: type[BaseException] = PermissionDenied) -> None:
        """Through embcache: a PermissionDenied that names the space (and the operation, when given)."""

        def go() -> Any:
            try:
                return fn()
            except PermissionDenied as exc:
                text = str(exc)
                if space is not None and f"{space}" not in text:
                    raise AssertionError(f"PermissionDenied does not name the space {space!r}: {text}") from None
                if operation is not None and operation not in text:
                    raise AssertionError(f"PermissionDenied does not name the operation {operation!r}: {text}") \
                        from None
                raise

        self.run(f"embcache {label}", go, expect)


def writes_of(space: str, version: str, partition: str) -> list[str]:
    return K.partition(space, version, partition).writes


def upsert_args(item: str) -> list[Any]:
    return [1, item, vec(1).tobytes(), ""]


def common_raw_attacks(att: Attacker, r: redis.Redis, w: World, role: str) -> None:
    """What no client principal may do, whatever its role on ``a``."""
    user, pw = PRINCIPAL[role], w.password(role)
    b1 = K.partition("bravo", "v1", "default")
    # another space: reads
    for cmd in [("GET", K.space("bravo")), ("HGETALL", K.versions("bravo")), ("HGETALL", K.aliases("bravo")),
                ("SMEMBERS", K.parts("bravo", "v1")), ("HGET", b1.vec, "q1"), ("HGETALL", b1.meta),
                ("HGET", K.partition("bravo", "v1", "p1").vec, "q2"), ("XRANGE", b1.log, "-", "+"),
                ("HGETALL", b1.state), ("GET", b1.snap), ("EXISTS", K.space("bravo")), ("TYPE", K.space("bravo")),
                ("HSCAN", b1.vec, 0), ("DUMP", K.space("bravo")), ("OBJECT", "ENCODING", K.space("bravo")),
                ("XREAD", "STREAMS", b1.log, "0"), ("FCALL_RO", "emb_get", 2, b1.vec, b1.meta, "q1"),
                ("FCALL_RO", "emb_tail", 4, b1.vec, b1.meta, b1.log, b1.state, "0-0", 10)]:
        att.raw(r, *cmd)
    # another space: writes
    for cmd in [("HSET", b1.vec, "evil", vec(0).tobytes()), ("HDEL", b1.vec, "q1"), ("XADD", b1.log, "*", "op", "u"),
                ("HSET", b1.state, "pos", "9-9"), ("ZADD", K.dirty("bravo"), 1, "v1/default"),
                ("SADD", K.parts("bravo", "v1"), "evil"), ("SET", K.space("bravo"), "pwned"), ("DEL", K.space("bravo")),
                ("HSET", K.versions("bravo"), "v1", '{"state": "open"}'), ("HSET", K.aliases("bravo"), "live", "v9"),
                ("SET", b1.sealed, "1"), ("SET", b1.snap, "{}"),
                ("FCALL", "emb_upsert", 5, *b1.writes, *upsert_args("evil")),
                ("FCALL", "emb_delete", 5, *b1.writes, "q1"),
                ("FCALL", "emb_register", 2, K.vstate("bravo", "v1"), K.parts("bravo", "v1"), "evil"),
                ("FCALL", "emb_set_alias", 3, K.versions("bravo"), K.aliases("bravo"), K.alias_history("bravo", "live"),
                 "live", "v1"),
                ("HSET", K.grants("bravo"), user, '{"role": "admin", "partitions": null}')]:
        att.raw(r, *cmd)
    # hub-level keys: the operator's only (or the worker's)
    for cmd in [("SMEMBERS", K.spaces()), ("SADD", K.spaces(), "evil"), ("HGETALL", K.principals()),
                ("HSET", K.principals(), user, '{"hash": "0", "grants": {}, "worker": true}'),
                ("SET", K.dispatcher_lock(), "mine"), ("GET", K.dispatcher_lock())]:
        att.raw(r, *cmd)
    # RQ: whoever can write these can make a worker run code
    for cmd in [("LPUSH", "rq:queue:embcache", "evil"), ("RPUSH", "rq:queue:embcache", "evil"),
                ("LRANGE", "rq:queue:embcache", 0, -1), ("DEL", "rq:queue:embcache"), ("GET", "rq:job:x"),
                ("SET", "rq:job:x", "evil"), ("HSET", "rq:job:x", "data", b"evil-pickle"), ("HGETALL", "rq:job:x"),
                ("HGET", "rq:job:x", "data"), ("SADD", "rq:queues", "rq:queue:evil"), ("SMEMBERS", "rq:workers"),
                ("ZADD", "rq:wip:embcache", 1, "x"), ("PUBLISH", "rq:pubsub:w", '{"command": "shutdown"}')]:
        att.raw(r, *cmd)
    att.subscribe(r, "subscribe", "rq:pubsub:w")
    # the keyspace and server administration
    evil_lib = ("#!lua name=evil\nredis.register_function('evil', function(k, a) "
                "return redis.call('SET', 'emb:{bravo}:space', 'pwned') end)")
    for cmd in [("KEYS", "*"), ("KEYS", "emb:{alpha}:*"), ("SCAN", 0), ("SCAN", 0, "MATCH", "emb:{bravo}*"),
                ("RANDOMKEY",),
                ("FLUSHALL",), ("FLUSHDB",), ("FLUSHALL", "ASYNC"), ("SWAPDB", 0, 1),
                ("CONFIG", "SET", "slowlog-log-slower-than", "10000"), ("CONFIG", "GET", "*"),
                ("CONFIG", "RESETSTAT"), ("CONFIG", "REWRITE"),
                ("ACL", "SETUSER", "evil", "on", ">pw", "~*", "&*", "+@all"), ("ACL", "SETUSER", user, "~*", "+@all"),
                ("ACL", "LIST"), ("ACL", "GETUSER", "default"), ("ACL", "DELUSER", "rd" if user != "rd" else "wr"),
                ("ACL", "SAVE"), ("ACL", "LOAD"), ("ACL", "LOG"), ("ACL", "USERS"),
                ("FUNCTION", "LOAD", evil_lib),
                ("FUNCTION", "LOAD", "REPLACE", evil_lib.replace("evil", "embcache", 1)),
                ("FUNCTION", "DELETE", "embcache"), ("FUNCTION", "FLUSH"), ("FUNCTION", "RESTORE", b"x"),
                ("FUNCTION", "KILL"), ("FUNCTION", "LIST"),
                ("EVAL", "return redis.call('SET', KEYS[1], 'pwned')", 1, K.space("bravo")),
                ("EVAL", "return redis.call('SET', 'emb:{bravo}:space', 'pwned')", 0),
                ("EVAL", "return 1", 0), ("EVAL_RO", "return redis.call('GET', KEYS[1])", 1, K.space("bravo")),
                ("EVALSHA", w.evil_sha, 0), ("EVALSHA_RO", w.evil_sha, 0),
                ("SCRIPT", "LOAD", "return 1"), ("SCRIPT", "FLUSH"), ("SCRIPT", "EXISTS", w.evil_sha),
                ("SCRIPT", "KILL"), ("MODULE", "LIST"),
                ("SHUTDOWN", "ABORT"),  # harmless if (wrongly) allowed: "no shutdown in progress"
                ("MIGRATE", "127.0.0.1", free_port(), K.space("alpha"), 0, 200, "COPY"),
                ("RENAME", K.space("alpha"), K.space("bravo")),
                ("RENAME", K.partition("alpha", "v1", "p1").vec, b1.vec),
                ("RENAMENX", K.space("alpha"), "emb:{bravo}:evil"), ("COPY", K.space("alpha"), "emb:{bravo}:evil"),
                ("MOVE", K.space("alpha"), 1), ("RESTORE", "emb:{bravo}:evil", 0, w.raw.dump(K.space("alpha"))),
                ("SORT", K.parts("alpha", "v1"), "BY", "nosort", "GET", "emb:{bravo}:*"),
                ("SORT_RO", K.parts("alpha", "v1"), "ALPHA"), ("INFO",), ("CLIENT", "LIST"),
                ("CLIENT", "KILL", "TYPE", "normal"), ("CLIENT", "PAUSE", 10), ("SLOWLOG", "RESET"),
                ("REPLICAOF", "NO", "ONE"), ("BGSAVE",), ("BGREWRITEAOF",), ("SAVE",), ("DBSIZE",),
                ("LATENCY", "RESET"), ("MEMORY", "USAGE", K.space("bravo")), ("PUBSUB", "CHANNELS"),
                ("OBJECT", "FREQ", K.space("alpha"))]:
        att.raw(r, *cmd)
    # DEBUG and MODULE LOAD/UNLOAD are also refused by enable-debug/module-command (checked before ACL): ACL DRYRUN
    # shows that the ACL refuses them too
    for cmd in [("DEBUG", "SLEEP", 0), ("DEBUG", "SET-ACTIVE-EXPIRE", 1), ("MODULE", "UNLOAD", "x"),
                ("MODULE", "LOAD", "/nonexistent.so")]:
        att.run(" ".join(map(str, cmd)), lambda cmd=cmd: r.execute_command(*cmd), f"{cmd[0]} command not allowed")
        att.run(f"ACL DRYRUN {user} {cmd[0]} {cmd[1]}", lambda cmd=cmd: _dryrun(w.raw, user, *cmd))
    att.run(f"ACL DRYRUN {user} SHUTDOWN NOSAVE", lambda: _dryrun(w.raw, user, "SHUTDOWN", "NOSAVE"))
    att.raw_fresh(w.url, user, pw, "MONITOR")
    # channels: snapshot notifications are published by workers only; other spaces' are not ours to hear
    for ch in (K.events("alpha"), K.events("bravo")):
        att.raw(r, "PUBLISH", ch, '{"generation": 999}')
        att.raw(r, "SPUBLISH", ch, "x")
    att.subscribe(r, "subscribe", K.events("bravo"))
    att.subscribe(r, "psubscribe", "emb:*")
    att.subscribe(r, "ssubscribe", K.events("bravo"))
    # snapshots and leases of our own space are the workers'
    p1 = K.partition("alpha", "v1", "p1")
    for cmd in [("SET", p1.snap, '{"generation": 99}'), ("DEL", p1.snap), ("SET", p1.lease, "1"),
                ("SET", p1.chunk("9.abc", 0), b"crafted-index"), ("PEXPIRE", p1.snap, 1),
                ("FCALL", "emb_publish", 4, p1.snap, p1.state, p1.log, p1.chunk("9.abc", 0),
                 '{"generation": 1, "pos": "0-0", "build_seconds": 0, "built_at": 0}', 0, 1, 60, "",
                 K.events("alpha"), "x")]:
        att.raw(r, *cmd)


def _dryrun(op: redis.Redis, user: str, *cmd: Any) -> Any:
    """ACL DRYRUN: raises NoPermissionError-like AssertionError text when the user may not run ``cmd``."""
    res = op.execute_command("ACL", "DRYRUN", user, *cmd)
    text = res.decode() if isinstance(res, bytes) else str(res)
    if text != "OK":
        raise NoPermissionError(f"NOPERM (dryrun) {text}")
    return text


def state_raw_attacks(att: Attacker, r: redis.Redis, role: str) -> None:
    """Version state, seal flags, catalogue: changed only through admin functions."""
    p1, s1 = K.partition("alpha", "v1", "p1"), K.partition("alpha", "v2", "p1")
    for cmd in [("SET", s1.sealed, "0"), ("DEL", s1.sealed), ("SET", p1.sealed, "1"), ("DEL", p1.sealed),
                ("SET", K.vstate("alpha", "v2"), "open"), ("DEL", K.vstate("alpha", "v2")),
                ("SET", K.vstate("alpha", "v1"), "sealed"),
                ("HSET", K.versions("alpha"), "v2", '{"name": "v2", "state": "open"}'),
                ("HDEL", K.versions("alpha"), "v1"),
                ("HSET", K.aliases("alpha"), "live", "v2"), ("LPUSH", K.alias_history("alpha", "live"), "v9"),
                ("SET", K.space("alpha"), "pwned"), ("DEL", K.space("alpha")), ("INCR", K.seq("alpha")),
                ("HSET", K.grants("alpha"), PRINCIPAL[role], '{"role": "admin", "partitions": null}'),
                ("FCALL", "emb_create_version", 3, K.versions("alpha"), K.seq("alpha"),
                 K.vstate("alpha", "v9"), "v9", "{}", ""),
                ("FCALL", "emb_seal", 3, K.versions("alpha"), K.parts("alpha", "v1"), K.vstate("alpha", "v1"), "v1"),
                ("FCALL", "emb_set_alias", 3, K.versions("alpha"), K.aliases("alpha"), K.alias_history("alpha", "live"),
                 "live", "v2"),
                ("FCALL", "emb_rollback", 2, K.aliases("alpha"), K.alias_history("alpha", "live"), "live"),
                ("DEL", p1.vec), ("DEL", p1.log), ("EXPIRE", p1.vec, 1), ("UNLINK", p1.meta)]:
        att.raw(r, *cmd)
    if role != "reader":  # writers hold HSET on their hashes only; the functions check the seal
        att.raw(r, "HSET", s1.sealed, "x", "0")  # HSET is for the item hashes and the state only
        att.raw(r, "FCALL", "emb_upsert", 5, *s1.writes, *upsert_args("evil"), expect="EMBSEALED")
        att.raw(r, "FCALL", "emb_delete", 5, *s1.writes, "s1", expect="EMBSEALED")
        att.raw(r, "FCALL", "emb_register", 2, K.vstate("alpha", "v2"), K.parts("alpha", "v2"), "p9",
                expect="EMBSEALED")


def admin_raw_attacks(att: Attacker, r: redis.Redis) -> None:
    """An admin may change anything of its space through its commands, but holds no expiry, unlink or rename."""
    p1 = K.partition("alpha", "v1", "p1")
    for cmd in [("EXPIRE", p1.vec, 1), ("PEXPIRE", K.space("alpha"), 1), ("UNLINK", p1.meta),
                ("GETDEL", K.space("alpha")),
                ("RENAME", K.versions("alpha"), K.versions("bravo")), ("HSET", K.versions("bravo"), "v1", "{}"),
                ("SET", K.partition("bravo", "v1", "default").sealed, "0")]:
        att.raw(r, *cmd)


def reader_write_raw_attacks(att: Attacker, r: redis.Redis) -> None:
    p1 = K.partition("alpha", "v1", "p1")
    for cmd in [("HSET", p1.vec, "evil", vec(0).tobytes()), ("HDEL", p1.vec, "x1"), ("HSET", p1.meta, "x1", "{}"),
                ("XADD", p1.log, "*", "op", "u", "ids", "[]"), ("HSET", p1.state, "pos", "9-9"),
                ("ZADD", K.dirty("alpha"), 1, "v1/p1"), ("SADD", K.parts("alpha", "v1"), "p9"),
                ("FCALL", "emb_upsert", 5, *p1.writes, *upsert_args("evil")),
                ("FCALL", "emb_delete", 5, *p1.writes, "x1"),
                ("FCALL", "emb_register", 2, K.vstate("alpha", "v1"), K.parts("alpha", "v1"), "p9")]:
        att.raw(r, *cmd)


def other_partition_raw_attacks(att: Attacker, r: redis.Redis) -> None:
    """A writer granted only p1 of ``a``: p2's keys, of every version, are out of reach."""
    for version in ("v1", "v2"):
        p2 = K.partition("alpha", version, "p2")
        for cmd in [("HGET", p2.vec, "y1"), ("HGETALL", p2.meta), ("HLEN", p2.vec), ("XRANGE", p2.log, "-", "+"),
                    ("HGET", p2.state, "pos"), ("GET", p2.snap), ("HSCAN", p2.vec, 0),
                    ("FCALL_RO", "emb_get", 2, p2.vec, p2.meta, "y1"),
                    ("FCALL_RO", "emb_tail", 4, p2.vec, p2.meta, p2.log, p2.state, "0-0", 10),
                    ("HSET", p2.vec, "evil", vec(0).tobytes()), ("HDEL", p2.vec, "y1"),
                    ("XADD", p2.log, "*", "op", "u", "ids", "[]"), ("HSET", p2.state, "pos", "9-9"),
                    ("FCALL", "emb_upsert", 5, *p2.writes, *upsert_args("evil")),
                    ("FCALL", "emb_delete", 5, *p2.writes, "y1")]:
            att.raw(r, *cmd)
    # a write function given p1's keys but p2's state: every key of an FCALL is checked
    p1, p2 = K.partition("alpha", "v1", "p1"), K.partition("alpha", "v1", "p2")
    att.raw(r, "FCALL", "emb_upsert", 5, p1.vec, p1.meta, p1.log, p2.state, p1.sealed, *upsert_args("evil"))


def embcache_attacks(att: Attacker, h: embcache.Hub, role: str) -> None:
    """Through the library: PermissionDenied naming the operation and the space, nothing written."""
    att.embcache("space('b')", lambda: h.space("bravo"), space="bravo")
    att.embcache("spaces()", h.spaces)
    att.embcache("create_space('evil')", lambda: h.create_space("evil", dim=DIM), space="evil")
    att.embcache("drop_space('b')", lambda: h.drop_space("bravo"), space="bravo")
    att.embcache("drop_space('alpha')", lambda: h.drop_space("alpha"))  # see test_bug_drop_space_denial_is_unnamed
    att.embcache("grant", lambda: h.grant("evil", space="alpha", role="admin"))
    att.embcache("grant self admin", lambda: h.grant(PRINCIPAL[role], space="alpha", role="admin"))
    att.embcache("revoke", lambda: h.revoke("rd" if role != "reader" else "wr"))
    att.embcache("rotate", lambda: h.rotate("ad"))
    att.embcache("list_principals", h.list_principals)
    att.embcache("create_worker_principal", h.create_worker_principal)
    sp = h.space("alpha")
    v1, v2 = sp.version("v1"), sp.version("v2")
    if role == "reader":
        att.embcache("upsert", lambda: v1.upsert(["n"], vec(0), partition="p1"), "alpha", "upsert")
        att.embcache("upsert new partition", lambda: v1.upsert(["n"], vec(0), partition="p9"), "alpha", "upsert")
        att.embcache("delete", lambda: v1.delete(["x1"]), "alpha", "delete")
        att.embcache("delete p1", lambda: v1.delete(["x1"], partition="p1"), "alpha", "delete")
        att.embcache("build", lambda: v1.build(wait=False), "alpha", "build")
    if role != "admin":
        att.embcache("create_version", sp.create_version, "alpha", "create_version")
        att.embcache("create_version named", lambda: sp.create_version("v7"), "alpha", "create_version")
        att.embcache("seal", v1.seal, "alpha", "seal")
        att.embcache("set_alias", lambda: sp.set_alias("live", "v2"), "alpha", "set_alias")
        att.embcache("set_alias new", lambda: sp.set_alias("beta", "v1"), "alpha", "set_alias")
        att.embcache("rollback", lambda: sp.rollback("live"), "alpha", "rollback")
    if role != "reader":
        att.embcache("upsert into sealed v2", lambda: v2.upsert(["n"], vec(0), partition="p1"), expect=VersionSealed)
        att.embcache("delete from sealed v2", lambda: v2.delete(["s1"], partition="p1"), expect=VersionSealed)
    if role == "writer_p1":
        att.embcache("upsert p2", lambda: v1.upsert(["n"], vec(0), partition="p2"), "alpha", "upsert")
        att.embcache("upsert new p9", lambda: v1.upsert(["n"], vec(0), partition="p9"), "alpha", "upsert")
        att.embcache("delete p2", lambda: v1.delete(["y1"], partition="p2"), "alpha", "delete")
        # reads of a partition not granted are refused up front as "read on partition 'p2' of space 'alpha'"
        att.embcache("get p2", lambda: v1.get(["y1"], partitions=["p2"]), "alpha", "read on partition 'p2'")
        att.embcache("count p2", lambda: v1.count(partition="p2"), "alpha", "read on partition 'p2'")
        for c in ("eventual", "session", "strong"):
            att.embcache(f"query p2 {c}", lambda c=c: v1.query(vec(2), 2, partitions=["p2"], consistency=c), "alpha",
                         "read on partition 'p2'")


@pytest.mark.parametrize("role", ROLES)
def test_forbidden_attempts_fail_and_change_nothing(world: World, connect, role: str) -> None:  # noqa: ANN001, F811
    h = connect(world.url, username=PRINCIPAL[role], password=world.password(role))
    r = world.raw_as(role)
    h.space("alpha").version("v1").count()  # the principal's hub is up and reading
    before = snapshot_server(world.url)
    att = Attacker(role)
    common_raw_attacks(att, r, world, role)
    if role == "admin":
        admin_raw_attacks(att, r)
    else:
        state_raw_attacks(att, r, role)
    if role == "reader":
        reader_write_raw_attacks(att, r)
    if role == "writer_p1":
        other_partition_raw_attacks(att, r)
    embcache_attacks(att, h, role)
    r.close()
    after = snapshot_server(world.url)
    _counted[role] = att.attempts
    print(f"forbidden attempts: {role}={att.attempts}, succeeded or failed the wrong way: {len(att.problems)}")
    assert not att.problems, f"{role}: {len(att.problems)} of {att.attempts} forbidden attempts were not refused:\n" + \
        "\n".join(att.problems)
    assert_same(before, after, role)
    assert att.attempts == FORBIDDEN_ATTEMPTS[role], (
        f"forbidden attempts: {role}={att.attempts} (FORBIDDEN_ATTEMPTS says {FORBIDDEN_ATTEMPTS[role]}): "
        "update the constant when the attack list changes")


def test_forbidden_attempt_counts() -> None:
    """Runs after the four role tests (file order): quotes the counts for the closing note."""
    if set(_counted) != set(ROLES):
        pytest.skip("the per-role forbidden-attempt tests did not all run")
    total = sum(_counted.values())
    line = ", ".join(f"{role}={_counted[role]}" for role in ROLES)
    print(f"forbidden attempts: {line} (total {total}); succeeded: 0; keys changed: 0")
    assert _counted == FORBIDDEN_ATTEMPTS, f"forbidden attempts: {line}"


# --------------------------------------------------------------------------------------------------------------
# what each role may do
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
def test_allowed_operations_through_embcache(world: World, connect, role: str) -> None:  # noqa: ANN001, F811
    h = connect(world.url, username=PRINCIPAL[role], password=world.password(role))
    sp = h.space("alpha")
    v = sp.version("v1")
    only_p1 = role == "writer_p1"
    assert v.partitions() == ["p1", "p2"]
    assert v.get(["x1", "y1"]).ids == (["x1"] if only_p1 else ["x1", "y1"])
    assert v.get(["x1"]).metadatas == [{"n": 1}]
    assert v.count() == (2 if only_p1 else 3)
    assert v.count(partition="p1") == 2
    for c in ("eventual", "session", "strong"):
        assert v.query(vec(2), 3, consistency=c).ids[0] == (["x2", "x1"] if only_p1 else ["y1", "x2", "x1"]), c
        assert v.query(vec(0), 1, partitions=["p1"], consistency=c).ids == [["x1"]], c
    assert v.query_by_id(["x1"], 1).ids == [["x2"]]
    if not only_p1:  # see test_bug_partition_scoped_writer_cannot_build_or_stat
        assert [s.partition for s in v.stats()] == ["p1", "p2"]
    assert [x.name for x in sp.versions()] == ["v1", "v2"]
    assert sp.aliases() == {"live": "v1"}
    assert sp.alias_history("live") == ["v2"]
    assert sp.version("live").name == "v1"
    assert sp.query(vec(0), 1).ids == [["x1"]]
    assert sp.version("v2").get(["s1"]).ids == ["s1"]
    if role == "reader":
        return
    # writers: upsert, delete, build requests on their partitions
    assert v.upsert(["n1"], vec(3), [{"k": "v"}], partition="p1") == 1
    for c in ("session", "strong"):
        assert v.query(vec(3), 1, consistency=c).ids == [["n1"]], c
    assert v.delete(["n1"], partition="p1") == 1
    assert v.upsert(["n2"], vec(3), partition="p1") == 1
    assert v.delete(["n2"]) == 1
    if not only_p1:
        assert v.upsert(["n3"], vec(3), partition="p3") == 1  # a new partition
        assert v.partitions() == ["p1", "p2", "p3"]
        handle = v.build(wait=False)
        assert handle.progress()[1] == 3
        assert set(world.raw.zrange(K.dirty("alpha"), 0, -1)) >= {b"v1/p1", b"v1/p2", b"v1/p3"}
    if role != "admin":
        return
    v3 = sp.create_version(description="next")
    assert v3.name == "v3"
    v3.upsert(["z1"], vec(1), partition="p1")
    sp.set_alias("live", v3)
    assert sp.aliases()["live"] == "v3"
    assert sp.rollback("live").name == "v1"
    v3.seal()
    assert sp.version("v3").state == "sealed"
    with pytest.raises(VersionSealed):
        v3.upsert(["z2"], vec(1), partition="p1")
    assert world.raw.get(K.partition("alpha", "v3", "p1").sealed) == b"1"


@pytest.mark.parametrize("role", ROLES)
def test_allowed_operations_through_raw_redis(world: World, role: str) -> None:
    """The same rights with redis-py and the credentials alone (what redis-cli would do)."""
    r = world.raw_as(role)
    p1, p2 = K.partition("alpha", "v1", "p1"), K.partition("alpha", "v1", "p2")
    parts = [p1] if role == "writer_p1" else [p1, p2]
    assert r.ping()
    assert json.loads(r.get(K.space("alpha")))["dim"] == DIM
    assert set(r.hkeys(K.versions("alpha"))) == {b"v1", b"v2"}
    assert r.hgetall(K.aliases("alpha")) == {b"live": b"v1"}
    assert r.lrange(K.alias_history("alpha", "live"), 0, -1) == [b"v2"]
    assert r.smembers(K.parts("alpha", "v1")) == {b"p1", b"p2"}
    assert r.get(K.vstate("alpha", "v2")) == b"open:sealing:sealed"
    assert r.hget(K.grants("alpha"), PRINCIPAL[role]) is not None
    for pk in parts:
        assert r.hlen(pk.vec) >= 1
        assert r.xrange(pk.log, "-", "+")
        assert r.hget(pk.state, "pos")
        assert r.get(pk.snap) is None
    assert r.hget(p1.vec, "x1") == vec(0).tobytes()
    assert r.fcall_ro("emb_get", 2, p1.vec, p1.meta, "x1")[0] == [vec(0).tobytes()]
    assert r.fcall_ro("emb_tail", 4, p1.vec, p1.meta, p1.log, p1.state, "0-0", 100)[1] == [b"x1", b"x2"]
    assert r.fcall_ro("emb_libversion", 0)
    ps = r.pubsub()
    ps.subscribe(K.events("alpha"))
    assert ps.get_message(timeout=1.0)["type"] == "subscribe"
    ps.close()
    if role == "reader":
        return
    for pk in parts:
        pos = r.fcall("emb_upsert", 5, *pk.writes, *upsert_args("r1"))
        assert world.raw.hget(pk.vec, "r1") == vec(1).tobytes() and world.raw.hget(pk.state, "pos") == pos
        assert json.loads(r.fcall("emb_delete", 5, *pk.writes, "r1")[0]) == ["r1"]
        assert r.zadd(K.dirty("alpha"), {f"v1/{pk.tag.rsplit('/', 1)[1]}": time.time()}, nx=True) in (0, 1)
    assert r.fcall("emb_register", 2, K.vstate("alpha", "v1"), K.parts("alpha", "v1"), "p1") == 0
    if role != "admin":
        return
    assert r.fcall("emb_create_version", 3, K.versions("alpha"), K.seq("alpha"),
                   K.vstate("alpha", "v9"), "v9", '{"state": "open", "created": 0, "description": ""}', "") == b"v9"
    assert r.fcall("emb_set_alias", 3, K.versions("alpha"), K.aliases("alpha"), K.alias_history("alpha", "beta"),
                   "beta", "v9") is None
    assert r.fcall("emb_seal", 3, K.versions("alpha"), K.parts("alpha", "v9"), K.vstate("alpha", "v9"), "v9") == \
        [b"open:sealing", []]
    assert world.op.space("alpha").version("v9").state == "sealing"
    assert r.fcall("emb_sealed", 2, K.versions("alpha"), K.vstate("alpha", "v9"), "v9", "{}") == 1
    assert world.op.space("alpha").version("v9").state == "sealed"
    assert world.op.space("alpha").aliases()["beta"] == "v9"


# --------------------------------------------------------------------------------------------------------------
# secrets, rotate, revoke, persistence
# --------------------------------------------------------------------------------------------------------------
def test_password_is_never_stored_in_redis(world: World, redis_server: RedisServer) -> None:
    worker = world.op.create_worker_principal()
    rotated = world.op.rotate("ad")
    secrets_ = {role: world.password(role) for role in ("reader", "writer", "writer_p1")}
    secrets_["admin"] = rotated.password
    secrets_["worker"] = worker.password
    acl = [line.decode() if isinstance(line, bytes) else line for line in world.raw.acl_list()]
    dumps = [d for d, _ in snapshot_server(world.url)["keys"].values()]
    aclfile = (redis_server.directory / "users.acl").read_text()
    registry = {k.decode(): json.loads(v) for k, v in world.raw.hgetall(K.principals()).items()}
    for who, secret in secrets_.items():
        assert secret and len(secret) >= 40, who  # 256 random bits, url-safe base64
        needle = secret.encode()
        assert not any(needle in d for d in dumps), f"{who}'s password is in a Redis value"
        assert not any(secret in line for line in acl), f"{who}'s password is in ACL LIST"
        assert secret not in aclfile, f"{who}'s password is in the ACL file"
        digest = hashlib.sha256(needle).hexdigest()
        user = {"reader": "rd", "writer": "wr", "admin": "ad", "writer_p1": "wp", "worker": "worker"}[who]
        line = next(x for x in acl if x.startswith(f"user {user} "))
        assert f"#{digest}" in line, line
        assert registry[user]["hash"] == digest
        assert "'***'" in repr(Credentials(user, secret)) and secret not in repr(Credentials(user, secret))
    assert "nopass" not in " ".join(x for x in acl if not x.startswith("user default "))


def test_rotate_old_password_fails_new_works(world: World) -> None:
    old = world.password("writer")
    new = world.op.rotate("wr")
    assert new.username == "wr" and new.password and new.password != old and new.persisted
    with pytest.raises(AuthenticationError), redis.Redis.from_url(world.url, username="wr", password=old) as r:
        r.ping()
    with pytest.raises(PermissionDenied, match="authentication"):
        embcache.connect(world.url, username="wr", password=old)
    with embcache.connect(world.url, username="wr", password=new.password) as h:
        v = h.space("alpha").version("v1")
        assert v.upsert(["r"], vec(1), partition="p1") == 1
    # the grants are unchanged by a rotation
    assert world.op.list_principals()["wr"]["grants"] == {"alpha": {"role": "writer", "partitions": None}}


def test_revoke_one_space_keeps_the_others(world: World) -> None:
    more = world.op.grant("rd", space="bravo", role="writer")
    assert more.password is None  # an existing principal keeps its secret
    pw = world.password("reader")
    with redis.Redis.from_url(world.url, username="rd", password=pw) as r:
        assert r.hget(K.partition("bravo", "v1", "default").vec, "q1") is not None
        assert r.hget(K.partition("alpha", "v1", "p1").vec, "x1") is not None
        world.op.revoke("rd", space="alpha")
        with pytest.raises(NoPermissionError):  # an open connection loses the grant at once
            r.hget(K.partition("alpha", "v1", "p1").vec, "x1")
        assert r.hget(K.partition("bravo", "v1", "default").vec, "q1") is not None
        r.fcall("emb_upsert", 5, *writes_of("bravo", "v1", "default"), *upsert_args("w1"))
    assert world.op.list_principals()["rd"]["grants"] == {"bravo": {"role": "writer", "partitions": None}}
    assert world.raw.hget(K.grants("alpha"), "rd") is None and world.raw.hget(K.grants("bravo"), "rd") is not None
    with embcache.connect(world.url, username="rd", password=pw) as h:
        with pytest.raises(PermissionDenied):
            h.space("alpha")
        assert h.space("bravo").version("v1").get(["w1"]).ids == ["w1"]
    with pytest.raises(NotFound):
        world.op.revoke("rd", space="alpha")


def test_revoke_without_space_deletes_the_user(world: World) -> None:
    pw = world.password("writer")
    world.op.grant("wr", space="bravo", role="reader")
    world.op.revoke("wr")
    assert world.raw.acl_getuser("wr") is None
    assert "wr" not in world.op.list_principals()
    assert world.raw.hget(K.grants("alpha"), "wr") is None and world.raw.hget(K.grants("bravo"), "wr") is None
    with pytest.raises(AuthenticationError), redis.Redis.from_url(world.url, username="wr", password=pw) as r:
        r.ping()
    with pytest.raises(NotFound):
        world.op.revoke("wr")
    with pytest.raises(NotFound):
        world.op.rotate("wr")
    # the others are untouched
    with redis.Redis.from_url(world.url, username="rd", password=world.password("reader")) as r:
        assert r.hget(K.partition("alpha", "v1", "p1").vec, "x1") is not None


def test_grants_survive_a_server_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "srv", port=free_port()).start()
    try:
        with embcache.connect(server.url) as op:
            v = op.create_space("alpha", dim=DIM, metric="l2").create_version()
            v.upsert(["x1"], vec(0))
            rd = op.grant("rd", space="alpha", role="reader")
            gone = op.grant("gone", space="alpha", role="writer")
            wp = op.grant("wp", space="alpha", role="writer", partitions=["p1"])
            assert rd.persisted and gone.persisted and wp.persisted
            op.revoke("gone")
            rotated = op.rotate("wp")
        server.stop()
        server.start()
        with embcache.connect(server.url, username="rd", password=rd.password) as h:
            assert h.space("alpha").version("v1").query(vec(0), 1).ids == [["x1"]]
            with pytest.raises(PermissionDenied):
                h.space("alpha").version("v1").upsert(["n"], vec(1))
        with pytest.raises(PermissionDenied):
            embcache.connect(server.url, username="gone", password=gone.password)
        with pytest.raises(PermissionDenied):
            embcache.connect(server.url, username="wp", password=wp.password)
        with embcache.connect(server.url, username="wp", password=rotated.password) as h:
            h.space("alpha").version("v1").upsert(["n"], vec(1), partition="p1")
            with pytest.raises(PermissionDenied):
                h.space("alpha").version("v1").upsert(["m"], vec(1), partition="p2")
    finally:
        server.stop()


class NoAclFileServer(RedisServer):
    """A redis-server started without ``--aclfile``: users live only until it stops."""

    def argv(self, *, daemonize: bool = False) -> list[str]:
        args = super().argv(daemonize=daemonize)
        i = args.index("--aclfile")
        return args[:i] + args[i + 2:]


@pytest.fixture
def no_aclfile_url(tmp_path: Path) -> Iterator[str]:
    server = NoAclFileServer(tmp_path / "noacl", port=free_port()).start()
    try:
        yield server.url
    finally:
        server.stop()


def test_grant_without_acl_file_says_not_persisted(no_aclfile_url: str) -> None:
    with embcache.connect(no_aclfile_url) as op:
        op.create_space("alpha", dim=DIM)
        creds = op.grant("rd", space="alpha")
        assert creds.persisted is False and creds.password
        assert op.rotate("rd").persisted is False
        assert op.create_worker_principal().persisted is False


# --------------------------------------------------------------------------------------------------------------
# safe names
# --------------------------------------------------------------------------------------------------------------
BAD_NAMES = ["a*", "a?", "a[b", "[ab]", "a{b", "a}b", "{a}", "a:b", "a/b", "a b", "a\nb", "a\n", "*", "", "-a",
             "A" * 65, "a\\b", "é"]


def test_unsafe_names_are_rejected_everywhere(world: World) -> None:
    before = snapshot_server(world.url)
    sp = world.op.space("alpha")
    v = sp.version("v1")
    attempts = 0
    for bad in BAD_NAMES:
        calls: list[Callable[[], Any]] = [  # each called right away, in this iteration
            lambda bad=bad: world.op.create_space(bad, dim=DIM),
            lambda bad=bad: sp.create_version(bad),
            lambda bad=bad: sp.set_alias(bad, "v1"),
            lambda bad=bad: sp.set_alias("live", bad),
            lambda bad=bad: v.upsert(["n"], vec(0), partition=bad),
            lambda bad=bad: world.op.grant("p", space="alpha", partitions=[bad]),
            lambda bad=bad: world.op.grant("p", space="alpha", partitions=["p1", bad]),
            lambda bad=bad: world.op.grant(bad, space="alpha"),
            lambda bad=bad: world.op.grant("p", space=bad),
            lambda bad=bad: world.op.revoke(bad),
            lambda bad=bad: world.op.rotate(bad),
            lambda bad=bad: world.op.create_worker_principal(bad),
        ]
        for i, call in enumerate(calls):
            attempts += 1
            with pytest.raises(InvalidName):
                call()
                pytest.fail(f"name {bad!r} accepted by call #{i}")
    with pytest.raises(embcache.InvalidInput):
        world.op.grant("default", space="alpha")
    assert attempts == len(BAD_NAMES) * 12
    assert_same(before, snapshot_server(world.url), "unsafe names")


# --------------------------------------------------------------------------------------------------------------
# the worker principal
# --------------------------------------------------------------------------------------------------------------
def test_worker_principal_rights(world: World) -> None:
    creds = world.op.create_worker_principal()
    assert world.op.list_principals()["worker"]["worker"] is True
    before = snapshot_server(world.url)
    with redis.Redis.from_url(world.url, username="worker", password=creds.password) as r:
        # what it needs: every space's data, RQ's keys and channels
        assert r.hget(K.partition("bravo", "v1", "default").vec, "q1") is not None
        assert r.hgetall("rq:job:x")[b"status"] == b"queued"
        r.set("rq:worker-test", "1")
        r.delete("rq:worker-test")
        assert r.publish("rq:pubsub:w", "x") == 0
        # what it must not do
        att = Attacker("worker")
        for cmd in [("KEYS", "*"), ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "SET", "slowlog-log-slower-than", "10000"),
                    ("CONFIG", "GET", "*"), ("ACL", "SETUSER", "evil", "on", ">x", "+@all"), ("ACL", "LIST"),
                    ("MODULE", "LIST"), ("SHUTDOWN", "ABORT"), ("SWAPDB", 0, 1), ("MIGRATE", "127.0.0.1", 1, "x", 0, 1),
                    ("SET", "other:key", "1"), ("GET", "other:key"), ("REPLICAOF", "NO", "ONE"), ("SORT", "rq:queues")]:
            att.raw(r, *cmd)
        att.run("ACL DRYRUN worker DEBUG", lambda: _dryrun(world.raw, "worker", "DEBUG", "SLEEP", 0))
    assert not att.problems, "\n".join(att.problems)
    assert_same(before, snapshot_server(world.url), "worker")
    # a client principal cannot become the worker, nor the worker a client
    with pytest.raises(embcache.InvalidInput):
        world.op.create_worker_principal("rd")
    with pytest.raises(embcache.InvalidInput):
        world.op.grant("worker", space="alpha")


@pytest.mark.slow
def test_worker_principal_runs_a_real_build(redis_url: str, workers, connect) -> None:  # noqa: ANN001, F811
    """A ``python -m workers`` process authenticated as the worker principal on both the data and the RQ
    connection builds what a writer principal asked for; a reader principal then serves the snapshot."""
    op = connect(redis_url)
    op.create_space("alpha", dim=8, metric="cosine").create_version()
    wk = op.create_worker_principal()
    wr = op.grant("wr", space="alpha", role="writer")
    rd = op.grant("rd", space="alpha", role="reader")
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    raw.acl_log_reset()
    env = {"EMBCACHE_USERNAME": wk.username, "EMBCACHE_PASSWORD": wk.password,
           "EMBCACHE_QUEUE_USERNAME": wk.username, "EMBCACHE_QUEUE_PASSWORD": wk.password}
    worker = workers.start(redis_url, env=env)
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    writer = connect(redis_url, username="wr", password=wr.password)
    wv = writer.space("alpha").version("v1")
    wv.upsert([f"i{i}" for i in range(200)], x[:200], partition="p1")
    wv.upsert([f"i{i}" for i in range(200, 300)], x[200:], partition="p2")
    try:
        wv.build(timeout=60)
    except Exception as exc:  # noqa: BLE001 - report what the worker was refused
        denied = [(e.get("username"), e.get("object"), e.get("reason")) for e in raw.acl_log()]
        pytest.fail(f"build as the worker principal failed: {exc!r}\nACL LOG: {denied}\n{worker.log()[-3000:]}")
    # every connection of the worker process (data, RQ queue, scheduler) is authenticated as the worker
    rq_names = {w.split("rq:worker:", 1)[1] for w in raw.smembers("rq:workers")}
    clients = raw.client_list()
    assert rq_names and any(c["name"] in rq_names and c["user"] == "worker" for c in clients), clients
    assert not any(c["name"] in rq_names and c["user"] != "worker" for c in clients), clients
    denied = [(e.get("username"), e.get("object"), e.get("reason")) for e in raw.acl_log()]
    assert not [d for d in denied if d[0] == "worker"], f"commands RQ/embcache needed but were refused: {denied}"
    assert "NOPERM" not in worker.log() and "no permissions" not in worker.log(), worker.log()[-3000:]
    reader = connect(redis_url, username="rd", password=rd.password)
    rv = reader.space("alpha").version("v1")
    res = rv.query(x[:5], 1, consistency="eventual")
    assert [r[0] for r in res.ids] == [f"i{i}" for i in range(5)]
    graph = reader.cache.cached_graph("alpha", "v1")  # the version graph: the reader is granted every partition
    for p in ("p1", "p2"):
        base = reader.cache.cached(("alpha", "v1", p)) or (graph if graph is not None and p in graph.parts else None)
        assert isinstance(base, HnswBase), f"{p} is served by {type(base).__name__}, not the worker's snapshot"
    assert all(s.generation >= 1 and s.unindexed_entries == 0 for s in rv.stats())


# --------------------------------------------------------------------------------------------------------------
# Redis Cluster
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture
def cluster_world(cluster_url: str, redis_cluster, connect) -> World:  # noqa: ANN001, F811
    op = connect(cluster_url)
    a = op.create_space("alpha", dim=DIM, metric="l2")
    v1 = a.create_version()
    v1.upsert(["x1"], vec(0), partition="p1")
    v1.upsert(["y1"], vec(2), partition="p2")
    b = op.create_space("bravo", dim=DIM, metric="l2")
    b.create_version().upsert(["q1"], vec(3))
    creds = {"writer": op.grant("wr", space="alpha", role="writer"),
             "reader": op.grant("rd", space="alpha", role="reader"),
             "writer_p1": op.grant("wp", space="alpha", role="writer", partitions=["p1"])}
    w = World(cluster_url, op, redis.Redis.from_url(cluster_url), creds)
    w.extras["cluster"] = redis_cluster
    return w


@pytest.mark.cluster
def test_cluster_grant_applies_to_every_node(cluster_world: World) -> None:
    cluster = cluster_world.extras["cluster"]
    rules = []
    for node in cluster.node_clients():
        with node:
            users = {u.decode() if isinstance(u, bytes) else u for u in node.acl_users()}
            assert {"rd", "wr", "wp"} <= users
            # the same rules on every node (Redis lists a user's commands in hash order: compare token sets)
            rules.append(sorted(sorted(line.replace("(", " ( ").replace(")", " ) ").split())
                                for line in map(_text, node.acl_list()) if not line.startswith("user default")))
    assert len(rules[0]) == 3 and all(r == rules[0] for r in rules)
    cluster_world.op.revoke("wp")
    cluster_world.op.rotate("wr")
    for node in cluster.node_clients():
        with node:
            assert node.acl_getuser("wp") is None


@pytest.mark.cluster
def test_cluster_forbidden_writes_fail_on_every_node(cluster_world: World) -> None:
    cluster = cluster_world.extras["cluster"]
    before = [snapshot_server(u) for u in cluster.urls]
    att = Attacker("cluster")
    rc = cluster.client()
    own = K.partition("alpha", "v1", "p1").vec
    owner = rc.get_node_from_key(own)
    for url in cluster.urls:
        for role in ("reader", "writer", "writer_p1"):
            with redis.Redis.from_url(url, username=PRINCIPAL[role], password=cluster_world.password(role)) as r:
                # ACL is checked before slot ownership: NOPERM on every node, whichever owns the key
                for cmd in [("HSET", K.partition("bravo", "v1", "default").vec, "evil", "x"),
                            ("SET", K.space("bravo"), "x"),
                            ("HSET", K.partition("alpha", "v1", "p2").vec, "evil", "x") if role == "writer_p1"
                            else ("SET", K.space("alpha"), "x"),
                            ("LPUSH", "rq:queue:embcache", "evil"), ("FLUSHALL",), ("KEYS", "*"),
                            ("CONFIG", "SET", "slowlog-log-slower-than", "10000"), ("FUNCTION", "FLUSH"),
                            ("ACL", "SETUSER", "evil", "on", "+@all")]:
                    att.raw(r, *cmd)
                if role == "reader":
                    att.raw(r, "HSET", own, "evil", "x")
                if f":{owner.port}/" in url:  # the node that owns p1's slot serves the reads the role allows
                    assert r.hget(own, "x1") == vec(0).tobytes()
    rc.close()
    after = [snapshot_server(u) for u in cluster.urls]
    print(f"forbidden attempts on the cluster: {att.attempts}")
    assert not att.problems, "\n".join(att.problems)
    for u, b, a in zip(cluster.urls, before, after):
        assert_same(b, a, f"cluster node {u}")


# --------------------------------------------------------------------------------------------------------------
# regression tests of bugs found by this file's first version
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.cluster
def test_bug_principal_cannot_connect_to_cluster(cluster_world: World, connect) -> None:  # noqa: ANN001, F811
    h = connect(cluster_world.url, username="wr", password=cluster_world.password("writer"))
    v = h.space("alpha").version("v1")
    assert v.query(vec(0), 1, consistency="strong").ids == [["x1"]]
    v.upsert(["n1"], vec(1), partition="p1")
    with pytest.raises(PermissionDenied):
        h.space("bravo")


def test_bug_writer_cannot_upsert_more_than_one_chunk(world: World, connect) -> None:  # noqa: ANN001, F811
    h = connect(world.url, username="wr", password=world.password("writer"))
    x = np.random.default_rng(1).standard_normal((1001, DIM)).astype(np.float32)
    assert h.space("alpha").version("v1").upsert([f"m{i}" for i in range(1001)], x, partition="p1") == 1001


def test_bug_partition_scoped_writer_cannot_build_or_stat(world: World, connect) -> None:  # noqa: ANN001, F811
    h = connect(world.url, username="wp", password=world.password("writer_p1"))
    v = h.space("alpha").version("v1")
    handle = v.build(wait=False)
    assert handle.progress()[1] == 1
    assert [s.partition for s in v.stats()] == ["p1"]


def test_bug_writer_can_stop_all_builds_via_the_dirty_set(world: World) -> None:
    from rq import Queue

    from embcache.redis.dispatcher import Dispatcher

    with redis.Redis.from_url(world.url, username="wp", password=world.password("writer_p1")) as r:
        assert r.zadd(K.dirty("alpha"), {"v1/bad name": 0}) == 1  # allowed: the dirty set is the writer's
    world.op.space("bravo").version("v1").upsert(["q3"], vec(1))  # marks b/v1/default dirty
    dispatcher = Dispatcher(world.op.store, Queue("embcache", connection=redis.Redis.from_url(world.url)))
    dispatcher.tick()
    assert world.raw.zrange(K.dirty("bravo"), 0, -1) == [], "b's build was not enqueued"


def test_bug_rotate_does_not_cut_open_connections(world: World) -> None:
    with world.raw_as("writer") as r:
        r.ping()
        world.op.rotate("wr")
        with pytest.raises((AuthenticationError, NoPermissionError, redis.ConnectionError)):
            r.hget(K.partition("alpha", "v1", "p1").vec, "x1")


def test_bug_worker_principal_can_replace_functions(world: World) -> None:
    creds = world.op.create_worker_principal()
    att = Attacker("worker")
    with redis.Redis.from_url(world.url, username="worker", password=creds.password) as r:
        att.raw(r, "FUNCTION", "DELETE", "no-such-library")  # an error other than NOPERM means it was allowed
        att.raw(r, "FUNCTION", "LOAD", "#!lua name=evilw\nredis.register_function('evilw', function() return 1 end)")
        att.raw(r, "FUNCTION", "RESTORE", b"x")
        att.raw(r, "SCRIPT", "FLUSH")
    with contextlib.suppress(ResponseError):
        world.raw.function_delete("evilw")
    assert not att.problems, "\n".join(att.problems)


def test_bug_worker_principal_can_write_the_principal_registry(world: World) -> None:
    creds = world.op.create_worker_principal()
    att = Attacker("worker")
    with redis.Redis.from_url(world.url, username="worker", password=creds.password) as r:
        att.raw(r, "HGETALL", K.principals())
        att.raw(r, "HSET", K.principals(), "rd",
                '{"hash": "0", "grants": {"bravo": {"role": "admin", "partitions": null}}}')
    assert not att.problems, "\n".join(att.problems)


def test_bug_drop_space_denial_is_unnamed(world: World, connect) -> None:  # noqa: ANN001, F811
    h = connect(world.url, username="ad", password=world.password("admin"))
    with pytest.raises(PermissionDenied) as info:
        h.drop_space("alpha")
    assert "drop" in str(info.value) and "alpha" in str(info.value), str(info.value)
