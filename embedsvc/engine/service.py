"""The engine's one door: a served model that takes texts and options and returns vectors.

Every front door — gRPC servicers, the HTTP routes, the IndexService, the pipeline's local mode — calls
a :class:`ModelService` and only converts its own wire format to :class:`EmbedOptions` and back. The
service owns what happens in between, in this order: size checks and a work estimate (before any
tokenizing), admission against the queue bound, tokenizing off the event loop, scheduling, combining
chunks, token counts. It also answers what callers may know about the model (:class:`ModelFacts`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from embedsvc.engine.embedder import Embedder
from embedsvc.engine.inputs import EncodedInput
from embedsvc.engine.options import Embedded, EmbedOptions, Limits, ModelFacts, ResolvedOptions
from embedsvc.engine.outputs import Forwarded
from embedsvc.engine.scheduler import DEFAULT_TENANT, BatchRecord, BatchScheduler
from embedsvc.errors import InvalidInputError, PayloadTooLargeError

T = TypeVar("T")

INLINE_TOKENIZE_CHARS = 2048  # requests this small are tokenized on the event loop (well under 1 ms)
INLINE_TOKENIZE_TEXTS = 16  # ... when they are also this few texts (the per-text work is in Python)
SMALL_REQUEST_BYTES = 64 * 1024  # tokenized on the small-request thread, never behind a big request
DEFAULT_OPTIONS = EmbedOptions()


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


def measure_throughput(embedder: Embedder) -> float:
    """Tokens per second of one full forward pass: the unit a queue bound in seconds is measured in."""
    words = max(8, min(embedder.max_length, 128) // 2)
    text = "the quick brown fox jumps over the lazy dog " * (words // 9 + 1)
    # every output the model offers: the slowest request it will be asked for (SPLADE's vocabulary head)
    encoded = embedder.prepare([text] * 8, outputs=embedder.outputs)
    forward = embedder.forward_outputs if embedder.heads is not None else embedder.forward
    forward(encoded)  # warm-up: first calls allocate
    started = time.perf_counter()
    forward(encoded)
    return sum(len(e.ids) for e in encoded) / max(time.perf_counter() - started, 1e-6)


class ModelService:
    """One served model: its embedder, its batch scheduler, the shared tokenizer threads."""

    def __init__(
        self,
        name: str,
        embedder: Embedder,
        scheduler: BatchScheduler | None,
        tokenizers: Tokenizers | None,
        limits: Limits,
        *,
        default: bool = False,
    ) -> None:
        self.name = name
        self._embedder = embedder
        self._scheduler = scheduler
        self._tokenizers = tokenizers
        self.limits = limits
        self.default = default

    @classmethod
    def start(
        cls,
        embedder: Embedder,
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
    ) -> ModelService:
        """A served model with its scheduler running on this event loop."""
        scheduler = BatchScheduler(
            # models with sparse / multi-vector heads: one forward gives every output a request asks for
            embedder.forward_outputs if embedder.heads is not None else embedder.forward,
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
        return cls(embedder.name, embedder, scheduler, tokenizers, limits, default=default)

    @classmethod
    def in_process(cls, embedder: Embedder, limits: Limits | None = None) -> ModelService:
        """For callers in this thread (the local pipeline): ``embed_now`` only, no queue."""
        return cls(
            embedder.name,
            embedder,
            None,
            None,
            limits or Limits(max_text_bytes=2**31, max_request_bytes=2**31),
        )

    @property
    def scheduler(self) -> BatchScheduler:
        if self._scheduler is None:
            raise RuntimeError(f"model {self.name} runs in process only: use embed_now")
        return self._scheduler

    # ---------------------------------------------------------------- facts
    @property
    def facts(self) -> ModelFacts:
        e = self._embedder
        return ModelFacts(
            name=self.name,
            source=str(e.loaded.source.source_name),
            dimension=e.dimension,
            max_length=e.max_length,
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
            outputs=e.outputs,
            sparse_dimension=e.heads.sparse_dimension if e.heads is not None else None,
            multi_vector_dimension=e.heads.multi_vector_dimension if e.heads is not None else None,
        )

    @property
    def source(self) -> str:
        return str(self._embedder.loaded.source.source_name)

    @property
    def dimension(self) -> int:
        return self._embedder.dimension

    @property
    def tokenizer(self) -> Any:
        return self._embedder.tokenizer

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of the tokenizer's special tokens (CLS, SEP, EOS, ...), for doors that mark them."""
        return frozenset(self._embedder.tokenizer.all_special_ids)

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

    def _combine(
        self, pooled: Any, encoded: list[EncodedInput], n: int, resolved: ResolvedOptions
    ) -> Embedded:
        counts = self._embedder.count_tokens(encoded, n)
        if isinstance(pooled, Forwarded):
            vectors, sparse, multi = self._embedder.combine_outputs(pooled, encoded, n, resolved)
            return Embedded(vectors, counts, sparse=sparse, multi_vectors=multi)
        return Embedded(self._embedder.combine(pooled, encoded, n, resolved), counts)

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

    async def close(self) -> None:
        if self._scheduler is not None:
            await self._scheduler.close()
