"""How a search retrieves (dense, sparse or hybrid; MaxSim re-ranking) and how hybrid results combine.

- Reciprocal rank fusion: ``sum_i w_i / (rrf_k + rank_i)`` over the lists an item appears in (rank
  from 1); it needs no score calibration between dense and sparse.
- Weighted sum: ``w_dense * dense + w_sparse * sparse`` of raw scores, both computed exactly for every
  candidate of either list (bge-m3's hybrid); the weights carry the calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedsvc.errors import InvalidInputError

MODES = ("dense", "sparse", "hybrid")
FUSIONS = ("rrf", "weighted")
DEFAULT_CANDIDATES = 100  # per list, for hybrid fusion and re-ranking (at least k)
MAX_CANDIDATES = 10_000


@dataclass(frozen=True)
class HybridOptions:
    """What a search retrieves with, per request. ``candidates`` 0: max(k, 100) for hybrid or
    re-ranked searches; ``rerank``: re-rank them by MaxSim over the index's token vectors."""

    mode: str = "dense"
    fusion: str = "rrf"
    dense_weight: float = 1.0
    sparse_weight: float = 1.0
    rrf_k: int = 60
    candidates: int = 0
    rerank: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInputError(
                f"unknown search mode {self.mode!r}; choose one of {', '.join(MODES)}", field="mode"
            )
        if self.fusion not in FUSIONS:
            raise InvalidInputError(
                f"unknown fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}", field="fusion"
            )
        for name in ("dense_weight", "sparse_weight"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise InvalidInputError(f"{name} must be a finite number >= 0, got {value}", field=name)
        if self.dense_weight == 0 and self.sparse_weight == 0:
            raise InvalidInputError("dense_weight and sparse_weight cannot both be 0", field="dense_weight")
        if not 0 <= self.rrf_k <= 100_000:
            raise InvalidInputError(f"rrf_k must be from 0 to 100000, got {self.rrf_k}", field="rrf_k")
        if not 0 <= self.candidates <= MAX_CANDIDATES:
            raise InvalidInputError(
                f"candidates must be from 0 (automatic) to {MAX_CANDIDATES}, got {self.candidates}",
                field="candidates",
            )

    def pool(self, k: int) -> int:
        """How many candidates each list contributes."""
        if self.mode != "hybrid" and not self.rerank:
            return k
        return max(k, self.candidates or DEFAULT_CANDIDATES)


def reciprocal_rank(
    dense: np.ndarray, sparse: np.ndarray, options: HybridOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Labels of either ranked list (best first) and their fused scores, unordered."""
    union = np.union1d(dense, sparse)
    fused = np.zeros(len(union), dtype=np.float64)
    for ranked, weight in ((dense, options.dense_weight), (sparse, options.sparse_weight)):
        position = np.searchsorted(union, ranked)
        fused[position] += weight / (options.rrf_k + np.arange(1, len(ranked) + 1))
    return union, fused


def weighted_sum(dense_scores: np.ndarray, sparse_scores: np.ndarray, options: HybridOptions) -> np.ndarray:
    return options.dense_weight * dense_scores.astype(np.float64) + options.sparse_weight * sparse_scores
