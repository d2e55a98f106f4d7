"""The README's MovieLens demo (:func:`embcache.demo.run`), end to end on a real Redis with a real worker process
that the demo starts itself (``python -m workers``), on the shipped ml-latest-small."""

from __future__ import annotations

import json
import re

import pytest

import embcache
from embcache.cli import main
from embcache.demo import SPACE, run


def test_the_demo_end_to_end(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    lines: list[str] = []
    report = run(redis_url, n_workers=1, say=lines.append)
    text = "\n".join(lines)

    # v1 stored and built by the worker, then v2; both have snapshots covering every item
    assert report.items > 1000 and set(report.build_seconds) == {"v1", "v2"}
    with embcache.connect(redis_url) as hub:
        space = hub.space(SPACE)
        assert [v.name for v in space.versions()] == ["v1", "v2"]
        assert space.version("v1").count() == report.items
        for name in ("v1", "v2"):
            (stats,) = space.version(name).stats()
            assert stats.generation is not None and stats.generation >= 1, name
            assert stats.snapshot_count == stats.count and stats.unindexed_entries == 0, name
        # the rollback left live on v1
        assert report.live_after == ["v1"] and space.aliases() == {"live": "v1"}
        assert "demo-reader" not in hub.list_principals()  # the demo revokes its reader

    # similar movies and recommendations came back, with their latency
    assert "Toy Story 2 (1999)" in report.similar["v1"]["Toy Story (1995)"]
    assert len(report.similar["v1"]) == 5 and all(len(t) == 10 for t in report.similar["v1"].values())
    assert set(report.similar["v2"]) == set(report.similar["v1"])
    assert len(report.recommended["v1"]) == 10
    # and by examples (the user's rated movies), with both strategies: none of the user's rated movies comes back
    from embcache.demo import find_movielens
    from embcache.movielens import load_ratings

    ratings = load_ratings(find_movielens())
    rated = {ratings.titles[int(m)] for m in ratings.movie_ids[ratings.user_ids == 1]}
    for s in ("average", "best_score"):
        assert len(report.recommended[f"v1 {s}"]) == 10 and not rated & set(report.recommended[f"v1 {s}"])
    assert set(report.recommend_us) == {"average", "best_score"}
    # step 4 compared v1 with v2 (Space.compare): v2 has every v1 movie and more; its neighbourhoods moved
    drift = report.drift
    assert drift["a"] == "v1" and drift["b"] == "v2" and drift["only_in_a"] == 0 and drift["only_in_b"] > 0
    assert drift["sampled"] == 1000 and 0 < drift["overlap_mean"] < 1 and len(drift["most_changed"]) == 10
    assert f"{SPACE}: v1 -> v2" in text and "refused" in text
    assert set(report.latency_us) == {"eventual", "session", "strong"}
    assert all(x > 0 for x in report.latency_us.values())
    assert 0 < report.similar_us and "from the neighbour lists" in text

    # the reader could query but its write was refused
    assert report.reader["query"] == "ok, 3 results"
    assert report.reader["write"].startswith("refused:") and "reader" in report.reader["write"]

    assert "live -> v1" in text and "reader demo-reader" in text and "building v1" in text

    # the data stays in place for the CLI
    capsys.readouterr()
    assert main(["--url", redis_url, "--json", "query", SPACE, "--id", "1", "-n", "5"]) == 0
    (answer,) = json.loads(capsys.readouterr().out)
    assert len(answer["results"]) == 5 and all(r["metadata"] for r in answer["results"])

    # the command the rollback step suggests names the demo's own space, and promotes v2 back
    suggested = re.search(r"`embcache (promote [^`]+)`", text)
    assert suggested is not None and SPACE in suggested.group(1)
    assert main(["--url", redis_url, *suggested.group(1).split()]) == 0
    with embcache.connect(redis_url) as hub:
        assert hub.space(SPACE).aliases() == {"live": "v2"}
