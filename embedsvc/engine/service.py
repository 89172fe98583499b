"""The engine's one door: a served model that takes texts and options and returns vectors — or, for a
reranker or classifier (``engine/scorer.py``), scores.

Every front door — gRPC servicers, the HTTP routes, the IndexService, the pipeline's local mode — calls
a :class:`ModelService` and only converts its own wire format to :class:`EmbedOptions` and back. The
service owns what happens in between, in this order: size checks and a work estimate (before any
tokenizing), the embedding cache when it is on (texts already embedded are not queued again),
admission against the queue bound, tokenizing off the event loop, scheduling, combining chunks, token
counts; every answer carries the model's fingerprint. It also answers what callers may know about
the model (:class:`ModelFacts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from embedsvc.engine.cache import EmbeddingCache, Lookup
from embedsvc.engine.embedder import Embedder
from embedsvc.engine.fingerprint import Fingerprint, served_fingerprint
from embedsvc.engine.inputs import EncodedInput
from embedsvc.engine.options import (
    Classified,
    Embedded,
    EmbedOptions,
    Limits,
    ModelFacts,
    ResolvedOptions,
    Scored,
    ScoreOptions,
)
from embedsvc.engine.outputs import Forwarded
from embedsvc.engine.scheduler import DEFAULT_TENANT, BatchRecord, BatchScheduler
from embedsvc.engine.scorer import SAMPLE_QUERY, Scorer
from embedsvc.errors import InvalidInputError, PayloadTooLargeError, TaskMismatchError, TextTooLongError

T = TypeVar("T")

INLINE_TOKENIZE_CHARS = 2048  # requests this small are tokenized on the event loop (well under 1 ms)
INLINE_TOKENIZE_TEXTS = 16  # ... when they are also this few texts (the per-text work is in Python)
SMALL_REQUEST_BYTES = 64 * 1024  # tokenized on the small-request thread, never behind a big request
DEFAULT_OPTIONS = EmbedOptions()
DEFAULT_SCORE_OPTIONS = ScoreOptions()
# the call that serves each task, for TaskMismatchError's message
_CALLS = {"embed": "embed", "rerank": "rerank or score", "classify": "classify"}


class Tokenizers:
    """Where tokenizing runs: on the event loop for tiny requests, on a thread of its own for small
    ones (never behind a big request), on a pool for the rest."""

    def __init__(self, threads: int) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="tokenize")
        self.small = ThreadPoolExecutor(1, thread_name_prefix="tokenize-small")

    async def run(self, texts: Sequence[str], size: int, work: Callable[[], T]) -> T:
        if size <= INLINE_TOKENIZE_CHARS and len(texts) <= INLINE_TOKENIZE_TEXTS:
            return work()  # a thread hop would cost more than tokenizing here
        lane = self.small if size <= SMALL_REQUEST_BYTES else self.pool
        return await asyncio.get_running_loop().run_in_executor(lane, work)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.small.shutdown(wait=False, cancel_futures=True)


def check_inputs(texts: Any, limits: Limits, *, max_length: int, chunked: bool) -> tuple[list[str], int, int]:
    """The texts as a list, their UTF-8 bytes, and an estimate of their tokens (bytes / 3, capped at the
    model's length per text unless chunked); InvalidInputError naming the field or limit otherwise.

    Sizes are limited per text and per request, well under the message limit: a 40 MB text once cost
    9.8 GB of memory and minutes of tokenizing."""
    if isinstance(texts, str | bytes):
        raise InvalidInputError("inputs must be a list of strings, not a single string", field="inputs")
    items = list(texts)
    if not items:
        raise InvalidInputError("inputs must hold at least one text", field="inputs")
    if len(items) > limits.max_inputs:
        raise InvalidInputError(
            f"{len(items)} inputs in one request; the limit is {limits.max_inputs} "
            "(max_inputs_per_request): split the request",
            field="inputs",
        )
    total_bytes = 0
    tokens = 0
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise InvalidInputError(
                f"inputs[{i}] is {type(text).__name__}, expected a string", field="inputs"
            )
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if size > limits.max_text_bytes:
            raise PayloadTooLargeError(
                f"input {i} is {size} bytes; the limit is {limits.max_text_bytes} bytes per text "
                "(max_text_bytes): split it into several inputs, or raise the limit",
                field="inputs",
            )
        total_bytes += size
        estimate = size // 3 + 2
        tokens += estimate if chunked else min(estimate, max_length)
    if total_bytes > limits.max_request_bytes:
        raise PayloadTooLargeError(
            f"the request's texts are {total_bytes} bytes; the limit is {limits.max_request_bytes} bytes "
            "per request (max_request_bytes): send them in several requests",
            field="inputs",
        )
    return items, total_bytes, tokens


def _text_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def check_pairs(pairs: Any, limits: Limits, *, max_length: int) -> tuple[list[tuple[str, str]], int, int]:
    """The (query, document) pairs as a list, their UTF-8 bytes (both texts counted), and an estimate of
    their tokens (bytes / 3, capped at the model's length per pair); InvalidInputError otherwise.
    The limits are check_inputs' ones, a pair counting as one input."""
    if isinstance(pairs, str | bytes):
        raise InvalidInputError("pairs must be a list of (query, document) pairs", field="pairs")
    items = list(pairs)
    if not items:
        raise InvalidInputError("pairs must hold at least one pair", field="pairs")
    if len(items) > limits.max_inputs:
        raise InvalidInputError(
            f"{len(items)} pairs in one request; the limit is {limits.max_inputs} "
            "(max_inputs_per_request): split the request",
            field="pairs",
        )
    out: list[tuple[str, str]] = []
    total_bytes = 0
    tokens = 0
    for i, pair in enumerate(items):
        if isinstance(pair, str | bytes) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InvalidInputError(f"pairs[{i}] must be a (query, document) pair of strings", field="pairs")
        query, document = pair
        if not isinstance(query, str) or not isinstance(document, str):
            raise InvalidInputError(
                f"pairs[{i}] holds {type(query).__name__} and {type(document).__name__}, "
                "expected two strings",
                field="pairs",
            )
        size = _text_bytes(query) + _text_bytes(document)
        if size > limits.max_text_bytes:
            raise PayloadTooLargeError(
                f"pair {i} is {size} bytes; the limit is {limits.max_text_bytes} bytes per input "
                "(max_text_bytes): shorten the document, or raise the limit",
                field="pairs",
            )
        total_bytes += size
        tokens += min(size // 3 + 4, max_length)
        out.append((query, document))
    if total_bytes > limits.max_request_bytes:
        raise PayloadTooLargeError(
            f"the request's pairs are {total_bytes} bytes; the limit is {limits.max_request_bytes} bytes "
            "per request (max_request_bytes): send them in several requests",
            field="pairs",
        )
    return out, total_bytes, tokens


def measure_throughput(model: Embedder | Scorer) -> float:
    """Tokens per second of one full forward pass: the unit a queue bound in seconds is measured in."""
    words = max(8, min(model.max_length, 128) // 2)
    text = "the quick brown fox jumps over the lazy dog " * (words // 9 + 1)
    if isinstance(model, Scorer):
        encoded = (
            model.prepare_texts([text] * 8)
            if model.task == "classify"
            else model.prepare_pairs([(SAMPLE_QUERY, text)] * 8)
        )
        forward: Callable[[Any], Any] = model.forward
    else:
        # every output the model offers: the slowest request it will be asked for (SPLADE's vocabulary head)
        encoded = model.prepare([text] * 8, outputs=model.outputs)
        forward = model.forward_outputs if model.heads is not None else model.forward
    forward(encoded)  # warm-up: first calls allocate
    started = time.perf_counter()
    forward(encoded)
    return sum(len(e.ids) for e in encoded) / max(time.perf_counter() - started, 1e-6)


class ModelService:
    """One served model: its embedder (or scorer: rerankers, classifiers), its batch scheduler, the
    shared tokenizer threads."""

    def __init__(
        self,
        name: str,
        embedder: Embedder | Scorer,
        scheduler: BatchScheduler | None,
        tokenizers: Tokenizers | None,
        limits: Limits,
        *,
        default: bool = False,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self.name = name
        self._model = embedder
        self._scheduler = scheduler
        self._tokenizers = tokenizers
        self.limits = limits
        self.default = default
        # hashed once here, at load (weight digests cached on disk): every answer carries it
        # a scorer's: its trunk's and its scoring recipe (activation, prompt, LM-head token ids)
        self.fingerprint: Fingerprint = served_fingerprint(embedder)
        self.cache = cache  # per-text results in front of the scheduler (engine/cache.py); None: off

    @classmethod
    def start(
        cls,
        embedder: Embedder | Scorer,
        tokenizers: Tokenizers,
        limits: Limits,
        *,
        tokens_per_second: float,
        max_queue_requests: int,
        max_queue_tokens: int,
        max_queue_seconds: float,
        batch_wait_s: float,
        on_batch: Callable[[BatchRecord], None] | None = None,
        default: bool = False,
        cache: EmbeddingCache | None = None,
    ) -> ModelService:
        """A served model with its scheduler running on this event loop."""
        scheduler = BatchScheduler(
            # models with sparse / multi-vector heads: one forward gives every output a request asks for
            embedder.forward_outputs
            if isinstance(embedder, Embedder) and embedder.heads is not None
            else embedder.forward,
            name=embedder.name,
            token_budget=embedder.options.token_budget,
            max_batch_size=embedder.options.max_batch_size,
            max_queue_requests=max_queue_requests,
            max_queue_tokens=max_queue_tokens,
            max_queue_seconds=max_queue_seconds,
            batch_wait_s=batch_wait_s,
            tokens_per_second=tokens_per_second,
            on_batch=on_batch,
        )
        scheduler.start()
        return cls(embedder.name, embedder, scheduler, tokenizers, limits, default=default, cache=cache)

    @classmethod
    def in_process(
        cls, embedder: Embedder | Scorer, limits: Limits | None = None, *, cache: EmbeddingCache | None = None
    ) -> ModelService:
        """For callers in this thread (the local pipeline): ``embed_now`` / ``score_now`` /
        ``classify_now`` only, no queue."""
        return cls(
            embedder.name,
            embedder,
            None,
            None,
            limits or Limits(max_text_bytes=2**31, max_request_bytes=2**31),
            cache=cache,
        )

    @property
    def scheduler(self) -> BatchScheduler:
        if self._scheduler is None:
            raise RuntimeError(f"model {self.name} runs in process only: use embed_now")
        return self._scheduler

    # ---------------------------------------------------------------- task
    @property
    def task(self) -> str:
        """ "embed", "rerank" or "classify"."""
        return self._model.task if isinstance(self._model, Scorer) else "embed"

    @property
    def labels(self) -> tuple[str, ...]:
        """The label of each score column (a classifier's labels, a reranker's one); () for an embedder."""
        return self._model.labels if isinstance(self._model, Scorer) else ()

    @property
    def _embedder(self) -> Embedder:
        """The embedder behind embed / tokenize; TaskMismatchError for a reranker or classifier."""
        if isinstance(self._model, Scorer):
            raise TaskMismatchError(
                f"model {self.name} is a {self.task} model, it does not embed: call {_CALLS[self.task]}",
                field="model",
            )
        return self._model

    def _scorer(self, call: str) -> Scorer:
        """The scorer behind ``call``; TaskMismatchError where the model's task is another."""
        model = self._model
        wanted = "classify" if call == "classify" else "rerank"
        if not isinstance(model, Scorer) or model.task != wanted:
            raise TaskMismatchError(
                f"model {self.name} is a{'n' if self.task == 'embed' else ''} {self.task} model; "
                f"{call} needs a {wanted} model: call {_CALLS[self.task]}",
                field="model",
            )
        return model

    @property
    def _trunk(self) -> Embedder:
        return self._model.trunk if isinstance(self._model, Scorer) else self._model

    # ---------------------------------------------------------------- facts
    @property
    def facts(self) -> ModelFacts:
        e = self._trunk
        scorer = self._model if isinstance(self._model, Scorer) else None
        return ModelFacts(
            name=self.name,
            source=str(e.loaded.source.source_name),
            dimension=0 if scorer else e.dimension,
            max_length=scorer.max_length if scorer else e.max_length,
            is_decoder=e.is_decoder,
            dtype=str(e.dtype).removeprefix("torch."),
            device=str(e.device),
            deterministic=e.options.deterministic,
            quantize=e.options.quantize,
            quantization=e.quantization,
            remote_code=e.loaded.remote_code,
            settings=e.settings,
            token_budget=e.options.token_budget,
            max_batch_size=e.options.max_batch_size,
            default=self.default,
            fingerprint=self.fingerprint.digest,
            fingerprint_parts=dict(self.fingerprint.parts),
            task=self.task,
            labels=self.labels,
            scoring=scorer.describe() if scorer else {},
            outputs=e.outputs,
            sparse_dimension=e.heads.sparse_dimension if e.heads is not None else None,
            multi_vector_dimension=e.heads.multi_vector_dimension if e.heads is not None else None,
            cpu_parallelism=e.cpu_parallelism,
            forward_workers=e.forward_workers,
        )

    @property
    def source(self) -> str:
        return str(self._trunk.loaded.source.source_name)

    @property
    def dimension(self) -> int:
        """The vectors' width; 0 for a reranker or classifier (no vectors)."""
        return 0 if isinstance(self._model, Scorer) else self._model.dimension

    @property
    def tokenizer(self) -> Any:
        return self._trunk.tokenizer

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of the tokenizer's special tokens (CLS, SEP, EOS, ...), for doors that mark them."""
        return frozenset(self._trunk.tokenizer.all_special_ids)

    # ------------------------------------------------------------- requests

    async def embed(
        self,
        texts: Sequence[str],
        options: EmbedOptions = DEFAULT_OPTIONS,
        *,
        timeout: float | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Embedded:
        """Admit (before tokenizing: a refusal comes at once), tokenize off the loop, batch, combine."""
        started = time.perf_counter()
        resolved = self._embedder.resolve(options)  # once, before any work: prepare/combine trust it
        items, size, estimate = check_inputs(
            texts, self.limits, max_length=self._embedder.max_length, chunked=options.chunked
        )
        self._check_multi_vector_size(resolved, estimate)
        if self.cache is not None and resolved.outputs == ("dense",):  # the cache holds dense vectors only
            lookup = self.cache.lookup(self.fingerprint.digest, resolved, items)
            if lookup.complete:  # every text known: the scheduler never sees this request
                return self._from_cache(lookup, resolved, None)
            # the texts left to compute, and their share of the work estimate
            share = len(lookup.missing) / len(items)
            with _caller_index(lookup):
                computed = await self._compute(
                    lookup.missing,
                    round(size * share),
                    max(1, round(estimate * share)),
                    resolved,
                    started=started,
                    timeout=timeout,
                    tenant=tenant,
                )
            return self._from_cache(lookup, resolved, computed)
        return await self._compute(
            items, size, estimate, resolved, started=started, timeout=timeout, tenant=tenant
        )

    async def _compute(
        self,
        items: list[str],
        size: int,
        estimate: int,
        resolved: ResolvedOptions,
        *,
        started: float,
        timeout: float | None,
        tenant: str,
    ) -> Embedded:
        with self.scheduler.admit(estimate, tenant):
            assert self._tokenizers is not None
            encoded = await self._tokenizers.run(items, size, lambda: self._embedder.prepare(items, resolved))
            remaining = None if timeout is None else timeout - (time.perf_counter() - started)
            pooled = await self.scheduler.submit(encoded, timeout=remaining, tenant=tenant)
        return self._combine(pooled, encoded, len(items), resolved)

    def embed_now(self, texts: Sequence[str], options: EmbedOptions = DEFAULT_OPTIONS) -> Embedded:
        """In this thread, without the scheduler: for in-process callers such as the local pipeline."""
        resolved = self._embedder.resolve(options)
        items, _, estimate = check_inputs(
            texts, self.limits, max_length=self._embedder.max_length, chunked=options.chunked
        )
        self._check_multi_vector_size(resolved, estimate)
        if self.cache is None or resolved.outputs != ("dense",):
            return self._compute_now(items, resolved)
        lookup = self.cache.lookup(self.fingerprint.digest, resolved, items)
        if lookup.complete:
            return self._from_cache(lookup, resolved, None)
        with _caller_index(lookup):
            computed = self._compute_now(lookup.missing, resolved)
        return self._from_cache(lookup, resolved, computed)

    def _compute_now(self, items: list[str], resolved: ResolvedOptions) -> Embedded:
        encoded = self._embedder.prepare(items, resolved)
        e = self._embedder
        result = e.forward_outputs(encoded) if e.heads is not None else e.forward(encoded)
        return self._combine(result, encoded, len(items), resolved)

    def _check_multi_vector_size(self, resolved: ResolvedOptions, estimated_tokens: int) -> None:
        """Multi-vector answers grow with every token: bounded before any work, from the estimate."""
        heads = self._embedder.heads
        if "multi_vector" not in resolved.outputs or heads is None or not heads.multi_vector_dimension:
            return
        values = estimated_tokens * heads.multi_vector_dimension
        limit = self.limits.max_multi_vector_values
        if values > limit:
            raise PayloadTooLargeError(
                f"the request's multi-vector output would hold about {values} floats (about "
                f"{estimated_tokens} tokens x {heads.multi_vector_dimension}); the limit is {limit} "
                "(max_multi_vector_values): send fewer or shorter texts per request, or raise the limit",
                field="inputs",
            )

    def _from_cache(self, lookup: Lookup, resolved: ResolvedOptions, computed: Embedded | None) -> Embedded:
        """A request's answer from its cache hits and the rows just computed (which are kept)."""
        assert self.cache is not None
        if computed is not None:
            self.cache.store(lookup, computed.vectors, computed.token_counts)
        width = resolved.dimensions or self._embedder.dimension
        vectors, tokens = lookup.assemble(
            width,
            None if computed is None else computed.vectors,
            () if computed is None else computed.token_counts,
        )
        return Embedded(vectors, tokens, self.fingerprint.digest)

    def _combine(
        self, pooled: Any, encoded: list[EncodedInput], n: int, resolved: ResolvedOptions
    ) -> Embedded:
        counts = self._embedder.count_tokens(encoded, n)
        digest = self.fingerprint.digest
        if isinstance(pooled, Forwarded):
            vectors, sparse, multi = self._embedder.combine_outputs(pooled, encoded, n, resolved)
            return Embedded(vectors, counts, digest, sparse=sparse, multi_vectors=multi)
        return Embedded(self._embedder.combine(pooled, encoded, n, resolved), counts, digest)

    def sparse_tokens(self, ids: Sequence[int]) -> list[str]:
        """Token strings of a sparse output's ids (the tokenizer stays inside the engine)."""
        return self._embedder.sparse_tokens(ids)

    async def tokenize(
        self, texts: Sequence[str], options: EmbedOptions = DEFAULT_OPTIONS
    ) -> list[tuple[list[int], list[str]]]:
        """(ids, token strings) per text, as the model would see them."""
        # tokens do not depend on the outputs asked for: any the model offers will do
        resolved = self._embedder.resolve(dataclasses.replace(options, outputs=self._embedder.outputs))
        items, size, _ = check_inputs(texts, self.limits, max_length=self._embedder.max_length, chunked=False)
        assert self._tokenizers is not None
        encoded = await self._tokenizers.run(items, size, lambda: self._embedder.prepare(items, resolved))
        return [(e.ids, self._embedder.tokenizer.convert_ids_to_tokens(e.ids)) for e in encoded]

    # ------------------------------------------------ rerankers, classifiers

    async def score(
        self,
        pairs: Sequence[tuple[str, str]],
        options: ScoreOptions = DEFAULT_SCORE_OPTIONS,
        *,
        timeout: float | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Scored:
        """One relevance score per (query, document) pair, in order; admitted, tokenized off the loop,
        batched and bounded by deadlines as embed is."""
        started = time.perf_counter()
        scorer = self._scorer("score")
        scorer.check_options(options)
        items, size, estimate = check_pairs(pairs, self.limits, max_length=scorer.max_length)
        logits, encoded = await self._run(
            items, size, estimate, lambda: scorer.prepare_pairs(items, options), started, timeout, tenant
        )
        return Scored(
            scorer.finish(logits, options.raw),
            scorer.count_tokens(encoded, len(items)),
            self.fingerprint.digest,
        )

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        options: ScoreOptions = DEFAULT_SCORE_OPTIONS,
        *,
        timeout: float | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Scored:
        """The documents' scores against ``query``, in document order (doors sort and cut top_n)."""
        return await self.score(self._rerank_pairs(query, documents), options, timeout=timeout, tenant=tenant)

    async def classify(
        self,
        texts: Sequence[str],
        options: ScoreOptions = DEFAULT_SCORE_OPTIONS,
        *,
        timeout: float | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Classified:
        """Per text, one score per label (softmax / sigmoid as the model's recipe says, or raw logits)."""
        started = time.perf_counter()
        scorer = self._scorer("classify")
        scorer.check_options(options)
        items, size, estimate = check_inputs(texts, self.limits, max_length=scorer.max_length, chunked=False)
        logits, encoded = await self._run(
            items, size, estimate, lambda: scorer.prepare_texts(items, options), started, timeout, tenant
        )
        return Classified(
            scorer.finish(logits, options.raw),
            scorer.labels,
            scorer.count_tokens(encoded, len(items)),
            self.fingerprint.digest,
        )

    def score_now(
        self, pairs: Sequence[tuple[str, str]], options: ScoreOptions = DEFAULT_SCORE_OPTIONS
    ) -> Scored:
        """In this thread, without the scheduler: for in-process callers."""
        scorer = self._scorer("score")
        scorer.check_options(options)
        items, _, _ = check_pairs(pairs, self.limits, max_length=scorer.max_length)
        encoded = scorer.prepare_pairs(items, options)
        return Scored(
            scorer.finish(scorer.forward(encoded), options.raw),
            scorer.count_tokens(encoded, len(items)),
            self.fingerprint.digest,
        )

    def rerank_now(
        self, query: str, documents: Sequence[str], options: ScoreOptions = DEFAULT_SCORE_OPTIONS
    ) -> Scored:
        return self.score_now(self._rerank_pairs(query, documents), options)

    def classify_now(self, texts: Sequence[str], options: ScoreOptions = DEFAULT_SCORE_OPTIONS) -> Classified:
        """In this thread, without the scheduler: for in-process callers."""
        scorer = self._scorer("classify")
        scorer.check_options(options)
        items, _, _ = check_inputs(texts, self.limits, max_length=scorer.max_length, chunked=False)
        encoded = scorer.prepare_texts(items, options)
        return Classified(
            scorer.finish(scorer.forward(encoded), options.raw),
            scorer.labels,
            scorer.count_tokens(encoded, len(items)),
            self.fingerprint.digest,
        )

    def _rerank_pairs(self, query: Any, documents: Any) -> list[tuple[str, str]]:
        self._scorer("rerank")
        if not isinstance(query, str):
            raise InvalidInputError(f"query is {type(query).__name__}, expected a string", field="query")
        if isinstance(documents, str | bytes):
            raise InvalidInputError(
                "documents must be a list of strings, not a single string", field="documents"
            )
        docs = list(documents)
        for i, doc in enumerate(docs):
            if not isinstance(doc, str):
                raise InvalidInputError(
                    f"documents[{i}] is {type(doc).__name__}, expected a string", field="documents"
                )
        if not docs:
            raise InvalidInputError("documents must hold at least one text", field="documents")
        return [(query, doc) for doc in docs]

    async def _run(
        self,
        items: Sequence[Any],
        size: int,
        estimate: int,
        prepare: Callable[[], list[EncodedInput]],
        started: float,
        timeout: float | None,
        tenant: str,
    ) -> tuple[Any, list[EncodedInput]]:
        """Admission, tokenizing off the loop, the scheduler: the path embed takes, for scores."""
        with self.scheduler.admit(estimate, tenant):
            assert self._tokenizers is not None
            encoded = await self._tokenizers.run(items, size, prepare)
            remaining = None if timeout is None else timeout - (time.perf_counter() - started)
            logits = await self.scheduler.submit(encoded, timeout=remaining, tenant=tenant)
        return logits, encoded

    async def close(self) -> None:
        if self._scheduler is not None:
            await self._scheduler.close()


@contextlib.contextmanager
def _caller_index(lookup: Lookup) -> Iterator[None]:
    """A text too long names its index in the caller's request, not among the texts computed."""
    try:
        yield
    except TextTooLongError as exc:
        raise TextTooLongError(lookup.original_index(exc.index), exc.n_tokens, exc.limit) from None
