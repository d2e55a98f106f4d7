#!/usr/bin/env python3
"""Cold start (issue 12 part 5): a new process's first answer from a built partition, against hnswlib's own
``load_index`` of the same index from a local file.

Setup (untimed): a redis-server of its own (AOF on, everysec, loopback TCP), the debian-minilm base (59,000 x
384, package names as ids, ``section``/``short`` as metadata) upserted into one partition, one worker builds and
publishes its snapshot, the worker is stopped; the snapshot's hnswlib section is written to a local file (the
very index embcache serves).

Timed, each in a fresh Python process, imports done before the clock starts (and reported apart):
- **raw hnswlib**: ``Index(...)``, ``load_index(path)``, ``set_ef``, the first ``knn_query``;
- **embcache**: ``embcache.connect(url)``, ``space().version()``, the first ``query`` (eventual): the snapshot
  is fetched, verified (manifest digest, space record, log position, index header, sha256 of every byte) and
  loaded on that first use.

The two alternate (A B, B A, ...) for ``--repeats`` pairs; the table gives medians, and the median of the
per-pair ratios. The embcache child also times a second load of the snapshot in-process, phase by phase
(manifest, chunks, verify + load), to show where the time goes.

    python scripts/bench_coldstart.py [--repeats 15] [--n 59000] [--out BENCHMARKS.md] [--no-write]
    python scripts/bench_coldstart.py --url redis://... --version v1   # an existing space "coldstart"
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
# a child of --before TREE imports that tree's embcache (the code before a change), this script's otherwise
TREE = Path(sys.argv[sys.argv.index("--tree") + 1]) if "--tree" in sys.argv else REPO_ROOT
sys.path.insert(0, str(TREE))

SECTION = "## Cold start (scripts/bench_coldstart.py)"
SPACE, PARTITION, K = "coldstart", "default", 10
DATA = Path(os.environ.get("EMBCACHE_BENCH_DATA", REPO_ROOT.parent / "shared" / "data" / "debian-minilm"))


# the children -------------------------------------------------------------------------------------------------
def child(kind: str, spec: dict[str, Any]) -> None:
    q = np.load(spec["query"])
    out: dict[str, Any] = {}
    ti = time.perf_counter()
    if kind == "raw":
        import hnswlib

        out["imports_s"] = time.perf_counter() - ti
        t0 = time.perf_counter()
        ix = hnswlib.Index(space="cosine", dim=len(q))
        ix.load_index(spec["index"])
        ix.set_ef(spec["ef"])
        labels = ix.knn_query(q[None, :], k=K, num_threads=1)[0][0].tolist()
        out["first_answer_s"] = time.perf_counter() - t0
        out["first"] = [spec["ids"][lab] for lab in labels[:3]]
    else:
        import embcache
        from embcache.redis import snapshots

        out["imports_s"] = time.perf_counter() - ti
        t0 = time.perf_counter()
        hub = embcache.connect(spec["url"])
        version = hub.space(SPACE).version(spec["version"])
        ids = version.query(q, n_results=K, consistency="eventual").ids[0]
        out["first_answer_s"] = time.perf_counter() - t0
        out["first"] = ids[:3]
        base = hub.cache.cached((SPACE, spec["version"], PARTITION))
        out["base"] = type(base).__name__
        # where the time goes: the same load again, phase by phase (warm: connection and code paths are)
        pk = hub.keys.partition(SPACE, spec["version"], PARTITION)
        r = hub.store.r
        t1 = time.perf_counter()
        m = snapshots.read_manifest(r, pk)
        t2 = time.perf_counter()
        again = snapshots.load(r, pk, ef=spec["ef"], dim=len(q), metric="cosine", manifest=m)
        t3 = time.perf_counter()
        out["manifest_s"], out["load_s"], out["nbytes"] = t2 - t1, t3 - t2, m.nbytes
        fetch = getattr(snapshots, "fetch_chunks", None)
        if fetch is None:  # before issue 12.5: one pipeline of GETs
            t4 = time.perf_counter()
            pipe = r.pipeline(transaction=False)
            for i in range(m.chunks):
                pipe.get(pk.chunk(m.sid, i))
            chunks = pipe.execute()
            out["fetch_only_s"] = time.perf_counter() - t4
            del chunks
        del again
    print("RESULT " + json.dumps(out), flush=True)
    os._exit(0)


def run_child(kind: str, spec_path: Path, tree: Path = REPO_ROOT) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBCACHE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", kind, "--spec", str(spec_path),
                           "--tree", str(tree)], capture_output=True, text=True, env=env, cwd=tree, timeout=300)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{kind} child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])


# setup --------------------------------------------------------------------------------------------------------
def load_data(n: int) -> tuple[np.ndarray, list[str], list[dict[str, str]], np.ndarray]:
    from tests.datasets import unique_ids

    base = np.load(DATA / "base.f16.npy")[:n].astype(np.float32)
    with gzip.open(DATA / "items.jsonl.gz", "rt") as f:
        items = [json.loads(x) for x, _ in zip(f, range(len(base)))]
    ids = unique_ids([it["package"] for it in items], [int(it["row"]) for it in items])
    metas = [{"section": it.get("section") or "", "short": it.get("short") or ""} for it in items]
    queries = np.load(DATA / "queries.npy").astype(np.float32)
    return base, ids, metas, queries


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def med(xs: list[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=np.float64)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=59000)
    p.add_argument("--repeats", type=int, default=15, help="interleaved pairs of fresh processes")
    p.add_argument("--ef", type=int, default=64)
    p.add_argument("--url", help="use this server's space 'coldstart' (already built) instead of starting one")
    p.add_argument("--version", help="with --url: the version to query")
    p.add_argument("--keep", help="with no --url: keep the server's data in this directory and print its url")
    p.add_argument("--before", metavar="TREE", help="also time the embcache of this source tree (e.g. `git archive "
                   "main embcache tests scripts | tar -x -C TREE`), interleaved: before/after in one window")
    p.add_argument("--before-label", default="--before tree", help="what the --before tree is, for the table")
    p.add_argument("--tree", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(REPO_ROOT / "BENCHMARKS.md"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, json.loads(Path(args.spec).read_text()))
        return 0
    from scripts.benchlib import WorkerProc, cores, loadavg, machine, write_section

    command = "python scripts/bench_coldstart.py" + (" " + shlex.join(sys.argv[1:]) if len(sys.argv) > 1 else "")
    started = time.time()
    mach = machine(["hiredis"])
    load_start = loadavg()
    import embcache
    from embcache.core.snapshot import Manifest
    from embcache.redis.server import RedisServer, free_port

    base, ids, metas, queries = load_data(args.n)
    with tempfile.TemporaryDirectory(prefix="embcache-cold-") as tmp_s:
        tmp = Path(tmp_s)
        server = None
        setup = ""
        if args.url:
            url, version_name = args.url, args.version
        else:
            server = RedisServer(Path(args.keep) if args.keep else tmp / "redis", port=free_port())
            server.start()
            url = server.url
            hub = embcache.connect(url)
            worker = WorkerProc(url, tmp / "worker.log")
            worker.wait_ready(hub.store.r, hub.keys.dispatcher_lock())
            space = hub.create_space(SPACE, dim=base.shape[1], metric="cosine", M=16, ef_construction=200, ef=args.ef)
            version = space.create_version()
            version_name = version.name
            t = time.perf_counter()
            version.upsert(ids, base, metas, partition=PARTITION)
            version.build(wait=True, timeout=1800)
            worker.stop()
            setup = f"upsert + build {time.perf_counter() - t:.1f} s"
            hub.close()
        import redis as redis_py

        from embcache.core.keys import Keys

        r = redis_py.Redis.from_url(url)
        pk = Keys("emb").partition(SPACE, version_name, PARTITION)
        m = Manifest.from_json(r.get(pk.snap))
        blob = b"".join(r.get(pk.chunk(m.sid, i)) for i in range(m.chunks))
        index_path = tmp / "index.hnsw"  # the local file raw hnswlib loads: the very index embcache serves
        index_path.write_bytes(blob[: m.sections[0]])
        labels = np.frombuffer(blob, dtype="<i8", count=m.count, offset=m.sections[0])
        snap_ids = json.loads(blob[m.sections[0] + m.sections[1]: m.sections[0] + m.sections[1] + m.sections[2]])
        by_label = [""] * (int(labels.max()) + 1)
        for lab, id_ in zip(labels.tolist(), snap_ids):
            by_label[lab] = id_
        del blob
        r.close()
        np.save(tmp / "q.npy", queries[0])
        spec_path = tmp / "spec.json"
        spec_path.write_text(json.dumps({"url": url, "version": version_name, "index": str(index_path),
                                         "query": str(tmp / "q.npy"), "ef": args.ef, "ids": by_label}))
        log(f"{m.count} items, snapshot {m.nbytes / 1e6:.1f} MB in {m.chunks} chunks (index file "
            f"{m.sections[0] / 1e6:.1f} MB); {setup}")
        run_child("raw", spec_path)  # warm the page cache and the interpreter's files
        run_child("embcache", spec_path)
        before = Path(args.before).resolve() if args.before else None
        if before is not None:
            run_child("embcache", spec_path, before)
        raw: list[dict[str, Any]] = []
        emb: list[dict[str, Any]] = []
        old: list[dict[str, Any]] = []
        for i in range(args.repeats):
            kinds = ["raw", "embcache"] + (["before"] if before is not None else [])
            order = kinds[i % len(kinds):] + kinds[: i % len(kinds)]  # rotated: each goes first as often
            for kind in order:
                if kind == "before":
                    old.append(run_child("embcache", spec_path, before))  # type: ignore[arg-type]
                else:
                    (raw if kind == "raw" else emb).append(run_child(kind, spec_path))
            log(f"round {i + 1}: raw {raw[-1]['first_answer_s'] * 1e3:.0f} ms, embcache "
                f"{emb[-1]['first_answer_s'] * 1e3:.0f} ms (load again {emb[-1]['load_s'] * 1e3:.0f} ms)"
                + (f", before {old[-1]['first_answer_s'] * 1e3:.0f} ms" if old else ""))
        if server is not None and not args.keep:
            server.stop()
        elif server is not None:
            print(f"kept: --url {url} --version {version_name}")
    if emb[0]["first"] != raw[0]["first"]:
        log(f"note: first answers differ: embcache {emb[0]['first']} raw {raw[0]['first']}")
    load_end = loadavg()
    raw_ms = med([x["first_answer_s"] for x in raw]) * 1e3
    rows = [("raw hnswlib", "load_index (local file) + first query", f"{raw_ms:.0f} ms", "1.00")]

    def emb_rows(who: str, xs: list[dict[str, Any]]) -> None:
        rs = [e["first_answer_s"] / r_["first_answer_s"] for e, r_ in zip(xs, raw)]
        rows.append((who, "connect + first query (eventual; fetch, verify, load)",
                     f"{med([x['first_answer_s'] for x in xs]) * 1e3:.0f} ms", f"**{med(rs):.2f}** (median of the "
                     f"per-round ratios; {min(rs):.2f}-{max(rs):.2f})"))
        rows.append((who, "  the same snapshot load again in-process (manifest + chunks + verify + load)",
                     f"{med([x['manifest_s'] + x['load_s'] for x in xs]) * 1e3:.0f} ms", ""))
        if "fetch_only_s" in xs[0]:
            rows.append((who, "  of which fetching the chunks (one pipeline of GETs)",
                         f"{med([x['fetch_only_s'] for x in xs]) * 1e3:.0f} ms", ""))

    if old:
        emb_rows(f"embcache before ({args.before_label})", old)
    emb_rows("embcache" + (" after" if old else ""), emb)
    table = ["| system | what | median | ratio to raw hnswlib |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join([
        SECTION, "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} ({time.time() - started:.0f} s), issue 12 "
        "part 5.", "",
        f"- Machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram']} RAM; {mach['os']}",
        f"- Software: Python {mach['python']}, numpy {mach['numpy']}, hnswlib {mach['hnswlib']}, redis-server "
        f"{mach['redis-server']} (AOF on, everysec, loopback TCP), redis-py {mach['redis-py']}, hiredis "
        f"{mach['pkg:hiredis']}",
        f"- Data: `{DATA}`: {m.count} x {base.shape[1]} (package names as ids, section/short as metadata); "
        f"snapshot {m.nbytes / 1e6:.1f} MB in {m.chunks} chunks, index file {m.sections[0] / 1e6:.1f} MB; M=16, "
        f"ef_construction=200, ef={args.ef}, k={K}",
        f"- Method: {args.repeats} rounds of fresh processes, one of each system per round, their order rotated "
        "each round; imports before the clock; medians; the raw file is in the page cache (read once before timing)",
        f"- Load average (1/5/15 min) {load_start} at the start, {load_end} at the end, on {cores()} cores",
        f"- Command: `{command}`", "", *table, "",
    ])
    print("\n" + text)
    if not args.no_write:
        write_section(Path(args.out), SECTION, text)
        print(f"wrote the section to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
