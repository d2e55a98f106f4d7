"""Embeddinghub's own Python tests and documented examples, run on embcache's facade (embcache.compat.embeddinghub).

The original project (github.com/featureform/embeddinghub, first published as featureform/embeddings; MPL-2.0)
is the reference. Its code is not copied here: each test below makes the same calls with the same data and
asserts what the original asserted, and each documentation cell is rewritten as the same calls on the same data.
The inventory is the last version of each file:

- ``sdk/python`` client tests (6), which drive ``EmbeddingHubClient`` with the space name first;
- ``sdk/python`` offline-index tests (8), which drive the in-memory ``offlinehub.Index`` (here:
  :class:`~embcache.compat.embeddinghub.SpaceSnapshot`, which is what the original's local hub and snapshots were);
- the Python cells of the documentation (29): the quick start (its README copy is the same), "Reading and Writing
  Embeddings", "Serving Embeddings for Inference", "Using Embedding for Training", "Using Embeddinghub in Local
  Mode" and "Deploying with Docker".

Names a page leaves to its reader (``training_samples``, ``model``, ``embedding_key``, the spaces of a recommender)
are given by the test, as the reader would. Cells that cannot run in the original itself (a typo, a name that is
never defined, a syntax error, an impossible port) are kept, with the reason, and must fail here for that same
reason: see ``BROKEN`` and docs/migrating-from-embeddinghub.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from embcache.compat import embeddinghub as eh
from embcache.compat.embeddinghub import SpaceSnapshot as Index  # the original's offlinehub.Index

# --- the client tests (sdk/python/embeddinghub_test.py) -----------------------------------------------------


@pytest.fixture
def es_client(redis_url: str) -> Iterator[eh.EmbeddingHubClient]:
    """The original started its gRPC server; the facade's client talks to the test Redis instead."""
    client = eh.EmbeddingHubClient(url=redis_url)
    try:
        yield client
    finally:
        client.close()


TWO = {"a": [1, 2, 3], "b": [3, 2, 1]}


def test_client_set_get(es_client: eh.EmbeddingHubClient) -> None:
    space = uuid.uuid4()  # a UUID names the space, turned into a string as the original did
    es_client.create_space(space, 3)
    es_client.set(space, "a", [1, 2, 3])
    assert es_client.get(space, "a") == [1, 2, 3]


def test_client_immutable_set(es_client: eh.EmbeddingHubClient) -> None:
    space = uuid.uuid4()
    es_client.create_space(space, 3)
    es_client.set(space, "a", [1, 2, 3])
    assert es_client.get(space, "a") == [1, 2, 3]
    es_client.freeze_space(space)
    with pytest.raises(TypeError):
        es_client.set(space, "a", [1, 2, 3])


def test_client_multiset_get(es_client: eh.EmbeddingHubClient) -> None:
    space = uuid.uuid4()
    es_client.create_space(space, 3)
    es_client.multiset(space, TWO)
    for key, emb in TWO.items():
        assert es_client.get(space, key) == emb


def test_client_multiset_multiget(es_client: eh.EmbeddingHubClient) -> None:
    space = uuid.uuid4()
    es_client.create_space(space, 3)
    es_client.multiset(space, TWO)
    got = es_client.multiget(space, TWO.keys())  # a dict view, not a list
    assert dict(zip(TWO.keys(), got)) == TWO


def test_client_multi_space(es_client: eh.EmbeddingHubClient) -> None:
    for space in TWO:
        es_client.create_space(space, 3)
    for space, emb in TWO.items():  # every space written before any is read
        es_client.set(space, "key", emb)
    for space, emb in TWO.items():
        assert es_client.get(space, "key") == emb


def test_client_multiset_download(es_client: eh.EmbeddingHubClient) -> None:
    space = uuid.uuid4()
    es_client.create_space(space, 3)
    es_client.multiset(space, TWO)
    assert dict(es_client.download(space)) == TWO


# --- the offline index tests (sdk/python/offlinehub_test.py) ------------------------------------------------


@pytest.fixture
def init_args() -> tuple[list[tuple[str, list[int]]], int]:
    return [("a", [1, 0]), ("b", [0, 1]), ("c", [-1, -1]), ("d", [1, 1])], 2


def test_index_set_get() -> None:
    index = Index([], 3)
    index.set("a", [1, 2, 3])
    assert index.get("a") == [1, 2, 3]


def test_index_get(init_args: Any) -> None:
    assert Index(*init_args).get("a") == [1, 0]


def test_index_set(init_args: Any) -> None:
    index = Index(*init_args)
    index.set("a", [5, 5])
    assert index.get("a") == [5, 5]


def test_index_multiset_multiget(init_args: Any) -> None:
    index = Index(*init_args)
    index.multiset({"a": [3, 3], "b": [4, 4]})
    assert index.multiget(["a", "b", "c"]) == [[3, 3], [4, 4], [-1, -1]]


def test_index_nearest_neighbor(init_args: Any) -> None:
    assert Index(*init_args).nearest_neighbor(2, key="a") == ["d", "b"]


def test_index_capacity_set() -> None:
    index = Index([], 2)
    for key in list(range(1025)) * 2:
        index.set(str(key), [1, 1])
    assert index.size() == 1025


def test_index_capacity_init() -> None:
    index = Index([(key, [1, 1]) for key in list(range(1028)) * 2], 2)  # integer keys
    assert index.size() == 1028


def test_index_capacity_multiset() -> None:
    index = Index([], 2)
    pairs = [(key, [1, 1]) for key in list(range(1028)) * 2]
    for i in range(0, len(pairs), 4):
        index.multiset(pairs[i : i + 4])
    assert index.size() == 1028


# --- the documentation's cells ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One code cell: ``code`` is run after the page's earlier cells, in one namespace."""

    id: str
    code: str
    broken: str | None = None  # why the cell cannot run in the original itself
    raises: type[BaseException] | tuple[type[BaseException], ...] | None = None  # ... and so fails here
    check: str | None = None  # an assertion about the namespace after the cell
    given: dict[str, str] = field(default_factory=dict)  # names the page leaves to the reader: name -> code


QUICKSTART = [  # docs/quickstart.md (and the README's "Getting Started")
    Cell("quickstart-1", "import embcache.compat.embeddinghub as eh\nhub = eh.connect(eh.Config())"),
    Cell("quickstart-2", "hub = eh.connect(eh.LocalConfig('data/'))"),
    Cell("quickstart-3", "space = hub.create_space('quickstart', dims=3)"),
    Cell("quickstart-4", "embeddings = {'apple': [1, 0, 0], 'orange': [1, 1, 0], 'potato': [0, 1, 0],\n"
                         "              'chicken': [-1, -1, 0]}\nspace.multiset(embeddings)"),
    Cell("quickstart-5", "neighbors = space.nearest_neighbors(key='apple', num=2)\nprint(neighbors)",
         check="neighbors == ['orange', 'potato']"),
]

READ_WRITE = [  # docs "Reading and Writing Embeddings"; the page assumes the quick start's hub
    Cell("read-write-1", "space = hub.create_space('name', 3)", given={"hub": "eh.connect(eh.Config())"}),
    Cell("read-write-2", "space = hub.get_space('name')"),
    Cell("read-write-3", "space.set('key', [1, 2, 3])\nembedding = space.get('key')", check="embedding == [1, 2, 3]"),
    Cell("read-write-4", "embeddings = {'a': [1, 2, 3], 'b': [4, 5, 6]}\nspace.multiset(embeddings)\n"
                         "embeddings = space.multiget(['a', 'b'])", check="embeddings == [[1, 2, 3], [4, 5, 6]]"),
    Cell("read-write-5", "space.delete('a')"),
    Cell("read-write-6", "space.multidelete(['a', 'b', 'c'])",  # 'a' is gone already and 'c' never existed
         check="space.multiget(['key']) == [[1, 2, 3]]"),
    Cell("read-write-7", "space.delete_all()", check="list(space.iterator()) == []"),
    Cell("read-write-8", "Embeddings = [('a', [1, 2, 3]), ('b', [4, 5, 6]), ('c', [7, 8, 9])]\n"
                         "space.multiset(embeddings)",
         broken="binds `Embeddings` and writes `embeddings`, which is the multiget result of an earlier cell",
         raises=ValueError),
    Cell("read-write-9", "space.download_snapshot()"),
    Cell("read-write-10", "space.get_space('name', download_snapshot=True)",
         broken="calls get_space on the space; it is a method of the hub (`hub.get_space`)",
         raises=AttributeError),
    Cell("read-write-11", "space.nearest_neighbors(5, key=embedding_key)",
         given={"embedding_key": "space.multiset({'x': [1, 0, 0], 'y': [0, 1, 0], 'z': [1, 1, 0]}) or 'x'"},
         check="space.nearest_neighbors(5, key=embedding_key) == ['z', 'y']"),
    Cell("read-write-12", "space.nearest_neigbhors(5, vector=embedding)",
         broken="misspells the method (`nearest_neigbhors`)", raises=AttributeError,
         given={"embedding": "[0.0, 1.0, 0.0]"}),
]

_RECOMMENDER = {  # the spaces and ids a page about serving leaves to its reader
    "items_space": "eh.connect(eh.Config()).create_space('items', 2)",
    "user_space": "eh.connect(eh.Config()).create_space('users', 2)",
    "item_space": "items_space",
    "_": "items_space.multiset({'i1': [1, 0], 'i2': [0.9, 0.1], 'i3': [0, 1]}) or "
         "user_space.multiset({'u1': [1, 0.05], 'u2': [0, 1]})",
}

SERVING = [  # docs "Serving Embeddings for Inference"
    Cell("serving-1", "def similar_items(item):\n    return items_space.nearest_neighbor(10, key=item)\n\n"
                      "def user_recommendations(user):\n    user_vec = user_space.get(user)\n"
                      "    return items_space.nearest_neighbor(10, vector=user_vec)",
         given=_RECOMMENDER,
         check="similar_items('i1') == ['i2', 'i3'] and user_recommendations('u2') == ['i3', 'i2', 'i1']"),
    Cell("serving-2", "def batch_user_recommendations(user_batch):\n"
                      "    user_vecs = user_space.multiget(user_batch)\n"
                      "    return items_space.multi_nearest_neighbor(10, vectors=user_vecs)",
         check="batch_user_recommendations(['u1', 'u2']) == [['i1', 'i2', 'i3'], ['i3', 'i2', 'i1']]"),
    Cell("serving-3", "user_snapshot = user_space.download_snapshot()\n"
                      "Item_snapshot = item_space.download_snapshot()\n\n"
                      "def user_recommendations(user):\n    user_vec = user_snapshot.get(user)\n"
                      "    return item_snapshot.nearest_neighbor(10, vector=user_vec)\n\n"
                      "user_recommendations('u1')",
         broken="binds `Item_snapshot` and reads `item_snapshot`", raises=NameError),
    Cell("serving-4", "user_snapshot.refresh(wait=False)", check="user_snapshot.get('u2') == [0, 1]"),
]

_TRAINING = {  # a reader's own training loop: samples and a model that learns the item embeddings
    "training_samples": "[('i1', 1.0), ('i3', 0.0)]",
    "model": "type('Model', (), {'embeddings': {'i1': [0.5, 0.5], 'i3': [0.0, 2.0]}, "
             "'training_step': lambda self, x, y: None})()",
    "_": "eh.connect(eh.Config()).create_space('items', 2).multiset({'i1': [1, 0], 'i2': [0.5, 0.25], 'i3': [0, 1]})",
}

TRAINING = [  # docs "Using Embedding for Training"; the page assumes the quick start's hub
    Cell("training-1", "snapshot = hub.get_space('items', download_snapshot=True)\n"
                       "for key, label in training_samples:\n    embedding = snapshot.get(key)\n"
                       "    model.training_step(embedding, label)",
         given={"hub": "eh.connect(eh.Config())", **_TRAINING}, check="embedding == [0, 1]"),
    Cell("training-2", "snapshot = hub.get_space('items', download_snapshot=True)\n"
                       "for key, label in training_samples:\n    neighbors = snapshot.nearest_neighbor(5, key=key)\n"
                       "    model.training_step(neighbors, label)\n    snapshot.set(key, model.embeddings[key])\n"
                       "snapshot.write_to_space('items_v2', create=True)",
         check="dict(hub.get_space('items_v2').iterator()) == {'i1': [0.5, 0.5], 'i2': [0.5, 0.25], 'i3': [0, 2]}"
               " and hub.get_space('items').get('i1') == [1, 0]"),
    Cell("training-3", "snapshot.overwrite_space(\u201citems\u201d)",
         broken="the space name is in typographic quotes (\u201c \u201d), which are not Python", raises=SyntaxError),
]

LOCAL = [  # docs "Using Embeddinghub in Local Mode"
    Cell("local-1", "import embcache.compat.embeddinghub as eh\nhub = eh.connect(LocalConfig('directory'))",
         broken="uses `LocalConfig` without the module (`eh.LocalConfig`), and nothing imported it",
         raises=NameError),
    Cell("local-2", "item_space = hub.create_space('items', 3)",
         given={"hub": "eh.connect(eh.LocalConfig('directory'))"}),
    Cell("local-3", "hub.save()"),
    Cell("local-4", "with hub as eh.connect(eh.LocalConfig('directory')):\n    pass",
         broken="`with hub as <call>` assigns to a function call: a syntax error", raises=SyntaxError),
]

DOCKER = [  # docs "Deploying with Docker"
    Cell("docker-1", "import embcache.compat.embeddinghub as eh\n"
                     "hub = eh.connect(eh.Config(host='0.0.0.0', port=74622))\n"
                     "space = hub.create_space('test_space', 3)\nspace.set('key', [1, 2, 3])",
         broken="port 74622 is beyond 65535: no server can listen there", raises=(ValueError, ConnectionError)),
]

PAGES = {"quickstart": QUICKSTART, "read-write": READ_WRITE, "serving": SERVING, "training": TRAINING,
         "local": LOCAL, "docker": DOCKER}
CELLS = [(page, i) for page, cells in PAGES.items() for i in range(len(cells))]
BROKEN = {c.id: c.broken for cells in PAGES.values() for c in cells if c.broken}
"""The cells that cannot run in the original itself, with the reason (listed in docs/migrating-from-embeddinghub.md)."""


def _run_cell(cell: Cell, ns: dict[str, Any]) -> None:
    for name, expr in cell.given.items():
        ns[name] = eval(expr, ns)  # noqa: S307 - the test's own expressions
    exec(compile(cell.code, cell.id, "exec"), ns)  # noqa: S102 - the cell under test


@pytest.fixture
def hubs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[eh.EmbeddingHub]]:
    """Every hub the cells open (closed after the test), and the embedded servers LocalConfig started (stopped)."""
    from embcache import server

    opened: list[eh.EmbeddingHub] = []
    real = eh.connect

    def connect(*args: Any, **kwargs: Any) -> eh.EmbeddingHub:
        opened.append(real(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(eh, "connect", connect)
    try:
        yield opened
    finally:
        for hub in opened:
            hub.close()
        for state in tmp_path.rglob("server.json"):  # the embedded servers LocalConfig started
            server.stop_embedded(state.parent)


@pytest.mark.parametrize(("page", "index"), CELLS, ids=[PAGES[p][i].id for p, i in CELLS])
def test_doc_cell(page: str, index: int, redis_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                  hubs: list[eh.EmbeddingHub]) -> None:
    monkeypatch.setenv("EMBCACHE_URL", redis_url)  # eh.Config(): embcache's default hub, here the test Redis
    monkeypatch.chdir(tmp_path)  # LocalConfig('data/') keeps its embedded Redis in a directory of the test
    ns: dict[str, Any] = {"eh": eh, "np": np}
    cells = PAGES[page]
    for earlier in cells[:index]:  # the page up to this cell, as a reader runs it
        try:
            _run_cell(earlier, ns)
        except Exception:  # noqa: BLE001
            if not earlier.broken:
                raise
    cell = cells[index]
    if cell.broken:
        with pytest.raises(cell.raises):  # type: ignore[arg-type]
            _run_cell(cell, ns)
        return
    _run_cell(cell, ns)
    if cell.check:
        assert eval(cell.check, ns), cell.check  # noqa: S307


def test_inventory() -> None:
    """43 items: 14 tests and 29 cells, of which 8 cells are broken in the original (each with its reason)."""
    assert len(CELLS) == 29
    assert sorted(BROKEN) == ["docker-1", "local-1", "local-4", "read-write-10", "read-write-12", "read-write-8",
                              "serving-3", "training-3"]
    assert all(BROKEN.values())
