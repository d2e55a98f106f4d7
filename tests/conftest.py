"""Fixtures: real Redis servers (standalone and a 3-master Cluster) on free ports, and the real-data subsets.

The server logic lives in ``tests/servers.py`` and the data loaders in ``tests/datasets.py``; this file only
wires them into fixtures.

| fixture | scope | yields |
|---|---|---|
| ``redis_server`` | session | :class:`embcache.redis.server.RedisServer`, standalone, AOF on, loopback TCP |
| ``redis_url`` | function | its URL (``redis://127.0.0.1:<port>/0``); FLUSHALL before, ACL reset after |
| ``redis_cluster`` | session | :class:`tests.servers.Cluster` (``.url``, ``.urls``, ``.ports``, ``.client()``) |
| ``cluster_url`` | function | the cluster's URL; FLUSHALL on every master before, ACL reset on every node after |
| ``any_redis_url`` | function | ``redis_url`` or ``cluster_url``: params ``standalone`` / ``cluster`` |
| ``shared_data`` | session | ``Path`` of ``../shared/data`` (fails if it is absent) |
| ``minilm_subset`` | session | :class:`tests.datasets.MiniLMSubset` (the shipped 5,000-vector subset) |

FLUSHALL leaves Redis Functions loaded with FUNCTION LOAD in place, on purpose (they are code, not data).
The cluster is started only when a test asks for it; ``-m "not cluster"`` skips those tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from embcache.redis.server import RedisServer
from tests.datasets import MiniLMSubset, load_minilm_subset
from tests.servers import Cluster, assert_empty, ensure_running, reset_acl, start_cluster, start_standalone

REPO_ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.workers_fixtures"]  # real RQ worker processes: the `workers` and `hubs` fixtures


@pytest.fixture(scope="session", autouse=True)
def _embedded_servers_do_not_linger() -> Iterator[None]:
    """Every embedded server a test starts stops as soon as it is unused (the CLI's 600 s linger would let one
    outlive the test session: `embcache` called in-process sets it). Tests of the linger set their own."""
    import os

    before = os.environ.get("EMBCACHE_LINGER")
    os.environ["EMBCACHE_LINGER"] = "0"
    yield
    if before is None:
        os.environ.pop("EMBCACHE_LINGER", None)
    else:
        os.environ["EMBCACHE_LINGER"] = before


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A standalone redis-server (AOF on) for the whole session, on a free port in a tmp dir."""
    server = start_standalone(tmp_path_factory.mktemp("redis"))
    try:
        with redis.Redis.from_url(server.url) as client:
            assert_empty(client, f"the standalone test server at {server.url}")
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The standalone server's URL; its data is flushed before the test and its ACL users reset after."""
    if ensure_running(redis_server):
        # A test killed the shared server (tests that crash servers should start their own): it is back, so
        # one such test does not fail every test after it.
        warnings.warn(f"the session redis-server at {redis_server.url} was down; restarted it", stacklevel=1)
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    yield redis_server.url
    if redis_server.ping():
        with redis.Redis.from_url(redis_server.url) as client:
            reset_acl(client)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A local Redis Cluster of 3 masters (no replicas, AOF off) for the whole session."""
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"), n=3)
    try:
        with cluster.client() as client:
            assert_empty(client, f"the test cluster at {cluster.urls}")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: Cluster) -> Iterator[str]:
    """The cluster's URL; every master is flushed before the test and every node's ACL users reset after."""
    redis_cluster.flushall()
    yield redis_cluster.url
    redis_cluster.reset_acl()


@pytest.fixture(params=["standalone", pytest.param("cluster", marks=pytest.mark.cluster)],
                ids=["standalone", "cluster"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """Runs the test twice: on the standalone server and on the cluster (started only when needed)."""
    return request.getfixturevalue("redis_url" if request.param == "standalone" else "cluster_url")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repo (the full data sets; present in CI, not in a clean clone)."""
    path = (REPO_ROOT / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.fail(f"shared data directory {path} not found: this test needs the full data sets in ../shared/data "
                    "(tests/data/ holds the shipped subsets)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def minilm_subset() -> MiniLMSubset:
    """The shipped debian-minilm subset: ``.base`` (5000x384 float32), ``.ids``, ``.metadatas``, ``.queries``."""
    return load_minilm_subset()
