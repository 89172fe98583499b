"""Sparse vectors (term id -> weight: SPLADE's expansion, bge-m3's lexical weights) and the inverted
index searched with them.

An item's sparse vector is a row of a [labels, vocabulary] matrix; the posting lists are its columns
(scipy CSC: per term id, the labels holding it and their weights). A query touches only the posting
lists of its own terms: ``postings[:, query_ids] @ query_weights`` scores every item sharing a term,
exactly (dot product), without visiting the others.

New rows collect in a tail with posting lists of its own (rebuilt at the first search after a write);
once the tail holds a quarter of the base's nonzeros both are merged into a new base, so each nonzero
is copied a bounded number of times however the items arrive. Rows of removed labels stay (labels only
grow, as in the dense matrix); searches drop them with the store's live mask.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from embedsvc.errors import InvalidInputError

SparseRow = tuple[np.ndarray, np.ndarray]  # (int32 term ids, ascending and unique; float32 weights)
MAX_TERMS = 65_536  # nonzeros in one sparse vector
TAIL_MIN_NONZEROS = 1 << 16  # a tail smaller than this never triggers a merge


def _scipy() -> Any:
    import scipy.sparse

    return scipy.sparse


def check_sparse(ids: Any, weights: Any, dimension: int, what: str) -> SparseRow:
    """One sparse vector, checked and canonical (ids ascending, zero weights dropped), or
    InvalidInputError naming ``what`` and the fix."""
    id_array, weight_array = np.asarray(ids), np.asarray(weights, dtype=np.float64)
    if id_array.ndim != 1 or weight_array.ndim != 1 or len(id_array) != len(weight_array):
        raise InvalidInputError(
            f"{what}: a sparse vector needs as many weights as term ids "
            f"(got {id_array.size} ids, {weight_array.size} weights)",
            field="sparse",
        )
    if len(id_array) > MAX_TERMS:
        raise InvalidInputError(f"{what}: more than {MAX_TERMS} terms", field="sparse")
    if len(id_array) and (
        not np.issubdtype(id_array.dtype, np.integer) and not np.all(np.mod(id_array, 1) == 0)
    ):
        raise InvalidInputError(f"{what}: sparse term ids must be integers", field="sparse")
    id_array = id_array.astype(np.int64)
    if len(id_array) and (id_array.min() < 0 or id_array.max() >= dimension):
        bad = int(id_array[(id_array < 0) | (id_array >= dimension)][0])
        raise InvalidInputError(
            f"{what}: term id {bad} is outside the index's vocabulary (0 to {dimension - 1})", field="sparse"
        )
    if not np.isfinite(weight_array).all() or (np.abs(weight_array) > np.finfo(np.float32).max).any():
        raise InvalidInputError(f"{what}: a sparse weight is NaN, infinite or beyond float32", field="sparse")
    order = np.argsort(id_array, kind="stable")
    id_array, weight_array = id_array[order], weight_array[order]
    if len(id_array) > 1 and (np.diff(id_array) == 0).any():
        dup = int(id_array[1:][np.diff(id_array) == 0][0])
        raise InvalidInputError(f"{what}: term id {dup} appears more than once", field="sparse")
    keep = weight_array != 0
    return id_array[keep].astype(np.int32), weight_array[keep].astype(np.float32)


def to_blocks(rows: Sequence[SparseRow]) -> dict[str, np.ndarray]:
    """Rows as three flat arrays (for log records and snapshots)."""
    lengths = np.fromiter((len(ids) for ids, _ in rows), dtype=np.int64, count=len(rows))
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, np.int32)
    weights = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, np.float32)
    return {
        "sparse_indptr": indptr,
        "sparse_ids": ids.astype(np.int32),
        "sparse_weights": weights.astype(np.float32),
    }


def from_blocks(blocks: dict[str, np.ndarray]) -> list[SparseRow]:
    indptr, ids, weights = blocks["sparse_indptr"], blocks["sparse_ids"], blocks["sparse_weights"]
    return [(ids[a:b], weights[a:b]) for a, b in zip(indptr[:-1].tolist(), indptr[1:].tolist(), strict=True)]


class PostingLists:
    """Sparse rows by label (labels consecutive from 0) and the inverted index over them."""

    def __init__(self, dimension: int) -> None:
        sparse = _scipy()
        self.dimension = dimension
        self._base = sparse.csr_matrix((0, dimension), dtype=np.float32)  # rows by label
        self._base_postings = self._base.tocsc()
        self._tail: list[SparseRow] = []
        self._tail_nonzeros = 0
        self._tail_postings: Any = None  # built at the first search after a write
        self._tail_lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._base.shape[0]) + len(self._tail)

    @property
    def nonzeros(self) -> int:
        return int(self._base.nnz) + self._tail_nonzeros

    def append(self, rows: Sequence[SparseRow]) -> None:
        """Rows for the next labels, in order."""
        self._tail.extend(rows)
        self._tail_nonzeros += sum(len(ids) for ids, _ in rows)
        self._tail_postings = None
        if self._tail_nonzeros > max(self._base.nnz // 4, TAIL_MIN_NONZEROS):
            self.merge()

    def _tail_matrix(self) -> Any:
        blocks = to_blocks(self._tail)
        return _scipy().csr_matrix(
            (blocks["sparse_weights"], blocks["sparse_ids"], blocks["sparse_indptr"]),
            shape=(len(self._tail), self.dimension),
        )

    def merge(self) -> None:
        """Tail and base into one base (its posting lists built once, by scipy's CSR -> CSC)."""
        if not self._tail:
            return
        merged = _scipy().vstack([self._base, self._tail_matrix()], format="csr")
        merged.sort_indices()
        self._base, self._base_postings = merged, merged.tocsc()
        self._tail, self._tail_nonzeros, self._tail_postings = [], 0, None

    def row(self, label: int) -> SparseRow:
        base_rows = int(self._base.shape[0])
        if label >= base_rows:
            ids, weights = self._tail[label - base_rows]
            return ids.copy(), weights.copy()
        start, stop = self._base.indptr[label], self._base.indptr[label + 1]
        return self._base.indices[start:stop].astype(np.int32), self._base.data[start:stop].copy()

    def blocks(self, labels: Sequence[int]) -> dict[str, np.ndarray]:
        """The rows of ``labels`` as to_blocks gives them, by scipy row indexing (for snapshots)."""
        self.merge()
        chosen = self._base[np.asarray(labels, dtype=np.int64)]
        chosen.sort_indices()
        return {
            "sparse_indptr": chosen.indptr.astype(np.int64),
            "sparse_ids": chosen.indices.astype(np.int32),
            "sparse_weights": chosen.data.astype(np.float32),
        }

    def scores(self, ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Dot products of the query with every label's row (float32 [len(self)]); zero where no
        term is shared. Reads only the query terms' posting lists."""
        out = np.zeros(len(self), dtype=np.float32)
        if not len(ids):
            return out
        base_rows = int(self._base.shape[0])
        if base_rows:
            out[:base_rows] = self._base_postings[:, ids] @ weights
        if self._tail:
            postings = self._tail_postings
            if postings is None:
                with self._tail_lock:  # concurrent searches build it once
                    if self._tail_postings is None:
                        self._tail_postings = self._tail_matrix().tocsc()
                    postings = self._tail_postings
            out[base_rows:] = postings[:, ids] @ weights
        return out


def top_labels(scores: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of ``candidates`` (labels) by ``scores[label]``, best first, ties by label."""
    chosen = scores[candidates]
    if len(candidates) > k:
        keep = np.argpartition(-chosen, k - 1)[:k]
        candidates, chosen = candidates[keep], chosen[keep]
    order = np.lexsort((candidates, -chosen))
    return candidates[order], chosen[order]
