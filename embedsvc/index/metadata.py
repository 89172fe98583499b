"""Inverted indexes over item metadata: a filter becomes a set of labels in time proportional to its
matches, not to the collection (a filtered search used to walk every item's metadata in Python: 60-78 ms
per query at 100 000 items).

Per key: value -> roaring bitmap of labels (values keyed with their type), the bitmap of labels that have
the key, and for numbers a sorted map number -> bitmap (1 and 1.0 share an entry: ranges ignore type),
so a range is a walk over the values in it. A list value puts its label under each of its elements, so
eq / in / ranges match any element and their negations (live minus matches) none.
Maintained on every write and rebuilt with the collection on recovery.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from embedsvc.index.filters import (
    All,
    Any_,
    Condition,
    Eq,
    Exists,
    In,
    MetadataValue,
    Not,
    Range,
    Scalar,
    elements,
    value_key,
)

if TYPE_CHECKING:
    from pyroaring import BitMap64
    from sortedcontainers import SortedDict


def _libraries() -> tuple[Any, Any]:
    try:
        from pyroaring import BitMap64
        from sortedcontainers import SortedDict
    except ImportError as exc:
        raise ImportError(
            "the vector index needs pyroaring and sortedcontainers: pip install 'embedsvc[index]'"
        ) from exc
    return BitMap64, SortedDict


class MetadataIndex:
    def __init__(self) -> None:
        bitmap, sorted_dict = _libraries()
        self._bitmap = bitmap
        self._values: dict[str, dict[tuple[str, Scalar], BitMap64]] = defaultdict(dict)
        self._present: dict[str, BitMap64] = defaultdict(bitmap)
        self._numbers: dict[str, SortedDict] = defaultdict(sorted_dict)
        self.live = bitmap()  # every live label

    def add_many(self, labels: list[int], metadatas: list[dict[str, MetadataValue]]) -> None:
        """Index a block of new labels: one bitmap update per distinct value rather than per item."""
        by_value: dict[tuple[str, tuple[str, Scalar]], list[int]] = defaultdict(list)
        numbers: dict[tuple[str, Scalar], list[int]] = defaultdict(list)
        present: dict[str, list[int]] = defaultdict(list)
        for label, metadata in zip(labels, metadatas, strict=True):
            for key, value in metadata.items():
                if isinstance(value, list):
                    present[key].append(label)  # an empty list has no element to say the key is there
                    for element in value:
                        by_value[key, value_key(element)].append(label)
                        if isinstance(element, int | float) and not isinstance(element, bool):
                            numbers[key, element].append(label)
                    continue
                by_value[key, value_key(value)].append(label)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    numbers[key, value].append(label)
        self.live.update(labels)
        for key, members in present.items():
            self._present[key].update(members)
        for (key, typed), members in by_value.items():
            self._values[key].setdefault(typed, self._bitmap()).update(members)
            self._present[key].update(members)
        for (key, number), members in numbers.items():
            self._numbers[key].setdefault(number, self._bitmap()).update(members)

    def remove(self, label: int, metadata: Mapping[str, MetadataValue]) -> None:
        self.live.discard(label)
        for key, value in metadata.items():
            self._present[key].discard(label)
            values = self._values[key]
            for element in elements(value):  # a list's repeated elements: found gone the second time
                bitmap = values.get(value_key(element))
                if bitmap is not None:
                    bitmap.discard(label)
                    if not bitmap:
                        del values[value_key(element)]
                if isinstance(element, int | float) and not isinstance(element, bool):
                    numbers = self._numbers[key]
                    number = numbers.get(element)
                    if number is not None:
                        number.discard(label)
                        if not number:
                            del numbers[element]

    def evaluate(self, condition: Condition) -> BitMap64:
        """The live labels ``condition`` matches."""
        if isinstance(condition, Eq):
            found = self._values.get(condition.key, {}).get(value_key(condition.value))
            return self._bitmap() if found is None else self._bitmap(found)  # a copy: callers change it
        if isinstance(condition, In):
            table = self._values.get(condition.key, {})
            hits = (table.get(value_key(v)) for v in condition.values)
            return self._bitmap.union(self._bitmap(), *(bitmap for bitmap in hits if bitmap is not None))
        if isinstance(condition, Not):
            return self.live - self.evaluate(condition.inner)
        if isinstance(condition, Exists):
            present = self._bitmap(self._present.get(condition.key, self._bitmap()))
            return present if condition.present else self.live - present
        if isinstance(condition, Range):
            return self._range(condition)
        if isinstance(condition, All):
            result = self.evaluate(condition.parts[0])
            for part in condition.parts[1:]:
                if not result:
                    break
                result &= self.evaluate(part)
            return result
        assert isinstance(condition, Any_)
        return self._bitmap.union(self._bitmap(), *(self.evaluate(part) for part in condition.parts))

    def _range(self, condition: Range) -> BitMap64:
        numbers = self._numbers.get(condition.key)
        if not numbers:
            return self._bitmap()
        low = condition.gte if condition.gte is not None else condition.gt
        high = condition.lte if condition.lte is not None else condition.lt
        # the walk is inclusive; holds() then applies the exact (strict or not) bounds
        keys = numbers.irange(minimum=low, maximum=high, inclusive=(True, True))
        return self._bitmap.union(self._bitmap(), *(numbers[k] for k in keys if condition.holds(k)))


def labels_array(bitmap: BitMap64) -> np.ndarray:
    """The labels of a bitmap as a sorted int64 array."""
    if not bitmap:
        return np.zeros(0, dtype=np.int64)
    return np.frombuffer(bitmap.to_array(), dtype=np.uint64).astype(np.int64)
