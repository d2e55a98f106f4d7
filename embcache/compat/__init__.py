"""Compatibility facades for users of other embedding stores, built on embcache's public API only.

- :mod:`embcache.compat.embeddinghub`: Featureform's Embeddinghub client (``connect``, ``create_space``,
  ``set``/``get``/``multiset``/``multiget``/``delete``, ``nearest_neighbors``).
"""

from __future__ import annotations

from . import embeddinghub

__all__ = ["embeddinghub"]
