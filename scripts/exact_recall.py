"""Exact queries on the full debian-minilm set against its published ground truth.

    python scripts/exact_recall.py [--data ../shared/data/debian-minilm] [--queries 500]

Stores the 59,000 x 384 MiniLM vectors in a cosine space on a private redis-server, with no worker running, so
every query takes embcache's exact (brute-force) path; compares the top 10 with `gt_ids.npy` (exact cosine top-100
computed in float32 on the float32 cast of the same vectors) and with an independent float64 brute force, and
reports recall@10 and the latency of single and batched exact queries. Where the answer differs from gt_ids it
prints both candidates' float64 distances (float32 rounding in gt_ids can order two near-equal rows the other way).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import embcache  # noqa: E402
from embcache.core.views import ExactBase  # noqa: E402
from embcache.redis.server import RedisServer, free_port  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "debian-minilm")
    p.add_argument("--queries", type=int, default=500)
    a = p.parse_args()
    base = np.load(a.data / "base.f16.npy").astype(np.float32)
    queries = np.load(a.data / "queries.npy")[: a.queries]
    gt = np.load(a.data / "gt_ids.npy")[: a.queries, :10]
    print(f"data: {base.shape[0]} x {base.shape[1]} vectors, {len(queries)} queries ({a.data})")

    with tempfile.TemporaryDirectory() as tmp, RedisServer(tmp, port=free_port()) as server:
        with embcache.connect(server.url, refresh_interval=0) as hub:
            v = hub.create_space("minilm", dim=base.shape[1], metric="cosine").create_version()
            t0 = time.perf_counter()
            v.upsert([str(i) for i in range(len(base))], base)
            print(f"upsert: {time.perf_counter() - t0:.2f} s")
            t0 = time.perf_counter()
            v.query(queries[0], 10)  # loads the partition (no snapshot: an exact base)
            print(f"first query (loads the exact base): {time.perf_counter() - t0:.2f} s")
            assert isinstance(hub.cache.cached(("minilm", v.name, "default")), ExactBase)

            single = []
            found = []
            for q in queries:
                t0 = time.perf_counter()
                res = v.query(q, 10, consistency="eventual")
                single.append(time.perf_counter() - t0)
                found.append([int(i) for i in res.ids[0]])
            t0 = time.perf_counter()
            batched = v.query(queries, 10, consistency="eventual")
            batch_s = time.perf_counter() - t0
            assert [[int(i) for i in r] for r in batched.ids] == found

    # an independent float64 brute force (numpy, not embcache's code), and the published float32 ground truth
    normed = base / np.linalg.norm(base.astype(np.float64), axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)
    dist = 1.0 - qn @ normed.T
    exact64 = np.argsort(dist, axis=1, kind="stable")[:, :10]
    recall64 = np.mean([len(set(r) & set(e.tolist())) / 10 for r, e in zip(found, exact64)])
    recall_gt = np.mean([len(set(r) & set(g.tolist())) / 10 for r, g in zip(found, gt)])
    print(f"recall@10 vs an independent float64 brute force: {recall64:.4f}")
    print(f"recall@10 vs gt_ids.npy (computed in float32): {recall_gt:.4f}")
    for qi, (r, g) in enumerate(zip(found, gt)):
        for mine, theirs in zip(sorted(set(r) - set(g.tolist())), sorted(set(g.tolist()) - set(r))):
            print(f"  query {qi}: row {mine} (float64 distance {dist[qi, mine]:.7f}) instead of gt's row {theirs} "
                  f"({dist[qi, theirs]:.7f}): "
                  f"{'ours is nearer in float64' if dist[qi, mine] < dist[qi, theirs] else 'MISS'}")
    ms = np.array(single) * 1000
    print(f"single exact query: p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms")
    print(f"batched: {len(queries)} queries in {batch_s:.2f} s ({len(queries) / batch_s:.0f} q/s)")
    if recall64 < 1.0:
        raise SystemExit("recall below 1.0 against the float64 brute force")


if __name__ == "__main__":
    main()
