"""A bulk load stays one build (issue 12 part 6), with real ``python -m workers`` processes.

The dispatcher enqueues a partition's build once its log has been quiet for the worker's settle time, at most its
max delay after the first unindexed write, and at once for an explicit ``Version.build()``: N upsert calls in a
row publish one generation and leave no superseded snapshot behind, ``build(wait=True)`` returns without waiting
out the settle time, and a steady stream of writes still gets snapshots.
"""

from __future__ import annotations

import threading
import time

import pytest

from embcache.core.errors import InvalidInput
from embcache.redis.dispatcher import Dispatcher
from embcache.redis.settings import WorkerSettings
from embcache.redis.snapshots import last_log_position, read_manifest
from tests.workers_fixtures import random_unit, wait_for

DIM = 32


def _settings(settle: float, max_delay: float) -> dict[str, str]:
    return {"EMBCACHE_BUILD_SETTLE": str(settle), "EMBCACHE_BUILD_MAX_DELAY": str(max_delay)}


def _chunk_sets(r, pk) -> set[str]:  # noqa: ANN001
    """The snapshot generations (sids) whose chunks are in Redis for the partition."""
    return {k.decode()[len(pk.snap) + 1 :].rsplit(":", 1)[0] for k in r.scan_iter(match=f"{pk.snap}:*", count=1000)}


def _ready(hub) -> None:  # noqa: ANN001
    wait_for(hub.store.dispatcher_seen, 30, what="a worker's dispatcher")


def _bulk_load(v, calls: int, per_call: int, seed: int, pause: float = 0.0) -> None:  # noqa: ANN001
    x = random_unit(calls * per_call, DIM, seed)
    for c in range(calls):
        v.upsert([f"i{c * per_call + j}" for j in range(per_call)], x[c * per_call : (c + 1) * per_call])
        time.sleep(pause)


@pytest.mark.parametrize("settle", [0.0, 1.0], ids=["no-settle", "settle"])
def test_a_bulk_load_in_many_calls_is_one_build(redis_url, workers, hubs, settle: float) -> None:  # noqa: ANN001
    """With settling, 30 calls in a row publish one generation and nothing is superseded; without it (the old
    behaviour, kept as the control that shows the test can fail) the first calls already start builds."""
    hub = hubs(redis_url)
    workers.start(redis_url, env=_settings(settle, 30.0 if settle else 0.0))
    _ready(hub)
    v = hub.create_space("bulk", dim=DIM, metric="cosine").create_version()
    pk = hub.keys.partition("bulk", v.name, "default")
    r = hub.store.r
    _bulk_load(v, 30, 200, 1, pause=0.05)  # 1.5 s or more in all: the dispatcher ticks every 50 ms
    last = last_log_position(r, pk)
    m = wait_for(lambda: (x := read_manifest(r, pk)) is not None and x.pos == last and x, 60,
                 what="the snapshot of the whole load")
    assert m.count == 30 * 200
    time.sleep(2 * settle + 0.5)  # nothing else is coming
    m = read_manifest(r, pk)
    if settle:
        assert m.generation == 1, "a build started before the load was over"
        assert _chunk_sets(r, pk) == {m.sid}, "superseded snapshots left behind"
    else:
        assert m.generation > 1 and len(_chunk_sets(r, pk)) > 1  # one per build, each in its grace period


def test_build_wait_does_not_wait_out_the_settle_time(redis_url, workers, hubs) -> None:  # noqa: ANN001
    hub = hubs(redis_url)
    workers.start(redis_url, env=_settings(20.0, 60.0))
    _ready(hub)
    v = hub.create_space("asked", dim=DIM, metric="cosine").create_version()
    pk = hub.keys.partition("asked", v.name, "default")
    _bulk_load(v, 3, 100, 2)
    time.sleep(1.0)
    assert read_manifest(hub.store.r, pk) is None  # settling: no build yet
    t = time.monotonic()
    v.build(wait=True, timeout=60)
    took = time.monotonic() - t
    assert took < 10, f"build(wait=True) took {took:.1f} s: it waited for the 20 s settle time"
    m = read_manifest(hub.store.r, pk)
    assert m is not None and m.count == 300 and m.generation == 1
    # a write after it settles again, and an explicit build overtakes that too
    _bulk_load(v, 1, 50, 3)
    v.build(wait=True, timeout=60)
    assert read_manifest(hub.store.r, pk).generation == 2


def test_a_steady_write_stream_still_gets_snapshots(redis_url, workers, hubs) -> None:  # noqa: ANN001
    """Writes every 0.1 s never leave the log quiet for the 1 s settle time: the 2 s max delay publishes anyway."""
    hub = hubs(redis_url)
    workers.start(redis_url, env=_settings(1.0, 2.0))
    _ready(hub)
    v = hub.create_space("stream", dim=DIM, metric="cosine").create_version()
    pk = hub.keys.partition("stream", v.name, "default")
    r = hub.store.r
    stop = threading.Event()
    x = random_unit(2000, DIM, 4)

    def write() -> None:
        i = 0
        while not stop.is_set() and i < len(x):
            v.upsert([f"s{i}"], x[i : i + 1])
            i += 1
            time.sleep(0.1)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        seen = wait_for(lambda: (m := read_manifest(r, pk)) is not None and m.generation >= 2 and m, 40,
                        what="two snapshots while the writes go on")
        assert writer.is_alive() and seen.count > 0
    finally:
        stop.set()
        writer.join()


def test_settle_settings_are_validated() -> None:
    assert WorkerSettings(settle_seconds=0.5, max_delay_seconds=3).max_delay_seconds == 3
    for bad in ({"settle_seconds": -1}, {"settle_seconds": float("nan")}, {"max_delay_seconds": True},
                {"settle_seconds": 5, "max_delay_seconds": 1}, {"max_delay_seconds": 1e9}):
        with pytest.raises(InvalidInput):
            WorkerSettings(**bad)  # type: ignore[arg-type]


def test_a_direct_dispatcher_settles_and_serves_an_explicit_build_at_once(redis_url, hubs) -> None:  # noqa: ANN001
    """The dispatcher alone (no worker): a fresh write's mark waits, a build() mark is enqueued at the next tick,
    and a write whose log has been quiet for the settle time is enqueued."""
    import redis as redis_py
    from rq import Queue

    hub = hubs(redis_url)
    queue = Queue("embcache", connection=redis_py.Redis.from_url(redis_url))
    d = Dispatcher(hub.store, queue, settle=0.6, max_delay=30)
    v = hub.create_space("direct", dim=DIM, metric="cosine").create_version()
    v.upsert(["a"], random_unit(1, DIM, 5))
    assert d.tick() == 0  # settling
    time.sleep(0.8)
    assert d.tick() == 1  # quiet for longer than the settle time
    v2 = hub.space("direct").create_version()
    v2.upsert(["b"], random_unit(1, DIM, 6))
    assert d.tick() == 0
    v2.build(wait=False)
    assert d.tick() == 1  # the explicit request: no settling


@pytest.mark.parametrize("tails", ["shrinking", "growing"])
def test_a_build_overtaken_by_writes_catches_up_before_publishing(redis_url, hubs, monkeypatch,  # noqa: ANN001
                                                                   tails: str) -> None:
    """Writes that land while an index is built are added to it before it is published while each round adds
    fewer items than the last (one generation for a load that outlasts its first build); tails that grow (a
    stream as fast as indexing) stop the chase after one more round."""
    from workers import build as wb

    hub = hubs(redis_url, refresh_interval=0)
    v = hub.create_space("overtaken", dim=DIM, metric="cosine").create_version()
    pk = hub.keys.partition("overtaken", v.name, "default")
    record = hub.catalogue.get_space("overtaken")
    x = random_unit(4000, DIM, 7)
    v.upsert([f"i{i}" for i in range(1000)], x[:1000])
    sizes = iter([600, 300, 100] if tails == "shrinking" else [100, 300, 600])
    written = [1000]
    real_full, real_incremental = wb._full, wb._incremental

    def write_more() -> None:  # writes "landing during" this step of the build
        n = next(sizes, 0)
        if n:
            v.upsert([f"i{i}" for i in range(written[0], written[0] + n)], x[written[0] : written[0] + n])
            written[0] += n

    def full(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        state = real_full(*a, **kw)
        write_more()
        return state

    def incremental(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        state = real_incremental(*a, **kw)
        write_more()
        return state

    monkeypatch.setattr(wb, "_full", full)
    monkeypatch.setattr(wb, "_incremental", incremental)
    result = wb.build_snapshot(hub.store, record, v.name, "default")
    m = read_manifest(hub.store.r, pk)
    assert result.generation == m.generation == 1
    if tails == "shrinking":  # 1000 built, then 600, 300 and 100 caught up: all of it in the one generation
        assert m.count == written[0] == 2000 and m.pos == last_log_position(hub.store.r, pk)
    else:  # 1000 built, 100 caught up, then 300 (more than the last round: the chase stops), 600 not waited for
        assert m.count == 1400 and written[0] == 2000 and m.pos != last_log_position(hub.store.r, pk)
