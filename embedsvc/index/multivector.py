"""Token vectors (ColBERT, bge-m3's multi-vector output) kept per item for MaxSim re-ranking.

Each item keeps a float16 [tokens, dimension] matrix: 2 bytes per value, so an item of T tokens at
D dimensions costs 2*T*D bytes (128 tokens x 128 dims = 32 KiB; 1M such items = 32 GiB). They are
opt-in at creation and only re-rank a dense or hybrid search's candidates (no index over them).

MaxSim(query, item) = sum over query tokens of the largest dot product with any of the item's tokens.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from embedsvc.errors import InvalidInputError

MAX_TOKENS = 8192  # token vectors in one item or query
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def check_tokens(matrix: Any, dimension: int, what: str) -> np.ndarray:
    """One item's or query's token vectors as float16 [tokens, dimension], or InvalidInputError."""
    array = np.asarray(matrix, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dimension or not 1 <= len(array) <= MAX_TOKENS:
        raise InvalidInputError(
            f"{what}: token vectors must be 1 to {MAX_TOKENS} rows of {dimension} values, got shape "
            f"{tuple(array.shape)}",
            field="token_vectors",
        )
    if not np.isfinite(array).all() or (np.abs(array) > _FLOAT16_MAX).any():
        raise InvalidInputError(
            f"{what}: a token vector value is NaN, infinite or beyond float16 (|x| <= {_FLOAT16_MAX:g})",
            field="token_vectors",
        )
    return array.astype(np.float16)


def to_blocks(matrices: Sequence[np.ndarray], dimension: int) -> dict[str, np.ndarray]:
    counts = np.fromiter((len(m) for m in matrices), dtype=np.int64, count=len(matrices))
    values = np.concatenate(matrices) if matrices else np.zeros((0, dimension), np.float16)
    return {"token_counts": counts, "token_vectors": values.astype(np.float16)}


def from_blocks(blocks: dict[str, np.ndarray], dimension: int) -> list[np.ndarray]:
    counts, values = blocks["token_counts"], blocks["token_vectors"].reshape(-1, dimension)
    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
    return [values[a:b] for a, b in itertools.pairwise(bounds)]


class TokenStore:
    """Token vectors by label."""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._by_label: dict[int, np.ndarray] = {}
        self.values = 0  # float16 values held (the memory cost, 2 bytes each)

    def add(self, labels: Sequence[int], matrices: Sequence[np.ndarray]) -> None:
        for label, matrix in zip(labels, matrices, strict=True):
            self._by_label[label] = matrix
            self.values += matrix.size

    def remove(self, labels: Sequence[int]) -> None:
        for label in labels:
            matrix = self._by_label.pop(label, None)
            if matrix is not None:
                self.values -= matrix.size

    def get(self, label: int) -> np.ndarray:
        return self._by_label[label]

    def maxsim(self, query: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """MaxSim of ``query`` (float [tokens, dimension]) with each label's tokens: one matrix product
        over all candidates' tokens, then a maximum per candidate segment (no loop per candidate)."""
        if not len(labels):
            return np.zeros(0, dtype=np.float32)
        matrices = [self._by_label[label] for label in labels.tolist()]
        starts = np.concatenate([[0], np.cumsum([len(m) for m in matrices])[:-1]])
        sims = np.concatenate(matrices).astype(np.float32) @ np.asarray(query, np.float32).T
        return np.maximum.reduceat(sims, starts, axis=0).sum(axis=1).astype(np.float32)
