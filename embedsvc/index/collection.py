"""One durable collection: the composition of its three parts, each in a module of its own.

- ``store.py``: items in memory (ids, labels, vectors, metadata) and the FAISS structure; the checks
  every write passes.
- ``durability.py``: the write-ahead log, snapshots, ``state.json`` and the mark; recovery and repair
  (one replay).
- ``planning.py``: how a search runs (exact scan or FAISS with a selector, widening, re-ranking).

A write here is checked, appended to the log and fsynced *before* it is applied and acknowledged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from embedsvc.errors import InvalidInputError
from embedsvc.index.durability import (
    MARK_FILE,
    SNAPSHOT_FILE,
    SPEC_FILE,
    STATE_FILE,
    WAL_FILE,
    Durable,
    read_spec,
)
from embedsvc.index.multivector import check_tokens
from embedsvc.index.retrieval import RetrievalPlanner
from embedsvc.index.sparse import SparseRow, check_sparse
from embedsvc.index.spec import Hit, IndexSpec
from embedsvc.index.store import check_metadata, check_vectors

__all__ = [
    "MARK_FILE",
    "SNAPSHOT_FILE",
    "SPEC_FILE",
    "STATE_FILE",
    "WAL_FILE",
    "Collection",
    "Hit",
    "IndexSpec",
    "check_metadata",
    "check_vectors",
    "read_spec",
]


class RetiredError(RuntimeError):
    """This collection was replaced by a re-embedded one: the write goes to the manager's current one."""


class Collection(Durable, RetrievalPlanner):
    """Durable writes (log, then apply) over a searchable store."""

    # set while the index is re-embedded: the ids written since (the re-embed copies them again)
    _touched: set[str] | None = None
    retired = False  # replaced by a re-embedded collection: writes here are refused (RetiredError)

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[Mapping[str, Any]] | None,
        texts: Sequence[str | None] | None = None,
        *,
        sparse: Sequence[SparseRow] | None = None,
        tokens: Sequence[Any] | None = None,
    ) -> int:
        """Insert or replace; all or nothing. Returns the collection's size afterwards.

        ``texts`` (one per item, None for none) are kept when the index keeps texts, ignored otherwise.
        ``vectors`` is [n, 0] for an index without dense vectors; ``sparse`` ((ids, weights) per item)
        and ``tokens`` ([tokens, dim] per item) are required exactly when the index keeps them."""
        if len(ids) == 0:
            raise InvalidInputError("upsert needs at least one item", field="items")
        for i, item_id in enumerate(ids):
            if not isinstance(item_id, str) or not item_id:
                raise InvalidInputError(f"item {i}: ids must be non-empty strings", field="ids")
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise InvalidInputError(f"id {dup!r} appears more than once in this request", field="ids")
        vectors = self._prepare(check_vectors(vectors, self.spec.dimension))
        if len(vectors) != len(ids):
            raise InvalidInputError(f"{len(ids)} ids but {len(vectors)} vectors", field="vectors")
        metas = [check_metadata(m, i) for i, m in enumerate(metadata or [{}] * len(ids))]
        if len(metas) != len(ids):
            raise InvalidInputError(f"{len(ids)} ids but {len(metas)} metadata entries", field="metadata")
        kept = self._texts_to_keep(texts, len(ids))
        rows = self._checked_sparse(sparse, len(ids))
        matrices = self._checked_tokens(tokens, len(ids))
        with self._lock.write():
            self._note_written(ids)
            header: dict[str, Any] = {"op": "upsert", "ids": list(ids), "metadata": metas}
            if kept is not None:
                header["texts"] = kept
            self._log(header, vectors, self._blocks(rows, matrices))
            self._apply_upsert(ids, vectors, metas, texts=kept, sparse=rows, tokens=matrices)
            self._maintain()
            return len(self._id_of)

    # ------------------------------------------------------- re-embedding
    def _note_written(self, ids: Sequence[str]) -> None:
        if self.retired:
            raise RetiredError(self.spec.name)
        if self._touched is not None:
            self._touched.update(ids)

    def track_writes(self, on: bool) -> None:
        with self._lock.write():
            self._touched = set() if on else None

    def take_written(self) -> list[str]:
        """The ids written since the last call (while tracking)."""
        with self._lock.write():
            taken, self._touched = sorted(self._touched or ()), set()
            return taken

    def items_for_reembed(
        self, ids: Sequence[str]
    ) -> tuple[list[tuple[str, str | None, dict[str, Any]]], list[str]]:
        """(id, stored text, metadata) of the live ids, and the ids that no longer exist."""
        with self._lock.read():
            found, gone = [], []
            for item_id in ids:
                label = self._label_of.get(item_id)
                if label is None:
                    gone.append(item_id)
                else:
                    found.append((item_id, self._texts.get(label), dict(self._metadata[label])))
            return found, gone

    def _texts_to_keep(self, texts: Sequence[str | None] | None, n: int) -> list[str | None] | None:
        if not self.spec.store_text:
            return None
        kept: list[str | None] = list(texts) if texts is not None else [None] * n
        if len(kept) != n:
            raise InvalidInputError(f"{n} ids but {len(kept)} texts", field="texts")
        if not all(t is None or isinstance(t, str) for t in kept):
            raise InvalidInputError("texts must be strings (or None for an item without one)", field="texts")
        return kept

    def _checked_sparse(self, given: Sequence[Any] | None, n: int) -> list[SparseRow] | None:
        if not self.spec.sparse:
            if given is not None:
                raise InvalidInputError(
                    f"index {self.spec.name!r} keeps no sparse vectors (create it with sparse)",
                    field="sparse",
                )
            return None
        if given is None or len(given) != n:
            raise InvalidInputError(
                f"index {self.spec.name!r} keeps sparse vectors: every item needs one", field="sparse"
            )
        rows = []
        for i, row in enumerate(given):
            if row is None:
                raise InvalidInputError(
                    f"item {i}: index {self.spec.name!r} keeps sparse vectors: give its sparse vector",
                    field="sparse",
                )
            rows.append(check_sparse(row[0], row[1], self.spec.sparse_dimension, f"item {i}"))
        return rows

    def _checked_tokens(self, given: Sequence[Any] | None, n: int) -> list[np.ndarray] | None:
        if not self.spec.multi_vector:
            if given is not None:
                raise InvalidInputError(
                    f"index {self.spec.name!r} keeps no token vectors (create it with multi_vector)",
                    field="token_vectors",
                )
            return None
        if given is None or len(given) != n:
            raise InvalidInputError(
                f"index {self.spec.name!r} keeps token vectors: every item needs them", field="token_vectors"
            )
        for i, matrix in enumerate(given):
            if matrix is None:
                raise InvalidInputError(
                    f"item {i}: index {self.spec.name!r} keeps token vectors: give its token vectors",
                    field="token_vectors",
                )
        dimension = self.spec.multi_vector_dimension
        return [check_tokens(m, dimension, f"item {i}") for i, m in enumerate(given)]

    def delete(self, ids: Sequence[str]) -> tuple[int, int]:
        """Remove ids (unknown ones are ignored); returns (removed, size afterwards)."""
        with self._lock.write():
            self._note_written(ids)
            present = [i for i in dict.fromkeys(ids) if i in self._label_of]
            if present:
                self._log({"op": "delete", "ids": present}, None)
                self._unindex(self._apply_delete(present))
                self._maintain()
            return len(present), len(self._id_of)

    def _maintain(self) -> None:
        if self._ann.tombstones and len(self._ann.tombstones) > max(64, len(self._id_of) // 4):
            self._rebuild_ann()  # compact HNSW tombstones
        if self._wal is not None and self._wal.records_since_open >= max(
            self.snapshot_every, self._snapshot_retry_at
        ):
            self._try_snapshot()
