"""The test servers themselves: the fixtures give what they promise, and the empty-database guard works."""

from __future__ import annotations

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster

from embcache.redis.server import RedisServer
from tests.datasets import unique_ids
from tests.servers import (
    CLUSTER_SLOTS,
    Cluster,
    assert_empty,
    client_for,
    ensure_running,
    is_cluster_url,
    reset_acl,
    start_standalone,
)

# --- standalone -------------------------------------------------------------------------------------------

def test_standalone_answers_with_aof_on(redis_server: RedisServer, redis_url: str) -> None:
    assert redis_url == redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        assert r.ping()
        assert r.config_get("appendonly") == {"appendonly": "yes"}
        assert r.info("cluster")["cluster_enabled"] == 0
    assert not is_cluster_url(redis_url)


@pytest.mark.parametrize("round_", [1, 2])
def test_redis_url_is_flushed_and_acl_reset_between_tests(redis_url: str, round_: int) -> None:
    # Both rounds leave a key and an ACL user behind; whichever runs second proves the fixture cleaned up.
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        assert r.dbsize() == 0
        assert r.acl_users() == ["default"]
        r.set(f"leftover:{round_}", "x")
        r.acl_setuser("leftover-user", enabled=True, passwords=["+pw"], keys=["leftover:*"], commands=["+get"])


def test_reset_acl_keeps_only_a_stock_default_user(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        r.acl_setuser("alice", enabled=True, passwords=["+pw"], keys=["a:*"], commands=["+get"])
        r.acl_setuser("bob", enabled=False)
        r.acl_setuser("default", enabled=True, commands=["-flushall"])  # a test may also narrow the default user
        reset_acl(r)
        assert r.acl_list() == ["user default on nopass ~* &* +@all"]  # the stock default user
        r.flushall()  # allowed again


def test_assert_empty_refuses_a_server_with_data(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as r:
        assert_empty(r, "the empty server")
        r.set("someone-elses-data", "1")
        with pytest.raises(AssertionError, match=r"refusing to run the tests against the busy server: its DBSIZE is 1"):
            assert_empty(r, "the busy server")


def test_start_standalone_and_ensure_running_restart_a_killed_server(tmp_path) -> None:
    server = start_standalone(tmp_path / "own")
    try:
        assert server.url.startswith("redis://127.0.0.1:")
        assert ensure_running(server) is False
        server.kill()
        assert not server.ping()
        assert ensure_running(server) is True
        assert server.ping()
    finally:
        server.stop()
    assert not server.ping()


# --- cluster ----------------------------------------------------------------------------------------------

@pytest.mark.cluster
def test_cluster_has_three_masters_and_all_slots(redis_cluster: Cluster, cluster_url: str) -> None:
    assert cluster_url == redis_cluster.url == f"redis://127.0.0.1:{redis_cluster.ports[0]}/0"
    assert len(set(redis_cluster.ports)) == 3 and len(redis_cluster.urls) == 3
    assert is_cluster_url(cluster_url)
    with RedisCluster.from_url(cluster_url) as rc:
        masters = rc.get_primaries()
        assert sorted(n.port for n in masters) == sorted(redis_cluster.ports)
        assert rc.get_replicas() == []
    for url in redis_cluster.urls:
        with redis.Redis.from_url(url, decode_responses=True) as node:
            info = node.cluster("info")
            assert info["cluster_state"] == "ok"
            assert int(info["cluster_slots_assigned"]) == CLUSTER_SLOTS
            assert int(info["cluster_size"]) == 3  # masters serving slots
            assert node.config_get("appendonly") == {"appendonly": "no"}


@pytest.mark.cluster
def test_cluster_hash_tags_spread_keys_over_nodes(redis_cluster: Cluster, cluster_url: str) -> None:
    tags = [f"p{i}" for i in range(30)]
    with RedisCluster.from_url(cluster_url) as rc:
        for tag in tags:
            rc.set(f"emb:{{{tag}}}:a", "1")
            rc.set(f"emb:{{{tag}}}:b", "2")
        owner = {tag: rc.get_node_from_key(f"emb:{{{tag}}}:a").port for tag in tags}
        # keys sharing a hash tag share a slot, hence a node
        assert all(rc.keyslot(f"emb:{{{t}}}:a") == rc.keyslot(f"emb:{{{t}}}:b") for t in tags)
        assert rc.dbsize(target_nodes=RedisCluster.PRIMARIES) == 2 * len(tags)
    # Each node really holds the keys of its tags, and only those: different tags landed on different nodes.
    per_node = {}
    for port, url in zip(redis_cluster.ports, redis_cluster.urls):
        with redis.Redis.from_url(url, decode_responses=True) as node:
            per_node[port] = set(node.keys("*"))
    assert all(per_node.values()), f"some node got no key: { {p: len(k) for p, k in per_node.items()} }"
    for tag, port in owner.items():
        assert {f"emb:{{{tag}}}:a", f"emb:{{{tag}}}:b"} <= per_node[port]


@pytest.mark.cluster
@pytest.mark.parametrize("round_", [1, 2])
def test_cluster_url_is_flushed_between_tests(redis_cluster: Cluster, cluster_url: str, round_: int) -> None:
    with RedisCluster.from_url(cluster_url) as rc:
        assert rc.dbsize(target_nodes=RedisCluster.PRIMARIES) == 0
        for i in range(20):
            rc.set(f"{{t{i}}}:leftover:{round_}", "x")
    for url in redis_cluster.urls:  # ACL users are per node: Redis Cluster does not propagate them
        with redis.Redis.from_url(url, decode_responses=True) as node:
            assert node.acl_users() == ["default"]
            node.acl_setuser("leftover-user", enabled=True, passwords=["+pw"], keys=["x"])


@pytest.mark.cluster
def test_assert_empty_counts_every_cluster_node(cluster_url: str) -> None:
    with RedisCluster.from_url(cluster_url) as rc:
        assert_empty(rc, "the empty cluster")
        rc.set("{z}key", "1")  # lands on one node only
        with pytest.raises(AssertionError, match="DBSIZE is 1"):
            assert_empty(rc, "the cluster")


# --- both -------------------------------------------------------------------------------------------------

def test_any_redis_url_runs_on_both_kinds(any_redis_url: str, request: pytest.FixtureRequest) -> None:
    kind = request.node.callspec.params["any_redis_url"]
    client = client_for(any_redis_url)
    try:
        assert isinstance(client, RedisCluster) == (kind == "cluster")
        assert_empty(client, any_redis_url)
        client.set("{space}:k", b"\x00\x01")
        assert client.get("{space}:k") == b"\x00\x01"
    finally:
        client.close()


# --- data -------------------------------------------------------------------------------------------------

def test_minilm_subset_shapes_and_ids(minilm_subset) -> None:
    s = minilm_subset
    assert s.base.shape == (5000, 384) and s.base.dtype == np.float32
    assert s.queries.shape == (100, 384) and s.queries.dtype == np.float32
    assert len(s.ids) == len(set(s.ids)) == 5000
    assert len(s.metadatas) == 5000 and set(s.metadatas[0]) == {"section", "short"}
    assert np.all(np.diff(s.rows) > 0)
    np.testing.assert_allclose(np.linalg.norm(s.base, axis=1), 1.0, atol=2e-3)
    # real embeddings: a query's nearest base descriptions are about something related, not random
    nn = s.exact_neighbours(k=10)
    assert nn.shape == (100, 10)
    unit = s.base / np.linalg.norm(s.base, axis=1, keepdims=True)
    sims = (s.queries / np.linalg.norm(s.queries, axis=1, keepdims=True)) @ unit.T
    assert np.all(np.diff(np.take_along_axis(sims, nn, axis=1), axis=1) <= 1e-6)
    assert float(np.median(sims[np.arange(100), nn[:, 0]])) > 0.5 > float(np.median(sims))


def test_unique_ids_is_deterministic() -> None:
    assert unique_ids(["a", "b", "a", "a"], [3, 5, 7, 9]) == ["a", "b", "a#7", "a#9"]

