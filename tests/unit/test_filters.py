"""Unit tests of embcache.filters: Mongo-style ``where`` filters compiled to predicates. No Redis.

Expected answers are written out by hand over a small fixed corpus, not derived from the module.
"""

from __future__ import annotations

from typing import Any

import pytest

from embcache.core.errors import InvalidInput
from embcache.core.filters import compile_where

CORPUS: dict[str, dict[str, Any] | None] = {
    "a": {"genre": "drama", "year": 1994, "rating": 8.5, "tags": ["classic", "prison"], "free": True},
    "b": {"genre": "comedy", "year": 2004, "rating": 6.0, "tags": ["funny"], "free": False},
    "c": {"genre": "drama", "year": 2010, "rating": 7.25, "tags": [], "free": 1},
    "d": {"genre": "horror", "year": "1999", "rating": None, "tags": "scary"},
    "e": {"year": 1980},
    "f": {},
    "g": None,
    "h": {"genre": ["drama", "comedy"], "year": 2001.0, "rating": 9, "free": 0},
}


def matching(where: object) -> set[str]:
    pred = compile_where(where)
    if pred is None:
        return set(CORPUS)
    return {k for k, m in CORPUS.items() if pred(m)}


# --- no filter ---------------------------------------------------------------------------------------------


def test_none_and_empty_mean_no_filter() -> None:
    assert compile_where(None) is None
    assert compile_where({}) is None


def test_docstring_example() -> None:
    match = compile_where({"genre": {"$in": ["drama", "comedy"]}, "year": {"$gte": 1990}})
    assert match is not None
    assert match({"genre": "drama", "year": 1994}) is True
    assert match({"genre": "drama", "year": 1989}) is False
    assert match({"genre": "horror", "year": 1994}) is False


# --- every operator ----------------------------------------------------------------------------------------


def test_implicit_eq() -> None:
    assert matching({"genre": "drama"}) == {"a", "c", "h"}  # h: list field, any element
    assert matching({"year": 1994}) == {"a"}


def test_eq() -> None:
    assert matching({"genre": {"$eq": "comedy"}}) == {"b", "h"}
    assert matching({"year": {"$eq": 2001}}) == {"h"}  # int operand equals a stored float
    assert matching({"rating": {"$eq": 7.25}}) == {"c"}
    assert matching({"rating": {"$eq": None}}) == {"d"}  # explicit null only, not missing
    assert matching({"tags": {"$eq": "prison"}}) == {"a"}


def test_ne() -> None:
    # missing fields match $ne; a list field matches when no element equals
    assert matching({"genre": {"$ne": "drama"}}) == {"b", "d", "e", "f", "g"}
    assert matching({"rating": {"$ne": None}}) == {"a", "b", "c", "e", "f", "g", "h"}
    assert matching({"tags": {"$ne": "funny"}}) == set(CORPUS) - {"b"}


def test_in() -> None:
    assert matching({"genre": {"$in": ["comedy", "horror"]}}) == {"b", "d", "h"}
    assert matching({"tags": {"$in": ["prison", "funny"]}}) == {"a", "b"}
    assert matching({"year": {"$in": [1994, 1980, "1999"]}}) == {"a", "d", "e"}
    assert matching({"rating": {"$in": [None]}}) == {"d"}


def test_nin() -> None:
    # missing fields match $nin
    assert matching({"genre": {"$nin": ["drama", "comedy"]}}) == {"d", "e", "f", "g"}
    assert matching({"tags": {"$nin": ["classic"]}}) == set(CORPUS) - {"a"}


def test_gt_gte_lt_lte_numbers() -> None:
    assert matching({"year": {"$gt": 2001}}) == {"b", "c"}
    assert matching({"year": {"$gte": 2001}}) == {"b", "c", "h"}
    assert matching({"year": {"$lt": 1994}}) == {"e"}
    assert matching({"year": {"$lte": 1994}}) == {"a", "e"}
    assert matching({"rating": {"$gt": 7.25}}) == {"a", "h"}
    assert matching({"rating": {"$gte": 7.25}}) == {"a", "c", "h"}


def test_range_on_one_field() -> None:
    assert matching({"year": {"$gte": 1990, "$lt": 2005}}) == {"a", "b", "h"}
    assert matching({"year": {"$gt": 2005, "$lt": 2000}}) == set()


def test_comparisons_on_strings_are_lexicographic() -> None:
    assert matching({"genre": {"$gt": "drama"}}) == {"d"}  # "horror" > "drama"; "comedy" < "drama"
    assert matching({"genre": {"$lte": "drama"}}) == {"a", "b", "c"}
    assert matching({"year": {"$gte": "1990"}}) == {"d"}  # only the string-valued year compares to a string


# --- type rules --------------------------------------------------------------------------------------------


def test_type_mismatch_is_false_not_error() -> None:
    assert matching({"year": {"$gt": "1000"}}) == {"d"}
    assert matching({"genre": {"$gt": 5}}) == set()
    assert matching({"year": "1994"}) == set()
    assert matching({"year": 1999}) == set()  # d holds "1999", a string
    assert matching({"tags": {"$lt": 100}}) == set()  # lists are not ordered against numbers
    assert matching({"rating": {"$lt": 100}}) == {"a", "b", "c", "h"}  # None is not ordered


def test_bool_is_not_one() -> None:
    assert matching({"free": True}) == {"a"}  # c holds 1, not true
    assert matching({"free": 1}) == {"c"}
    assert matching({"free": False}) == {"b"}
    assert matching({"free": 0}) == {"h"}
    assert matching({"free": {"$in": [True]}}) == {"a"}
    assert matching({"free": {"$in": [1, 0]}}) == {"c", "h"}
    assert matching({"free": {"$ne": True}}) == set(CORPUS) - {"a"}
    assert matching({"free": {"$nin": [1]}}) == set(CORPUS) - {"c"}


def test_bools_are_not_ordered() -> None:
    assert matching({"free": {"$gte": 0}}) == {"c", "h"}  # the stored bools never compare
    with pytest.raises(InvalidInput, match="number or a string"):
        compile_where({"free": {"$gt": False}})


def test_float_and_int_equal() -> None:
    pred = compile_where({"x": 1})
    assert pred is not None
    assert pred({"x": 1.0}) is True
    assert pred({"x": True}) is False


# --- missing fields ----------------------------------------------------------------------------------------


def test_missing_fields_match_only_ne_and_nin() -> None:
    for where in ({"nope": "x"}, {"nope": {"$in": ["x"]}}, {"nope": {"$gt": 0}}, {"nope": {"$lte": "z"}},
                  {"nope": None}):
        assert matching(where) == set(), where
    assert matching({"nope": {"$ne": "x"}}) == set(CORPUS)
    assert matching({"nope": {"$nin": ["x"]}}) == set(CORPUS)


def test_predicate_accepts_none_and_empty_metadata() -> None:
    pred = compile_where({"a": {"$ne": 1}})
    assert pred is not None
    assert pred(None) is True and pred({}) is True
    pred = compile_where({"a": 1})
    assert pred is not None
    assert pred(None) is False and pred({}) is False


# --- combinations ------------------------------------------------------------------------------------------


def test_implicit_and_of_fields() -> None:
    assert matching({"genre": "drama", "year": {"$gt": 2000}}) == {"c", "h"}
    assert matching({"genre": "drama", "free": True}) == {"a"}


def test_and() -> None:
    assert matching({"$and": [{"genre": "drama"}, {"year": {"$lt": 2000}}]}) == {"a"}
    assert matching({"$and": [{"genre": "drama"}]}) == {"a", "c", "h"}


def test_or() -> None:
    assert matching({"$or": [{"genre": "comedy"}, {"year": {"$lt": 1990}}]}) == {"b", "e", "h"}
    assert matching({"$or": [{"nope": 1}]}) == set()


def test_nested_and_or() -> None:
    where = {
        "$or": [
            {"$and": [{"genre": "drama"}, {"rating": {"$gte": 8}}]},
            {"genre": "horror"},
        ]
    }
    assert matching(where) == {"a", "h", "d"}
    where2 = {"$and": [{"$or": [{"genre": "comedy"}, {"genre": "horror"}]},
                       {"$or": [{"free": False}, {"rating": None}]}]}
    assert matching(where2) == {"b", "d"}


def test_or_combined_with_field_at_the_same_level() -> None:
    # several keys in one object are ANDed, operators included
    assert matching({"$or": [{"genre": "drama"}, {"genre": "comedy"}], "year": {"$lt": 2002}}) == {"a", "h"}


def test_or_short_circuit_does_not_hide_errors_at_compile_time() -> None:
    with pytest.raises(InvalidInput):
        compile_where({"$or": [{"a": 1}, {"b": {"$bogus": 1}}]})


# --- malformed filters -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "match"),
    [
        ("genre", "where must be a dict"),
        (["genre"], "where must be a dict"),
        ({"genre": {"$regex": "d.*"}}, r"unknown operator '\$regex'"),
        ({"genre": {"eq": "drama"}}, "unknown operator 'eq'"),
        ({"$not": {"genre": "drama"}}, r"unknown operator '\$not'"),
        ({"$nor": [{"genre": "drama"}]}, r"unknown operator '\$nor'"),
        ({"$and": []}, r"\$and must be a non-empty list"),
        ({"$or": {"genre": "drama"}}, r"\$or must be a non-empty list"),
        ({"$and": [{}]}, r"\$and\[0\] must be a non-empty dict"),
        ({"$and": ["genre"]}, r"\$and\[0\] must be a non-empty dict"),
        ({"$or": [{"a": 1}, {"b": {"$in": []}}]}, r"\$or\[1\]\.b\.\$in needs a non-empty list"),
        ({"genre": {}}, "empty operator object"),
        ({"genre": {"$in": "drama"}}, r"\$in needs a non-empty list"),
        ({"genre": {"$nin": []}}, r"\$nin needs a non-empty list"),
        ({"genre": {"$in": [["drama"]]}}, r"\$in\[0\]"),
        ({"genre": ["drama", "comedy"]}, r"a list is not a value.*\$in"),
        ({"genre": {"$eq": {"x": 1}}}, "operand must be"),
        ({"year": {"$gt": None}}, "number or a string"),
        ({"year": {"$lt": True}}, "number or a string"),
        ({"year": {"$gt": [1]}}, "operand must be"),
        ({"rating": {"$gt": float("nan")}}, "finite"),
        ({"rating": float("inf")}, "finite"),
        ({"rating": {"$in": [1.0, float("-inf")]}}, "finite"),
        ({1: "x"}, "keys must be strings"),
        ({"a": {"$eq": b"x"}}, "operand must be"),
    ],
)
def test_malformed_filters(where: object, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        compile_where(where)


def test_malformed_filter_is_value_error() -> None:
    with pytest.raises(ValueError):
        compile_where({"a": {"$bogus": 1}})


def test_error_names_the_path() -> None:
    with pytest.raises(InvalidInput) as info:
        compile_where({"$and": [{"a": 1}, {"$or": [{"b": 2}, {"c": {"$gt": None}}]}]})
    text = str(info.value)
    assert "$and[1]" in text and "$or[1]" in text and ".c" in text


def test_a_list_as_a_value_suggests_in() -> None:
    """{"section": ["libs", "net"]} reads as "section is libs or net" to many users: the error says how to write
    that, rather than only that a list is not an operand."""
    for where in ({"section": ["libs", "net"]}, {"$and": [{"section": ("libs",)}]}):
        with pytest.raises(InvalidInput, match=r"\$in") as err:
            compile_where(where)
        assert "section" in str(err.value)
    assert compile_where({"section": {"$in": ["libs", "net"]}}) is not None
