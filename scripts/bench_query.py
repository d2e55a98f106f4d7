#!/usr/bin/env python
"""Query benchmark (issue 3): raw hnswlib in-process vs embcache on the same vectors, in one run.

Side by side, single-threaded single queries unless stated:

* raw hnswlib: build time (all cores), p50/p99 single-query latency, recall@10, batched throughput (all
  queries in one ``knn_query``, all cores), cold start (``pickle.loads`` of the pickled index);
* embcache on a private ``redis-server`` (AOF everysec) with one ``python -m workers`` subprocess started before
  any timing: upsert time, time from the last upsert to the published snapshot, p50/p99 and recall@10 at
  ``eventual``, ``session`` and ``strong``, a Redis PING round trip, batched throughput, cold start in a fresh
  process (connect + first answer, and the snapshot load alone) vs ``pickle.loads`` in that same process;
* freshness: a writer upserts ``--rate`` items/s (batches of 10) for ``--freshness-seconds`` while a poller
  watches the manifest every 5 ms; per batch, the delay from its upsert to the first manifest covering it.

Prints a table and writes (replaces) the section ``## Query benchmark (scripts/bench_query.py)`` of
BENCHMARKS.md. ``--quick`` is a small smoke run; ``--profile`` adds a cProfile of single ``session`` queries.

    .venv/bin/python scripts/bench_query.py            # full run (~2 min on 2 cores)
    .venv/bin/python scripts/bench_query.py --quick    # n=10000, 200 queries, 5 s of freshness
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import functools
import io
import json
import os
import pickle
import pstats
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import hnswlib  # noqa: E402
from benchlib import (  # noqa: E402
    WorkerProc,
    brute_force_topk,
    cores,
    interleaved_latency,
    loadavg,
    machine,
    pct,
    recall_at_k,
    write_section,
)

import embcache  # noqa: E402
from embcache.core import snapshot  # noqa: E402
from embcache.core.views import pos_key  # noqa: E402
from embcache.redis import snapshots  # noqa: E402
from embcache.redis.server import RedisServer, free_port  # noqa: E402

SECTION = "## Query benchmark (scripts/bench_query.py)"
K = 10
SPACE, PARTITION = "bench", "default"
LEVELS = ("eventual", "session", "strong")


# the cold-start subprocess ------------------------------------------------------------------------------------
COLD_CHILD = r"""
import json, os, pickle, sys, time
t_imp = time.perf_counter()
import numpy as np, hnswlib, embcache
from embcache.core import snapshot
from embcache.redis import snapshots
imports = time.perf_counter() - t_imp
args = json.loads(sys.argv[1])
q = np.load(args["query"])
out = {"imports_s": imports}
# embcache: connect -> first answer (the snapshot is loaded on first use)
t0 = time.perf_counter()
hub = embcache.connect(args["url"])
t1 = time.perf_counter()
v = hub.space(args["space"]).version(args["version"])
res = v.query(q, n_results=10, consistency="session")
t2 = time.perf_counter()
out["connect_s"] = t1 - t0
out["connect_to_first_answer_s"] = t2 - t0
out["first_ids"] = res.ids[0][:3]
out["base_kind"] = type(hub.cache.cached((args["space"], args["version"], "default"))).__name__
# the snapshot load alone (again, into a second copy): manifest + chunks + sha256 + hnswlib load + tables
pk = hub.keys.partition(args["space"], args["version"], "default")
t3 = time.perf_counter()
m = snapshots.read_manifest(hub.store.r, pk)
chunks = hub.store.r.mget([pk.chunk(m.sid, i) for i in range(m.chunks)])
t4 = time.perf_counter()
base = snapshot.unpack(chunks, m, ef=args["ef"])
t5 = time.perf_counter()
out["snapshot_load_s"] = t5 - t3
out["snapshot_fetch_s"] = t4 - t3
out["snapshot_unpack_s"] = t5 - t4
out["snapshot_bytes"] = m.nbytes
del base, chunks
# raw: pickle.loads of the pickled index bytes (read from disk first, untimed), then the first query
data = open(args["pickle"], "rb").read()
t6 = time.perf_counter()
idx = pickle.loads(data)
t7 = time.perf_counter()
idx.set_ef(args["ef"])
labels, _ = idx.knn_query(q[None, :], k=10, num_threads=1)
t8 = time.perf_counter()
out["pickle_loads_s"] = t7 - t6
out["pickle_to_first_answer_s"] = t8 - t6
out["pickle_bytes"] = len(data)
print("RESULT " + json.dumps(out), flush=True)
os._exit(0)
"""


# the benchmark ------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.r: dict[str, Any] = {}

    def row(self, system: str, metric: str, value: str, ratio: str = "", target: str = "", met: str = "") -> None:
        self.rows.append(dict(system=system, metric=metric, value=value, ratio=ratio, target=target, met=met))

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def redis_info(self) -> dict[str, int]:
        import redis as redis_py

        c = redis_py.Redis.from_url(self.server.url)
        try:
            info = {**c.info("persistence"), **c.info("stats")}
        finally:
            c.close()
        return {k: int(info.get(k, 0)) for k in ("total_forks", "aof_rewrites", "aof_current_size")}

    # data
    def load_data(self) -> None:
        a = self.args
        d = Path(a.data)
        base_all = np.load(d / "base.f16.npy").astype(np.float32)
        self.base_all = base_all
        self.n = min(a.n, len(base_all)) if a.n else len(base_all)
        self.base = np.ascontiguousarray(base_all[: self.n])
        queries = np.load(d / "queries.npy").astype(np.float32)
        self.queries = np.ascontiguousarray(queries[: a.queries] if a.queries else queries)
        if self.n == len(base_all):
            self.truth = np.load(d / "gt_ids.npy")[: len(self.queries), :K].astype(np.int64)
            self.truth_src = "gt_ids.npy"
        else:
            t = time.perf_counter()
            self.truth = brute_force_topk(self.base, self.queries, K)
            took = time.perf_counter() - t
            self.truth_src = f"float64 brute force over the first {self.n} rows ({took:.1f} s)"
        self.log(f"data: {self.n} x {self.base.shape[1]} base, {len(self.queries)} queries, "
                 f"truth from {self.truth_src}")

    # raw hnswlib
    def raw_build(self) -> None:
        a = self.args
        idx = hnswlib.Index(space="cosine", dim=self.base.shape[1])
        idx.init_index(max_elements=self.n, M=a.M, ef_construction=a.ef_construction, random_seed=100)
        idx.set_num_threads(cores())
        t = time.perf_counter()
        idx.add_items(self.base, np.arange(self.n), num_threads=cores())
        self.r["raw_build_s"] = time.perf_counter() - t
        idx.set_ef(a.ef)
        self.raw = idx
        self.log(f"raw build {self.r['raw_build_s']:.2f} s")
        t = time.perf_counter()
        blob = pickle.dumps(idx)
        dumps_s = time.perf_counter() - t
        t = time.perf_counter()
        again = pickle.loads(blob)
        self.r["raw_pickle_loads_inproc_s"] = time.perf_counter() - t
        self.r["raw_pickle_bytes"] = len(blob)
        del again
        self.pickle_path = self.tmp / "raw_index.pkl"
        self.pickle_path.write_bytes(blob)
        del blob
        self.log(f"raw pickle: dumps {dumps_s:.2f} s, loads {self.r['raw_pickle_loads_inproc_s'] * 1e3:.0f} ms")

    def raw_rebuild(self) -> None:
        """A second raw build after embcache's (a throwaway index): the machine's load drifts, so the ratio uses the
        mean of the builds before and after."""
        a = self.args
        idx = hnswlib.Index(space="cosine", dim=self.base.shape[1])
        idx.init_index(max_elements=self.n, M=a.M, ef_construction=a.ef_construction, random_seed=100)
        t = time.perf_counter()
        idx.add_items(self.base, np.arange(self.n), num_threads=cores())
        self.r["raw_build2_s"] = time.perf_counter() - t
        del idx
        self.log(f"raw build again {self.r['raw_build2_s']:.2f} s")

    def raw_query(self, q: np.ndarray) -> list[int]:
        labels, _ = self.raw.knn_query(q[None, :], k=K, num_threads=1)
        return labels[0].tolist()

    # embcache
    def start_embcache(self) -> None:
        self.server = RedisServer(self.tmp / "redis", port=free_port())  # AOF on, everysec (the defaults)
        self.server.start()
        self.hub = embcache.connect(self.server.url)
        self.worker = WorkerProc(self.server.url, self.tmp / "worker.log")
        self.worker.wait_ready(self.hub.store.r, self.hub.keys.dispatcher_lock())
        self.log(f"redis-server at {self.server.url} (AOF everysec), worker pid {self.worker.proc.pid} ready")

    def embcache_load(self) -> None:
        a = self.args
        space = self.hub.create_space(SPACE, dim=self.base.shape[1], metric="cosine", M=a.M,
                                      ef_construction=a.ef_construction, ef=a.ef)
        self.version = space.create_version()
        ids = [str(i) for i in range(self.n)]
        before = self.redis_info()
        t0 = time.perf_counter()
        self.version.upsert(ids, self.base, partition=PARTITION)
        t1 = time.perf_counter()
        self.version.build(wait=True, timeout=1800)
        t2 = time.perf_counter()
        self.r["upsert_s"] = t1 - t0
        self.r["publish_s"] = t2 - t1
        after = self.redis_info()
        forks = after["total_forks"] - before["total_forks"]
        self.notes.append(f"redis-server forked {forks} time(s) (AOF rewrites) "
                          f"during the upsert and the first build; AOF {after['aof_current_size'] / 1e6:.0f} MB "
                          "after it")
        pk = self.hub.keys.partition(SPACE, self.version.name, PARTITION)
        self.pk = pk
        m = snapshots.read_manifest(self.hub.store.r, pk)
        self.r["worker_build_s"] = m.build_seconds
        self.r["snapshot_bytes"] = m.nbytes
        self.r["snapshot_generation"] = m.generation
        self.log(f"embcache: upsert {self.r['upsert_s']:.2f} s, last upsert -> published {self.r['publish_s']:.2f} s "
                 f"(worker's own build_seconds {m.build_seconds:.2f} s, generation {m.generation}, "
                 f"{m.nbytes / 1e6:.0f} MB)")

    def emb_query(self, q: np.ndarray, level: str) -> list[str]:
        return self.version.query(q, n_results=K, consistency=level).ids[0]

    def check_base(self) -> None:
        self.emb_query(self.queries[0], "session")  # loads the snapshot
        base = self.hub.cache.cached((SPACE, self.version.name, PARTITION))
        self.base_kind = type(base).__name__
        if not isinstance(base, snapshot.HnswBase):
            self.row("embcache", "WARNING", f"partition served by {self.base_kind}, not HnswBase", "", "HnswBase", "no")
            self.log(f"WARNING: the partition is served by {self.base_kind}, not HnswBase")

    def latency(self) -> None:
        qs = self.queries
        runners = {"raw": self.raw_query}
        for lvl in LEVELS:
            runners[lvl] = functools.partial(self.emb_query, level=lvl)
        answers: dict[str, list[Any]] = {}
        for name, fn in runners.items():  # warm-up pass, also the answers for recall
            answers[name] = [fn(q) for q in qs]
        self.recall = {name: recall_at_k([[int(x) for x in row] for row in ans], self.truth)
                       for name, ans in answers.items()}
        # blocks of queries per system, interleaved, order rotated per round
        samples = interleaved_latency(runners, qs, self.args.rounds, self.args.block)
        self.lat = {name: (pct(s, 50) * 1e6, pct(s, 99) * 1e6) for name, s in samples.items()}
        r = self.hub.store.r
        for _ in range(200):
            r.ping()
        pings = []
        pc = time.perf_counter
        for _ in range(2000):
            t = pc()
            r.ping()
            pings.append(pc() - t)
        self.rtt_us = pct(pings, 50) * 1e6
        self.rtt99_us = pct(pings, 99) * 1e6
        for name in runners:
            self.log(f"{name:8s} p50 {self.lat[name][0]:7.1f} us  p99 {self.lat[name][1]:7.1f} us  "
                     f"recall@10 {self.recall[name]:.4f}")
        self.log(f"PING p50 {self.rtt_us:.1f} us p99 {self.rtt99_us:.1f} us")

    def batched(self) -> None:
        raw_t, emb_t = [], []
        res = self.version.query(self.queries, n_results=K, consistency="session")  # warm-up
        self.raw.knn_query(self.queries, k=K, num_threads=-1)
        for _ in range(self.args.batch_repeats):  # interleaved, medians
            t = time.perf_counter()
            self.raw.knn_query(self.queries, k=K, num_threads=-1)
            raw_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            res = self.version.query(self.queries, n_results=K, consistency="session")
            emb_t.append(time.perf_counter() - t)
        raw_s, emb_s = float(np.median(raw_t)), float(np.median(emb_t))
        self.batch = {"raw_qps": len(self.queries) / raw_s, "emb_qps": len(self.queries) / emb_s,
                      "emb_recall": recall_at_k([[int(x) for x in row] for row in res.ids], self.truth)}
        self.log(f"batched: raw {self.batch['raw_qps']:.0f} q/s, embcache {self.batch['emb_qps']:.0f} q/s")

    def profile(self) -> None:
        prof = cProfile.Profile()
        qs = self.queries
        prof.enable()
        for _ in range(max(1, 2000 // len(qs))):
            for q in qs:
                self.emb_query(q, "session")
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
        print("\n--- cProfile, single queries at session, sorted by own time ---")
        print(s.getvalue())

    def cold_start(self) -> None:
        qpath = self.tmp / "q0.npy"
        np.save(qpath, self.queries[0])
        spec = {"url": self.server.url, "space": SPACE, "version": self.version.name, "pickle": str(self.pickle_path),
                "query": str(qpath), "ef": self.args.ef}
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBCACHE_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        proc = subprocess.run([sys.executable, "-c", COLD_CHILD, json.dumps(spec)], capture_output=True, text=True,
                              env=env, cwd=REPO_ROOT, timeout=600)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"cold-start child failed:\n{proc.stdout}\n{proc.stderr}")
        self.cold = json.loads(line[len("RESULT "):])
        c = self.cold
        self.log(f"cold start: connect->first answer {c['connect_to_first_answer_s'] * 1e3:.0f} ms "
                 f"(snapshot load {c['snapshot_load_s'] * 1e3:.0f} ms = fetch {c['snapshot_fetch_s'] * 1e3:.0f} + "
                 f"unpack {c['snapshot_unpack_s'] * 1e3:.0f}); pickle.loads {c['pickle_loads_s'] * 1e3:.0f} ms, "
                 f"+first query {c['pickle_to_first_answer_s'] * 1e3:.0f} ms; served by {c['base_kind']}")

    def freshness(self) -> None:
        hub = embcache.connect(self.server.url)  # a hub with nothing loaded: no snapshot reloads in this process
        try:
            self._freshness(hub)
        finally:
            closer = threading.Thread(target=hub.close, daemon=True)
            closer.start()
            closer.join(2)

    def _freshness(self, hub: embcache.Hub) -> None:
        a = self.args
        version = hub.space(SPACE).version(self.version.name)
        pk = self.pk
        r = hub.store.r
        batch = 10
        interval = batch / a.rate
        rng = np.random.default_rng(7)
        dim = self.base.shape[1]
        seen: list[tuple[float, tuple[int, int], int]] = []  # (wall time first seen, pos, generation)
        writes: list[tuple[float, float, tuple[int, int]]] = []  # (upsert start, upsert return, pos)
        stop_poll = threading.Event()
        info_before = self.redis_info()
        last = snapshots.read_manifest(r, pk)
        start_gen = last.generation if last else 0

        def poll() -> None:
            gen = start_gen
            while not stop_poll.is_set():
                m = snapshots.read_manifest(r, pk)
                now = time.time()
                if m is not None and m.generation != gen:
                    gen = m.generation
                    seen.append((now, pos_key(m.pos), m.generation))
                    builds.append(m.build_seconds)
                time.sleep(0.005)

        builds: list[float] = []
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        t_end = time.monotonic() + a.freshness_seconds
        j = 0
        next_t = time.monotonic()
        late = 0
        while time.monotonic() < t_end:
            rows = (np.arange(j, j + batch) * 7919) % len(self.base_all)
            vecs = self.base_all[rows] + rng.normal(0, 0.01, (batch, dim)).astype(np.float32)
            ids = [f"w{j + i}" for i in range(batch)]
            t0 = time.time()
            version.upsert(ids, vecs, partition=PARTITION)
            t1 = time.time()
            pos = pos_key(r.hget(pk.state, "pos"))
            writes.append((t0, t1, pos))
            j += batch
            next_t += interval
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late += 1
        written_s = a.freshness_seconds
        self.log(f"freshness: wrote {j} items in {len(writes)} batches ({j / written_s:.0f} items/s achieved, "
                 f"{late} batches behind schedule); waiting for the last to be indexed")
        last_pos = writes[-1][2]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (seen and seen[-1][1] >= last_pos):
            time.sleep(0.01)
        stop_poll.set()
        poller.join()
        info_after = self.redis_info()
        self.notes.append(f"freshness: redis-server forked {info_after['total_forks'] - info_before['total_forks']} "
                          f"time(s) (AOF rewrites); AOF grew to {info_after['aof_current_size'] / 1e6:.0f} MB (each "
                          "publication writes the whole snapshot)")
        delays, missing = [], 0
        for t0, _t1, pos in writes:
            hit = next((s for s in seen if s[1] >= pos), None)
            if hit is None:
                missing += 1
            else:
                delays.append(hit[0] - t0)
        self.fresh = {
            "items": j, "batches": len(writes), "achieved_rate": j / written_s, "late": late,
            "p50": pct(delays, 50) if delays else float("nan"), "p95": pct(delays, 95) if delays else float("nan"),
            "max": max(delays) if delays else float("nan"), "missing": missing, "generations": len(seen),
            "build_p50": pct(builds, 50) if builds else float("nan"),
            "build_max": max(builds) if builds else float("nan"),
            "upsert_p50_ms": pct([w[1] - w[0] for w in writes], 50) * 1e3,
        }
        f = self.fresh
        self.log(f"freshness: p50 {f['p50']:.3f} s p95 {f['p95']:.3f} s max {f['max']:.3f} s over {len(delays)} "
                 "batches "
                 f"({missing} never indexed); {f['generations']} snapshots published, worker build_seconds p50 "
                 f"{f['build_p50']:.2f} s max {f['build_max']:.2f} s")

    def stop(self) -> None:
        for fn in (lambda: self.worker.stop(), lambda: self._close_hub(), lambda: self.server.stop()):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001
                print(f"cleanup: {exc}", file=sys.stderr)

    def _close_hub(self) -> None:
        closer = threading.Thread(target=self.hub.close, daemon=True)
        closer.start()
        closer.join(2)

    # table
    def build_table(self) -> None:
        yes = lambda ok: "yes" if ok else "**NO**"  # noqa: E731
        R = self.r
        raw50, raw99 = self.lat["raw"]
        raw_build = (R["raw_build_s"] + R["raw_build2_s"]) / 2
        self.row("raw hnswlib", f"build, {self.n} items, {cores()} threads (before / after embcache's)",
                 f"{R['raw_build_s']:.2f} / {R['raw_build2_s']:.2f} s", "1.00")
        self.row("raw hnswlib", "single query p50 / p99", f"{raw50:.1f} / {raw99:.1f} us", "1.00")
        self.row("raw hnswlib", "recall@10", f"{self.recall['raw']:.4f}", "1.00")
        self.row("raw hnswlib", f"batched, {len(self.queries)} queries, {cores()} threads",
                 f"{self.batch['raw_qps']:.0f} q/s", "1.00")
        self.row("raw hnswlib", "cold start: pickle.loads (in-process)",
                 f"{R['raw_pickle_loads_inproc_s'] * 1e3:.0f} ms "
                 f"({R['raw_pickle_bytes'] / 1e6:.0f} MB)", "1.00")
        self.row("embcache", f"upsert {self.n} items (one call)", f"{R['upsert_s']:.2f} s",
                 f"{R['upsert_s'] / raw_build:.2f}")
        ratio = R["publish_s"] / raw_build
        self.row("embcache", "last upsert -> snapshot published", f"{R['publish_s']:.2f} s", f"{ratio:.2f}",
                 "<= 1.3x raw build (mean of the two)", yes(ratio <= 1.3))
        self.row("embcache", "  of which worker build_seconds (manifest)", f"{R['worker_build_s']:.2f} s",
                 f"{R['worker_build_s'] / raw_build:.2f}")
        for lvl in LEVELS:
            p50, p99 = self.lat[lvl]
            if lvl == "strong":
                limit = raw50 + self.rtt_us + 50
                self.row(f"embcache {lvl}", "single query p50 / p99", f"{p50:.1f} / {p99:.1f} us",
                         f"{p50 / raw50:.2f} / {p99 / raw99:.2f}", f"p50 <= raw+RTT+50us = {limit:.1f} us",
                         yes(p50 <= limit))
            else:
                self.row(f"embcache {lvl}", "single query p50 / p99", f"{p50:.1f} / {p99:.1f} us",
                         f"{p50 / raw50:.2f} / {p99 / raw99:.2f}", "p50 <= 1.15x raw", yes(p50 <= 1.15 * raw50))
            self.row(f"embcache {lvl}", "recall@10", f"{self.recall[lvl]:.4f}",
                     f"{self.recall[lvl] / self.recall['raw']:.3f}")
        self.row("redis", "PING round trip p50 / p99 (same client)", f"{self.rtt_us:.1f} / {self.rtt99_us:.1f} us")
        self.row("embcache strong", "overhead over raw p50", f"{self.lat['strong'][0] - raw50:.1f} us", "",
                 f"<= RTT+50us = {self.rtt_us + 50:.1f} us", yes(self.lat["strong"][0] - raw50 <= self.rtt_us + 50))
        br = self.batch["emb_qps"] / self.batch["raw_qps"]
        self.row("embcache session", f"batched, {len(self.queries)} queries in one call",
                 f"{self.batch['emb_qps']:.0f} q/s "
                 f"(recall {self.batch['emb_recall']:.4f})", f"{br:.2f}", ">= 0.9x raw", yes(br >= 0.9))
        c = self.cold
        self.row("raw hnswlib", "cold start (fresh process): pickle.loads", f"{c['pickle_loads_s'] * 1e3:.0f} ms",
                 "1.00")
        self.row("raw hnswlib", "cold start (fresh process): pickle.loads + first query",
                 f"{c['pickle_to_first_answer_s'] * 1e3:.0f} ms", "1.00")
        self.row("embcache", "cold start: connect -> first answer", f"{c['connect_to_first_answer_s'] * 1e3:.0f} ms",
                 f"{c['connect_to_first_answer_s'] / c['pickle_to_first_answer_s']:.2f}")
        self.row("embcache", "  snapshot load alone (fetch + verify + hnswlib load + tables)",
                 f"{c['snapshot_load_s'] * 1e3:.0f} ms (fetch {c['snapshot_fetch_s'] * 1e3:.0f}, "
                 f"unpack {c['snapshot_unpack_s'] * 1e3:.0f}; {c['snapshot_bytes'] / 1e6:.0f} MB)",
                 f"{c['snapshot_load_s'] / c['pickle_loads_s']:.2f}")
        if getattr(self, "fresh", None):
            f = self.fresh
            self.row("embcache", f"freshness write -> indexed p50 / p95 / max ({f['achieved_rate']:.0f} items/s, "
                     f"{self.args.freshness_seconds:g} s)", f"{f['p50']:.3f} / {f['p95']:.3f} / {f['max']:.3f} s", "",
                     "p95 <= 1 s", yes(f["p95"] <= 1.0 and f["missing"] == 0))
            self.row("embcache", "  snapshots published during freshness; worker build_seconds p50 / max",
                     f"{f['generations']}; {f['build_p50']:.2f} / {f['build_max']:.2f} s")
        else:
            self.row("embcache", "freshness", "skipped (--skip-freshness)", "", "p95 <= 1 s", "n/a")

    def table_md(self) -> str:
        head = "| system / level | metric | value | ratio to raw hnswlib | target | met? |\n|---|---|---|---|---|---|\n"
        return head + "".join(f"| {r['system']} | {r['metric']} | {r['value']} | {r['ratio']} | {r['target']} | "
                              f"{r['met']} |\n" for r in self.rows)

    def section(self, command: str, mach: dict[str, str], started: float) -> str:
        a = self.args
        lines = [
            SECTION, "",
            f"Run {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} ({time.time() - started:.0f} s), "
            f"issue 3's benchmark.", "",
            f"- Machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram']} RAM; {mach['os']}; "
            f"OPENBLAS_CORETYPE={mach['OPENBLAS_CORETYPE']}",
            f"- Software: Python {mach['python']}, numpy {mach['numpy']}, hnswlib {mach['hnswlib']}, "
            f"redis-server {mach['redis-server']} (AOF on, appendfsync everysec, loopback TCP), redis-py "
            f"{mach['redis-py']}",
            f"- Data: `{a.data}` (debian-minilm, all-MiniLM-L6-v2, cosine): first {self.n} of "
            f"{len(self.base_all)} base rows (float16 cast to float32), {len(self.queries)} queries; recall@10 "
            f"truth from {self.truth_src}",
            f"- Parameters: M={a.M}, ef_construction={a.ef_construction}, ef={a.ef}, k={K}; single queries "
            f"single-threaded, {a.rounds} timed passes over all queries after a warm-up pass, systems interleaved in "
            f"blocks of {a.block} queries (order rotated per pass, samples pooled); batched = median of "
            f"{a.batch_repeats} interleaved calls each; one worker "
            f"(`python -m workers`) started before any timing; the partition is served by `{self.base_kind}`",
            f"- Command: `{command}`", "",
            self.table_md(),
        ]
        if self.notes:
            lines += ["Notes:", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data" / "debian-minilm"))
    p.add_argument("--n", type=int, default=None, help="use the first N base rows (default all)")
    p.add_argument("--queries", type=int, default=None, help="use the first Q queries (default all)")
    p.add_argument("--ef", type=int, default=64)
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--freshness-seconds", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=1000.0, help="freshness writer: items/s, in batches of 10")
    p.add_argument("--skip-freshness", action="store_true")
    p.add_argument("--rounds", type=int, default=5, help="timed passes over the queries per system")
    p.add_argument("--block", type=int, default=20, help="queries per system per interleaved block")
    p.add_argument("--batch-repeats", type=int, default=7)
    p.add_argument("--profile", action="store_true", help="print a cProfile of single session queries")
    p.add_argument("--out", default=str(REPO_ROOT / "BENCHMARKS.md"))
    p.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    p.add_argument("--quick", action="store_true", help="n=10000, 200 queries, 5 s of freshness")
    args = p.parse_args(argv)
    if args.quick:
        args.n = args.n or 10_000
        args.queries = args.queries or 200
        if args.freshness_seconds == 30.0:
            args.freshness_seconds = 5.0
    command = "python scripts/bench_query.py" + ("" if argv is None and len(sys.argv) == 1 else " " + shlex.join(
        sys.argv[1:] if argv is None else argv))
    started = time.time()
    mach = machine()
    load_start = loadavg()
    b = Bench(args)
    b.load_data()
    with tempfile.TemporaryDirectory(prefix="embcache-bench-") as tmp:
        b.tmp = Path(tmp)
        b.start_embcache()  # the server and the worker run (idle) during the raw measurements too
        try:
            b.raw_build()
            b.embcache_load()
            b.raw_rebuild()
            b.check_base()
            b.latency()
            b.batched()
            if args.profile:
                b.profile()
            b.cold_start()
            b._close_hub()  # no snapshot reloads in this process while the freshness writer runs
            if not args.skip_freshness:
                b.freshness()
        except BaseException:
            if b.worker.log_path.exists():
                print(b.worker.log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
        finally:
            b.stop()
    load_end = loadavg()
    b.notes.insert(0, f"load average (1/5/15 min) at start {load_start}, at end {load_end} on "
                      f"{cores()} cores: other processes on the machine compete with the benchmark when it is above ~1")
    b.build_table()
    print()
    print(b.table_md())
    if not args.no_write:
        write_section(Path(args.out), SECTION, b.section(command, mach, started))
        print(f"wrote the section to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
