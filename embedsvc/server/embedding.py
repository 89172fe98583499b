"""EmbeddingService: protobuf in, the model's ModelService, protobuf out (Embed, EmbedStream, Tokenize,
ListModels, and the rerankers' and classifiers' Rerank, Score, Classify)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc

from embedsvc import wire
from embedsvc.config import ServerConfig
from embedsvc.engine.options import Embedded
from embedsvc.engine.service import ModelService
from embedsvc.errors import InvalidInputError, OverloadedError
from embedsvc.server.errors import RETRY_AFTER_MS, message_for, status_for
from embedsvc.server.metrics import Metrics
from embedsvc.server.registry import ModelRegistry
from embedsvc.server.rpc import GuardedServicer
from embedsvc.server.tasks import served_for
from embedsvc.server.tenants import tenant_of
from embedsvc.v1 import embedding_pb2 as pb
from embedsvc.v1 import embedding_pb2_grpc as pb_grpc

log = logging.getLogger("embedsvc.rpc")

STREAM_WINDOW = 32  # requests of one stream processed concurrently (and responses held unread)
STREAM_BACKOFF_S = 1.0  # a stream whose request was refused for overload reads nothing for this long
# multi-vector floats above which a response's outputs are copied into it on a thread, not the event loop
# (100 MB of them took 150 ms here)
OFF_LOOP_OUTPUT_VALUES = 1 << 20


class EmbeddingServicer(GuardedServicer, pb_grpc.EmbeddingServiceServicer):
    def __init__(self, registry: ModelRegistry, config: ServerConfig, metrics: Metrics) -> None:
        super().__init__(metrics)
        self.registry = registry
        self.config = config
        self.draining = asyncio.Event()  # set on shutdown: open streams stop taking requests
        self._open_streams = 0

    def _model(self, name: str, method: str, task: str = "embed") -> ModelService:
        served = served_for(self.registry, name, task)
        self.metrics.requests.labels(method, served.name).inc()
        return served

    def _count(self, model: str, token_counts: list[int], arrived: float) -> None:
        self.metrics.queue_seconds.labels(model).observe(time.perf_counter() - arrived)
        self.metrics.inputs.labels(model).inc(len(token_counts))
        self.metrics.tokens.labels(model).inc(sum(token_counts))

    # ---------------------------------------------------------------- Embed
    async def _embed(self, request: pb.EmbedRequest, timeout: float | None, tenant: str) -> pb.EmbedResponse:
        served = self._model(request.model, "Embed")
        if request.encoding not in wire.ENCODING_VALUES:
            raise InvalidInputError(f"unknown encoding enum value {request.encoding}", field="encoding")
        wire.multi_vector_encoding(request)  # a bad one fails before any work
        arrived = time.perf_counter()
        embedded = await served.embed(
            list(request.inputs), wire.embed_options(request), timeout=timeout, tenant=tenant
        )
        self._count(served.name, embedded.token_counts, arrived)
        response = self._pack(request, served.name, embedded)
        if embedded.sparse is None and embedded.multi_vectors is None:
            return response
        if sum(m.size for m in embedded.multi_vectors or ()) > OFF_LOOP_OUTPUT_VALUES:
            return await asyncio.to_thread(self._with_outputs, request, served, response, embedded)
        return self._with_outputs(request, served, response, embedded)

    @staticmethod
    def _pack(request: pb.EmbedRequest, model: str, embedded: Embedded) -> pb.EmbedResponse:
        return wire.embed_response(
            request_id=request.id,
            model=model,
            vectors=embedded.vectors,
            token_counts=embedded.token_counts,
            encoding=request.encoding,
            total_tokens=embedded.total_tokens,
            fingerprint=embedded.fingerprint,
        )

    @staticmethod
    def _with_outputs(
        request: pb.EmbedRequest, served: ModelService, response: pb.EmbedResponse, embedded: Embedded
    ) -> pb.EmbedResponse:
        """The sparse and multi-vector outputs added to the (dense) response."""
        return wire.add_outputs(
            response,
            sparse=embedded.sparse,
            sparse_dimension=(served.facts.sparse_dimension or 0) if embedded.sparse is not None else 0,
            multi_vectors=embedded.multi_vectors,
            encoding=wire.multi_vector_encoding(request),
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
                trailing_metadata=((RETRY_AFTER_MS, str(round(STREAM_BACKOFF_S * 1000))),),
            )
        self._open_streams += 1
        # one id per stream, sent back at once in the initial metadata; internal errors log it
        request_id = uuid.uuid4().hex[:16]
        await context.send_initial_metadata((("x-request-id", request_id),))
        try:
            async for item in self._stream(request_iterator, context, request_id):
                yield item
        finally:
            self._open_streams -= 1

    async def _stream(
        self,
        request_iterator: AsyncIterator[pb.EmbedRequest],
        context: grpc.aio.ServicerContext,
        request_id: str,
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
                await results.put(wire.stream_response(request.id, response))
            except Exception as exc:
                if isinstance(exc, OverloadedError):
                    resume_at = time.monotonic() + STREAM_BACKOFF_S
                code = status_for(exc)
                if code is None:
                    log.exception(
                        "internal error in stream",
                        extra={"request_id": request_id, "method": "EmbedStream", "item_id": request.id},
                    )
                    code, message = (
                        grpc.StatusCode.INTERNAL,
                        f"internal error (request id {request_id}); this is a bug, please report it",
                    )
                else:
                    message = message_for(exc)
                self.metrics.errors.labels("EmbedStream", code.name).inc()
                field = getattr(exc, "field", None) or ""
                await results.put(wire.stream_error(request.id, code.value[0], message, field))
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

    # ----------------------------------------------- Rerank, Score, Classify
    async def Rerank(self, request: pb.RerankRequest, context: grpc.aio.ServicerContext) -> pb.RerankResponse:
        tenant = tenant_of(context)

        async def work() -> pb.RerankResponse:
            served = self._model(request.model, "Rerank", "rerank")
            options = wire.score_options(request)
            top_n = request.top_n if request.HasField("top_n") else None
            wire.ranked([], top_n)  # a bad top_n fails before the work
            arrived = time.perf_counter()
            documents = list(request.documents)
            scored = await served.rerank(
                request.query, documents, options, timeout=context.time_remaining(), tenant=tenant
            )
            self._count(served.name, scored.token_counts, arrived)
            return wire.rerank_response(
                request_id=request.id,
                model=served.name,
                scored=scored,
                top_n=top_n,
                documents=documents if request.return_documents else None,
            )

        return await self._guard("Rerank", request.model, context, work)

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        tenant = tenant_of(context)

        async def work() -> pb.ScoreResponse:
            served = self._model(request.model, "Score", "rerank")
            arrived = time.perf_counter()
            scored = await served.score(
                wire.score_pairs(request),
                wire.score_options(request),
                timeout=context.time_remaining(),
                tenant=tenant,
            )
            self._count(served.name, scored.token_counts, arrived)
            return wire.score_response(request_id=request.id, model=served.name, scored=scored)

        return await self._guard("Score", request.model, context, work)

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        tenant = tenant_of(context)

        async def work() -> pb.ClassifyResponse:
            served = self._model(request.model, "Classify", "classify")
            arrived = time.perf_counter()
            classified = await served.classify(
                list(request.inputs),
                wire.score_options(request),
                timeout=context.time_remaining(),
                tenant=tenant,
            )
            self._count(served.name, classified.token_counts, arrived)
            return wire.classify_response(request_id=request.id, model=served.name, classified=classified)

        return await self._guard("Classify", request.model, context, work)

    # ------------------------------------------------------------- Tokenize
    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        async def work() -> pb.TokenizeResponse:
            served = self._model(request.model, "Tokenize")
            tokenized = await served.tokenize(list(request.inputs), wire.embed_options(request))
            return wire.tokenize_response(served.name, tokenized)

        return await self._guard("Tokenize", request.model, context, work)

    # ----------------------------------------------------------- ListModels
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        async def work() -> pb.ListModelsResponse:
            self.registry.get("")  # UNAVAILABLE while loading or draining
            facts = [served.facts for served in self.registry.models.values()]
            return wire.list_models_response(facts, self.registry.default_name or "")

        return await self._guard("ListModels", "", context, work)
