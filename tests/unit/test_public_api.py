"""Pins embcache's public surface: the exact ``__all__``, and a docstring on every public name and method.

Changing the public names is a decision: update ``PUBLIC`` here in the same change (and say why in ``docs/``
when a name goes away, as DESIGN.md asks).
"""

from __future__ import annotations

import inspect

import pytest

import embcache
from embcache.compat import embeddinghub

PUBLIC = [
    "AlreadyExists",
    "BuildTimeout",
    "CorruptRecord",
    "DimensionMismatch",
    "EmbcacheError",
    "GetResult",
    "Hub",
    "Indeterminate",
    "InvalidInput",
    "InvalidName",
    "NotFound",
    "OpenDefaultUserWarning",
    "OutOfMemory",
    "PermissionDenied",
    "QueryResult",
    "RedisRefused",
    "ServerError",
    "SnapshotCorrupt",
    "Space",
    "Unavailable",
    "UntrustedHome",
    "Version",
    "VersionSealed",
    "__version__",
    "connect",
]

ERRORS = [
    "AlreadyExists", "BuildTimeout", "CorruptRecord", "DimensionMismatch", "EmbcacheError", "Indeterminate",
    "InvalidInput", "InvalidName", "NotFound", "OutOfMemory", "PermissionDenied", "RedisRefused", "ServerError",
    "SnapshotCorrupt", "Unavailable", "VersionSealed", "UntrustedHome",
]


def public_methods(cls: type) -> list[tuple[str, object]]:
    """Public callables and properties defined by ``cls`` (or its embcache bases), not by ``object``."""
    out = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or not (callable(member) or isinstance(member, property)):
            continue
        if inspect.isclass(member):
            continue
        out.append((name, member))
    return out


def own_doc(member: object) -> str:
    doc = member.fget.__doc__ if isinstance(member, property) else getattr(member, "__doc__", None)
    return (doc or "").strip()


def test_all_is_pinned() -> None:
    assert sorted(embcache.__all__) == PUBLIC
    assert len(set(embcache.__all__)) == len(embcache.__all__)


def test_every_public_name_exists() -> None:
    for name in embcache.__all__:
        assert hasattr(embcache, name), name


def test_version_string() -> None:
    assert isinstance(embcache.__version__, str)
    assert embcache.__version__.count(".") >= 2


@pytest.mark.parametrize("name", [n for n in PUBLIC if n != "__version__"])
def test_public_name_has_docstring(name: str) -> None:
    obj = getattr(embcache, name)
    assert own_doc(obj), f"embcache.{name} has no docstring"


@pytest.mark.parametrize("cls", [embcache.Hub, embcache.Space, embcache.Version], ids=lambda c: c.__name__)
def test_public_methods_have_docstrings(cls: type) -> None:
    methods = public_methods(cls)
    assert len(methods) >= 5
    missing = [name for name, member in methods if not own_doc(member)]
    assert not missing, f"{cls.__name__} methods without a docstring: {missing}"


def test_contract_methods_exist() -> None:
    """The methods DESIGN.md names (the contract) are there."""
    hub = ["create_space", "space", "spaces", "drop_space", "grant", "revoke", "close"]
    space = ["create_version", "version", "versions", "set_alias", "aliases", "rollback", "query"]
    version = ["upsert", "get", "delete", "count", "partitions", "build", "query", "query_by_id", "seal"]
    for cls, names in ((embcache.Hub, hub), (embcache.Space, space), (embcache.Version, version)):
        have = {n for n, _ in public_methods(cls)}
        assert set(names) <= have, f"{cls.__name__} lacks {sorted(set(names) - have)}"


@pytest.mark.parametrize("name", ERRORS)
def test_errors_share_one_base(name: str) -> None:
    cls = getattr(embcache, name)
    assert issubclass(cls, embcache.EmbcacheError)


def test_builtin_families() -> None:
    assert issubclass(embcache.InvalidInput, ValueError)
    assert issubclass(embcache.DimensionMismatch, embcache.InvalidInput)
    assert issubclass(embcache.InvalidName, embcache.InvalidInput)
    assert issubclass(embcache.NotFound, KeyError)
    assert issubclass(embcache.PermissionDenied, PermissionError)


# --- the Embeddinghub facade -------------------------------------------------------------------------------


def test_compat_embeddinghub_surface() -> None:
    assert sorted(embeddinghub.__all__) == sorted(
        ["ALIAS", "Config", "DEFAULT_METRIC", "EmbeddingHub", "EmbeddingHubClient", "LocalConfig", "PARTITION",
         "Space", "SpaceSnapshot", "VERSION", "connect"]
    )
    for name in ("Config", "LocalConfig", "EmbeddingHub", "EmbeddingHubClient", "Space", "SpaceSnapshot", "connect"):
        assert own_doc(getattr(embeddinghub, name)), name
    for cls in (embeddinghub.EmbeddingHub, embeddinghub.Space, embeddinghub.Config, embeddinghub.LocalConfig,
                embeddinghub.SpaceSnapshot, embeddinghub.EmbeddingHubClient):
        missing = [name for name, member in public_methods(cls) if not own_doc(member)]
        assert not missing, f"{cls.__name__} methods without a docstring: {missing}"
    # Embeddinghub's client API is all there
    hub_api = {"create_space", "get_space", "delete_space", "close"}
    space_api = {"set", "get", "multiset", "multiget", "delete", "multidelete", "nearest_neighbors"}
    assert hub_api <= {n for n, _ in public_methods(embeddinghub.EmbeddingHub)}
    assert space_api <= {n for n, _ in public_methods(embeddinghub.Space)}
