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
from redis.exceptions import AuthenticationError

import embcache
from embcache.core.errors import CorruptRecord, InvalidInput, PermissionDenied, VersionSealed
from embcache.core.filters import MAX_DEPTH, MAX_IN_VALUES
from embcache.redis.catalogue import MAX_DESCRIPTION_BYTES
from embcache.redis.plan import planned
from embcache.redis.store import TAIL_LIMIT, Store
from tests.integration.test_acl import (  # noqa: F401 - fixtures
    DIM,
    PRINCIPAL,
    TALLY,
    Attacker,
    K,
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
                    ("HSET", K.grants("alpha"), "ad", '{"role": "admin", "partitions": null}'),
                    ("DEL", K.grants("alpha")),
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


@pytest.mark.parametrize("role", ["writer", "writer_p1"])
def test_writers_cannot_create_keys_of_the_wrong_type(world: World, role: str) -> None:
    """11.4's ACL half: ``HSET emb:{alpha}:dirty x y`` made every dispatcher tick raise WRONGTYPE. Each write
    command now reaches only the key kind it is for, so none of these can create (or change the type of) a key
    that embcache reads: the dirty set, the partition lists, the logs, the item hashes, the state hashes."""
    w = world
    w.raw.delete(K.dirty("alpha"))  # absent, as after the dispatcher took every mark
    fresh = K.partition("alpha", "v1", "p1n" if role == "writer" else "p1")
    p1 = K.partition("alpha", "v1", "p1")
    before = snapshot_server(w.url)
    att = Attacker(role)
    with raw(w, role) as r:
        for cmd in [("HSET", K.dirty("alpha"), "x", "y"), ("SADD", K.dirty("alpha"), "x"),
                    ("XADD", K.dirty("alpha"), "*", "a", "b"), ("HDEL", K.dirty("alpha"), "x"),
                    ("HSET", K.parts("alpha", "v9"), "x", "y"), ("ZADD", K.parts("alpha", "v9"), 1, "x"),
                    ("XADD", K.parts("alpha", "v9"), "*", "a", "b"),
                    ("HSET", p1.log, "x", "y"), ("SADD", p1.log, "x"), ("ZADD", p1.log, 1, "x"),
                    ("XADD", p1.vec, "*", "a", "b"), ("SADD", p1.meta, "x"), ("ZADD", p1.state, 1, "x"),
                    ("XADD", p1.state, "*", "a", "b"), ("HDEL", p1.state, "pos"), ("XADD", fresh.vec, "*", "a", "b"),
                    ("SADD", fresh.log, "x"), ("HSET", fresh.sealed, "x", "1"), ("XADD", fresh.sealed, "*", "a", "b"),
                    ("HSET", K.vstate("alpha", "v9"), "x", "y"), ("SADD", K.vstate("alpha", "v9"), "x"),
                    ("ZADD", K.seq("alpha"), 1, "x"), ("HSET", K.versions("alpha"), "v1", "{}"),
                    ("HSET", K.aliases("alpha"), "live", "v2"), ("SETNX", p1.sealed, "1"),
                    ("APPEND", K.vstate("alpha", "v1"), "x")]:
            att.raw(r, *cmd)
    check(att)
    assert_same(before, snapshot_server(w.url), role)


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


def _dump_lasting(r: redis.Redis, space: str, version: str) -> dict[bytes, bytes]:
    """Every key of ``space`` and its DUMP, without the version graph's lease and dirty flag of ``version``: the
    worker sets and deletes them after each build (even of a one-partition version), so they come and go on their
    own and a before/after comparison would otherwise fail by timing."""
    transient = (K.version_graph_lease(space, version).encode(), K.version_graph_dirty(space, version).encode())
    return {k: r.dump(k) for k in r.scan_iter(match=f"emb:{{{space}/*", count=1000) if k not in transient}


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
    before = _dump_lasting(op.store.r, "bravo", "v1")
    answer = bravo.query(x[:5], 3, consistency="eventual")
    good = json.loads(op.store.r.get(K.space("alpha")))
    apk = K.partition("alpha", "v1", "default")
    for n, change in enumerate(({"name": "bravo", "metric": "ip", "M": 2, "ef_construction": 1}, {"M": 0}), 1):
        op.store.r.set(K.space("alpha"), json.dumps({**good, **change}))
        alpha_state = op.store.r.hget(apk.state, "generation")
        op.store.r.hset(apk.state, "corrupt", "forced rebuild")  # a full rebuild: the worker must read the record
        op.store.mark_dirty("alpha", "v1", "default")
        wait_for(lambda n=n: worker.log().count("refused: space alpha") >= n, 30, what="the worker's refusal")
        assert worker.alive(), worker.log()[-2000:]
        assert op.store.r.hget(apk.state, "generation") == alpha_state
    assert _dump_lasting(op.store.r, "bravo", "v1") == before
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


# --------------------------------------------------------------------------------------------------------------
# 11.5 / 11.15 / 15.4: every function checks its arguments and bounds its work
# --------------------------------------------------------------------------------------------------------------
def test_functions_refuse_malformed_and_oversized_calls(world: World) -> None:
    """Raw FCALLs a writer (or a reader, for the read-only ones) can send, each refused with EMBARGS before any
    work: n far past the arguments given, wrong key counts, ids and metadata over the client's limits, a tail
    limit of 10^9, a description with a bad unicode escape (which used to advance the version counter)."""
    w = world
    p1 = K.partition("alpha", "v1", "p1")
    v = vec(1).tobytes()
    before = snapshot_server(w.url)
    att = Attacker("writer")
    with raw(w, "writer") as r:
        for args in [(3_000_000, "a", v, ""), (0,), (-1, "a", v, ""), ("1e9", "a", v, ""), ("x",), (2, "a", v, ""),
                     (1, "a" * 513, v, ""), (1, "x" * 100_000, v, ""), (1, "", v, ""), (1, b"\xff\xfe", v, ""),
                     (1, "a\x00b", v, ""), (1, "line\n", v, ""), (1, "c1\u0085", v, ""), (1, b"\xed\xa0\x80", v, ""),
                     (1, "a", v, "{" + "x" * 65_536), (1, "a", v, "{" + " " * (5 << 20) + "}"), (1, "a", v, "[1]"),
                     (1, "a", b"", ""), (1, "a", b"x" * 262_146, ""), (1, "a", b"abc", ""),
                     (2, "a", v, "", "b", v + v, ""), (1001, *[x for i in range(1001) for x in (f"i{i}", v, "")])]:
            att.raw(r, "FCALL", "emb_upsert", 5, *p1.writes, *args, expect="EMBARGS")
        att.raw(r, "FCALL", "emb_upsert", 4, *p1.writes[:4], 1, "a", v, "", expect="EMBARGS")
        att.raw(r, "FCALL", "emb_upsert", 5, *p1.writes, expect="EMBARGS")
        att.raw(r, "FCALL", "emb_delete", 5, *p1.writes, expect="EMBARGS")
        att.raw(r, "FCALL", "emb_delete", 5, *p1.writes, *[f"x{i}" for i in range(1001)], expect="EMBARGS")
        att.raw(r, "FCALL", "emb_delete", 5, *p1.writes, "x1", "y" * 513, expect="EMBARGS")
        att.raw(r, "FCALL", "emb_delete", 3, *p1.writes[:3], "x1", expect="EMBARGS")
        att.raw(r, "FCALL", "emb_register", 2, K.vstate("alpha", "v1"), K.parts("alpha", "v1"), "!bad name",
                expect="EMBARGS")
        att.raw(r, "FCALL", "emb_register", 2, K.vstate("alpha", "v1"), K.parts("alpha", "v1"), "a" * 65,
                expect="EMBARGS")
        att.raw(r, "FCALL", "emb_register", 2, K.vstate("alpha", "v1"), K.parts("alpha", "v1"), "p1", "p2",
                expect="EMBARGS")
    with raw(w, "reader") as r:
        rd = Attacker("reader")
        for args in [("0-0", 1_000_000_000), ("0-0", 0), ("0-0", "ten"), ("garbage", 10), ("0-0", 10, "MORE"),
                     ("0-0",), ("1-1-1", 10)]:
            rd.raw(r, "FCALL_RO", "emb_tail", 4, p1.vec, p1.meta, p1.log, p1.state, *args, expect="EMBARGS")
        rd.raw(r, "FCALL_RO", "emb_tail", 3, p1.vec, p1.meta, p1.log, "0-0", 10, expect="EMBARGS")
        rd.raw(r, "FCALL_RO", "emb_get", 2, p1.vec, p1.meta, *[f"x{i}" for i in range(4001)], expect="EMBARGS")
        rd.raw(r, "FCALL_RO", "emb_get", 2, p1.vec, p1.meta, expect="EMBARGS")
        rd.raw(r, "FCALL_RO", "emb_get", 1, p1.vec, "x1", expect="EMBARGS")
    with raw(w, "admin") as r:
        ad = Attacker("admin")
        vk = [K.versions("alpha"), K.seq("alpha"), K.vstate("alpha", "v3")]
        for rec in ['{"description": "\\udc80"}', '{"description": "' + "x" * (MAX_DESCRIPTION_BYTES + 1) + '"}',
                    "not json", "[1, 2]", '{"state": "sealed"}', '{"created": "yesterday"}', '{"evil": 1}']:
            ad.raw(r, "FCALL", "emb_create_version", 3, *vk, "v3", rec, "2", expect="EMBARGS")
        ad.raw(r, "FCALL", "emb_create_version", 3, *vk, "bad name", "{}", "", expect="EMBARGS")
        ad.raw(r, "FCALL", "emb_create_version", 3, *vk, "v3", "{}", "two", expect="EMBARGS")
        ad.raw(r, "FCALL", "emb_create_version", 4, K.space("alpha"), *vk, "v3", "{}", "", expect="NOPERM")
        # the owners map: only a deleted id's claim is dropped by a function (one map as its key, 1..1000 ids)
        own = K.owners("alpha", "v1")
        for keys, args in [([own], ("p1",)), ([own], ("p1", *[f"x{i}" for i in range(1001)])),
                           ([own], ("!bad", "x")), ([own], ("p1", "y" * 513)), ([], ("p1", "x")),
                           ([own, own], ("p1", "x")), ([K.vstate("alpha", "v1")], ("p1", "x"))]:
            ad.raw(r, "FCALL", "emb_unclaim", len(keys), *keys, *args, expect="EMBARGS")
        ad.raw(r, "FCALL", "emb_seal", 3, K.versions("alpha"), K.parts("alpha", "v1"), K.vstate("alpha", "v1"),
               expect="EMBARGS")
        ad.raw(r, "FCALL", "emb_set_alias", 3, K.versions("alpha"), K.aliases("alpha"),
               K.alias_history("alpha", "live"), "live", "v1", "v2", expect="EMBARGS")
        ad.raw(r, "FCALL", "emb_rollback", 2, K.aliases("alpha"), K.alias_history("alpha", "live"), "live",
               expect="EMBARGS")
    for a in (att, rd, ad):
        check(a)
    assert_same(before, snapshot_server(w.url), "malformed function calls")
    assert w.raw.get(K.seq("alpha")) == b"2"  # 15.4: refused calls never advance the counter
    # through embcache: the same limits, as InvalidInput, nothing written
    h = w.op.space("alpha")
    with pytest.raises(InvalidInput):
        h.create_version(description="x" * (MAX_DESCRIPTION_BYTES + 1))
    with pytest.raises(InvalidInput):
        h.create_version(description="\udc80")
    with pytest.raises(InvalidInput):
        h.version("v1").upsert(["a" * 513], vec(1), partition="p1")
    with pytest.raises(InvalidInput):
        h.version("v1").upsert(["a"], vec(1), [{"x": "y" * 65_536}], partition="p1")
    assert_same(before, snapshot_server(w.url), "refused API calls")
    assert h.create_version(description="é" * (MAX_DESCRIPTION_BYTES // 2)).description == "é" * 512


def test_crafted_log_entries_are_skipped_and_tails_are_bounded(world: World, connect) -> None:  # noqa: ANN001, F811
    """A writer's raw XADD of one entry with 300,000 ids, and of a 10 MB entry, used to block the server for
    seconds on every strong query: emb_tail skips entries no function could have written (and says how many),
    and one call never returns more than its id and byte budget (the client pages through longer tails)."""
    w = world
    p1 = K.partition("alpha", "v1", "p1")
    reader = connect(w.url, username="rd", password=w.password("reader"))
    rv = reader.space("alpha").version("v1")
    expected = rv.query(vec(0), 3, consistency="strong").ids
    with raw(w, "writer") as r:
        r.xadd(p1.log, {"op": "u", "ids": json.dumps([f"z{i}" for i in range(300_000)])})
        r.xadd(p1.log, {"op": "u", "ids": "[" + '"' + "y" * (10 << 20) + '"]'})
        r.xadd(p1.log, {"op": "u", "ids": "not json"})
        r.xadd(p1.log, {"op": "u", "nothing": "here"})
    with raw(w, "reader") as r:
        res = r.fcall_ro("emb_tail", 4, p1.vec, p1.meta, p1.log, p1.state, "0-0", 100)
    assert res[4] == 4 and sorted(res[1]) == [b"x1", b"x2"]
    assert rv.query(vec(0), 3, consistency="strong").ids == expected
    # a legitimate long tail: 12 upserts of 1,000 ids, past one call's 10,000-id budget
    x = np.random.default_rng(5).standard_normal((12_000, DIM)).astype(np.float32)
    v1 = w.op.space("alpha").version("v1")
    for c in range(12):
        v1.upsert([f"n{c}-{i}" for i in range(1000)], x[c * 1000:(c + 1) * 1000], partition="p1")
    with raw(w, "reader") as r:
        assert r.fcall_ro("emb_tail", 4, p1.vec, p1.meta, p1.log, p1.state, "0-0", TAIL_LIMIT) == [b"TOOLONG"]
        page = r.fcall_ro("emb_tail", 4, p1.vec, p1.meta, p1.log, p1.state, "0-0", TAIL_LIMIT, "PAGE")
        assert page[5] == 1 and 0 < len(page[1]) <= 10_000
    tail = Store(w.raw, K).read_tail(p1, "0-0", limit=1 << 30)
    assert tail is not None and len(tail.ids) == 12_002 and tail.pos == w.raw.hget(p1.state, "pos").decode()
    assert rv.count(partition="p1") == 12_002
    got = rv.query(x[7_777:7_778], 1, consistency="strong").ids
    assert got == [["n7-777"]]


# --------------------------------------------------------------------------------------------------------------
# 11.9 bad partition names; a seal cut short
# --------------------------------------------------------------------------------------------------------------
def test_the_owners_map_is_for_principals_granted_every_partition(world: World, connect) -> None:  # noqa: ANN001, F811
    """10.4: the owners map names every item of a version, so a principal limited to some partitions can neither
    read nor write it. While such a writer exists its ids are not in the map, so upserts ask every partition;
    revoking it marks the space's maps incomplete for good (they miss what it wrote)."""
    w = world
    own = K.owners("alpha", "v1")
    assert w.raw.hexists(own, "")
    with raw(w, "writer_p1") as r:
        att = Attacker("writer_p1")
        for cmd in [("HGETALL", own), ("HGET", own, "x1"), ("HMGET", own, "x1"), ("HSET", own, "x", "p1"),
                    ("HDEL", own, ""), ("FCALL", "emb_unclaim", 1, own, "p1", "x1")]:
            att.raw(r, *cmd)
    wp = connect(w.url, username=PRINCIPAL["writer_p1"], password=w.password("writer_p1"))
    wp.space("alpha").version("v1").upsert(["only-p1"], vec(2), partition="p1")
    assert w.raw.hget(own, "only-p1") is None  # it may not claim it
    full = connect(w.url, username=PRINCIPAL["writer"], password=w.password("writer")).space("alpha").version("v1")
    with pytest.raises(InvalidInput, match="'only-p1'.*partition 'p1'"):
        full.upsert(["only-p1"], vec(2), partition="p2")
    w.op.revoke(PRINCIPAL["writer_p1"], space="alpha")
    assert not w.raw.hexists(own, "")
    with pytest.raises(InvalidInput, match="'only-p1'.*partition 'p1'"):
        full.upsert(["only-p1"], vec(2), partition="p2")


def test_bad_partition_names_are_skipped_and_reported(world: World, connect, caplog) -> None:  # noqa: ANN001, F811
    w = world
    with raw(w, "writer_p1") as r:  # SADD on the partition lists is a writer's right (emb_register needs it)
        r.sadd(K.parts("alpha", "v1"), "!bad name", "a/b", "{x}", *[f"junk {i}" for i in range(200)])
    caplog.set_level(logging.WARNING, logger="embcache.redis.catalogue")
    for role in ("reader", "writer", "admin", "writer_p1", None):
        h = connect(w.url) if role is None else connect(w.url, username=PRINCIPAL[role], password=w.password(role))
        v = h.space("alpha").version("v1")
        only_p1 = role == "writer_p1"
        assert v.partitions() == ["p1", "p2"], role
        assert v.count() == (2 if only_p1 else 3), role
        for c in ("eventual", "session", "strong"):
            assert v.query(vec(0), 1, consistency=c).ids == [["x1"]], (role, c)
        if role not in ("reader", None):
            v.upsert(["ok"], vec(1), partition="p1")
            assert v.delete(["ok"]) == 1
    assert any("invalid partition name '!bad name'" in m for m in caplog.messages), caplog.messages
    # the seal skips them and seals the real partitions
    w.op.space("alpha").version("v1").seal()
    for p in ("p1", "p2"):
        assert w.raw.exists(K.partition("alpha", "v1", p).sealed)


def test_a_seal_cut_short_never_reports_sealed(world: World, connect, monkeypatch) -> None:  # noqa: ANN001, F811
    """The seal fails after flagging one of two partitions: the version is 'sealing' (not 'sealed') and takes
    no new partitions; sealing again completes it, after which the running writer's hub is refused everywhere."""
    w = world
    writer = connect(w.url, username="wr", password=w.password("writer"))
    wv = writer.space("alpha").version("v1")
    wv.upsert(["before"], vec(1), partition="p2")
    op_v = w.op.space("alpha").version("v1")
    real = vars(type(w.op.store))["flag_sealed"]  # a plan (embcache.plan.planned)
    calls: list[str] = []

    def flaky(self: Any, pk: Any) -> Any:
        calls.append(pk.tag)
        if len(calls) == 2:
            raise embcache.Unavailable("connection lost half-way through the seal")
        return (yield from real.plan(self, pk))

    monkeypatch.setattr(type(w.op.store), "flag_sealed", planned(flaky))
    with pytest.raises(embcache.Unavailable):
        op_v.seal()
    monkeypatch.setattr(type(w.op.store), "flag_sealed", real)
    assert w.op.space("alpha").version("v1").state == "sealing"
    with pytest.raises(VersionSealed):
        wv.upsert(["n"], vec(1), partition="p9")  # no new partitions while sealing
    op_v.seal()
    assert w.op.space("alpha").version("v1").state == "sealed"
    before = snapshot_server(w.url)
    att = Attacker("writer")
    for p in ("p1", "p2"):
        att.embcache(f"upsert {p} after the seal", lambda p=p: wv.upsert(["late"], vec(1), partition=p),
                     expect=VersionSealed)
        att.embcache(f"delete {p} after the seal", lambda p=p: wv.delete(["before"], partition=p),
                     expect=VersionSealed)
    check(att)
    assert_same(before, snapshot_server(w.url), "writes after the seal")
    digests = json.loads(w.raw.hget(K.versions("alpha"), "v1"))["digests"]
    assert sorted(digests) == ["p1", "p2"] and digests["p2"]["count"] == 2


# --------------------------------------------------------------------------------------------------------------
# 11.14 sealed data changed by a writer with raw access is not published
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tampered_sealed_partition_is_never_published(redis_url: str, workers, connect) -> None:  # noqa: ANN001, F811
    op = connect(redis_url)
    space = op.create_space("alpha", dim=DIM, metric="l2")
    v1 = space.create_version()
    x = np.random.default_rng(9).standard_normal((100, DIM)).astype(np.float32)
    v1.upsert([f"i{i}" for i in range(100)], x, partition="p1")
    wr = op.grant("wr", space="alpha", role="writer")
    v1.seal()
    worker = workers.start(redis_url)
    # the first build of the sealed partition matches its digest: it is published
    v1.build(timeout=60)
    pk = K.partition("alpha", "v1", "p1")
    assert op.store.r.hget(pk.state, "refused") is None
    snap_before = op.store.r.get(pk.snap)
    chunks_before = {k: op.store.r.dump(k) for k in op.store.r.scan_iter(match=pk.snap + ":*")}
    answer = connect(redis_url).space("alpha").version("v1").query(x[:3], 1, consistency="eventual")
    # the writer changes sealed items directly, logs the change as emb_upsert would, and asks for a build
    with redis.Redis.from_url(redis_url, username="wr", password=wr.password) as r:
        r.hset(pk.vec, "i0", EVIL.tobytes())
        r.hset(pk.meta, "i1", '{"tampered": true}')
        pos = r.xadd(pk.log, {"op": "u", "ids": '["i0", "i1"]'})
        r.hset(pk.state, "pos", pos)
        r.zadd(K.dirty("alpha"), {"v1/p1": 0})
    wait_for(lambda: op.store.r.hget(pk.state, "refused"), 30, what="the worker's refusal")
    time.sleep(1.0)  # give a (wrong) publication the time it would take
    assert op.store.r.get(pk.snap) == snap_before
    assert {k: op.store.r.dump(k) for k in op.store.r.scan_iter(match=pk.snap + ":*")} == chunks_before
    assert "changed since its version was sealed" in json.loads(op.store.r.hget(pk.state, "refused"))["reason"]
    fresh = connect(redis_url).space("alpha").version("v1")
    again = fresh.query(x[:3], 1, consistency="eventual", include=("distances", "metadatas"))
    assert again.ids == answer.ids and again.metadatas == [[None], [None], [None]]
    assert worker.alive()


# --------------------------------------------------------------------------------------------------------------
# 11.18 the worker principal; 11.19 SELECT
# --------------------------------------------------------------------------------------------------------------
def test_worker_principal_lost_what_it_does_not_need(world: World) -> None:
    creds = world.op.create_worker_principal()
    before = snapshot_server(world.url)
    att = Attacker("worker")
    with redis.Redis.from_url(world.url, username="worker", password=creds.password) as r:
        for cmd in [("SCAN", 0), ("SCAN", 0, "MATCH", "emb:*"), ("RANDOMKEY",),
                    ("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "emb:"), ("CLIENT", "TRACKING", "ON"),
                    ("CLIENT", "LIST"), ("CLIENT", "KILL", "TYPE", "normal"), ("CLIENT", "PAUSE", 10),
                    ("CLIENT", "NO-EVICT", "ON"), ("SELECT", 1), ("SWAPDB", 0, 1),
                    ("MOVE", K.space("alpha"), 1), ("COPY", K.space("alpha"), K.space("alpha"), "DB", 1),
                    ("RENAME", K.space("alpha"), K.space("zeta")), ("EVAL", "return 1", 0),
                    ("PUBSUB", "CHANNELS"), ("FUNCTION", "LIST"), ("FUNCTION", "FLUSH"), ("KEYS", "*"),
                    ("GET", K.principals()), ("HGETALL", K.principals()), ("SET", "other:key", 1),
                    ("CONFIG", "GET", "*"), ("ACL", "LIST"), ("MONITOR",)]:
            if cmd == ("MONITOR",):
                att.raw_fresh(world.url, "worker", creds.password, *cmd)
            else:
                att.raw(r, *cmd)
        # what it keeps: every space's data, RQ, its own connection's name
        assert r.hget(K.partition("bravo", "v1", "default").vec, "q1") is not None
        assert r.client_setname("rq:worker:x") and r.client_getname() == "rq:worker:x"
        assert r.client_info()["name"] == "rq:worker:x"
        assert r.execute_command("SELECT", 0) in (b"OK", "OK", True)
    check(att)
    assert_same(before, snapshot_server(world.url), "worker")


def test_principals_may_select_only_the_hubs_database(redis_url: str, connect) -> None:  # noqa: ANN001, F811
    """ACL key patterns hold in every database: a writer that could SELECT 1 would write its space's keys
    there. Each principal may SELECT the hub's own database only. (A connection starts in database 0 whatever
    the rules say, so a hub kept in another database leaves 0 reachable: docs/access-control.md says to keep
    the hub in database 0.)"""
    op = connect(redis_url)
    op.create_space("alpha", dim=DIM, metric="l2").create_version().upsert(["x1"], vec(0), partition="p1")
    creds = {role: op.grant(PRINCIPAL[role], space="alpha", role=role.split("_")[0],
                            partitions=["p1"] if role == "writer_p1" else None)
             for role in ("reader", "writer", "admin", "writer_p1")}
    creds["worker"] = op.create_worker_principal()
    before = snapshot_server(redis_url)
    for role, c in creds.items():
        att = Attacker(role)
        for db in (1, 2, 9, 15):
            att.raw_fresh(redis_url, c.username, c.password, "SELECT", db)
        with redis.Redis.from_url(redis_url, username=c.username, password=c.password) as r:
            att.raw(r, "SELECT", 1)
            att.raw(r, "MOVE", K.partition("alpha", "v1", "p1").vec, 1)
            att.raw(r, "SWAPDB", 0, 1)
            assert r.execute_command("SELECT", 0) in (b"OK", "OK", True)  # its own database
        att.run("open the hub at db 1", lambda c=c: redis.Redis.from_url(
            redis_url.rsplit("/", 1)[0] + "/1", username=c.username, password=c.password).ping())
        check(att)
    assert_same(before, snapshot_server(redis_url), "SELECT")
    # a hub on database 3: its principals may select 3 and nothing else
    db3 = redis_url.rsplit("/", 1)[0] + "/3"
    op3 = connect(db3)
    op3.create_space("gamma", dim=DIM, metric="l2").create_version().upsert(["g"], vec(0))
    g = op3.grant("g3", space="gamma", role="writer")
    with redis.Redis.from_url(db3, username="g3", password=g.password) as r:
        assert r.hget(K.partition("gamma", "v1", "default").vec, "g") is not None
        att = Attacker("writer")
        att.raw(r, "SELECT", 1)
        att.raw(r, "SELECT", 4)
        check(att)


# --------------------------------------------------------------------------------------------------------------
# 11.20 (last sentence) and 15.5: filters are bounded
# --------------------------------------------------------------------------------------------------------------
def test_deep_or_huge_filters_are_invalid_input(world: World, connect) -> None:  # noqa: ANN001, F811
    h = connect(world.url, username="rd", password=world.password("reader"))
    v = h.space("alpha").version("v1")
    deep: dict[str, Any] = {"n": 1}
    for _ in range(400):
        deep = {"$and": [deep]}
    ok: dict[str, Any] = {"n": 1}
    for _ in range(MAX_DEPTH):
        ok = {"$or": [ok]}
    before = snapshot_server(world.url)
    att = Attacker("reader")
    for label, where in [("400 levels", deep), ("$in of 1001", {"n": {"$in": list(range(MAX_IN_VALUES + 1))}}),
                         ("$nin of 10^5", {"n": {"$nin": list(range(100_000))}}),
                         ("10^5 fields", {f"f{i}": i for i in range(100_000)})]:
        for c in ("eventual", "strong"):
            att.embcache(f"query where {label} ({c})", lambda where=where, c=c: v.query(vec(0), 1, where=where,
                                                                                        consistency=c),
                         expect=InvalidInput)
        att.embcache(f"query_by_id where {label}", lambda where=where: v.query_by_id(["x1"], 1, where=where),
                     expect=InvalidInput)
    check(att)
    assert_same(before, snapshot_server(world.url), "filters")
    assert v.query(vec(0), 1, where=ok).ids == [["x1"]]
    assert v.query(vec(0), 1, where={"n": {"$in": list(range(MAX_IN_VALUES))}}).ids == [["x1"]]


# --------------------------------------------------------------------------------------------------------------
# the closing note's table
# --------------------------------------------------------------------------------------------------------------
def test_zz_attack_tally() -> None:
    """Prints the attempts and successes per principal and channel of every Attacker that ran in this session
    (tests/integration/test_acl.py, this file, and any other test that uses Attacker). None may succeed."""
    if not TALLY:
        pytest.skip("no attack test ran in this session")
    rows = sorted(TALLY.items())
    width = max(len(who) for (who, _), _ in rows)
    print("\nattack attempts (principal, channel): attempts, succeeded")
    for (who, channel), (n, won) in rows:
        print(f"  {who:<{width}}  {channel:<8}  {n:>5}  {won}")
    total = sum(n for n, _ in TALLY.values())
    won = sum(w for _, w in TALLY.values())
    print(f"  total {total}, succeeded {won}")
    assert won == 0


@pytest.mark.cluster
def test_cluster_drop_space_and_seal(cluster_url: str, connect) -> None:  # noqa: ANN001, F811
    """The same on Redis Cluster, where a space's partitions live in different slots and nodes: the drop finds
    every key on every node, and a seal flags every partition before it reports sealed."""
    op = connect(cluster_url)
    v = op.create_space("alpha", dim=DIM, metric="l2").create_version()
    for p in ("p1", "p2", "p3", "p4"):
        v.upsert([f"{p}-x"], vec(1), partition=p)
    op.create_space("bravo", dim=DIM, metric="l2").create_version().upsert(["q1"], vec(0))
    wr = op.grant("wr", space="alpha", role="writer")
    rc = redis.RedisCluster.from_url(cluster_url, username="wr", password=wr.password)
    rc.hset(K.partition("alpha", "v9", "ghost").vec, "evil", EVIL.tobytes())  # planted outside the catalogue
    v.seal()
    assert op.space("alpha").version("v1").state == "sealed"
    with pytest.raises(VersionSealed):
        connect(cluster_url, username="wr", password=wr.password).space("alpha").version("v1").upsert(
            ["n"], vec(1), partition="p3")
    rc.close()
    op.drop_space("alpha")
    with redis.RedisCluster.from_url(cluster_url) as r:
        left = [k for p in K.space_scan_patterns("alpha") for k in r.scan_iter(match=p)]
        assert left == []
        assert r.hget(K.partition("bravo", "v1", "default").vec, "q1") is not None
    with pytest.raises(PermissionDenied):
        embcache.connect(cluster_url, username="wr", password=wr.password)
