"""The follower's overlay (embcache.core.tail): append-only rows, immutable views, the twin index. Pure."""

from __future__ import annotations

import hnswlib
import numpy as np
import pytest

from embcache.core import snapshot
from embcache.core.engine import HIDE_BY_OVERFETCH, compile_filter, search_base
from embcache.core.search import merge_ranked
from embcache.core.snapshot import HnswBase
from embcache.core.tail import INDEX_FROM, TailBuffer
from embcache.core.views import ExactBase, OverlayItem, search_view

DIM = 16


def _unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _items(pos: str, ids: list[str], vecs: np.ndarray | None, meta: dict | None = None) -> dict[str, OverlayItem]:
    return {i: OverlayItem(pos, None if vecs is None else vecs[j], meta) for j, i in enumerate(ids)}


def _truth(live: dict[str, np.ndarray], q: np.ndarray, k: int) -> list[list[str]]:
    ids = list(live)
    mat = np.stack([live[i] for i in ids]).astype(np.float64)
    d = -(q.astype(np.float64) @ mat.T)
    return [[ids[j] for j in np.argsort(row, kind="stable")[:k]] for row in d]


def test_views_are_immutable_and_later_rows_win() -> None:
    buf = TailBuffer("1-0", DIM, "cosine")
    x = _unit(10, 1)
    v1 = buf.apply("2-0", _items("2-0", ["a", "b"], x[:2], {"t": 1}))
    v2 = buf.apply("3-0", _items("3-0", ["a"], x[2:3], {"t": 2}) | _items("3-0", ["b"], None))
    assert (v1.n, v1.n_live, v1.pos) == (2, 2, "2-0") and (v2.n, v2.n_live, v2.pos) == (4, 1, "3-0")
    assert v1.search(x[:1], 1)[0][0] == ["a"]  # the old view still answers as it did
    assert v2.search(x[2:3], 2)[0][0] == ["a"] and v2.item("b").vector is None  # type: ignore[union-attr]
    assert v2.item("a").metadata == {"t": 2}  # type: ignore[union-attr]
    assert v2.search(x[1:2], 5)[0][0] == ["a"], "a deleted id is returned"


def test_growth_keeps_rows_and_views(monkeypatch=None) -> None:  # noqa: ANN001
    buf = TailBuffer("0-0", DIM, "l2")
    x = _unit(1000, 2)
    views = []
    for s in range(0, 1000, 7):
        views.append(buf.apply(f"{s + 1}-0", _items(f"{s + 1}-0", [f"i{j}" for j in range(s, min(s + 7, 1000))],
                                                      x[s : s + 7])))
    assert buf.view.n == 1000 and len(buf.matrix) >= 1000
    first = views[0]
    assert first.search(x[3:4], 1)[0][0] == ["i3"]
    assert buf.view.search(x[999:], 1)[0][0] == ["i999"]


def test_search_view_hides_base_rows_the_tail_replaced_or_deleted() -> None:
    x = _unit(200, 3)
    base = ExactBase("5-0", [f"i{i}" for i in range(100)], x[:100].copy(), [{"n": i} for i in range(100)], "cosine")
    buf = TailBuffer("5-0", DIM, "cosine")
    buf.apply("6-0", _items("6-0", ["i0"], x[150:151], {"n": -1}) | _items("6-0", ["i1"], None)
              | _items("6-0", ["new"], x[1:2] * -1, {"n": 7}))
    v = buf.view
    got = search_view(base, {}, x[:2], 3, None, None, "cosine", tails=[v])
    assert "i0" not in got[0][0] and "i1" not in got[1][0] and "i1" not in got[0][0]
    assert search_view(base, {}, x[150:151], 1, None, None, "cosine", tails=[v])[0][0] == ["i0"]
    flt = compile_filter({"n": {"$gte": 0}})
    got = search_view(base, {}, x[150:151], 5, flt, None, "cosine", tails=[v])[0][0]
    assert "i0" not in got  # its new metadata does not match
    # a newer overlay (session, strong tail) wins over the tail
    own = {"i0": OverlayItem("7-0", None, None)}
    assert "i0" not in search_view(base, own, x[150:151], 5, None, None, "cosine", tails=[v])[0][0]


def test_after_keeps_only_newer_rows() -> None:
    buf = TailBuffer("1-0", DIM, "cosine")
    x = _unit(4, 4)
    buf.apply("2-0", _items("2-0", ["a", "b"], x[:2]))
    buf.apply("3-0", _items("3-0", ["c"], x[2:3]) | _items("3-0", ["a"], None))
    small = buf.after("2-0")
    assert small.start == "2-0" and small.view.pos == "3-0" and sorted(small.view.ids()) == ["a", "c"]
    assert small.view.n_live == 1 and small.view.item("a").vector is None  # type: ignore[union-attr]
    past = buf.after("9-0")  # a base newer than everything: empty, at the base's position
    assert past.view.n == 0 and past.view.pos == "9-0"


def test_indexed_overlay_matches_brute_force() -> None:
    n = INDEX_FROM + 1500
    x = _unit(n, 5)
    buf = TailBuffer("0-0", DIM, "cosine", ef=100)
    live = {}
    for s in range(0, n, 500):
        ids = [f"r{j}" for j in range(s, min(s + 500, n))]
        buf.apply(f"{s + 1}-0", _items(f"{s + 1}-0", ids, x[s : s + 500]))
        live.update(zip(ids, x[s : s + 500]))
    dead = [f"r{j}" for j in range(0, n, 10)]
    buf.apply(f"{n + 1}-0", _items(f"{n + 1}-0", dead, None))
    for i in dead:
        del live[i]
    while buf.unindexed() or buf.twin is None or buf.twin.serving < 0:
        buf.index_step(0.05)
    buf.index_step(0.05)  # both twins current
    assert buf.twin is not None and min(buf.twin.covered) == buf.view.n
    q = _unit(100, 6)
    got = [r[0] for r in buf.view.search(q, 10)]
    truth = _truth(live, q, 10)
    recall = sum(len(set(g) & set(t)) for g, t in zip(got, truth)) / 1000
    assert recall >= 0.95
    assert not {i for row in got for i in row} & set(dead)
    # rows appended after the index: scanned exactly, so found at once
    y = _unit(1, 7)
    buf.apply(f"{n + 2}-0", _items(f"{n + 2}-0", ["late"], y))
    assert buf.unindexed() == 1
    assert buf.view.search(y, 1)[0][0] == ["late"]
    flt = compile_filter({"n": 1})
    assert buf.view.search(y, 3, flt)[0][0] == []  # no row carries that metadata


# what a view hides of a base: worked out once per view, exact for that view -----------------------------------
def _snapshot(x: np.ndarray, ids: list[str]) -> HnswBase:
    index = hnswlib.Index(space="cosine", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=16, ef_construction=100, random_seed=1)
    index.add_items(x, np.arange(len(x)), num_threads=1)
    chunks, manifest = snapshot.pack(index, np.arange(len(x)), ids, [{"n": i} for i in range(len(x))],
                                     generation=1, pos="5-0", dim=x.shape[1], metric="cosine", M=16,
                                     ef_construction=100, builder="t", build_seconds=0.0, deleted=0,
                                     max_label=len(x) - 1)
    return snapshot.unpack(chunks, manifest, ef=64)


def test_each_view_hides_what_its_own_rows_replaced_or_deleted() -> None:
    x = _unit(300, 8)
    base = ExactBase("5-0", [f"i{i}" for i in range(200)], x[:200].copy(), [None] * 200, "cosine")
    buf = TailBuffer("5-0", DIM, "cosine")
    old = buf.apply("6-0", _items("6-0", ["i0"], None))
    new = buf.apply("7-0", _items("7-0", ["i1"], None) | _items("7-0", ["i2"], x[250:251]))
    # the newer view is asked first: the older one must still show i1 and the base's i2 (its rows do not hide them)
    assert sorted(new.hide(base).tolist()) == [0, 1, 2]
    assert old.hide(base).tolist() == [0]
    assert search_view(base, {}, x[1:3], 1, None, None, "cosine", tails=[old])[0][0] == ["i1"]
    assert search_view(base, {}, x[2:3], 1, None, None, "cosine", tails=[old])[0][0] == ["i2"]
    assert old.hide(base) is old.hide(base), "worked out once per view"
    # a delete in a later view: hidden there, though the earlier views' slots were cached before it came
    later = buf.apply("8-0", _items("8-0", ["i3"], None))
    got = search_view(base, {}, x[:4], 5, None, None, "cosine", tails=[later])
    assert not {i for row, _ in got for i in row} & {"i0", "i1", "i3"}
    assert search_view(base, {}, x[3:4], 1, None, None, "cosine", tails=[new])[0][0] == ["i3"]


@pytest.mark.parametrize("changed", [HIDE_BY_OVERFETCH // 2, 600])  # an over-fetch skips them; a mask per view
@pytest.mark.parametrize("tail_rows", [500, INDEX_FROM + 500])  # scanned exactly, indexed by the twin
def test_an_overlay_of_replacements_and_deletes_matches_brute_force(changed: int, tail_rows: int) -> None:
    n = 3000
    x = _unit(n + tail_rows, 9)
    ids = [f"i{i}" for i in range(n)]
    base = _snapshot(x[:n], ids)
    live = dict(zip(ids, x[:n]))
    buf = TailBuffer("5-0", DIM, "cosine", ef=100)
    rng = np.random.default_rng(10)
    touched = rng.choice(n, changed, replace=False)
    replaced, deleted = touched[: changed // 2], touched[changed // 2 :]
    fresh = [f"new{j}" for j in range(tail_rows - len(replaced))]
    items = _items("6-0", fresh, x[n : n + len(fresh)])
    items |= _items("6-0", [ids[i] for i in replaced], x[n + len(fresh) : n + tail_rows])
    items |= _items("6-0", [ids[i] for i in deleted], None)
    view = buf.apply("6-0", items)
    for id_, it in items.items():
        if it.vector is None:
            del live[id_]
        else:
            live[id_] = it.vector
    while buf.index_behind():
        buf.index_step(0.05)
    q = _unit(100, 11)
    got = [r[0] for r in search_view(base, {}, q, 10, None, None, "cosine", tails=[view])]
    truth = _truth(live, q, 10)
    assert sum(len(set(g) & set(t)) for g, t in zip(got, truth)) / 1000 >= 0.95
    assert not {i for row in got for i in row} & {ids[i] for i in deleted}
    assert all(len(row) == len(set(row)) == 10 for row in got), "a replaced id comes back once, as its new row"
    hidden = view.hide(base)
    assert len(hidden) == changed and not hidden.flags.writeable
    mask, count = view.visible(base)
    assert count == n - changed and not mask[hidden].any() and view.visible(base)[0] is mask
    # a replaced id is found by its new vector: asked at its old one, it comes back (if at all) at the new distance
    at_old = search_view(base, {}, x[replaced[:20]], 1, None, None, "cosine", tails=[view])
    for i, (row, d) in zip(replaced[:20], at_old):
        if row[0] == ids[i]:
            assert float(d[0]) == pytest.approx(1 - float(live[ids[i]] @ x[i]), abs=1e-5)
    # a filter applies to the overlay's rows too (they carry no metadata) and to the base's
    flt = compile_filter({"n": {"$lt": 100}})
    got = search_view(base, {}, q, 10, flt, None, "cosine", tails=[view])
    allowed = {ids[i] for i in range(100)} - {ids[i] for i in touched}
    assert all(set(row) <= allowed for row, _ in got)


def test_cutting_the_overlay_at_the_bases_kth_distance_changes_no_answer() -> None:
    """search_view drops the overlay's rows from the base's k-th distance on before merging: the answer must be the
    merge of both whole answers, ties included (overlay rows that copy base vectors, or sit on the base's k-th)."""
    x = _unit(400, 12)
    base = ExactBase("5-0", [f"i{i}" for i in range(300)], x[:300].copy(), [None] * 300, "cosine")
    buf = TailBuffer("5-0", DIM, "cosine")
    view = buf.apply("6-0", _items("6-0", [f"copy{i}" for i in range(50)], x[:50])
                     | _items("6-0", [f"new{i}" for i in range(100)], x[300:]))
    q = np.concatenate([x[:50], _unit(150, 13)])
    for k in (1, 5, 10):
        got = search_view(base, {}, q, k, None, None, "cosine", tails=[view])
        whole = [merge_ranked([b, t], k) for b, t in zip(search_base(base, q, k, None, gone_slots=view.hide(base)),
                                                         view.search(q, k))]
        for g, w in zip(got, whole):
            assert g[0] == w[0]
            np.testing.assert_array_equal(g[1], w[1])


def test_an_older_view_holds_and_hides_an_id_that_a_newer_row_changed() -> None:
    """A view older than an id's newest row still holds the id's earlier row: ``in``, ``item`` and a search that
    hides the id (an overlay newer than the view deleted it) must find that row (found by review: they looked
    only at the newest row, which the older view does not have)."""
    buf = TailBuffer("1-0", 4, "l2", 16)
    x = np.array([1, 0, 0, 0], np.float32)
    old = buf.apply("2-0", {"X": OverlayItem("2-0", x, None)})
    buf.apply("3-0", {"X": OverlayItem("3-0", None, None)})  # the follower reads the delete: a newer view
    assert "X" in old and old.item("X") is not None and np.array_equal(old.item("X").vector, x)
    assert old.search(x[None, :], 1, None, {"X"})[0][0] == []
    assert old.search(x[None, :], 1)[0][0] == ["X"]
    assert "X" in buf.view and buf.view.item("X").vector is None


def test_an_older_view_is_searched_whole_after_the_twin_indexed_a_newer_one() -> None:
    """The twin index holds the rows live in the newest view: an older view (a query in flight) whose row of an id
    was replaced later must still find that row (found by review: the index had left it out)."""
    n = INDEX_FROM + 500
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n + 1, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    buf = TailBuffer("0-0", 16, "cosine", ef=100)
    ids = [f"r{j}" for j in range(n)]
    old = buf.apply("1-0", {i: OverlayItem("1-0", x[j], None) for j, i in enumerate(ids)})
    buf.apply("2-0", {"r5": OverlayItem("2-0", x[n], None)})  # r5 replaced in a newer view
    while buf.index_behind():
        buf.index_step(0.05)
    assert old.search(x[5:6], 3)[0][0][0] == "r5"
    assert buf.view.search(x[5:6], 3)[0][0][0] != "r5" and buf.view.search(x[n:n + 1], 1)[0][0] == ["r5"]


def test_a_view_is_searched_whole_when_the_index_swapped_in_meanwhile_was_fed_by_a_newer_one() -> None:
    """A query takes the newest view, then the serving index; in between the follower may apply a tail that
    replaces an id of that view and the indexer swap in an index fed by the newer view, which left the old row
    out. The query must still find that row (found by review: it checked the view's age before it took the
    index, so it searched one that lacked the row, then cut the rows past its own view)."""
    n = INDEX_FROM + 50
    x = _unit(n + 2, 31)
    buf = TailBuffer("0-0", DIM, "cosine")
    buf.apply("1-0", _items("1-0", [f"i{i}" for i in range(n)], x[:n]))
    while buf.index_behind():
        buf.index_step(1.0)
    view = buf.apply("2-0", _items("2-0", ["X"], x[n : n + 1]))  # the query's view: X live, not indexed yet
    twin = buf.twin
    assert twin is not None
    real = twin.acquire

    def acquire():  # noqa: ANN202 - between the query's view and its index: a new tail, indexed and swapped in
        twin.acquire = real  # type: ignore[method-assign]
        buf.apply("3-0", _items("3-0", ["X"], x[n + 1 : n + 2]))
        while buf.index_behind():
            buf.index_step(1.0)
        return real()

    twin.acquire = acquire  # type: ignore[method-assign]
    assert view.search(x[n : n + 1], 5)[0][0][0] == "X"
    assert buf.view.search(x[n + 1 : n + 2], 1)[0][0] == ["X"]  # the newest view finds X's new row
