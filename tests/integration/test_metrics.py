"""Prometheus metrics (embcache.metrics): off by default, one call turns them on in the client, one flag in the
worker. Real Redis, real queries, a real ``python -m workers`` process scraped over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import timeit
import urllib.request

import numpy as np
import pytest
import redis

from embcache.core.errors import InvalidInput
from embcache.redis import metrics
from embcache.redis.snapshots import read_manifest
from tests.workers_fixtures import REPO_ROOT, random_unit, wait_for

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

DIM = 16


@pytest.fixture
def registry():  # noqa: ANN201
    """Metrics on, into a fresh registry; off again after the test."""
    reg = prometheus_client.CollectorRegistry()
    metrics.enable(registry=reg)
    yield reg
    metrics.disable()


def _value(reg, name: str, **labels: str) -> float:  # noqa: ANN001
    return reg.get_sample_value(name, labels) or 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` from a running exporter; {} while it does not answer."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _get(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_disabled_by_default_creates_and_records_nothing(redis_url, hubs, monkeypatch) -> None:  # noqa: ANN001
    # a fresh process: queries run, nothing imports prometheus_client, no metric object exists
    code = textwrap.dedent(f"""
        import sys, numpy as np, embcache
        from embcache.redis import metrics
        hub = embcache.connect({redis_url!r})
        v = hub.create_space("off", dim=4).create_version()
        v.upsert(["a", "b"], np.eye(4, dtype=np.float32)[:2])
        for c in ("eventual", "session", "strong"):
            assert v.query(np.eye(4, dtype=np.float32)[:1], n_results=1, consistency=c).ids == [["a"]]
        assert metrics.ENABLED is False and metrics._m is None and not metrics._by_registry
        assert "prometheus_client" not in sys.modules
        hub.close()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr

    # in this process too: while disabled no hook is called at all
    assert metrics.ENABLED is False

    def boom(*a: object) -> None:
        raise AssertionError("a metrics hook ran while disabled")

    for name in ("observe_query", "observe_snapshot_load", "observe_build", "set_queue_depth", "set_index_lag"):
        monkeypatch.setattr(metrics, name, boom)
    v = hubs(redis_url).create_space("off2", dim=4).create_version()
    v.upsert(["a"], np.eye(4, dtype=np.float32)[:1])
    assert v.query(np.eye(4, dtype=np.float32)[:1], n_results=1, consistency="strong").ids == [["a"]]


def test_enable_without_prometheus_client_is_a_clear_error(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import prometheus_client -> ImportError
    with pytest.raises(InvalidInput, match=r"embcache\[metrics\]"):
        metrics.enable()
    assert metrics.ENABLED is False


def test_disabled_hook_overhead_is_well_under_a_microsecond() -> None:
    assert metrics.ENABLED is False
    n = 1_000_000
    setup = "import time\nfrom embcache import metrics"
    hook = ("t0 = time.perf_counter()\n"  # the hook as placed in Version._search
            "if metrics.ENABLED:\n    metrics.observe_query('s', 'eventual', time.perf_counter() - t0)")
    per_call = min(timeit.repeat(hook, setup, number=n, repeat=5)) / n
    baseline = min(timeit.repeat("pass", setup, number=n, repeat=5)) / n
    print(f"disabled query hook: {(per_call - baseline) * 1e9:.0f} ns per call")
    assert per_call - baseline < 0.5e-6


def test_query_metrics_by_space_and_consistency(redis_url, hubs, registry) -> None:  # noqa: ANN001
    v = hubs(redis_url).create_space("qm", dim=DIM).create_version()
    x = random_unit(50, DIM, 1)
    v.upsert([f"i{i}" for i in range(50)], x)
    for consistency, n in (("eventual", 2), ("session", 3), ("strong", 1)):
        for _ in range(n):
            v.query(x[:4], n_results=3, consistency=consistency)
    v.query_by_id(["i0"], n_results=2, consistency="strong")
    for consistency, n in (("eventual", 2), ("session", 3), ("strong", 2)):
        labels = {"space": "qm", "consistency": consistency}
        assert _value(registry, "embcache_queries_total", **labels) == n
        assert _value(registry, "embcache_query_seconds_count", **labels) == n
        assert 0 < _value(registry, "embcache_query_seconds_sum", **labels) < 10
        assert _value(registry, "embcache_query_seconds_bucket", le="+Inf", **labels) == n
    assert _value(registry, "embcache_query_seconds_bucket", space="qm", consistency="eventual", le="2.5e-05") <= 2
    # no snapshot was published: nothing was loaded from one
    assert _value(registry, "embcache_snapshot_loads_total", space="qm", result="ok") == 0


def test_dispatcher_sets_queue_depth_and_index_lag(redis_url, hubs, registry, monkeypatch) -> None:  # noqa: ANN001
    from rq import Queue

    from embcache.redis.dispatcher import QUEUE_NAME, Dispatcher

    monkeypatch.setattr(metrics, "QUEUE_DEPTH_EVERY", 0.0)
    hub = hubs(redis_url)
    v = hub.create_space("lag", dim=DIM).create_version()
    for i in range(3):  # three log entries
        v.upsert([f"a{i}"], random_unit(1, DIM, i))
    v.upsert(["b"], random_unit(1, DIM, 9), partition="p2")
    queue = Queue(QUEUE_NAME, connection=redis.Redis.from_url(redis_url))
    d = Dispatcher(hub.store, queue)
    d.reconcile()
    assert _value(registry, "embcache_index_lag_entries", space="lag", version=v.name, partition="default") == 3
    assert _value(registry, "embcache_index_lag_entries", space="lag", version=v.name, partition="p2") == 1
    assert d.tick() == 2  # no worker: both builds stay queued
    d.tick()
    assert _value(registry, "embcache_queue_depth", queue=QUEUE_NAME) == 2


def test_forked_child_records_into_the_parent(registry) -> None:  # noqa: ANN001
    pid = os.fork()
    if pid == 0:  # like an RQ work-horse
        try:
            metrics.observe_build("forked", "full", 0.2)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    wait_for(lambda: _value(registry, "embcache_build_seconds_count", space="forked", kind="full") == 1, 5,
             what="the child's build observation")
    assert _value(registry, "embcache_build_seconds_sum", space="forked", kind="full") == pytest.approx(0.2)


@pytest.mark.slow
def test_worker_exposes_build_metrics_and_client_snapshot_loads(redis_url, workers, hubs, registry) -> None:  # noqa: ANN001
    hub = hubs(redis_url)
    v = hub.create_space("wm", dim=DIM, metric="l2").create_version()
    x = random_unit(300, DIM, 3)
    v.upsert([f"i{i}" for i in range(300)], x)
    port = _free_port()
    worker = workers.start(redis_url, env={"EMBCACHE_METRICS_PORT": str(port)})
    v.build(timeout=60)
    v.upsert(["extra"], random_unit(1, DIM, 4))
    v.build(timeout=60)  # an incremental build

    def built() -> dict | None:
        s = _scrape(port)
        ok = (_get(s, "embcache_build_seconds_count", space="wm", kind="full") or 0) >= 1 and \
            (_get(s, "embcache_build_seconds_count", space="wm", kind="incremental") or 0) >= 1
        return s if ok else None

    samples = wait_for(built, 30, interval=0.1, what="build metrics on the worker's exporter")
    assert _get(samples, "embcache_build_seconds_sum", space="wm", kind="full") > 0
    assert _get(samples, "embcache_queue_depth", queue="embcache") is not None
    assert _get(samples, "embcache_index_lag_entries", space="wm", version=v.name, partition="default") is not None

    # the client loads the published snapshot: a load, its duration, and the snapshot's age
    reader = hubs(redis_url).space("wm").version(v.name)
    assert reader.query(x[:2], n_results=1, consistency="eventual").ids == [["i0"], ["i1"]]
    assert _value(registry, "embcache_snapshot_loads_total", space="wm", result="ok") == 1
    assert _value(registry, "embcache_snapshot_load_seconds_count", space="wm") == 1
    age = _value(registry, "embcache_snapshot_age_seconds", space="wm", version=v.name, partition="default")
    assert 0 < age < 60
    time.sleep(0.2)
    assert _value(registry, "embcache_snapshot_age_seconds", space="wm", version=v.name,
                  partition="default") >= age + 0.15  # computed at scrape time

    # a corrupt snapshot is counted as such (the worker is stopped first, so it is not rebuilt meanwhile)
    worker.stop()
    pk = hub.keys.partition("wm", v.name, "default")
    m = read_manifest(hub.store.r, pk)
    hub.store.r.set(pk.chunk(m.sid, m.chunks - 1), b"\x00garbage" * 100)
    other = hubs(redis_url).space("wm").version(v.name)
    assert other.query(x[:1], n_results=1, consistency="eventual").ids == [["i0"]]
    assert _value(registry, "embcache_snapshot_loads_total", space="wm", result="corrupt") == 1
