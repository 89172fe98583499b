"""API keys, for both doors: ``authorization: Bearer <key>`` (gRPC metadata or the HTTP header).

One parser of the header (:func:`bearer_key`; the scheme is case-insensitive, as HTTP says) and one
check (:class:`ApiKeys`); the gRPC interceptor and the HTTP routes only ask them. Health stays open.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
GRPC_HINT = "missing or invalid API key: send metadata 'authorization: Bearer <key>'"
HTTP_HINT = "missing or invalid API key: send the header 'Authorization: Bearer <key>'"


def bearer_key(value: str | None) -> str | None:
    """The key of an ``authorization`` value with the Bearer scheme (any case), else None."""
    if not value:
        return None
    scheme, _, key = value.strip().partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


class ApiKeys:
    """The keys a server accepts; no keys means authentication is off."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def allows(self, authorization: str | None) -> bool:
        """True when auth is off, or ``authorization`` carries one of the keys (compared in constant time)."""
        if not self._keys:
            return True
        key = bearer_key(authorization)
        if key is None:
            return False
        offered = key.encode()
        return any(hmac.compare_digest(offered, k) for k in self._keys)


def authorization_of(metadata: Any) -> str | None:
    """The ``authorization`` value of gRPC invocation metadata."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            return value
    return None


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = ApiKeys(keys)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_OPEN_PREFIXES):
            return handler
        if self._keys.allows(authorization_of(handler_call_details.invocation_metadata)):
            return handler
        return _denied(handler)


def _denied(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, GRPC_HINT)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, GRPC_HINT)
        yield  # pragma: no cover - makes this an async generator

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
