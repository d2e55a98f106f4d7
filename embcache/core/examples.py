"""Recommendation by examples: how liked (positive) and disliked (negative) examples become one ranking. Pure numpy.

Two strategies, as in Qdrant's recommend API (see :meth:`embcache.Version.recommend` for the public contract):

``average``
    One query vector ``q = mean(P) + (mean(P) - mean(N))`` (``q = mean(P)`` without negatives), searched like any
    query. For ``cosine`` every example is first scaled to unit length, so each weighs the same, and ``q`` is
    normalised by the search.

``best_score``
    Every candidate ``c`` is scored against every example with the space's similarity ``s`` (:func:`similarity`):
    ``pos(c) = max_p s(c, p)``, ``neg(c) = max_n s(c, n)`` (``-inf`` without negatives). A candidate nearer to some
    positive than to every negative (``pos(c) > neg(c)``) scores ``sigma(pos(c))`` in ``(0, 1)``; any other scores
    ``-sigma(neg(c))`` in ``(-1, 0)``, where ``sigma(x) = (1 + x / (1 + |x|)) / 2`` is increasing. So every accepted
    candidate ranks above every rejected one, accepted ones by their best positive, rejected ones by how far they
    are from their nearest negative.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .errors import InvalidInput
from .search import pairwise_distances

__all__ = ["Strategy", "STRATEGIES", "MAX_EXAMPLES", "similarity", "average_query", "best_scores", "sigma",
           "score_to_distance"]

Strategy = Literal["average", "best_score"]
STRATEGIES: tuple[str, ...] = ("average", "best_score")
MAX_EXAMPLES = 1000  # positives + negatives of one call: each is one row of a (candidates x examples) matrix


def similarity(queries: np.ndarray, items: np.ndarray, metric: str) -> np.ndarray:
    """The space's similarity, bigger is nearer, ``(len(queries), len(items))`` float64: ``cos`` for cosine (the
    rows are unit vectors), the inner product for ``ip``, ``-|q - x|^2`` for ``l2``. It is what
    :attr:`embcache.QueryResult.scores` reports for a query."""
    d = pairwise_distances(queries, items, metric, np.float64)
    return -d if metric == "l2" else 1.0 - d


def average_query(positive: np.ndarray, negative: np.ndarray | None) -> np.ndarray:
    """The ``average`` strategy's query vector ``(1, dim)`` float32: ``2 mean(P) - mean(N)``, or ``mean(P)``.
    :class:`~embcache.errors.InvalidInput` when it is the zero vector (the examples cancel out)."""
    mean_p = positive.astype(np.float64).mean(axis=0)
    q = mean_p if negative is None or not len(negative) else 2.0 * mean_p - negative.astype(np.float64).mean(axis=0)
    if not np.any(q):
        raise InvalidInput("the examples cancel out: their average is the zero vector, which points nowhere")
    out: np.ndarray = q.astype(np.float32)[None, :]
    return out


def sigma(x: np.ndarray) -> np.ndarray:
    """``(1 + x / (1 + |x|)) / 2``: an increasing map of the reals onto ``(0, 1)`` (Qdrant's scaled fast sigmoid)."""
    out: np.ndarray = 0.5 * (1.0 + x / (1.0 + np.abs(x)))
    return out


def best_scores(candidates: np.ndarray, positive: np.ndarray, negative: np.ndarray | None,
                metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``best_score`` of each candidate row (float64, in ``(-1, 1)``) and ``pos(c)``, its best positive
    similarity (see the module docstring)."""
    pos = similarity(candidates, positive, metric).max(axis=1)
    if negative is None or not len(negative):
        return sigma(pos), pos
    neg = similarity(candidates, negative, metric).max(axis=1)
    return np.where(pos > neg, sigma(pos), -sigma(neg)), pos


def score_to_distance(scores: np.ndarray, metric: str) -> np.ndarray:
    """Scores as a :class:`~embcache.QueryResult`'s ``distances`` (float32), so that its ``scores`` gives them
    back: ``1 - score`` for ``cosine`` and ``ip``, ``-score`` for ``l2``."""
    return (-scores if metric == "l2" else 1.0 - scores).astype(np.float32)
