"""Issue 11's attacks, one regression test each, in tests/test_acl.py's style: the attack with a principal's own
credentials (through embcache and through raw redis-py), then the proof that it was refused or bounded and that
the database is unchanged (``DUMP`` of every key, byte for byte, where practical).

Every attempt goes through :class:`tests.test_acl.Attacker`, which tallies attempts and successes per principal
and channel; :func:`test_zz_attack_tally` prints the table of the whole session (run after the other tests).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import pytest
import redis
from redis.exceptions import AuthenticationError, ResponseError

import embcache
from embcache.core.errors import CorruptRecord, InvalidInput, PermissionDenied, VersionSealed
from embcache.core.filters import MAX_DEPTH, MAX_IN_VALUES
from embcache.redis.catalogue import MAX_DESCRIPTION_BYTES
from embcache.redis.store import TAIL_LIMIT, Store
from tests.integration.test_acl import (  # noqa: F401 - fixtures
    DIM,
    K,
    PRINCIPAL,
    TALLY,
    Attacker,
    World,
    assert_same,
    connect,
    snapshot_server,
    vec,
    world,
)
from tests.workers_fixtures import wait_for

EVIL = np.full((1, DIM), 9.0, dtype=np.float32)


def raw(w: World, role: str) -> redis.Redis:
    return w.raw_as(role)


def keys_of(r: redis.Redis, space: str) -> list[bytes]:
    return sorted(k for p in K.space_scan_patterns(space) for k in r.scan_iter(match=p, count=1000))


def others(state: dict[str, Any], space: str) -> dict[Any, Any]:
    """The snapshot of every key that is not under ``space``'s tags."""
    tags = (f"emb:{{{space}}}:".encode(), f"emb:{{{space}/".encode())
    return {k: v for k, v in state["keys"].items() if not k[1].startswith(tags)}


def check(att: Attacker) -> None:
    assert not att.problems, f"{att.who}: {len(att.problems)} of {att.attempts} attempts not refused:\n" + \
        "\n".join(att.problems)


# --------------------------------------------------------------------------------------------------------------
# 11.1 drop_space revokes grants and removes every key under the space's tags
# --------------------------------------------------------------------------------------------------------------
def test_drop_space_revokes_grants_and_removes_planted_keys(world: World, connect) -> None:  # noqa: ANN001, F811
    w = world
    both = w.op.grant("both", space="alpha", role="reader")
    w.op.grant("both", space="bravo", role="reader")
    # what a writer and an admin of alpha plant outside the catalogue: a version and a partition nobody lists
    with raw(w, "writer") as r:
        r.hset(K.partition("alpha", "v9", "ghost").vec, "evil", EVIL.tobytes())
        r.xadd(K.partition("alpha", "v1", "junk").log, {"op": "u", "ids": '["evil"]'})
        r.sadd(K.parts("alpha", "v7"), "ghost")
    with raw(w, "admin") as r:
        r.setnx(K.vstate("alpha", "v8"), "open")
        r.lpush(K.alias_history("alpha", "old"), "v9")
    old_reader = raw(w, "reader")
    assert old_reader.hget(K.partition("alpha", "v1", "p1").vec, "x1") is not None
    before = snapshot_server(w.url)
    w.op.drop_space("alpha")
    after = snapshot_server(w.url)
    assert keys_of(w.raw, "alpha") == [], "keys under alpha's tags survived the drop"
    hub_keys = {(0, K.principals().encode()), (0, K.spaces().encode())}  # the grants and the listing change
    kept, now = others(before, "alpha"), others(after, "alpha")
    assert kept and set(kept) - hub_keys == set(now) - hub_keys
    changed = [k for k, v in kept.items() if k not in hub_keys and now.get(k) != v]
    assert changed == [], f"drop_space changed keys of other spaces: {changed}"
    users = {u.decode() if isinstance(u, bytes) else u for u in w.raw.acl_users()}
    assert not users & {"rd", "wr", "ad", "wp"}, users
    assert w.op.list_principals()["both"]["grants"] == {"bravo": {"role": "reader", "partitions": None}}
    # alpha is created again, by someone else: the old principals see none of it, and nothing planted is back
    a = w.op.create_space("alpha", dim=DIM, metric="l2")
    a.create_version().upsert(["new"], vec(1), partition="p1")
    att = Attacker("reader")
    att.run("old open connection reads the new alpha", lambda: old_reader.hget(K.partition("alpha", "v1", "p1").vec,
                                                                                 "new"), AuthenticationError)
    for role in ("reader", "writer", "admin", "writer_p1"):
        att.run(f"AUTH as the old {role}", lambda role=role: raw(w, role).ping(), AuthenticationError)
        att.run(f"embcache connect as the old {role}",
                lambda role=role: embcache.connect(w.url, username=PRINCIPAL[role], password=w.password(role)),
                PermissionDenied)
    with redis.Redis.from_url(w.url, username="both", password=both.password) as r:
        att.raw(r, "HGET", K.partition("alpha", "v1", "p1").vec, "new")
        att.raw(r, "GET", K.space("alpha"))
        assert r.hget(K.partition("bravo", "v1", "default").vec, "q1") is not None  # bravo's grant stays
    check(att)
    v1 = w.op.space("alpha").version("v1")
    assert v1.partitions() == ["p1"] and v1.count() == 1 and [v.name for v in w.op.space("alpha").versions()] == ["v1"]
    planted = (b"ghost", b"junk", b"v7", b"v8", b"v9", b"alias:old")
    assert not [k for k in keys_of(w.raw, "alpha") if any(p in k for p in planted)]


# --------------------------------------------------------------------------------------------------------------
# 11.2 / 11.3 / 11.17 the space record: operator-only, validated where read
# --------------------------------------------------------------------------------------------------------------
def test_admin_cannot_write_the_space_record_or_unseal(world: World, connect) -> None:  # noqa: ANN001, F811
    w = world
    before = snapshot_server(w.url)
    rec = json.loads(w.raw.get(K.space("alpha")))
    hijack = json.dumps({**rec, "name": "bravo", "metric": "ip", "M": 2, "ef_construction": 1})
    s2 = K.partition("alpha", "v2", "p1")
    att = Attacker("admin")
    with raw(w, "admin") as r:
        for cmd in [("SET", K.space("alpha"), hijack), ("SET", K.space("alpha"), json.dumps({**rec, "M": 0})),
                    ("DEL", K.space("alpha")), ("UNLINK", K.space("alpha")), ("GETDEL", K.space("alpha")),
                    ("RENAME", K.space("alpha"), K.seq("alpha")), ("EXPIRE", K.space("alpha"), 1),
                    ("HSET", K.grants("alpha"), "ad", '{"role": "admin", "partitions": null}'), ("DEL", K.grants("alpha")),
                    # unsealing v2: its state string and its partition's flag
                    ("SET", K.vstate("alpha", "v2"), "open"), ("DEL", K.vstate("alpha", "v2")),
                    ("SET", s2.sealed, "0"), ("DEL", s2.sealed), ("UNLINK", s2.sealed), ("GETDEL", s2.sealed),
                    ("HDEL", K.versions("alpha"), "v2"), ("DEL", K.versions("alpha")),
                    ("HSET", s2.sealed, "x", "1"), ("SET", K.seq("alpha"), "0"), ("DEL", K.aliases("alpha")),
                    # wrong types where the dispatcher and the readers expect others (11.4's ACL half)
                    ("HSET", K.dirty("alpha"), "x", "y"), ("SADD", K.dirty("alpha"), "x"),
                    ("ZADD", K.parts("alpha", "v1"), 1, "x"), ("HSET", K.parts("alpha", "v9"), "x", "y"),
                    ("SADD", s2.log, "x"), ("XADD", K.versions("alpha"), "*", "a", "b")]:
            att.raw(r, *cmd)
        att.raw(r, "FCALL", "emb_upsert", 5, *s2.writes, 1, "evil", vec(0).tobytes(), "", expect="EMBSEALED")
        att.raw(r, "FCALL", "emb_register", 2, K.vstate("alpha", "v2"), K.parts("alpha", "v2"), "p9",
                expect="EMBSEALED")
        att.raw(r, "FCALL", "emb_create_version", 3, K.versions("alpha"), K.seq("alpha"), K.vstate("alpha", "v2"),
                "v2", '{"state": "open"}', "", expect="EMBEXISTS")
    assert_same(before, snapshot_server(w.url), "admin")
    # what an admin may still do to its own records changes nothing that matters: the state string says sealed
    with raw(w, "admin") as r:
        r.hset(K.versions("alpha"), "v2", json.dumps({"name": "v2", "state": "open"}))
        r.append(K.vstate("alpha", "v2"), "x")
        assert r.setnx(s2.sealed, "0") is False
        assert r.fcall("emb_sealed", 2, K.versions("alpha"), K.vstate("alpha", "v2"), "v2", "{}") == 0  # no-op
    h = connect(w.url, username="ad", password=w.password("admin"))
    v2 = h.space("alpha").version("v2")
    assert v2.state == "sealed"
    att.embcache("upsert into v2 after rewriting its record", lambda: v2.upsert(["n"], vec(0), partition="p1"),
                 expect=VersionSealed)
    att.embcache("delete from v2 after rewriting its record", lambda: v2.delete(["s1"]), expect=VersionSealed)
    att.embcache("drop_space", lambda: h.drop_space("alpha"), "alpha", "drop_space")
    check(att)
    assert w.raw.hget(s2.vec, "n") is None and w.raw.hget(s2.vec, "s1") is not None
    assert json.loads(w.raw.get(K.space("alpha"))) == rec


BAD_RECORDS = {
    "M=0 (hnswlib segfaults)": {"M": 0}, "M=1000": {"M": 1000}, "dim=0": {"dim": 0}, "dim=10**9": {"dim": 10**9},
    "ef_construction=0": {"ef_construction": 0}, "ef=-1": {"ef": -1}, "metric": {"metric": "hamming"},
    "dtype": {"dtype": "int8"}, "name of another space": {"name": "bravo"}, "M as text": {"M": "16"},
    "M as bool": {"M": True}, "bad name": {"name": "a b"},
}


def test_space_records_are_validated_where_read(redis_url: str, connect) -> None:  # noqa: ANN001, F811
    """A record no embcache could have written (the operator's mistake, an old release, a restored dump) is a
    typed CorruptRecord for every reader, never a crash or another space's parameters."""
    op = connect(redis_url)
    op.create_space("alpha", dim=DIM, metric="l2")
    good = json.loads(op.store.r.get(K.space("alpha")))
    for label, change in [*BAD_RECORDS.items(), ("not JSON", None), ("huge", "huge")]:
        if change is None:
            text = "{not json"
        elif change == "huge":
            text = json.dumps({**good, "pad": "x" * (5 << 20)})
        else:
            text = json.dumps({**good, **change})
        op.store.r.set(K.space("alpha"), text)
        fresh = connect(redis_url)
        with pytest.raises(CorruptRecord):
            fresh.space("alpha")
            pytest.fail(f"{label}: accepted")
    op.store.r.set(K.space("alpha"), json.dumps(good))
    assert connect(redis_url).space("alpha").M == 16


@pytest.mark.slow
def test_worker_refuses_a_hijacked_or_out_of_bounds_record(redis_url: str, workers, connect) -> None:  # noqa: ANN001, F811
    """11.2 and 11.3 with a real worker: alpha's record renamed to bravo (metric ip, M=2) and then M=0. The worker
    builds neither, is not crashed (it builds bravo afterwards), does not retry the refused job, and bravo's
    snapshot is byte-for-byte what it was."""
    op = connect(redis_url)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, DIM)).astype(np.float32)
    bravo = op.create_space("bravo", dim=DIM, metric="l2").create_version()
    bravo.upsert([f"b{i}" for i in range(50)], x)
    alpha = op.create_space("alpha", dim=DIM, metric="l2").create_version()
    alpha.upsert([f"a{i}" for i in range(50)], x)
    worker = workers.start(redis_url)
    bravo.build(timeout=60)
    alpha.build(timeout=60)
    bsnap = K.partition("bravo", "v1", "default").snap
    before = {k: op.store.r.dump(k) for k in op.store.r.scan_iter(match="emb:{bravo/*", count=1000)}
    answer = bravo.query(x[:5], 3, consistency="eventual")
    good = json.loads(op.store.r.get(K.space("alpha")))
    apk = K.partition("alpha", "v1", "default")
    for change in ({"name": "bravo", "metric": "ip", "M": 2, "ef_construction": 1}, {"M": 0}):
        op.store.r.set(K.space("alpha"), json.dumps({**good, **change}))
        alpha_state = op.store.r.hget(apk.state, "generation")
        op.store.r.hset(apk.state, "corrupt", "forced rebuild")  # a full rebuild: the worker must read the record
        op.store.mark_dirty("alpha", "v1", "default")
        wait_for(lambda: "refused" in worker.log(), 30, what="the worker's refusal")
        assert worker.alive(), worker.log()[-2000:]
        assert op.store.r.hget(apk.state, "generation") == alpha_state
    assert {k: op.store.r.dump(k) for k in op.store.r.scan_iter(match="emb:{bravo/*", count=1000)} == before
    assert op.store.r.get(bsnap) is not None
    fresh = connect(redis_url)
    again = fresh.space("bravo").version("v1").query(x[:5], 3, consistency="eventual")
    assert again.ids == answer.ids and np.array_equal(again.distances, answer.distances)
    # not retried: RQ's failed registry is empty and no job of alpha waits for a retry
    from rq import Queue

    q = Queue("embcache", connection=redis.Redis.from_url(redis_url))
    assert q.failed_job_registry.count == 0 and q.scheduled_job_registry.count == 0
    # the worker still builds: bravo gets a new item and a new generation
    bravo.upsert(["b-new"], rng.standard_normal((1, DIM)).astype(np.float32))
    bravo.build(timeout=60)
    assert worker.alive()
    op.store.r.set(K.space("alpha"), json.dumps(good))
