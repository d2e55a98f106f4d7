"""MovieLens ratings to item (and user) embeddings, with numpy only and no Redis.

The method is PureSVD (Cremonesi, Koren & Turrin, RecSys 2010), which is simple and strong for top-N lists:
each rating minus its user's damped mean rating goes in a user x movie matrix (unrated cells are 0), whose rank-``k``
truncated SVD ``U S V^T`` is computed exactly (from the eigendecomposition of the smaller Gram matrix, so the
result is deterministic). Movies get ``V sqrt(S)`` and users ``U sqrt(S)``, so

- the cosine similarity of two movie vectors is "similar movies" (people who rate one above their average rate the
  other so too), and
- the inner product ``user . movie`` is the predicted rating minus that user's mean: with the ``ip`` metric, a
  query by a user vector returns that user's recommendations in order (filter out what they have already seen).

The user x movie matrix is held dense (float32), which suits ml-latest-small (610 x 2,269 after the default
filter: about 11 MB in float64, about 0.2 s). Larger MovieLens sets need a sparse method; :func:`item_embeddings`
refuses matrices over ``max_cells`` cells rather than exhausting memory.

Example::

    from embcache.movielens import load_ratings, item_embeddings

    ratings = load_ratings("data/movielens/ml-latest-small")
    f = item_embeddings(ratings, rank=32)          # or: movie_ids, item_vectors, user_ids, user_vectors = ...
    toy_story = list(f.movie_ids).index(1)
    v = f.item_vectors / np.linalg.norm(f.item_vectors, axis=1, keepdims=True)
    nearest = np.argsort(-(v @ v[toy_story]))[1:11]
    print([ratings.titles[int(m)] for m in f.movie_ids[nearest]])   # Toy Story 2, Aladdin, Lion King, ...

    space = hub.create_space("movies", dim=32, metric="cosine")
    space.create_version().upsert([str(m) for m in f.movie_ids], f.item_vectors,
                                  metadatas=[ratings.movie_metadata(int(m)) for m in f.movie_ids])

The MovieLens data is not embcache's: its ``README.txt`` is its licence (research and education use,
redistribution only under the same terms) and must travel with any copy.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["Ratings", "Factors", "load_ratings", "item_embeddings"]

_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass(frozen=True)
class Ratings:
    """One MovieLens rating set: parallel per-rating arrays plus the movie catalogue of ``movies.csv``."""

    user_ids: np.ndarray  # int64 (n_ratings,)
    movie_ids: np.ndarray  # int64 (n_ratings,)
    ratings: np.ndarray  # float32 (n_ratings,), 0.5 .. 5.0
    timestamps: np.ndarray  # int64 (n_ratings,), Unix seconds
    titles: dict[int, str] = field(repr=False)  # movieId -> "Toy Story (1995)"
    genres: dict[int, tuple[str, ...]] = field(repr=False)  # movieId -> ("Adventure", "Animation", ...)

    def __len__(self) -> int:
        return int(self.ratings.shape[0])

    @property
    def n_users(self) -> int:
        return int(np.unique(self.user_ids).size)

    @property
    def n_movies(self) -> int:
        """Number of distinct rated movies (the catalogue may list a few more)."""
        return int(np.unique(self.movie_ids).size)

    def movie_metadata(self, movie_id: int) -> dict[str, object]:
        """JSON-ready metadata of a movie: ``title``, ``genres`` (list) and ``year`` (int, or None)."""
        title = self.titles.get(movie_id, "")
        match = _YEAR.search(title)
        genres = [g for g in self.genres.get(movie_id, ()) if g != "(no genres listed)"]
        return {"title": title, "genres": genres, "year": int(match.group(1)) if match else None}


class Factors(NamedTuple):
    """What :func:`item_embeddings` returns; unpacks as ``movie_ids, item_vectors, user_ids, user_vectors``."""

    movie_ids: np.ndarray  # int64 (n_items,), ascending
    item_vectors: np.ndarray  # float32 (n_items, rank)
    user_ids: np.ndarray  # int64 (n_users,), ascending
    user_vectors: np.ndarray  # float32 (n_users, rank)


def load_ratings(path: str | os.PathLike[str]) -> Ratings:
    """Read ``ratings.csv`` and ``movies.csv`` of a MovieLens directory (e.g. ``ml-latest-small``).

    ``path`` is the directory, or any file in it.
    """
    directory = Path(path)
    if directory.is_file():
        directory = directory.parent
    users: list[int] = []
    movies: list[int] = []
    values: list[float] = []
    stamps: list[int] = []
    with open(directory / "ratings.csv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header[:3] != ["userId", "movieId", "rating"]:
            raise ValueError(f"{directory / 'ratings.csv'}: unexpected header {header}")
        for row in reader:
            users.append(int(row[0]))
            movies.append(int(row[1]))
            values.append(float(row[2]))
            stamps.append(int(row[3]) if len(row) > 3 and row[3] else 0)
    titles: dict[int, str] = {}
    genres: dict[int, tuple[str, ...]] = {}
    with open(directory / "movies.csv", newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            movie_id = int(rec["movieId"])
            titles[movie_id] = rec["title"]
            genres[movie_id] = tuple(g for g in rec["genres"].split("|") if g)
    return Ratings(
        user_ids=np.asarray(users, dtype=np.int64),
        movie_ids=np.asarray(movies, dtype=np.int64),
        ratings=np.asarray(values, dtype=np.float32),
        timestamps=np.asarray(stamps, dtype=np.int64),
        titles=titles,
        genres=genres,
    )


def item_embeddings(
    ratings: Ratings,
    rank: int = 32,
    reg: float = 5.0,
    seed: int = 0,
    *,
    min_ratings: int = 10,
    max_cells: int = 250_000_000,
) -> Factors:
    """Movie and user embeddings of ``rank`` dimensions by PureSVD of the user-centred rating matrix.

    - ``min_ratings``: keep only movies with at least this many ratings (rarer ones get noisy vectors); users
      left with no rating are dropped.
    - ``reg``: damping of each user's mean towards the global mean (``(sum + reg * global) / (count + reg)``),
      so users with few ratings are not centred on a noisy mean.
    - ``seed``: accepted so callers can pin one, but the exact SVD used here has no randomness: the same
      ratings always give the same vectors, whatever the seed.

    Returns :class:`Factors`; ``item_vectors`` and ``user_vectors`` are float32.
    """
    if rank < 1:
        raise ValueError("rank must be at least 1")
    if len(ratings) == 0:
        raise ValueError("no ratings")
    movie_ids, counts = np.unique(ratings.movie_ids, return_counts=True)
    keep = np.isin(ratings.movie_ids, movie_ids[counts >= min_ratings])
    users, movies = ratings.user_ids[keep], ratings.movie_ids[keep]
    values = ratings.ratings[keep].astype(np.float64)
    if values.size == 0:
        raise ValueError(f"no movie has at least min_ratings={min_ratings} ratings")
    user_ids, ui = np.unique(users, return_inverse=True)
    movie_ids, mi = np.unique(movies, return_inverse=True)
    n_users, n_items = user_ids.size, movie_ids.size
    if n_users * n_items > max_cells:
        raise ValueError(
            f"{n_users} x {n_items} rating matrix is over max_cells={max_cells}: raise min_ratings "
            "or use a sparse factorisation for this data set"
        )
    if rank > min(n_users, n_items):
        raise ValueError(f"rank {rank} is more than min(n_users, n_items) = {min(n_users, n_items)}")

    global_mean = values.mean()
    user_mean = (np.bincount(ui, values, n_users) + reg * global_mean) / (np.bincount(ui, minlength=n_users) + reg)
    matrix = np.zeros((n_users, n_items), dtype=np.float64)
    matrix[ui, mi] = values - user_mean[ui]  # a user rates a movie once in MovieLens; a repeat would overwrite

    u, s, vt = _truncated_svd(matrix, rank)
    root = np.sqrt(s)
    return Factors(
        movie_ids=movie_ids.astype(np.int64),
        item_vectors=np.ascontiguousarray((vt.T * root).astype(np.float32)),
        user_ids=user_ids.astype(np.int64),
        user_vectors=np.ascontiguousarray((u * root).astype(np.float32)),
    )


def _truncated_svd(a: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``rank`` ``u, s, vt`` of ``a`` from ``eigh`` of its smaller Gram matrix, with deterministic signs."""
    transpose = a.shape[0] > a.shape[1]
    m = a.T if transpose else a  # m is (small, large)
    eigvals, eigvecs = np.linalg.eigh(m @ m.T)  # ascending
    order = np.argsort(eigvals)[::-1][:rank]
    s = np.sqrt(np.clip(eigvals[order], 0.0, None))
    left = eigvecs[:, order]
    right = (m.T @ left) / np.where(s > 0, s, 1.0)  # (large, rank)
    u, vt = (right, left.T) if transpose else (left, right.T)
    # The sign of each singular pair is arbitrary: make the largest |entry| of each right vector positive.
    signs = np.sign(vt[np.arange(rank), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1.0
    return u * signs, s, vt * signs[:, None]
