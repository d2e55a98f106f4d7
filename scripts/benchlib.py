"""Helpers shared by the benchmark scripts (``bench_query.py``, ``bench.py``): machine facts, percentiles, recall,
exact top-k, interleaved single-query timing, process trees, a worker subprocess and the BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.servers import descendants  # needs the repo root on sys.path, as the bench scripts set it

REPO_ROOT = Path(__file__).resolve().parent.parent


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pct(samples: Sequence[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def loadavg() -> str:
    """The 1/5/15-minute load averages, as /proc/loadavg prints them ("" where there is none)."""
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return ""


def recall_at_k(found: Iterable[Sequence[int]] | np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    found = list(found)
    hits = sum(len(set(map(int, f[:k])) & set(map(int, t[:k]))) for f, t in zip(found, truth))
    return hits / (k * len(truth))


def brute_force_topk(base: np.ndarray, queries: np.ndarray, k: int, *, dtype: Any = np.float64,
                     block: int = 100) -> np.ndarray:
    """Exact cosine top-k rows, computed in ``dtype`` (float64 by default; float32 keeps 400k-row sets small),
    ``block`` queries at a time; the base is normalised in ``block``-independent chunks of 65,536 rows."""
    b = np.empty(base.shape, dtype=dtype)
    for s in range(0, len(base), 65536):
        chunk = base[s : s + 65536].astype(dtype)
        norms = np.linalg.norm(chunk, axis=1, keepdims=True)
        b[s : s + 65536] = chunk / np.where(norms == 0, 1, norms)
    q = queries.astype(dtype)
    q /= np.where((n := np.linalg.norm(q, axis=1, keepdims=True)) == 0, 1, n)
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), block):
        sims = q[s : s + block] @ b.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1, kind="stable")
        out[s : s + block] = np.take_along_axis(part, order, 1)
    return out


def interleaved_latency(runners: dict[str, Callable[[np.ndarray], Any]], queries: np.ndarray, rounds: int,
                        block: int) -> dict[str, list[float]]:
    """Single-query latencies (seconds) of each runner over ``queries``, ``rounds`` times: blocks of ``block``
    queries per runner, interleaved, in an order shuffled for every block (seeded), so that load on a shared
    machine hits all the runners alike and no runner always follows the same one (a runner that comes after one
    that sweeps the caches, such as a BLAS scan on every core, pays for it)."""
    import random

    samples: dict[str, list[float]] = {name: [] for name in runners}
    pc = time.perf_counter
    names = list(runners)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        for start in range(0, len(queries), block):
            order = names[:]
            shuffle(order)
            for name in order:
                fn = runners[name]
                out = samples[name]
                for q in queries[start : start + block]:
                    t = pc()
                    fn(q)
                    out.append(pc() - t)
    return samples


def dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine(packages: Sequence[str] = ()) -> dict[str, str]:
    """CPU, cores, RAM, OS, Python, numpy, hnswlib, redis-server and redis-py versions, and those of ``packages``
    (distribution names) under ``pkg:NAME`` keys."""
    from embcache.redis.server import find_redis_server

    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    redis_v = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"v=(\S+)", redis_v)
    import redis as redis_py

    out = {
        "cpu": cpu, "cores": str(cores()), "ram": ram, "python": platform.python_version(), "numpy": np.__version__,
        "hnswlib": dist_version("hnswlib"), "redis-server": m.group(1) if m else redis_v.strip(),
        "redis-py": redis_py.__version__, "os": platform.platform(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
    }
    for name in packages:
        out[f"pkg:{name}"] = dist_version(name)
    return out



def rss_bytes(pid: int | None = None, *, tree: bool = True) -> int:
    """Resident set size of ``pid`` (default: this process), plus its descendants' with ``tree``."""
    pid = pid or os.getpid()
    total = 0
    for p in [pid] + (descendants(pid) if tree else []):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
    return total


class WorkerProc:
    """One ``python -m workers`` subprocess (its own process group); stop() ends it and its descendants."""

    def __init__(self, url: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        extra = env or {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBCACHE_")}
        env.update(EMBCACHE_URL=url, PYTHONUNBUFFERED="1", **extra)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "workers"], cwd=REPO_ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, r: Any, dispatcher_key: str, timeout: float = 30.0) -> None:
        from rq import Queue, Worker

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited at start:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            if r.exists(dispatcher_key) and Worker.count(queue=Queue("embcache", connection=r)) > 0:
                return
            time.sleep(0.05)
        raise RuntimeError("worker not ready in time")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            stray = descendants(self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            for pid in stray:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()


def write_section(path: Path, section: str, text: str) -> None:
    """Replace the ``section`` heading's section of the Markdown file ``path`` (up to the next ``## ``) with
    ``text``, or append it; the other sections stay as they are."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _m: text.rstrip() + "\n\n", old, count=1)
    else:
        new = old.rstrip() + "\n\n" + text.rstrip() + "\n"
    path.write_text(new.rstrip() + "\n")
