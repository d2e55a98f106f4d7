"""Unit tests of embcache.keys: one test per key kind, hash tags, parsing, name safety. No Redis."""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import re

import pytest
from redis.crc import key_slot

from embcache.core.errors import InvalidInput, InvalidName
from embcache.core.keys import DEFAULT_PREFIX, Keys, ParsedKey, check_name


@pytest.fixture
def k() -> Keys:
    return Keys()


def tag_of(key: str) -> str:
    """The Redis Cluster hash tag as Redis computes it: between the first '{' and the next '}'."""
    start = key.index("{")
    end = key.index("}", start + 1)
    assert end > start + 1
    return key[start + 1 : end]


def slot(key: str) -> int:
    return key_slot(key.encode())


# --- one test per key kind ---------------------------------------------------------------------------------


def test_default_prefix_is_emb() -> None:
    assert DEFAULT_PREFIX == "emb"
    assert Keys().prefix == "emb"


def test_hub_level_keys(k: Keys) -> None:
    assert k.spaces() == "emb:{_hub}:spaces"
    assert k.principals() == "emb:{_hub}:principals"
    assert k.dispatcher_lock() == "emb:{_hub}:dispatcher"


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("space", "emb:{movies}:space"),
        ("versions", "emb:{movies}:versions"),
        ("seq", "emb:{movies}:seq"),
        ("aliases", "emb:{movies}:aliases"),
        ("dirty", "emb:{movies}:dirty"),
        ("grants", "emb:{movies}:grants"),
        ("events", "emb:{movies}:events"),
    ],
)
def test_space_level_keys(k: Keys, method: str, expected: str) -> None:
    assert getattr(k, method)("movies") == expected


def test_alias_history_key(k: Keys) -> None:
    assert k.alias_history("movies", "live") == "emb:{movies}:alias:live"


def test_parts_key(k: Keys) -> None:
    assert k.parts("movies", "v1") == "emb:{movies}:parts:v1"


def test_space_pattern(k: Keys) -> None:
    assert k.space_pattern("movies") == "emb:{movies}:*"


def test_partition_keys(k: Keys) -> None:
    pk = k.partition("movies", "v1", "default")
    assert pk.tag == "movies/v1/default"
    assert pk.vec == "emb:{movies/v1/default}:vec"
    assert pk.meta == "emb:{movies/v1/default}:meta"
    assert pk.log == "emb:{movies/v1/default}:log"
    assert pk.state == "emb:{movies/v1/default}:state"
    assert pk.snap == "emb:{movies/v1/default}:snap"
    assert pk.lease == "emb:{movies/v1/default}:lease"
    assert pk.sealed == "emb:{movies/v1/default}:sealed"
    assert pk.chunk("7.a1b2c3d4", 0) == "emb:{movies/v1/default}:snap:7.a1b2c3d4:0"
    assert pk.chunk("12.00ff", 3) == "emb:{movies/v1/default}:snap:12.00ff:3"
    assert pk.writes == [pk.vec, pk.meta, pk.log, pk.state, pk.sealed]


def test_partition_keys_are_distinct(k: Keys) -> None:
    pk = k.partition("movies", "v1", "default")
    keys = [*partition_key_fields(pk).values(), pk.chunk("1.aa", 0), pk.chunk("1.aa", 1), pk.chunk("1.bb", 0)]
    assert len(set(keys)) == len(keys)


def partition_key_fields(pk) -> dict[str, str]:  # noqa: ANN001
    """Every key field of a PartitionKeys (all its str fields but the tag)."""
    return {f.name: getattr(pk, f.name) for f in dataclasses.fields(pk) if f.name != "tag"}


def test_partition_pattern(k: Keys) -> None:
    assert k.partition_pattern("movies") == "emb:{movies/*/*}:*"
    assert k.partition_pattern("movies", "v1") == "emb:{movies/v1/*}:*"
    assert k.partition_pattern("movies", "v1", "eu") == "emb:{movies/v1/eu}:*"
    with pytest.raises(InvalidName):
        k.partition_pattern("movies", "v{1}")
    with pytest.raises(InvalidName):
        k.partition_pattern("mov*")


def test_custom_prefix() -> None:
    k = Keys("tenant-a.emb_2")
    assert k.spaces() == "tenant-a.emb_2:{_hub}:spaces"
    assert k.space("movies") == "tenant-a.emb_2:{movies}:space"
    assert k.partition("movies", "v1", "p").vec == "tenant-a.emb_2:{movies/v1/p}:vec"


@pytest.mark.parametrize("prefix", ["", "a:b", "a{b}", "a*", "a b", "x" * 33, None, 5, b"emb"])
def test_bad_prefix_rejected(prefix: object) -> None:
    with pytest.raises(InvalidName):
        Keys(prefix)  # type: ignore[arg-type]


def test_patterns_match_the_keys_they_cover(k: Keys) -> None:
    import fnmatch

    pk = k.partition("movies", "v1", "eu")
    other = k.partition("movies2", "v1", "eu")
    for key in (pk.vec, pk.snap, pk.chunk("3.ab", 1)):
        assert fnmatch.fnmatchcase(key, k.partition_pattern("movies"))
        assert fnmatch.fnmatchcase(key, k.partition_pattern("movies", "v1", "eu"))
        assert not fnmatch.fnmatchcase(key, k.partition_pattern("movies", "v2"))
        assert not fnmatch.fnmatchcase(key, k.partition_pattern("movies", "v1", "us"))
    assert not fnmatch.fnmatchcase(other.vec, k.partition_pattern("movies"))
    assert fnmatch.fnmatchcase(k.versions("movies"), k.space_pattern("movies"))
    assert not fnmatch.fnmatchcase(k.versions("movies2"), k.space_pattern("movies"))
    # space-level and partition-level patterns do not overlap
    assert not fnmatch.fnmatchcase(pk.vec, k.space_pattern("movies"))


# --- hash tags ---------------------------------------------------------------------------------------------


def test_partition_keys_share_one_tag_and_slot(k: Keys) -> None:
    pk = k.partition("movies", "v1", "default")
    keys = [*partition_key_fields(pk).values(), pk.chunk("7.ab", 0), pk.chunk("7.ab", 19)]
    assert len(keys) >= 9
    assert {tag_of(x) for x in keys} == {"movies/v1/default"}
    assert len({slot(x) for x in keys}) == 1


def test_space_keys_share_one_tag_and_slot(k: Keys) -> None:
    keys = [
        k.space("movies"), k.versions("movies"), k.seq("movies"), k.aliases("movies"),
        k.alias_history("movies", "live"), k.alias_history("movies", "canary"), k.parts("movies", "v1"),
        k.parts("movies", "v2"), k.dirty("movies"), k.grants("movies"), k.events("movies"),
    ]
    assert {tag_of(x) for x in keys} == {"movies"}
    assert len({slot(x) for x in keys}) == 1


def test_partitions_get_their_own_tags(k: Keys) -> None:
    tags = {
        k.partition(s, v, p).tag
        for s in ("movies", "books") for v in ("v1", "v2") for p in ("eu", "us", "default")
    }
    assert len(tags) == 12
    # and they spread over slots (12 distinct tags all in one slot would be a hashing bug)
    slots = {slot(k.partition(s, v, p).vec) for s in ("movies", "books") for v in ("v1", "v2") for p in ("eu", "us")}
    assert len(slots) > 1


def test_partition_tag_differs_from_space_tag(k: Keys) -> None:
    assert tag_of(k.partition("movies", "v1", "default").vec) != tag_of(k.space("movies"))


def test_hub_tag_cannot_collide_with_a_space(k: Keys) -> None:
    # "_hub" is not a valid space name, so no space's keys can land in the hub's tag
    with pytest.raises(InvalidName):
        k.space("_hub")
    assert tag_of(k.spaces()) == "_hub"


# --- parse round trips -------------------------------------------------------------------------------------


def test_parse_hub_keys(k: Keys) -> None:
    assert k.parse(k.spaces()) == ParsedKey(kind="spaces")
    assert k.parse(k.principals()) == ParsedKey(kind="principals")
    assert k.parse(k.dispatcher_lock()) == ParsedKey(kind="dispatcher")


@pytest.mark.parametrize("method", ["space", "versions", "seq", "aliases", "dirty", "grants", "events"])
def test_parse_space_keys(k: Keys, method: str) -> None:
    key = getattr(k, method)("my.space-1")
    assert k.parse(key) == ParsedKey(kind=method, space="my.space-1")
    assert k.parse(key.encode()) == ParsedKey(kind=method, space="my.space-1")


def test_parse_alias_and_parts(k: Keys) -> None:
    assert k.parse(k.alias_history("movies", "live")) == ParsedKey(kind="alias", space="movies", extra=("live",))
    assert k.parse(k.parts("movies", "v12")) == ParsedKey(kind="parts", space="movies", extra=("v12",))


@pytest.mark.parametrize("kind", ["vec", "meta", "log", "state", "snap", "lease", "sealed"])
def test_parse_partition_keys(k: Keys, kind: str) -> None:
    pk = k.partition("movies", "v3", "eu-west_1")
    parsed = k.parse(getattr(pk, kind))
    assert parsed == ParsedKey(kind=kind, space="movies", version="v3", partition="eu-west_1")


def test_parse_chunk(k: Keys) -> None:
    pk = k.partition("movies", "v3", "eu")
    assert k.parse(pk.chunk("7.a1b2c3d4", 12)) == ParsedKey(
        kind="chunk", space="movies", version="v3", partition="eu", extra=("7.a1b2c3d4", "12")
    )


def test_parse_with_custom_prefix() -> None:
    k = Keys("pfx")
    assert k.parse(k.space("a")) == ParsedKey(kind="space", space="a")
    with pytest.raises(InvalidName):
        k.parse(Keys().space("a"))  # another hub's prefix
    with pytest.raises(InvalidName):
        Keys().parse(k.space("a"))


@pytest.mark.parametrize(
    "key",
    [
        "",
        "emb",
        "emb:movies:space",  # no hash tag
        "emb:{movies}",  # no kind
        "emb:{movies}:",
        "other:{movies}:space",
        "emb:{}:space",
        "emb:{mo{vies}:space",
        "emb:{_bad}:space",  # a name no builder accepts
        "emb:{movies/v1}:vec",  # two-part tag
        "emb:{movies/v1/p/x}:vec",
        "emb:{movies/v*/p}:vec",
        "emb:{movies}:bogus",  # unknown kind
        "emb:{movies}:space:extra",
        "emb:{movies}:alias",  # alias without a name
        "emb:{movies}:alias:",
        "emb:{movies}:alias:a:b",
        "emb:{movies}:parts:v{1}",
        "emb:{movies/v1/p}:bogus",
        "emb:{movies/v1/p}:vec:x",
        "emb:{movies/v1/p}:snap:7",
        "emb:{movies/v1/p}:snap:a:b",
        "emb:{movies/v1/p}:snap:7.ab:x",
        "emb:{movies/v1/p}:snap:7.a*:0",
        "emb:{movies/v1/p}:snap:.ab:0",
        "emb:{movies/v1/p}:snap:1:2:3",
        "emb:{_hub}:spaces:x",
        "emb:{_hub}:bogus",
        b"emb:{\xff}:space",  # not UTF-8
        None,
        42,
    ],
)
def test_parse_rejects_foreign_keys(k: Keys, key: object) -> None:
    with pytest.raises(InvalidName):
        k.parse(key)  # type: ignore[arg-type]


def test_parse_round_trips_every_builder(k: Keys) -> None:
    """Every key any builder produces parses back to parts that rebuild the same key."""
    s, v, p, a = "s-1", "v.2", "P_3", "canary"
    pk = k.partition(s, v, p)
    rebuild = {
        "spaces": lambda x: k.spaces(),
        "principals": lambda x: k.principals(),
        "dispatcher": lambda x: k.dispatcher_lock(),
        "alias": lambda x: k.alias_history(x.space, x.extra[0]),
        "parts": lambda x: k.parts(x.space, x.extra[0]),
        "chunk": lambda x: k.partition(x.space, x.version, x.partition).chunk(x.extra[0], int(x.extra[1])),
        "version_graph_chunk": lambda x: k.version_graph_chunk(x.space, x.version, x.extra[0], int(x.extra[1])),
    }
    for kind in ("version_graph", "version_graph_lease", "version_graph_dirty"):
        rebuild[kind] = lambda x, kind=kind: getattr(k, kind)(x.space, x.version)
    for kind in ("space", "versions", "seq", "aliases", "dirty", "grants", "events"):
        rebuild[kind] = lambda x, kind=kind: getattr(k, kind)(x.space)
    for kind in partition_key_fields(pk):
        rebuild[kind] = lambda x, kind=kind: getattr(k.partition(x.space, x.version, x.partition), kind)
    keys = [
        k.spaces(), k.principals(), k.dispatcher_lock(), k.space(s), k.versions(s), k.seq(s), k.aliases(s),
        k.dirty(s), k.grants(s), k.events(s), k.alias_history(s, a), k.parts(s, v), *partition_key_fields(pk).values(),
        pk.chunk("0", 0), pk.chunk("123.deadbeef", 45), k.version_graph(s, v), k.version_graph_lease(s, v),
        k.version_graph_dirty(s, v), k.version_graph_chunk(s, v, "4.ab12", 3),
    ]
    for key in keys:
        parsed = k.parse(key)
        assert rebuild[parsed.kind](parsed) == key


def test_parse_knows_every_builder(k: Keys) -> None:
    """Found by introspection, so a builder added later without teaching ``parse`` fails here."""
    found = 0
    for name, method in inspect.getmembers(k, inspect.ismethod):
        if name.startswith("_") or name.endswith(("_pattern", "_patterns")) \
                or name in ("parse", "partition", "partition_tag"):
            continue
        params = list(inspect.signature(method).parameters)
        args = {"space": "s1", "alias": "live", "version": "v1"}
        if not set(params) <= set(args):
            continue
        key = method(*[args[p] for p in params])
        assert isinstance(key, str), name
        parsed = k.parse(key)  # raises InvalidName for a key parse does not know
        assert parsed.space == ("s1" if "space" in params else None), name
        found += 1
    assert found >= 12
    for name, key in partition_key_fields(k.partition("s1", "v1", "p1")).items():
        assert k.parse(key).kind == name


def test_version_graph_keys_are_outside_partition_patterns(k: Keys) -> None:
    """A principal limited to some partitions must not match the version graph (it spans every partition)."""
    vg = [k.version_graph("movies", "v1"), k.version_graph_chunk("movies", "v1", "3.ab", 0)]
    part = re.compile(fnmatch.translate(k.partition_pattern("movies", "*", "eu")))
    space = re.compile(fnmatch.translate(k.space_pattern("movies")))
    graph = re.compile(fnmatch.translate(k.version_graph_pattern("movies")))
    for key in vg:
        assert not part.match(key) and not space.match(key) and graph.match(key)
    assert not graph.match(k.version_graph("movies2", "v1")) and not graph.match(k.version_graph_lease("movies", "v1"))
    assert k.parse(vg[0]) == ParsedKey(kind="version_graph", space="movies", version="v1")


# --- names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "A", "0", "movies", "v1", "eu-west_1.b", "x" * 64, "9lives", "a.b-c_d"])
def test_safe_names_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a{b",
        "a}b",
        "{a}",
        "a*",
        "a?",
        "a[b]",
        "a]",
        "a:b",
        "a/b",
        "a b",
        " a",
        "a\t",
        "a\n",
        "a\\b",
        "x" * 65,
        "_a",
        ".a",
        "-a",
        "é",
        "a\u00e9",
        "\uff10",  # a full-width digit (a Unicode \d, not an ASCII one)
        "a\x00",
        "a^b",
        "a!b",
    ],
)
def test_unsafe_names_rejected(name: str) -> None:
    with pytest.raises(InvalidName) as info:
        check_name(name, "space name")
    assert "space name" in str(info.value)


@pytest.mark.parametrize("name", [None, 1, 1.5, b"movies", ["movies"], ("a",), {"a": 1}, True])
def test_non_str_names_rejected(name: object) -> None:
    with pytest.raises(InvalidName):
        check_name(name)


def test_invalid_name_is_invalid_input_and_value_error() -> None:
    with pytest.raises(InvalidInput):
        check_name("a b")
    with pytest.raises(ValueError):
        check_name("a b")


@pytest.mark.parametrize("bad", ["a b", "a:b", "a/b", "{x}", "*", "", "_x", "x" * 65])
def test_every_builder_validates_its_names(k: Keys, bad: str) -> None:
    builders = [
        lambda: k.space(bad), lambda: k.versions(bad), lambda: k.seq(bad), lambda: k.aliases(bad),
        lambda: k.dirty(bad), lambda: k.events(bad), lambda: k.space_pattern(bad),
        lambda: k.alias_history(bad, "live"), lambda: k.alias_history("s", bad),
        lambda: k.parts(bad, "v1"), lambda: k.parts("s", bad),
        lambda: k.partition(bad, "v1", "p"), lambda: k.partition("s", bad, "p"), lambda: k.partition("s", "v1", bad),
        lambda: k.partition_tag("s", "v1", bad),
    ]
    for build in builders:
        with pytest.raises(InvalidName):
            build()
