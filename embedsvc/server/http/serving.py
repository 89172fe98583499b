"""uvicorn on the running event loop (beside gRPC), bounded so that no client can hold the process.

* an idle timeout: a connection with no request in progress (half-sent headers, or idle between
  keep-alive requests) is closed after ``http_idle_timeout_s``;
* a connection cap: a connection over ``max_http_connections`` gets a 503 and is closed at once, so
  1 100 silent sockets cannot use up the file descriptors gRPC needs too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette

log = logging.getLogger("embedsvc.http")


def _busy_response() -> bytes:
    body = (
        b'{"error":"too many HTTP connections are open (max_http_connections); retry shortly",'
        b'"error_type":"Overloaded"}'
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def default_max_connections() -> int:
    """A quarter of the process's file descriptor limit (the rest: gRPC, models, indexes), at most 1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(8, min(1024, soft // 4))


def _bounded_protocol(base: type[asyncio.Protocol], cap: int) -> type[asyncio.Protocol]:
    busy = _busy_response()

    class Bounded(base):  # type: ignore[misc,valid-type]
        idle_since: float | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.idle_since = asyncio.get_running_loop().time()
            if len(self.connections) > cap:
                transport.write(busy)
                transport.close()

    return Bounded


async def _sweep(server: Any, idle_timeout: float) -> None:
    """Close connections that have had no request in progress for ``idle_timeout`` seconds."""
    loop = asyncio.get_running_loop()
    every = min(1.0, max(0.05, idle_timeout / 4))
    while True:
        await asyncio.sleep(every)
        now = loop.time()
        for conn in list(server.server_state.connections):
            cycle = getattr(conn, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                conn.idle_since = None  # a request is being answered: not idle
            elif conn.idle_since is None:
                conn.idle_since = now
            elif now - conn.idle_since >= idle_timeout:
                transport = getattr(conn, "transport", None)
                if transport is not None and not transport.is_closing():
                    transport.close()


@contextlib.asynccontextmanager
async def serve_http(
    app: Starlette,
    host: str,
    port: int,
    tls: tuple[str, str] | None = None,
    *,
    idle_timeout: float = 10.0,
    max_connections: int | None = None,
) -> AsyncIterator[int]:
    """Run uvicorn on the running event loop (beside gRPC); yields the bound port. ``tls``: (cert, key)."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def]
            yield  # the gRPC server's handlers own SIGTERM / SIGINT

    cap = max_connections or default_max_connections()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_bounded_protocol(AutoHTTPProtocol, cap),
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_keep_alive=max(1, round(idle_timeout)),
        timeout_graceful_shutdown=10,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    task = loop.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start (port in use, ...)
            raise RuntimeError("the HTTP server stopped during start-up")
        await asyncio.sleep(0.02)
    sweeper = loop.create_task(_sweep(server, idle_timeout))
    bound = server.servers[0].sockets[0].getsockname()[1]
    log.info("http limits", extra={"max_http_connections": cap, "http_idle_timeout_s": idle_timeout})
    try:
        yield int(bound)
    finally:
        sweeper.cancel()
        server.should_exit = True
        await task
