"""Mongo-style metadata filters (``where``): validated once, compiled to a predicate. Pure, no I/O.

Grammar::

    where    := {field: value} | {field: {op: value, ...}} | {"$and": [where, ...]} | {"$or": [where, ...]}
    op       := $eq $ne $in $nin $gt $gte $lt $lte
    value    := str | int | float | bool | None          ($in/$nin take a non-empty list of them)

Several keys in one object are combined with AND. Semantics follow MongoDB where it matters to users:
a field that holds a list matches ``$eq``/``$in`` when any element does; a missing field matches only
``$ne``/``$nin``; comparisons between different types (a string and a number) are false, not errors;
``True`` is not equal to ``1``.

Bounds, each refused with :class:`InvalidInput`: a filter nests at most ``MAX_DEPTH`` (32) levels of
``$and``/``$or``, a ``$in``/``$nin`` list holds at most ``MAX_IN_VALUES`` (1,000) values, and a filter has at
most ``MAX_CLAUSES`` (10,000) conditions in all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .errors import InvalidInput

__all__ = ["compile_where", "Predicate", "MAX_DEPTH", "MAX_IN_VALUES", "MAX_CLAUSES"]

MAX_DEPTH = 32
MAX_IN_VALUES = 1000
MAX_CLAUSES = 10_000

Predicate = Callable[[dict[str, Any] | None], bool]
_MISSING = object()
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b, "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b,
}
_OPS = {"$eq", "$ne", "$in", "$nin", *_COMPARE}


def compile_where(where: object) -> Predicate | None:
    """Validate ``where`` and return a predicate over a metadata dict (None for no filter).

    >>> match = compile_where({"genre": {"$in": ["drama", "comedy"]}, "year": {"$gte": 1990}})
    >>> match({"genre": "drama", "year": 1994})
    True
    """
    if where is None:
        return None
    if not isinstance(where, dict):
        raise InvalidInput(f"where must be a dict, got {type(where).__name__}")
    if not where:
        return None
    return _compile(where, "where", 0, [0])


def _compile(where: object, path: str, depth: int, clauses: list[int]) -> Predicate:
    if not isinstance(where, dict) or not where:
        raise InvalidInput(f"{path} must be a non-empty dict")
    if depth > MAX_DEPTH:  # a deeper filter would exhaust Python's stack when compiled or evaluated
        raise InvalidInput(f"where nests more than {MAX_DEPTH} levels of $and/$or")
    clauses[0] += len(where)
    if clauses[0] > MAX_CLAUSES:
        raise InvalidInput(f"where has more than {MAX_CLAUSES} conditions")
    parts: list[Predicate] = []
    for key, value in where.items():
        if not isinstance(key, str):
            raise InvalidInput(f"{path}: keys must be strings, got {key!r}")
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InvalidInput(f"{path}.{key} must be a non-empty list of filters")
            subs = [_compile(v, f"{path}.{key}[{i}]", depth + 1, clauses) for i, v in enumerate(value)]
            parts.append(_all(subs) if key == "$and" else _any(subs))
        elif key.startswith("$"):
            raise InvalidInput(f"{path}: unknown operator {key!r} at the top level (use $and/$or, or a field name)")
        elif isinstance(value, dict):
            if not value:
                raise InvalidInput(f"{path}.{key} has an empty operator object")
            clauses[0] += len(value)
            if clauses[0] > MAX_CLAUSES:
                raise InvalidInput(f"where has more than {MAX_CLAUSES} conditions")
            for op, operand in value.items():
                parts.append(_field(key, op, operand, f"{path}.{key}"))
        elif isinstance(value, (list, tuple)):  # a common slip: {"genre": ["a", "b"]} for "genre is a or b"
            raise InvalidInput(f"{path}.{key}: a list is not a value to compare with; for 'any of these' write "
                               f"{{{key!r}: {{'$in': [...]}}}}")
        else:
            parts.append(_field(key, "$eq", value, f"{path}.{key}"))
    return parts[0] if len(parts) == 1 else _all(parts)


def _check_scalar(value: object, path: str) -> None:
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise InvalidInput(f"{path}: operand must be a str, number, bool or None, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{path}: operand must be finite")


def _equal(a: object, b: object) -> bool:
    # bool is an int subclass in Python, but a stored true must not match 1
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _field(field: str, op: object, operand: object, path: str) -> Predicate:
    if op not in _OPS:
        raise InvalidInput(f"{path}: unknown operator {op!r}; use one of {', '.join(sorted(_OPS))}")
    if op in ("$in", "$nin"):
        if not isinstance(operand, list) or not operand:
            raise InvalidInput(f"{path}.{op} needs a non-empty list")
        if len(operand) > MAX_IN_VALUES:
            raise InvalidInput(f"{path}.{op} has {len(operand)} values; the limit is {MAX_IN_VALUES}")
        for i, v in enumerate(operand):
            _check_scalar(v, f"{path}.{op}[{i}]")
        options = list(operand)

        def is_in(value: object) -> bool:
            values = value if isinstance(value, list) else [value]
            return any(_equal(v, o) for v in values for o in options)

        if op == "$in":
            return lambda m: is_in(_get(m, field)) if _get(m, field) is not _MISSING else False
        return lambda m: _get(m, field) is _MISSING or not is_in(_get(m, field))
    _check_scalar(operand, f"{path}.{op}")
    if op == "$eq":
        return lambda m: _contains_or_equals(_get(m, field), operand)
    if op == "$ne":
        return lambda m: not _contains_or_equals(_get(m, field), operand)
    if operand is None or isinstance(operand, bool):
        raise InvalidInput(f"{path}.{op} needs a number or a string")
    compare = _COMPARE[op]
    numeric = isinstance(operand, (int, float))

    def ordered(m: dict[str, Any] | None) -> bool:
        value = _get(m, field)
        if value is _MISSING or value is None or isinstance(value, bool):
            return False
        if numeric != isinstance(value, (int, float)) or (not numeric and not isinstance(value, str)):
            return False
        return bool(compare(value, operand))

    return ordered


def _get(meta: dict[str, Any] | None, field: str) -> Any:
    if not meta:
        return _MISSING
    return meta.get(field, _MISSING)


def _contains_or_equals(value: object, operand: object) -> bool:
    if value is _MISSING:
        return False
    if isinstance(value, list):
        return any(_equal(v, operand) for v in value)
    return _equal(value, operand)


def _all(preds: list[Predicate]) -> Predicate:
    return lambda m: all(p(m) for p in preds)


def _any(preds: list[Predicate]) -> Predicate:
    return lambda m: any(p(m) for p in preds)
