"""embcache: an embedding hub on plain Redis.

Vectors and metadata live in Redis, keyed by space, version and partition; RQ workers build hnswlib indices per
partition and snapshot them back into Redis; this client loads the snapshots and answers nearest-neighbour
queries in-process. Start with :func:`connect`.
"""

from .client import GetResult, Hub, QueryResult, Space, Version, connect
from .errors import (
    AlreadyExists,
    BuildTimeout,
    DimensionMismatch,
    EmbcacheError,
    Indeterminate,
    InvalidInput,
    InvalidName,
    NotFound,
    OutOfMemory,
    PermissionDenied,
    ServerError,
    SnapshotCorrupt,
    Unavailable,
    VersionSealed,
)

__version__ = "0.1.0"

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
    "SnapshotCorrupt",
    "BuildTimeout",
    "ServerError",
    "__version__",
]
