"""EmbeddingService: protobuf in, engine calls, protobuf out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import numpy as np

from embedsvc import codecs
from embedsvc.config import ServerConfig
from embedsvc.engine.inputs import EncodedInput
from embedsvc.errors import InvalidInputError, OverloadedError
from embedsvc.server.admission import (
    INLINE_TOKENIZE_CHARS,
    INLINE_TOKENIZE_TEXTS,
    SMALL_REQUEST_BYTES,
    request_estimate,
    tenant_of,
)
from embedsvc.server.errors import message_for, status_for
from embedsvc.server.metrics import Metrics
from embedsvc.server.registry import ModelRegistry, ServedModel
from embedsvc.server.rpc import GuardedServicer
from embedsvc.v1 import embedding_pb2 as pb
from embedsvc.v1 import embedding_pb2_grpc as pb_grpc

log = logging.getLogger("embedsvc.rpc")
T = TypeVar("T")

_INPUT_TYPES = {
    pb.INPUT_TYPE_UNSPECIFIED: None,
    pb.INPUT_TYPE_QUERY: "query",
    pb.INPUT_TYPE_DOCUMENT: "document",
}
_TRUNCATIONS = {
    pb.TRUNCATION_UNSPECIFIED: "end",
    pb.TRUNCATION_END: "end",
    pb.TRUNCATION_START: "start",
    pb.TRUNCATION_NONE: "none",
}
_ENCODINGS = {
    pb.ENCODING_UNSPECIFIED,
    pb.ENCODING_FLOAT32,
    pb.ENCODING_FLOAT16,
    pb.ENCODING_INT8,
    pb.ENCODING_BINARY,
}
STREAM_WINDOW = 32  # requests of one stream processed concurrently (and responses held unread)
STREAM_BACKOFF_S = 1.0  # a stream whose request was refused for overload reads nothing for this long


def _enum(value: int, table: Mapping[Any, Any], field: str) -> Any:
    try:
        return table[value]
    except KeyError:
        raise InvalidInputError(f"unknown {field} enum value {value}", field=field) from None


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


async def embed_texts(
    served: ServedModel,
    tokenizers: Tokenizers,
    config: ServerConfig,
    texts: list[str],
    *,
    input_type: str | None,
    instruction: str | None = None,
    timeout: float | None = None,
    tenant: str = "-",
) -> np.ndarray:
    """Admit, tokenize, batch through the model's scheduler; float32 vectors."""
    embedder = served.embedder
    size, estimate = request_estimate(texts, config, max_length=embedder.max_length, chunked=False)
    with served.scheduler.admit(estimate, tenant):
        encoded = await tokenizers.run(
            texts, size, lambda: embedder.prepare(texts, input_type=input_type, instruction=instruction)
        )
        pooled = await served.scheduler.submit(encoded, timeout=_remaining(timeout), tenant=tenant)
    return embedder.combine(pooled, encoded, len(texts))


def _remaining(deadline_seconds: float | None, started: float | None = None) -> float | None:
    if deadline_seconds is None or started is None:
        return deadline_seconds
    return deadline_seconds - (time.perf_counter() - started)


class EmbeddingServicer(GuardedServicer, pb_grpc.EmbeddingServiceServicer):
    def __init__(
        self, registry: ModelRegistry, config: ServerConfig, metrics: Metrics, tokenizers: Tokenizers
    ) -> None:
        super().__init__(metrics)
        self.registry = registry
        self.config = config
        # tokenization runs here, off both the event loop and the forward threads
        self._tokenizers = tokenizers
        self.draining = asyncio.Event()  # set on shutdown: open streams stop taking requests
        self._open_streams = 0

    def _model(self, name: str, method: str) -> ServedModel:
        served = self.registry.get(name)
        self.metrics.requests.labels(method, served.name).inc()
        return served

    def _check_inputs(self, inputs: Any) -> None:
        if len(inputs) == 0:
            raise InvalidInputError("inputs must hold at least one text", field="inputs")
        if len(inputs) > self.config.max_inputs_per_request:
            raise InvalidInputError(
                f"{len(inputs)} inputs in one request; the limit is {self.config.max_inputs_per_request} "
                "(max_inputs_per_request): split the request",
                field="inputs",
            )

    # ---------------------------------------------------------------- Embed
    async def _embed(self, request: pb.EmbedRequest, timeout: float | None, tenant: str) -> pb.EmbedResponse:
        started = time.perf_counter()
        served = self._model(request.model, "Embed")
        embedder = served.embedder
        self._check_inputs(request.inputs)
        if request.encoding not in _ENCODINGS:
            raise InvalidInputError(f"unknown encoding enum value {request.encoding}", field="encoding")
        dimensions = request.dimensions if request.HasField("dimensions") else None
        embedder.check_dimensions(dimensions)
        texts = list(request.inputs)
        size, estimate = request_estimate(
            texts, self.config, max_length=embedder.max_length, chunked=request.chunked
        )
        with served.scheduler.admit(estimate, tenant):  # before any tokenizing: refusals come at once
            return await self._embed_admitted(
                request, served, texts, size, dimensions, timeout, tenant, started
            )

    async def _embed_admitted(
        self,
        request: pb.EmbedRequest,
        served: ServedModel,
        texts: list[str],
        size: int,
        dimensions: int | None,
        timeout: float | None,
        tenant: str,
        started: float,
    ) -> pb.EmbedResponse:
        embedder = served.embedder

        def tokenize() -> list[EncodedInput]:
            return embedder.prepare(
                texts,
                input_type=_enum(request.input_type, _INPUT_TYPES, "input_type"),
                prompt_name=request.prompt_name if request.HasField("prompt_name") else None,
                instruction=request.instruction if request.HasField("instruction") else None,
                truncation=_enum(request.truncation, _TRUNCATIONS, "truncation"),
                chunked=request.chunked,
            )

        encoded = await self._tokenizers.run(texts, size, tokenize)
        arrived = time.perf_counter()
        pooled = await served.scheduler.submit(encoded, timeout=_remaining(timeout, started), tenant=tenant)
        self.metrics.queue_seconds.labels(served.name).observe(time.perf_counter() - arrived)
        vectors = embedder.combine(
            pooled,
            encoded,
            len(texts),
            dimensions=dimensions,
            normalize=request.normalize if request.HasField("normalize") else None,
        )
        counts = embedder.count_tokens(encoded, len(texts))
        self.metrics.inputs.labels(served.name).inc(len(texts))
        self.metrics.tokens.labels(served.name).inc(sum(counts))
        return self._pack(request, served.name, vectors, counts)

    @staticmethod
    def _pack(
        request: pb.EmbedRequest, model: str, vectors: np.ndarray, counts: list[int]
    ) -> pb.EmbedResponse:
        encoding = request.encoding or pb.ENCODING_FLOAT32
        embeddings = []
        for vector, n_tokens in zip(vectors, counts, strict=True):
            if encoding == pb.ENCODING_FLOAT32:
                item = pb.Embedding(values=vector.tolist(), tokens=n_tokens)  # 5x faster than numpy items
            elif encoding == pb.ENCODING_FLOAT16:
                item = pb.Embedding(data=codecs.encode_float16(vector), tokens=n_tokens)
            elif encoding == pb.ENCODING_INT8:
                data, scale = codecs.encode_int8(vector)
                item = pb.Embedding(data=data, scale=scale, tokens=n_tokens)
            else:
                item = pb.Embedding(data=codecs.encode_binary(vector), tokens=n_tokens)
            embeddings.append(item)
        return pb.EmbedResponse(
            id=request.id,
            model=model,
            embeddings=embeddings,
            dimensions=vectors.shape[1],
            encoding=encoding,
            usage=pb.Usage(total_tokens=sum(counts), inputs=len(counts)),
        )

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        tenant = tenant_of(context)
        return await self._guard(
            "Embed", request.model, context, lambda: self._embed(request, context.time_remaining(), tenant)
        )

    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.EmbedRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EmbedStreamResponse]:
        if self._open_streams >= self.config.max_streams:
            self.metrics.errors.labels("EmbedStream", "RESOURCE_EXHAUSTED").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._open_streams} streams are open, the limit (max_streams={self.config.max_streams}); "
                "reuse a stream or retry later",
            )
        self._open_streams += 1
        try:
            async for item in self._stream(request_iterator, context):
                yield item
        finally:
            self._open_streams -= 1

    async def _stream(
        self, request_iterator: AsyncIterator[pb.EmbedRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EmbedStreamResponse]:
        # bounded: a client that stops reading stops this stream from taking more requests
        results: asyncio.Queue[pb.EmbedStreamResponse | None] = asyncio.Queue(maxsize=STREAM_WINDOW)
        window = asyncio.Semaphore(STREAM_WINDOW)
        tasks: set[asyncio.Task[None]] = set()
        tenant = tenant_of(context)
        cut_by_drain = False
        # a flooding stream is refused at once, request after request: without a pause its refusals
        # alone kept the event loop and the GIL busy (444 000 in 15 s from 40 streams)
        resume_at = 0.0

        async def one(request: pb.EmbedRequest) -> None:
            nonlocal resume_at
            try:
                response = await self._embed(request, context.time_remaining(), tenant)
                await results.put(pb.EmbedStreamResponse(id=request.id, response=response))
            except Exception as exc:
                if isinstance(exc, OverloadedError):
                    resume_at = time.monotonic() + STREAM_BACKOFF_S
                code = status_for(exc)
                if code is None:
                    log.exception("internal error in stream", extra={"id": request.id})
                    code, message = (
                        grpc.StatusCode.INTERNAL,
                        "internal error; this is a bug, please report it",
                    )
                else:
                    message = message_for(exc)
                self.metrics.errors.labels("EmbedStream", code.name).inc()
                error = pb.Error(code=code.value[0], message=message, field=getattr(exc, "field", None) or "")
                await results.put(pb.EmbedStreamResponse(id=request.id, error=error))
            finally:
                window.release()

        async def next_request(iterator: AsyncIterator[pb.EmbedRequest]) -> pb.EmbedRequest | None:
            """The next request, or None at the end of the stream or when the server starts draining."""
            receive = asyncio.ensure_future(iterator.__anext__())
            drain = asyncio.ensure_future(self.draining.wait())
            try:
                await asyncio.wait({receive, drain}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                drain.cancel()
            if not receive.done():
                receive.cancel()
                nonlocal cut_by_drain
                cut_by_drain = True
                return None
            try:
                return receive.result()
            except StopAsyncIteration:
                return None

        async def read() -> None:
            try:
                iterator = request_iterator.__aiter__()
                while True:
                    if (pause := resume_at - time.monotonic()) > 0:
                        await asyncio.sleep(pause)
                    if (request := await next_request(iterator)) is None:
                        break
                    await window.acquire()
                    task = asyncio.create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*list(tasks))
            finally:
                await results.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await results.get()) is not None:
                yield item
            await reader
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()
        if cut_by_drain:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the server is shutting down: requests sent after the last response were not taken; "
                "resend them to another replica",
            )

    # ------------------------------------------------------------- Tokenize
    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        async def work() -> pb.TokenizeResponse:
            served = self._model(request.model, "Tokenize")
            self._check_inputs(request.inputs)
            embedder = served.embedder
            texts = list(request.inputs)
            size, _ = request_estimate(texts, self.config, max_length=embedder.max_length, chunked=False)
            encoded = await self._tokenizers.run(
                texts,
                size,
                lambda: embedder.prepare(
                    list(request.inputs),
                    input_type=_enum(request.input_type, _INPUT_TYPES, "input_type"),
                    prompt_name=request.prompt_name if request.HasField("prompt_name") else None,
                    instruction=request.instruction if request.HasField("instruction") else None,
                    truncation=_enum(request.truncation, _TRUNCATIONS, "truncation"),
                ),
            )
            tokenizer = embedder.tokenizer
            return pb.TokenizeResponse(
                model=served.name,
                inputs=[
                    pb.TokenizedInput(ids=e.ids, tokens=tokenizer.convert_ids_to_tokens(e.ids))
                    for e in encoded
                ],
            )

        return await self._guard("Tokenize", request.model, context, work)

    # ----------------------------------------------------------- ListModels
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        async def work() -> pb.ListModelsResponse:
            self.registry.get("")  # UNAVAILABLE while loading or draining
            infos = []
            for served in self.registry.models.values():
                e, s = served.embedder, served.embedder.settings
                infos.append(
                    pb.ModelInfo(
                        name=served.name,
                        source=str(e.loaded.source.source_name),
                        dimension=e.dimension,
                        max_length=e.max_length,
                        pooling=s.pooling,
                        normalize=s.normalize,
                        prompts=s.prompts,
                        default_prompt_name=s.default_prompt_name or "",
                        query_prompt_name=s.query_prompt_name or "",
                        document_prompt_name=s.document_prompt_name or "",
                        instruction_template=s.instruction_template or "",
                        dtype=str(e.dtype).removeprefix("torch."),
                        device=str(e.device),
                        profile=s.profile,
                        conversion=s.conversion,
                        is_decoder=e.is_decoder,
                        deterministic=e.options.deterministic,
                        quantize=e.options.quantize,
                        quantization=e.quantization,
                        attention=s.attention,
                        append_eos=s.append_eos,
                        recipe_sources=s.sources,
                        recipe_warnings=list(s.warnings),
                        remote_code=e.loaded.remote_code,
                    )
                )
            return pb.ListModelsResponse(models=infos, default_model=self.registry.default_name or "")

        return await self._guard("ListModels", "", context, work)
