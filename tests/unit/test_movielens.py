"""embcache.movielens on the shipped ml-latest-small copy (no Redis)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embcache.movielens import Factors, Ratings, item_embeddings, load_ratings

ML_SMALL = Path(__file__).resolve().parents[2] / "embcache" / "data" / "movielens" / "ml-latest-small"

# Animated family films a viewer of Toy Story plausibly watches next (movieId: title in movies.csv).
FAMILY_ANIMATION = {
    3114: "Toy Story 2 (1999)",
    78499: "Toy Story 3 (2010)",
    4886: "Monsters, Inc. (2001)",
    6377: "Finding Nemo (2003)",
    8961: "Incredibles, The (2004)",
    4306: "Shrek (2001)",
    588: "Aladdin (1992)",
    364: "Lion King, The (1994)",
    2355: "Bug's Life, A (1998)",
    595: "Beauty and the Beast (1991)",
}


@pytest.fixture(scope="module")
def ratings() -> Ratings:
    return load_ratings(ML_SMALL)


@pytest.fixture(scope="module")
def factors(ratings: Ratings) -> Factors:
    return item_embeddings(ratings, rank=32)


def _neighbours(f: Factors, movie_id: int, k: int = 10) -> list[int]:
    v = f.item_vectors / np.linalg.norm(f.item_vectors, axis=1, keepdims=True)
    i = int(np.flatnonzero(f.movie_ids == movie_id)[0])
    sims = v @ v[i]
    sims[i] = -np.inf  # the movie itself
    return [int(m) for m in f.movie_ids[np.argsort(-sims, kind="stable")[:k]]]


def test_load_ratings(ratings: Ratings) -> None:
    assert len(ratings) == 100_836
    assert ratings.n_users == 610 and ratings.n_movies == 9_724
    assert ratings.ratings.dtype == np.float32 and ratings.user_ids.dtype == np.int64
    assert ratings.ratings.min() == 0.5 and ratings.ratings.max() == 5.0
    assert ratings.titles[1] == "Toy Story (1995)"
    assert ratings.genres[1] == ("Adventure", "Animation", "Children", "Comedy", "Fantasy")
    assert ratings.movie_metadata(1) == {
        "title": "Toy Story (1995)", "genres": ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
        "year": 1995,
    }
    # a title with a comma is quoted in the CSV; the csv module reads it whole
    assert ratings.titles[364] == "Lion King, The (1994)"


def test_shapes_and_filter(ratings: Ratings, factors: Factors) -> None:
    movie_ids, items, user_ids, users = factors  # unpacks as a tuple too
    _, counts = np.unique(ratings.movie_ids, return_counts=True)
    assert movie_ids.shape == (int((counts >= 10).sum()),) == (2269,)
    assert np.all(np.diff(movie_ids) > 0) and np.all(np.diff(user_ids) > 0)
    assert items.shape == (2269, 32) and items.dtype == np.float32 and items.flags.c_contiguous
    assert users.shape == (610, 32) and users.dtype == np.float32
    assert np.all(np.isfinite(items)) and np.all(np.linalg.norm(items, axis=1) > 0)
    assert item_embeddings(ratings, rank=8, min_ratings=50).movie_ids.size == int((counts >= 50).sum())


def test_deterministic(ratings: Ratings, factors: Factors) -> None:
    again = item_embeddings(ratings, rank=32, seed=0)
    other_seed = item_embeddings(ratings, rank=32, seed=1)  # the exact SVD has no randomness
    for f in (again, other_seed):
        np.testing.assert_array_equal(f.movie_ids, factors.movie_ids)
        np.testing.assert_array_equal(f.item_vectors, factors.item_vectors)
        np.testing.assert_array_equal(f.user_vectors, factors.user_vectors)


def test_user_vectors_predict_centred_ratings(ratings: Ratings, factors: Factors) -> None:
    # user . item approximates the rating minus the user's mean: correlated on the training ratings
    keep = np.isin(ratings.movie_ids, factors.movie_ids)
    ui = np.searchsorted(factors.user_ids, ratings.user_ids[keep])
    mi = np.searchsorted(factors.movie_ids, ratings.movie_ids[keep])
    pred = np.einsum("ij,ij->i", factors.user_vectors[ui], factors.item_vectors[mi])
    y = ratings.ratings[keep]
    centred = y - (np.bincount(ui, y) / np.bincount(ui))[ui]
    assert np.corrcoef(pred, centred)[0, 1] > 0.6


def test_toy_story_neighbours_are_family_animation(ratings: Ratings, factors: Factors) -> None:
    top = _neighbours(factors, 1, k=10)
    titles = [ratings.titles[m] for m in top]
    # At rank 32: Aladdin, Toy Story 2, Lion King, Babe, Billy Elliot, Toy Story 3, Incredibles, Back to the
    # Future, Hugo, Wallace & Gromit. A sequel and at least two more listed family animations must be there.
    assert any(t.startswith("Toy Story ") for t in titles), titles
    assert len(set(top) & set(FAMILY_ANIMATION)) >= 3, titles
    # Animation is 7% of the 2,269 movies; chance would put 0.7 in the top 10.
    assert sum("Animation" in ratings.genres[m] for m in top) >= 5, titles
    # and the relation is mutual: Toy Story is among Toy Story 2's nearest movies
    assert 1 in _neighbours(factors, 3114, k=10)


def test_unrelated_movies_are_far(factors: Factors) -> None:
    v = factors.item_vectors / np.linalg.norm(factors.item_vectors, axis=1, keepdims=True)
    at = {int(m): i for i, m in enumerate(factors.movie_ids)}
    toy, toy2, saw = at[1], at[3114], at[8957]  # Saw (2004)
    assert v[toy] @ v[toy2] > 0.4 > v[toy] @ v[saw]


def test_rejects_bad_arguments(ratings: Ratings) -> None:
    with pytest.raises(ValueError):
        item_embeddings(ratings, rank=0)
    with pytest.raises(ValueError, match="min_ratings"):
        item_embeddings(ratings, min_ratings=10_000)
    with pytest.raises(ValueError, match="max_cells"):
        item_embeddings(ratings, max_cells=1000)
