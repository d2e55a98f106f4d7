"""Delta segments under faults and hostile writers (found by a review of issue 12.3): builds run in this process
(no RQ, so a fault can be injected between a publication and its reply), on a real redis-server."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

import workers.build as wb
from embcache.core import delta
from embcache.redis import settings, snapshots
from embcache.redis.catalogue import Catalogue
from tests.workers_fixtures import random_unit

DIM = 16
WIDTH = 4 * DIM


@pytest.fixture(autouse=True)
def _delta_settings(monkeypatch) -> Iterator[None]:  # noqa: ANN001
    monkeypatch.setattr(settings, "DELTA_FROM_BYTES", 0)
    monkeypatch.setattr(settings, "DELTA_MIN_ROWS", 100)
    monkeypatch.setattr(settings, "DELTA_SHARE", 0.1)
    wb._kept.clear()
    yield
    wb._kept.clear()


def _setup(hubs, redis_url, name="dl"):  # noqa: ANN001, ANN202
    a = hubs(redis_url)
    v = a.create_space(name, dim=DIM).create_version()
    a.store.r  # noqa: B018
    pk = a.keys.partition(name, v.name, "default")
    rec = Catalogue(a.store).get_space(name)

    def build():  # noqa: ANN202
        return wb.build_snapshot(a.store, rec, v.name, "default")

    return a, v, pk, build


def _chain(r, pk):  # noqa: ANN001, ANN202
    m = snapshots.read_manifest(r, pk)
    return m, snapshots.read_chain(r, pk, m, WIDTH)


def test_a_writer_cannot_have_published_segment_chunks_deleted(redis_url, hubs) -> None:  # noqa: ANN001
    """Writers may write the state hash, where a build records its uploads (to delete a killed build's chunks):
    an upload record naming a published segment must not make the next build delete it."""
    a, v, pk, build = _setup(hubs, redis_url)
    r = a.store.r
    v.upsert([f"a{i}" for i in range(500)], random_unit(500, DIM, 1))
    assert build().kind == "full"
    new = random_unit(20, DIM, 2)
    v.upsert([f"n{i}" for i in range(20)], new)
    assert build().kind == "delta"
    m, chain = _chain(r, pk)
    seg = chain.segments[0]
    # a writer principal: may HSET its partition's state hash
    creds = a.grant("w", space="dl", role="writer")
    w = redis.Redis.from_url(redis_url, username=creds.username, password=creds.password)
    w.hset(pk.state, f"upload:{seg.sid}", f"{seg.chunks} 0")
    v.upsert(["x0"], random_unit(1, DIM, 3))
    build()  # any build: remove_uploads runs first
    assert r.exists(pk.chunk(seg.sid, 0)) == 1, "a published segment's chunk was deleted"
    b = hubs(redis_url, follow=False, refresh_interval=0.05)  # it reads the writes from the segments alone
    assert b.space("dl").version(v.name).query(new[:3], 1).ids == [["n0"], ["n1"], ["n2"]]


def test_a_full_chain_is_merged_rather_than_left_behind_the_log(redis_url, hubs, monkeypatch) -> None:  # noqa: ANN001
    """A chain of MAX_SEGMENTS takes no more segment: the next build merges, so no write is left unpublished."""
    monkeypatch.setattr(delta, "MAX_SEGMENTS", 2)
    a, v, pk, build = _setup(hubs, redis_url)
    r = a.store.r
    v.upsert([f"a{i}" for i in range(500)], random_unit(500, DIM, 1))
    build()
    for k in range(4):
        v.upsert([f"s{k}"], random_unit(1, DIM, 10 + k))
        for _ in range(3):  # a build, and the merge it may call for
            build()
        m, chain = _chain(r, pk)
        covered = chain.pos if chain is not None else m.pos
        assert covered == snapshots.last_log_position(r, pk), f"round {k}: writes left unpublished"
        assert chain is None or len(chain.segments) <= 2
    assert m.generation >= 2


def test_a_segment_whose_reply_was_lost_is_not_lost(redis_url, hubs, monkeypatch) -> None:  # noqa: ANN001
    """emb_publish_delta ran on the server but its reply never came (a timeout): the worker cannot tell, so it
    must not keep an index that lacks the segment; the next merge holds every item it claims to cover."""
    a, v, pk, build = _setup(hubs, redis_url)
    r = a.store.r
    v.upsert([f"a{i}" for i in range(500)], random_unit(500, DIM, 1))
    build()
    v.upsert([f"b{i}" for i in range(60)], random_unit(60, DIM, 2))
    assert build().kind == "delta"
    c = random_unit(60, DIM, 3)
    v.upsert([f"c{i}" for i in range(60)], c)
    real = snapshots.publish_delta
    calls = []

    def flaky(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        real(*args, **kw)  # ran on the server ...
        if not calls:
            calls.append(1)
            raise redis.exceptions.TimeoutError("Timeout reading from socket")  # ... but the reply was lost
    monkeypatch.setattr(snapshots, "publish_delta", flaky)
    with pytest.raises(redis.exceptions.TimeoutError):
        build()  # the job fails; RQ retries it in the same process
    v.upsert([f"d{i}" for i in range(60)], random_unit(60, DIM, 4))
    for _ in range(4):
        build()
    m, chain = _chain(r, pk)
    assert m.generation >= 2
    base = snapshots.load(r, pk, ef=64, dim=DIM, metric="cosine")
    covered = set(base.ids)
    for _, tail in snapshots.fetch_segments(r, pk, chain.segments, WIDTH) or [] if chain is not None else []:
        covered |= {i for i, vec in zip(tail.ids, tail.vectors) if vec is not None}
    missing = [f"c{i}" for i in range(60) if f"c{i}" not in covered]
    assert not missing, f"{len(missing)} written items are not in a snapshot (or segment) that claims to cover them"
    h = hubs(redis_url)
    assert h.space("dl").version(v.name).query(c[:3], 1, consistency="strong").ids == [["c0"], ["c1"], ["c2"]]
