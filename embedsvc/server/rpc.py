"""Shared RPC plumbing: run a handler, map its failure to a status code, record metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from embedsvc.server.errors import message_for, status_for
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
        context.set_trailing_metadata((("x-request-id", request_id),))
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
                )
            await self._abort(context, method, code, message_for(exc))  # type: ignore[arg-type]
        self.metrics.request_seconds.labels(method, model or "default").observe(time.perf_counter() - started)
        return result

    async def _abort(
        self, context: grpc.aio.ServicerContext, method: str, code: grpc.StatusCode, msg: str
    ) -> None:
        self.metrics.errors.labels(method, code.name).inc()
        await context.abort(code, msg)
