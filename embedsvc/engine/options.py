"""The plain values front doors exchange with the engine (no torch: the clients import them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from embedsvc.engine.inputs import Template


@dataclass(frozen=True)
class EmbedOptions:
    """How to embed, spelled once for every front door."""

    input_type: str | None = None  # "query" | "document" | None
    prompt_name: str | None = None
    instruction: str | None = None
    dimensions: int | None = None
    normalize: bool | None = None  # None: the model's default
    truncation: str = "end"  # "end" | "start" | "none"
    chunked: bool = False
    # any of "dense", "sparse", "multi_vector" (engine/outputs.py), as far as the model offers them
    outputs: tuple[str, ...] = ("dense",)


@dataclass(frozen=True)
class ResolvedOptions:
    """A request's options checked against one model, once (``Embedder.resolve``): what the hot path
    (``prepare``, ``combine``) takes as given, without checking again."""

    template: Template  # the prompt / instruction / conversion wrapped around each text
    truncation: str  # "end" | "start" | "none", known to be one of them
    dimensions: int | None  # None: the model's width; else 1..width
    normalize: bool  # the model's default already applied
    chunked: bool
    input_type: str | None
    outputs: tuple[str, ...] = ("dense",)  # known to be offered by the model, no duplicates


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray  # float32 [n, dimensions]; [n, 0] when "dense" was not asked for
    token_counts: list[int]  # per text, as the model saw it (chunks summed)
    fingerprint: str = ""  # the model's Fingerprint.digest: vectors with equal ones are comparable
    # per text: (token ids int32 ascending, weights float32 > 0), when "sparse" was asked for
    sparse: list[tuple[np.ndarray, np.ndarray]] | None = None
    # per text: float32 [tokens, multi_vector_dimension], when "multi_vector" was asked for
    multi_vectors: list[np.ndarray] | None = None

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


@dataclass(frozen=True)
class ScoreOptions:
    """How to score pairs (rerank) or classify texts, spelled once for every front door."""

    instruction: str | None = None  # LLM rerankers' task instruction (None: the family's default)
    truncation: str = "end"  # "end" | "start" | "none", applied as the family's reference does
    raw: bool = False  # the logits without the family's activation (sigmoid, P("yes"), softmax)
    # rerank / score: each document cut to its first N tokens before scoring (Cohere's
    # max_tokens_per_doc); None: only the model's own limit applies
    max_document_tokens: int | None = None


@dataclass(frozen=True)
class Scored:
    """One relevance score per pair (per document for a rerank), in the order given."""

    scores: np.ndarray  # float32 [n]
    token_counts: list[int]  # per pair, as the model saw it (prompt and special tokens included)
    fingerprint: str = ""  # the model's Fingerprint.digest: scores with equal ones are comparable

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


@dataclass(frozen=True)
class Classified:
    """Per text, one score per label (probabilities unless raw)."""

    scores: np.ndarray  # float32 [n, len(labels)]
    labels: tuple[str, ...]
    token_counts: list[int]
    fingerprint: str = ""  # the model's Fingerprint.digest

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


@dataclass(frozen=True)
class Limits:
    max_inputs: int = 2048
    max_text_bytes: int = 1024 * 1024
    max_request_bytes: int = 8 * 1024 * 1024
    # a request's multi-vector floats (tokens x width), estimated before the forward: 128 MB of float32
    max_multi_vector_values: int = 32 * 1024 * 1024


@dataclass(frozen=True)
class ModelFacts:
    """What a caller may know about a served model (ListModels, /v1/models, /info, IndexInfo)."""

    name: str
    source: str  # what binds an index to this model across renames
    dimension: int
    max_length: int
    is_decoder: bool
    dtype: str
    device: str
    deterministic: bool
    quantize: str
    quantization: str
    remote_code: bool
    settings: Any  # ModelSettings: pooling, prompts, recipe sources, warnings
    token_budget: int
    max_batch_size: int
    default: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""  # Fingerprint.digest: 16 hex characters over weights + recipe + numerics
    fingerprint_parts: dict[str, str] = field(default_factory=dict)  # what the digest is made of
    task: str = "embed"  # "embed" | "rerank" | "classify"
    labels: tuple[str, ...] = ()  # rerank / classify: the label of each score column (a reranker: one)
    # rerank / classify: how scores are made (family, activation, prompt, LM-head token ids), with sources
    scoring: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ("dense",)  # what EmbedOptions.outputs may ask of this model
    sparse_dimension: int | None = None  # vocabulary size, when "sparse" is offered
    multi_vector_dimension: int | None = None  # width of each token vector, when "multi_vector" is offered
    # how a CPU forward uses its threads: "batches" (forward_workers side by side) or "operators"; "" on
    # a GPU or for the int8 graph (ONNX Runtime's own threads)
    cpu_parallelism: str = ""
    forward_workers: int = 1
