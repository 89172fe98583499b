"""EmbeddingService: protobuf in, the model's ModelService, protobuf out."""

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
from embedsvc.server.tenants import tenant_of
from embedsvc.v1 import embedding_pb2 as pb
from embedsvc.v1 import embedding_pb2_grpc as pb_grpc

log = logging.getLogger("embedsvc.rpc")

STREAM_WINDOW = 32  # requests of one stream processed concurrently (and responses held unread)
STREAM_BACKOFF_S = 1.0  # a stream whose request was refused for overload reads nothing for this long


class EmbeddingServicer(GuardedServicer, pb_grpc.EmbeddingServiceServicer):
    def __init__(self, registry: ModelRegistry, config: ServerConfig, metrics: Metrics) -> None:
        super().__init__(metrics)
        self.registry = registry
        self.config = config
        self.draining = asyncio.Event()  # set on shutdown: open streams stop taking requests
        self._open_streams = 0

    def _model(self, name: str, method: str) -> ModelService:
        served = self.registry.get(name)
        self.metrics.requests.labels(method, served.name).inc()
        return served

    # ---------------------------------------------------------------- Embed
    async def _embed(self, request: pb.EmbedRequest, timeout: float | None, tenant: str) -> pb.EmbedResponse:
        served = self._model(request.model, "Embed")
        if request.encoding not in wire.ENCODING_VALUES:
            raise InvalidInputError(f"unknown encoding enum value {request.encoding}", field="encoding")
        arrived = time.perf_counter()
        embedded = await served.embed(
            list(request.inputs), wire.embed_options(request), timeout=timeout, tenant=tenant
        )
        self.metrics.queue_seconds.labels(served.name).observe(time.perf_counter() - arrived)
        self.metrics.inputs.labels(served.name).inc(len(embedded.token_counts))
        self.metrics.tokens.labels(served.name).inc(embedded.total_tokens)
        return self._pack(request, served.name, embedded)

    @staticmethod
    def _pack(request: pb.EmbedRequest, model: str, embedded: Embedded) -> pb.EmbedResponse:
        return wire.embed_response(
            request_id=request.id,
            model=model,
            vectors=embedded.vectors,
            token_counts=embedded.token_counts,
            encoding=request.encoding,
            total_tokens=embedded.total_tokens,
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
