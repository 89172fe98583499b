"""An index's immutable description (spec.json) and a search hit: plain values every part shares."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from embedsvc.errors import InvalidInputError
from embedsvc.index.ann import KINDS, METRICS, AnnParams, check_params
from embedsvc.index.filters import MetadataValue


@dataclass(frozen=True)
class IndexSpec:
    name: str
    model: str  # the served model's name when created
    model_source: str  # what binds the index to a model across renames
    dimension: int
    metric: str = "cosine"
    kind: str = "flat"
    params: AnnParams = field(default_factory=AnnParams)
    store_text: bool = False  # keep each item's text (in the log and snapshots, like metadata)
    # which representations every item carries (see sparse.py, multivector.py); older specs lack these
    # keys and read as dense-only
    dense: bool = True
    sparse: bool = False
    sparse_dimension: int = 0  # vocabulary size: sparse term ids run from 0 to it, exclusive
    multi_vector: bool = False  # token vectors kept (float16) for MaxSim re-ranking
    multi_vector_dimension: int = 0

    def __post_init__(self) -> None:
        if not (self.dense or self.sparse):
            raise InvalidInputError("an index keeps dense vectors, sparse vectors or both", field="dense")
        if not self.dense and (self.kind != "flat" or self.dimension != 0):
            raise InvalidInputError(
                "an index without dense vectors has no FAISS structure: leave kind at flat", field="kind"
            )
        if self.sparse and self.sparse_dimension < 1:
            raise InvalidInputError(
                "a sparse index needs its vocabulary size (sparse_dimension): the model's, or the "
                "largest term id plus one",
                field="sparse_dimension",
            )
        if self.multi_vector and self.multi_vector_dimension < 1:
            raise InvalidInputError(
                "a multi-vector index needs the token vectors' width (multi_vector_dimension)",
                field="multi_vector_dimension",
            )
        if self.metric not in METRICS:
            raise InvalidInputError(
                f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}", field="metric"
            )
        if self.kind not in KINDS:
            raise InvalidInputError(
                f"unknown index kind {self.kind!r}; choose one of {', '.join(KINDS)}", field="kind"
            )
        check_params(self.params, self.dimension, self.kind)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not self.store_text:  # written only when set: an older embedsvc still opens the index
            del data["store_text"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexSpec:
        return cls(**{**data, "params": AnnParams(**data.get("params", {}))})


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict[str, MetadataValue]
    text: str | None = None  # the stored text, when asked for
    rerank_score: float | None = None  # set by a rerank stage
    # the parts of a hybrid or re-ranked score (None: not computed for this search)
    dense_score: float | None = None
    sparse_score: float | None = None
    maxsim_score: float | None = None
