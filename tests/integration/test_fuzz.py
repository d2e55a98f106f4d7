"""Property-based fuzz of every public call (issue 15.4/15.5), on a real Redis: each call gets generated
arguments, hostile ones mostly (wrong types, NaN, control characters, deep nesting, odd numpy dtypes and
shapes, huge numbers, unknown names). The property: the call returns or raises an :class:`EmbcacheError`,
never anything else; and a call that raised, or one that only reads, left the database (every key's DUMP
and TTL, the ACL users, the functions) byte for byte as it was. A write that succeeded had valid input: the
world is rebuilt for the next example.

The number of examples per call is bounded (``EXAMPLES``) and the generation derandomised, so the default
suite stays fast and a failure reproduces; ``EMBCACHE_FUZZ_EXAMPLES=500`` runs a longer campaign."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embcache
from embcache import EmbcacheError
from tests.integration.test_acl import assert_same, snapshot_server

EXAMPLES = int(os.environ.get("EMBCACHE_FUZZ_EXAMPLES", "25"))
DIM = 4

names = st.one_of(st.sampled_from(["fz", "other", "v1", "v2", "live", "p1", "default", "nope"]),
                  st.text(max_size=70), st.integers(), st.none(), st.binary(max_size=8))
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.binary(max_size=8), st.sampled_from(["\x00", "a\nb", "\udc80", "$in", "ok"]))
json_like = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.tuples(inner, inner),
                                                          st.dictionaries(st.one_of(st.text(max_size=5), st.integers()),
                                                                          inner, max_size=4)),
                         max_leaves=12)
ids = st.one_of(st.lists(st.one_of(st.sampled_from(["a1", "a2", "b1", "zz"]), st.text(max_size=12), st.integers()),
                         max_size=5),
                st.text(max_size=10), st.integers(), st.none(), json_like)
arrays = st.one_of(
    st.builds(lambda shape, kind: np.ones(shape, dtype=kind),
              st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 3, DIM, 5])),
              st.sampled_from(["f4", "f8", "f2", "i8", "u1", "m8[s]", "M8[s]", "c8", "?", "O", "U3"])),
    st.builds(lambda v: np.full((1, DIM), v, dtype=np.float64),
              st.sampled_from([np.nan, np.inf, -np.inf, 1e300, 0.0, -0.0])),
    json_like,
)
wheres = st.one_of(st.none(), json_like,
                   st.builds(lambda d: {"$and": [{"g": 1}] * d}, st.integers(0, 3)),
                   st.builds(lambda d: _nest(d), st.integers(1, 600)))
anything = st.one_of(scalars, json_like, names)


def _nest(depth: int) -> dict[str, Any]:
    w: dict[str, Any] = {"g": 1}
    for _ in range(depth):
        w = {"$and": [w]}
    return w


class World:
    """A space ``fz`` (dim 4, l2): v1 open with a1, a2 in p1 and b1 in p2; v2 sealed; alias live -> v1."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.hub = embcache.connect(url, refresh_interval=0)
        self.build()

    def build(self) -> None:
        with redis.Redis.from_url(self.url) as r:
            r.flushall()
        self.hub.close()
        self.hub = embcache.connect(self.url, refresh_interval=0)
        space = self.hub.create_space("fz", dim=DIM, metric="l2")
        v1, v2 = space.create_version(), space.create_version()
        v1.upsert(["a1", "a2"], np.eye(DIM, dtype=np.float32)[:2], [{"g": 1}, None], partition="p1")
        v1.upsert(["b1"], np.eye(DIM, dtype=np.float32)[2:3], partition="p2")
        v2.upsert(["s1"], np.eye(DIM, dtype=np.float32)[3:])
        v2.seal()
        space.set_alias("live", v1)
        self.hub.grant("fzreader", space="fz")
        self.before = snapshot_server(self.url)

    def objects(self) -> tuple[embcache.Hub, embcache.Space, embcache.Version]:
        space = self.hub.space("fz")
        return self.hub, space, space.version("v1")


@pytest.fixture(scope="module")
def fuzz_world(redis_server) -> World:  # noqa: ANN001
    with redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
    w = World(redis_server.url)
    yield w
    w.hub.close()
    with redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
        from tests.servers import reset_acl

        reset_acl(r)


# (name, writes, strategy of (args, kwargs), how to call it on (hub, space, version))
CALLS: list[tuple[str, bool, Any, Callable[..., Any]]] = [
    ("Hub.create_space", True, st.tuples(names, anything, anything, anything, anything),
     lambda h, s, v, a: h.create_space(a[0], a[1], a[2], M=a[3], ef=a[4])),
    ("Hub.space", False, names, lambda h, s, v, a: h.space(a)),
    ("Hub.drop_space", True, names, lambda h, s, v, a: h.drop_space(a) if a != "fz" else None),
    ("Hub.grant", True, st.tuples(names, names, anything, st.one_of(anything, ids)),
     lambda h, s, v, a: h.grant(a[0], space=a[1], role=a[2], partitions=a[3])),
    ("Hub.revoke", True, st.tuples(names, names), lambda h, s, v, a: h.revoke(a[0], space=a[1])),
    ("Hub.rotate", True, names, lambda h, s, v, a: h.rotate(a)),
    ("Space.create_version", True, st.tuples(names, anything),
     lambda h, s, v, a: s.create_version(a[0], description=a[1])),
    ("Space.version", False, names, lambda h, s, v, a: s.version(a)),
    ("Space.set_alias", True, st.tuples(names, names), lambda h, s, v, a: s.set_alias(a[0], a[1])),
    ("Space.rollback", True, names, lambda h, s, v, a: s.rollback(a)),
    ("Space.drop_version", True, names, lambda h, s, v, a: s.drop_version(a)),
    ("Space.alias_history", False, names, lambda h, s, v, a: s.alias_history(a)),
    ("Space.query", False, st.tuples(arrays, anything, wheres),
     lambda h, s, v, a: s.query(a[0], a[1], where=a[2])),
    ("Version.upsert", True, st.tuples(ids, arrays, st.one_of(st.none(), json_like, st.lists(json_like, max_size=3)),
                                       names),
     lambda h, s, v, a: v.upsert(a[0], a[1], a[2], partition=a[3])),
    ("Version.delete", True, st.tuples(ids, st.one_of(st.none(), names)),
     lambda h, s, v, a: v.delete(a[0], partition=a[1])),
    ("Version.get", False, st.tuples(ids, anything, st.one_of(st.none(), names, ids)),
     lambda h, s, v, a: v.get(a[0], include=a[1], partitions=a[2])),
    ("Version.count", False, st.one_of(st.none(), names), lambda h, s, v, a: v.count(a)),
    ("Version.ids", False, st.tuples(st.one_of(st.none(), names), anything),
     lambda h, s, v, a: list(v.ids(a[0], batch=a[1]))),
    ("Version.query", False,
     st.tuples(arrays, anything, st.one_of(st.none(), names, ids), wheres, anything, anything, anything),
     lambda h, s, v, a: v.query(a[0], a[1], partitions=a[2], where=a[3], ef=a[4], consistency=a[5], include=a[6])),
    ("Version.query_by_id", False, st.tuples(ids, anything, st.one_of(st.none(), names, ids), wheres, anything),
     lambda h, s, v, a: v.query_by_id(a[0], a[1], partitions=a[2], where=a[3], consistency=a[4])),
    ("Version.build", True, anything, lambda h, s, v, a: v.build(wait=False, timeout=a)),
]


@pytest.mark.parametrize("name,writes,strategy,call", CALLS, ids=[c[0] for c in CALLS])
def test_fuzz_public_call(fuzz_world: World, name: str, writes: bool, strategy: Any, call: Callable[..., Any]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                     HealthCheck.data_too_large])
    @given(strategy)
    def run(args: Any) -> None:
        hub, space, version = fuzz_world.objects()
        try:
            call(hub, space, version, args)
        except EmbcacheError:
            assert_same(fuzz_world.before, snapshot_server(fuzz_world.url), f"{name}{args!r:.200}")
            return
        except Exception as exc:  # noqa: BLE001 - the property: nothing but the embcache tree
            raise AssertionError(f"{name}({args!r:.300}) raised {type(exc).__name__}: {exc}") from exc
        if writes:
            fuzz_world.build()  # valid input that wrote something: start the next example afresh
        else:
            assert_same(fuzz_world.before, snapshot_server(fuzz_world.url), f"{name}{args!r:.200} (a read)")

    run()
