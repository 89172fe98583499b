"""The metadata filter language of searches, in its plain (JSON-like) form.

    {"lang": "en"}                                   equality (the original form: every key must be equal)
    {"lang": {"eq": "en"}}  {"lang": {"ne": "en"}}    equal / not equal
    {"tag": {"in": ["a", "b"]}}  {"tag": {"not_in": ["a"]}}
    {"price": {"gte": 10, "lt": 20}}                 ranges on numbers: gt, gte, lt, lte
    {"author": {"exists": true}}                     the key is present (false: absent)
    {"$and": [f, g]}  {"$or": [f, g]}  {"$not": f}    combinations; a dict of several keys is an $and

Values are strings, integers, finite numbers or booleans and match with their type: ``True`` does not
equal ``1``, ``"1"`` does not equal ``1``; ranges compare integers and floats numerically and never match
booleans or strings. ``ne`` and ``not_in`` also match items that lack the key (as Qdrant's ``must_not``).

An item's value may also be a list of such values (``"tags": ["a", "b"]``): ``eq``, ``in`` and ranges
hold when ANY element matches; ``ne`` / ``not_in`` are their negations, holding when NO element matches
(an empty list included); ``exists`` holds for any list, empty or not. Filter values themselves are
never lists. Mistakes are InvalidInputError naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

Scalar = str | int | float | bool
MetadataValue = Scalar | list[Scalar]  # what an item holds under a key
_OPERATORS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists")
RANGE_BOUNDS = ("gt", "gte", "lt", "lte")
MAX_DEPTH = 16
MAX_VALUES = 10_000


@dataclass(frozen=True)
class Eq:
    key: str
    value: Scalar


@dataclass(frozen=True)
class In:
    key: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Not:
    """Everything the inner condition does not match (ne, not_in)."""

    inner: Condition


@dataclass(frozen=True)
class Range:
    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return (
            (self.gt is None or value > self.gt)
            and (self.gte is None or value >= self.gte)
            and (self.lt is None or value < self.lt)
            and (self.lte is None or value <= self.lte)
        )


@dataclass(frozen=True)
class Exists:
    key: str
    present: bool = True


@dataclass(frozen=True)
class All:
    parts: tuple[Condition, ...]


@dataclass(frozen=True)
class Any_:
    parts: tuple[Condition, ...]


Condition = Union[Eq, In, Not, Range, Exists, All, Any_]  # noqa: UP007 - a recursive alias


def value_key(value: Scalar) -> tuple[str, Scalar]:
    """A value with its type, so True, 1 and "1" stay different."""
    return (type(value).__name__, value)


def elements(value: MetadataValue) -> list[Scalar]:
    """The values a filter looks at: a list's elements, or the one value."""
    return value if isinstance(value, list) else [value]


def _error(message: str, key: str | None) -> Exception:
    from embedsvc.errors import InvalidInputError

    return InvalidInputError(message if key is None else f"filter on {key!r}: {message}", field="filter")


def _value(value: Any, key: str) -> Scalar:
    if isinstance(value, bool | str | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, list | tuple):
        raise _error(
            "a filter value is one string, number or boolean, not a list: an item whose list holds the "
            'value matches {"eq": value}; use {"in": [...]} to match any of several values',
            key,
        )
    raise _error(f"{value!r} is not a string, integer, finite number or boolean", key)


def _number(value: Any, key: str, op: str) -> float:
    """A bound as given: integers stay exact (float() would round those beyond 2^53)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _error(f"{op} takes a finite number, got {value!r}", key)
    if isinstance(value, float) and not math.isfinite(value):
        raise _error(f"{op} takes a finite number, got {value!r}", key)
    return value


def _key_condition(key: str, spec: Any) -> Condition:
    if not isinstance(key, str) or not key:
        raise _error("metadata keys are non-empty strings", None)
    if not isinstance(spec, Mapping):
        return Eq(key, _value(spec, key))
    unknown = [op for op in spec if op not in _OPERATORS]
    if unknown or not spec:
        raise _error(f"unknown operator(s) {unknown or '(none)'}; use {', '.join(_OPERATORS)}", key)
    parts: list[Condition] = []
    for op, arg in spec.items():
        if op == "eq":
            parts.append(Eq(key, _value(arg, key)))
        elif op == "ne":
            parts.append(Not(Eq(key, _value(arg, key))))
        elif op in ("in", "not_in"):
            if not isinstance(arg, list | tuple) or len(arg) > MAX_VALUES:
                raise _error(f"{op} takes a list of at most {MAX_VALUES} values", key)
            inner = In(key, tuple(_value(v, key) for v in arg))
            parts.append(inner if op == "in" else Not(inner))
        elif op == "exists":
            if not isinstance(arg, bool):
                raise _error("exists takes true or false", key)
            parts.append(Exists(key, arg))
    bounds = {op: _number(spec[op], key, op) for op in RANGE_BOUNDS if op in spec}
    if bounds:
        parts.append(Range(key, **bounds))
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def parse_filter(spec: Any, depth: int = 0) -> Condition | None:
    """The condition a plain filter describes; None for no filter."""
    if spec is None or (isinstance(spec, Mapping) and not spec):
        return None
    if depth > MAX_DEPTH:
        raise _error(f"filters nest at most {MAX_DEPTH} levels", None)
    if not isinstance(spec, Mapping):
        raise _error("a filter is a JSON object", None)
    parts: list[Condition] = []
    for key, value in spec.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list | tuple) or not value:
                raise _error(f"{key} takes a non-empty list of filters", None)
            inner = [parse_filter(v, depth + 1) for v in value]
            if any(c is None for c in inner):
                raise _error(f"{key} holds an empty filter", None)
            conditions = tuple(c for c in inner if c is not None)
            parts.append(All(conditions) if key == "$and" else Any_(conditions))
        elif key == "$not":
            negated = parse_filter(value, depth + 1)
            if negated is None:
                raise _error("$not holds an empty filter", None)
            parts.append(Not(negated))
        elif isinstance(key, str) and key.startswith("$"):
            raise _error(f"unknown combinator {key!r}; use $and, $or or $not", None)
        else:
            parts.append(_key_condition(key, value))
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def matches(metadata: Mapping[str, MetadataValue], condition: Condition | None) -> bool:
    """Whether one item's metadata satisfies ``condition`` (the reference the indexes are tested against)."""
    if condition is None:
        return True
    if isinstance(condition, Eq):
        if condition.key not in metadata:
            return False
        return any(value_key(e) == value_key(condition.value) for e in elements(metadata[condition.key]))
    if isinstance(condition, In):
        if condition.key not in metadata:
            return False
        wanted = {value_key(v) for v in condition.values}
        return any(value_key(e) in wanted for e in elements(metadata[condition.key]))
    if isinstance(condition, Not):
        return not matches(metadata, condition.inner)
    if isinstance(condition, Range):
        return condition.key in metadata and any(
            condition.holds(e) for e in elements(metadata[condition.key])
        )
    if isinstance(condition, Exists):
        return (condition.key in metadata) == condition.present
    if isinstance(condition, All):
        return all(matches(metadata, c) for c in condition.parts)
    return any(matches(metadata, c) for c in condition.parts)


def both(first: Condition | None, second: Condition | None) -> Condition | None:
    """Two conditions that must both hold (either may be absent)."""
    if first is None or second is None:
        return first if second is None else second
    return All((first, second))
