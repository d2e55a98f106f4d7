"""The CLI's hints come from one table keyed by exception type (embcache.cli.hints), most specific type first."""

from __future__ import annotations

import pytest

from embcache.cli.hints import HINTS, hint
from embcache.core import errors


def test_no_entry_is_shadowed_by_an_earlier_base() -> None:
    for i, (kind, _) in enumerate(HINTS):
        for earlier, _ in HINTS[:i]:
            assert not issubclass(kind, earlier), f"{kind.__name__} comes after its base {earlier.__name__}"


@pytest.mark.parametrize(("error", "needle"), [
    (errors.SpaceNotFound("no space named 'x'"), "embcache spaces"),
    (errors.VersionNotFound("space 's' has no version 'v9'"), "embcache versions s"),
    (errors.PartitionNotFound("version s/v1 has no partition 'p'"), "embcache stats s VERSION"),
    (errors.PrincipalNotFound("no principal named 'bob'"), "embcache principals"),
    (errors.AuthenticationFailed("connect: authentication failed"), "check --username and --password"),
    (errors.PermissionDenied("refused"), "embcache grant"),
    (errors.BuildTimeout("no worker"), "embcache stats s"),
    (errors.Indeterminate("no answer"), "run the same command again"),
    (errors.OutOfMemory("maxmemory"), "embcache drop-version"),
    (errors.Unavailable("unreachable"), "--url or EMBCACHE_URL"),
    (errors.VersionSealed("sealed"), "embcache create-version s"),
])
def test_each_kind_gets_its_hint(error: errors.EmbcacheError, needle: str) -> None:
    assert needle in hint(error, "s")


def test_the_message_does_not_choose_the_hint() -> None:
    # a NotFound whose text mentions a partition is still a space's NotFound: the type decides
    assert "embcache spaces" in hint(errors.SpaceNotFound("no space named 'partition'"), "s")
    assert hint(errors.InvalidInput("bad")) == ""
    assert "SPACE" in hint(errors.VersionNotFound("x"))  # no space known: a placeholder


def test_the_build_timeout_hint_adds_to_its_message() -> None:
    # both BuildTimeout messages already say to start `embcache worker`: the hint says what else to check
    assert "start one" not in hint(errors.BuildTimeout("no embcache worker is running"), "s")
    assert "--timeout" in hint(errors.BuildTimeout("did not catch up"), "s")


def test_the_authentication_hint_is_not_the_grants_hint() -> None:
    assert "embcache grant" not in hint(errors.AuthenticationFailed("wrong password"))
