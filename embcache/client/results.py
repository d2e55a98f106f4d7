"""What queries and reads return: :class:`QueryResult`, :class:`GetResult` (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..core.errors import InvalidInput

__all__ = ["QueryResult", "GetResult", "Consistency", "CONSISTENCY_LEVELS"]

Consistency = Literal["eventual", "session", "strong"]
CONSISTENCY_LEVELS = ("eventual", "session", "strong")


@dataclass
class QueryResult:
    """Column-oriented answer of a query, one row per query embedding.

    ``ids[i]`` lists the ids nearest to query ``i``, nearest first. ``distances`` is a float32 array
    ``(n_queries, n_results)`` in the space's metric, smaller is nearer: for ``l2`` the *squared* Euclidean
    distance ``|q - x|^2``; for ``ip`` ``1 - <q, x>``; for ``cosine`` ``1 - cos(q, x)`` (0 for the same direction,
    2 for the opposite one). Where a query has fewer than ``n_results`` matches its row ends in ``inf``.
    :attr:`scores` is the same answer as a similarity, bigger is nearer. ``metadatas`` and ``embeddings`` are
    filled when ``include`` asks for them.

    >>> res = space.query(q, n_results=3)     # doctest: +SKIP
    >>> res.distances, res.scores             # cosine: scores are cosine similarities, 1 - distances
    """

    ids: list[list[str]]
    distances: np.ndarray
    metadatas: list[list[dict[str, Any] | None]] | None = None
    embeddings: list[np.ndarray] | None = None
    metric: str | None = None  # the space's: "l2", "ip" or "cosine"

    @property
    def scores(self) -> np.ndarray:
        """Similarities, bigger is nearer, in the shape of ``distances``: the cosine similarity ``cos(q, x)`` for
        ``cosine``, the inner product ``<q, x>`` for ``ip``, the negated squared distance ``-|q - x|^2`` for ``l2``;
        padding (``inf`` distances) becomes ``-inf``."""
        if self.metric not in ("l2", "ip", "cosine"):
            raise InvalidInput("this result does not know its metric, so it has no scores")
        return -self.distances if self.metric == "l2" else np.float32(1.0) - self.distances


@dataclass
class GetResult:
    """Column-oriented answer of :meth:`Version.get`: the ids found, in the order asked, and their data."""

    ids: list[str]
    embeddings: np.ndarray | None = None
    metadatas: list[dict[str, Any] | None] | None = None
    partitions: list[str] | None = None
