#!/usr/bin/env python
"""Recommendation benchmark (issue 14): ``recommend`` beside ``query`` and ``query_by_id``, and ``compare``, in one run.

On debian-minilm (59,000 x 384, cosine) in a private ``redis-server`` with one ``python -m workers`` subprocess:

* single-call latency at ``eventual``, interleaved in blocks of 20 over the same probe items (a stored item, or 3
  liked + 1 disliked stored items for recommend, and 20 + 5 for the large case): ``query`` by the item's vector,
  ``query_by_id``, ``recommend`` with ``average`` and with ``best_score``;
* recall@10 of both recommend strategies against a float64 brute force of their definitions;
* ``space.compare(v1, v2, sample=1000, k=10)`` wall time (median of 3) where v2 is v1 with Gaussian noise (sigma
  0.02 per dimension) on every vector and 5 % of the items replaced by other items' vectors: a stand-in for a
  retrained model, since the data set has one model only.

Writes (replaces) the section ``## Recommendation benchmark (scripts/bench_reco.py)`` of BENCHMARKS.md.

    .venv/bin/python scripts/bench_reco.py            # full run (~3 min on 2 cores)
    .venv/bin/python scripts/bench_reco.py --quick    # 10,000 items
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from benchlib import WorkerProc, interleaved_latency, loadavg, machine, pct, write_section  # noqa: E402

import embcache  # noqa: E402
from embcache.core.examples import sigma  # noqa: E402
from embcache.redis.server import RedisServer  # noqa: E402

SECTION = "## Recommendation benchmark (scripts/bench_reco.py)"
DATA = REPO_ROOT.parent / "shared" / "data" / "debian-minilm"


def _oracle(items: np.ndarray, pos: list[int], neg: list[int], strategy: str, k: int) -> set[int]:
    if strategy == "average":
        q = 2 * items[pos].mean(0) - items[neg].mean(0)
        score = items @ (q / np.linalg.norm(q))
    else:
        p, n = (items @ items[pos].T).max(1), (items @ items[neg].T).max(1)
        score = np.where(p > n, sigma(p), -sigma(n))
    score[pos + neg] = -np.inf
    return set(np.argsort(-score, kind="stable")[:k].tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    t_start = time.perf_counter()
    load_start = loadavg()
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    base = np.load(DATA / "base.f16.npy").astype(np.float32)
    if args.quick:
        base = base[:10_000]
    n = len(base)
    items = (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float64)
    ids = [str(i) for i in range(n)]
    rng = np.random.default_rng(0)
    moved = base + rng.normal(scale=0.02, size=base.shape).astype(np.float32)
    swap = rng.choice(n, size=n // 20, replace=False)
    moved[swap] = base[rng.permutation(swap)]

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp, port=None, unix_socket=False).start()
        worker = WorkerProc(server.url, Path(tmp) / "worker.log")
        try:
            hub = embcache.connect(server.url)
            worker.wait_ready(hub.store.r, hub.keys.dispatcher_lock())
            space = hub.create_space("minilm", dim=384, metric="cosine")
            v1, v2 = space.create_version(), space.create_version()
            for v, mat in ((v1, base), (v2, moved)):
                for s in range(0, n, 10_000):
                    v.upsert(ids[s:s + 10_000], mat[s:s + 10_000])
                t0 = time.perf_counter()
                v.build(timeout=600)
                print(f"built {v.name} in {time.perf_counter() - t0:.1f} s")

            probes = rng.choice(n, size=(args.probes, 4), replace=False if n > 4 * args.probes else True)
            big = rng.choice(n, size=(20, 25), replace=False)
            ev = dict(consistency="eventual")
            v1.query(base[:1], 10, **ev)  # load the snapshot

            def ex(row: np.ndarray) -> tuple[list[str], list[str]]:
                return [ids[j] for j in row[:-1]], [ids[row[-1]]]

            runners = {
                "query (vector)": lambda r: v1.query(items[r[0]].astype(np.float32), 10, **ev),
                "query_by_id": lambda r: v1.query_by_id([ids[r[0]]], 10, **ev),
                "recommend average (3+, 1-)": lambda r: v1.recommend(*ex(r), 10, **ev),
                "recommend best_score (3+, 1-)": lambda r: v1.recommend(*ex(r), 10, strategy="best_score", **ev),
            }
            lat = interleaved_latency(runners, probes, rounds=3, block=20)
            big_runners = {
                "recommend average (20+, 5-)": lambda r: v1.recommend([ids[j] for j in r[:20]],
                                                                      [ids[j] for j in r[20:]], 10, **ev),
                "recommend best_score (20+, 5-)": lambda r: v1.recommend([ids[j] for j in r[:20]],
                                                                         [ids[j] for j in r[20:]], 10,
                                                                         strategy="best_score", **ev),
            }
            lat.update(interleaved_latency(big_runners, big, rounds=3, block=5))

            recall = {}
            for strategy, ef in (("average", None), ("best_score", None), ("average", 256)):
                hits = 0
                for row in probes[:100]:
                    pos, neg = [int(j) for j in row[:-1]], [int(row[-1])]
                    got = v1.recommend([ids[j] for j in pos], [ids[j] for j in neg], 10, strategy=strategy, ef=ef,
                                       **ev)
                    hits += len(_oracle(items, pos, neg, strategy, 10) & {int(i) for i in got.ids[0]})
                recall[strategy if ef is None else f"{strategy} ef={ef}"] = hits / (len(probes[:100]) * 10)

            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                report = space.compare("v1", "v2", sample=1000, k=10)
                times.append(time.perf_counter() - t0)
            hub.close()
        finally:
            worker.stop()
            server.stop()

    m = machine()
    load_end = loadavg()
    ref = pct(lat["query_by_id"], 50)
    rows = [f"| {name} | {pct(s, 50) * 1e6:.0f} | {pct(s, 99) * 1e6:.0f} | {pct(s, 50) / ref:.2f} |"
            for name, s in lat.items()]
    text = "\n".join([
        SECTION,
        "",
        f"Run {started} ({time.perf_counter() - t_start:.0f} s), issue 14's benchmark. Load average (1/5/15 min) "
        f"{load_start} at the start, {load_end} at the end, on {m['cores']} cores (shared machine: the ratios are "
        "from interleaved blocks in one process).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram']} RAM; {m['os']}",
        f"- Software: Python {m['python']}, numpy {m['numpy']}, hnswlib {m['hnswlib']}, redis-server "
        f"{m['redis-server']} (AOF on, loopback TCP), redis-py {m['redis-py']}",
        f"- Data: debian-minilm, {n} x 384 (float16 cast to float32), cosine; M=16, ef_construction=200, ef=64; "
        "one worker built both versions",
        f"- Latency: {len(probes)} probes x 3 rounds (the 20+5 case: 20 probes x 3), interleaved in blocks, "
        "`consistency=\"eventual\"`; recommend reads its examples' vectors from Redis (one round trip)",
        "- Command: `python scripts/bench_reco.py`" + (" --quick" if args.quick else ""),
        "",
        "| call | p50 us | p99 us | p50 / query_by_id |",
        "|---|---|---|---|",
        *rows,
        "",
        f"- recall@10 against a float64 brute force of the definitions ({min(100, len(probes))} probes, 3 liked "
        "+ 1 disliked): "
        f"average {recall['average']:.3f} ({recall['average ef=256']:.3f} with ef=256), best_score "
        f"{recall['best_score']:.3f}. average's is the index's recall for the averaged vector: a mix of unrelated "
        "items points between the data's clusters, where HNSW at ef=64 finds less than for a stored item; "
        "best_score searches from the stored examples themselves",
        f"- `space.compare(v1, v2, sample=1000, k=10)`: median {np.median(times):.2f} s (of 3: "
        f"{', '.join(f'{t:.2f}' for t in times)}); it lists {2 * n} ids, reads 2 x 1000 vectors and runs "
        f"2 x 1000 queries. v2 = v1 + noise (sigma 0.02) with 5 % of the vectors swapped: mean overlap@10 "
        f"{report.overlap_mean:.3f}, p10 {dict(report.overlap_quantiles)[0.1]:.2f}, centroid cosine "
        f"{report.centroid_cosine:.4f}",
    ])
    print(text)
    if not args.no_write:
        write_section(REPO_ROOT / "BENCHMARKS.md", SECTION, text)


if __name__ == "__main__":
    main()
