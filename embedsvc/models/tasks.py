"""What a checkpoint is for — embed, rerank or classify — and how its scores are made, from its files.

* ``*ForSequenceClassification`` with one label: a cross-encoder (rerank). Its activation is the one
  sentence-transformers' CrossEncoder applies: ``activation_fn`` in config_sentence_transformers.json
  (sentence-transformers >= 6), ``sentence_transformers.activation_fn`` in config.json (4 and 5),
  ``sbert_ce_default_activation_function`` in config.json (< 4), else Sigmoid.
* ``*ForSequenceClassification`` with several labels: a classifier (classify), one score per
  ``id2label`` entry: softmax, or sigmoid per label for ``problem_type`` multi_label_classification
  (what TEI's /predict returns); a CrossEncoder's declared activation wins where its files name one.
* ``*ForCausalLM`` LLM rerankers, by name (their files are those of a plain LLM) or ``profile``:
  Qwen3-Reranker (its prompt, P("yes") against "no" at the last token) and bge-reranker-v2-gemma
  (FlagEmbedding's prompt, the "Yes" logit). Only the LM-head rows of those tokens are computed.

A ``task`` model option overrides what the files say where the checkpoint can serve it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from embedsvc.errors import InvalidInputError, ModelLoadError

TASKS = ("embed", "rerank", "classify")
CROSS_ENCODER = "cross-encoder"
CLASSIFIER = "classifier"
QWEN3_RERANKER = "qwen3-reranker"
BGE_GEMMA_RERANKER = "bge-reranker-gemma"
# families named by ``profile=...``; the embedding profiles live in models/profiles.py
SCORING_FAMILIES = (CROSS_ENCODER, CLASSIFIER, QWEN3_RERANKER, BGE_GEMMA_RERANKER)
LLM_RERANKERS = (QWEN3_RERANKER, BGE_GEMMA_RERANKER)
_NAME_PATTERNS = (
    (re.compile(r"qwen3-reranker", re.IGNORECASE), QWEN3_RERANKER),
    (re.compile(r"bge-reranker-v2-gemma", re.IGNORECASE), BGE_GEMMA_RERANKER),
)

# Qwen3-Reranker's model card: a chat around "<Instruct>: ...\n<Query>: ...\n<Document>: ...",
# answered by the next token, "yes" or "no"
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_MAX_LENGTH = 8192  # the model card's max_length
# FlagEmbedding's LLM reranker (bge-reranker-v2-gemma): "A: query" "\n" "B: passage" "\n" prompt
GEMMA_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)
GEMMA_QUERY_PREFIX = "A: "
GEMMA_PASSAGE_PREFIX = "B: "
GEMMA_SEP = "\n"
GEMMA_MAX_LENGTH = 512  # FlagEmbedding's compute_score default (the passage's tokens; the query's 3/4)

# torch.nn activations a file may name (by class name: the package path moved between releases)
ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity", "Tanh": "tanh", "Softmax": "softmax"}


@dataclass(frozen=True)
class ScoringRecipe:
    """How a served reranker or classifier turns a forward pass into scores."""

    task: str  # "rerank" | "classify"
    family: str  # one of SCORING_FAMILIES
    reason: str  # why this family: files, name or option
    activation: str  # sigmoid | identity | tanh | softmax | p_yes (Qwen3: softmax over no/yes)
    activation_source: str
    labels: tuple[str, ...] = ()
    instruction: str | None = None  # Qwen3-Reranker: the default instruction
    warnings: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)


def _architectures(config: dict[str, Any]) -> list[str]:
    return [str(a) for a in config.get("architectures") or []]


def is_sequence_classifier(config: dict[str, Any]) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in _architectures(config))


def _labels(config: dict[str, Any]) -> tuple[str, ...]:
    id2label = config.get("id2label") or {}
    if id2label:
        return tuple(str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k)))
    n = int(config.get("num_labels") or 2)
    return tuple(f"LABEL_{i}" for i in range(n))


def _declared_activation(
    config: dict[str, Any], st_config: dict[str, Any]
) -> tuple[str | None, str, tuple[str, ...]]:
    """The activation a CrossEncoder's files declare (name, source, warnings); None where none does."""
    declared = [
        (st_config.get("activation_fn"), "config_sentence_transformers.json activation_fn"),
        (
            (config.get("sentence_transformers") or {}).get("activation_fn"),
            "config.json sentence_transformers.activation_fn",
        ),
        (
            config.get("sbert_ce_default_activation_function"),
            "config.json sbert_ce_default_activation_function",
        ),
    ]
    for dotted, source in declared:
        if not dotted:
            continue
        name = str(dotted).rsplit(".", 1)[-1]
        if not str(dotted).startswith("torch.") or name not in ACTIVATIONS:
            # sentence-transformers itself falls back to its default for code it does not trust
            return (
                None,
                "default",
                (
                    f"{source} names {dotted!r}, not a torch activation embedsvc applies; "
                    "the default is used as sentence-transformers does",
                ),
            )
        return ACTIVATIONS[name], source, ()
    return None, "default", ()


def _is_cross_encoder_files(config: dict[str, Any], st_config: dict[str, Any]) -> bool:
    return (
        st_config.get("model_type") == "CrossEncoder"
        or "sentence_transformers" in config
        or "sbert_ce_default_activation_function" in config
    )


def detect_family(source_name: str, config: dict[str, Any], explicit: str | None) -> tuple[str | None, str]:
    """The scoring family and why, or (None, reason) for an embedding model."""
    if explicit in SCORING_FAMILIES:
        return explicit, "option profile"
    if is_sequence_classifier(config):
        n = len(config.get("id2label") or {}) or int(config.get("num_labels") or 2)
        arch = _architectures(config)[0]
        if n == 1:
            return CROSS_ENCODER, f"config.json: {arch} with one label"
        return CLASSIFIER, f"config.json: {arch} with {n} labels (id2label)"
    if explicit is None:
        for pattern, family in _NAME_PATTERNS:
            if pattern.search(source_name):
                return family, f"name matches {pattern.pattern!r}"
    return None, "no reranker or classifier recognised"


def scoring_recipe(
    source_name: str,
    config: dict[str, Any],
    st_config: dict[str, Any],
    *,
    task: str | None = None,
    profile: str | None = None,
) -> ScoringRecipe | None:
    """The recipe of a reranker or classifier, or None where the checkpoint is served as an embedder."""
    if task is not None and task not in TASKS:
        raise InvalidInputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}", field="task")
    family, reason = detect_family(source_name, config, profile)
    if task == "embed" or (family is None and task is None):
        return None
    if family is None:
        raise ModelLoadError(
            f"{source_name}: task {task!r} was asked for, but the files show an embedding model. embedsvc "
            "reranks with *ForSequenceClassification checkpoints (cross-encoders) or, named by "
            f"profile=..., with the LLM rerankers {', '.join(LLM_RERANKERS)}"
        )
    sources = {"family": reason}
    if family == QWEN3_RERANKER:
        _refuse(task, "classify", family)
        return ScoringRecipe(
            "rerank",
            family,
            reason,
            "p_yes",
            "Qwen3-Reranker model card: softmax over the 'no'/'yes' logits",
            instruction=QWEN3_INSTRUCTION,
            sources=sources,
        )
    if family == BGE_GEMMA_RERANKER:
        _refuse(task, "classify", family)
        return ScoringRecipe(
            "rerank",
            family,
            reason,
            "sigmoid",
            "FlagEmbedding compute_score(normalize=True)",
            sources=sources,
        )
    if not is_sequence_classifier(config):
        raise ModelLoadError(
            f"{source_name}: profile {family!r} needs a *ForSequenceClassification checkpoint; config.json "
            f"names {', '.join(_architectures(config)) or 'no architecture'}"
        )
    labels = _labels(config)
    declared, activation_source, warnings = _declared_activation(config, st_config)
    if family == CROSS_ENCODER and len(labels) == 1:
        resolved_task = task or "rerank"
        activation = declared or "sigmoid"
        if declared is None:
            activation_source = "sentence-transformers' CrossEncoder default for one label"
        return ScoringRecipe(
            resolved_task,
            family,
            reason,
            activation,
            activation_source,
            labels,
            warnings=warnings,
            sources=sources,
        )
    if task == "rerank":
        raise ModelLoadError(
            f"{source_name} has {len(labels)} labels ({', '.join(labels)}): a classifier, not a reranker "
            "with one relevance score; serve it with task 'classify'"
        )
    if declared is not None and _is_cross_encoder_files(config, st_config):
        activation = declared
    elif config.get("problem_type") == "multi_label_classification":
        activation, activation_source = "sigmoid", "config.json problem_type multi_label_classification"
    else:
        activation, activation_source = (
            "softmax",
            "single-label classification (TEI /predict, vLLM /classify)",
        )
    return ScoringRecipe(
        "classify",
        CLASSIFIER,
        reason,
        activation,
        activation_source,
        labels,
        warnings=warnings,
        sources=sources,
    )


def _refuse(task: str | None, refused: str, family: str) -> None:
    if task == refused:
        raise ModelLoadError(f"a {family} model reranks; task {refused!r} does not apply to it")
