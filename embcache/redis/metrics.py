"""Prometheus metrics of the client and the worker: off by default, one call (or one flag) turns them on.

Client::

    import embcache.metrics
    embcache.metrics.enable(port=9108)   # record, and serve http://127.0.0.1:9108/metrics (loopback only)
    embcache.metrics.enable(port=9108, addr="0.0.0.0")   # ... on every interface (or EMBCACHE_METRICS_ADDR)
    embcache.metrics.enable()            # record only, into prometheus_client's default REGISTRY (your exporter)

Worker: ``embcache worker --metrics-port 9109`` (or ``EMBCACHE_METRICS_PORT=9109``).

Needs ``prometheus_client`` (``pip install 'embcache[metrics]'``); nothing imports it until :func:`enable`.
While disabled every hook in embcache is one ``if metrics.ENABLED:`` test (tens of nanoseconds) and no metric
object exists. See ``docs/metrics.md`` for the names and labels.

``embcache worker`` runs builds in its own process by default; with ``--fork`` (RQ's forked work-horses) a
process forked after :func:`enable` sends what it records to the process that enabled the metrics (over a
pipe, one small message per event), so the builds show on the worker's exporter either way.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import InvalidInput
from ..core.keys import PartitionKeys, tag_names

__all__ = ["ENABLED", "enable", "disable", "observe_query", "observe_snapshot_load", "observe_build",
           "set_queue_depth", "set_index_lag"]

log = logging.getLogger("embcache.metrics")

ENABLED = False  # read by every hook: ``if metrics.ENABLED: metrics.observe_...(...)``

QUERY_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LOAD_BUCKETS = (1e-3, 5e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BUILD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
QUEUE_DEPTH_EVERY = 1.0  # seconds between two LLENs of the queue (the dispatcher ticks every 50 ms)
LAG_CAP = 1000  # log entries counted exactly per partition; past it the lag is XLEN (an upper bound)


@dataclass
class _Metrics:
    registry: Any
    query_seconds: Any
    queries: Any
    snapshot_loads: Any
    snapshot_load_seconds: Any
    snapshot_age: Any
    build_seconds: Any
    queue_depth: Any
    index_lag: Any
    overlay_items: Any
    overlay_bytes: Any
    overlay_unindexed: Any
    # (space, consistency) -> its (histogram, counter) children
    query_children: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict)


_m: _Metrics | None = None  # the metric objects; None until enable()
_by_registry: dict[int, _Metrics] = {}
_server: Any = None
_pipe_w: int | None = None  # forked children write their observations here
_in_child = False  # set in a process forked after enable(): forward to the parent instead of recording
_last_queue_depth = 0.0
_lock = threading.Lock()


def _create(registry: Any) -> _Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    kw = {"registry": registry}
    return _Metrics(
        registry=registry,
        query_seconds=Histogram("embcache_query_seconds", "Query latency (Version.query/query_by_id), seconds",
                                ["space", "consistency"], buckets=QUERY_BUCKETS, **kw),
        queries=Counter("embcache_queries", "Queries answered", ["space", "consistency"], **kw),
        snapshot_loads=Counter("embcache_snapshot_loads", "Snapshot loads by the client cache",
                               ["space", "result"], **kw),
        snapshot_load_seconds=Histogram("embcache_snapshot_load_seconds", "Time to fetch and verify a snapshot",
                                        ["space"], buckets=LOAD_BUCKETS, **kw),
        snapshot_age=Gauge("embcache_snapshot_age_seconds", "Age of the snapshot this client serves",
                           ["space", "version", "partition"], **kw),
        build_seconds=Histogram("embcache_build_seconds", "Snapshot build duration in the worker, seconds",
                                ["space", "kind"], buckets=BUILD_BUCKETS, **kw),
        queue_depth=Gauge("embcache_queue_depth", "Jobs waiting in the RQ queue", ["queue"], **kw),
        index_lag=Gauge("embcache_index_lag_entries", "Change-log entries not yet in the published snapshot",
                        ["space", "version", "partition"], **kw),
        overlay_items=Gauge("embcache_overlay_items", "Followed changes this client serves on top of its snapshot",
                            ["space", "version", "partition"], **kw),
        overlay_bytes=Gauge("embcache_overlay_bytes", "Memory of the followed overlay", ["space", "version",
                                                                                          "partition"], **kw),
        overlay_unindexed=Gauge("embcache_overlay_unindexed_rows",
                                "Overlay rows past this client's overlay index (scanned by every query)",
                                ["space", "version", "partition"], **kw),
    )


def enable(port: int | None = None, registry: Any = None, *, addr: str | None = None) -> int | None:
    """Turn the metrics on (idempotent). They go into ``registry`` (default: prometheus_client's ``REGISTRY``);
    with ``port``, also serve them at ``http://addr:port/metrics`` (``port=0``: any free port). ``addr`` defaults
    to ``EMBCACHE_METRICS_ADDR``, else ``127.0.0.1``: metrics name spaces and partitions, so they are served to
    other machines only when asked (``addr="0.0.0.0"``, e.g. in a container scraped from outside). Returns the
    port served, or None. :class:`~embcache.errors.InvalidInput` if prometheus_client is not installed."""
    global ENABLED, _m, _server, _pipe_w, _in_child
    if addr is None:
        addr = os.environ.get("EMBCACHE_METRICS_ADDR") or "127.0.0.1"
    try:
        import prometheus_client
    except ImportError:
        raise InvalidInput(
            "embcache metrics need prometheus_client: pip install 'embcache[metrics]' (or prometheus-client)"
        ) from None
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        raise InvalidInput(f"port must be an integer in [0, 65535], got {port!r}")
    registry = prometheus_client.REGISTRY if registry is None else registry
    served = None
    with _lock:
        m = _by_registry.get(id(registry))
        if m is None or m.registry is not registry:
            m = _by_registry[id(registry)] = _create(registry)
        if _in_child or _pipe_w is None:
            _in_child = False
            _start_forwarding()
        if port is not None:
            started = prometheus_client.start_http_server(port, addr=addr, registry=registry)
            server = started[0] if isinstance(started, tuple) else None
            if _server is not None:
                _server.shutdown()
            _server = server
            served = server.server_address[1] if server is not None else port
            log.info("serving embcache metrics on http://%s:%d/metrics", addr, served)
        _m = m
        ENABLED = True
    return served


def disable() -> None:
    """Stop recording (and serving, if :func:`enable` started the exporter). The metric objects are kept."""
    global ENABLED, _server
    with _lock:
        ENABLED = False
        if _server is not None:
            _server.shutdown()
            _server.server_close()
            _server = None


# hooks: called only under ``if metrics.ENABLED:`` ------------------------------------------------------------
def observe_query(space: str, consistency: str, seconds: float) -> None:
    """One query (any number of query vectors) answered in ``seconds``."""
    if _in_child:
        return _forward("query", space, consistency, seconds)
    m = _m
    assert m is not None  # ENABLED implies enable() ran
    children = m.query_children.get((space, consistency))
    if children is None:  # labels() costs a lock and a dict lookup of its own: keep the children
        children = m.query_children[(space, consistency)] = (m.query_seconds.labels(space, consistency),
                                                             m.queries.labels(space, consistency))
    children[0].observe(seconds)
    children[1].inc()


def observe_snapshot_load(tag: str, result: str, seconds: float, built_at: float | None = None) -> None:
    """The client cache loaded (``ok``) or refused (``corrupt``) the snapshot of partition ``tag``
    (``space/version/partition``); ``built_at`` (epoch seconds) sets the partition's snapshot age."""
    if _in_child:
        return _forward("snapshot_load", tag, result, seconds, built_at)
    m = _m
    assert m is not None  # ENABLED implies enable() ran
    space, version, partition = tag_names(tag)
    m.snapshot_loads.labels(space, result).inc()
    m.snapshot_load_seconds.labels(space).observe(seconds)
    if built_at is not None:
        m.snapshot_age.labels(space, version, partition).set_function(lambda: time.time() - built_at)


def observe_build(space: str, kind: str, seconds: float) -> None:
    """A worker's build (``full``, ``incremental`` or ``unchanged``) of a partition of ``space``."""
    if _in_child:
        return _forward("build", space, kind, seconds)
    assert _m is not None
    _m.build_seconds.labels(space, kind).observe(seconds)


def set_queue_depth(queue: Any) -> None:
    """The RQ queue's length (one LLEN, at most every ``QUEUE_DEPTH_EVERY`` seconds)."""
    global _last_queue_depth
    now = time.monotonic()
    if now - _last_queue_depth < QUEUE_DEPTH_EVERY:
        return
    _last_queue_depth = now
    assert _m is not None
    _m.queue_depth.labels(queue.name).set(queue.count)


def set_index_lag(pk: PartitionKeys, lag: int) -> None:
    """Partition ``pk`` has ``lag`` log entries its snapshot does not cover (``Store.unindexed``)."""
    space, version, partition = pk.names()
    assert _m is not None
    _m.index_lag.labels(space, version, partition).set(lag)


def set_overlay(tag: str, items: int, nbytes: int, unindexed: int) -> None:
    """The follower's overlay of partition ``tag`` (``space/version/partition``): live items, bytes, rows its
    index does not cover yet."""
    space, version, partition = tag.split("/", 2)
    m = _m
    if m is None:
        return
    m.overlay_items.labels(space, version, partition).set(items)
    m.overlay_bytes.labels(space, version, partition).set(nbytes)
    m.overlay_unindexed.labels(space, version, partition).set(unindexed)


# forked children (RQ work-horses) -> the process that enabled the metrics ------------------------------------
_RECORD: dict[str, Callable[..., None]] = {"query": observe_query, "snapshot_load": observe_snapshot_load,
                                           "build": observe_build}


def _forward(kind: str, *args: Any) -> None:
    if _pipe_w is None:
        return
    msg = json.dumps([kind, *args]).encode() + b"\n"
    if len(msg) > 4096:  # PIPE_BUF: longer writes are not atomic
        return
    try:
        os.write(_pipe_w, msg)
    except OSError:  # the pipe is full (the parent is not reading) or gone: drop the observation
        pass


def _start_forwarding() -> None:
    global _pipe_w
    r, w = os.pipe()
    os.set_blocking(w, False)
    _pipe_w = w
    threading.Thread(target=_read_forwarded, args=(r,), name="embcache-metrics-fork", daemon=True).start()


def _read_forwarded(fd: int) -> None:
    with os.fdopen(fd, "rb") as f:
        for line in f:
            if _in_child:  # this copy of the thread cannot run in a child, but be safe
                return
            try:
                kind, *args = json.loads(line)
                if ENABLED:
                    _RECORD[kind](*args)
            except Exception:  # a bad message must not end the reader
                log.debug("dropped a forwarded metric %r", line, exc_info=True)


def _after_fork_in_child() -> None:
    global _in_child
    _in_child = True


os.register_at_fork(after_in_child=_after_fork_in_child)
