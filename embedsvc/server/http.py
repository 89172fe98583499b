"""HTTP beside gRPC, in the same process: OpenAI's and TEI's embedding APIs over the same models.

* OpenAI: ``POST /v1/embeddings`` (also ``/embeddings``), ``GET /v1/models`` — what the ``openai`` SDK,
  LangChain's ``OpenAIEmbeddings``, LlamaIndex, LiteLLM and vector databases' vectorizers send. The
  SDK asks for base64 by default; both encodings are served. Extensions: ``input_type``,
  ``instruction``, ``prompt_name``, ``truncate`` ("end" | "start" | "none").
* Text Embeddings Inference: ``POST /embed``, ``POST /tokenize``, ``GET /info``, ``GET /health`` with
  TEI's request and response shapes and status codes, so TEI clients work unchanged (a ``model`` field
  or ``?model=`` picks a model other than the default).

Same models, schedulers and fair shares, API keys (``Authorization: Bearer``), metrics and logs as
gRPC. Routes only convert JSON to :class:`EmbedOptions` and back; the ModelService does the rest.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import embedsvc
from embedsvc.config import ServerConfig
from embedsvc.engine.options import EmbedOptions
from embedsvc.engine.scheduler import DeadlineExceededError
from embedsvc.engine.service import ModelService
from embedsvc.errors import (
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    StorageFullError,
    TextTooLongError,
    UnauthenticatedError,
    UnavailableError,
)
from embedsvc.server.metrics import Metrics
from embedsvc.server.registry import ModelRegistry
from embedsvc.server.tenants import tenant_of_http

log = logging.getLogger("embedsvc.http")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


# ----------------------------------------------------------------------- errors


def _status(exc: BaseException, *, tei: bool) -> tuple[int, str]:
    """HTTP status and error type of an exception, as OpenAI's or TEI's API words it."""
    if isinstance(exc, UnauthenticatedError):
        return 401, ("Unauthorized" if tei else "invalid_api_key")
    if isinstance(exc, PayloadTooLargeError):
        return 413, ("Validation" if tei else "request_too_large")
    if isinstance(exc, TextTooLongError):
        return (413, "Validation") if tei else (400, "context_length_exceeded")
    if isinstance(exc, InvalidInputError):
        return (413, "Validation") if tei else (400, "invalid_request_error")
    if isinstance(exc, ModelNotFoundError):
        return 404, ("Validation" if tei else "model_not_found")
    if isinstance(exc, OverloadedError | StorageFullError):
        return 429, ("Overloaded" if tei else "rate_limit_exceeded")
    if isinstance(exc, UnavailableError):
        return 503, ("Unhealthy" if tei else "service_unavailable")
    if isinstance(exc, DeadlineExceededError):
        return 504, ("Backend" if tei else "timeout")
    return 500, ("Backend" if tei else "server_error")


def _error_response(exc: BaseException, *, tei: bool, request_id: str, retry_after: int | None) -> Response:
    status, kind = _status(exc, tei=tei)
    message = (
        str(exc)
        if status != 500
        else f"internal error (request id {request_id}); this is a bug, please report it"
    )
    headers = {"x-request-id": request_id}
    if status == 429 and retry_after:
        headers["Retry-After"] = str(retry_after)
    if tei:
        return _json({"error": message, "error_type": kind}, status, headers)
    param = getattr(exc, "field", None)
    code = kind if kind not in ("invalid_request_error", "server_error") else None
    error_type = "invalid_request_error" if status in (400, 404, 413) else kind
    return _json(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}, status, headers
    )


# ----------------------------------------------------------------- the front door


class HttpFrontDoor:
    def __init__(self, registry: ModelRegistry, config: ServerConfig, metrics: Metrics) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self._keys = {k.encode() for k in config.api_keys}

    def app(self) -> Starlette:
        routes = [
            Route("/v1/embeddings", self._wrap("/v1/embeddings", self.openai_embeddings), methods=["POST"]),
            Route("/embeddings", self._wrap("/embeddings", self.openai_embeddings), methods=["POST"]),
            Route("/v1/models", self._wrap("/v1/models", self.openai_models), methods=["GET"]),
            Route("/embed", self._wrap("/embed", self.tei_embed, tei=True), methods=["POST"]),
            Route("/tokenize", self._wrap("/tokenize", self.tei_tokenize, tei=True), methods=["POST"]),
            Route("/info", self._wrap("/info", self.tei_info, tei=True), methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
        ]
        return Starlette(routes=routes)

    def _wrap(
        self, path: str, handler: Callable[[Request, str], Awaitable[Response]], *, tei: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        method = f"http:{path}"

        async def endpoint(request: Request) -> Response:
            request_id = uuid.uuid4().hex[:16]
            started = time.perf_counter()
            try:
                self._authenticate(request)
                response = await handler(request, request_id)
            except Exception as exc:
                status, _ = _status(exc, tei=tei)
                self.metrics.errors.labels(method, str(status)).inc()
                if status == 500:
                    log.exception("internal error", extra={"request_id": request_id, "method": method})
                return _error_response(exc, tei=tei, request_id=request_id, retry_after=self._retry_after())
            self.metrics.request_seconds.labels(method, "http").observe(time.perf_counter() - started)
            response.headers["x-request-id"] = request_id
            return response

        return endpoint

    def _authenticate(self, request: Request) -> None:
        if not self._keys:
            return
        import hmac

        offered = request.headers.get("authorization", "")
        if offered.startswith("Bearer "):
            key = offered.removeprefix("Bearer ").strip().encode()
            if any(hmac.compare_digest(key, k) for k in self._keys):
                return
        raise UnauthenticatedError(
            "missing or invalid API key: send the header 'Authorization: Bearer <key>'"
        )

    def _retry_after(self) -> int:
        """Seconds a refused caller should wait: about half the work queued on the busiest model."""
        queued = max((m.scheduler.queued_seconds for m in self.registry.models.values()), default=1.0)
        return max(1, math.ceil(queued / 2))

    async def _body(self, request: Request) -> dict[str, Any]:
        limit = self.config.max_message_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(
                f"request body is {declared} bytes; the limit is {limit} (max_message_bytes)", field="body"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(
                    f"request body is over the limit of {limit} bytes (max_message_bytes)", field="body"
                )
            chunks.append(chunk)
        try:
            data = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise InvalidInputError(f"the request body is not valid JSON: {exc}", field="body") from None
        if not isinstance(data, dict):
            raise InvalidInputError("the request body must be a JSON object", field="body")
        return data

    def _tenant(self, request: Request) -> str:
        client = (request.client.host, request.client.port) if request.client else None
        return tenant_of_http(request.headers.get("authorization"), client)

    def _model(self, name: str | None, method: str) -> ModelService:
        served = self.registry.get(name or "")
        self.metrics.requests.labels(method, served.name).inc()
        return served

    # ------------------------------------------------------------------ OpenAI
    async def openai_embeddings(self, request: Request, request_id: str) -> Response:
        body = await self._body(request)
        texts = _openai_input(body.get("input"))
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise InvalidInputError(
                f"encoding_format must be 'float' or 'base64', got {encoding!r}", field="encoding_format"
            )
        served = self._model(_optional_str(body, "model"), "http:/v1/embeddings")
        options = EmbedOptions(
            input_type=_optional_str(body, "input_type"),
            prompt_name=_optional_str(body, "prompt_name"),
            instruction=_optional_str(body, "instruction"),
            dimensions=_optional_int(body, "dimensions"),
            truncation=_optional_str(body, "truncate") or "end",
        )
        embedded = await served.embed(texts, options, tenant=self._tenant(request))
        self._count(served, embedded.token_counts)
        if encoding == "base64":
            rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in embedded.vectors]
        else:
            rows = list(embedded.vectors)
        return _json(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
                "model": served.name,
                "usage": {"prompt_tokens": embedded.total_tokens, "total_tokens": embedded.total_tokens},
            }
        )

    async def openai_models(self, request: Request, request_id: str) -> Response:
        self.registry.get("")  # 503 while loading or draining
        data = [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "embedsvc", "dimension": m.dimension}
            for m in self.registry.models.values()
        ]
        return _json({"object": "list", "data": data})

    # --------------------------------------------------------------------- TEI
    async def tei_embed(self, request: Request, request_id: str) -> Response:
        body = await self._body(request)
        texts = _tei_inputs(body.get("inputs"))
        served = self._model(_optional_str(body, "model") or request.query_params.get("model"), "http:/embed")
        direction = body.get("truncation_direction") or "Right"
        if direction not in ("Right", "Left", "right", "left"):
            raise InvalidInputError(
                f"truncation_direction must be 'Right' or 'Left', got {direction!r}",
                field="truncation_direction",
            )
        truncate = bool(body.get("truncate", False))
        normalize = body.get("normalize", True)
        if not isinstance(normalize, bool):
            raise InvalidInputError("normalize must be true or false", field="normalize")
        options = EmbedOptions(
            prompt_name=_optional_str(body, "prompt_name"),
            dimensions=_optional_int(body, "dimensions"),
            normalize=normalize,
            truncation=("end" if direction.lower() == "right" else "start") if truncate else "none",
        )
        embedded = await served.embed(texts, options, tenant=self._tenant(request))
        self._count(served, embedded.token_counts)
        return _json(list(embedded.vectors))

    async def tei_tokenize(self, request: Request, request_id: str) -> Response:
        body = await self._body(request)
        texts = _tei_inputs(body.get("inputs"))
        served = self._model(
            _optional_str(body, "model") or request.query_params.get("model"), "http:/tokenize"
        )
        options = EmbedOptions(prompt_name=_optional_str(body, "prompt_name"))
        special = set(served.tokenizer.all_special_ids)
        add_special = body.get("add_special_tokens", True)
        out = []
        for ids, tokens in await served.tokenize(texts, options):
            pairs = list(zip(ids, tokens, strict=True))
            if not add_special:
                pairs = [(i, t) for i, t in pairs if i not in special]
            out.append(
                [{"id": i, "text": t, "special": i in special, "start": None, "stop": None} for i, t in pairs]
            )
        return _json(out)

    async def tei_info(self, request: Request, request_id: str) -> Response:
        served = self._model(request.query_params.get("model"), "http:/info")
        facts = served.facts
        return _json(
            {
                "model_id": facts.source,
                "model_sha": None,
                "model_dtype": facts.dtype,
                "model_type": {"embedding": {"pooling": facts.settings.pooling}},
                "max_concurrent_requests": self.config.max_queue_requests,
                "max_input_length": facts.max_length,
                "max_batch_tokens": facts.token_budget,
                "max_batch_requests": facts.max_batch_size,
                "max_client_batch_size": self.config.max_inputs_per_request,
                "auto_truncate": False,
                "tokenization_workers": self.config.tokenizer_threads,
                "version": embedsvc.__version__,
                "sha": None,
                "docker_label": None,
                "prompts": facts.settings.prompts,
                "name": facts.name,
                "dimension": facts.dimension,
            }
        )

    async def health(self, request: Request) -> Response:
        try:
            self.registry.get("")
        except UnavailableError as exc:
            return _json({"error": str(exc), "error_type": "Unhealthy"}, 503)
        return Response(status_code=200)

    def _count(self, served: ModelService, counts: list[int]) -> None:
        self.metrics.inputs.labels(served.name).inc(len(counts))
        self.metrics.tokens.labels(served.name).inc(sum(counts))


# ------------------------------------------------------------------- inputs


def _openai_input(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(v, int) or (isinstance(v, list) and all(isinstance(x, int) for x in v)) for v in value
        )
    ):
        raise InvalidInputError(
            "input holds token ids; embedsvc takes text (its models have their own tokenizers). "
            "LangChain's OpenAIEmbeddings sends tiktoken ids unless check_embedding_ctx_length=False",
            field="input",
        )
    if value is None or value == [] or value == "":
        raise InvalidInputError("input must be a string or a non-empty list of strings", field="input")
    raise InvalidInputError("input must be a string or a list of strings", field="input")


def _tei_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise InvalidInputError("inputs must be a string or a non-empty list of strings", field="inputs")


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{key} must be a string", field=key)
    return value or None


def _optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{key} must be an integer", field=key)
    return value


# ------------------------------------------------------------------- serving


@contextlib.asynccontextmanager
async def serve_http(
    app: Starlette, host: str, port: int, tls: tuple[str, str] | None = None
) -> AsyncIterator[int]:
    """Run uvicorn on the running event loop (beside gRPC); yields the bound port. ``tls``: (cert, key)."""
    import asyncio

    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def]
            yield  # the gRPC server's handlers own SIGTERM / SIGINT

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=10,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start (port in use, ...)
            raise RuntimeError("the HTTP server stopped during start-up")
        await asyncio.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield int(bound)
    finally:
        server.should_exit = True
        await task
