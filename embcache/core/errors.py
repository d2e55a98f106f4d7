"""Every error embcache raises, in one tree under one base.

::

    EmbcacheError
    ├── InvalidInput            bad arguments: shapes, dtypes, NaN/inf, empty batches, names, filters
    │   ├── DimensionMismatch   a vector's length is not the space's dim
    │   └── InvalidName         a space/version/alias/partition name outside the safe character set
    ├── NotFound                unknown space, version, alias, partition
    │   ├── SpaceNotFound       no space of that name
    │   ├── VersionNotFound     no version or alias of that name (or no version at all, or nothing to roll back to)
    │   ├── PartitionNotFound   no partition of that name in the version
    │   ├── ItemNotFound        no item of that id
    │   └── PrincipalNotFound   no principal (or grant) of that name
    ├── AlreadyExists           create_space/create_version on a taken name
    ├── VersionSealed           a write to a sealed version
    │   └── SpaceFrozen         a write to a frozen Embeddinghub-facade space (also a TypeError, as there)
    ├── PermissionDenied        Redis refused the operation for this principal (ACL)
    │   └── AuthenticationFailed  Redis did not accept the username/password
    ├── Unavailable             Redis cannot be reached (writes and strong reads raise it); nothing was sent
    ├── Indeterminate           a write was sent but not confirmed: it may or may not have been applied
    ├── OutOfMemory             Redis refused a write at its memory limit (maxmemory, noeviction)
    ├── RedisRefused            Redis refused a command for another reason (e.g. WRONGTYPE on a tampered key)
    ├── SnapshotCorrupt         a snapshot failed its checksum or could not be parsed
    ├── CorruptRecord           a catalogue record (or sealed partition) read back from Redis failed validation
    ├── BuildTimeout            build(wait=True) did not see the snapshots in time
    ├── ServerError             the embedded redis-server could not be found or started
    └── Conflict                a concurrent writer won a race (retried inside embcache, never raised to users)
        └── PublishConflict     another build published first: the worker drops its result

Every public call validates its arguments before it touches Redis, so an ``InvalidInput`` (or any subclass)
means nothing was written. So do ``Unavailable`` (the command never reached Redis), ``OutOfMemory`` and
``PermissionDenied`` (Redis refused it). ``Indeterminate`` is the one error after which a write may have
happened: ``upsert`` and ``delete`` are idempotent, so retrying them is safe. ``InvalidInput`` also derives
from ``ValueError``, ``NotFound`` from ``KeyError`` and ``PermissionDenied`` from ``PermissionError``, so code
that catches the built-in kinds keeps working.
"""

from __future__ import annotations

__all__ = [
    "EmbcacheError",
    "InvalidInput",
    "DimensionMismatch",
    "InvalidName",
    "NotFound",
    "SpaceNotFound",
    "VersionNotFound",
    "PartitionNotFound",
    "ItemNotFound",
    "PrincipalNotFound",
    "AlreadyExists",
    "VersionSealed",
    "SpaceFrozen",
    "PermissionDenied",
    "AuthenticationFailed",
    "Unavailable",
    "Indeterminate",
    "OutOfMemory",
    "RedisRefused",
    "SnapshotCorrupt",
    "CorruptRecord",
    "BuildTimeout",
    "ServerError",
    "Conflict",
    "PublishConflict",
    "UntrustedHome",
    "OpenDefaultUserWarning",
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


class SpaceNotFound(NotFound):
    """No space of that name."""


class VersionNotFound(NotFound):
    """No version or alias of that name in the space (or the space has no version, or nothing to roll back to)."""


class PartitionNotFound(NotFound):
    """No partition of that name in the version."""


class ItemNotFound(NotFound):
    """No item of that id."""


class PrincipalNotFound(NotFound):
    """No principal of that name, or it has no grant on the space."""


class AlreadyExists(EmbcacheError):
    """The name is taken."""


class VersionSealed(EmbcacheError):
    """The version is sealed (read-only)."""


class SpaceFrozen(VersionSealed, TypeError):
    """A write to a space frozen through :mod:`embcache.compat.embeddinghub` (Embeddinghub raised ``TypeError``)."""


class PermissionDenied(EmbcacheError, PermissionError):
    """Redis refused the command for the connected principal (ACL)."""


class AuthenticationFailed(PermissionDenied):
    """Redis did not accept the username and password (or needs one and none was given)."""


class Unavailable(EmbcacheError, ConnectionError):
    """Redis could not be reached (or, for a read, did not answer in time); nothing was written."""


class Indeterminate(EmbcacheError, ConnectionError):
    """A write was sent to Redis but no answer came (timeout, connection lost): it may or may not have been
    applied. ``upsert`` and ``delete`` are idempotent, so the same call can simply be repeated; for
    ``create_version`` without a name, list the versions first."""


class OutOfMemory(EmbcacheError):
    """Redis refused the write because it is at its ``maxmemory`` limit (policy ``noeviction``); nothing was
    written. Free memory (drop versions or spaces) or raise the limit."""


class RedisRefused(EmbcacheError):
    """Redis answered a command with an error embcache has no more specific type for, such as ``WRONGTYPE`` on a
    key that another client wrote with another type. Nothing was written by the refused command."""


class SnapshotCorrupt(EmbcacheError):
    """A snapshot failed verification; it is not used."""


class CorruptRecord(EmbcacheError):
    """A record read back from Redis is not one embcache could have written (a principal with raw access may
    write its own keys): a space record whose name is not its key or whose parameters are out of bounds, a
    malformed version record, a sealed partition that no longer matches the digest taken when it was sealed.
    Nothing is built or served from it."""


class BuildTimeout(EmbcacheError, TimeoutError):
    """Snapshots did not catch up within the timeout (are workers running?)."""


class ServerError(EmbcacheError):
    """The embedded redis-server is missing or failed to start."""


class Conflict(EmbcacheError):
    """A concurrent writer won a race (a version number taken meanwhile); the operation retries."""


class PublishConflict(Conflict):
    """Another build published first (or the new chunks expired): this build's result is dropped."""


class UntrustedHome(ServerError):
    """``EMBCACHE_HOME`` (or a file in it) could be written or replaced by another local user: not used."""


class OpenDefaultUserWarning(UserWarning):
    """The server's ``default`` user has no password: anyone who can connect is the operator, grants or not."""
