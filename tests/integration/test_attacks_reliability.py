"""Issue 11's reliability attacks (items 4, 10, 11, 12, 16), in the style of test_acl.py: a principal does what
its grant lets it do with raw Redis, then the test shows that builds, readers and other spaces carry on, and
that nothing else changed. The world is test_acl's (spaces alpha and bravo, four principals); builds run in
real worker processes where the attack is on them."""

from __future__ import annotations

import numpy as np
import redis
from rq import Queue
from rq.job import Job

from embcache.redis import snapshots
from embcache.redis.dispatcher import BUILD_JOB, QUEUE_NAME, Dispatcher, job_id
from tests.integration.test_acl import K, World, connect, snapshot_server, vec, world  # noqa: F401
from tests.workers_fixtures import wait_for


def _quiet_rq(world: World) -> None:
    """test_acl's world plants fake RQ keys for its own attacks; a real worker must not meet them."""
    world.raw.delete("rq:queue:embcache", "rq:job:x")
    world.raw.srem("rq:queues", "rq:queue:embcache")


def _data_keys(url: str) -> dict:
    """Every key but RQ's and the dispatcher's bookkeeping (dirty sets, its lock), as DUMP + has-TTL."""
    state = snapshot_server(url)
    return {k: v for k, v in state["keys"].items()
            if not k[1].startswith(b"rq:") and not k[1].endswith(b":dirty") and b":dispatcher" not in k[1]}


def _dispatcher(world: World) -> Dispatcher:
    return Dispatcher(world.op.store, Queue(QUEUE_NAME, connection=redis.Redis.from_url(world.url)))


def test_attack_a_wrong_type_dirty_key_stops_no_build(world: World, workers) -> None:  # noqa: ANN001, F811
    """11.4: the dirty set of alpha, emptied by the dispatcher, is re-created by a writer as a hash: every tick
    raised WRONGTYPE and no space was dispatched. Now the ACL refuses it (sec's selectors) or the dispatcher
    isolates the space and drops the key; bravo's build goes on either way."""
    _quiet_rq(world)
    world.raw.delete(K.dirty("alpha"))  # as the dispatcher leaves it once it drained the marks
    with world.raw_as("writer_p1") as r:
        try:
            r.hset(K.dirty("alpha"), "x", "y")
        except redis.exceptions.NoPermissionError:
            pass
    world.op.space("bravo").version("v1").upsert(["q3"], vec(1))
    before = _data_keys(world.url)
    d = _dispatcher(world)
    d.tick()
    assert world.raw.zrange(K.dirty("bravo"), 0, -1) == [], "bravo's build was not enqueued"
    assert world.raw.type(K.dirty("alpha")) in (b"none", b"zset")
    assert d.reconcile() >= 0  # runs through every space without raising
    assert _data_keys(world.url) == before, "the attack (or its repair) changed data keys"
    workers.start(world.url)
    world.op.space("bravo").version("v1").build(timeout=30)
    world.op.space("alpha").version("v1").build(timeout=30)  # and alpha builds again


def test_attack_junk_dirty_marks_publish_nothing(world: World, workers) -> None:  # noqa: ANN001, F811
    """11.10: marks for versions and partitions that do not exist made the worker publish snapshots and leave
    keys that drop_space never removes. Now the dispatcher drops them and a job for one is skipped."""
    _quiet_rq(world)
    junk = ["v9/ghost", "v1/ghost", "v2/nope", "v1/p3"]
    with world.raw_as("writer") as r:
        r.zadd(K.dirty("alpha"), {m: 0 for m in junk})
    d = _dispatcher(world)
    d.tick()
    left = {m.decode() for m in world.raw.zrange(K.dirty("alpha"), 0, -1)}
    assert not left & set(junk), left
    queue = Queue(QUEUE_NAME, connection=redis.Redis.from_url(world.url))
    for m in junk:
        version, partition = m.split("/")
        assert Job.exists(job_id(K.prefix, "alpha", version, partition), connection=queue.connection) is False
    # a job for a junk partition that got through anyway (enqueued before the check, say) publishes nothing
    ghost = queue.enqueue_call(BUILD_JOB, args=("alpha", "v1", "ghost"), kwargs={"prefix": K.prefix},
                               job_id=job_id(K.prefix, "alpha", "v1", "ghost"))
    workers.start(world.url)
    wait_for(lambda: ghost.get_status(refresh=True) == "finished", 30, what="the junk job to run")
    assert ghost.return_value()["kind"] == "skipped"
    for m in junk:
        version, partition = m.split("/")
        assert not list(world.raw.scan_iter(match=f"emb:{{alpha/{version}/{partition}}}*")), m
    world.op.space("alpha").version("v1").build(timeout=30)  # the real partitions are built as usual


def test_attack_a_garbage_log_position_breaks_no_reconcile_and_no_reader(world: World, connect, workers) -> None:  # noqa: ANN001, F811
    """11.11: ``HSET <state> pos garbage`` made reconcile() raise for every space. Now the position is taken from
    the log itself where the state's is not one."""
    _quiet_rq(world)
    pk = K.partition("alpha", "v1", "p1")
    with world.raw_as("writer_p1") as r:
        r.hset(pk.state, "pos", "garbage")
    world.op.space("bravo").version("v1").upsert(["q4"], vec(2))
    world.raw.delete(K.dirty("bravo"))  # only reconciliation can find bravo now
    d = _dispatcher(world)
    assert d.reconcile() >= 1
    assert world.raw.zrange(K.dirty("bravo"), 0, -1), "reconcile did not reach bravo"
    reader = connect(world.url, username="rd", password=world.password("reader"))
    res = reader.space("alpha").version("v1").query(vec(0), n_results=2, partitions=["p1"], consistency="strong")
    assert res.ids == [["x1", "x2"]] or res.ids == [["x2", "x1"]]
    workers.start(world.url)
    world.op.space("alpha").version("v1").build(timeout=30)
    m = snapshots.read_manifest(world.raw, pk)
    assert m is not None and m.count == 2


def test_attack_corrupt_stored_data_is_skipped_by_readers(world: World, connect, workers) -> None:  # noqa: ANN001, F811
    """11.12: a malformed stored vector (plus a log entry naming it) and a log entry whose ids are not JSON made
    full readers' queries raise numpy's ValueError or a Lua error. Now the item is skipped and logged."""
    _quiet_rq(world)
    pk = K.partition("alpha", "v1", "p1")
    with world.raw_as("writer_p1") as r:
        r.hset(pk.vec, "bad", "xyz")
        r.hset(pk.meta, "x1", "{not json")
        r.xadd(pk.log, {"op": "u", "ids": '["bad"]'})
        r.xadd(pk.log, {"op": "u", "ids": "not json"})
    for who in ("op", "reader"):
        hub = world.op if who == "op" else connect(world.url, username="rd", password=world.password("reader"))
        v = hub.space("alpha").version("v1")
        for level in ("eventual", "session", "strong"):
            res = v.query(vec(0), n_results=3, consistency=level, include=("metadatas",))
            assert "bad" not in res.ids[0] and {"x1", "x2"} <= set(res.ids[0]), (who, level, res.ids)
        got = v.get(["bad", "x1", "x2"])
        assert got.ids == ["x1", "x2"] and got.metadatas == [None, None], (who, got)
    workers.start(world.url)
    world.op.space("alpha").version("v1").build(timeout=30)
    m = snapshots.read_manifest(world.raw, pk)
    assert m is not None and m.count == 2  # "bad" is not indexed


def test_attack_a_corrupt_report_does_not_force_full_rebuilds(world: World, workers) -> None:  # noqa: ANN001, F811
    """11.16: writing ``corrupt`` into a partition's state forced a full rebuild, again and again. Now the worker
    verifies the published snapshot itself: intact, it builds incrementally (or not at all) and clears the
    report."""
    _quiet_rq(world)
    workers.start(world.url)
    v = world.op.space("alpha").version("v1")
    v.build(timeout=30)
    pk = K.partition("alpha", "v1", "p1")
    first = snapshots.read_manifest(world.raw, pk)
    jid = job_id(K.prefix, "alpha", "v1", "p1")
    conn = redis.Redis.from_url(world.url)

    def kind() -> str | None:
        result = Job.fetch(jid, connection=conn).return_value()
        return None if result is None else result["kind"]

    with world.raw_as("writer_p1") as r:
        r.hset(pk.state, "corrupt", "a lie")
    wait_for(lambda: not world.raw.hexists(pk.state, "corrupt"), 30, what="the report to be checked and cleared")
    # the job clears the report before it returns, and RQ stores its result after that: wait for the result
    wait_for(lambda: kind() == "unchanged", 30, what="the checking job's result")
    assert snapshots.read_manifest(world.raw, pk) == first  # nothing rebuilt
    with world.raw_as("writer_p1") as r:
        r.hset(pk.state, "corrupt", "a lie")
    v.upsert(["x3"], vec(1), partition="p1")
    v.build(timeout=30)
    wait_for(lambda: kind() == "incremental", 30, what="the incremental build's result")
    assert not world.raw.hexists(pk.state, "corrupt")
    v.query(np.asarray(vec(1)), n_results=1)
