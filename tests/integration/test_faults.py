"""Faults injected into real servers and real worker processes (issue 15), each followed by a check of the
guarantee it threatens. docs/operations.md ("Faults and what each guarantee covers") lists them in a table.

Each test's docstring or name says the fault and the guarantee.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from rq import Queue
from rq.job import Job

import embcache
import embcache.redis.store
from embcache import Indeterminate, InvalidInput, OutOfMemory, SnapshotCorrupt, Unavailable
from embcache.core import snapshot
from embcache.core.keys import Keys
from embcache.core.views import ExactBase
from embcache.redis import snapshots
from embcache.redis.dispatcher import QUEUE_NAME, Dispatcher, job_id
from tests.integration.test_acl import assert_same, snapshot_server
from tests.servers import start_standalone
from tests.workers_fixtures import brute_force, paused_builds, wait_for

DIM = 16


def _data(n: int, seed: int, prefix: str = "i") -> tuple[list[str], np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return [f"{prefix}{i}" for i in range(n)], x


def _manifest_dict(r: redis.Redis, pk) -> dict:  # noqa: ANN001
    return json.loads(r.get(pk.snap))


def _with_digest(d: dict) -> bytes:
    """The manifest as someone with the worker's rights would forge it: fields changed, digest recomputed."""
    fields = {k: v for k, v in d.items() if k != "digest"}
    fields["sections"] = list(fields["sections"])
    m = snapshot.Manifest(**{**fields, "sections": tuple(fields["sections"]), "digest": ""})
    return json.dumps({**fields, "digest": m.compute_digest()}).encode()


# --- 0. a worker killed between RQ's dequeue and the start of the job -------------------------------------

def test_a_build_taken_by_a_worker_killed_before_starting_it_is_enqueued_again(redis_url, workers, hubs) -> None:  # noqa: ANN001
    """RQ moves a job from the queue to its intermediate list (status still ``queued``) and only then marks it
    started; a worker SIGKILLed in between left the job looking queued, and every later mark of the partition
    was dropped for ~10 minutes. The window is made certain: the worker is SIGSTOPped while it waits in BLMOVE,
    so Redis hands it the job and it never runs a line more."""
    hub = hubs(redis_url)
    v = hub.create_space("orphan", dim=DIM, metric="l2").create_version()
    ids, x = _data(50, 1)
    v.upsert(ids, x)
    r = hub.store.r
    doomed = workers.start(redis_url, args=["--no-dispatch"])
    wait_for(lambda: any(c.get("cmd") in ("blmove", "brpoplpush") for c in r.client_list()), 30,
             what="the worker to wait on the queue")
    os.kill(doomed.pid, signal.SIGSTOP)
    queue = Queue(QUEUE_NAME, connection=redis.Redis.from_url(redis_url))
    assert Dispatcher(hub.store, queue).tick() == 1
    jid = job_id(hub.keys.prefix, "orphan", v.name, "default")
    wait_for(lambda: r.lpos(queue.intermediate_queue_key, jid) is not None, 10, what="Redis to hand over the job")
    doomed.kill()
    job = Job.fetch(jid, connection=queue.connection)
    assert job.get_status() == "queued" and r.lpos(queue.key, jid) is None  # the state the fault leaves

    v.upsert(["late"], x[:1] * 3)  # a new mark, which the dead job used to swallow
    workers.start(redis_url)
    v.build(timeout=30)  # RQ's own cleanup of the intermediate list would take minutes
    m = snapshots.read_manifest(r, hub.keys.partition("orphan", v.name, "default"))
    assert m is not None and m.count == 51
    assert v.query(x[:1] * 3, n_results=1, consistency="eventual").ids == [["late"]]


# --- 1. manifests are checked before anything reaches hnswlib ------------------------------------------------

@pytest.fixture
def built(redis_url, workers, hubs):  # noqa: ANN001, ANN201
    """A cosine space with one built partition of 300 items; builds paused while the test runs."""
    hub = hubs(redis_url)
    v = hub.create_space("man", dim=DIM, metric="cosine").create_version()
    ids, x = _data(300, 2)
    v.upsert(ids, x)
    workers.start(redis_url)
    v.build(timeout=60)
    pk = hub.keys.partition("man", v.name, "default")
    with paused_builds(hub):
        yield hub, v, ids, x, pk


def _fresh_reader_answers_exactly(url: str, version: str, ids: list[str], x: np.ndarray, late: np.ndarray) -> None:
    """A new reader refuses the tampered snapshot, answers from the stored vectors (exact), reports it, and a
    strong query sees the write committed after the snapshot."""
    with embcache.connect(url, refresh_interval=0) as reader:
        rv = reader.space("man").version(version)
        q = np.random.default_rng(3).standard_normal((10, DIM)).astype(np.float32)
        res = rv.query(q, n_results=5, consistency="eventual")
        all_ids = [*ids, "late"]
        truth = brute_force(np.vstack([x, late]), q, 5, "cosine")
        assert res.ids == [[all_ids[j] for j in row] for row in truth]
        assert isinstance(reader.cache.cached(("man", version, "default")), ExactBase)
        assert reader.cache.corrupt_seen >= 1
        assert rv.query(late, n_results=1, consistency="strong").ids == [["late"]]


@pytest.mark.parametrize("forged", [False, True], ids=["digest-stale", "digest-recomputed"])
def test_tampered_manifests_are_refused_before_hnswlib(built, redis_url, forged: bool) -> None:  # noqa: ANN001
    hub, v, ids, x, pk = built
    r = hub.store.r
    late = np.random.default_rng(4).standard_normal((1, DIM)).astype(np.float32)
    v.upsert(["late"], late)  # committed after the snapshot: a strong query must see it
    good = r.get(pk.snap)
    d = json.loads(good)
    last = r.xrevrange(pk.log, "+", "-", count=1)[0][0].decode()
    cases = {
        "dim - 1 (was: wrong distances)": {"dim": DIM - 1},
        "dim x 48 (was: malloc() crash in hnswlib)": {"dim": DIM * 48},
        "metric cosine -> l2 (was: distances off)": {"metric": "l2"},
        "unknown metric (was: KeyError)": {"metric": "hamming"},
        "M changed (the index header disagrees)": {"M": d["M"] + 1},
        "position past the log (was: strong missed a write)": {"pos": f"{int(last.split('-')[0]) + 10**6}-0"},
    }
    for label, change in cases.items():
        tampered = {**d, **change}
        raw = _with_digest(tampered) if forged else json.dumps(tampered).encode()
        r.set(pk.snap, raw)
        with pytest.raises(SnapshotCorrupt):
            m = snapshots.read_manifest(r, pk)
            snapshots.load(r, pk, ef=64, dim=DIM, metric="cosine", manifest=m)
        try:
            _fresh_reader_answers_exactly(redis_url, v.name, ids, x, late)
        except AssertionError as exc:
            raise AssertionError(f"{label}: {exc}") from None
        r.hdel(pk.state, "corrupt")
    r.set(pk.snap, good)
    assert snapshots.load(r, pk, ef=64, dim=DIM, metric="cosine").count == 300


def test_every_bit_flip_of_a_manifest_is_refused(built) -> None:  # noqa: ANN001
    hub, v, ids, x, pk = built
    r = hub.store.r
    good = r.get(pk.snap)
    info = hub.space("man").info
    pid = ("man", v.name, "default")
    others = []
    for i in range(len(good)):
        flipped = bytearray(good)
        flipped[i] ^= 1 << (i % 7)
        r.set(pk.snap, bytes(flipped))
        try:
            snapshots.read_manifest(r, pk)
            others.append(f"byte {i}: accepted")
        except SnapshotCorrupt:
            pass
        except Exception as exc:  # noqa: BLE001 - any other kind is the bug
            others.append(f"byte {i}: {type(exc).__name__}: {exc}")
        if i % 25 == 0:  # and a reader loading it answers, from the stored vectors
            base = hub.cache.reload(pid, info)
            assert isinstance(base, ExactBase) and base.count == 300
    assert not others, others[:10]
    r.set(pk.snap, good)


def test_an_unreadable_manifest_is_rebuilt_and_other_partitions_still_build(redis_url, workers, hubs) -> None:  # noqa: ANN001
    hub = hubs(redis_url)
    v = hub.create_space("unread", dim=DIM, metric="l2").create_version()
    a_ids, a_x = _data(200, 5, "a")
    b_ids, b_x = _data(200, 6, "b")
    v.upsert(a_ids, a_x, partition="pa")
    v.upsert(b_ids, b_x, partition="pb")
    workers.start(redis_url)
    v.build(timeout=60)
    r = hub.store.r
    pa, pb = (hub.keys.partition("unread", v.name, p) for p in ("pa", "pb"))
    old = snapshots.read_manifest(r, pa)
    with paused_builds(hub):
        r.set(pa.snap, b'{"generation": 1, "sid": ')  # truncated: unreadable
        v.upsert(["b-new"], b_x[:1] + 1, partition="pb")
        r.delete(hub.keys.dirty("unread"))  # the writer died before its mark: only reconciliation finds pb
    wait_for(lambda: (m := _try_manifest(r, pb)) is not None and m.count == 201, 30, what="pb to be built")
    wait_for(lambda: (m := _try_manifest(r, pa)) is not None and m.generation > old.generation, 30,
             what="the unreadable manifest of pa to be replaced")
    assert snapshots.load(r, pa, ef=64, dim=DIM, metric="l2").count == 200
    assert 0 < r.ttl(pa.chunk(old.sid, 0)) <= snapshots.GRACE_SECONDS  # the replaced chunks expire
    assert not any("tick failed" in w.log() for w in workers.started)


def _try_manifest(r: redis.Redis, pk) -> snapshot.Manifest | None:  # noqa: ANN001
    try:
        return snapshots.read_manifest(r, pk)
    except SnapshotCorrupt:
        return None


# --- 3. outages ----------------------------------------------------------------------------------------------

@pytest.fixture
def private_server(tmp_path: Path):  # noqa: ANN201
    server = start_standalone(tmp_path / "redis")
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


def test_a_stalled_redis_gives_typed_errors_within_the_timeout_and_a_retry_is_safe(private_server, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(embcache.redis.store, "SOCKET_TIMEOUT", 1.0)
    monkeypatch.setattr(embcache.redis.store, "CONNECT_TIMEOUT", 1.0)
    with embcache.connect(private_server.url, refresh_interval=0) as hub:
        v = hub.create_space("stall", dim=DIM, metric="l2").create_version()
        ids, x = _data(100, 7)
        v.upsert(ids, x)
        v.query(x[:1], n_results=1)  # loads the base: eventual and session keep answering
        os.kill(private_server.process.pid, signal.SIGSTOP)
        outcomes: dict[str, BaseException] = {}
        batches = {f"w{n}": _data(5, 10 + n, f"w{n}-") for n in range(4)}
        try:
            for name, (bids, bx) in batches.items():
                t0 = time.monotonic()
                with pytest.raises((Indeterminate, Unavailable)) as info:
                    v.upsert(bids, bx)
                took = time.monotonic() - t0
                assert took < 8, f"an upsert blocked {took:.1f} s with a 1 s timeout"
                assert "timed out" in str(info.value), str(info.value)
                outcomes[name] = info.value
            with pytest.raises(Unavailable, match="timed out"):
                v.query(x[:1], n_results=1, consistency="strong")
            for level in ("eventual", "session"):
                assert v.query(x[:3], n_results=1, consistency=level).ids == [[ids[0]], [ids[1]], [ids[2]]]
        finally:
            os.kill(private_server.process.pid, signal.SIGCONT)
        time.sleep(0.2)
        for name, (bids, bx) in batches.items():
            landed = len(v.get(bids).ids)
            assert landed in (0, 5), f"{name}: torn batch"
            if isinstance(outcomes[name], Unavailable):
                assert landed == 0, f"{name} raised Unavailable but was written"
            assert v.upsert(bids, bx) == 5  # the retry the error message suggests
        assert v.count() == 100 + 20
        got = v.get([i for bids, _ in batches.values() for i in bids])
        np.testing.assert_array_equal(got.embeddings, np.vstack([bx for _, bx in batches.values()]))


def test_a_restart_between_calls_is_bridged_by_the_connect_retry(private_server) -> None:  # noqa: ANN001
    with embcache.connect(private_server.url, refresh_interval=0) as hub:
        v = hub.create_space("restart", dim=DIM, metric="l2").create_version()
        ids, x = _data(10, 8)
        v.upsert(ids, x)
        private_server.stop()
        restarter = threading.Timer(0.3, private_server.start)
        restarter.start()
        try:
            assert v.upsert(["after"], x[:1]) == 1  # connection refused, then retried with backoff
        finally:
            restarter.join()
        assert v.count() == 11



def test_an_outage_logs_one_line_per_failure_with_backoff_and_the_worker_goes_on(private_server, workers) -> None:  # noqa: ANN001
    """An 8 s outage once printed 27 tracebacks in the worker log (issue 13.3). Each failed attempt is one line now,
    the dispatcher's waits grow (0.5, 1, 2 s, ...), and once Redis is back the same worker builds again."""
    url = private_server.url
    worker = workers.start(url)
    raw = redis.Redis.from_url(url)
    wait_for(lambda: raw.exists(Keys("emb").dispatcher_lock()), 60, what="the worker's dispatcher")
    raw.close()
    private_server.stop()  # connections refused from now on
    try:
        wait_for(lambda: worker.log().count("dispatcher tick failed") >= 3, 120, what="three failed ticks in the log")
    finally:
        private_server.start()  # same port, same data directory
    wait_for(lambda: "Redis answers again" in worker.log(), 120, what="the dispatcher to see Redis again")
    log = worker.log()
    assert "Traceback" not in log, log[-4000:]
    failed = [line for line in log.splitlines() if "dispatcher tick failed" in line]
    waits = [float(m.group(1)) for line in failed if (m := re.search(r"retrying in ([0-9.]+) s$", line))]
    assert len(waits) == len(failed) >= 3, failed  # one whole line per failure, each with its wait
    assert waits[:3] == [0.5, 1.0, 2.0], failed
    assert worker.alive()
    with embcache.connect(url, refresh_interval=0) as hub:
        v = hub.create_space("after-outage", dim=DIM, metric="l2").create_version()
        ids, x = _data(30, 12)
        v.upsert(ids, x)
        v.build(timeout=120)  # the RQ worker, stopped by the outage, was started again
        assert v.query(x[:1], n_results=1, consistency="eventual").ids == [[ids[0]]]
    assert "Traceback" not in worker.log()

# --- 4. typed errors and a rejected call changes nothing ----------------------------------------------------

def test_memory_limit_refusals_are_typed_change_nothing_and_the_worker_survives(private_server, workers) -> None:  # noqa: ANN001
    url = private_server.url
    raw = redis.Redis.from_url(url)
    with embcache.connect(url, refresh_interval=0) as hub:
        space = hub.create_space("oom", dim=DIM, metric="l2")
        v = space.create_version()
        ids, x = _data(50, 9)
        v.upsert(ids, x)
        raw.config_set("maxmemory-policy", "noeviction")
        raw.config_set("maxmemory", "1")  # every write is refused from now on
        before = snapshot_server(url)
        for label, call in {
            "create_version": lambda: space.create_version(),
            "upsert (existing partition)": lambda: v.upsert(["n1"], x[:1]),
            "upsert (new partition)": lambda: v.upsert(["n2"], x[:1], partition="fresh"),
            "delete": lambda: v.delete(ids[:3]),
            "create_space": lambda: hub.create_space("oom2", dim=DIM),
        }.items():
            with pytest.raises(OutOfMemory):
                call()
            assert_same(before, snapshot_server(url), label)
        assert v.partitions() == ["default"]
        worker = workers.start(url)  # RQ's registration is refused at the memory limit: it must back off
        wait_for(lambda: "starting it again" in worker.log(), 30, what="the worker to back off")
        assert worker.alive()
        raw.config_set("maxmemory", "0")
        v.upsert(["n1"], x[:1] + 5)
        v.build(timeout=60)
        assert v.query(x[:1] + 5, n_results=1, consistency="eventual").ids == [["n1"]]
        assert "Traceback" not in worker.log()


def test_a_refused_dirty_mark_after_a_committed_write_does_not_raise(redis_url, workers, hubs) -> None:  # noqa: ANN001
    hub = hubs(redis_url)
    v = hub.create_space("mark", dim=DIM, metric="l2").create_version()
    ids, x = _data(20, 11)
    v.upsert(ids, x)
    r = hub.store.r
    dirty = hub.keys.dirty("mark")
    r.delete(dirty)
    r.hset(dirty, "not", "a sorted set")  # the ZADD after the write now fails with WRONGTYPE
    assert v.upsert(["after"], x[:1] * 2) == 1  # stored: must not raise as if it were not
    assert v.get(["after"]).ids == ["after"]
    workers.start(redis_url)  # the dispatcher drops the bad key; reconciliation finds the partition behind
    wait_for(lambda: (m := _try_manifest(r, hub.keys.partition("mark", v.name, "default"))) is not None
             and m.count == 21, 30, what="the write to be built")


def test_partitions_and_grants_of_the_wrong_type_are_invalid_input(redis_url, hubs) -> None:  # noqa: ANN001
    hub = hubs(redis_url)
    v = hub.create_space("types", dim=DIM, metric="l2").create_version()
    ids, x = _data(5, 12)
    v.upsert(ids, x)
    before = snapshot_server(redis_url)
    for label, call in {
        "query partitions=5": lambda: v.query(x[:1], partitions=5),
        "query_by_id partitions=5": lambda: v.query_by_id(ids[:1], partitions=5),
        "get partitions=5": lambda: v.get(ids, partitions=5),
        "grant partitions=5": lambda: hub.grant("t1", space="types", partitions=5),
        "grant partitions=[5]": lambda: hub.grant("t1", space="types", partitions=[5]),
        "description with a lone surrogate": lambda: hub.space("types").create_version(description="\udc80"),
    }.items():
        with pytest.raises(InvalidInput):
            call()
        assert_same(before, snapshot_server(redis_url), label)


# --- 7. leftovers ---------------------------------------------------------------------------------------------

def test_an_interrupted_builds_leftovers_are_reported_and_removed_by_the_next_build(redis_url, workers, hubs) -> None:  # noqa: ANN001
    hub = hubs(redis_url)
    v = hub.create_space("left", dim=DIM, metric="l2").create_version()
    ids, x = _data(100, 13)
    v.upsert(ids, x)
    workers.start(redis_url)
    v.build(timeout=60)
    r = hub.store.r
    pk = hub.keys.partition("left", v.name, "default")
    with paused_builds(hub):
        # exactly what a build SIGKILLed during its upload leaves: the upload record and some chunks
        snapshots.write_chunks(r, pk, "2.deadbeef", [b"x" * 5000, b"y" * 7])
        (s,) = v.stats()
        assert (s.leftover_uploads, s.leftover_bytes) == (1, 5007)
        assert 0 < r.ttl(pk.chunk("2.deadbeef", 0)) <= snapshots.ORPHAN_TTL
        v.upsert(["more"], x[:1] * 2)
    v.build(timeout=60)
    assert not r.exists(pk.chunk("2.deadbeef", 0), pk.chunk("2.deadbeef", 1))
    (s,) = v.stats()
    assert (s.leftover_uploads, s.leftover_bytes, s.count) == (0, 0, 101)


# --- 5. input rules -----------------------------------------------------------------------------------------

def test_input_rules_refuse_or_convert_as_documented(redis_url, hubs) -> None:  # noqa: ANN001
    """docs/operations.md "Input rules": control characters in ids, non-str metadata keys, timedelta64 vectors
    are refused with nothing changed; a tuple comes back as a list; a grant on a partition that does not exist
    yet is allowed, and the principal gets the partition once it is written."""
    hub = hubs(redis_url)
    v = hub.create_space("rules", dim=DIM, metric="l2").create_version()
    ids, x = _data(3, 14)
    v.upsert(ids, x)
    before = snapshot_server(redis_url)
    for label, call in {
        "NUL in an id": lambda: v.upsert(["a\x00b"], x[:1]),
        "newline in an id": lambda: v.upsert(["a\nb"], x[:1]),
        "C1 control in an id": lambda: v.upsert(["a\x85"], x[:1]),
        "int metadata key (nested)": lambda: v.upsert(["m"], x[:1], [{"a": {1: "x"}}]),
        "metadata 40 deep": lambda: v.upsert(["m"], x[:1], [_deep(40)]),
        "timedelta64 vectors": lambda: v.upsert(["t"], np.ones((1, DIM), dtype="m8[s]")),
        "datetime64 vectors": lambda: v.upsert(["t"], np.ones((1, DIM), dtype="M8[s]")),
        "bool vectors": lambda: v.upsert(["t"], np.ones((1, DIM), dtype=bool)),
    }.items():
        with pytest.raises(InvalidInput):
            call()
        assert_same(before, snapshot_server(redis_url), label)
    v.upsert(["tup"], x[:1], [{"tags": ("a", "b")}])
    assert v.get(["tup"]).metadatas == [{"tags": ["a", "b"]}]
    creds = hub.grant("future-writer", space="rules", role="writer", partitions=["future"])
    assert "future" not in v.partitions()
    with embcache.connect(redis_url, username=creds.username, password=creds.password, refresh_interval=0) as w:
        wv = w.space("rules").version(v.name)
        assert wv.upsert(["f1"], x[:1], partition="future") == 1
        assert wv.get(["f1"]).ids == ["f1"] and wv.count() == 1  # it sees its partition only
    assert "future" in v.partitions()


def _deep(n: int) -> dict:
    d: dict = {}
    for _ in range(n):
        d = {"k": d}
    return d
