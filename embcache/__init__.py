"""embcache: an embedding hub on plain Redis.

Vectors and metadata live in Redis, keyed by space, version and partition; RQ workers build hnswlib indices per
partition and snapshot them back into Redis; this client loads the snapshots and answers nearest-neighbour
queries in-process. Start with :func:`connect`.
"""

import sys as _sys

from .client.hub import GetResult, Hub, QueryResult, Space, Version, connect
from .core.errors import (
    AlreadyExists,
    BuildTimeout,
    DimensionMismatch,
    EmbcacheError,
    InvalidInput,
    InvalidName,
    NotFound,
    PermissionDenied,
    ServerError,
    SnapshotCorrupt,
    Unavailable,
    VersionSealed,
)
from .core import errors as _errors
from .core import filters as _filters
from .redis import acl as _acl
from .redis import builds as _builds
from .redis import metrics as _metrics
from .redis import plan as _plan
from .redis import server as _server
from .redis import store as _store

__version__ = "0.1.0"

# Module paths documented before the floors (docs/api.md, docs/metrics.md): ``import embcache.errors`` and the
# others keep working and give the very same module objects (as ``os.path`` does), without a second file.
for _name, _module in {"errors": _errors, "filters": _filters, "metrics": _metrics, "acl": _acl,
                       "builds": _builds, "server": _server, "plan": _plan, "store": _store}.items():
    _sys.modules.setdefault(f"{__name__}.{_name}", _module)
del _name, _module

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
    "SnapshotCorrupt",
    "BuildTimeout",
    "ServerError",
    "__version__",
]
