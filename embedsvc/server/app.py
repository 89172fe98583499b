"""The gRPC server: lifecycle (load, serve, drain), health, reflection, TLS, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embedsvc.config import ServerConfig
from embedsvc.engine.service import Tokenizers
from embedsvc.errors import FailedPreconditionError
from embedsvc.index.manager import IndexManager
from embedsvc.server.auth import ApiKeyInterceptor
from embedsvc.server.embedding import EmbeddingServicer
from embedsvc.server.index import IndexServicer
from embedsvc.server.metrics import Metrics
from embedsvc.server.registry import ModelRegistry
from embedsvc.server.rpc import MalformedRequestInterceptor
from embedsvc.v1 import embedding_pb2, embedding_pb2_grpc, index_pb2, index_pb2_grpc

log = logging.getLogger("embedsvc.server")
EMBEDDING_SERVICE = embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
INDEX_SERVICE = index_pb2.DESCRIPTOR.services_by_name["IndexService"].full_name


class EmbedServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self._tokenizers = Tokenizers(config.tokenizer_threads)
        self.registry = ModelRegistry(config, self.metrics, self._tokenizers)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self.indexes: IndexManager | None = None  # set by start(), which may fail before it
        self._embedding: EmbeddingServicer | None = None
        self.http_port: int | None = None
        self._http = contextlib.AsyncExitStack()
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        """Listen at once (health NOT_SERVING), then load models and switch to SERVING."""
        limit = self.config.max_message_bytes
        interceptors: list[grpc.aio.ServerInterceptor] = [MalformedRequestInterceptor()]
        if self.config.api_keys:
            interceptors.insert(0, ApiKeyInterceptor(self.config.api_keys))
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                # responses are sized by what was asked for; the client's own limit governs them
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._embedding = EmbeddingServicer(self.registry, self.config, self.metrics)
        embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(self._embedding, server)
        self.indexes = IndexManager(
            Path(self.config.data_dir) if self.config.data_dir else None,
            fsync=self.config.index_fsync,
            snapshot_every=self.config.snapshot_every,
            index_device=self.config.index_device,
        )
        for name in self.indexes.broken:
            self.metrics.index_damaged.labels(name).set(1)
        index_pb2_grpc.add_IndexServiceServicer_to_server(
            IndexServicer(self.registry, self.indexes, self.config, self.metrics), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                EMBEDDING_SERVICE,
                INDEX_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls_cert and self.config.tls_key:
            credentials = grpc.ssl_server_credentials(
                [(Path(self.config.tls_key).read_bytes(), Path(self.config.tls_cert).read_bytes())]
            )
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self._server = server
        if self.config.http:
            try:
                from embedsvc.server.http import HttpFrontDoor, serve_http
            except ImportError as exc:
                raise FailedPreconditionError(
                    f"HTTP needs the HTTP extra ({exc.name} is missing): pip install 'embedsvc[http]', "
                    "or serve gRPC only with --no-http"
                ) from exc

            app = HttpFrontDoor(self.registry, self.config, self.metrics).app()
            cert, key = self.config.tls_cert, self.config.tls_key
            tls = (cert, key) if cert and key else None
            self.http_port = await self._http.enter_async_context(
                serve_http(
                    app,
                    self.config.host,
                    self.config.http_port,
                    tls,
                    idle_timeout=self.config.http_idle_timeout_s,
                    max_connections=self.config.max_http_connections,
                )
            )
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port, self.config.host)
        log.info(
            "listening",
            extra={
                "address": f"{self.config.host}:{self.port}",
                "tls": bool(self.config.tls_cert),
                "http": f"{self.config.host}:{self.http_port}" if self.http_port is not None else "off",
            },
        )
        loaded = await asyncio.to_thread(ModelRegistry.load_embedders, self.config)
        self.registry.install(loaded)
        asyncio.get_running_loop().create_task(self._publish_queue_depth())
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving", extra={"models": list(self.registry.models), "default": self.registry.default_name}
        )
        return self.port

    async def _set_health(self, status: int) -> None:
        for service in ("", EMBEDDING_SERVICE, INDEX_SERVICE):
            await self.health.set(service, status)

    async def _publish_queue_depth(self) -> None:
        while not self._stopped.is_set():
            for model in self.registry.models.values():
                self.metrics.queue_requests.labels(model.name).set(model.scheduler.queued_requests)
                self.metrics.queue_tokens.labels(model.name).set(model.scheduler.queued_tokens)
            await asyncio.sleep(0.5)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new requests, let in-flight ones finish within the grace period."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("draining", extra={"grace_period_s": self.config.grace_period_s})
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._embedding is not None:
            self._embedding.draining.set()  # open streams finish what they hold and close
        if self._server is not None:
            stopping = asyncio.create_task(
                self._server.stop(self.config.grace_period_s if grace is None else grace)
            )
            await asyncio.sleep(0)  # grpc now refuses new RPCs; in-flight ones go on
            self.registry.state = "draining"
            await stopping
        await self._http.aclose()  # in-flight HTTP requests finish first
        await self.registry.close()
        self._tokenizers.shutdown()
        if self.indexes is not None:
            await asyncio.to_thread(self.indexes.close)  # snapshots: a fast restart
        log.info("stopped")

    async def wait(self) -> None:
        await self._stopped.wait()
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(config: ServerConfig, on_serving: Callable[[int], None] | None = None) -> None:
    """Run until SIGTERM / SIGINT, then drain gracefully; ``on_serving(port)`` once models are loaded."""
    server = EmbedServer(config)
    loop = asyncio.get_running_loop()
    stop_task: list[asyncio.Task[None]] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop_task.append(loop.create_task(server.stop())))
    try:
        port = await server.start()
    except BaseException:
        await server.stop(0)
        raise
    if on_serving is not None:
        on_serving(port)
    await server.wait()
    if stop_task:
        await stop_task[0]
