"""Every error embcache raises, in one tree under one base.

::

    EmbcacheError
    ├── InvalidInput            bad arguments: shapes, dtypes, NaN/inf, empty batches, names, filters
    │   ├── DimensionMismatch   a vector's length is not the space's dim
    │   └── InvalidName         a space/version/alias/partition name outside the safe character set
    ├── NotFound                unknown space, version, alias, partition
    ├── AlreadyExists           create_space/create_version on a taken name
    ├── VersionSealed           a write to a sealed version
    ├── PermissionDenied        Redis refused the operation for this principal (ACL)
    ├── Unavailable             Redis cannot be reached (writes and strong reads raise it)
    ├── SnapshotCorrupt         a snapshot failed its checksum or could not be parsed
    ├── BuildTimeout            build(wait=True) did not see the snapshots in time
    └── ServerError             the embedded redis-server could not be found or started

Every public call validates its arguments before it touches Redis, so an ``InvalidInput`` (or any subclass)
means nothing was written. ``InvalidInput`` also derives from ``ValueError``, ``NotFound`` from ``KeyError``
and ``PermissionDenied`` from ``PermissionError``, so code that catches the built-in kinds keeps working.
"""

from __future__ import annotations

__all__ = [
    "EmbcacheError",
    "InvalidInput",
    "DimensionMismatch",
    "InvalidName",
    "NotFound",
    "AlreadyExists",
    "VersionSealed",
    "PermissionDenied",
    "Unavailable",
    "SnapshotCorrupt",
    "BuildTimeout",
    "ServerError",
]


class EmbcacheError(Exception):
    """Base of every error raised by embcache."""


class InvalidInput(EmbcacheError, ValueError):
    """An argument was rejected before anything was sent to Redis."""


class DimensionMismatch(InvalidInput):
    """A vector does not have the space's dimension."""


class InvalidName(InvalidInput):
    """A name uses characters outside ``[A-Za-z0-9_.-]`` or is too long."""


class NotFound(EmbcacheError, KeyError):
    """A space, version, alias or partition does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AlreadyExists(EmbcacheError):
    """The name is taken."""


class VersionSealed(EmbcacheError):
    """The version is sealed (read-only)."""


class PermissionDenied(EmbcacheError, PermissionError):
    """Redis refused the command for the connected principal (ACL)."""


class Unavailable(EmbcacheError, ConnectionError):
    """Redis could not be reached; nothing was written."""


class SnapshotCorrupt(EmbcacheError):
    """A snapshot failed verification; it is not used."""


class BuildTimeout(EmbcacheError, TimeoutError):
    """Snapshots did not catch up within the timeout (are workers running?)."""


class ServerError(EmbcacheError):
    """The embedded redis-server is missing or failed to start."""
