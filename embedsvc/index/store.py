"""The in-memory store of one collection: ids, labels, vectors, metadata and the FAISS structure,
with the checks every write passes (ids, dimensions, finite values, norms, metadata).

Writes are serialized per collection; searches run concurrently with each other and see either all
or none of a write (a readers-writer lock around apply/search). Nothing here touches a file:
durability (durability.py) logs a write before the store applies it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from embedsvc.errors import InvalidInputError
from embedsvc.index.ann import AnnIndex
from embedsvc.index.filters import MetadataValue
from embedsvc.index.metadata import MetadataIndex
from embedsvc.index.multivector import TokenStore
from embedsvc.index.sparse import PostingLists, SparseRow
from embedsvc.index.spec import IndexSpec

log = logging.getLogger("embedsvc.index")
# the largest vector norm whose square float32 still holds: beyond it l2 / inner-product scores overflow
_FLOAT32_NORM_LIMIT = math.sqrt(float(np.finfo(np.float32).max))
# writes reach faiss in blocks of at least this many vectors: HNSW takes 64-vector blocks at ~60 % of its
# bulk rate (1 973 vs 3 326 vectors/s at 384 dimensions); until then they are searched exactly
BULK_BLOCK = 2048


class _RWLock:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def check_vectors(vectors: np.ndarray, dimension: int, field_name: str = "vectors") -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dimension:
        got = array.shape[-1] if array.ndim else 0
        raise InvalidInputError(
            f"vectors must have {dimension} dimensions for this index, got {got}", field=field_name
        )
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise InvalidInputError(f"vector {int(np.argmax(bad))} contains NaN or infinity", field=field_name)
    return array


_METADATA_TYPES = (str, int, float, bool)
MAX_LIST_VALUES = 10_000  # elements in one list value


def _scalar(value: Any) -> bool:
    return isinstance(value, _METADATA_TYPES) and not (isinstance(value, float) and not math.isfinite(value))


def copied_metadata(metadata: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
    """A caller's copy: changing a returned list must not change the stored item."""
    return {k: list(v) if isinstance(v, list) else v for k, v in metadata.items()}


def check_metadata(metadata: Mapping[str, Any], item: int) -> dict[str, MetadataValue]:
    """A copy of one item's metadata, or InvalidInputError naming the item and key.

    Values: strings, integers, finite numbers, booleans, or lists of them (tuples become lists)."""
    out: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"item {item}: metadata keys must be non-empty strings", field="metadata")
        if isinstance(value, list | tuple):
            if len(value) > MAX_LIST_VALUES or not all(_scalar(v) for v in value):
                raise InvalidInputError(
                    f"item {item}: metadata value of {key!r} is a list, which must hold at most "
                    f"{MAX_LIST_VALUES} strings, integers, finite numbers or booleans (no lists or objects)",
                    field="metadata",
                )
            out[key] = list(value)
        elif _scalar(value):
            out[key] = value
        else:
            raise InvalidInputError(
                f"item {item}: metadata value of {key!r} must be a string, integer, finite number, boolean "
                f"or a list of them, got {type(value).__name__}",
                field="metadata",
            )
    return out


class Store:
    """Items in memory and their FAISS structure; ``_seq`` numbers the writes applied so far."""

    def __init__(self, spec: IndexSpec, *, gpu_device: int | None = None) -> None:
        self.spec = spec
        self.durable = False  # set by durability when a folder holds the items
        self._lock = _RWLock()
        self._label_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._metadata: dict[int, dict[str, MetadataValue]] = {}
        self._texts: dict[int, str] = {}  # by label, for indexes that keep texts (spec.store_text)
        self._filters = MetadataIndex()  # inverted indexes over _metadata, for filtered search
        self._matrix = np.zeros((1024, spec.dimension), dtype=np.float32)
        self._alive = np.zeros(len(self._matrix), dtype=bool)  # by label
        self._next_label = 0
        self._pending: set[int] = set()  # live labels not yet added to faiss (see BULK_BLOCK)
        # packed selectors of recent filters, each valid while no write has happened since (see _seq)
        self._selectors: OrderedDict[str, tuple[int, int, np.ndarray]] = OrderedDict()
        self._selector_lock = threading.Lock()
        self._seq = 0
        self._ann = AnnIndex(spec.kind, spec.metric, spec.dimension, spec.params, gpu_device)
        self._ann_error: str | None = None
        self._ann_failed_at = 0
        # an index's other representations, by label (see sparse.py, multivector.py)
        self._sparse = PostingLists(spec.sparse_dimension) if spec.sparse else None
        self._tokens = TokenStore(spec.multi_vector_dimension) if spec.multi_vector else None

    def _labels_and_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        labels = np.fromiter(self._id_of, dtype=np.int64, count=len(self._id_of))
        return labels, self._matrix[labels]

    def _rebuild_ann(self) -> None:
        """Rebuild the FAISS structure; if faiss fails, searches stay exact and the status says why.

        The items themselves are logged and applied before this runs: a derived structure that
        cannot be built never loses or refuses a write, nor stops a start-up."""
        labels, vectors = self._labels_and_vectors()
        self._pending.clear()  # every live item goes in
        try:
            self._ann.rebuild(labels, vectors)
            self._ann_error = None
        except (RuntimeError, MemoryError, ValueError) as exc:
            self._ann.index = None
            self._ann_error = f"{self.spec.kind} structure could not be built ({exc})"
            self._ann_failed_at = len(labels)
            log.error(
                "index searched exactly: faiss failed", extra={"index": self.spec.name, "error": str(exc)}
            )

    def _prepare(self, vectors: np.ndarray, field_name: str = "vectors") -> np.ndarray:
        if not self.spec.dense:
            return vectors  # no dense part: [n, 0]
        if self.spec.metric != "cosine":
            # a row's norm is at most sqrt(dimension) times its largest element: only rows that could
            # reach the limit need their norm computed (in float64: float32 squares overflow from 1.8e19)
            largest = np.abs(vectors).max(axis=1) * math.sqrt(vectors.shape[1])
            suspect = np.flatnonzero(largest >= _FLOAT32_NORM_LIMIT)
            if len(suspect):
                norms = np.linalg.norm(vectors[suspect].astype(np.float64), axis=1)
                if (norms >= _FLOAT32_NORM_LIMIT).any():
                    j = int(np.argmax(norms >= _FLOAT32_NORM_LIMIT))
                    raise InvalidInputError(
                        f"vector {int(suspect[j])} has norm {norms[j]:.3g}: its {self.spec.metric} scores "
                        f"overflow float32 (norms must stay below {_FLOAT32_NORM_LIMIT:.3g}); "
                        "scale the vectors down",
                        field=field_name,
                    )
            return vectors
        # norms in float64: float32 squares overflow from about 1.8e19 and underflow below 1e-19
        wide = vectors.astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))[:, None]
        if (norms == 0).any():
            raise InvalidInputError(
                f"vector {int(np.argmax(norms[:, 0] == 0))} is all zeros: it has no direction for cosine",
                field=field_name,
            )
        return (wide / norms).astype(np.float32)

    def _apply_upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[dict[str, Any]],
        *,
        index_now: bool = True,
        texts: Sequence[str | None] | None = None,
        sparse: Sequence[SparseRow] | None = None,
        tokens: Sequence[np.ndarray] | None = None,
    ) -> None:
        """``sparse`` and ``tokens``: one per item, required when the index keeps them (checked before)."""
        if (self._sparse is not None and (sparse is None or len(sparse) != len(ids))) or (
            self._tokens is not None and (tokens is None or len(tokens) != len(ids))
        ):
            raise ValueError("every item of this index needs its sparse vector / token vectors")
        replaced = [self._label_of[i] for i in ids if i in self._label_of]
        if replaced:
            self._forget(replaced)
            if index_now:
                self._unindex(replaced)
        needed = self._next_label + len(ids)
        if needed > len(self._matrix):
            grown = np.zeros((max(needed, 2 * len(self._matrix)), self.spec.dimension), dtype=np.float32)
            grown[: len(self._matrix)] = self._matrix
            self._matrix = grown
            self._alive = np.concatenate([self._alive, np.zeros(len(grown) - len(self._alive), dtype=bool)])
        labels = np.arange(self._next_label, needed, dtype=np.int64)
        self._matrix[self._next_label : needed] = vectors  # labels are consecutive: a slice copy
        self._alive[self._next_label : needed] = True
        label_list, metas = labels.tolist(), list(metadata)  # callers pass fresh dicts
        if len(metas) != len(label_list):
            raise ValueError(f"{len(label_list)} items but {len(metas)} metadata entries")
        self._label_of.update(zip(ids, label_list, strict=True))
        self._id_of.update(zip(label_list, ids, strict=True))
        self._metadata.update(zip(label_list, metas, strict=True))
        self._filters.add_many(label_list, metas)
        self._keep_texts(label_list, texts)
        if self._sparse is not None:
            assert sparse is not None and len(self._sparse) == self._next_label
            self._sparse.append(sparse)  # labels are consecutive: rows in order
        if self._tokens is not None:
            assert tokens is not None
            self._tokens.add(label_list, tokens)
        self._next_label = needed
        if index_now:
            if not self._ann.trained and len(self._id_of) >= self._next_training_size():
                self._rebuild_ann()  # enough vectors now: train the IVF index
            elif self._ann.trained:
                self._pending.update(labels.tolist())
                if len(self._pending) >= BULK_BLOCK:
                    self._flush_pending()

    def _flush_pending(self) -> None:
        labels = np.fromiter(self._pending, dtype=np.int64, count=len(self._pending))
        labels.sort()
        self._pending.clear()
        self._ann.add(labels, self._matrix[labels])  # pending labels are live: removals take them out

    def _unindex(self, labels: list[int]) -> None:
        """Take removed labels out of faiss, or out of the pending block if they never reached it."""
        indexed = [label for label in labels if label not in self._pending]
        self._pending.difference_update(labels)
        self._ann.remove(indexed)

    def _next_training_size(self) -> int:
        # after a failed build, retry once the collection has doubled rather than on every write
        return max(self.spec.params.train_size(self.spec.kind), 2 * self._ann_failed_at)

    def _forget(self, labels: list[int]) -> None:
        for label in labels:
            del self._label_of[self._id_of.pop(label)]
            self._filters.remove(label, self._metadata.pop(label))
            self._texts.pop(label, None)
            self._alive[label] = False
        if self._tokens is not None:
            self._tokens.remove(labels)

    # ------------------------------------------------------------ stored texts
    def _keep_texts(self, labels: list[int], texts: Sequence[str | None] | None) -> None:
        """Keep the items' texts when the index does (an item written as a vector has none)."""
        if not self.spec.store_text or texts is None:
            return
        if len(texts) != len(labels):
            raise ValueError(f"{len(labels)} items but {len(texts)} texts")
        self._texts.update((label, t) for label, t in zip(labels, texts, strict=True) if t is not None)

    def _texts_of(self, labels: Sequence[int]) -> list[str | None]:
        """The texts of live labels, as the log and snapshots record them (None: no text)."""
        return [self._texts.get(label) for label in labels]

    def texts(self, ids: Sequence[str]) -> list[str | None]:
        """Each id's stored text (None: not stored, or no such item)."""
        with self._lock.read():
            return [self._texts.get(self._label_of.get(i, -1)) for i in ids]

    def _apply_delete(self, ids: Sequence[str]) -> list[int]:
        labels = [self._label_of[i] for i in ids if i in self._label_of]
        self._forget(labels)
        return labels

    def count(self) -> int:
        return len(self._id_of)

    def ids(self) -> list[str]:
        """Every item's id, oldest write first."""
        with self._lock.read():
            return list(self._id_of.values())  # labels only grow: insertion order is label order

    def ids_page(self, after: int, limit: int) -> tuple[list[str], int | None]:
        """Up to ``limit`` ids in write order from label ``after`` on, and the label to continue from
        (None after the last). Labels only grow, so a cursor stays valid across writes: a rewritten id
        gets a new label and shows up again later; a deleted one is skipped."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with self._lock.read():
            found: list[int] = []
            start = max(after, 0)
            while start < self._next_label and len(found) < limit:
                stop = min(self._next_label, start + max(4 * limit, 4096))  # a bounded scan per step
                found += (np.flatnonzero(self._alive[start:stop]) + start).tolist()
                start = stop
            page, rest = found[:limit], found[limit:]
            if rest:
                following: int | None = rest[0]
            elif start < self._next_label:
                following = start
            else:
                following = None
            return [self._id_of[label] for label in page], following

    def get(
        self, ids: Sequence[str]
    ) -> tuple[list[tuple[str, np.ndarray, dict[str, MetadataValue]]], list[str]]:
        with self._lock.read():
            found, missing = [], []
            for item_id in ids:
                label = self._label_of.get(item_id)
                if label is None:
                    missing.append(item_id)
                else:
                    found.append(
                        (item_id, self._matrix[label].copy(), copied_metadata(self._metadata[label]))
                    )
            return found, missing

    def parts(self, ids: Sequence[str]) -> dict[str, tuple[SparseRow | None, np.ndarray | None]]:
        """The sparse vector and token vectors (float16) of the ids that exist, where the index keeps them."""
        with self._lock.read():
            out: dict[str, tuple[SparseRow | None, np.ndarray | None]] = {}
            for item_id in ids:
                label = self._label_of.get(item_id)
                if label is not None:
                    out[item_id] = (
                        None if self._sparse is None else self._sparse.row(label),
                        None if self._tokens is None else self._tokens.get(label).copy(),
                    )
            return out

    def describe(self) -> dict[str, Any]:
        trained = self._ann.trained
        if self._ann_error:
            status = f"degraded: {self._ann_error}; searched exactly (every item is there)"
        elif trained:
            status = "ready"
        else:
            needed = self.spec.params.train_size(self.spec.kind)
            status = f"training: needs {needed} vectors, has {self.count()}; searched exactly"
        return {
            "trained": trained,
            "status": status,
            "count": self.count(),
            "durable": self.durable,
            "device": self._ann.device,
            # memory of the other representations: a sparse nonzero is held twice (rows and posting
            # lists, 4-byte id + 4-byte weight each), a token value is a float16
            "representation_bytes": (0 if self._sparse is None else 16 * self._sparse.nonzeros)
            + (0 if self._tokens is None else 2 * self._tokens.values),
        }
