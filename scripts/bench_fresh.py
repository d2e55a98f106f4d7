#!/usr/bin/env python
"""Freshness benchmark (issue 12): how soon a committed write is visible at ``eventual`` in *other* processes.

Per write rate: a fresh one-partition version of the debian-minilm base (59,000 x 384, ``../shared/data``), built
by one worker (``python -m workers``), is loaded by two reader processes; a writer process then upserts batches
of 10 new items at the rate, on a fixed schedule, recording when it sent each batch. Each reader repeatedly takes
the newest batch due by the schedule and polls ``eventual`` queries (k=1, the batch's first vector) until that item
comes back: commit -> visible is the time it first saw it minus the writer's send time (so it also counts the
write's own round trip). Snapshots published during the run are counted. The readers also time every poll.

Then the overlay's cost: with builds paused, items are added to another 59k version until the follower's overlay
holds 1,000 / 10,000 / 50,000 of them; single-query p50 at ``eventual`` of a following hub vs a hub with
``follow=False`` on the same snapshot (no overlay), interleaved A/B over the 500 held-out queries.

Where ``../shared/scripts/redis-search-server`` can start a Redis with the Query Engine, the same writer/reader
measurement runs against it (HSET + FT.SEARCH KNN 1, HNSW index on write) side by side.

Writes (replaces) the section ``## Freshness (scripts/bench_fresh.py)`` of BENCHMARKS.md.

    .venv/bin/python scripts/bench_fresh.py            # 200 / 1,000 / 10,000 writes/s, 30 / 30 / 10 s
    .venv/bin/python scripts/bench_fresh.py --quick    # 10,000-item base, 5 s per rate, overlays up to 10,000
"""

from __future__ import annotations

import argparse
import datetime as dt
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
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from benchlib import WorkerProc, interleaved_latency, loadavg, machine, pct, write_section  # noqa: E402

DATA = REPO_ROOT.parent / "shared" / "data" / "debian-minilm"
RQE_SCRIPT = REPO_ROOT.parent / "shared" / "scripts" / "redis-search-server"
SECTION = "## Freshness (scripts/bench_fresh.py)"
BATCH = 10
SPACE = "fresh"
BEFORE = [  # issue 12, measured before the follower (one reader, 60 s)
    ("200", "2.6 s", "5.0 s", "6.4 s", "48"),
    ("1,000", "5.4 s", "8.6 s", "9.4 s", "25"),
]


def load_base(n: int) -> np.ndarray:
    base = np.load(DATA / "base.f16.npy").astype(np.float32)[:n]
    return base / np.linalg.norm(base, axis=1, keepdims=True)


def new_vectors(base: np.ndarray, first: int, count: int, seed: int) -> np.ndarray:
    """Deterministic new items: real vectors moved a little (each is its own nearest neighbour)."""
    rng = np.random.default_rng(seed)
    rows = (np.arange(first, first + count) * 7919) % len(base)
    x = base[rows] + 0.15 * rng.standard_normal((count, base.shape[1])).astype(np.float32) / np.sqrt(base.shape[1])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --- child processes ---------------------------------------------------------------------------------------------
def role_writer(a: argparse.Namespace) -> None:
    """Upsert batches of 10 on the schedule t0 + j * 10 / rate; save each batch's send time."""
    base = load_base(a.n)
    n_batches = int(a.rate * a.seconds / BATCH)
    vecs = new_vectors(base, 0, n_batches * BATCH, a.seed)
    ids = [f"w{a.seed}_{j}" for j in range(n_batches * BATCH)]
    sent = np.full(n_batches, np.nan)
    committed = np.full(n_batches, np.nan)
    if a.system == "embcache":
        import embcache

        hub = embcache.connect(a.url, refresh_interval=3600, follow=False)
        v = hub.space(SPACE).version(a.version)
        pid = (SPACE, a.version, "default")

        def write(j: int) -> None:
            v.upsert(ids[j * BATCH : (j + 1) * BATCH], vecs[j * BATCH : (j + 1) * BATCH])
            # the commit's time: the ms part of its log position (Redis's clock, this machine's); read from the
            # writer's own session copy, which is then dropped so it never grows
            it = hub.session._writes.get(pid, {}).get(ids[j * BATCH])
            if it is not None:
                committed[j] = int(it.pos.split("-")[0]) / 1000.0
            hub.session.drop(lambda _pid: True)
    else:
        import redis

        r = redis.Redis.from_url(a.url)

        def write(j: int) -> None:
            p = r.pipeline(transaction=False)
            for i in range(j * BATCH, (j + 1) * BATCH):
                p.hset(f"doc:{ids[i]}", mapping={"vec": vecs[i].tobytes()})
            p.execute()
            committed[j] = time.time()  # the reply is back: committed (and indexed) by now

    wait_until(a.t0)
    interval = BATCH / a.rate
    for j in range(n_batches):
        due = a.t0 + j * interval
        if (d := due - time.time()) > 0:
            time.sleep(d)
        sent[j] = time.time()
        write(j)
    np.save(a.out, np.stack([sent, committed]))


def role_reader(a: argparse.Namespace) -> None:
    """Poll eventual queries for the newest due batch until it shows; save (batch, seen time) and poll times."""
    base = load_base(a.n)
    n_batches = int(a.rate * a.seconds / BATCH)
    vecs = new_vectors(base, 0, n_batches * BATCH, a.seed)[::BATCH]
    ids = [f"w{a.seed}_{j * BATCH}" for j in range(n_batches)]
    applied: list[tuple[float, float]] = []  # (when, the ms of the position it reached), embcache only
    if a.switch_interval:  # the readers' GIL switch interval (Python's default: 5 ms)
        sys.setswitchinterval(a.switch_interval)
    if a.system == "embcache":
        import embcache

        hub = embcache.connect(a.url, refresh_interval=1.0)
        v = hub.space(SPACE).version(a.version)
        follower, publish = hub.cache.follower, hub.cache.follower._publish

        def traced(buf: Any, pos: str, items: dict[str, Any]) -> None:  # when this process applied each tail
            publish(buf, pos, items)
            applied.append((time.time(), int(pos.split("-")[0]) / 1000.0))

        follower._publish = traced

        def top1(q: np.ndarray) -> str | None:
            got = v.query(q, n_results=1, consistency="eventual").ids[0]
            return got[0] if got else None
    else:
        import redis

        r = redis.Redis.from_url(a.url)

        def top1(q: np.ndarray) -> str | None:
            res = r.execute_command("FT.SEARCH", "idx", "*=>[KNN 1 @vec $B]", "PARAMS", "2", "B", q.tobytes(),
                                    "RETURN", "0", "DIALECT", "2")
            return _rqe_top(res)

    top1(base[0])  # load the snapshot before the writer starts
    Path(a.out + ".ready").touch()
    interval = BATCH / a.rate
    seen: list[tuple[int, float]] = []
    polls: list[float] = []
    end = a.t0 + a.seconds + 5
    last = -1
    pc = time.perf_counter
    while time.time() < end:
        j = min(n_batches - 1, int((time.time() - a.t0) / interval))
        if j <= last:
            time.sleep(0.0005)
            continue
        while time.time() < end:
            t = pc()
            hit = top1(vecs[j]) == ids[j]
            polls.append(pc() - t)
            if hit:
                seen.append((j, time.time()))
                break
            if a.poll_every and (rest := a.poll_every - (pc() - t)) > 0:  # a reader with other work to do
                time.sleep(rest)
        last = j
        if j == n_batches - 1:
            break
    np.save(a.out, np.array(seen, dtype=np.float64).reshape(-1, 2))
    np.save(a.out + ".polls.npy", np.array(polls))
    np.save(a.out + ".applied.npy", np.array(applied, dtype=np.float64).reshape(-1, 2))
    if a.system == "embcache":
        hub.close()


def role_hotpath(a: argparse.Namespace) -> None:
    """Time single eventual queries (k=10) with the embcache of the tree ``a.tree``: the fast path, no overlay."""
    sys.path[:] = [a.tree] + [x for x in sys.path if Path(x).resolve() != REPO_ROOT]
    for name in [m for m in sys.modules if m == "embcache" or m.startswith("embcache.")]:
        del sys.modules[name]
    import embcache

    assert Path(embcache.__file__).resolve().is_relative_to(Path(a.tree).resolve()), embcache.__file__
    queries = np.load(DATA / "queries.npy").astype(np.float32)
    hub = embcache.connect(a.url, refresh_interval=3600)
    v = hub.space(SPACE).version(a.version)
    for q in queries[:200]:
        v.query(q, 10, consistency="eventual")
    pc = time.perf_counter
    times = []
    for i in range(3000):
        q = queries[i % len(queries)]
        t = pc()
        v.query(q, 10, consistency="eventual")
        times.append(pc() - t)
    np.save(a.out, np.array(times))
    hub.close()


def _rqe_top(res: Any) -> str | None:
    """The first id of an FT.SEARCH reply (redis-py parses it into a dict, or leaves RESP2's flat list)."""
    if isinstance(res, dict):
        rows = res.get(b"results") or res.get("results") or []
        key = (rows[0].get(b"id") or rows[0].get("id")) if rows else None
    else:
        key = res[1] if len(res) > 1 else None
    if key is None:
        return None
    text = key.decode() if isinstance(key, bytes) else str(key)
    return text[4:]  # "doc:" + id


def _rqe_indexing(info: Any) -> bool:
    if isinstance(info, dict):
        return bool(float(info.get(b"indexing", info.get("indexing", 0)) or 0))
    pairs = dict(zip(info[::2], info[1::2]))
    return bool(int(pairs.get(b"indexing", 0)))


def wait_until(t: float) -> None:
    while (d := t - time.time()) > 0:
        time.sleep(min(d, 0.05))


def child(role: str, **kw: Any) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, __file__, "--role", role] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBCACHE_")}
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env)


# --- the driver --------------------------------------------------------------------------------------------------
class Published:
    """Polls, every 20 ms in a thread, the log position the partition's published snapshot and delta segments
    cover, and which snapshots and segments were published (their bytes are what workers uploaded)."""

    def __init__(self, hub: Any, v: Any) -> None:
        import threading

        self.r, self.pk = hub.store.r, hub.keys.partition(SPACE, v.name, "default")
        self.seen: list[tuple[float, int]] = []  # (time, ms part of the covered position)
        self.fulls: dict[str, int] = {}
        self.segments: dict[str, int] = {}
        self.first: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from embcache.core import delta, snapshot

        while not self._stop.wait(0.02):
            raw, raw_chain = self.r.mget([self.pk.snap, self.pk.delta])
            if raw is None:
                continue
            m = snapshot.Manifest.from_json(raw)
            if self.first is None:
                self.first = m.sid
            self.fulls[m.sid] = m.nbytes
            pos = m.pos
            if raw_chain is not None:
                chain = delta.Chain.from_json(raw_chain, None)
                if chain.base == m.sid:
                    pos = chain.pos
                    for seg in chain.segments:
                        self.segments[seg.sid] = seg.nbytes
            self.seen.append((time.time(), int(pos.split("-")[0])))

    def stop(self) -> None:
        time.sleep(3)  # the last writes' build
        self._stop.set()
        self._thread.join()

    def uploaded(self) -> int:
        """Bytes of the snapshots and segments published during the run (the one loaded before it excluded)."""
        return sum(n for sid, n in self.fulls.items() if sid != self.first) + sum(self.segments.values())

    def delays(self, committed: np.ndarray) -> np.ndarray:
        """Commit -> covered by a published snapshot or segment, per batch (batches never covered left out)."""
        if not self.seen:
            return np.array([])
        times = np.array([t for t, _ in self.seen])
        covered = np.maximum.accumulate(np.array([p for _, p in self.seen]))
        out = []
        for c in committed[np.isfinite(committed)]:
            i = int(np.searchsorted(covered, int(round(c * 1000))))
            if i < len(times):
                out.append(max(0.0, times[i] - c))
        return np.array(out)


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-fresh-"))
        self.results: dict[str, Any] = {"fresh": [], "overlay": [], "rqe": [], "notes": []}

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def start(self) -> None:
        import embcache
        from tests.servers import start_standalone

        self.server = start_standalone(self.tmp / "redis")
        self.url = self.server.url
        self.hub = embcache.connect(self.url, refresh_interval=3600, follow=False)
        self.hub.create_space(SPACE, dim=384, metric="cosine")
        env = dict(kv.split("=", 1) for kv in self.a.worker_env.split(",") if kv)
        self.worker = WorkerProc(self.url, self.tmp / "worker.log", env=env)
        self.worker.wait_ready(self.hub.store.r, self.hub.keys.dispatcher_lock())
        self.base = load_base(self.a.n)

    def stop(self) -> None:
        for what in ("worker", "hub", "server"):
            obj = getattr(self, what, None)
            if obj is not None:
                try:
                    obj.stop() if what != "hub" else obj.close()
                except Exception as exc:  # noqa: BLE001
                    self.log(f"stopping {what}: {exc}")

    def new_version(self) -> Any:
        v = self.hub.space(SPACE).create_version()
        ids = [f"b{i}" for i in range(len(self.base))]
        t0 = time.perf_counter()
        for s in range(0, len(ids), 2000):
            v.upsert(ids[s : s + 2000], self.base[s : s + 2000])
        v.build(timeout=900)
        self.log(f"{v.name}: {len(ids)} items loaded and built in {time.perf_counter() - t0:.1f} s")
        return v

    def generation(self, v: Any) -> int:
        m = self.manifest(v)
        return 0 if m is None else m.generation

    def manifest(self, v: Any) -> Any:
        from embcache.redis.snapshots import read_manifest

        return read_manifest(self.hub.store.r, self.hub.keys.partition(SPACE, v.name, "default"))

    def server_bytes(self) -> dict[str, int]:
        """Redis's own counters: bytes received from clients, the AOF's size (base + increments) and its
        rewrites so far (a rewrite shrinks the AOF, so growth is only read over a run without one)."""
        info = self.hub.store.r.info("all")
        return {"net_in": int(info.get("total_net_input_bytes", 0)), "aof": int(info.get("aof_current_size", 0)),
                "aof_rewrites": int(info.get("aof_rewrites", 0))}

    def visibility(self, system: str, url: str, rate: float, seconds: float, version: str = "",
                   v: Any = None) -> dict[str, Any]:
        seed = int(rate) + (7 if system != "embcache" else 0)
        out = self.tmp / f"{system}-{int(rate)}"
        common = dict(system=system, url=url, version=version or "none", rate=rate, seconds=seconds, n=self.a.n,
                      seed=seed, switch_interval=self.a.switch_interval, poll_every=self.a.poll_every)
        readers_ready = [Path(f"{out}-r{i}.npy.ready") for i in range(2)]
        for p in readers_ready:
            p.unlink(missing_ok=True)
        t0 = time.time() + 15  # generous: loading a 59k snapshot takes a second or two per reader
        procs = [child("reader", out=f"{out}-r{i}.npy", t0=t0, **common) for i in range(2)]
        deadline = time.time() + 14
        while not all(p.exists() for p in readers_ready) and time.time() < deadline:
            time.sleep(0.1)
        if not all(p.exists() for p in readers_ready):
            self.log("readers were slow to load; the run starts anyway")
        gen0 = self.generation(v) if v is not None else 0
        bytes0 = self.server_bytes() if system == "embcache" else None
        writer = child("writer", out=f"{out}-w.npy", t0=t0, **common)
        la = loadavg()
        watch = Published(self.hub, v) if v is not None else None
        writer.wait()
        if watch is not None:
            watch.stop()
        for p in procs:
            p.wait()
        gens = (self.generation(v) - gen0) if v is not None else None
        traffic: dict[str, Any] = {}
        if bytes0 is not None and v is not None:  # what the run cost Redis in bytes, per second of the run
            bytes1, m = self.server_bytes(), self.manifest(v)
            traffic = {"net_in_mb_s": (bytes1["net_in"] - bytes0["net_in"]) / 1e6 / seconds,
                       "aof_mb_s": (bytes1["aof"] - bytes0["aof"]) / 1e6 / seconds,
                       "aof_rewrites": bytes1["aof_rewrites"] - bytes0["aof_rewrites"],
                       "snapshot_mb_s": (gens or 0) * (m.nbytes if m is not None else 0) / 1e6 / seconds}
        sent, committed = np.load(f"{out}-w.npy")
        delays, from_send, polls, applied, after = [], [], [], [], []
        for i in range(2):
            seen = np.load(f"{out}-r{i}.npy")
            polls += list(np.load(f"{out}-r{i}.npy.polls.npy"))
            trace = np.load(f"{out}-r{i}.npy.applied.npy")  # (when, position's ms) of each tail applied
            reached = np.maximum.accumulate(trace[:, 1])
            for j, t in seen:
                if np.isfinite(committed[int(j)]):
                    delays.append(max(0.0, t - committed[int(j)]))
                    k = int(np.searchsorted(reached, committed[int(j)]))  # the first tail that reached it
                    if k < len(trace):
                        applied.append(max(0.0, trace[k, 0] - committed[int(j)]))
                        after.append(max(0.0, t - trace[k, 0]))
                if np.isfinite(sent[int(j)]):
                    from_send.append(t - sent[int(j)])
        d = np.array(delays)
        indexed = watch.delays(committed) if watch is not None else np.array([])
        if watch is not None:
            traffic.update(published_mb_s=watch.uploaded() / 1e6 / seconds, deltas=len(watch.segments))
        call = committed - sent
        written = int(np.isfinite(sent).sum()) * BATCH
        achieved = written / max(1e-9, float(np.nanmax(sent) - np.nanmin(sent)) + BATCH / rate)
        res = {"system": system, "rate": rate, "seconds": seconds, "achieved": achieved, "samples": len(d),
               "p50": pct(d, 50) if len(d) else float("nan"), "p95": pct(d, 95) if len(d) else float("nan"),
               "max": float(d.max()) if len(d) else float("nan"), "snapshots": gens, "load": la,
               "poll_p50_ms": pct(polls, 50) * 1e3 if polls else float("nan"),
               "from_send_p50": pct(from_send, 50) if from_send else float("nan"),
               "from_send_p95": pct(from_send, 95) if from_send else float("nan"),
               "indexed_p50": pct(indexed, 50) if len(indexed) else float("nan"),
               "indexed_p95": pct(indexed, 95) if len(indexed) else float("nan"),
               "indexed_max": float(indexed.max()) if len(indexed) else float("nan"),
               # commit -> applied by the reader's follower, and applied -> seen by its next poll
               "applied_p50": pct(applied, 50) if applied else float("nan"),
               "applied_p95": pct(applied, 95) if applied else float("nan"),
               "after_applied_p50": pct(after, 50) if after else float("nan"),
               "after_applied_p95": pct(after, 95) if after else float("nan"),
               "send_to_commit_p50_ms": float(np.nanmedian(call)) * 1e3 if np.isfinite(call).any() else float("nan"),
               **traffic}
        self.log(json.dumps(res))
        return res

    def fresh(self) -> None:
        for rate, seconds in zip(self.a.rates, self.a.seconds):
            v = self.new_version()
            self.results["fresh"].append(self.visibility("embcache", self.url, rate, seconds, v.name, v))
            self.hub.space(SPACE).drop_version(v.name)

    def overlay_cost(self) -> None:
        import embcache
        from tests.workers_fixtures import paused_builds

        v = self.new_version()
        f = embcache.connect(self.url, refresh_interval=3600)
        nf = embcache.connect(self.url, refresh_interval=3600, follow=False)
        try:
            vf, vn = f.space(SPACE).version(v.name), nf.space(SPACE).version(v.name)
            queries = np.load(DATA / "queries.npy").astype(np.float32)[: self.a.queries]
            vf.query(queries[0], 1, consistency="eventual")
            vn.query(queries[0], 1, consistency="eventual")
            pid = (SPACE, v.name, "default")
            pk = self.hub.keys.partition(*pid)
            written = 0
            with paused_builds(self.hub):
                for size in [0, *self.a.overlays]:
                    if size > written:
                        x = new_vectors(self.base, 10_000_000 + written, size - written, 99)
                        ids = [f"o{i}" for i in range(written, size)]
                        for s in range(0, len(ids), 1000):
                            v.upsert(ids[s : s + 1000], x[s : s + 1000])
                        written = size
                    target = self.hub.store.position(pk)
                    follower = f.cache.follower
                    assert follower is not None
                    deadline = time.monotonic() + 600
                    t0 = time.monotonic()
                    while time.monotonic() < deadline:
                        view = follower.view(pid)
                        buf = follower.buffers.get(pid)
                        if view is not None and view.pos == target and buf is not None and not buf.index_behind():
                            break
                        time.sleep(0.05)
                    caught = time.monotonic() - t0
                    runners = {"overlay": lambda q: vf.query(q, 10, consistency="eventual"),
                               "none": lambda q: vn.query(q, 10, consistency="eventual")}
                    for q in queries[:20]:
                        runners["overlay"](q), runners["none"](q)
                    samples = interleaved_latency(runners, queries, self.a.rounds, 25)
                    p_ov, p_none = pct(samples["overlay"], 50), pct(samples["none"], 50)
                    st = follower.stats(pid) or {}
                    res = {"size": size, "overlay_items": st.get("overlay_items", 0), "p50_overlay_ms": p_ov * 1e3,
                           "p50_none_ms": p_none * 1e3, "ratio": p_ov / p_none, "load": loadavg(),
                           "indexed_after_s": caught, "overlay_mb": st.get("overlay_bytes", 0) / 2**20,
                           "queries": len(samples["overlay"])}
                    self.log(json.dumps(res))
                    self.results["overlay"].append(res)
        finally:
            f.close()
            nf.close()
            self.hub.space(SPACE).drop_version(v.name)

    def hotpath(self, baseline: str) -> None:
        """The eventual fast path with an empty overlay, before (``baseline`` tree) and after (this tree):
        3,000 single queries per process, processes alternating, ``--hot-rounds`` each; median of the
        per-process medians."""
        v = self.new_version()
        try:
            med: dict[str, list[float]] = {"before": [], "after": []}
            for rnd in range(self.a.hot_rounds):
                for name, tree in (("before", baseline), ("after", str(REPO_ROOT)))[:: 1 if rnd % 2 == 0 else -1]:
                    out = self.tmp / f"hot-{name}-{rnd}.npy"
                    child("hotpath", url=self.url, version=v.name, out=out, tree=tree).wait()
                    med[name].append(pct(np.load(out), 50))
            b_, a_ = float(np.median(med["before"])), float(np.median(med["after"]))
            res = {"before_ms": b_ * 1e3, "after_ms": a_ * 1e3, "ratio": a_ / b_, "baseline": baseline,
                   "runs": {k: [round(x * 1e3, 4) for x in xs] for k, xs in med.items()}, "load": loadavg()}
            self.log(json.dumps(res))
            self.results["hotpath"] = res
        finally:
            self.hub.space(SPACE).drop_version(v.name)

    def rqe(self) -> None:
        if not RQE_SCRIPT.exists():
            self.results["notes"].append(f"{RQE_SCRIPT} does not exist: no Redis Query Engine comparison")
            return
        port = self.a.rqe_port
        proc = subprocess.run([str(RQE_SCRIPT), "start", str(port)], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            self.results["notes"].append(f"redis-search-server did not start: {proc.stderr.strip()[-300:]}")
            return
        url = proc.stdout.strip().splitlines()[-1]
        import redis

        try:
            r = redis.Redis.from_url(url)
            for rate, seconds in zip(self.a.rates, self.a.seconds):
                r.flushall()
                r.execute_command("FT.CREATE", "idx", "ON", "HASH", "PREFIX", "1", "doc:", "SCHEMA", "vec", "VECTOR",
                                  "HNSW", "10", "TYPE", "FLOAT32", "DIM", "384", "DISTANCE_METRIC", "COSINE", "M",
                                  "16", "EF_CONSTRUCTION", "200")
                t0 = time.perf_counter()
                for s in range(0, len(self.base), 1000):
                    p = r.pipeline(transaction=False)
                    for i in range(s, min(s + 1000, len(self.base))):
                        p.hset(f"doc:b{i}", mapping={"vec": self.base[i].tobytes()})
                    p.execute()
                while _rqe_indexing(r.execute_command("FT.INFO", "idx")):
                    time.sleep(0.2)
                self.log(f"RQE: {len(self.base)} items indexed in {time.perf_counter() - t0:.1f} s")
                self.results["rqe"].append(self.visibility("rqe", url, rate, seconds))
        finally:
            subprocess.run([str(RQE_SCRIPT), "stop", str(port)], capture_output=True, text=True)

    # report ---------------------------------------------------------------------------------------------------
    def section(self, command: str, started: float) -> str:
        mach = machine()
        a = self.a
        lines = [SECTION, "",
                 f"Run {dt.datetime.fromtimestamp(started, dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
                 f"{time.time() - started:.0f} s. Command: `{command}`.",
                 f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram']}; {mach['os']}; Python "
                 f"{mach['python']}, numpy {mach['numpy']}, hnswlib {mach['hnswlib']}, redis-server "
                 f"{mach['redis-server']}. Load average at the end: {loadavg()} (the machine is shared).",
                 f"Data: debian-minilm, {a.n:,} x 384 float32 (cosine), one partition, one worker; new items are real "
                 "vectors moved a little, in batches of 10; two reader processes poll `eventual` queries (k=1).", "",
                 "Commit -> visible at `eventual` in another process: from the commit (embcache: the millisecond of "
                 "the write's log position, Redis's clock on this machine; the Query Engine: when the writer's "
                 "HSET pipeline returned, i.e. a little after its commit) to the first poll that returns the "
                 "batch's first item. A reader follows one batch at a time, the newest due. \"from send\" counts "
                 "from before the writer's call instead (an embcache upsert also checks the partition list first, "
                 "and marks the partition dirty after).", "",
                 "| system | write rate (achieved) | seconds | samples | p50 | p95 | max | from send p50 / p95 | "
                 "snapshots published | reader poll p50 | load avg |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for rate, p50, p95, mx, snaps in BEFORE:
            lines.append(f"| embcache before (issue 12) | {rate}/s | 60 | | {p50} | {p95} | {mx} | | {snaps} | | |")
        for r in self.results["fresh"] + self.results["rqe"]:
            name = ("embcache after (follower)" if r["system"] == "embcache"
                    else "Redis Query Engine (HNSW, index on write)")
            snaps = "" if r["snapshots"] is None else str(r["snapshots"])
            lines.append(f"| {name} | {r['rate']:,.0f}/s ({r['achieved']:,.0f}/s) | {r['seconds']:g} | {r['samples']} "
                         f"| {_ms(r['p50'])} | {_ms(r['p95'])} | {_ms(r['max'])} | "
                         f"{_ms(r['from_send_p50'])} / {_ms(r['from_send_p95'])} | {snaps} | "
                         f"{r['poll_p50_ms']:.2f} ms | {r['load']} |")
        costed = [r for r in self.results["fresh"] if "aof_mb_s" in r]
        if costed:
            lines += ["", "What the write stream cost Redis (its INFO counters over each run; the AOF is appendonly "
                      "everysec with auto-rewrite): bytes received from all clients, AOF growth, and the full "
                      "snapshots the worker published (generations x snapshot size):", "",
                      "| write rate (achieved) | received MB/s | AOF growth MB/s | AOF rewrites | published MB/s "
                      "(snapshots + delta segments) | snapshots / segments published | commit -> published p50 / "
                      "p95 / max |", "|---|---|---|---|---|---|---|"]
            for r in costed:
                published = r.get("published_mb_s", float("nan"))
                lines.append(f"| {r['rate']:,.0f}/s ({r['achieved']:,.0f}/s) | {r['net_in_mb_s']:.1f} | "
                             f"{r['aof_mb_s']:.1f} | {r['aof_rewrites']} | {published:.1f} | "
                             f"{r['snapshots']} / {r.get('deltas', '')} | {_ms(r.get('indexed_p50', float('nan')))} / "
                             f"{_ms(r.get('indexed_p95', float('nan')))} / {_ms(r.get('indexed_max', float('nan')))} |")
        if self.results["overlay"]:
            lines += ["", "Query p50 at `eventual` (k=10, single queries, interleaved A/B over "
                      f"{a.queries} held-out queries x {a.rounds} rounds) of a following hub whose overlay holds N "
                      "unindexed items (builds paused) vs a hub with `follow=False` on the same snapshot:", "",
                      "| overlay items | p50 with overlay | p50 without | ratio | target | overlay memory | "
                      "caught up + indexed in | load avg |", "|---|---|---|---|---|---|---|---|"]
            targets = {0: "~1.0x", 1000: "<= 1.2x", 10000: "<= 1.5x", 50000: "<= 2x"}
            for r in self.results["overlay"]:
                lines.append(f"| {r['overlay_items']:,} | {r['p50_overlay_ms']:.3f} ms | {r['p50_none_ms']:.3f} ms | "
                             f"{r['ratio']:.2f}x | {targets.get(r['size'], '')} | {r['overlay_mb']:.0f} MiB | "
                             f"{r['indexed_after_s']:.1f} s | {r['load']} |")
        hp = self.results.get("hotpath")
        if hp:
            lines += ["", f"The eventual fast path with an empty overlay (k=10 single queries, 3,000 per process, "
                      f"processes alternating, {len(hp['runs']['before'])} each; median of their medians): "
                      f"before (`{hp['baseline']}`) "
                      f"{hp['before_ms']:.3f} ms, after (this tree, follower on) {hp['after_ms']:.3f} ms: "
                      f"{hp['ratio']:.2f}x. Per process: {hp['runs']}. Load average {hp['load']}."]
        for n in self.results["notes"]:
            lines += ["", f"Note: {n}"]
        return "\n".join(lines) + "\n"


def _ms(s: float) -> str:
    return "n/a" if not np.isfinite(s) else (f"{s * 1e3:.1f} ms" if s < 10 else f"{s:.1f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=None)
    p.add_argument("--seconds", type=lambda s: [float(x) for x in s.split(",")], default=None)
    p.add_argument("--overlays", type=lambda s: [int(x) for x in s.split(",")], default=None)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--skip", default="", help="comma list of phases to skip: fresh,overlay,rqe")
    p.add_argument("--rqe-port", type=int, default=6397)
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--hot-rounds", type=int, default=5)
    p.add_argument("--worker-env", default="", help="K=V,... for the worker (e.g. EMBCACHE_DELTA_SHARE=0: no deltas)")
    p.add_argument("--baseline-tree", default="", help="an embcache checkout (e.g. /work/main) to compare the "
                   "eventual fast path with (empty overlay), in alternating processes")
    # child roles
    p.add_argument("--role", default="")
    for name in ("system", "url", "version", "out", "tree"):
        p.add_argument(f"--{name}", default="")
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--t0", type=float, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--poll-every", type=float, default=0.0,
                   help="seconds from the start of one reader poll to the next (0: poll flat out, a reader "
                        "process that does nothing but query)")
    p.add_argument("--switch-interval", type=float, default=0.0,
                   help="the reader processes' sys.setswitchinterval (0: Python's default, 5 ms)")
    a = p.parse_args(argv)
    if a.role:
        a.seconds = a.seconds[0] if a.seconds else 0.0
        {"writer": role_writer, "reader": role_reader, "hotpath": role_hotpath}[a.role](a)
        return 0
    a.rates = a.rates or [200.0, 1000.0, 10000.0]
    a.seconds = a.seconds or ([5.0] * len(a.rates) if a.quick else [30.0, 30.0, 10.0][: len(a.rates)])
    a.overlays = a.overlays or ([1000, 10000] if a.quick else [1000, 10000, 50000])
    a.n = a.n or (10_000 if a.quick else 59_000)
    if a.quick:
        a.queries, a.rounds = min(a.queries, 200), 1
    skip = set(filter(None, a.skip.split(",")))
    started = time.time()
    command = " ".join(shlex.quote(x) for x in [".venv/bin/python", "scripts/bench_fresh.py", *(argv or sys.argv[1:])])
    b = Bench(a)
    try:
        b.start()
        if "fresh" not in skip:
            b.fresh()
        if "overlay" not in skip:
            b.overlay_cost()
        if a.baseline_tree:
            b.hotpath(a.baseline_tree)
    finally:
        b.stop()
    if "rqe" not in skip:
        b.rqe()
    text = b.section(command, started)
    print(text)
    if not a.no_write:
        write_section(REPO_ROOT / "BENCHMARKS.md", SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
