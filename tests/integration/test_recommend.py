"""Version.recommend on real embeddings (the shipped debian-minilm subset), against brute-force oracles computed
here in float64 from the definitions in embcache.core.examples.

Without workers a version is answered by the exact path, so the answers must equal the oracle (ids up to
genuine ties, scores to 1e-5); one test builds snapshots with real workers and checks recall instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

import embcache
import embcache.aio
from tests.datasets import MiniLMSubset
from tests.storecheck import stored_form
from tests.workers_fixtures import hubs, workers  # noqa: F401

K = 10
TIE = 1e-5


def oracle_similarity(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    q, x = np.asarray(q, np.float64), np.asarray(x, np.float64)
    if metric == "l2":
        return -((q * q).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2.0 * q @ x.T)
    return q @ x.T


def oracle_average(items: np.ndarray, pos: list[int], neg: list[int], metric: str) -> np.ndarray:
    """Similarity of every item to 2 mean(P) - mean(N) (normalised for cosine)."""
    p = items[pos].astype(np.float64).mean(0)
    q = p if not neg else 2 * p - items[neg].astype(np.float64).mean(0)
    if metric == "cosine":
        q = q / np.linalg.norm(q)
    return oracle_similarity(q[None, :], items, metric)[0]


def oracle_best_score(items: np.ndarray, pos: list[int], neg: list[int], metric: str) -> np.ndarray:
    """The documented best_score of every item, written out independently of embcache's code."""
    def sig(x: np.ndarray) -> np.ndarray:
        return 0.5 * (1 + x / (1 + np.abs(x)))

    best_p = oracle_similarity(items, items[pos], metric).max(1)
    if not neg:
        return sig(best_p)
    best_n = oracle_similarity(items, items[neg], metric).max(1)
    return np.where(best_p > best_n, sig(best_p), -sig(best_n))


def assert_top(res: embcache.QueryResult, score: np.ndarray, ids: list[str], allowed: np.ndarray, k: int) -> None:
    """res's one row is the top-k of ``score`` (bigger first) over ``allowed``, and res.scores are those scores."""
    row = {i: j for j, i in enumerate(ids)}
    masked = np.where(allowed, score, -np.inf)
    m = min(k, int(allowed.sum()))
    got = res.ids[0]
    assert len(got) == m and len(set(got)) == m
    assert all(allowed[row[i]] for i in got), "an excluded or filtered-out id came back"
    np.testing.assert_allclose(res.scores[0][:m], score[[row[i] for i in got]], atol=TIE, rtol=0)
    truth = np.sort(masked)[::-1][:m]
    np.testing.assert_allclose(np.sort(score[[row[i] for i in got]])[::-1], truth, atol=TIE, rtol=0)


@pytest.fixture
def hub(redis_url: str) -> Iterator[embcache.Hub]:
    with embcache.connect(redis_url, refresh_interval=0.05) as h:
        yield h


def _store(hub: embcache.Hub, data: MiniLMSubset, metric: str = "cosine", n_partitions: int = 2,
           name: str = "minilm") -> embcache.Version:
    v = hub.create_space(name, dim=384, metric=metric).create_version()
    for p, rows in enumerate(np.array_split(np.arange(len(data.ids)), n_partitions)):
        v.upsert([data.ids[j] for j in rows], data.base[rows], metadatas=[data.metadatas[j] for j in rows],
                 partition=f"part{p}")
    return v


# examples: packages of one theme as positives, a neighbour theme as negatives (rows of the subset)
def _examples(data: MiniLMSubset) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(7)
    rows = rng.choice(len(data.ids), size=8, replace=False).tolist()
    return rows[:5], rows[5:]


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
@pytest.mark.parametrize("strategy", ["average", "best_score"])
def test_recommend_matches_the_oracle(hub: embcache.Hub, minilm_subset: MiniLMSubset, metric: str,
                                      strategy: str) -> None:
    data = minilm_subset
    v = _store(hub, data, metric)
    items = stored_form(data.base, metric)
    pos, neg = _examples(data)
    oracle = oracle_average if strategy == "average" else oracle_best_score
    score = oracle(items, pos, neg, metric)
    allowed = np.ones(len(data.ids), dtype=bool)
    allowed[pos + neg] = False  # the examples are left out by default
    res = v.recommend([data.ids[j] for j in pos], [data.ids[j] for j in neg], K, strategy=strategy)
    assert res.metric == metric and res.distances.shape == (1, K)
    assert_top(res, score, data.ids, allowed, K)


def test_best_score_without_negatives_is_the_nearest_to_any_positive(hub: embcache.Hub,
                                                                     minilm_subset: MiniLMSubset) -> None:
    data = minilm_subset
    v = _store(hub, data)
    items = stored_form(data.base, "cosine")
    pos = [11, 1200, 3333]
    res = v.recommend([data.ids[j] for j in pos], n_results=25, strategy="best_score")
    allowed = np.ones(len(data.ids), dtype=bool)
    allowed[pos] = False
    assert_top(res, oracle_best_score(items, pos, [], "cosine"), data.ids, allowed, 25)


def test_vectors_filters_partitions_and_exclusions(hub: embcache.Hub, minilm_subset: MiniLMSubset) -> None:
    data = minilm_subset
    v = _store(hub, data, n_partitions=3)
    items = stored_form(data.base, "cosine")
    pos, neg = _examples(data)
    sections = [m["section"] for m in data.metadatas]
    section = max(set(sections), key=sections.count)
    seen = [data.ids[j] for j in range(0, 200)]
    for strategy, oracle in (("average", oracle_average), ("best_score", oracle_best_score)):
        score = oracle(items, pos, neg, "cosine")
        # vectors as examples (a 2-D array of positives, a raw vector among the negatives), a where filter and
        # exclude=: the vectors are not stored ids, so only the filter and exclude= remove items
        res = v.recommend(data.base[pos], [data.base[neg[0]], data.ids[neg[1]], data.ids[neg[2]]], K,
                          strategy=strategy, where={"section": section}, exclude=seen)
        allowed = np.array([s == section for s in sections])
        allowed[:200] = False
        allowed[neg[1:]] = False
        assert_top(res, score, data.ids, allowed, K)
        # one partition only; examples may live in any partition
        part1 = set(np.array_split(np.arange(len(data.ids)), 3)[1].tolist())
        res = v.recommend([data.ids[j] for j in pos], [data.ids[j] for j in neg], K, strategy=strategy,
                          partitions=["part1"], include=("distances", "metadatas"))
        allowed = np.array([j in part1 for j in range(len(data.ids))])
        allowed[pos + neg] = False
        assert_top(res, score, data.ids, allowed, K)
        assert res.metadatas is not None
        assert res.metadatas[0] == [data.metadatas[data.ids.index(i)] for i in res.ids[0]]


def test_examples_come_back_when_asked(hub: embcache.Hub, minilm_subset: MiniLMSubset) -> None:
    data = minilm_subset
    v = _store(hub, data)
    one = data.ids[42]
    for strategy in ("average", "best_score"):
        res = v.recommend([one], n_results=3, strategy=strategy, exclude_examples=False)
        assert res.ids[0][0] == one  # an item is its own nearest neighbour
        res = v.recommend([one], n_results=3, strategy=strategy)
        assert one not in res.ids[0]
        assert res.ids[0] == v.query_by_id([one], n_results=3).ids[0]
    # a single positive: both strategies rank by similarity to it
    a = v.recommend([one], n_results=10)
    b = v.recommend([one], n_results=10, strategy="best_score", include=("distances", "embeddings"))
    assert a.ids == b.ids
    assert b.embeddings is not None and b.embeddings[0].shape == (10, 384)


def test_space_recommend_and_the_async_twin(hub: embcache.Hub, redis_url: str, minilm_subset: MiniLMSubset) -> None:
    data = minilm_subset
    v = _store(hub, data)
    space = hub.space("minilm")
    space.set_alias("live", v)
    pos, neg = [data.ids[1], data.ids[2]], [data.ids[3]]
    want = {s: v.recommend(pos, neg, K, strategy=s) for s in ("average", "best_score")}
    for s, res in want.items():
        assert space.recommend(pos, neg, K, strategy=s).ids == res.ids

    async def main() -> dict[str, list[list[str]]]:
        async with await embcache.aio.connect(redis_url) as ahub:
            aspace = await ahub.space("minilm")
            got = {s: (await aspace.recommend(pos, neg, K, strategy=s)).ids for s in want}
            av = await aspace.version(v.name)
            assert (await av.recommend(pos, neg, K)).ids == got["average"]
            with pytest.raises(embcache.NotFound):
                await av.recommend(["no-such-item"])
            return got

    assert asyncio.run(main()) == {s: r.ids for s, r in want.items()}


def test_bad_input_is_a_typed_error(hub: embcache.Hub, minilm_subset: MiniLMSubset) -> None:
    data = minilm_subset
    v = hub.create_space("small", dim=384).create_version()
    v.upsert(data.ids[:50], data.base[:50])
    ok = data.ids[0]
    cases = [
        (dict(positive=[]), embcache.InvalidInput),
        (dict(positive=None), embcache.InvalidInput),
        (dict(positive=[ok], strategy="sum"), embcache.InvalidInput),
        (dict(positive=[ok], n_results=0), embcache.InvalidInput),
        (dict(positive=[np.ones(3)]), embcache.DimensionMismatch),
        (dict(positive=[[np.nan] * 384]), embcache.InvalidInput),
        (dict(positive=[np.zeros(384)]), embcache.InvalidInput),  # no cosine direction
        (dict(positive=[data.base[0], -data.base[0]]), embcache.InvalidInput),  # mean(P) = 0: no direction
        (dict(positive=[ok] * 1001), embcache.InvalidInput),
        (dict(positive=[ok], exclude="x" * 600), embcache.InvalidInput),
        (dict(positive=[ok], exclude_examples="yes"), embcache.InvalidInput),
        (dict(positive=[ok], include=("ids",)), embcache.InvalidInput),
        (dict(positive=[ok], where={"$bad": 1}), embcache.InvalidInput),
        (dict(positive=[ok], partitions=["nope"]), embcache.NotFound),
        (dict(positive=[ok], consistency="now"), embcache.InvalidInput),
        (dict(positive=["missing"]), embcache.NotFound),
        (dict(positive=[ok], negative=["missing"]), embcache.NotFound),
        (dict(positive=[ok], exclude=[f"x{i}" for i in range(10_001)]), embcache.InvalidInput),
        (dict(positive=[ok], positive_typo=1), TypeError),
    ]
    for kwargs, err in cases:
        with pytest.raises(err):
            v.recommend(**kwargs)
    assert v.count() == 50


def test_recommend_on_worker_built_snapshots(hubs, workers, redis_url: str,  # noqa: F811
                                             minilm_subset: MiniLMSubset) -> None:
    data = minilm_subset
    hub = hubs(redis_url, refresh_interval=0.05)
    workers.start(redis_url)
    v = _store(hub, data, n_partitions=1, name="built")
    v.build(timeout=120)
    assert v.stats()[0].generation >= 1
    items = stored_form(data.base, "cosine")
    rng = np.random.default_rng(3)
    recalls = {"average": [], "best_score": []}
    for _ in range(10):
        rows = rng.choice(len(data.ids), size=6, replace=False).tolist()
        pos, neg = rows[:4], rows[4:]
        allowed = np.ones(len(data.ids), dtype=bool)
        allowed[rows] = False
        for strategy, oracle in (("average", oracle_average), ("best_score", oracle_best_score)):
            score = np.where(allowed, oracle(items, pos, neg, "cosine"), -np.inf)
            truth = {data.ids[j] for j in np.argsort(-score, kind="stable")[:K]}
            got = v.recommend([data.ids[j] for j in pos], [data.ids[j] for j in neg], K, strategy=strategy,
                              consistency="eventual")
            recalls[strategy].append(len(truth & set(got.ids[0])) / K)
    assert np.mean(recalls["average"]) >= 0.95, recalls
    assert np.mean(recalls["best_score"]) >= 0.95, recalls


def test_embeddinghub_facade_recommend(redis_url: str, minilm_subset: MiniLMSubset) -> None:
    from embcache.compat import embeddinghub

    data = minilm_subset
    n = 1000
    eh = embeddinghub.connect(url=redis_url)
    try:
        space = eh.create_space("ehreco", dims=384)  # the facade's default metric: l2
        assert space.recommend(5, [data.base[0]]) == []  # nothing written yet
        space.multiset({data.ids[j]: data.base[j] for j in range(n)})
        items = stored_form(data.base[:n], "l2")
        pos, neg = [1, 2, 3], [4]
        allowed = np.ones(n, dtype=bool)
        allowed[pos + neg] = False
        for strategy, oracle in (("average", oracle_average), ("best_score", oracle_best_score)):
            score = np.where(allowed, oracle(items, pos, neg, "l2"), -np.inf)
            truth = [data.ids[j] for j in np.argsort(-score, kind="stable")[:K]]
            got = space.recommend(K, [data.ids[j] for j in pos], [data.ids[j] for j in neg], strategy=strategy)
            assert got == truth
        # a vector among the keys; the vector is not an example key, so only the key examples are left out
        got = space.recommend(3, [data.ids[1], data.base[2].tolist()])
        assert data.ids[1] not in got
        with pytest.raises(embcache.NotFound):
            space.recommend(3, ["no-such-key"])
        with pytest.raises(embcache.InvalidInput):
            space.recommend(3, "apple")
        with pytest.raises(embcache.DimensionMismatch):
            space.recommend(3, [[1.0, 2.0]])
    finally:
        eh.close()


def test_best_score_grows_its_pool_until_certain(hub: embcache.Hub, minilm_subset: MiniLMSubset) -> None:
    """The first pool (2 n_results neighbours per positive) is all excluded ids, so it has to grow; and on a small
    version where most items are nearer to a negative, the rejected ones rank by distance from the negatives."""
    data = minilm_subset
    v = _store(hub, data, n_partitions=1)
    items = stored_form(data.base, "cosine")
    pos, neg = [100, 2000], [3000]
    near = np.argsort(-(items @ items[pos[0]]), kind="stable")[:150].tolist()  # pos[0]'s neighbourhood
    allowed = np.ones(len(data.ids), dtype=bool)
    allowed[near + pos + neg] = False
    res = v.recommend([data.ids[j] for j in pos], [data.ids[neg[0]]], K, strategy="best_score",
                      exclude=[data.ids[j] for j in near])
    assert_top(res, oracle_best_score(items, pos, neg, "cosine"), data.ids, allowed, K)

    small = hub.create_space("small", dim=384).create_version()
    rows = list(range(300))
    small.upsert([data.ids[j] for j in rows], data.base[rows])
    pos, neg = [0], list(range(1, 60))
    score = oracle_best_score(items[rows], pos, neg, "cosine")
    allowed = np.ones(300, dtype=bool)
    allowed[pos + neg] = False
    assert (np.where(allowed, score, 1) < 0).sum() > 20  # most candidates are rejected
    res = small.recommend([data.ids[0]], [data.ids[j] for j in neg], 40, strategy="best_score")
    assert_top(res, score, data.ids[:300], allowed, 40)
    assert (res.scores[0] < 0).any()
