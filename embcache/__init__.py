"""embcache: an embedding hub on plain Redis.

Vectors and metadata live in Redis, keyed by space, version and partition; RQ workers build hnswlib indices per
partition and snapshot them back into Redis; this client loads the snapshots and answers nearest-neighbour
queries in-process. Start with :func:`connect`.
"""

import sys as _sys

from .client.hub import GetResult, Hub, QueryResult, Space, Version, connect
from .core import errors, filters
from .core.errors import (
    AlreadyExists,
    BuildTimeout,
    CorruptRecord,
    DimensionMismatch,
    EmbcacheError,
    Indeterminate,
    InvalidInput,
    InvalidName,
    NotFound,
    OpenDefaultUserWarning,
    OutOfMemory,
    PermissionDenied,
    RedisRefused,
    ServerError,
    SnapshotCorrupt,
    Unavailable,
    UntrustedHome,
    VersionSealed,
)
from .redis import acl, builds, metrics, plan, server, store

__version__ = "0.1.0"

# Module paths documented before the floors (docs/api.md, docs/metrics.md, docs/operations.md):
# ``import embcache.errors`` and the others keep working and give the very same module objects (as ``os.path``
# does), without a second file that could drift.
for _module in (errors, filters, acl, builds, metrics, plan, server, store):
    _sys.modules.setdefault(f"{__name__}.{_module.__name__.rpartition('.')[2]}", _module)
del _module

__all__ = [
    "connect",
    "Hub",
    "Space",
    "Version",
    "QueryResult",
    "GetResult",
    "EmbcacheError",
    "InvalidInput",
    "DimensionMismatch",
    "InvalidName",
    "NotFound",
    "AlreadyExists",
    "VersionSealed",
    "PermissionDenied",
    "Unavailable",
    "Indeterminate",
    "OutOfMemory",
    "RedisRefused",
    "SnapshotCorrupt",
    "CorruptRecord",
    "BuildTimeout",
    "ServerError",
    "UntrustedHome",
    "OpenDefaultUserWarning",
    "__version__",
]
