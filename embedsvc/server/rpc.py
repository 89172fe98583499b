"""Shared RPC plumbing: run a handler, map its failure to a status code, record metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from embedsvc.server.errors import message_for, retry_metadata, status_for
from embedsvc.server.metrics import Metrics

log = logging.getLogger("embedsvc.rpc")
T = TypeVar("T")


class GuardedServicer:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def _guard(
        self, method: str, model: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]
    ) -> T:
        """Run ``work``; map failures to a status code; never let a bad request kill the server."""
        request_id = uuid.uuid4().hex[:16]
        started = time.perf_counter()
        trailer = (("x-request-id", request_id),)
        context.set_trailing_metadata(trailer)
        try:
            result = await work()
        except asyncio.CancelledError:
            self.metrics.errors.labels(method, "CANCELLED").inc()
            raise
        except Exception as exc:
            code = status_for(exc)
            if code is None:
                log.exception("internal error", extra={"request_id": request_id, "method": method})
                await self._abort(
                    context,
                    method,
                    grpc.StatusCode.INTERNAL,
                    f"internal error (request id {request_id}); this is a bug, please report it",
                    trailer,
                )
            await self._abort(
                context,
                method,
                code,  # type: ignore[arg-type]
                message_for(exc),
                trailer + retry_metadata(exc),
            )
        self.metrics.request_seconds.labels(method, model or "default").observe(time.perf_counter() - started)
        return result

    async def _abort(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        code: grpc.StatusCode,
        msg: str,
        trailer: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.metrics.errors.labels(method, code.name).inc()
        await context.abort(code, msg, trailing_metadata=trailer)


# ------------------------------------------------------------ malformed messages


class _Malformed:
    """What a request that failed to parse becomes, so the handler can answer INVALID_ARGUMENT."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _safe(deserializer: Callable[[bytes], Any] | None, what: str) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, recursion limit, ...: all mean a bad message
            detail = str(exc).rpartition(": ")[2] or type(exc).__name__
            return _Malformed(
                f"the request is not a valid {what} message ({detail}); send a message built from "
                "the embedsvc .proto files (nesting is limited to 100 levels)"
            )

    return parse


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """A request that does not parse answers INVALID_ARGUMENT with a plain message; grpc's own answer
    is UNKNOWN naming a Python class."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        what = handler_call_details.method.rpartition("/")[2] + " request"
        kwargs = {
            "request_deserializer": _safe(handler.request_deserializer, what),
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming:
            behavior: Any = handler.stream_stream or handler.stream_unary  # an async function in aio

            async def requests(iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                async for request in iterator:
                    if isinstance(request, _Malformed):
                        await _refuse(context, request)
                    yield request

            if handler.response_streaming:

                async def stream_stream(iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                    async for response in behavior(requests(iterator, context), context):
                        yield response

                return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)

            async def stream_unary(iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                return await behavior(requests(iterator, context), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)

        single: Any = handler.unary_stream or handler.unary_unary
        if handler.response_streaming:

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Malformed):
                    await _refuse(context, request)
                async for response in single(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                await _refuse(context, request)
            return await single(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)


async def _refuse(context: grpc.aio.ServicerContext, request: _Malformed) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
