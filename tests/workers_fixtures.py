"""Real RQ workers for the integration tests: ``python -m workers`` subprocesses, and helpers around them.

Import the fixtures into a test module (``from tests.workers_fixtures import workers, hubs  # noqa: F401``) or
move them into ``conftest.py``.

| fixture | scope | yields |
|---|---|---|
| ``workers`` | function | :class:`WorkerPool`: ``start(data_url, queue_url=None)`` spawns a worker; all are stopped after the test |
| ``hubs`` | function | ``hubs(url, **connect_kwargs)`` -> :class:`embcache.Hub`, closed after the test |

Each worker runs in its own process group (so SIGKILL reaches the RQ work-horse it forked too), with
``EMBCACHE_LEASE_SECONDS=2`` so a killed worker's build is rescheduled quickly, and writes its stdout/stderr to a
file under the test's ``tmp_path``; the logs are printed in the fixture's teardown, which pytest shows only when
the test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embcache
from tests.servers import descendants

REPO_ROOT = Path(__file__).resolve().parent.parent
LEASE_SECONDS = 2

__all__ = ["Worker", "WorkerPool", "workers", "hubs", "wait_for", "paused_builds", "brute_force", "recall_at_k",
           "random_unit"]


@dataclass
class Worker:
    """One ``python -m workers`` process (the leader of its own process group)."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: Any = field(repr=False, default=None)
    _stray: list[int] = field(repr=False, default_factory=list)  # descendants noted when asked to stop

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def descendants(self) -> list[int]:
        """Pids of the worker's live descendants (RQ's work-horse calls ``setpgrp``, so it leaves the group)."""
        return descendants(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL the worker, its process group and every descendant (the work-horse running a job, the RQ
        scheduler), as a crash of the machine would."""
        victims = self.descendants()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def stop(self, timeout: float = 2.0) -> None:
        """SIGTERM (RQ's warm shutdown), then SIGKILL the group if it has not exited within ``timeout``."""
        if self.proc.poll() is None:
            self._stray = self._stray or self.descendants()
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # also a work-horse or scheduler left behind by its parent
        for pid in self._stray:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"


class WorkerPool:
    """Starts workers for one test and stops them all at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Worker] = []

    def start(self, data_url: str, queue_url: str | None = None, *, lease_seconds: float = LEASE_SECONDS,
              env: dict[str, str] | None = None, args: Sequence[str] = ()) -> Worker:
        """A new worker on ``data_url`` (RQ on ``queue_url``, default the data Redis); ``args`` are more options
        of ``embcache worker`` (e.g. ``["--no-dispatch"]``)."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("EMBCACHE_")}
        full_env.update(EMBCACHE_URL=data_url, EMBCACHE_LEASE_SECONDS=str(lease_seconds), PYTHONUNBUFFERED="1")
        if queue_url:
            full_env["EMBCACHE_QUEUE_URL"] = queue_url
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        full_env.update(env or {})
        path = self.directory / f"worker{len(self.started)}.log"
        log = open(path, "wb")  # noqa: SIM115 - closed by Worker.stop
        proc = subprocess.Popen([sys.executable, "-m", "workers", *args], cwd=REPO_ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        worker = Worker(proc, path, log)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for w in self.started:
            if w.alive():
                w._stray = w.descendants()
                w.proc.terminate()  # all at once, then wait: teardown stays short
        for w in self.started:
            w.stop()

    def logs(self) -> str:
        return "\n".join(f"----- worker {i} (pid {w.pid}, exit {w.proc.returncode}) {w.log_path}\n{w.log()[-6000:]}"
                         for i, w in enumerate(self.started))


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerPool]:
    """Start workers with ``workers.start(url)``; every one is stopped (terminate, then kill) after the test, and
    their logs are printed (pytest shows them when the test failed)."""
    pool = WorkerPool(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()
        if pool.started:
            print(pool.logs())


@pytest.fixture
def hubs() -> Iterator[Callable[..., embcache.Hub]]:
    """``hubs(url, **kwargs)``: :func:`embcache.connect`, closed after the test."""
    opened: list[embcache.Hub] = []

    def connect(url: str, **kwargs: Any) -> embcache.Hub:
        hub = embcache.connect(url, **kwargs)
        opened.append(hub)
        return hub

    yield connect

    def close(hub: embcache.Hub) -> None:
        try:
            hub.close()
        except Exception:  # noqa: BLE001 - a server a test stopped
            pass

    # Hub.close() can block for up to 5 s while its refresher waits out refresh_interval on pub/sub (see
    # test_consistency.py::test_close_is_prompt_with_a_long_refresh_interval): close in the background and
    # wait a little, so that the suite stays fast; the refresher threads are daemons.
    closers = [threading.Thread(target=close, args=(hub,), daemon=True) for hub in opened]
    for t in closers:
        t.start()
    deadline = time.monotonic() + 0.5
    for t in closers:
        t.join(max(0.0, deadline - time.monotonic()))


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def paused_builds(hub: embcache.Hub, settle: float = 0.3) -> Iterator[None]:
    """No new build is enqueued inside the block: the test holds the dispatcher lock (the key the workers'
    dispatchers take with SET NX to elect the one that acts), so writers' dirty marks wait until it is released.
    A build already running finishes; ``settle`` lets a dispatcher tick that began before the takeover end."""
    r, key = hub.store.r, hub.keys.dispatcher_lock()
    r.set(key, "paused-by-test", px=600_000)
    time.sleep(settle)
    try:
        yield
    finally:
        if r.get(key) == b"paused-by-test":
            r.delete(key)


def brute_force(base: np.ndarray, queries: np.ndarray, k: int, metric: str = "cosine") -> np.ndarray:
    """Independent float64 exact top-``k`` row indices, nearest first."""
    x = np.asarray(base, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        d = -(q @ x.T)
    elif metric == "ip":
        d = -(q @ x.T)
    else:
        d = (q * q).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2.0 * (q @ x.T)
    k = min(k, x.shape[0])
    top = np.argpartition(d, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(d, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def recall_at_k(got: list[list[str]], truth: list[list[str]]) -> float:
    """Mean share of each true top-k found in the answer."""
    hits = sum(len(set(g) & set(t)) for g, t in zip(got, truth))
    total = sum(len(t) for t in truth)
    return hits / max(total, 1)


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` random float32 unit vectors."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
