"""Throw-away Redis servers for the tests, benchmarks and scripts: standalone and a local Redis Cluster.

Plain functions and classes, no pytest: ``tests/conftest.py`` wires them into fixtures, and a benchmark or a
script can use them directly (from the repo root, ``from tests.servers import start_cluster``)::

    with start_cluster(tmp_dir) as cluster:          # 3 masters on free ports, all 16384 slots assigned
        rc = redis.RedisCluster.from_url(cluster.url)

Every server listens only on 127.0.0.1, on ports that were free a moment ago (a start that loses the race for
its port is retried on new ports), and keeps its data, log and ``nodes.conf`` in its own directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster

from embcache.core.errors import ServerError
from embcache.redis.server import RedisServer, find_redis_server, free_port

__all__ = [
    "CLUSTER_SLOTS",
    "Cluster",
    "assert_empty",
    "client_for",
    "ensure_running",
    "is_cluster_url",
    "reset_acl",
    "start_cluster",
    "start_standalone",
]

CLUSTER_SLOTS = 16384
_START_ATTEMPTS = 3


def assert_empty(client: redis.Redis | RedisCluster, where: str) -> None:
    """Refuse to use a server that holds data: the tests FLUSHALL it, and it may be someone else's.

    For a :class:`RedisCluster` the DBSIZE of every master is summed (redis-py 8's ``RedisCluster.dbsize()``
    asks one node only, unless told ``target_nodes=RedisCluster.PRIMARIES``). Raises :class:`AssertionError`.
    """
    if isinstance(client, RedisCluster):
        size = int(client.dbsize(target_nodes=RedisCluster.PRIMARIES))
    else:
        size = int(client.dbsize())
    assert size == 0, (
        f"refusing to run the tests against {where}: its DBSIZE is {size}, not 0. The test suite runs FLUSHALL "
        "on its servers, so it only uses servers it finds empty (is something else listening on that port?)"
    )


def reset_acl(client: redis.Redis) -> None:
    """Delete every ACL user but ``default``, and give ``default`` back its stock rights (on, nopass, all)."""
    for user in client.acl_users():
        name = user.decode() if isinstance(user, bytes) else user
        if name != "default":
            client.acl_deluser(name)
    # Not "reset": it would add "sanitize-payload", which the stock default user does not have.
    client.execute_command(
        "ACL", "SETUSER", "default", "on", "nopass", "resetkeys", "~*", "resetchannels", "&*", "allcommands",
        "clearselectors",
    )


def start_standalone(directory: str | os.PathLike[str], *, appendonly: bool = True, **kwargs: Any) -> RedisServer:
    """A started standalone :class:`RedisServer` on a free loopback TCP port, data in ``directory``."""
    last: Exception | None = None
    for _ in range(_START_ATTEMPTS):
        server = RedisServer(directory, port=free_port(), appendonly=appendonly, **kwargs)
        try:
            return server.start()
        except ServerError as exc:  # most likely the port was taken between free_port() and the bind
            server.stop()
            last = exc
    raise ServerError(f"could not start redis-server in {directory}: {last}")


def ensure_running(server: RedisServer) -> bool:
    """Restart ``server`` (same port and directory) if it does not answer; True when it had to."""
    if server.ping():
        return False
    server.stop()
    server.start()
    return True


def is_cluster_url(url: str) -> bool:
    """True when the server at ``url`` runs with ``cluster-enabled yes``."""
    client = redis.Redis.from_url(url)
    try:
        return str(client.info("cluster").get("cluster_enabled", 0)) == "1"
    finally:
        client.close()


def client_for(url: str, **kwargs: Any) -> redis.Redis | RedisCluster:
    """A redis-py client of the right kind for ``url``: :class:`RedisCluster` for a cluster node, else Redis."""
    if is_cluster_url(url):
        return RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


@dataclass
class Cluster:
    """A local Redis Cluster of masters without replicas, as :func:`start_cluster` returns it."""

    servers: list[RedisServer]
    bus_ports: list[int] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    @property
    def urls(self) -> list[str]:
        """One URL per node (each a master)."""
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        """The URL of the first node: enough for a cluster client to discover the others."""
        return self.servers[0].url

    def client(self, **kwargs: Any) -> RedisCluster:
        return RedisCluster.from_url(self.url, **kwargs)

    def node_clients(self) -> list[redis.Redis]:
        """A plain client per node (close them after use)."""
        return [redis.Redis.from_url(u) for u in self.urls]

    def flushall(self) -> None:
        """FLUSHALL on every master (loaded Redis Functions stay, as FLUSHALL leaves them)."""
        for node in self.node_clients():
            with node:
                node.flushall()

    def reset_acl(self) -> None:
        """:func:`reset_acl` on every node: Redis Cluster does not propagate ACL users between nodes."""
        for node in self.node_clients():
            with node:
                reset_acl(node)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def kill(self) -> None:
        for server in self.servers:
            server.kill()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _redis_cli() -> str:
    path = shutil.which("redis-cli") or os.path.join(os.path.dirname(find_redis_server()), "redis-cli")
    if not os.access(path, os.X_OK):
        raise ServerError("redis-cli was not found (on Debian/Ubuntu: apt-get install redis-tools)")
    return path


def _start_node(directory: Path, node_timeout_ms: int) -> tuple[RedisServer, int]:
    last: Exception | None = None
    for _ in range(_START_ATTEMPTS):
        # The cluster bus port defaults to port + 10000, which may be taken or over 65535: name one explicitly.
        bus = free_port()
        server = RedisServer(
            directory,
            port=free_port(),
            appendonly=False,
            extra_args=[
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-port", str(bus),
            ],
        )
        try:
            return server.start(), bus
        except ServerError as exc:
            server.stop()
            (directory / "nodes.conf").unlink(missing_ok=True)
            last = exc
    raise ServerError(f"could not start a cluster node in {directory}: {last}")


def _cluster_ready(clients: list[redis.Redis], n: int) -> tuple[bool, str]:
    """True when every node says ``cluster_state:ok`` with all slots assigned and agrees on the slot map."""
    layouts = []
    for client in clients:
        info = client.cluster("info")
        if (
            info.get("cluster_state") != "ok"
            or int(info.get("cluster_slots_assigned", 0)) != CLUSTER_SLOTS
            or int(info.get("cluster_known_nodes", 0)) != n
        ):
            return False, f"{client}: {info}"
        slots = client.execute_command("CLUSTER", "SLOTS")
        layouts.append(sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in slots))
    if any(layout != layouts[0] for layout in layouts):
        return False, f"nodes disagree on the slot map: {layouts}"
    return True, "ok"


def start_cluster(
    base_dir: str | os.PathLike[str], n: int = 3, *, node_timeout_ms: int = 5000, timeout: float = 60.0
) -> Cluster:
    """Start ``n`` (at least 3) cluster-enabled masters in ``base_dir/node<i>`` and join them into one cluster.

    Returns when every node reports ``cluster_state:ok``, knows all ``n`` nodes, has all 16384 slots assigned
    and agrees with the others on the slot map. Stops what it started on any failure.
    """
    if n < 3:
        raise ValueError("redis-cli --cluster create needs at least 3 masters")
    base = Path(base_dir)
    cluster = Cluster(servers=[])
    try:
        for i in range(n):
            server, bus = _start_node(base / f"node{i}", node_timeout_ms)
            cluster.servers.append(server)
            cluster.bus_ports.append(bus)
        argv = [_redis_cli(), "--cluster", "create", *[f"127.0.0.1:{p}" for p in cluster.ports],
                "--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        # redis-cli --cluster create may exit 0 after printing [ERR]; check both.
        if done.returncode != 0 or "[ERR]" in done.stdout:
            raise ServerError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        clients = [redis.Redis.from_url(u, decode_responses=True) for u in cluster.urls]
        try:
            deadline = time.monotonic() + timeout
            while True:
                ready, why = _cluster_ready(clients, n)
                if ready:
                    break
                if time.monotonic() > deadline:
                    raise ServerError(f"cluster not ready after {timeout}s: {why}")
                time.sleep(0.05)
        finally:
            for c in clients:
                c.close()
        return cluster
    except BaseException:
        cluster.stop()
        raise


def descendants(root: int) -> list[int]:
    """Pids of every live process below ``root`` (from /proc); tests and benchmarks use it to stop workers."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])  # the name may hold spaces and parentheses
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
