"""The query engine without Redis: compiled filters against the predicate, the planner, every plan's recall
against exact brute force on real embeddings (the shipped debian-minilm subset), the version graph's format."""

from __future__ import annotations

import tempfile
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from embcache.core import snapshot
from embcache.core.engine import (
    EXACT_ROWS,
    FieldIndex,
    Filter,
    MaskCache,
    Query,
    Step,
    choose,
    compile_filter,
    search_base,
)
from embcache.core.errors import InvalidInput, SnapshotCorrupt
from embcache.core.filters import compile_where
from embcache.core.hnswfile import level0_vectors
from embcache.core.vgraph import VersionManifest, pack_version, unpack_version
from tests.datasets import MiniLMSubset

K = 10
FILTERS = [
    {"section": "libs"},
    {"section": {"$ne": "libs"}},
    {"section": {"$in": ["python", "perl", "ruby"]}},
    {"section": {"$nin": ["python", "perl", "ruby", ""]}},
    {"section": {"$gte": "p", "$lt": "s"}},
    {"n": {"$gt": 2500}},
    {"n": {"$lte": 10}},
    {"n": {"$lt": 2500.5}, "odd": True},
    {"odd": 1},  # True is not 1
    {"tags": "a"},  # list fields match any element
    {"tags": {"$in": ["b", 3]}},
    {"missing": {"$ne": 1}},
    {"missing": 1},
    {"none": None},
    {"$or": [{"section": "games"}, {"$and": [{"odd": False}, {"n": {"$lt": 100}}]}]},
    {"$and": [{"section": {"$in": ["libs", "libdevel"]}}, {"n": {"$gte": 1000}}]},
]


@pytest.fixture(scope="module")
def metas(minilm_subset: MiniLMSubset) -> list[dict | None]:
    out: list[dict | None] = []
    for i, m in enumerate(minilm_subset.metadatas):
        if i % 97 == 0:
            out.append(None)
            continue
        d = {"section": m["section"], "n": i if i % 3 else float(i), "odd": bool(i % 2)}
        if i % 5 == 0:
            d["tags"] = ["a", "b"] if i % 10 == 0 else [3]
        if i % 7 == 0:
            d["none"] = None
        out.append(d)
    return out


@pytest.mark.parametrize("where", FILTERS)
def test_compiled_filters_match_the_predicate_on_every_row(metas: list, where: dict) -> None:
    live = np.ones(len(metas), dtype=bool)
    live[::50] = False  # dead slots never match
    flt = compile_filter(where)
    assert flt is not None
    got = FieldIndex(metas, live).mask(flt.tree)
    pred = compile_where(where)
    want = np.array([bool(pred(m)) for m in metas]) & live
    assert np.array_equal(got, want), where


def test_mask_cache_is_keyed_by_the_canonical_filter() -> None:
    a = compile_filter({"x": 1, "y": {"$in": ["a", "b"]}})
    b = compile_filter({"y": {"$in": ["a", "b"]}, "x": 1})
    assert a is not None and b is not None and a.key == b.key and a is not b
    assert compile_filter({"x": True}).key != compile_filter({"x": 1}).key  # type: ignore[union-attr]
    cache, built = MaskCache(size=2), []

    def build() -> np.ndarray:
        built.append(1)
        return np.ones(3, dtype=bool)

    assert cache.get(a.key, build)[2] is False and cache.get(b.key, build)[2] is True and len(built) == 1
    for i in range(3):
        cache.get(f"k{i}", build)
    assert cache.get(a.key, build)[2] is False  # bounded: evicted
    assert compile_filter(None) is None and compile_filter({}) is None


def test_the_planner() -> None:
    assert choose(59000, 0, K, True) == ("empty", 0)
    assert choose(59000, 59000, K, True) == ("graph", K)
    assert choose(59000, 500, K, True) == ("exact", 500)
    assert choose(300, 200, K, False) == ("exact", 200)  # no graph: always exact
    plan, fetch = choose(59000, 30000, K, True)
    assert plan == "graph+overfetch" and K < fetch < 100
    assert choose(59000, EXACT_ROWS, K, True) == ("exact", EXACT_ROWS)
    assert choose(59000, EXACT_ROWS, K, True, dim=1536)[0] == "graph+overfetch"  # longer rows: a smaller scan
    assert choose(200000, EXACT_ROWS + 1, K, True)[0] == "graph+filter"  # 4 %: too few for an over-fetch


def test_query_validation() -> None:
    v = np.zeros((1, 4), np.float32)
    q = Query.build(v, 3, partitions="p", exclude=["a", "b"], where={"x": 1})
    assert q.partitions == ("p",) and q.exclude == frozenset({"a", "b"}) and isinstance(q.where, Filter)
    for bad in (["", "a"], [1], "x" * 0, {"a": 1}, 5):
        with pytest.raises(InvalidInput):
            Query.build(v, 3, exclude=bad)
    with pytest.raises(InvalidInput):
        Query.build(v, 3, exclude=[f"i{i}" for i in range(10_001)])
    with pytest.raises(InvalidInput):
        Query.build(v, 3, consistency="linearizable")
    with pytest.raises(InvalidInput):
        Query.build(v, 3, partitions=[])


# --- a real snapshot of the subset, searched with every plan -------------------------------------------------
def _index(vectors: np.ndarray, labels: np.ndarray) -> hnswlib.Index:
    index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
    index.init_index(max_elements=max(len(vectors), 1), M=16, ef_construction=100, random_seed=1,
                     allow_replace_deleted=True)
    index.add_items(vectors, labels)
    return index


@pytest.fixture(scope="module")
def snap(minilm_subset: MiniLMSubset, metas: list) -> snapshot.HnswBase:
    ds = minilm_subset
    index = _index(ds.base, np.arange(len(ds.ids)))
    chunks, manifest = snapshot.pack(index, np.arange(len(ds.ids)), list(ds.ids), metas, generation=1, pos="5-0",
                                     dim=384, metric="cosine", M=16, ef_construction=100, builder="t",
                                     build_seconds=0.0, deleted=0, max_label=len(ds.ids) - 1)
    return snapshot.unpack(chunks, manifest, ef=64)


def _truth(ds: MiniLMSubset, rows: np.ndarray, k: int = K) -> list[list[str]]:
    sims = ds.queries @ ds.base[rows].T
    out = []
    for s in sims:
        top = np.argsort(-s, kind="stable")[:k]
        out.append([ds.ids[rows[j]] for j in top])
    return out


def _recall(got: list[tuple[list[str], np.ndarray]], truth: list[list[str]]) -> float:
    hits = sum(len(set(g[0]) & set(t)) for g, t in zip(got, truth))
    want = sum(len(t) for t in truth)
    return hits / want if want else float(not any(g[0] for g in got))


@pytest.mark.parametrize("where", [None, {"section": {"$ne": "libs"}},
                                   {"section": {"$in": ["libs", "libdevel", "doc"]}},
                                   {"section": "sound"}, {"section": "zope"}, {"section": "no-such"}])
def test_every_plan_reaches_the_recall_target(minilm_subset: MiniLMSubset, snap: snapshot.HnswBase, metas: list,
                                              where: dict | None) -> None:
    ds = minilm_subset
    pred = compile_where(where)
    rows = np.array([i for i, m in enumerate(metas) if pred is None or pred(m)], dtype=np.int64)
    step = Step("", "", 0, 0, 0)
    got = search_base(snap, ds.queries, K, None, where=compile_filter(where), step=step)
    truth = _truth(ds, rows) if len(rows) else [[] for _ in ds.queries]
    assert step.matches == len(rows)
    assert all(len(g[0]) == min(K, len(rows)) for g in got)  # never fewer than n_results when that many match
    assert all(pred is None or pred(metas[ds.ids.index(i)]) for g in got[:5] for i in g[0])
    assert _recall(got, truth) >= 0.95, (where, step)
    for _, d in got:
        assert np.all(np.diff(d) >= -1e-6)


@pytest.mark.parametrize("where, plan", [(None, "graph"), ({"section": {"$ne": "libs"}}, "graph+overfetch"),
                                         ({"section": "utils"}, "graph+filter"), ({"section": "sound"}, "exact")])
def test_each_plan_is_taken_and_complete(minilm_subset: MiniLMSubset, snap: snapshot.HnswBase, metas: list,
                                         where: dict | None, plan: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from embcache.core import engine

    monkeypatch.setattr(engine, "EXACT_ROWS", 100)  # the subset is small: move the thresholds to reach each plan
    ds = minilm_subset
    pred = compile_where(where)
    rows = np.array([i for i, m in enumerate(metas) if pred is None or pred(m)], dtype=np.int64)
    step = Step("", "", 0, 0, 0)
    got = search_base(snap, ds.queries, K, None, where=compile_filter(where), step=step)
    assert step.plan == plan and not step.fallback, step
    assert all(len(g[0]) == K for g in got)
    assert _recall(got, _truth(ds, rows)) >= 0.95, step


def test_hidden_ids_never_come_back_with_any_plan(minilm_subset: MiniLMSubset, snap: snapshot.HnswBase) -> None:
    ds = minilm_subset
    for where in (None, {"section": {"$ne": "libs"}}, {"section": "sound"}):
        first = search_base(snap, ds.queries[:5], K, None, where=compile_filter(where))
        hidden = {i for g in first for i in g[0][:3]}
        for many in (False, True):  # few: dropped from an over-fetch; many: a mask
            h = hidden | ({f"x{i}" for i in range(100)} | set(ds.ids[:80]) if many else set())
            got = search_base(snap, ds.queries[:5], K, None, where=compile_filter(where), hidden=frozenset(h))
            assert all(not (set(g[0]) & h) and len(g[0]) == K for g in got)


def test_level0_vectors_are_the_index_vectors(minilm_subset: MiniLMSubset) -> None:
    x = minilm_subset.base[:300]
    labels = np.arange(300) * 3
    index = _index(x, labels)
    index.mark_deleted(3)
    index.add_items(x[:1], [1000], replace_deleted=True)  # a deleted slot reused under a new label
    with tempfile.TemporaryDirectory() as d:
        index.save_index(str(Path(d) / "i"))
        data = (Path(d) / "i").read_bytes()
    vec = level0_vectors(data, 384, 1001, np.float32)
    want = np.asarray(index.get_items([0, 6, 897, 1000]))
    assert np.array_equal(vec[[0, 6, 897, 1000]], want) and not vec[1].any()
    with pytest.raises(ValueError):
        level0_vectors(data[:50], 384, 1001)
    with pytest.raises(ValueError):
        level0_vectors(data, 384, 10)  # labels beyond the table


def test_version_graph_round_trip_restrict_and_corruption(minilm_subset: MiniLMSubset) -> None:
    ds = minilm_subset
    n = 1200
    part_idx = (np.arange(n) % 3).astype(np.int32)
    index = _index(ds.base[:n], np.arange(n))
    chunks, m = pack_version(index, np.arange(n), part_idx, list(ds.ids[:n]), [None] * n, generation=2,
                             parts={"a": "1-0", "b": "2-0", "c": "3-0"}, dim=384, metric="cosine", M=16,
                             ef_construction=100, builder="t", build_seconds=0.0, deleted=0, max_label=n - 1,
                             chunk_bytes=1 << 20)
    assert len(chunks) > 1
    m2 = VersionManifest.from_json(m.to_json())
    graph = unpack_version(chunks, m2, ef=64)
    assert graph.count == n and graph.parts == {"a": "1-0", "b": "2-0", "c": "3-0"} and graph.oldest == (1, 0)
    assert graph.partition_of(ds.ids[4]) == "b" and graph.partition_items(["a", "c"]) == 800
    rows = np.flatnonzero(part_idx == 1)
    step = Step("", "", 0, 0, 0)
    got = search_base(graph, ds.queries, K, None, restrict=("b",), step=step)
    truth = [[ds.ids[rows[j]] for j in np.argsort(-(q @ ds.base[rows].T))[:K]] for q in ds.queries]
    assert step.matches == 400 and _recall(got, truth) >= 0.95
    assert all(graph.partition_of(i) == "b" for g in got for i in g[0])
    bad = list(chunks)
    bad[0] = bad[0][:-1] + bytes([bad[0][-1] ^ 1])
    with pytest.raises(SnapshotCorrupt):
        unpack_version(bad, m2, ef=64)
    with pytest.raises(SnapshotCorrupt):
        unpack_version(chunks[:-1], m2, ef=64)
    with pytest.raises(SnapshotCorrupt):
        VersionManifest.from_json(b'{"generation": 1}')


def test_an_over_fetch_that_comes_back_short_walks_wider_before_scanning(
        minilm_subset: MiniLMSubset, snap: snapshot.HnswBase, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hiding a query's 100 nearest items (98 % still match) leaves nothing of a first over-fetch of ef=64: the
    walk is redone 4x wider, which finds the answer without an exact scan of the 4,900 matches."""
    from embcache.core import engine

    monkeypatch.setattr(engine, "EXACT_ROWS", 100)  # the subset is small: no scan of 4,900 rows either way
    ds = minilm_subset
    q = ds.base[7:8]
    order = np.argsort(-(ds.base @ q[0]))
    hidden = frozenset(ds.ids[j] for j in order[:100])
    step = Step("", "", 0, 0, 0)
    (ids, dists), = search_base(snap, q, K, None, hidden=hidden, step=step)
    assert step.plan == "graph+overfetch" and not step.fallback and step.candidates == 4 * 64, step
    truth = [ds.ids[j] for j in order[100:100 + K]]
    assert len(ids) == K and not set(ids) & hidden
    assert len(set(ids) & set(truth)) >= 9 and np.all(np.diff(dists) >= -1e-6)


def test_a_large_k_with_a_few_hidden_ids_walks_with_a_filter_that_hides_them() -> None:
    """n_results past an over-fetch's reach, no filter, a few hidden ids (an exclude, this hub's writes): the plan
    is a filtered walk, whose mask must be built from the hidden ids (found by review: it was None, a TypeError)."""
    n, dim = 10_000, 8
    x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    index = hnswlib.Index(space="l2", dim=dim)
    index.init_index(max_elements=n, M=16, ef_construction=100, random_seed=1)
    index.add_items(x, np.arange(n), num_threads=1)
    ids = [f"i{j}" for j in range(n)]
    chunks, manifest = snapshot.pack(index, np.arange(n), ids, [None] * n, generation=1, pos="5-0", dim=dim,
                                     metric="l2", M=16, ef_construction=100, builder="t", build_seconds=0.0,
                                     deleted=0, max_label=n - 1)
    base = snapshot.unpack(chunks, manifest, ef=64)
    step = Step("", "", 0, 0, 0)
    (got, _), = search_base(base, x[:1] + np.float32(0.01), 700, None, hidden=frozenset({"i0", "i5"}), step=step)
    assert step.plan == "graph+filter" and len(got) == 700 and not {"i0", "i5"} & set(got)
