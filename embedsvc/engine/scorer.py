"""Scorer: text pairs to relevance scores (rerankers) and texts to label scores (classifiers).

A scorer is an :class:`Embedder` trunk — the same loading, packed batches, attention backends and
deterministic mode — whose pooled hidden state is read by the checkpoint's own head:

* cross-encoders and classifiers (``*ForSequenceClassification``): the trunk pools where the head
  reads (the first token for BERT / RoBERTa / XLM-R / ELECTRA / DistilBERT heads, the mean or the
  first token for ModernBERT as its config says, the last token for decoder classifiers), then the
  head's own modules run on those rows;
* LLM rerankers (``*ForCausalLM``): the trunk pools the last token and only the LM-head rows of the
  answer tokens are applied (``models/lm_head.py``).

Pairs are tokenized the way each family's reference does (``tokenize_pairs`` and friends) and packed
without padding like embeddings. ``forward`` returns raw logits; :meth:`Scorer.finish` applies the
family's activation unless a request asks for raw scores.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedsvc.engine.embedder import Embedder
from embedsvc.engine.inputs import TRUNCATIONS, EncodedInput
from embedsvc.engine.options import ScoreOptions
from embedsvc.engine.recipe import Recipe, describe_recipe
from embedsvc.errors import InvalidInputError, ModelLoadError, TextTooLongError
from embedsvc.models import tasks
from embedsvc.models.lm_head import lm_head_rows
from embedsvc.models.loading import resolve_source
from embedsvc.models.st_files import read_st_files
from embedsvc.models.tasks import ScoringRecipe

SAMPLE_QUERY = "how much protein should a female eat"
SAMPLE_DOCUMENT = "As a general guideline, the average requirement of protein for women is 46 grams per day."
_REMEDY = "pass truncation='end' or 'start'"
DEFAULT_OPTIONS = ScoreOptions()

Head = Callable[[torch.Tensor], torch.Tensor]


def _classification_head(task_model: Any, config: Any) -> tuple[str, Head, str]:
    """(where the trunk pools, the head on pooled rows, what was recognised) for a
    ``*ForSequenceClassification`` model; each family's head reads one row per sequence."""
    arch = type(task_model).__name__
    base = task_model.base_model
    classifier = getattr(task_model, "classifier", None)
    score = getattr(task_model, "score", None)
    if isinstance(score, torch.nn.Linear) and classifier is None:  # decoders: the last token
        return "last", score, f"{arch}: score(last token)"
    pooler = getattr(base, "pooler", None)
    if isinstance(classifier, torch.nn.Linear) and pooler is not None and hasattr(task_model, "dropout"):
        # BERT: pooler (dense + tanh on the first token), then the linear classifier
        return (
            "cls",
            lambda rows: classifier(pooler(rows[:, None])),
            f"{arch}: classifier(pooler(first token))",
        )
    if classifier is not None and type(classifier).__name__.endswith("ClassificationHead"):
        # RoBERTa, XLM-R, ELECTRA: the head takes the sequence and reads its first token
        return (
            "cls",
            lambda rows: classifier(rows[:, None]),
            f"{arch}: {type(classifier).__name__}(first token)",
        )
    head, drop = getattr(task_model, "head", None), getattr(task_model, "drop", None)
    if classifier is not None and head is not None and drop is not None:  # ModernBERT
        pooling = "mean" if getattr(config, "classifier_pooling", "cls") == "mean" else "cls"
        return (
            pooling,
            lambda rows: classifier(drop(head(rows))),
            f"{arch}: classifier(head({pooling} pooling))",
        )
    pre = getattr(task_model, "pre_classifier", None)
    if classifier is not None and pre is not None:  # DistilBERT
        return (
            "cls",
            lambda rows: classifier(torch.relu(pre(rows))),
            f"{arch}: classifier(relu(pre_classifier(first token)))",
        )
    raise ModelLoadError(
        f"{arch}: embedsvc does not know which token this classification head reads; supported: BERT, "
        "RoBERTa/XLM-R/ELECTRA, ModernBERT, DistilBERT and decoder (*ForSequenceClassification) heads"
    )


class PairTokenizer:
    """The Rust tokenizer, three private copies: truncating the end, the start, or not at all."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        backend = tokenizer.backend_tokenizer
        self.max_length = max_length
        self.plain = copy.deepcopy(backend)
        self.plain.no_truncation()
        self.plain.no_padding()
        self.cut: dict[str, Any] = {}
        for truncation, direction in (("end", "right"), ("start", "left")):
            own = copy.deepcopy(self.plain)
            own.enable_truncation(max_length, strategy="longest_first", direction=direction)
            self.cut[truncation] = own

    def encode(self, items: Sequence[Any], truncation: str, *, special: bool = True) -> list[Any]:
        """Encodings of texts or (text, text) pairs with the tokenizer's special tokens, cut to the
        model's limit as transformers' ``truncation="longest_first"`` does (TextTooLongError for 'none')."""
        if truncation == "none":
            encodings = self.plain.encode_batch_fast(list(items), add_special_tokens=special)
            for index, enc in enumerate(encodings):
                if len(enc.ids) > self.max_length:
                    raise TextTooLongError(index, len(enc.ids), self.max_length, _REMEDY)
            return encodings  # type: ignore[no-any-return]
        return self.cut[truncation].encode_batch_fast(list(items), add_special_tokens=special)  # type: ignore[no-any-return]

    def ids(self, text: str) -> list[int]:
        """``text``'s ids without special tokens or truncation (prompt pieces)."""
        return list(self.plain.encode(text, add_special_tokens=False).ids)

    def pieces(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.plain.encode_batch_fast(list(texts), add_special_tokens=False)]


def _cut(ids: list[int], keep: int, truncation: str, index: int, total: int, limit: int) -> list[int]:
    """``ids`` cut to ``keep`` tokens at the end ("end") or the start ("start"); "none" refuses."""
    if len(ids) <= keep:
        return ids
    if truncation == "none":
        raise TextTooLongError(index, total, limit, _REMEDY)
    return ids[:keep] if truncation == "end" else ids[len(ids) - keep :]


class Scorer:
    """Scores (query, document) pairs or classifies texts with one loaded checkpoint.

    Use :meth:`from_pretrained`; then :meth:`score` / :meth:`classify`. The :meth:`prepare_pairs` /
    :meth:`prepare_texts` / :meth:`forward` / :meth:`finish` split lets the server tokenize off the
    forward thread and batch across requests, as for embeddings."""

    def __init__(
        self,
        trunk: Embedder,
        recipe: ScoringRecipe,
        head: Head,
        *,
        max_length: int,
        head_description: str,
        token_ids: dict[str, int] | None = None,
        sources: dict[str, str] | None = None,
    ) -> None:
        self.trunk = trunk
        self.scoring = recipe
        self._head = head
        self.max_length = max_length
        self.head_description = head_description
        self.token_ids = dict(token_ids or {})
        self.sources = dict(sources or {})
        self._pairs = PairTokenizer(trunk.tokenizer, max_length)
        family = recipe.family
        if family == tasks.QWEN3_RERANKER:
            self._prefix = self._pairs.ids(tasks.QWEN3_PREFIX)
            self._suffix = self._pairs.ids(tasks.QWEN3_SUFFIX)
            if max_length <= len(self._prefix) + len(self._suffix):
                raise InvalidInputError(
                    f"max_length {max_length} leaves no room for the pair: Qwen3-Reranker's prompt alone "
                    f"takes {len(self._prefix) + len(self._suffix)} tokens",
                    field="max_length",
                )
        elif family == tasks.BGE_GEMMA_RERANKER:
            self._sep = self._pairs.ids(tasks.GEMMA_SEP)
            self._prompt = self._pairs.ids(tasks.GEMMA_PROMPT)
            tok = trunk.tokenizer
            bos = tok.bos_token_id
            # FlagEmbedding: BOS first unless the tokenizer has none or pads with it
            self._bos = [bos] if bos is not None and bos != tok.pad_token_id else []

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | None = None,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        max_length: int | None = None,
        recipe: ScoringRecipe | None = None,
        **options: Any,
    ) -> Scorer:
        """Load a reranker or classifier (``recipe`` from :func:`detect`, else detected here).

        ``options`` are the embedder's engine options (``name``, ``token_budget``, ``max_batch_size``,
        ``batching``, ``attention_backend``, ``deterministic``, ``threads``, ...) plus ``task`` and
        ``profile`` (a scoring family: cross-encoder, classifier, qwen3-reranker, bge-reranker-gemma)."""
        if recipe is None:
            recipe = detect(source, options)
            if recipe is None:
                raise ModelLoadError(
                    f"{source}: an embedding model, not a reranker or classifier; load it with Embedder"
                )
        options = {k: v for k, v in options.items() if k not in ("task", "profile")}
        if (options.get("quantize") or "none") != "none":
            raise InvalidInputError("quantize='int8' applies to embedding models only", field="quantize")
        llm = recipe.family in tasks.LLM_RERANKERS
        if llm:
            pooling, head_kind = "last", None
        else:
            pooling, head_kind = "cls", "sequence-classification"
        trunk = Embedder.from_pretrained(
            source,
            pooling=pooling,
            normalize=False,
            dtype=dtype,
            device=device,
            head=head_kind,
            **options,
        )
        loaded = trunk.loaded
        sources: dict[str, str] = {}
        token_ids: dict[str, int] = {}
        if llm:
            folder = loaded.st.transformer_dir if loaded.st else loaded.source.folder
            if recipe.family == tasks.QWEN3_RERANKER:
                token_ids = {
                    "no": trunk.tokenizer.convert_tokens_to_ids("no"),
                    "yes": trunk.tokenizer.convert_tokens_to_ids("yes"),
                }
                default_length, length_source = tasks.QWEN3_MAX_LENGTH, "Qwen3-Reranker model card"
            else:
                yes = trunk.tokenizer("Yes", add_special_tokens=False)["input_ids"]
                token_ids = {"Yes": yes[0]} if yes else {}
                default_length, length_source = tasks.GEMMA_MAX_LENGTH, "FlagEmbedding compute_score default"
            unknown = trunk.tokenizer.unk_token_id
            missing = [t for t, i in token_ids.items() if i is None or (i == unknown and unknown is not None)]
            if missing or not token_ids:
                raise ModelLoadError(
                    f"{folder}: the tokenizer has no token for {', '.join(missing) or 'Yes'}; "
                    f"a {recipe.family} model answers with it"
                )
            rows = lm_head_rows(folder, trunk.model, loaded.config, list(token_ids.values()))
            cap = getattr(loaded.config, "final_logit_softcapping", None)

            def lm_rows(pooled: torch.Tensor) -> torch.Tensor:
                logits = pooled.float() @ rows.T
                if cap:  # Gemma 2: the LM's logits are soft-capped
                    logits = torch.tanh(logits / cap) * cap
                return logits

            head: Head = lm_rows
            description = (
                "LM-head rows of "
                + ", ".join(f"{t!r}={i}" for t, i in token_ids.items())
                + " on the last token (not the whole vocabulary)"
            )
            length = max_length or min(default_length, trunk.max_length)
            sources["max_length"] = "option max_length" if max_length else length_source
            if recipe.family == tasks.BGE_GEMMA_RERANKER:
                # the passage may take max_length tokens, then "\n" + the prompt twice around it
                sep, prompt = (
                    trunk.tokenizer(tasks.GEMMA_SEP, add_special_tokens=False)["input_ids"],
                    trunk.tokenizer(tasks.GEMMA_PROMPT, add_special_tokens=False)["input_ids"],
                )
                longest = length + 2 * (len(sep) + len(prompt)) + 1
                if longest > trunk.max_length:
                    length = max(trunk.max_length - 2 * (len(sep) + len(prompt)) - 1, 1)
                    sources["max_length"] = (
                        f"{sources['max_length']}, cut to fit the prompt in {trunk.max_length} positions"
                    )
        else:
            task_model = loaded.task_model
            pooling_needed, seq_head, description = _classification_head(task_model, loaded.config)
            if pooling_needed != pooling:
                trunk.settings = dataclasses.replace(trunk.settings, pooling=pooling_needed)
            head_dtype = next(task_model.parameters()).dtype

            def classify_head(pooled: torch.Tensor) -> torch.Tensor:
                return seq_head(pooled.to(head_dtype)).float()

            head = classify_head
            length = min(max_length, trunk.max_length) if max_length else trunk.max_length
            sources["max_length"] = (
                "option max_length"
                if max_length
                else trunk.settings.sources.get("max_length", "the model's limit")
            )
        return cls(
            trunk,
            recipe,
            head,
            max_length=length,
            head_description=description,
            token_ids=token_ids,
            sources=sources,
        )

    # ------------------------------------------------------------- properties
    @property
    def name(self) -> str:
        return self.trunk.name

    @property
    def task(self) -> str:
        return self.scoring.task

    @property
    def labels(self) -> tuple[str, ...]:
        """The label of each score column: a classifier's labels; a reranker's one, its config's
        ``id2label[0]`` as TEI's /predict names it ("LABEL_0", transformers' name for an unnamed label,
        where the checkpoint has none: LLM rerankers)."""
        if self.task == "classify":
            return self.scoring.labels
        return self.scoring.labels[:1] or ("LABEL_0",)

    @property
    def tokenizer(self) -> Any:
        return self.trunk.tokenizer

    @property
    def options(self) -> Any:
        return self.trunk.options

    @property
    def recipe(self) -> Recipe:
        return self.describe_recipe()

    def describe_recipe(self, *, query: str = SAMPLE_QUERY, document: str = SAMPLE_DOCUMENT) -> Recipe:
        """What inspect shows: the scoring recipe, the engine, and the tokens of a sample pair."""
        trunk = describe_recipe(self.trunk, samples=False)
        s = self.scoring
        return dataclasses.replace(
            trunk,
            profile=s.family,
            profile_reason=s.reason,
            dimension=0,
            settings={},  # the trunk's pooling is the head's input, shown under scoring
            warnings=(*s.warnings, *trunk.warnings),
            task=s.task,
            scoring=self.describe(),
            samples={"pair" if s.task == "rerank" else "text": self.sample(query, document)},
        )

    def describe(self) -> dict[str, Any]:
        """The scoring recipe as inspect and ListModels show it: family, head, activation, prompt."""
        s = self.scoring
        out: dict[str, Any] = {
            "task": s.task,
            "family": s.family,
            "family_source": s.reason,
            "head": self.head_description,
            "activation": s.activation,
            "activation_source": s.activation_source,
            "max_length": self.max_length,
            "max_length_source": self.sources.get("max_length", ""),
        }
        if self.token_ids:
            out["lm_head_token_ids"] = dict(self.token_ids)
        if s.labels and s.task == "classify":
            out["labels"] = list(s.labels)
        if s.family == tasks.QWEN3_RERANKER:
            out["prompt"] = tasks.QWEN3_PREFIX + tasks.QWEN3_TEMPLATE + tasks.QWEN3_SUFFIX
            out["default_instruction"] = s.instruction
        elif s.family == tasks.BGE_GEMMA_RERANKER:
            out["prompt"] = (
                "<bos>"
                + tasks.GEMMA_QUERY_PREFIX
                + "{query}"
                + tasks.GEMMA_SEP
                + tasks.GEMMA_PASSAGE_PREFIX
                + "{document}"
                + tasks.GEMMA_SEP
                + tasks.GEMMA_PROMPT
            )
        if s.warnings:
            out["warnings"] = list(s.warnings)
        return out

    # ------------------------------------------------------------- tokenizing
    def check_options(self, options: ScoreOptions) -> None:
        """The one place a request's scoring options are checked against this model."""
        if options.truncation not in TRUNCATIONS:
            raise InvalidInputError(
                f"unknown truncation {options.truncation!r}; choose one of {', '.join(TRUNCATIONS)}",
                field="truncation",
            )
        if options.instruction is not None and self.scoring.family != tasks.QWEN3_RERANKER:
            raise InvalidInputError(
                f"model {self.name} ({self.scoring.family}) takes no instruction; Qwen3-Reranker models do",
                field="instruction",
            )
        limit = options.max_document_tokens
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise InvalidInputError(
                    f"max_tokens_per_doc must be an integer of at least 1, got {limit!r}",
                    field="max_tokens_per_doc",
                )
            if self.task != "rerank":
                raise InvalidInputError(
                    f"model {self.name} classifies texts; max_tokens_per_doc applies to rerankers' documents",
                    field="max_tokens_per_doc",
                )

    def prepare_pairs(
        self, pairs: Sequence[tuple[str, str]], options: ScoreOptions = DEFAULT_OPTIONS
    ) -> list[EncodedInput]:
        """One sequence per (query, document) pair, as the family's reference builds it."""
        if options.max_document_tokens is not None:
            pairs = self._cut_documents(pairs, options.max_document_tokens)
        family = self.scoring.family
        if family == tasks.QWEN3_RERANKER:
            return self._qwen3(pairs, options)
        if family == tasks.BGE_GEMMA_RERANKER:
            return self._gemma(pairs, options.truncation)
        encodings = self._pairs.encode(pairs, options.truncation)
        out = []
        for index, enc in enumerate(encodings):
            types = enc.type_ids
            second = next((k for k, t in enumerate(types) if t == 1), None)
            out.append(EncodedInput(list(enc.ids), 0, len(enc.ids), len(enc.ids), index, second))
        return out

    def _cut_documents(self, pairs: Sequence[tuple[str, str]], limit: int) -> list[tuple[str, str]]:
        """Each document cut to its first ``limit`` tokens (no special tokens), as Cohere's
        ``max_tokens_per_doc`` does, before the pair is built: the text up to where that token ends."""
        documents = [d for _, d in pairs]
        # encode_batch (not _fast): the offsets say where the limit-th token ends in the text
        encodings = self._pairs.plain.encode_batch(documents, add_special_tokens=False)
        out = []
        for (query, document), enc in zip(pairs, encodings, strict=True):
            if len(enc.ids) > limit:
                document = document[: max(end for _, end in enc.offsets[:limit])]
            out.append((query, document))
        return out

    def prepare_texts(
        self, texts: Sequence[str], options: ScoreOptions = DEFAULT_OPTIONS
    ) -> list[EncodedInput]:
        """One sequence per text, with the tokenizer's special tokens (classifiers)."""
        encodings = self._pairs.encode(texts, options.truncation)
        return [EncodedInput(list(e.ids), 0, len(e.ids), len(e.ids), i) for i, e in enumerate(encodings)]

    def _qwen3(self, pairs: Sequence[tuple[str, str]], options: ScoreOptions) -> list[EncodedInput]:
        # the model card: prefix + tokens of the formatted pair cut to what the prefix and suffix leave
        instruction = options.instruction if options.instruction is not None else self.scoring.instruction
        texts = [tasks.QWEN3_TEMPLATE.format(instruction=instruction, query=q, document=d) for q, d in pairs]
        keep = self.max_length - len(self._prefix) - len(self._suffix)
        out = []
        for index, enc in enumerate(self._pairs.plain.encode_batch_fast(texts, add_special_tokens=True)):
            total = len(enc.ids) + len(self._prefix) + len(self._suffix)
            ids = self._prefix + _cut(list(enc.ids), keep, options.truncation, index, total, self.max_length)
            ids += self._suffix
            out.append(EncodedInput(ids, 0, len(ids), len(ids), index))
        return out

    def _gemma(self, pairs: Sequence[tuple[str, str]], truncation: str) -> list[EncodedInput]:
        # FlagEmbedding's LLM reranker: "A: q" cut to 3/4 of max_length, "B: p" to max_length, then
        # [BOS] q + "\n" p cut (only the second) to max_length + the separator and prompt, + "\n" + prompt
        length = self.max_length
        queries = self._pairs.pieces([tasks.GEMMA_QUERY_PREFIX + q for q, _ in pairs])
        passages = self._pairs.pieces([tasks.GEMMA_PASSAGE_PREFIX + d for _, d in pairs])
        encode_max = length + len(self._sep) + len(self._prompt)
        out = []
        for index, (q, p) in enumerate(zip(queries, passages, strict=True)):
            total = len(self._bos) + len(q) + len(p) + 2 * len(self._sep) + len(self._prompt)
            q = _cut(q, length * 3 // 4, truncation, index, total, length)
            p = _cut(p, length, truncation, index, total, length)
            first, second = self._bos + q, self._sep + p
            overflow = len(first) + len(second) - encode_max
            if 0 < overflow < len(second):  # transformers' only_second: the second's end (or start) goes
                second = _cut(second, len(second) - overflow, truncation, index, total, length)
            ids = first + second + self._sep + self._prompt
            out.append(EncodedInput(ids, 0, len(ids), len(ids), index))
        return out

    # -------------------------------------------------------------- hot path
    @torch.inference_mode()
    def forward(self, encoded: Sequence[EncodedInput]) -> torch.Tensor:
        """Raw logits ``[n, k]`` float32: the classifier's labels, or the LLM's answer tokens."""
        if not encoded:
            return torch.empty((0, max(len(self.token_ids), len(self.scoring.labels), 1)))
        return self._head(self.trunk.forward(encoded)).float()

    def finish(self, logits: torch.Tensor, raw: bool) -> np.ndarray:
        """Scores from :meth:`forward`'s logits: ``[n]`` for rerank, ``[n, labels]`` for classify."""
        logits = logits.float().cpu()
        activation = self.scoring.activation
        if activation == "p_yes":  # Qwen3-Reranker: columns (no, yes)
            if raw:
                out = logits[:, 1] - logits[:, 0]
            else:
                out = torch.nn.functional.log_softmax(logits, dim=1)[:, 1].exp()
        else:
            if not raw:
                logits = _activate(logits, activation)
            out = logits[:, 0] if self.task == "rerank" else logits
        return out.numpy().astype(np.float32, copy=False)

    def count_tokens(self, encoded: Sequence[EncodedInput], n: int) -> list[int]:
        counts = [0] * n
        for e in encoded:
            counts[e.source] += len(e.ids)
        return counts

    # ------------------------------------------------------- in-process calls
    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        instruction: str | None = None,
        truncation: str = "end",
        raw: bool = False,
        max_document_tokens: int | None = None,
    ) -> np.ndarray:
        """Scores of ``pairs`` in order, float32 ``[n]``; ``max_document_tokens``: each document cut to
        that many tokens first."""
        options = ScoreOptions(instruction, truncation, raw, max_document_tokens)
        self.check_options(options)
        encoded = self.prepare_pairs([(q, d) for q, d in pairs], options)
        return self.finish(self.forward(encoded), raw)

    def classify(self, texts: Sequence[str], *, truncation: str = "end", raw: bool = False) -> np.ndarray:
        """Per text, one score per label, float32 ``[n, labels]``."""
        options = ScoreOptions(None, truncation, raw)
        self.check_options(options)
        return self.finish(self.forward(self.prepare_texts(list(texts), options)), raw)

    def sample(self, query: str = SAMPLE_QUERY, document: str = SAMPLE_DOCUMENT) -> dict[str, Any]:
        """The tokens a sample pair (or text) becomes, for inspect."""
        if self.task == "classify":
            (encoded,) = self.prepare_texts([document])
            text = document
        else:
            (encoded,) = self.prepare_pairs([(query, document)])
            text = f"{query!r} / {document!r}"
        return {
            "text": text,
            "tokens": self.tokenizer.convert_ids_to_tokens(encoded.ids),
            "ids": list(encoded.ids),
            "pooled": [encoded.pool_start, encoded.pool_end],
        }

    def __repr__(self) -> str:
        return (
            f"Scorer(name={self.name!r}, task={self.task!r}, family={self.scoring.family!r}, "
            f"max_length={self.max_length}, device={self.trunk.device}, dtype={self.trunk.dtype})"
        )


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=-1)
    if activation == "tanh":
        return torch.tanh(logits)
    return logits


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # loading the checkpoint reports a broken file with its own message
    return data if isinstance(data, dict) else {}


def detect(source: str | Path | None, options: dict[str, Any]) -> ScoringRecipe | None:
    """The scoring recipe the files (and the ``task`` / ``profile`` options) give, or None: an embedder."""
    if source is None:
        return (
            None
            if options.get("task") in (None, "embed")
            else tasks.scoring_recipe("bundled", {}, {}, task=options.get("task"))
        )
    resolved = resolve_source(source)
    st = read_st_files(resolved.folder)
    folder = st.transformer_dir if st else resolved.folder
    config = _json(folder / "config.json")
    st_config = _json(resolved.folder / "config_sentence_transformers.json")
    profile = options.get("profile")
    return tasks.scoring_recipe(
        resolved.source_name,
        config,
        st_config,
        task=options.get("task"),
        profile=profile if profile in tasks.SCORING_FAMILIES else None,
    )


def load_served(source: str | Path | None = None, **options: Any) -> Embedder | Scorer:
    """What a served model folder holds, loaded for its task: an Embedder, or a Scorer for a reranker
    or classifier (the ``task`` option overrides what the files say)."""
    recipe = detect(source, options)
    if recipe is None:
        return Embedder.from_pretrained(source, **options)
    return Scorer.from_pretrained(source, recipe=recipe, **options)
