"""Before/after figures of issue 11's function bounds: the Functions library of commit c242f8f (before) against
the current one, loaded side by side in one scratch redis-server (interleaved A/B for the upsert cost).

    python scripts/bench_functions.py            # needs git (reads the old library from c242f8f) and redis-server
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

from embcache.redis.server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
OLD_COMMIT = "c242f8f"


def old_library() -> str:
    text = subprocess.run(["git", "show", f"{OLD_COMMIT}:embcache/functions.lua"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    return (text.replace("#!lua name=embcache", "#!lua name=embold").replace("'emb_", "'old_")
            .replace("function_name='emb_", "function_name='old_"))


def timed(fn):  # noqa: ANN001, ANN201
    t0 = time.perf_counter()
    try:
        out = fn()
        res = f"{len(out)} reply elements" if isinstance(out, list) else str(out)[:40]
    except redis.ResponseError as exc:
        res = str(exc)[:60]
    return time.perf_counter() - t0, res


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        srv = RedisServer(Path(d) / "srv", port=free_port()).start()
        try:
            r = redis.Redis.from_url(srv.url, socket_timeout=120)
            r.function_load(old_library(), replace=True)
            r.function_load((ROOT / "embcache/redis/functions.lua").read_text(), replace=True)
            x = np.random.default_rng(0).standard_normal((1000, 384)).astype(np.float32)
            blobs = [row.tobytes() for row in x]
            meta = '{"genre":"drama","year":1994}'
            times: dict[str, list[float]] = {"old": [], "new": []}
            for rnd in range(200):
                for which in (("old", "new") if rnd % 2 else ("new", "old")):
                    ids = [f"item-{rnd}-{i}" for i in range(1000)]
                    ks = [f"emb:{{{which}/{rnd}/p}}:{k}" for k in ("vec", "meta", "log", "state", "sealed")]
                    args = ([json.dumps(ids)] if which == "old" else []) + [1000] + \
                        [a for i in range(1000) for a in (ids[i], blobs[i], meta)]
                    fn = "old_upsert" if which == "old" else "emb_upsert"
                    t0 = time.perf_counter()
                    r.fcall(fn, 5, *ks, *args)
                    times[which].append(time.perf_counter() - t0)
            for k, v in times.items():
                print(f"{k}: emb_upsert of 1,000 x 384 float32, median {statistics.median(v) * 1000:.2f} ms "
                      f"over {len(v)} calls")
            ks = [f"emb:{{a/v1/p1}}:{k}" for k in ("vec", "meta", "log", "state")]
            v = np.ones(384, np.float32).tobytes()
            for j in range(0, 300_000, 10_000):
                r.hset(ks[0], mapping={f"z{i}": v for i in range(j, j + 10_000)})
            r.hset(ks[3], "pos", r.xadd(ks[2], {"op": "u", "ids": json.dumps([f"z{i}" for i in range(300_000)])}))
            for name in ("old_tail", "emb_tail"):
                print(name, "after one crafted entry of 300,000 ids:",
                      timed(lambda n=name: r.fcall_ro(n, 4, *ks, "0-0", 10_000)))
            for name in ("old_tail", "emb_tail"):
                print(name, "limit 10^9:", timed(lambda n=name: r.fcall_ro(n, 4, *ks, "0-0", 1_000_000_000)))
            r.delete(ks[2])
            r.hset(ks[3], "pos", r.xadd(ks[2], {"op": "u", "ids": '["' + "y" * (10 << 20) + '"]'}))
            for name in ("old_tail", "emb_tail"):
                print(name, "after one 10 MB entry:", timed(lambda n=name: r.fcall_ro(n, 4, *ks, "0-0", 10_000)))
            uk = [f"emb:{{a/v1/p2}}:{k}" for k in ("vec", "meta", "log", "state", "sealed")]
            print("old_upsert n=3,000,000 with one triple:",
                  timed(lambda: r.fcall("old_upsert", 5, *uk, '["a"]', 3_000_000, "a", v, "")))
            print("emb_upsert n=3,000,000 with one triple:", timed(lambda: r.fcall("emb_upsert", 5, *uk, 3_000_000,
                                                                                   "a", v, "")))
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
