#!/usr/bin/env python
"""Neighbour-list benchmark (issue 14.1): ``query_by_id`` from precomputed lists beside raw hnswlib and beside
embcache's graph path, in one run, interleaved; the build-time and snapshot-size cost of the lists; recall.

On debian-minilm (the first ``--n`` of its 59,000 x 384 rows, cosine) and on the MovieLens demo's movie vectors
(PureSVD rank 32 of ml-latest-small, movies with >= 10 ratings, cosine), in a private ``redis-server``:

* one space per ``neighbours`` in 0, 10, 30 (M=16, ef_construction=200, ef=64), built in this process with the
  workers' own ``build_snapshot`` (so no dispatcher timing enters): build seconds and snapshot bytes of each;
* ``query_by_id([id], n_results=10)`` p50/p99 at ``eventual`` (and ``session``) from the lists (neighbours=30),
  by the graph path (the neighbours=0 space: the stored vector and a graph search of k + 1), and raw hnswlib
  on an index built with the same parameters (``get_items([label])`` + ``knn_query(k=11)``, one thread), timed
  in blocks interleaved between the three in an order shuffled each block (``benchlib.interleaved_latency``);
* recall@10 of each against exact neighbours (float32 numpy brute force, the item itself left out), and of the
  lists after an incremental build (2 % deleted, 2 % replaced by other vectors, 5 % new items);
* the load average at the start and the end (the machine is shared: read the ratios, they come from one run).

Writes (replaces) the section ``## Neighbour lists (scripts/bench_neighbours.py)`` of BENCHMARKS.md.

    nice -n 5 .venv/bin/python scripts/bench_neighbours.py                  # 20,000 items (~4 min on 2 cores)
    nice -n 5 .venv/bin/python scripts/bench_neighbours.py --n 59000        # the whole set
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import hnswlib  # noqa: E402
from benchlib import interleaved_latency, loadavg, machine, pct, write_section  # noqa: E402

import embcache  # noqa: E402
from embcache.core import snapshot  # noqa: E402
from workers import build as wbuild  # noqa: E402

SECTION = "## Neighbour lists (scripts/bench_neighbours.py)"
DATA = REPO_ROOT.parent / "shared" / "data" / "debian-minilm"
K = 10
WIDTHS = (0, 10, 30)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def exact_neighbours(x: np.ndarray, rows: np.ndarray, k: int, alive: np.ndarray | None = None) -> list[set[int]]:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = []
    for s in range(0, len(rows), 256):
        r = rows[s : s + 256]
        sims = xn[r] @ xn.T
        if alive is not None:
            sims[:, ~alive] = -np.inf
        sims[np.arange(len(r)), r] = -np.inf
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        out += [set(t.tolist()) for t in top]
    return out


def recall(found: list[list[str]], truth: list[set[int]], row_of: dict[str, int]) -> float:
    return float(np.mean([len({row_of[i] for i in f[:K]} & t) / K for f, t in zip(found, truth)]))


class Run:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        from embcache.server import RedisServer, free_port

        self.tmp = Path(tempfile.mkdtemp(prefix="bench-neighbours-"))
        self.server = RedisServer(self.tmp / "redis", port=free_port(), appendonly=False)
        self.server.start()
        self.hub = embcache.connect(self.server.url, refresh_interval=3600)
        self.out: dict[str, Any] = {}

    def close(self) -> None:
        try:
            self.hub.close()
        finally:
            self.server.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def space(self, name: str, x: np.ndarray, ids: list[str], width: int) -> tuple[Any, dict[str, float]]:
        sp = self.hub.create_space(name, dim=x.shape[1], metric="cosine", neighbours=width)
        v = sp.create_version()
        for s in range(0, len(ids), 5000):
            v.upsert(ids[s : s + 5000], x[s : s + 5000])
        record = self.hub.catalogue.get_space(name)
        t = time.perf_counter()
        wbuild.build_snapshot(self.hub.store, record, v.name, "default")
        seconds = time.perf_counter() - t
        pk = self.hub.keys.partition(name, v.name, "default")
        m = snapshot.Manifest.from_json(self.hub.store.r.get(pk.snap))
        v.query_by_id(ids[:1], 1, consistency="eventual")  # loaded
        return v, {"build_s": seconds, "snapshot_mb": m.nbytes / 1e6,
                   "lists_mb": sum(m.sections[4:]) / 1e6, "width": m.neighbours}

    def data_set(self, label: str, x: np.ndarray, ids: list[str]) -> dict[str, Any]:
        a = self.a
        n = len(ids)
        row_of = {i: j for j, i in enumerate(ids)}
        rng = np.random.default_rng(0)
        probes = rng.choice(n, min(a.probes, n), replace=False)
        truth = exact_neighbours(x, probes, K)
        log(f"{label}: {n} x {x.shape[1]}")
        raw = hnswlib.Index(space="cosine", dim=x.shape[1])
        raw.init_index(max_elements=n, M=16, ef_construction=200, random_seed=100)
        t = time.perf_counter()
        raw.add_items(x, np.arange(n))
        raw_build = time.perf_counter() - t
        raw.set_ef(64)
        builds, versions = {}, {}
        for w in WIDTHS:
            versions[w], builds[w] = self.space(f"{label}-{w}", x, ids, w)
            log(f"  neighbours={w}: build {builds[w]['build_s']:.1f} s, snapshot {builds[w]['snapshot_mb']:.1f} MB")
        listed, graph = versions[30], versions[0]
        plan = listed.explain(ids=[ids[int(probes[0])]], n_results=K, consistency="eventual").plan
        assert plan.startswith("neighbour list"), plan

        def raw_one(j: np.ndarray) -> Any:
            vec = raw.get_items([int(j)])
            return raw.knn_query(np.asarray(vec, dtype=np.float32), k=K + 1, num_threads=1)

        def by_id(v: Any, level: str) -> Callable[[np.ndarray], Any]:
            return lambda j: v.query_by_id([ids[int(j)]], K, consistency=level)

        runners = {"raw hnswlib get_items + knn_query": raw_one,
                   "embcache graph path (neighbours=0)": by_id(graph, "eventual"),
                   "embcache neighbour list (neighbours=30)": by_id(listed, "eventual"),
                   "embcache neighbour list, session": by_id(listed, "session")}
        for fn in runners.values():  # warm
            for j in probes[:50]:
                fn(j)
        lat = interleaved_latency(runners, probes, a.rounds, 20)
        found_raw = [[ids[int(lab)] for lab in raw_one(j)[0][0] if lab != j][:K] for j in probes]
        rec = {"raw hnswlib get_items + knn_query": recall(found_raw, truth, row_of)}
        for w in WIDTHS:
            res = versions[w].query_by_id([ids[int(j)] for j in probes], K, consistency="eventual")
            rec[f"neighbours={w}"] = recall(res.ids, truth, row_of)
        stages = self.stages(listed, [ids[int(j)] for j in probes])
        # an incremental build: 2 % deleted, 2 % replaced, 5 % new (from the rows past n, or jittered copies)
        inc = self.incremental(label, listed, x, ids, rng)
        return {"n": n, "dim": x.shape[1], "raw_build_s": raw_build, "builds": builds, "latency": lat,
                "recall": rec, "incremental": inc, "stages": stages}

    def stages(self, v: Any, probe_ids: list[str]) -> dict[str, float]:
        """Where a neighbour-list query_by_id spends its time: median us of each stage, called as query_by_id
        calls them (interleaved, the same probes)."""
        from embcache.core import codec

        q = v._by_id_query([probe_ids[0]], K, None, None, None, "eventual", ("distances",), None)[1]
        runners: dict[str, Callable[[Any], Any]] = {
            "validation (check_ids, check_n_results)": lambda i: (codec.check_ids([i], allow_duplicates=True),
                                                                   codec.check_n_results(K)),
            "validation + Query (_by_id_query)": lambda i: v._by_id_query([i], K, None, None, None, "eventual",
                                                                          ("distances",), None),
            "list lookup + overlay stage + result (_listed)": lambda i: v._listed([i], q),
            "query_by_id, all of it": lambda i: v.query_by_id([i], K, consistency="eventual"),
        }
        lat = interleaved_latency(runners, np.asarray(probe_ids, dtype=object), self.a.rounds, 20)
        return {name: pct(samples, 50) * 1e6 for name, samples in lat.items()}

    def incremental(self, label: str, v: Any, x: np.ndarray, ids: list[str], rng: np.random.Generator) -> dict:
        n = len(ids)
        x = x.copy()
        order = rng.permutation(n)
        deleted, replaced = order[: n // 50], order[n // 50 : n // 25]
        x[replaced] = x[rng.choice(n, len(replaced))] + 0.05 * rng.standard_normal((len(replaced), x.shape[1]))
        new = x[rng.choice(n, n // 20)] + 0.1 * rng.standard_normal((n // 20, x.shape[1]))
        new_ids = [f"new{j}" for j in range(len(new))]
        v.delete([ids[j] for j in deleted])
        v.upsert([ids[j] for j in replaced], x[replaced].astype(np.float32))
        v.upsert(new_ids, new.astype(np.float32))
        record = self.hub.catalogue.get_space(v.space.name)
        t = time.perf_counter()
        kind = wbuild.build_snapshot(self.hub.store, record, v.name, "default").kind
        seconds = time.perf_counter() - t
        self.hub.cache.refresh()
        allx = np.vstack([x, new])
        all_ids = [*ids, *new_ids]
        alive = np.ones(len(all_ids), bool)
        alive[deleted] = False
        row_of = {i: j for j, i in enumerate(all_ids)}
        live = np.flatnonzero(alive)
        probes = rng.choice(live, min(self.a.probes, len(live)), replace=False)
        truth = exact_neighbours(allx, probes, K, alive)
        res = v.query_by_id([all_ids[j] for j in probes], K, consistency="eventual")
        plans = [v.explain(ids=[all_ids[j]], n_results=K, consistency="eventual").plan for j in probes[:100]]
        return {"kind": kind, "seconds": seconds, "recall": recall(res.ids, truth, row_of),
                "listed_share": sum(p.startswith("neighbour list") for p in plans) / len(plans),
                "changes": f"{len(deleted)} deleted, {len(replaced)} replaced, {len(new)} new"}


def minilm(n: int) -> tuple[np.ndarray, list[str]]:
    x = np.load(DATA / "base.f16.npy")[:n].astype(np.float32)
    return x, [f"d{j}" for j in range(len(x))]


def movielens() -> tuple[np.ndarray, list[str]]:
    from embcache.demo import find_movielens
    from embcache.movielens import item_embeddings, load_ratings

    f = item_embeddings(load_ratings(find_movielens()), rank=32)
    return f.item_vectors, [f"m{int(m)}" for m in f.movie_ids]


def report(a: argparse.Namespace, results: dict[str, dict[str, Any]], started: str, load0: str, took: float) -> str:
    m = machine()
    lines = [SECTION, "",
             f"Run {started} ({took:.0f} s), issue 14.1's benchmark. Load average (1/5/15 min) {load0} at the start, "
             f"{loadavg()} at the end, on {m['cores']} cores (shared machine: the ratios are from interleaved blocks "
             "in one process).", "",
             f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram']} RAM; {m['os']}",
             f"- Software: Python {m['python']}, numpy {m['numpy']}, hnswlib {m['hnswlib']}, redis-server "
             f"{m['redis-server']} (loopback TCP), redis-py {m['redis-py']}",
             "- Parameters: cosine, M=16, ef_construction=200, ef=64; snapshots built in this process by "
             "`workers.build.build_snapshot` (all cores); lists searched with ef = max(64, 2 (w + 1))",
             f"- Latency: `query_by_id([id], n_results=10)` at `eventual` unless named, {a.probes} stored items x "
             f"{a.rounds} rounds, blocks of 20 interleaved, order rotated each round",
             f"- Command: `nice -n 5 .venv/bin/python scripts/bench_neighbours.py --n {a.n}`", ""]
    for label, r in results.items():
        lines += [f"### {label}: {r['n']} x {r['dim']}", "",
                  "| query_by_id(n_results=10) | p50 us | p99 us | p50 / neighbour list | recall@10 |",
                  "|---|---|---|---|---|"]
        lat = r["latency"]
        ref = pct(lat["embcache neighbour list (neighbours=30)"], 50) * 1e6
        rec_of = {"raw hnswlib get_items + knn_query": r["recall"]["raw hnswlib get_items + knn_query"],
                  "embcache graph path (neighbours=0)": r["recall"]["neighbours=0"],
                  "embcache neighbour list (neighbours=30)": r["recall"]["neighbours=30"],
                  "embcache neighbour list, session": r["recall"]["neighbours=30"]}
        for name, samples in lat.items():
            p50, p99 = pct(samples, 50) * 1e6, pct(samples, 99) * 1e6
            lines.append(f"| {name} | {p50:.1f} | {p99:.1f} | {p50 / ref:.1f} | {rec_of[name]:.3f} |")
        lines += ["", "| neighbours | build s | snapshot MB | of which lists MB | recall@10 of query_by_id |",
                  "|---|---|---|---|---|"]
        for w in WIDTHS:
            b = r["builds"][w]
            lines.append(f"| {w} | {b['build_s']:.1f} | {b['snapshot_mb']:.1f} | {b['lists_mb']:.1f} | "
                         f"{r['recall'][f'neighbours={w}']:.3f} |")
        lines += ["", "Where a neighbour-list `query_by_id` spends its time (median us of each stage, interleaved):",
                  "", "| stage | p50 us |", "|---|---|"]
        lines += [f"| {name} | {us:.1f} |" for name, us in r["stages"].items()]
        inc = r["incremental"]
        lines += ["", f"- raw hnswlib build of the same items (this process, all cores): {r['raw_build_s']:.1f} s",
                  f"- incremental build of neighbours=30 after {inc['changes']}: {inc['kind']}, {inc['seconds']:.1f} s;"
                  f" recall@10 of the lists after it {inc['recall']:.3f}; {inc['listed_share']:.0%} of 100 probes "
                  "answered from a list (the rest: lists shortened below 10 by deletes, answered by the graph)", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="debian-minilm rows (at most 59000)")
    ap.add_argument("--probes", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    a = ap.parse_args()
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load0, t0 = loadavg(), time.perf_counter()
    run = Run(a)
    try:
        results = {"debian-minilm": run.data_set("minilm", *minilm(a.n)),
                   "MovieLens movies (PureSVD rank 32)": run.data_set("movielens", *movielens())}
    finally:
        run.close()
    text = report(a, results, started, load0, time.perf_counter() - t0)
    print(text)
    if not a.no_write:
        write_section(REPO_ROOT / "BENCHMARKS.md", SECTION, text)


if __name__ == "__main__":
    main()
