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

    def __post_init__(self) -> None:
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
