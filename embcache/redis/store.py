"""The Redis layer: connections, the Functions library, error translation, and a partition's data operations.

Nothing above this module builds Redis commands. Every atomic write is a function of ``functions.lua`` called
with keys of one hash tag, so it works unchanged on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar

import redis
import redis.cluster
from redis import exceptions as rexc
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..core.delta import Chain
from ..core.errors import (
    AlreadyExists,
    AuthenticationFailed,
    Conflict,
    EmbcacheError,
    Indeterminate,
    InvalidInput,
    NotFound,
    OutOfMemory,
    PermissionDenied,
    PublishConflict,
    RedisRefused,
    SnapshotCorrupt,
    Unavailable,
    VersionSealed,
)
from ..core.keys import NAME_PATTERN, Keys, PartitionKeys
from ..core.snapshot import Manifest
from .plan import Batch, Call, Plan, planned, run

__all__ = ["Store", "PartitionData", "Tail", "open_client", "client_options", "translate_errors", "before_send",
           "lua_error", "LUA_ERRORS", "LIB_CODE", "LIB_VERSION"]

_LIB_TEMPLATE = resources.files("embcache.redis").joinpath("functions.lua").read_text()
LIB_VERSION = hashlib.sha256(_LIB_TEMPLATE.encode()).hexdigest()[:16]
LIB_CODE = _LIB_TEMPLATE.replace("__LIB_VERSION__", LIB_VERSION)
log = logging.getLogger("embcache.store")

T = TypeVar("T")
_NAME = re.compile(NAME_PATTERN)
WRITE_CHUNK_ITEMS = 1000  # items per FCALL: bounds argument lists; a partition's chunks commit in one MULTI/EXEC
WRITE_CHUNK_BYTES = 8 << 20
READ_CHUNK_ITEMS = 4000  # ids per emb_get call: Lua's unpack() takes at most ~8000 values
TAIL_LIMIT = 10_000  # change-log entries a tail read returns before the caller reloads in full (emb_tail's maximum)
TAIL_PAGES = 100_000  # pages a full tail read takes at most (each page advances by at least one entry)
SCAN_COUNT = 1000

_POS_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # a change-log position (stream id) as Redis writes it
#: Every error code ``functions.lua`` replies with (``redis.error_reply('<CODE> <message>')``), and the error it
#: becomes. The one place they are parsed: :func:`lua_error`.
LUA_ERRORS: dict[str, type[EmbcacheError]] = {
    "EMBSEALED": VersionSealed,
    "EMBNOTFOUND": NotFound,
    "EMBNOHISTORY": NotFound,  # rollback of an alias with no previous target
    "EMBEXISTS": AlreadyExists,
    "EMBRETRY": Conflict,  # the version counter moved: pick the next name
    "EMBCONFLICT": PublishConflict,
    "EMBARGS": InvalidInput,  # a function refused its arguments
}


def lua_error(exc: rexc.ResponseError) -> EmbcacheError | None:
    """The embcache error of a Functions library reply (its code in ``.code``); None for any other reply."""
    code, _, message = str(exc).partition(" ")
    kind = LUA_ERRORS.get(code)
    if kind is None:
        return None
    err = kind(message.strip())
    err.code = code  # type: ignore[attr-defined]
    return err


# Explicit timeouts, whatever redis-py's defaults are (none in 5.x, 5 s in 6+): a stalled Redis makes a call fail
# with a clear "timed out" within these bounds instead of blocking it for as long as the stall lasts.
SOCKET_TIMEOUT = float(os.environ.get("EMBCACHE_SOCKET_TIMEOUT", "5"))
CONNECT_TIMEOUT = float(os.environ.get("EMBCACHE_CONNECT_TIMEOUT", "2"))
CONNECT_RETRIES = 3


def before_send(exc: BaseException) -> bool:
    """True when a redis-py error was raised while connecting, before any byte of the command left: nothing
    can have been executed. (redis-py says so only in its messages: "Error 111 connecting to ...",
    "Timeout connecting to server".)"""
    return isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError)) and "connecting to" in str(exc).lower()


class ConnectRetry(Retry):
    """redis-py's :class:`~redis.retry.Retry`, limited to failures before the command was sent (connection
    refused, connect timeout, reset while connecting): retrying those is safe for every command. A failure after
    sending is never retried here, as the command may have run (``create_version`` or a publication must not run
    twice); the caller gets :class:`Indeterminate` for a write and can decide. Works with redis-py 5 to 8."""

    def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False) -> Any:
        self._backoff.reset()
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                failures += 1
                fail(error, failures) if with_failure_count else fail(error)  # redis-py drops the connection here
                if not before_send(error) or failures > self._retries or (is_retryable and not is_retryable(error)):
                    raise
                time.sleep(self._backoff.compute(failures))


class AsyncConnectRetry(AsyncRetry):
    """:class:`ConnectRetry` for ``redis.asyncio``."""

    async def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None,
                              with_failure_count: bool = False) -> Any:
        self._backoff.reset()
        failures = 0
        while True:
            try:
                return await do()
            except self._supported_errors as error:
                failures += 1
                await (fail(error, failures) if with_failure_count else fail(error))
                if not before_send(error) or failures > self._retries or (is_retryable and not is_retryable(error)):
                    raise
                await asyncio.sleep(self._backoff.compute(failures))


def client_options(asyncio_client: bool = False) -> dict[str, Any]:
    """The connection settings every embcache client uses: explicit timeouts and the connect-only retry."""
    retry = (AsyncConnectRetry if asyncio_client else ConnectRetry)(ExponentialBackoff(cap=1.0, base=0.1),
                                                                   CONNECT_RETRIES)
    return {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT, "retry": retry,
            "retry_on_timeout": False}


@contextlib.contextmanager
def translate_errors(operation: str = "", *, write: bool = False) -> Iterator[None]:
    """Map redis-py exceptions onto embcache's tree (ACL refusals, unreachable servers, function errors).

    ``write``: the block sends a write. A connection failure after the command was sent then raises
    :class:`Indeterminate` (it may have been applied) instead of :class:`Unavailable` (it was not)."""
    try:
        yield
    except EmbcacheError:
        raise
    except rexc.NoPermissionError as exc:
        raise PermissionDenied(f"{operation}: Redis refused it for this principal: {exc}") from None
    except rexc.AuthenticationError as exc:
        raise AuthenticationFailed(f"{operation}: authentication failed: {exc}") from None
    except rexc.OutOfMemoryError as exc:
        raise OutOfMemory(f"{operation}: Redis refused the write at its memory limit (maxmemory); nothing was "
                          f"written: {exc}") from None
    except (rexc.ConnectionError, rexc.TimeoutError, rexc.ClusterDownError, OSError) as exc:
        timed_out = isinstance(exc, (rexc.TimeoutError, TimeoutError))
        # the limit a URL's socket_timeout= set is not known here: name the setting, and its value when it is ours
        what = (f"timed out (no answer within the socket timeout: {SOCKET_TIMEOUT:g} s unless the URL's "
                "socket_timeout= or EMBCACHE_SOCKET_TIMEOUT sets another)") if timed_out else \
            f"connection failed: {exc}"
        if write and not before_send(exc):
            raise Indeterminate(f"{operation}: the write was sent but Redis {what}; it may or may not have been "
                                "applied (upsert and delete can be repeated safely)") from exc
        if timed_out and before_send(exc):
            what = (f"timed out connecting (limit {CONNECT_TIMEOUT:g} s unless the URL's socket_connect_timeout= or "
                    "EMBCACHE_CONNECT_TIMEOUT sets another)")
        where = "Redis" if timed_out else "Redis is unreachable:"  # a stalled server is not an absent one
        raise Unavailable(f"{operation}: {where} {what}; nothing was written") from exc
    except rexc.ResponseError as exc:
        err = lua_error(exc)
        if err is not None:
            raise err from None
        text = str(exc)
        if text.startswith("NOPERM"):
            raise PermissionDenied(f"{operation}: {text}") from None
        if text.startswith("OOM"):
            raise OutOfMemory(f"{operation}: Redis refused the write at its memory limit: {text}") from None
        raise RedisRefused(f"{operation}: Redis refused it: {text[:300]}") from None


def open_client(
    url: str, *, username: str | None = None, password: str | None = None, cluster: bool | None = None
) -> redis.Redis | redis.cluster.RedisCluster:
    """A binary-safe client for ``url``; Redis Cluster is detected unless ``cluster`` says. Without credentials,
    the URL of this user's embedded server gets its operator password (see
    :func:`embcache.server.embedded_password`)."""
    from .connection import check_url, normalize_url
    from .server import embedded_password

    url = normalize_url(url)
    check_url(url)
    if username is None and password is None:
        password = embedded_password(url)
    opts: dict[str, Any] = {"decode_responses": False, "health_check_interval": 30, **client_options()}
    if username is not None:
        opts["username"] = username
    if password is not None:
        opts["password"] = password
    with translate_errors("connect"):
        if cluster is None:
            probe = redis.Redis.from_url(url, **opts)
            try:
                cluster = bool(probe.info("cluster").get("cluster_enabled"))
            except rexc.NoPermissionError:  # principals may not run INFO; CLUSTER INFO answers them
                try:
                    probe.execute_command("CLUSTER INFO")
                    cluster = True
                except rexc.ResponseError:  # "cluster support disabled"
                    cluster = False
            finally:
                probe.close()
        if cluster:
            opts.pop("health_check_interval")
            return redis.cluster.RedisCluster.from_url(url, **opts)
        client = redis.Redis.from_url(url, **opts)
        client.ping()
        return client


@dataclass
class Tail:
    """The net effect of a partition's change log after a position: ids with their current vector/metadata."""

    pos: str
    ids: list[str]
    vectors: list[bytes | None]  # None: deleted
    metadatas: list[bytes | None]


@dataclass
class PartitionData:
    """A full, consistent copy of a partition at log position ``pos``."""

    pos: str
    ids: list[str] = field(default_factory=list)
    vectors: list[bytes] = field(default_factory=list)
    metadatas: list[bytes | None] = field(default_factory=list)


def _s(x: bytes | str | None) -> str | None:
    return x.decode() if isinstance(x, bytes) else x


def _limited_writers(grants: dict[bytes, bytes]) -> bool:
    for g in grants.values():
        try:
            rec = json.loads(g)
            if rec.get("role") in ("writer", "admin") and rec.get("partitions") is not None:
                return True
        except (ValueError, AttributeError):
            return True  # a grant that cannot be read might be a limited writer's: assume one
    return False


class Store:
    """Redis operations of one hub. ``client`` is a binary-safe redis-py client (standalone or cluster)."""

    def __init__(self, client: redis.Redis | redis.cluster.RedisCluster, keys: Keys) -> None:
        # Any: redis-py's stubs type every reply as bytes | str, but these clients never decode (bytes only)
        self.r: Any = client
        self.keys = keys
        self.is_cluster = isinstance(client, redis.cluster.RedisCluster)

    def run(self, plan: Plan[T]) -> T:
        """Execute ``plan`` with this store's (sync) client."""
        return run(plan, self.r)

    def close(self) -> None:
        """Close the client's connections."""
        self.r.close()

    def pubsub(self) -> Any:
        """A pub/sub connection (for snapshot notifications) that skips subscribe confirmations."""
        return self.r.pubsub(ignore_subscribe_messages=True)

    @planned
    def dispatcher_seen(self) -> Plan[bool]:
        """True while a dispatcher holds its lock (it renews it every tick)."""
        with translate_errors("build"):
            return bool((yield Call("exists", self.keys.dispatcher_lock())))

    # functions library ------------------------------------------------------------------------------------
    def ensure_functions(self) -> None:
        """Load the Functions library when it is missing or older (needs the FUNCTION permission; a restricted
        principal relies on the operator having loaded it)."""
        with translate_errors("load functions"):
            try:
                loaded = self.r.fcall_ro("emb_libversion", 0)
                if _s(loaded) == LIB_VERSION:
                    return
            except rexc.NoPermissionError:
                return
            except rexc.ResponseError:
                pass  # not loaded yet
            try:
                self.r.function_load(LIB_CODE, replace=True)
            except rexc.NoPermissionError:
                return

    def fcall(self, name: str, keys: Sequence[str], args: Sequence[Any], operation: str, *, ro: bool = False) -> Any:
        return run(self.fcall_plan(name, keys, args, operation, ro=ro), self.r)

    @staticmethod
    def fcall_plan(name: str, keys: Sequence[str], args: Sequence[Any], operation: str, *,
                   ro: bool = False) -> Plan[Any]:
        with translate_errors(operation, write=not ro):
            return (yield Call("fcall_ro" if ro else "fcall", name, len(keys), *keys, *args))

    # partition data (each a plan, so the asyncio client runs the same code) ------------------------------
    @planned
    def write_upserts(self, pk: PartitionKeys, ids: list[str], blobs: list[bytes],
                      metas: list[str | None]) -> Plan[str]:
        """Write one partition's batch atomically (chunks in one MULTI/EXEC); returns the log position."""
        calls = []
        start = 0
        while start < len(ids):
            end, size = start, 0
            while end < len(ids) and end - start < WRITE_CHUNK_ITEMS and size < WRITE_CHUNK_BYTES:
                size += len(blobs[end]) + len(ids[end]) + len(metas[end] or "")
                end += 1
            args: list[Any] = [end - start]
            for i in range(start, end):
                args += [ids[i], blobs[i], metas[i] or ""]
            calls.append(Call("fcall", "emb_upsert", len(pk.writes), *pk.writes, *args))
            start = end
        with translate_errors("upsert", write=True):
            if len(calls) == 1:
                return _s((yield calls[0]))  # type: ignore[return-value]
            results = yield Batch(calls, transaction=True, raise_on_error=False)
            errors = [r for r in results if isinstance(r, Exception)]
            if errors:
                raise errors[0]
        return _s(results[-1])  # type: ignore[return-value]

    @planned
    def write_deletes(self, pk: PartitionKeys, ids: list[str]) -> Plan[tuple[list[str], str | None]]:
        """Delete ids from one partition atomically (chunks in one MULTI/EXEC); returns (ids that existed, log
        position or None)."""
        calls = [Call("fcall", "emb_delete", len(pk.writes), *pk.writes, *ids[i : i + WRITE_CHUNK_ITEMS])
                 for i in range(0, len(ids), WRITE_CHUNK_ITEMS)]
        with translate_errors("delete"):
            if len(calls) == 1:
                results = [(yield calls[0])]
            else:
                results = yield Batch(calls, transaction=True, raise_on_error=False)
                errors = [r for r in results if isinstance(r, Exception)]
                if errors:
                    raise errors[0]
        gone = [i for r in results for i in json.loads(r[0])]
        positions = [_s(r[1]) for r in results if r[1]]
        return gone, positions[-1] if positions else None

    @planned
    def owners_check(self, space: str, version: str, partition: str,
                     ids: list[str]) -> Plan[dict[str, list[str]] | None]:
        """The ids the version's owners map says another partition holds, by that partition, read in one round
        trip with what makes the answer trustworthy: the map's completeness and the space's grants. None when the
        map cannot answer: it is not complete (a version from before owners maps, or one whose map a revoked
        partition-limited writer left incomplete), or the space has writers limited to some partitions (they may
        not write the map, so their ids are not in it). Writes nothing: a write refused afterwards must leave the
        database as it was."""
        owners = self.keys.owners(space, version)
        calls = [Call("hexists", owners, ""), Call("hgetall", self.keys.grants(space))]
        calls += [Call("hmget", owners, *ids[i : i + READ_CHUNK_ITEMS]) for i in range(0, len(ids), READ_CHUNK_ITEMS)]
        with translate_errors("upsert"):
            complete, grants, *claims = yield Batch(calls)
        if not complete or _limited_writers(grants):
            return None
        elsewhere: dict[str, list[str]] = {}
        for i, o in zip(ids, (o for chunk in claims for o in chunk)):
            owner = _s(o)
            # a full writer may HSET the map by hand: a claim that names no partition is stale by definition
            if owner is not None and owner != partition and _NAME.fullmatch(owner):
                elsewhere.setdefault(owner, []).append(i)
        return elsewhere

    @planned
    def claim(self, space: str, version: str, partition: str, ids: list[str]) -> Plan[None]:
        """Record in the version's owners map that ``partition`` holds ``ids`` (after they were written)."""
        owners = self.keys.owners(space, version)
        calls = [Call("hset", owners, mapping={i: partition for i in ids[j : j + WRITE_CHUNK_ITEMS]})
                 for j in range(0, len(ids), WRITE_CHUNK_ITEMS)]
        with translate_errors("upsert", write=True):
            yield Batch(calls)

    @planned
    def unclaim(self, space: str, version: str, partition: str, ids: list[str]) -> Plan[None]:
        """Drop the claims of ``partition`` on ``ids`` (deleted from it) from the version's owners map."""
        owners = self.keys.owners(space, version)
        calls = [Call("fcall", "emb_unclaim", 1, owners, partition, *ids[i : i + WRITE_CHUNK_ITEMS])
                 for i in range(0, len(ids), WRITE_CHUNK_ITEMS)]
        with translate_errors("delete", write=True):
            yield Batch(calls)

    @planned
    def existing(self, asks: list[tuple[PartitionKeys, list[str]]]) -> Plan[list[list[bool]]]:
        """For each (partition, ids): which of the ids exist there; all in one round trip."""
        with translate_errors("lookup"):
            res = yield Batch([Call("hexists", pk.vec, i) for pk, ids in asks for i in ids])
        out, at = [], 0
        for _, ids in asks:
            out.append([bool(x) for x in res[at : at + len(ids)]])
            at += len(ids)
        return out

    @planned
    def read_items(self, pk: PartitionKeys, ids: list[str]) -> Plan[tuple[list[bytes | None], list[bytes | None]]]:
        """Vectors and metadata of ``ids`` (None where missing); each chunk of ids is read atomically."""
        if len(ids) <= READ_CHUNK_ITEMS:
            res = yield from self.fcall_plan("emb_get", [pk.vec, pk.meta], ids, "get", ro=True)
            return list(res[0]), list(res[1])
        with translate_errors("get"):
            results = yield Batch([Call("fcall_ro", "emb_get", 2, pk.vec, pk.meta, *ids[i : i + READ_CHUNK_ITEMS])
                                   for i in range(0, len(ids), READ_CHUNK_ITEMS)])
        return [v for r in results for v in r[0]], [m for r in results for m in r[1]]

    @staticmethod
    def id_page(pk: PartitionKeys, cursor: int, batch: int = SCAN_COUNT) -> Plan[tuple[int, list[str]]]:
        """One HSCAN page of the partition's ids: ``(next cursor, ids)``; the cursor is 0 when the scan is done."""
        with translate_errors("scan"):
            cursor, page = yield Call("hscan", pk.vec, cursor, count=batch)
        return int(cursor), [k.decode() for k in page]

    @planned
    def count(self, pk: PartitionKeys) -> Plan[int]:
        with translate_errors("count"):
            return int((yield Call("hlen", pk.vec)))

    @planned
    def counts(self, pks: Sequence[PartitionKeys]) -> Plan[list[int]]:
        """Item counts of several partitions, in one round trip on a standalone server."""
        with translate_errors("count"):
            return [int(c) for c in (yield Batch([Call("hlen", pk.vec) for pk in pks]))]

    @planned
    def strong_positions(self, pks: Sequence[PartitionKeys],
                         parts_key: str | None) -> Plan[tuple[list[str], list[str] | None]]:
        """What a strong read needs, in one round trip: every partition's log position, and (``parts_key``
        given) the version's partition list, sorted, so a partition another hub created before the read began
        is not missed."""
        calls = [Call("hget", pk.state, "pos") for pk in pks]
        if parts_key is not None:
            calls.append(Call("smembers", parts_key))
        with translate_errors("strong read"):
            replies = yield Batch(calls)
        positions = [_s(x) or "0-0" for x in replies[: len(pks)]]
        return positions, None if parts_key is None else sorted(m.decode() for m in replies[-1])

    @planned
    def position(self, pk: PartitionKeys) -> Plan[str]:
        """The partition's latest change-log position ('0-0' when it was never written). A position in the state
        that embcache did not write (writers can write that hash) is ignored for the log's own last entry."""
        with translate_errors("position"):
            raw = yield Call("hget", pk.state, "pos")
            pos = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            if pos is None or _POS_RE.fullmatch(pos):
                return pos or "0-0"
            last = yield Call("xrevrange", pk.log, "+", "-", count=1)
            return (_s(last[0][0]) or "0-0") if last else "0-0"

    def wait_logs(self, streams: dict[str, str], block_ms: int) -> list[str]:
        """The change logs (keys of ``streams``, log key -> position) that hold an entry after their position,
        waiting up to ``block_ms`` for one (one ``XREAD BLOCK`` for them all: their keys must share a node and,
        on Cluster, a slot). Entries themselves are not returned: the caller reads the net effect with
        :meth:`read_tails`. :class:`PermissionDenied` for a principal that may not ``XREAD``."""
        if not streams:
            return []
        with translate_errors("follow"):
            reply = self.r.xread(streams, count=1, block=max(1, int(block_ms)))
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            return [_s(k) or "" for k in reply]
        return [_s(item[0]) or "" for item in reply if isinstance(item, (list, tuple)) and item]

    def wait_and_read_tails(self, streams: dict[str, str], block_ms: int,
                            requests: Sequence[tuple[PartitionKeys, str]]) -> tuple[list[str], list[Tail | None]]:
        """:meth:`wait_logs` and :meth:`read_tails` in one pipeline: Redis runs the tail reads right after the
        ``XREAD`` returns (a connection's commands run in order), so a change costs one round trip, not two."""
        calls = [Call("xread", streams, count=1, block=max(1, int(block_ms)))]
        calls += [Call("fcall_ro", "emb_tail", 4, pk.vec, pk.meta, pk.log, pk.state, since, TAIL_LIMIT)
                  for pk, since in requests]
        with translate_errors("follow"):
            replies = run(self._batch(calls), self.r)
        reply = replies[0]
        if not reply:
            moved: list[str] = []
        elif isinstance(reply, dict):  # RESP3
            moved = [_s(k) or "" for k in reply]
        else:
            moved = [_s(item[0]) or "" for item in reply if isinstance(item, (list, tuple)) and item]
        return moved, [self._parse_tail(r, pk) for r, (pk, _) in zip(replies[1:], requests)]

    @staticmethod
    def _batch(calls: list[Call]) -> Plan[Any]:
        return (yield Batch(calls))

    @planned
    def sealed(self, pk: PartitionKeys) -> Plan[bool]:
        """True when the partition's version is sealed (its flag exists)."""
        with translate_errors("sealed"):
            return bool((yield Call("exists", pk.sealed)))

    def positions(self, pks: Sequence[PartitionKeys]) -> list[str]:
        """Several partitions' log positions in one pipeline (the follower's poll where it cannot block)."""
        if not pks:
            return []
        return self.strong_positions(pks, None)[0]

    @planned
    def unindexed(self, pk: PartitionKeys, since: str, cap: int) -> Plan[int]:
        """Log entries after position ``since`` (what a snapshot at ``since`` does not cover): counted up to
        ``cap``, past it the log's length (an upper bound), so the cost stays bounded."""
        with translate_errors("index lag"):
            n = len((yield Call("xrange", pk.log, min=f"({since}" if since != "0-0" else "-", max="+", count=cap)))
            if n >= cap:
                n = max(n, int((yield Call("xlen", pk.log))))
        return n

    @planned
    def read_tail(self, pk: PartitionKeys, since: str, limit: int = TAIL_LIMIT) -> Plan[Tail | None]:
        """Net changes after ``since``; None when the log cannot answer (trimmed, or more than ``limit``
        entries, or more than one call may return): reload in full.

        A ``limit`` above :data:`TAIL_LIMIT` means "all of it": the tail is then read in pages, each one bounded
        call of ``emb_tail``, and merged (a later page's values are the newer ones)."""
        if limit <= TAIL_LIMIT:
            res = yield from self.fcall_plan("emb_tail", [pk.vec, pk.meta, pk.log, pk.state], [since, limit], "tail",
                                             ro=True)
            return self._parse_tail(res, pk)
        merged: dict[str, tuple[bytes | None, bytes | None]] = {}
        pos = since
        for _ in range(TAIL_PAGES):
            res = yield from self.fcall_plan("emb_tail", [pk.vec, pk.meta, pk.log, pk.state],
                                             [pos, TAIL_LIMIT, "PAGE"], "tail", ro=True)
            page = self._parse_tail(res, pk)
            if page is None:
                return None
            for id_, v, m in zip(page.ids, page.vectors, page.metadatas):
                merged.pop(id_, None)  # keep the order of the latest change
                merged[id_] = (v, m)
            pos = page.pos
            if not (len(res) > 5 and res[5]):
                break
        else:  # a log growing faster than it can be read: what was read is consistent up to ``pos``
            log.warning("%s: the change log kept growing while it was read; stopped at %s", pk.tag, pos)
        return Tail(pos=pos, ids=list(merged), vectors=[v for v, _ in merged.values()],
                    metadatas=[m for _, m in merged.values()])

    @staticmethod
    def _parse_tail(res: Any, pk: PartitionKeys | None = None) -> Tail | None:
        if len(res) == 1:
            return None
        if len(res) > 4 and res[4] and pk is not None:  # entries a raw XADD appended that no function wrote
            log.warning("%s: %d malformed change-log entries skipped", pk.tag, res[4])
        return Tail(pos=_s(res[0]) or "0-0", ids=[x.decode() for x in res[1]], vectors=list(res[2]),
                    metadatas=list(res[3]))

    @planned
    def read_tails(self, requests: Sequence[tuple[PartitionKeys, str]],
                   limit: int = TAIL_LIMIT) -> Plan[list[Tail | None]]:
        """Several partitions' tails in one pipeline (one round trip on a standalone server)."""
        if len(requests) == 1:  # a plain call costs less than a pipeline of one
            return [(yield from self.read_tail.plan(*requests[0], limit=limit))]
        with translate_errors("tail"):
            results = yield Batch([Call("fcall_ro", "emb_tail", 4, pk.vec, pk.meta, pk.log, pk.state, since, limit)
                                   for pk, since in requests])
        return [self._parse_tail(r, pk) for r, (pk, _) in zip(results, requests)]

    @planned
    def read_partition(self, pk: PartitionKeys) -> Plan[PartitionData]:
        """A consistent full copy without blocking Redis: note the log position, scan the hashes in pieces,
        then replay the log tail from the noted position (anything that moved during the scan is in it)."""
        since = yield from self.position.plan(pk)
        vectors = yield from self.hscan_all(pk.vec)
        metas = yield from self.hscan_all(pk.meta)
        tail = yield from self.read_tail.plan(pk, since, limit=1 << 30)
        assert tail is not None  # the log is trimmed only behind published snapshots' positions
        for i, id_ in enumerate(tail.ids):
            if tail.vectors[i] is None:
                vectors.pop(id_, None)
                metas.pop(id_, None)
            else:
                vectors[id_] = tail.vectors[i]  # type: ignore[assignment]
                if tail.metadatas[i] is None:
                    metas.pop(id_, None)
                else:
                    metas[id_] = tail.metadatas[i]  # type: ignore[assignment]
        ids = list(vectors)
        return PartitionData(pos=tail.pos, ids=ids, vectors=[vectors[i] for i in ids],
                             metadatas=[metas.get(i) for i in ids])

    @planned
    def mark_dirty(self, space: str, version: str, partition: str, urgent: bool = False) -> Plan[None]:
        """Tell the dispatcher the partition has changes to index (the first mark's time is kept). ``urgent``
        (an explicit build request) sets the mark's score to 0, which the dispatcher serves without letting the
        partition's writes settle first."""
        with translate_errors("mark dirty", write=True):
            member = self.keys.dirty_member(version, partition)
            if urgent:
                yield Call("zadd", self.keys.dirty(space), {member: 0}, lt=True)
            else:
                yield Call("zadd", self.keys.dirty(space), {member: time.time()}, nx=True)

    @staticmethod
    def hscan_all(key: str) -> Plan[dict[str, bytes]]:
        """A whole hash, read in pieces of ``SCAN_COUNT`` (HSCAN: Redis is never blocked by one big reply)."""
        out: dict[str, bytes] = {}
        cursor = 0
        with translate_errors("scan"):
            while True:
                cursor, page = yield Call("hscan", key, cursor, count=SCAN_COUNT)
                for k, v in page.items():
                    out[k.decode()] = v
                if not int(cursor):
                    return out

    @planned
    def flag_sealed(self, pk: PartitionKeys) -> Plan[None]:
        """Seal the partition: its flag's existence makes every write function refuse (SETNX: a sealed flag is
        never overwritten, and no principal may delete it)."""
        with translate_errors("seal", write=True):
            yield Call("setnx", pk.sealed, "1")

    @planned
    def delete_partition(self, pk: PartitionKeys) -> Plan[None]:
        """Delete a partition's data, log, state and published snapshot. The chunks are found through a manifest
        that verifies (a principal may have written a hostile one); any others expire on their own."""
        with translate_errors("delete partition", write=True):
            raw, raw_chain = yield Batch([Call("get", pk.snap), Call("get", pk.delta)])
            keys = [pk.vec, pk.meta, pk.log, pk.state, pk.snap, pk.sealed, pk.lease, pk.delta]
            if raw is not None:
                try:
                    manifest = Manifest.from_json(raw)
                    keys += [pk.chunk(manifest.sid, i) for i in range(manifest.chunks)]
                except SnapshotCorrupt:
                    pass
            if raw_chain is not None:
                try:
                    chain = Chain.from_json(raw_chain, None)
                    keys += [pk.chunk(s.sid, i) for s in chain.segments for i in range(s.chunks)]
                except SnapshotCorrupt:
                    pass
            yield Call("delete", *keys)

    def report_corrupt(self, pk: PartitionKeys, reason: str) -> None:
        """Record a refused snapshot in the partition's state (shown by stats) and ask for a rebuild.
        Best effort: a read-only principal cannot write, and the dispatcher's reconciliation also finds it."""
        space, version, partition = pk.names()
        try:
            self.r.hset(pk.state, "corrupt", reason[:200])
            self.mark_dirty(space, version, partition)
        except (rexc.RedisError, EmbcacheError):
            pass
