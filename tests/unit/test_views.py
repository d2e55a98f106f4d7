"""Unit tests of embcache.views: exact bases, overlays and the merged view of one partition. No Redis.

The oracle keeps the partition's state as a plain dict ``id -> (vector, metadata)``, applies changes to it
with dict operations, and answers by float64 brute force over it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from embcache.core.engine import compile_filter
from embcache.core.filters import compile_where
from embcache.core.views import ExactBase, OverlayItem, overlay_from_rows, pos_key, predicate_mask, search_view

State = dict[str, tuple[np.ndarray, dict[str, Any] | None]]


def dist(metric: str, q: np.ndarray, x: np.ndarray) -> float:
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    if metric == "l2":
        return float(((q64 - x64) ** 2).sum())
    return float(1.0 - q64 @ x64)


def oracle(state: State, query: np.ndarray, k: int, metric: str, where: dict | None = None) -> list[tuple[str, float]]:
    pred = compile_where(where)
    scored = [(i, dist(metric, query, v)) for i, (v, m) in state.items() if pred is None or pred(m)]
    return sorted(scored, key=lambda t: t[1])[:k]


def assert_matches(got: tuple[list[str], np.ndarray], expected: list[tuple[str, float]]) -> None:
    ids, d = got
    assert ids == [i for i, _ in expected]
    np.testing.assert_allclose(d, [x for _, x in expected], rtol=1e-5, atol=1e-6)


def make_state(n: int, dim: int, seed: int, metric: str = "l2") -> State:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    if metric in ("cosine", "ip"):
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    colours = ["red", "green", "blue"]
    return {
        f"id{i}": (vecs[i], None if i % 7 == 0 else {"colour": colours[i % 3], "n": i})
        for i in range(n)
    }


def base_of(state: State, metric: str, position: str = "100-0") -> ExactBase:
    ids = list(state)
    matrix = np.stack([state[i][0] for i in ids]).astype(np.float32)
    return ExactBase(position, ids, matrix, [state[i][1] for i in ids], metric)


def queries_for(dim: int, seed: int, n: int = 6, metric: str = "l2") -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    if metric in ("cosine", "ip"):
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q


# --- positions ---------------------------------------------------------------------------------------------


def test_pos_key_orders_stream_ids() -> None:
    assert pos_key(None) == (0, 0) and pos_key("") == (0, 0) and pos_key(b"") == (0, 0)
    assert pos_key("0-0") == (0, 0)
    assert pos_key("1700000000000-5") == (1700000000000, 5)
    assert pos_key(b"12-3") == (12, 3)
    assert pos_key("12") == (12, 0)
    # numeric, not lexicographic: "9-0" < "10-0" and "10-2" < "10-10"
    assert pos_key("9-0") < pos_key("10-0")
    assert pos_key("10-2") < pos_key("10-10")
    assert "9-0" > "10-0"  # (what a string comparison would wrongly say)


# --- ExactBase ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_exact_base_search_matches_oracle(metric: str) -> None:
    state = make_state(300, 12, seed=1, metric=metric)
    base = base_of(state, metric)
    qs = queries_for(12, seed=2, metric=metric)
    got = base.search(qs, 7, None, set())
    assert len(got) == len(qs)
    for q, res in zip(qs, got):
        assert_matches(res, oracle(state, q, 7, metric))


def test_exact_base_accessors() -> None:
    state = make_state(20, 4, seed=3)
    base = base_of(state, "l2", position="5-1")
    assert base.count == 20 and base.position == "5-1" and base.metric == "l2"
    assert base.nbytes >= 20 * 4 * 4
    assert "id3" in base and "nope" not in base
    np.testing.assert_array_equal(base.vector("id3"), state["id3"][0])
    assert base.vector("nope") is None
    assert base.metadata("id3") == state["id3"][1]
    assert base.metadata("id0") is None  # stored without metadata


def test_exact_base_exclude() -> None:
    state = make_state(100, 8, seed=4)
    base = base_of(state, "l2")
    q = queries_for(8, seed=5, n=1)
    first = base.search(q, 5, None, set())[0][0]
    hidden = {first[0], first[2], "not-there"}
    got = base.search(q, 5, None, hidden)[0]
    reduced = {i: v for i, v in state.items() if i not in hidden}
    assert_matches(got, oracle(reduced, q[0], 5, "l2"))
    assert not hidden & set(got[0])


def test_exact_base_predicate() -> None:
    state = make_state(200, 8, seed=6)
    base = base_of(state, "l2")
    qs = queries_for(8, seed=7)
    where = {"colour": {"$in": ["red", "blue"]}, "n": {"$gte": 50}}
    pred = compile_filter(where)
    for q, res in zip(qs, base.search(qs, 9, pred, set())):
        assert_matches(res, oracle(state, q, 9, "l2", where))
        assert all(state[i][1] is not None and state[i][1]["colour"] != "green" for i in res[0])


def test_exact_base_predicate_with_exclude_does_not_poison_the_mask_cache() -> None:
    state = make_state(60, 6, seed=8)
    base = base_of(state, "l2")
    q = queries_for(6, seed=9, n=1)
    where = {"colour": "red"}
    pred = compile_filter(where)
    plain = base.search(q, 4, pred, set())[0]
    hidden = set(plain[0][:2])
    excluded = base.search(q, 4, pred, hidden)[0]
    assert not hidden & set(excluded[0])
    reduced = {i: v for i, v in state.items() if i not in hidden}
    assert_matches(excluded, oracle(reduced, q[0], 4, "l2", where))
    # the same predicate object again, without exclusions: the hidden ids are back
    again = base.search(q, 4, pred, set())[0]
    assert again[0] == plain[0]


def test_exact_base_k_larger_than_matches() -> None:
    state = make_state(30, 5, seed=10)
    base = base_of(state, "ip")
    where = {"n": {"$lt": 4}}  # id1, id2, id3 (id0 has no metadata)
    got = base.search(queries_for(5, seed=11, n=2), 10, compile_filter(where), set())
    for ids, d in got:
        assert sorted(ids) == ["id1", "id2", "id3"]
        assert len(d) == 3


def test_exact_base_empty() -> None:
    base = ExactBase("0-0", [], np.zeros((0, 4), np.float32), [], "l2")
    assert base.count == 0
    got = base.search(queries_for(4, seed=12, n=2), 3, None, set())
    assert [g[0] for g in got] == [[], []]


# --- with_changes ------------------------------------------------------------------------------------------


def test_with_changes_applies_upserts_and_deletes_without_mutating_the_old_base() -> None:
    state = make_state(50, 6, seed=13)
    old = base_of(state, "l2", position="10-0")
    old_ids = list(old.ids)
    old_matrix = old.matrix.copy()
    old_metas = json.dumps(old.metas)
    q = queries_for(6, seed=14)
    old_answers = old.search(q, 5, None, set())

    rng = np.random.default_rng(15)
    new_vec = rng.normal(size=6).astype(np.float32)
    moved = rng.normal(size=6).astype(np.float32)
    overlay = {
        "new1": OverlayItem("11-0", new_vec, {"colour": "pink"}),
        "id4": OverlayItem("11-0", moved, {"colour": "moved"}),  # replaced
        "id9": OverlayItem("12-0", None, None),  # deleted
        "ghost": OverlayItem("12-0", None, None),  # delete of an id the base never had
    }
    new = old.with_changes("12-0", overlay)

    # the old base is untouched
    assert old.ids == old_ids and old.position == "10-0"
    np.testing.assert_array_equal(old.matrix, old_matrix)
    assert json.dumps(old.metas) == old_metas
    assert "id9" in old and "new1" not in old
    for a, b in zip(old_answers, old.search(q, 5, None, set())):
        assert a[0] == b[0]

    # the new base holds the changed state
    expected: State = dict(state)
    expected["new1"] = (new_vec, {"colour": "pink"})
    expected["id4"] = (moved, {"colour": "moved"})
    del expected["id9"]
    assert new.position == "12-0"
    assert sorted(new.ids) == sorted(expected)
    assert new.count == len(expected) == 50
    assert "ghost" not in new and "id9" not in new
    np.testing.assert_array_equal(new.vector("id4"), moved)
    np.testing.assert_array_equal(new.vector("new1"), new_vec)
    assert new.metadata("id4") == {"colour": "moved"}
    assert new.metadata("id5") == state["id5"][1]
    assert new.matrix.dtype == np.float32 and new.matrix.flags.c_contiguous
    for qi, res in zip(q, new.search(q, 5, None, set())):
        assert_matches(res, oracle(expected, qi, 5, "l2"))


def test_with_changes_only_deletes_and_empty_overlay() -> None:
    state = make_state(10, 3, seed=16)
    base = base_of(state, "l2")
    same = base.with_changes("101-0", {})
    assert same.ids == base.ids and same is not base
    np.testing.assert_array_equal(same.matrix, base.matrix)
    gone = base.with_changes("102-0", {i: OverlayItem("102-0", None, None) for i in state})
    assert gone.count == 0 and gone.matrix.shape == (0, 3)
    assert gone.search(queries_for(3, seed=17, n=1), 3, None, set())[0][0] == []


def test_with_changes_filters_see_new_metadata() -> None:
    state = make_state(20, 4, seed=18)
    base = base_of(state, "l2")
    new = base.with_changes("101-0", {"id1": OverlayItem("101-0", state["id1"][0], {"colour": "gold"})})
    q = state["id1"][0][None, :]
    assert new.search(q, 1, compile_filter({"colour": "gold"}), set())[0][0] == ["id1"]
    assert base.search(q, 1, compile_filter({"colour": "gold"}), set())[0][0] == []


# --- search_view: base + overlay ---------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_search_view_overlay_replaces_adds_and_deletes(metric: str) -> None:
    state = make_state(200, 10, seed=19, metric=metric)
    base = base_of(state, metric)
    qs = queries_for(10, seed=20, metric=metric)
    # make the overlay matter: delete and move the current nearest neighbours of each query, add new items
    # right next to some queries
    before = base.search(qs, 3, None, set())
    rng = np.random.default_rng(21)
    overlay = {}
    expected: State = dict(state)
    for j, (ids, _) in enumerate(before):
        victim, mover = ids[0], ids[1]
        overlay[victim] = OverlayItem("200-0", None, None)
        expected.pop(victim, None)
        far = -qs[j] if metric == "cosine" else qs[j] + 50.0
        overlay[mover] = OverlayItem("200-0", far.astype(np.float32), {"colour": "far"})
        expected[mover] = (far.astype(np.float32), {"colour": "far"})
    for j in range(0, len(qs), 2):
        near = qs[j] + rng.normal(scale=1e-3, size=10).astype(np.float32)
        if metric == "cosine":
            near /= np.linalg.norm(near)
        overlay[f"new{j}"] = OverlayItem("201-0", near.astype(np.float32), {"colour": "red", "n": -j})
        expected[f"new{j}"] = (near.astype(np.float32), {"colour": "red", "n": -j})
    got = search_view(base, overlay, qs, 5, None, None, metric)
    assert len(got) == len(qs)
    for j, (q, res) in enumerate(zip(qs, got)):
        assert_matches(res, oracle(expected, q, 5, metric))
        assert before[j][0][0] not in res[0]  # deleted
        if j % 2 == 0:
            assert res[0][0] == f"new{j}"  # the added item is nearest


def test_search_view_predicate_uses_the_overlay_metadata() -> None:
    state = make_state(100, 6, seed=22)
    base = base_of(state, "l2")
    q = queries_for(6, seed=23, n=3)
    where = {"colour": "red"}
    reds = [i for i, (_, m) in state.items() if m and m["colour"] == "red"]
    # a red item turns green in the overlay (vector unchanged): it must drop out of a "red" filter;
    # a green item turns red: it must come in
    greens = [i for i, (_, m) in state.items() if m and m["colour"] == "green"]
    overlay = {
        reds[0]: OverlayItem("101-0", state[reds[0]][0], {"colour": "green"}),
        greens[0]: OverlayItem("101-0", state[greens[0]][0], {"colour": "red"}),
    }
    expected: State = dict(state)
    expected[reds[0]] = (state[reds[0]][0], {"colour": "green"})
    expected[greens[0]] = (state[greens[0]][0], {"colour": "red"})
    got = search_view(base, overlay, q, 40, compile_filter(where), None, "l2")
    for qi, res in zip(q, got):
        assert_matches(res, oracle(expected, qi, 40, "l2", where))
        assert reds[0] not in res[0] and greens[0] in res[0]


def test_search_view_without_base_or_with_empty_base() -> None:
    state = make_state(15, 4, seed=24)
    overlay = {i: OverlayItem("1-0", v, m) for i, (v, m) in state.items()}
    q = queries_for(4, seed=25, n=2)
    empty = ExactBase("0-0", [], np.zeros((0, 4), np.float32), [], "l2")
    for base in (None, empty):
        got = search_view(base, overlay, q, 4, None, None, "l2")
        for qi, res in zip(q, got):
            assert_matches(res, oracle(state, qi, 4, "l2"))


def test_search_view_nothing_at_all() -> None:
    got = search_view(None, {}, queries_for(4, seed=26, n=3), 4, None, None, "l2")
    assert [g[0] for g in got] == [[], [], []]
    # an overlay of deletes only over no base
    got = search_view(None, {"x": OverlayItem("1-0", None, None)}, queries_for(4, seed=26, n=2), 4, None, None, "l2")
    assert [g[0] for g in got] == [[], []]


def test_search_view_empty_overlay_equals_base() -> None:
    state = make_state(80, 5, seed=27)
    base = base_of(state, "ip")
    q = queries_for(5, seed=28, metric="ip")
    a = search_view(base, {}, q, 6, None, None, "ip")
    b = base.search(q, 6, None, set())
    for x, y in zip(a, b):
        assert x[0] == y[0]
        np.testing.assert_array_equal(x[1], y[1])


def test_search_view_overlay_deletes_everything_in_base() -> None:
    state = make_state(12, 3, seed=29)
    base = base_of(state, "l2")
    overlay = {i: OverlayItem("5-0", None, None) for i in state}
    got = search_view(base, overlay, queries_for(3, seed=30, n=2), 5, None, None, "l2")
    assert [g[0] for g in got] == [[], []]


def test_search_view_k_cut_across_base_and_overlay() -> None:
    state = make_state(40, 4, seed=31)
    base = base_of(state, "l2")
    q = queries_for(4, seed=32, n=1)
    extra = {f"o{i}": OverlayItem("9-0", (q[0] + 0.01 * (i + 1)).astype(np.float32), None) for i in range(3)}
    expected: State = dict(state)
    expected.update({i: (it.vector, None) for i, it in extra.items()})  # type: ignore[misc]
    for k in (1, 2, 3, 4, 10):
        (res,) = search_view(base, extra, q, k, None, None, "l2")
        assert_matches(res, oracle(expected, q[0], k, "l2"))
        assert len(res[0]) == k == len(set(res[0]))


# --- helpers -----------------------------------------------------------------------------------------------


def test_overlay_from_rows() -> None:
    v = np.ones(3, np.float32)
    ov = overlay_from_rows("7-1", ["a", "b", "c"], [v, None, v], [b'{"x":1}', b'{"y":2}', None])
    assert set(ov) == {"a", "b", "c"}
    assert ov["a"].pos == "7-1" and ov["a"].metadata == {"x": 1}
    np.testing.assert_array_equal(ov["a"].vector, v)
    assert ov["b"].vector is None and ov["b"].metadata is None  # deleted: no metadata either
    assert ov["c"].metadata is None


def test_predicate_mask() -> None:
    pred = compile_where({"colour": "red"})
    assert pred is not None
    mask = predicate_mask([{"colour": "red"}, None, {"colour": "blue"}, {"colour": ["red"]}, {}], pred)
    assert mask.dtype == bool
    assert mask.tolist() == [True, False, False, True, False]
