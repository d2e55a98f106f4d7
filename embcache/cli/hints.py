"""What the user can do about an error: one table from exception type to advice, most specific type first.

An error's hint is the first entry whose type the error is an instance of, so a subclass must come before its
base (``tests/unit/test_cli_hints.py`` checks the order). ``{space}`` is replaced by the command's space.
"""

from __future__ import annotations

from ..core.errors import (
    AuthenticationFailed,
    BuildTimeout,
    DriftTooLarge,
    EmbcacheError,
    Indeterminate,
    NotFound,
    OutOfMemory,
    PartitionNotFound,
    PermissionDenied,
    PrincipalNotFound,
    SpaceNotFound,
    Unavailable,
    VersionNotFound,
    VersionSealed,
)

__all__ = ["HINTS", "hint"]

HINTS: tuple[tuple[type[EmbcacheError], str], ...] = (
    (SpaceNotFound, "list the spaces with `embcache spaces`; create one with `embcache create-space NAME --dim N`"),
    (VersionNotFound, "list the versions and aliases with `embcache versions {space}`"),
    (PartitionNotFound, "see the partitions with `embcache stats {space} VERSION`"),
    (PrincipalNotFound, "list the principals with `embcache principals`"),
    (NotFound, "see what there is with `embcache spaces` and `embcache versions {space}`"),
    (DriftTooLarge, "inspect it with `embcache compare {space} A B [--plot FILE.png]`; promote without --max-drift "
                    "(or with a larger one) to move the alias anyway"),
    (BuildTimeout, "`embcache stats {space}` shows what each partition still has to index; a large load may "
                   "need a longer --timeout, or more workers (`embcache worker` on another machine, same --url)"),
    (AuthenticationFailed, "Redis did not accept these credentials: check --username and --password (or "
                           "--password-file; EMBCACHE_USERNAME, EMBCACHE_PASSWORD, EMBCACHE_PASSWORD_FILE)"),
    (PermissionDenied, "connect as a principal with that role (--username/--password); an operator grants it with "
                       "`embcache grant`"),
    (Indeterminate, "the write may or may not have been applied: writes are idempotent, so run the same command "
                    "again (a stopped import says how to go on from where it was)"),
    (OutOfMemory, "Redis is at its maxmemory limit: free memory (`embcache drop-version`, `embcache drop-space`) "
                  "or raise the limit"),
    (Unavailable, "is Redis running there, and answering? give its address with --url or EMBCACHE_URL; a server "
                  "that is only slow may need a longer EMBCACHE_SOCKET_TIMEOUT"),
    (VersionSealed, "sealed versions are read-only: write to a new version (`embcache create-version {space}`)"),
)


def hint(exc: EmbcacheError, space: str | None = None) -> str:
    """The advice for ``exc`` ("" when the message says it all)."""
    for kind, text in HINTS:
        if isinstance(exc, kind):
            return text.format(space=space or "SPACE")
    return ""
