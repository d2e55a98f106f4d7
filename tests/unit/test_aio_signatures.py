"""The asyncio twin mirrors the sync client: every public call of Hub, Space and Version exists on AsyncHub,
AsyncSpace and AsyncVersion with the same parameters (names, kinds, defaults), so code moves between the two by
adding ``await``. Checked from the signatures, so a call added to one side and not the other fails here."""

from __future__ import annotations

import inspect

import pytest

import embcache
import embcache.aio as aio

PAIRS = [(embcache.Hub, aio.AsyncHub), (embcache.Space, aio.AsyncSpace), (embcache.Version, aio.AsyncVersion)]


def public_calls(cls: type) -> dict[str, object]:
    return {n: m for n, m in inspect.getmembers(cls)
            if not n.startswith("_") and callable(m) and not inspect.isclass(m)}


def shape(fn: object) -> list[tuple[str, object, object]]:
    """Parameters without annotations: the async side returns Async* types, and that is the only difference."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=[a.__name__ for _, a in PAIRS])
def test_async_classes_mirror_the_sync_signatures(sync_cls: type, async_cls: type) -> None:
    mirrored = public_calls(async_cls)
    for name, fn in public_calls(sync_cls).items():
        assert name in mirrored, f"{async_cls.__name__} lacks {name}()"
        assert shape(mirrored[name]) == shape(fn), f"{async_cls.__name__}.{name} differs from {sync_cls.__name__}'s"


def test_the_check_sees_a_difference() -> None:
    def sync(self: object, ids: list[str], n_results: int = 10) -> None: ...

    async def drifted(self: object, ids: list[str], n_results: int = 5) -> None: ...

    assert shape(sync) != shape(drifted)
