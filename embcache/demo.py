"""The MovieLens recommendation demo: embcache end to end on the embedded default, with real workers.

``python scripts/demo.py`` (the README's demo command) runs :func:`run`: learn movie embeddings from the
ratings, store them as version ``v1``, have the workers build it, alias it ``live``, serve "similar movies" and
"recommended for user N" with their latency, train ``v2`` (another regularisation), build it, compare it with
``v1`` (:meth:`~embcache.Space.compare`) and promote it with a drift bound, roll back, and show what a read-only
principal may and may not do. The data stays in the embedded server for ``embcache`` commands to explore
afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import redis

from .client.hub import Hub, Space, Version, connect
from .core.errors import DriftTooLarge, NotFound, PermissionDenied
from .movielens import Ratings, item_embeddings, load_ratings
from .redis.connection import redact_url
from .redis.server import embedded_home

__all__ = ["run", "find_movielens", "Report"]

FAMOUS = ["Toy Story (1995)", "Matrix, The (1999)", "Godfather, The (1972)",
          "Amelie (Fabuleux destin d'Amélie Poulain, Le) (2001)",
          "Shining, The (1980)"]
SPACE = "demo-movies"  # names of its own: a rerun drops and recreates them, and nothing else
REC_SPACE = "demo-movies-ip"


def find_movielens(path: str | Path | None = None) -> Path:
    """The MovieLens ml-latest-small directory: ``path`` when given, else the copy shipped inside the package
    (``embcache/data/movielens``, so the demo runs from an installed wheel as from a checkout)."""
    if path is not None:
        p = Path(path)
    else:
        p = Path(str(resources.files("embcache").joinpath("data", "movielens", "ml-latest-small")))
    if not (p / "ratings.csv").is_file():
        raise NotFound(f"MovieLens ml-latest-small not found in {p} (expected ratings.csv and movies.csv there)")
    return p


@dataclass
class Report:
    """What the demo measured, for tests and for the printed report."""

    items: int = 0
    build_seconds: dict[str, float] = field(default_factory=dict)
    similar: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # version -> title -> titles
    recommended: dict[str, list[str]] = field(default_factory=dict)
    latency_us: dict[str, float] = field(default_factory=dict)
    similar_us: float = 0.0  # median query_by_id from the neighbour lists
    recommend_us: dict[str, float] = field(default_factory=dict)  # strategy -> one Version.recommend call
    drift: dict[str, Any] = field(default_factory=dict)  # Space.compare("v1", "v2").as_dict()
    live_after: list[str] = field(default_factory=list)
    reader: dict[str, str] = field(default_factory=dict)


@contextmanager
def workers(url: str, n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` embcache worker processes on ``url``, stopped on exit."""
    env = dict(os.environ, EMBCACHE_URL=url)
    procs = [subprocess.Popen([sys.executable, "-m", "workers"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip(" ,") + "…"


def _titles(ratings: Ratings, ids: list[str]) -> list[str]:
    return [ratings.titles.get(int(i), i) for i in ids]


def _store_version(space: Space, ratings: Ratings, reg: float, min_ratings: int,
                   say: Callable[[str], None]) -> tuple[Version, Any]:
    t0 = time.perf_counter()
    f = item_embeddings(ratings, rank=space.dim, reg=reg, min_ratings=min_ratings)
    v = space.create_version(description=f"PureSVD rank {space.dim}, reg {reg}, movies with >= {min_ratings} ratings")
    ids = [str(m) for m in f.movie_ids]
    v.upsert(ids, f.item_vectors, metadatas=[ratings.movie_metadata(int(m)) for m in f.movie_ids])
    say(f"  {v.name}: {len(ids)} movies ({v.description}), factorised and stored in {time.perf_counter() - t0:.2f}s")
    return v, f


def _build(v: Version, say: Callable[[str], None], report: Report) -> None:
    t0 = time.perf_counter()
    v.build(timeout=300, on_progress=lambda d, n: say(f"  building {v.name}: {d}/{n} partitions indexed"))
    report.build_seconds[v.name] = round(time.perf_counter() - t0, 3)
    s = v.stats()[0]
    say(f"  {v.name} snapshot: generation {s.generation}, {s.snapshot_count} items, "
        f"{s.snapshot_bytes / 1e6:.1f} MB, built in {s.last_build_seconds:.2f}s by a worker")


def run(url: str | None = None, *, n_workers: int = 2, min_ratings: int = 10, user: int = 1,
        say: Callable[[str], None] = print, data: str | Path | None = None) -> Report:
    """Run the demo and return its measurements; ``data`` is a MovieLens ml-latest-small directory (default: the
    copy shipped in the package)."""
    report = Report()
    data = find_movielens(data)
    say(f"embcache demo: MovieLens ml-latest-small from {data} (licence: {data / 'README.txt'})")
    ratings = load_ratings(data)
    hub = connect(url)
    say(f"hub: {redact_url(hub.url)}{' (embedded redis-server, AOF on)' if url is None else ''}")
    with hub, workers(hub.url, n_workers):
        say(f"started {n_workers} workers" if n_workers else "using the workers already running on this hub")
        for name in (SPACE, REC_SPACE):
            if name in hub.spaces():
                hub.drop_space(name)  # a rerun starts afresh
        say("\n1. learn movie embeddings and store them as v1")
        space = hub.create_space(SPACE, dim=32, metric="cosine", neighbours=30)  # similar movies from lists
        v1, f1 = _store_version(space, ratings, 5.0, min_ratings, say)
        report.items = v1.count()
        _build(v1, say, report)
        space.set_alias("live", v1)
        say("  live -> v1")

        say("\n2. similar movies (query_by_id, served in-process from the snapshot)")
        report.similar["v1"] = _similar(space, ratings, say, report)

        say(f"\n3. recommended for user {user}: the largest predicted ratings user . movie, an inner-product "
            f"space ({REC_SPACE}) of the same vectors unnormalised; movies the user rated are left out")
        rec = hub.create_space(REC_SPACE, dim=32, metric="ip").create_version()
        rec.upsert([str(m) for m in f1.movie_ids], f1.item_vectors)
        _build(rec, say, report)
        report.recommended["v1"] = _recommend(rec, ratings, f1, user, say, report)
        say(f"  and by examples (Version.recommend on {SPACE} v1): the movies user {user} rated 4 or more as "
            "positives, 2 or less as negatives, strategy average and best_score")
        for strategy in ("average", "best_score"):
            report.recommended[f"v1 {strategy}"] = _recommend_by_examples(v1, ratings, user, strategy, say, report)

        say("\n4. a second model: v2 (stronger damping, rarer movies too), build, compare, promote")
        v2, _ = _store_version(space, ratings, 25.0, max(2, min_ratings // 2), say)
        _build(v2, say, report)
        drift = space.compare("live", v2, sample=1000, k=10)
        report.drift = drift.as_dict()
        say("  " + str(drift).replace("\n", "\n  "))
        changed = _titles(ratings, [i for i, _ in drift.most_changed[:5]])
        say(f"  most changed: {_cut(', '.join(changed), 110)}")
        try:  # a bound this model does not meet: refused, live stays on v1
            space.promote(v2, "live", max_drift=drift.drift / 2)
        except DriftTooLarge as exc:
            say(f"  promote(max_drift={drift.drift / 2:.2f}) refused: {_cut(str(exc), 100)}")
        space.promote(v2, "live", max_drift=min(1.0, drift.drift + 0.05))
        say(f"  promote(max_drift={min(1.0, drift.drift + 0.05):.2f}): live -> v2 (aliases: {space.aliases()})")
        report.similar["v2"] = _similar(space, ratings, say, report, quiet=True)
        title = FAMOUS[0]
        if title in report.similar["v2"]:
            a, b = report.similar["v1"][title], report.similar["v2"][title]
            say(f"  {title}: {len(set(a) & set(b))}/10 of v1's neighbours kept; v2 adds "
                f"{_cut(', '.join(x for x in b if x not in a), 90)}")

        say("\n5. roll back")
        back = space.rollback("live")
        report.live_after = [back.name]
        after = space.version("live").query_by_id([str(1)], n_results=3, consistency="strong")
        say(f"  live -> {back.name} again (v2 stays stored: `embcache promote {SPACE} v2` promotes it back); "
            f"Toy Story's neighbours are v1's: {', '.join(_titles(ratings, after.ids[0]))}")

        say("\n6. a read-only principal")
        report.reader = _reader_demo(hub, space, say)
    where = f"in {embedded_home()} (the embedded server's data directory)" if url is None else f"on {redact_url(url)}"
    # the console script of the interpreter running the demo (a venv's bin/ need not be on PATH)
    script = Path(sys.executable).with_name("embcache")
    cli = str(script) if script.exists() and shutil.which("embcache") != str(script) else "embcache"
    say(f"\nThe data stays {where}: try `{cli} describe {SPACE}`, `{cli} query {SPACE} --id 1 -n 5`, "
        f"`{cli} stats {SPACE}`.")
    return report


def _similar(space: Space, ratings: Ratings, say: Callable[[str], None], report: Report,
             quiet: bool = False) -> dict[str, list[str]]:
    by_title = {t: m for m, t in ratings.titles.items()}
    v = space.version("live")
    out: dict[str, list[str]] = {}
    for title in FAMOUS:
        mid = str(by_title[title])
        try:
            res = v.query_by_id([mid], n_results=10, consistency="eventual")
        except NotFound:
            continue
        out[title] = _titles(ratings, res.ids[0])
        if not quiet:
            say(f"  {title}: {', '.join(out[title][:5])}")
    # latency of one similar-movies lookup by vector (the id lookup adds a Redis read of the item's vector)
    probe = v.get([str(by_title[FAMOUS[0]])]).embeddings
    for level in ("eventual", "session", "strong"):
        v.query(probe, 10, consistency=level)
        t = []
        for _ in range(200):
            t0 = time.perf_counter()
            v.query(probe, 10, consistency=level)
            t.append(time.perf_counter() - t0)
        report.latency_us[level] = round(float(np.median(t)) * 1e6, 1)
    famous_ids = [str(by_title[FAMOUS[0]])]
    t = []
    for _ in range(200):
        t0 = time.perf_counter()
        v.query_by_id(famous_ids, 10, consistency="eventual")
        t.append(time.perf_counter() - t0)
    report.similar_us = round(float(np.median(t)) * 1e6, 1)
    if not quiet:
        say("  latency of one 10-NN query (median of 200): " +
            ", ".join(f"{k} {v:.0f} us" for k, v in report.latency_us.items()))
        say(f"  latency of one similar-movies lookup by id, from the neighbour lists (median of 200): "
            f"{report.similar_us:.0f} us")
    return out


def _recommend(v: Version, ratings: Ratings, f: Any, user: int, say: Callable[[str], None],
               report: Report) -> list[str]:
    seen = {str(m) for m in ratings.movie_ids[ratings.user_ids == user]}
    uvec = f.user_vectors[list(f.user_ids).index(user)]
    v.query(uvec, n_results=10 + len(seen), consistency="eventual")  # the first query loads the snapshot
    t0 = time.perf_counter()
    res = v.query(uvec, n_results=10 + len(seen), consistency="eventual")
    ms = (time.perf_counter() - t0) * 1000
    recs = [i for i in res.ids[0] if i not in seen][:10]
    titles = _titles(ratings, recs)
    liked = ratings.movie_ids[(ratings.user_ids == user) & (ratings.ratings >= 5.0)][:5]
    say(f"  user {user} loved: {', '.join(_titles(ratings, [str(m) for m in liked]))}")
    say(f"  recommended ({ms:.2f} ms): {', '.join(titles[:6])}")
    return titles


def _recommend_by_examples(v: Version, ratings: Ratings, user: int, strategy: str, say: Callable[[str], None],
                           report: Report) -> list[str]:
    """The user's rated movies as examples: liked (rated 4 or more) and disliked (2 or less), of those stored."""
    mine = ratings.user_ids == user
    stored = set(v.ids())
    liked = [str(m) for m in ratings.movie_ids[mine & (ratings.ratings >= 4.0)] if str(m) in stored]
    disliked = [str(m) for m in ratings.movie_ids[mine & (ratings.ratings <= 2.0)] if str(m) in stored]
    seen = [str(m) for m in ratings.movie_ids[mine] if str(m) in stored]  # rated in between: left out too
    kwargs: dict[str, Any] = dict(strategy=strategy, exclude=seen, consistency="eventual")
    v.recommend(liked[:100], disliked[:100] or None, 10, **kwargs)  # the first call loads what it needs
    t0 = time.perf_counter()
    res = v.recommend(liked[:100], disliked[:100] or None, 10, **kwargs)
    ms = (time.perf_counter() - t0) * 1000
    report.recommend_us[strategy] = round(ms * 1000, 1)
    titles = _titles(ratings, res.ids[0])
    say(f"  {strategy} ({len(liked[:100])} liked, {len(disliked[:100])} disliked; {ms:.2f} ms): "
        f"{', '.join(titles[:6])}")
    return titles


def _reader_demo(hub: Hub, space: Space, say: Callable[[str], None]) -> dict[str, str]:
    if not hasattr(hub, "grant"):
        say("  (access control is not available in this build)")
        return {}
    creds = hub.grant("demo-reader", space=space.name, role="reader")
    out: dict[str, str] = {}
    with connect(hub.url, username=creds.username, password=creds.password) as reader:
        v = reader.space(space.name).version("live")
        res = v.query_by_id(["1"], n_results=3)
        out["query"] = f"ok, {len(res.ids[0])} results"
        try:
            v.upsert(["x"], np.ones((1, space.dim), dtype=np.float32))
            out["write"] = "ALLOWED (wrong!)"
        except PermissionDenied as exc:
            out["write"] = f"refused: {exc}"[:120]
    # and what Redis itself says when the same credentials bypass embcache
    raw = redis.Redis.from_url(hub.url, username=creds.username, password=creds.password)
    try:
        raw.hset(hub.keys.partition(space.name, v.name, "default").vec, "x", b"\0" * 4 * space.dim)
        out["raw"] = "ALLOWED (wrong!)"
    except redis.exceptions.NoPermissionError as exc:
        out["raw"] = f"Redis refused: {exc}"[:110]
    finally:
        raw.close()
    say(f"  reader {creds.username}: query -> {out['query']}; upsert -> {out['write']}")
    say(f"  the same credentials in raw redis-py, HSET on the space's vectors -> {out['raw']}")
    hub.revoke("demo-reader", space=space.name)
    return out
