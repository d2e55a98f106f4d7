"""The Embeddinghub-compatible facade (embcache.compat.embeddinghub) against a real Redis.

Expected neighbours come from a float64 brute force in this file over what the test wrote.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlparse

import numpy as np
import pytest

import embcache
from embcache import AlreadyExists, DimensionMismatch, InvalidInput, InvalidName, NotFound, VersionSealed
from embcache.compat import embeddinghub
from tests.datasets import MINILM_DIR


@pytest.fixture
def eh(redis_url: str) -> Iterator[embeddinghub.EmbeddingHub]:
    hub = embeddinghub.connect(url=redis_url)
    try:
        yield hub
    finally:
        hub.close()


def brute_l2(store: dict[str, np.ndarray], query: np.ndarray, num: int, exclude: str | None = None) -> list[str]:
    keys = [k for k in store if k != exclude]
    mat = np.stack([store[k] for k in keys]).astype(np.float64)
    d = ((mat - np.asarray(query, dtype=np.float64)) ** 2).sum(1)
    return [keys[i] for i in np.argsort(d, kind="stable")[:num]]


def random_store(n: int, dims: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"k{i}": rng.normal(size=dims).astype(np.float32) for i in range(n)}


# --- connecting --------------------------------------------------------------------------------------------


def test_connect_with_config(redis_url: str) -> None:
    parsed = urlparse(redis_url)
    config = embeddinghub.Config(host=parsed.hostname, port=parsed.port)  # type: ignore[arg-type]
    with embeddinghub.connect(config) as hub:
        space = hub.create_space("cfg", 2)
        space.set("a", [1.0, 2.0])
    with embeddinghub.connect(url=redis_url) as hub:
        assert hub.get_space("cfg").get("a") == [1.0, 2.0]


def test_config_url() -> None:
    assert embeddinghub.Config().url is None  # embcache's default hub: EMBCACHE_URL, else the embedded Redis
    assert embeddinghub.Config("h").url == "redis://h:6379/0"
    assert embeddinghub.Config(port=7000).url == "redis://127.0.0.1:7000/0"
    assert embeddinghub.Config("h", 7000, db=3).url == "redis://h:7000/3"
    assert embeddinghub.Config("h", "7000", tls=True).url == "rediss://h:7000/0"
    assert embeddinghub.Config("::1", 6379).url == "redis://[::1]:6379/0"
    assert "secret" not in repr(embeddinghub.Config(password="secret"))


def test_connect_argument_errors(redis_url: str) -> None:
    with pytest.raises(InvalidInput, match="not both"):
        embeddinghub.connect(embeddinghub.Config(), url=redis_url)
    with pytest.raises(InvalidInput, match="Config"):
        embeddinghub.connect("redis://localhost")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="consistency"):
        embeddinghub.connect(url=redis_url, consistency="sometimes")
    with pytest.raises(InvalidInput, match="metric"):
        embeddinghub.connect(url=redis_url, metric="euclid")


# --- spaces ------------------------------------------------------------------------------------------------


def test_create_get_delete_space(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("words", 3)
    assert space.name == "words" and space.dims == 3
    native = eh.hub.space("words")
    assert native.dim == 3 and native.metric == "l2"
    assert eh.get_space("words").dims == 3
    with pytest.raises(AlreadyExists):
        eh.create_space("words", 3)
    eh.delete_space("words")
    with pytest.raises(NotFound):
        eh.get_space("words")
    with pytest.raises(KeyError):  # NotFound is a KeyError, as a missing key in a dict
        eh.get_space("words")
    with pytest.raises(NotFound):
        eh.delete_space("words")


def test_space_metric_option(eh: embeddinghub.EmbeddingHub, redis_url: str) -> None:
    eh.create_space("cos", 2, metric="cosine")
    assert eh.hub.space("cos").metric == "cosine"
    with embeddinghub.connect(url=redis_url, metric="ip") as other:
        other.create_space("dot", 2)
        assert other.hub.space("dot").metric == "ip"


def test_bad_space_names_and_dims(eh: embeddinghub.EmbeddingHub) -> None:
    with pytest.raises(InvalidName):
        eh.create_space("my space", 3)
    with pytest.raises(InvalidInput):
        eh.create_space("ok", 0)
    with pytest.raises(InvalidInput):
        eh.create_space("ok", "3")  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        eh.get_space("never-created")


def test_first_write_creates_v1_aliased_live(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("lazy", 2)
    native = eh.hub.space("lazy")
    assert native.versions() == [] and native.aliases() == {}
    space.set("a", [0.5, 0.25])
    assert [v.name for v in native.versions()] == ["v1"]
    assert native.aliases() == {"live": "v1"}
    v1 = native.version("live")
    assert v1.partitions() == ["default"] and v1.count() == 1
    # a second facade object on the same space uses the same version
    eh.get_space("lazy").set("b", [1.0, 1.0])
    assert [v.name for v in native.versions()] == ["v1"] and v1.count() == 2


def test_iterator_and_delete_all_walk_every_key(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("s", 2)
    assert list(space.iterator()) == []
    items = {f"k{i}": [float(i), 1.0] for i in range(2500)}  # more than one batch of 1000
    space.multiset(items)
    got = dict(eh.get_space("s", download_snapshot=True).iterator())
    assert got == items
    space.delete_all()
    assert list(space.iterator()) == []
    with pytest.raises(NotFound):
        space.get("k1")


# --- key-value interface -----------------------------------------------------------------------------------


def test_set_get_round_trip(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("kv", 4)
    vec = [0.1, -2.5, 3.0, 1e-3]
    space.set("a", vec)
    got = space.get("a")
    assert isinstance(got, list) and all(type(x) is float for x in got)
    assert got == np.asarray(vec, dtype=np.float32).tolist()  # float32 precision
    space.set("b", np.arange(4, dtype=np.float64))
    assert space.get("b") == [0.0, 1.0, 2.0, 3.0]


def test_set_replaces(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("kv", 2)
    space.set("a", [1.0, 1.0])
    space.set("a", [2.0, 3.0])
    assert space.get("a") == [2.0, 3.0]
    assert eh.hub.space("kv").version("live").count() == 1


def test_int_keys_become_strings(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("ints", 2)
    space.set(7, [1.0, 2.0])  # type: ignore[arg-type]
    assert space.get("7") == [1.0, 2.0]
    assert space.get(7) == [1.0, 2.0]  # type: ignore[arg-type]


def test_multiset_mapping_and_pairs(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("multi", 3)
    store = random_store(50, 3, seed=1)
    space.multiset(store)
    assert space.multiget(["k3", "k0", "k49"]) == [store[k].tolist() for k in ("k3", "k0", "k49")]
    space.multiset([("p", [1, 2, 3]), ("q", (4, 5, 6)), ("p", [7, 8, 9])])  # the later pair wins
    assert space.get("p") == [7.0, 8.0, 9.0]
    assert space.get("q") == [4.0, 5.0, 6.0]
    space.multiset(iter([("r", np.ones(3))]))  # any iterable of pairs
    assert space.get("r") == [1.0, 1.0, 1.0]
    space.multiset({})  # nothing to do
    assert eh.hub.space("multi").version("live").count() == 53


def test_multiset_is_all_or_nothing(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("atomic", 2)
    for bad in ([1.0], [np.nan, 1.0], "xy", None, [[1.0, 2.0]]):
        with pytest.raises(InvalidInput):
            space.multiset({"good": [1.0, 2.0], "bad": bad})
        with pytest.raises(NotFound):
            space.get("good")
    with pytest.raises(InvalidInput):
        space.multiset([("good", [1.0, 2.0]), ("only-a-key",)])
    with pytest.raises(InvalidInput):
        space.multiset(5)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        space.get("good")


def test_multiget_order_duplicates_missing(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("mg", 2)
    space.multiset({"a": [1, 0], "b": [0, 1]})
    assert space.multiget(["b", "a", "b"]) == [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    assert space.multiget([]) == []
    assert space.multiget(iter(["a"])) == [[1.0, 0.0]]
    with pytest.raises(NotFound, match="'zz'"):
        space.multiget(["a", "zz"])
    with pytest.raises(KeyError):
        space.get("zz")


def test_get_on_a_space_never_written(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("empty", 2)
    with pytest.raises(NotFound):
        space.get("a")
    with pytest.raises(NotFound):
        space.delete("a")
    with pytest.raises(NotFound):
        space.nearest_neighbors(3, key="a")
    assert space.nearest_neighbors(3, vector=[1.0, 2.0]) == []
    with pytest.raises(InvalidInput):
        space.nearest_neighbors(3, vector=[np.nan, 2.0])
    with pytest.raises(DimensionMismatch):
        space.nearest_neighbors(3, vector=[1.0])
    assert eh.hub.space("empty").versions() == []  # reads create nothing


def test_delete(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("del", 2)
    space.multiset({"a": [1, 0], "b": [0, 1], "c": [1, 1]})
    space.delete("b")
    with pytest.raises(NotFound):
        space.get("b")
    with pytest.raises(NotFound):
        space.delete("b")
    assert space.multiget(["a", "c"]) == [[1.0, 0.0], [1.0, 1.0]]
    space.multidelete(["a", "a"])
    with pytest.raises(NotFound):
        space.get("a")
    space.multidelete(["c", "nope"])  # keys that are not there are ignored, as in Embeddinghub
    with pytest.raises(NotFound):
        space.get("c")
    space.multidelete([])


def test_bad_vectors(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("bad", 3)
    with pytest.raises(DimensionMismatch):
        space.set("a", [1.0, 2.0])
    with pytest.raises(DimensionMismatch):
        space.set("a", [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError):  # the InvalidInput family is ValueError
        space.set("a", [1.0, 2.0])
    for bad in ([1.0, np.nan, 2.0], [1.0, np.inf, 2.0], [1e39, 0, 0], ["a", "b", "c"], [1, None, 2], None, "abc",
                [[1.0, 2.0, 3.0]], [[1.0], [2.0], [3.0]], {"a": 1}, 3.0, [1.0, [2.0], 3.0]):
        with pytest.raises(InvalidInput):
            space.set("a", bad)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        space.get("a")  # none of it was written


def test_bad_keys(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("keys", 2)
    for bad in (None, 1.5, b"a", ("a",), True):
        with pytest.raises(InvalidInput):
            space.set(bad, [1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        space.set("", [1.0, 2.0])
    with pytest.raises(InvalidInput):
        space.set("x" * 513, [1.0, 2.0])
    with pytest.raises(InvalidInput):
        space.multiget("ab")  # a str is not a list of keys
    space.set("é" * 256, [1.0, 2.0])  # 512 bytes: the limit
    assert space.get("é" * 256) == [1.0, 2.0]


def test_freeze_space(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("frozen", 2)
    space.set("a", [1.0, 2.0])
    eh.freeze_space("frozen")
    with pytest.raises(VersionSealed):
        space.set("b", [1.0, 2.0])
    with pytest.raises(VersionSealed):
        eh.get_space("frozen").multiset({"b": [1.0, 2.0]})
    with pytest.raises(VersionSealed):
        space.delete("a")
    assert space.get("a") == [1.0, 2.0]
    assert space.nearest_neighbors(1, vector=[1.0, 2.0]) == ["a"]


# --- nearest neighbours ------------------------------------------------------------------------------------


def test_nearest_neighbors_by_key_and_vector_against_brute_force(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("nn", 16)
    store = random_store(400, 16, seed=2)
    space.multiset(store)
    for key in ("k0", "k17", "k399"):
        got = space.nearest_neighbors(10, key=key)
        assert got == brute_l2(store, store[key], 10, exclude=key)
        assert key not in got and len(got) == 10
    rng = np.random.default_rng(3)
    for _ in range(5):
        q = rng.normal(size=16).astype(np.float32)
        assert space.nearest_neighbors(7, vector=q.tolist()) == brute_l2(store, q, 7)
        assert space.nearest_neighbors(7, vector=q) == brute_l2(store, q, 7)


def test_nearest_neighbors_follow_writes(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("nn2", 4)
    store = random_store(60, 4, seed=4)
    space.multiset(store)
    q = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    first = space.nearest_neighbors(3, vector=q)
    assert first == brute_l2(store, q, 3)
    # delete the nearest, move the second far away, add a new nearest
    space.delete(first[0])
    del store[first[0]]
    far = np.full(4, 100.0, dtype=np.float32)
    space.set(first[1], far)
    store[first[1]] = far
    space.set("new", q + 1e-3)
    store["new"] = q + np.float32(1e-3)
    got = space.nearest_neighbors(3, vector=q)
    assert got == brute_l2(store, q, 3)
    assert got[0] == "new" and first[0] not in got and first[1] not in got


def test_nearest_neighbors_sees_writes_of_another_connection(eh: embeddinghub.EmbeddingHub, redis_url: str) -> None:
    space = eh.create_space("shared", 2)
    space.multiset({"a": [0, 0], "b": [5, 5]})
    assert space.nearest_neighbors(1, vector=[4, 4]) == ["b"]
    with embeddinghub.connect(url=redis_url) as other:
        other.get_space("shared").set("c", [4.0, 4.1])
        other.get_space("shared").delete("a")
    assert space.nearest_neighbors(2, vector=[4, 4]) == ["c", "b"]
    assert space.nearest_neighbors(5, key="b") == ["c"]


def test_nearest_neighbors_num_beyond_size(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("small", 2)
    space.multiset({"a": [0, 0], "b": [1, 0], "c": [3, 0]})
    assert space.nearest_neighbors(10, key="a") == ["b", "c"]
    assert space.nearest_neighbors(10, vector=[2.9, 0]) == ["c", "b", "a"]
    assert space.nearest_neighbors(1, key="c") == ["b"]
    space.multidelete(["b", "c"])
    assert space.nearest_neighbors(3, key="a") == []


def test_nearest_neighbors_errors(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("nnerr", 3)
    space.set("a", [1.0, 2.0, 3.0])
    with pytest.raises(NotFound):
        space.nearest_neighbors(2, key="missing")
    with pytest.raises(InvalidInput, match="exactly one"):
        space.nearest_neighbors(2)
    with pytest.raises(InvalidInput, match="exactly one"):
        space.nearest_neighbors(2, key="a", vector=[1.0, 2.0, 3.0])
    for num in (0, -1, "3", 2.0, True, None):
        with pytest.raises(InvalidInput, match="num"):
            space.nearest_neighbors(num, key="a")  # type: ignore[arg-type]
    with pytest.raises(DimensionMismatch):
        space.nearest_neighbors(2, vector=[1.0, 2.0])
    for bad in ([1.0, np.nan, 3.0], ["a", "b", "c"], [[1.0, 2.0, 3.0]], "abc"):
        with pytest.raises(InvalidInput):
            space.nearest_neighbors(2, vector=bad)  # type: ignore[arg-type]


def test_multi_nearest_neighbors(eh: embeddinghub.EmbeddingHub) -> None:
    space = eh.create_space("mnn", 8)
    store = random_store(120, 8, seed=5)
    space.multiset(store)
    keys = ["k1", "k2", "k3"]
    assert space.multi_nearest_neighbors(4, keys=keys) == [brute_l2(store, store[k], 4, exclude=k) for k in keys]
    qs = np.random.default_rng(6).normal(size=(3, 8)).astype(np.float32)
    assert space.multi_nearest_neighbors(4, vectors=list(qs)) == [brute_l2(store, q, 4) for q in qs]
    assert space.multi_nearest_neighbors(4, keys=[]) == []


def test_facade_space_is_a_native_space(eh: embeddinghub.EmbeddingHub, redis_url: str) -> None:
    space = eh.create_space("native", 4)
    store = random_store(30, 4, seed=7)
    space.multiset(store)
    q = np.ones(4, dtype=np.float32)
    with embcache.connect(redis_url) as hub:
        res = hub.space("native").query(q, n_results=5, consistency="strong")
        assert res.ids[0] == space.nearest_neighbors(5, vector=q) == brute_l2(store, q, 5)


@pytest.mark.skipif(not (MINILM_DIR / "base.f16.npy").exists(), reason="tests/data/minilm not present")
def test_real_minilm_vectors(eh: embeddinghub.EmbeddingHub, minilm_subset) -> None:  # noqa: ANN001
    n = 1500
    store = dict(zip(minilm_subset.ids[:n], minilm_subset.base[:n]))
    space = eh.create_space("minilm", 384)
    space.multiset(store)
    for q in minilm_subset.queries[:10]:
        assert space.nearest_neighbors(10, vector=q) == brute_l2(store, q, 10)
    for key in minilm_subset.ids[:5]:
        assert space.nearest_neighbors(10, key=key) == brute_l2(store, store[key], 10, exclude=key)
    assert np.allclose(space.get(minilm_subset.ids[3]), minilm_subset.base[3])
