#!/usr/bin/env python3
"""A bulk load in many upsert calls (issue 12 part 6): how many builds it starts and how many superseded
snapshots it leaves in Redis, with the dispatcher's settling off (``--settle 0 --max-delay 0``: the behaviour
before part 6) and on (the defaults).

Per configuration: a fresh worker (``python -m workers``) with that setting, a new version, the debian-minilm
base (59,000 x 384) upserted in ``--calls`` calls in a row, then ``build(wait=True)``. Reported: wall time from the
first upsert to the published snapshot, generations published, chunk sets of superseded generations still in
Redis right after (they expire after their 120 s grace) and their bytes (MEMORY USAGE), and the worker's build
time summed over its builds (from its log).

    python scripts/bench_bulkload.py [--n 59000] [--calls 59] [--out BENCHMARKS.md] [--no-write]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from scripts.benchlib import WorkerProc, cores, loadavg, machine, write_section  # noqa: E402

SECTION = "## Bulk load in many calls (scripts/bench_bulkload.py)"
DATA = REPO_ROOT.parent / "shared" / "data" / "debian-minilm"


def run(url: str, tmp: Path, name: str, env: dict[str, str], base: np.ndarray, calls: int) -> dict[str, Any]:
    import embcache
    from embcache.redis import snapshots

    hub = embcache.connect(url)
    worker = WorkerProc(url, tmp / f"worker-{name}.log", env=env)
    try:
        worker.wait_ready(hub.store.r, hub.keys.dispatcher_lock())
        space = hub.create_space(f"bulk-{name}", dim=base.shape[1], metric="cosine", M=16, ef_construction=200)
        v = space.create_version()
        per = -(-len(base) // calls)
        pk = hub.keys.partition(space.name, v.name, "default")
        seen: dict[int, float] = {}  # generation -> its build_seconds, polled while the load runs
        done = threading.Event()

        def watch() -> None:
            r2 = embcache.connect(url).store.r
            while not done.is_set():
                m2 = snapshots.read_manifest(r2, pk)
                if m2 is not None:
                    seen.setdefault(m2.generation, m2.build_seconds)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.perf_counter()
        for c in range(calls):
            rows = slice(c * per, min(len(base), (c + 1) * per))
            v.upsert([str(i) for i in range(rows.start, rows.stop)], base[rows])
        t1 = time.perf_counter()
        v.build(wait=True, timeout=3600)
        t2 = time.perf_counter()
        r = hub.store.r
        m = snapshots.read_manifest(r, pk)
        done.set()
        watcher.join()
        seen.setdefault(m.generation, m.build_seconds)
        sids: dict[str, int] = {}
        for key in r.scan_iter(match=f"{pk.snap}:*", count=1000):
            sid = key.decode()[len(pk.snap) + 1 :].rsplit(":", 1)[0]
            sids[sid] = sids.get(sid, 0) + int(r.memory_usage(key) or 0)
        old = {s: b for s, b in sids.items() if s != m.sid}
        time.sleep(0.5)
    finally:
        worker.stop()
    builds = list(seen.values())
    out = {"name": name, "upsert_s": t1 - t0, "to_published_s": t2 - t0, "generations": m.generation,
           "superseded": len(old), "superseded_mb": sum(old.values()) / 1e6, "builds": len(builds),
           "build_s": sum(builds), "snapshot_mb": m.nbytes / 1e6}
    hub.drop_space(space.name)
    hub.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=59000)
    p.add_argument("--calls", type=int, default=59)
    p.add_argument("--out", default=str(REPO_ROOT / "BENCHMARKS.md"))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    command = "python scripts/bench_bulkload.py" + (" " + shlex.join(sys.argv[1:]) if len(sys.argv) > 1 else "")
    from embcache.redis.server import RedisServer, free_port
    from embcache.redis.settings import MAX_DELAY_SECONDS, SETTLE_SECONDS

    started = time.time()
    mach = machine()
    load_start = loadavg()
    base = np.load(DATA / "base.f16.npy")[: args.n].astype(np.float32)
    configs = [("settling off (before)", {"EMBCACHE_BUILD_SETTLE": "0", "EMBCACHE_BUILD_MAX_DELAY": "0"}),
               (f"settle {SETTLE_SECONDS:g} s, max delay {MAX_DELAY_SECONDS:g} s (after, the defaults)", {})]
    results = []
    with tempfile.TemporaryDirectory(prefix="embcache-bulk-") as tmp_s:
        tmp = Path(tmp_s)
        server = RedisServer(tmp / "redis", port=free_port()).start()
        try:
            for i, (label, env) in enumerate(configs):
                res = run(server.url, tmp, str(i), env, base, args.calls)
                res["label"] = label
                results.append(res)
                print(f"[{time.strftime('%H:%M:%S')}] {label}: {res}", flush=True)
        finally:
            server.stop()
    load_end = loadavg()
    table = ["| dispatcher | upserts | first upsert -> published | generations published | builds (their time) | "
             "superseded snapshots left (MB) |", "|---|---|---|---|---|---|"]
    for x in results:
        table.append(f"| {x['label']} | {x['upsert_s']:.1f} s | {x['to_published_s']:.1f} s | {x['generations']} | "
                     f"{x['builds']} ({x['build_s']:.1f} s) | {x['superseded']} ({x['superseded_mb']:.0f} MB) |")
    text = "\n".join([
        SECTION, "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} ({time.time() - started:.0f} s), issue 12 "
        "part 6.", "",
        f"- Machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram']} RAM; {mach['os']}; redis-server "
        f"{mach['redis-server']} (AOF on, everysec, loopback TCP)",
        f"- Data: `{DATA}`: {len(base)} x {base.shape[1]} upserted in {args.calls} calls in a row into one partition "
        "(M=16, ef_construction=200), then `build(wait=True)`; one worker (`python -m workers`) per configuration",
        f"- Load average (1/5/15 min) {load_start} at the start, {load_end} at the end, on {cores()} cores",
        f"- Command: `{command}`", "", *table, "",
        "Superseded snapshots: chunk sets of earlier generations still in Redis when the last one was published "
        "(each stays for its 120 s grace period).", "",
    ])
    print("\n" + text)
    if not args.no_write:
        write_section(Path(args.out), SECTION, text)
        print(f"wrote the section to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
