"""Space.compare and promote(max_drift=) on real embeddings (the shipped debian-minilm subset): two versions that
differ in known ways, against a float64 brute-force oracle of every shared item's neighbourhood in each version.

Without workers both versions are answered by the exact path, so the report must equal the oracle up to genuine
ties; one test builds snapshots with real workers and allows the index's recall.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator

import numpy as np
import pytest
from embcache.errors import DriftTooLarge

import embcache
import embcache.aio
from tests.datasets import MiniLMSubset
from tests.storecheck import stored_form
from tests.workers_fixtures import hubs, workers  # noqa: F401

K = 10
N = 3000


@pytest.fixture
def hub(redis_url: str) -> Iterator[embcache.Hub]:
    with embcache.connect(redis_url, refresh_interval=0.05) as h:
        yield h


def _two_versions(hub: embcache.Hub, data: MiniLMSubset, metric: str = "l2", name: str = "drift"):
    """v1: the first 3000 items. v2: rows 0-299 moved (noise added), rows 2800-2999 removed, rows 3000-3299
    added. Returns the versions and each one's {id: stored vector}."""
    space = hub.create_space(name, dim=384, metric=metric)
    rng = np.random.default_rng(11)
    v1 = space.create_version()
    v1.upsert(data.ids[:N], data.base[:N])
    moved = data.base[:300] + rng.normal(scale=0.04, size=(300, 384)).astype(np.float32)
    v2 = space.create_version()
    rows2 = list(range(300, 2800)) + list(range(3000, 3300))
    v2.upsert([data.ids[j] for j in range(300)], moved)
    v2.upsert([data.ids[j] for j in rows2], data.base[rows2])
    a = dict(zip(data.ids[:N], stored_form(data.base[:N], metric)))
    b = dict(zip([data.ids[j] for j in range(300)] + [data.ids[j] for j in rows2],
                 np.concatenate([stored_form(moved, metric), stored_form(data.base[rows2], metric)])))
    return space, v1, v2, a, b


def _oracle_neighbours(store: dict[str, np.ndarray], ids: list[str], k: int, metric: str) -> dict[str, set[str]]:
    keys = list(store)
    x = np.stack([store[i] for i in keys]).astype(np.float64)
    row = {i: j for j, i in enumerate(keys)}
    q = x[[row[i] for i in ids]]
    if metric == "l2":
        d = (q * q).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2 * q @ x.T
    else:
        d = -(q @ x.T)
    d[np.arange(len(ids)), [row[i] for i in ids]] = np.inf  # the item itself is left out
    top = np.argsort(d, axis=1, kind="stable")[:, :k]
    return {i: {keys[j] for j in t} for i, t in zip(ids, top)}


def _oracle_overlap(a: dict[str, np.ndarray], b: dict[str, np.ndarray], ids: list[str], k: int,
                    metric: str) -> dict[str, float]:
    na, nb = _oracle_neighbours(a, ids, k, metric), _oracle_neighbours(b, ids, k, metric)
    return {i: len(na[i] & nb[i]) / k for i in ids}


def test_compare_matches_the_oracle(hub: embcache.Hub, minilm_subset: MiniLMSubset) -> None:
    data = minilm_subset
    space, v1, v2, a, b = _two_versions(hub, data)
    report = space.compare("v1", "v2", sample=10_000, k=K)  # more than the shared items: all of them
    shared = sorted(set(a) & set(b))
    assert (report.in_both, report.only_in_a, report.only_in_b) == (2800, 200, 300)
    assert report.only_in_a_examples == tuple(sorted(set(a) - set(b))[:10])
    assert report.only_in_b_examples == tuple(sorted(set(b) - set(a))[:10])
    assert report.sampled == 2800 and report.k == K and (report.a, report.b) == ("v1", "v2")

    truth = _oracle_overlap(a, b, shared, K, "l2")
    values = np.array([truth[i] for i in shared])
    assert report.overlap_mean == pytest.approx(values.mean(), abs=2e-3)  # ties between near-duplicates
    assert report.drift == pytest.approx(1 - values.mean(), abs=2e-3)
    hist = np.bincount(np.rint(values * K).astype(int), minlength=K + 1)
    assert sum(report.overlap_histogram) == 2800
    assert np.abs(np.array(report.overlap_histogram) - hist).sum() <= 0.01 * 2800
    q = dict(report.overlap_quantiles)
    assert q[0.5] == pytest.approx(np.quantile(values, 0.5), abs=0.1)
    assert q[0.0] <= q[0.1] <= q[0.5] <= q[0.9] <= q[1.0]
    # the moved items and their neighbours changed most; the report's lowest overlaps are the oracle's
    lowest = np.sort(values)[:10]
    assert len(report.most_changed) == 10
    for (i, o), low in zip(report.most_changed, lowest):
        assert abs(truth[i] - o) <= 0.1 and o <= low + 0.1
    assert sum(1 for i, _ in report.most_changed if data.ids.index(i) < 300) >= 5
    # norms and centroids over the sampled (here: all shared) items, in float64
    xa = np.stack([a[i] for i in shared]).astype(np.float64)
    xb = np.stack([b[i] for i in shared]).astype(np.float64)
    assert report.norm_mean_a == pytest.approx(np.linalg.norm(xa, axis=1).mean(), rel=1e-6)
    assert report.norm_mean_b == pytest.approx(np.linalg.norm(xb, axis=1).mean(), rel=1e-6)
    assert report.norm_shift == pytest.approx(
        np.abs(np.linalg.norm(xb, axis=1) - np.linalg.norm(xa, axis=1)).mean(), rel=1e-5)
    assert report.norm_shift > 0
    assert report.centroid_shift == pytest.approx(np.linalg.norm(xb.mean(0) - xa.mean(0)), rel=1e-5)
    ca, cb = xa.mean(0), xb.mean(0)
    assert report.centroid_cosine == pytest.approx(ca @ cb / np.linalg.norm(ca) / np.linalg.norm(cb), rel=1e-6)

    # a version against itself: nothing changed
    same = space.compare(v1, v1, sample=500, k=K)
    assert same.overlap_mean == 1.0 and same.drift == 0.0 and same.norm_shift == 0.0
    assert same.overlap_histogram[-1] == 500 and same.only_in_a == same.only_in_b == 0


def test_a_sample_is_reproducible_and_the_report_is_a_value(hub: embcache.Hub, minilm_subset: MiniLMSubset) -> None:
    data = minilm_subset
    space, v1, v2, a, b = _two_versions(hub, data, metric="cosine")
    r1 = space.compare("v1", "v2", sample=400, k=5, seed=3)
    r2 = space.compare(v1, v2, sample=400, k=5, seed=3)
    assert dataclasses.replace(r1, seconds=0) == dataclasses.replace(r2, seconds=0)
    assert r1.sampled == 400 and len(r1.overlap_histogram) == 6
    assert r1.norm_mean_a == pytest.approx(1.0, abs=1e-5) and r1.norm_shift < 1e-5  # cosine: unit vectors
    other = space.compare("v1", "v2", sample=400, k=5, seed=4)
    assert other.most_changed != r1.most_changed or other.overlap_mean != r1.overlap_mean
    # each sampled item's overlap is the oracle's (the sample is not exposed: check the most changed ones)
    truth = _oracle_overlap(a, b, [i for i, _ in r1.most_changed], 5, "cosine")
    for i, o in r1.most_changed:
        assert abs(truth[i] - o) <= 0.2
    with pytest.raises(dataclasses.FrozenInstanceError):
        r1.k = 3  # type: ignore[misc]
    d = r1.as_dict()
    assert json.loads(r1.to_json()) == json.loads(json.dumps(d))
    assert d["drift"] == pytest.approx(1 - d["overlap_mean"]) and set(d["overlap_quantiles"]) >= {"p10", "p50", "p90"}
    text = str(r1)
    assert "drift: v1 -> v2" in text and "2800 in both, 200 only in v1, 300 only in v2" in text
    assert f"mean {r1.overlap_mean:.3f}" in text and r1.most_changed[0][0] in text


def test_promote_refuses_a_drifted_version(hub: embcache.Hub, minilm_subset: MiniLMSubset) -> None:
    data = minilm_subset
    space, v1, v2, a, b = _two_versions(hub, data)
    v3 = space.create_version()
    v3.upsert(data.ids[:N], data.base[:N])  # the same items as v1: no drift
    space.set_alias("live", v1)
    assert space.promote(v3, "live", max_drift=0.0, sample=300).drift == 0.0
    assert space.aliases()["live"] == "v3"
    drifted = space.compare("v3", "v2", sample=300)
    assert drifted.drift > 0.05
    with pytest.raises(DriftTooLarge) as exc:
        space.promote("v2", "live", max_drift=0.05, sample=300)
    assert exc.value.report == dataclasses.replace(drifted, seconds=exc.value.report.seconds)
    assert "max_drift=0.05" in str(exc.value) and isinstance(exc.value, embcache.EmbcacheError)
    assert space.aliases()["live"] == "v3" and space.alias_history("live") == ["v1"]  # nothing moved
    for bad in (-0.1, 1.5, "0.2", True, float("nan")):
        with pytest.raises(embcache.InvalidInput):
            space.promote("v2", "live", max_drift=bad)
    assert space.aliases()["live"] == "v3"
    assert space.promote("v2", "canary", max_drift=0.0) is None  # a new alias: nothing to compare with
    report = space.promote("v2", "live", max_drift=1.0, sample=300)
    assert report is not None and report.b == "v2" and space.aliases()["live"] == "v2"
    assert space.promote("v1", "live") is None and space.aliases()["live"] == "v1"  # no bound: as set_alias


def test_compare_bad_input(hub: embcache.Hub, minilm_subset: MiniLMSubset) -> None:
    data = minilm_subset
    space = hub.create_space("small", dim=384)
    v1 = space.create_version()
    v1.upsert(data.ids[:20], data.base[:20])
    v2 = space.create_version()
    v2.upsert(data.ids[20:40], data.base[20:40])
    other = hub.create_space("other", dim=384).create_version()
    other.upsert(data.ids[:5], data.base[:5])
    for kwargs in (dict(sample=0), dict(sample=10**6), dict(k=0), dict(k=1001), dict(seed=-1), dict(sample="9"),
                   dict(k=2.5)):
        with pytest.raises(embcache.InvalidInput):
            space.compare("v1", "v1", **kwargs)
    with pytest.raises(embcache.InvalidInput, match="no item in common"):
        space.compare("v1", "v2")
    with pytest.raises(embcache.InvalidInput, match="belongs to space"):
        space.compare(v1, other)
    with pytest.raises(embcache.InvalidInput):
        space.compare(v1, 3)  # type: ignore[arg-type]
    with pytest.raises(embcache.NotFound):
        space.compare("v1", "v9")
    # more neighbours asked for than there are items: each list is what the version has
    small = space.compare("v1", "v1", k=50)
    assert small.overlap_mean == 1.0 and small.sampled == 20


def test_compare_on_worker_built_snapshots_and_the_async_twin(hubs, workers, redis_url: str,  # noqa: F811
                                                              minilm_subset: MiniLMSubset) -> None:
    data = minilm_subset
    hub = hubs(redis_url, refresh_interval=0.05)
    workers.start(redis_url)
    space, v1, v2, a, b = _two_versions(hub, data, metric="cosine", name="built")
    v1.build(timeout=120)
    v2.build(timeout=120)
    assert v1.stats()[0].generation >= 1 and v2.stats()[0].generation >= 1
    report = space.compare("v1", "v2", sample=10_000, k=K, consistency="eventual")
    shared = sorted(set(a) & set(b))
    truth = _oracle_overlap(a, b, shared, K, "cosine")
    assert report.overlap_mean == pytest.approx(np.mean(list(truth.values())), abs=0.03)  # the index's recall

    async def main() -> tuple[embcache.core.drift.DriftReport, object]:
        async with await embcache.aio.connect(redis_url) as ahub:
            aspace = await ahub.space("built")
            got = await aspace.compare("v1", "v2", sample=500, k=K)
            await aspace.set_alias("live", "v1")
            try:
                await aspace.promote("v2", max_drift=0.0, sample=500)
            except DriftTooLarge as exc:
                refused = exc
            return got, refused

    got, refused = asyncio.run(main())
    assert got == dataclasses.replace(space.compare("v1", "v2", sample=500, k=K), seconds=got.seconds)
    assert isinstance(refused, DriftTooLarge) and space.aliases()["live"] == "v1"
