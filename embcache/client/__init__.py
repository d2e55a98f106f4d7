"""The client facades: the sync hub (:mod:`embcache.client.hub`) and the cache of loaded partitions. The asyncio
twin is :mod:`embcache.aio`, the Embeddinghub facade :mod:`embcache.compat.embeddinghub`."""

from .hub import GetResult, Hub, QueryResult, Space, Version, connect

__all__ = ["connect", "Hub", "Space", "Version", "QueryResult", "GetResult"]
