"""What every HTTP route shares: errors to statuses, API keys, body limits, deadlines, cancellation
when the client goes away, and metrics labelled like gRPC's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from embedsvc.config import ServerConfig
from embedsvc.engine.options import Embedded, EmbedOptions
from embedsvc.engine.service import ModelService
from embedsvc.errors import (
    Category,
    InvalidInputError,
    PayloadTooLargeError,
    UnauthenticatedError,
    category_of,
)
from embedsvc.server.auth import HTTP_HINT, ApiKeys
from embedsvc.server.errors import retry_after_s
from embedsvc.server.metrics import Metrics
from embedsvc.server.registry import ModelRegistry
from embedsvc.server.tasks import served_for
from embedsvc.server.tenants import tenant_of_http

log = logging.getLogger("embedsvc.http")
T = TypeVar("T")


class Counted(Protocol):
    """What the engine answers (Embedded, Scored, Classified): tokens per input, for the metrics."""

    @property
    def token_counts(self) -> list[int]: ...


C = TypeVar("C", bound=Counted)
TIMEOUT_HEADER = "x-request-timeout"  # seconds the caller will wait (like gRPC's deadline)
FINGERPRINT_HEADER = "x-embedsvc-fingerprint"  # on every embedding answer: the model's fingerprint
OFF_LOOP_JSON_BYTES = 256 * 1024  # bigger bodies are parsed on a thread, never on the event loop
CLIENT_CLOSED = 499  # nginx's code for "the client closed the connection before the answer"

Handler = Callable[[Request, "Call"], Awaitable[Response]]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class ClientGoneError(Exception):
    """The client closed the connection before its answer; its work was cancelled."""


# ----------------------------------------------------------------------- errors


class HttpError(NamedTuple):
    """How one category reads over HTTP: OpenAI's status and error code, TEI's status and error_type."""

    status: int
    openai: str
    tei_status: int
    tei: str


# the HTTP door's one table: every category has a row (tests/test_errors.py pins that)
STATUSES: dict[Category, HttpError] = {
    Category.INVALID: HttpError(400, "invalid_request_error", 413, "Validation"),  # TEI says 413 for all
    Category.TOO_LARGE: HttpError(413, "request_too_large", 413, "Validation"),
    Category.TOO_LONG: HttpError(400, "context_length_exceeded", 413, "Validation"),
    Category.UNAUTHENTICATED: HttpError(401, "invalid_api_key", 401, "Unauthorized"),
    Category.NOT_FOUND: HttpError(404, "model_not_found", 404, "Validation"),  # only models over HTTP
    Category.ALREADY_EXISTS: HttpError(409, "already_exists", 409, "Validation"),
    Category.FAILED_PRECONDITION: HttpError(400, "failed_precondition", 400, "Validation"),
    Category.OVERLOADED: HttpError(429, "rate_limit_exceeded", 429, "Overloaded"),
    Category.STORAGE_FULL: HttpError(429, "rate_limit_exceeded", 429, "Overloaded"),
    Category.UNAVAILABLE: HttpError(503, "service_unavailable", 503, "Unhealthy"),
    Category.DEADLINE_EXCEEDED: HttpError(504, "timeout", 504, "Backend"),
    Category.DATA_LOSS: HttpError(500, "data_loss", 500, "Backend"),
    Category.CANNOT_LOAD: HttpError(400, "failed_precondition", 400, "Validation"),
    Category.MISSING_EXTRA: HttpError(400, "failed_precondition", 400, "Validation"),
    Category.STOPPED: HttpError(409, "aborted", 409, "Backend"),
    Category.INTERNAL: HttpError(500, "server_error", 500, "Backend"),
}
_CLIENT_MISTAKES = (400, 404, 409, 413)  # OpenAI's error type for these is "invalid_request_error"


def status_of(exc: BaseException, *, tei: bool) -> tuple[int, str]:
    """HTTP status and error type of an exception, as OpenAI's or TEI's API words it."""
    row = STATUSES[category_of(exc)]
    return (row.tei_status, row.tei) if tei else (row.status, row.openai)


def error_response(exc: BaseException, *, tei: bool, request_id: str) -> Response:
    status, kind = status_of(exc, tei=tei)
    bug = category_of(exc) is Category.INTERNAL
    message = (
        f"internal error (request id {request_id}); this is a bug, please report it" if bug else str(exc)
    )
    headers = {"x-request-id": request_id}
    wait = retry_after_s(exc)
    if status in (429, 503) and wait is not None:
        headers["Retry-After"] = str(max(1, math.ceil(wait)))  # whole seconds, as HTTP says
        headers["retry-after-ms"] = str(max(1, round(wait * 1000)))  # the openai SDK reads this first
    if tei:
        return json_response({"error": message, "error_type": kind}, status, headers)
    param = getattr(exc, "field", None)
    code = kind if kind not in ("invalid_request_error", "server_error") else None
    error_type = "invalid_request_error" if status in _CLIENT_MISTAKES else kind
    return json_response(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}, status, headers
    )


# ------------------------------------------------------------------ one request


class Call:
    """One HTTP request's context: its id, its tenant, its deadline, the model it reached."""

    def __init__(self, door: Door, request: Request, method: str, request_id: str) -> None:
        self.door = door
        self.request = request
        self.method = method
        self.id = request_id
        self.started = time.perf_counter()
        self.model = "default"
        self.timeout = _timeout(request.headers.get(TIMEOUT_HEADER))

    def remaining(self) -> float | None:
        return None if self.timeout is None else self.timeout - (time.perf_counter() - self.started)

    @property
    def tenant(self) -> str:
        client = (self.request.client.host, self.request.client.port) if self.request.client else None
        return tenant_of_http(self.request.headers.get("authorization"), client)

    def served(self, name: str | None, task: str = "embed") -> ModelService:
        """The model ``name`` names; unnamed, the default model or the first that does ``task``."""
        served = served_for(self.door.registry, name, task)
        self.model = served.name
        self.door.metrics.requests.labels(self.method, served.name).inc()
        return served

    async def body(self) -> dict[str, Any]:
        """The JSON object of the body, within max_message_bytes; big bodies parsed off the event loop."""
        limit = self.door.config.max_message_bytes
        declared = self.request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(
                f"request body is {declared} bytes; the limit is {limit} (max_message_bytes)", field="body"
            )
        chunks, size = [], 0
        async for chunk in self.request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(
                    f"request body is over the limit of {limit} bytes (max_message_bytes)", field="body"
                )
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            data = (
                orjson.loads(raw)
                if size <= OFF_LOOP_JSON_BYTES
                else await asyncio.to_thread(orjson.loads, raw)
            )
        except orjson.JSONDecodeError as exc:
            raise InvalidInputError(f"the request body is not valid JSON: {exc}", field="body") from None
        if not isinstance(data, dict):
            raise InvalidInputError("the request body must be a JSON object", field="body")
        return data

    async def embed(self, served: ModelService, texts: list[str], options: EmbedOptions) -> Embedded:
        return await self.infer(
            served, served.embed(texts, options, timeout=self.remaining(), tenant=self.tenant)
        )

    async def infer(self, served: ModelService, work: Awaitable[C]) -> C:
        """``work`` (a call of ``served`` given ``remaining()`` and ``tenant``) until the client goes away,
        its inputs and tokens counted like gRPC's."""
        result = await self.until_disconnected(work)
        self.door.metrics.inputs.labels(served.name).inc(len(result.token_counts))
        self.door.metrics.tokens.labels(served.name).inc(sum(result.token_counts))
        return result

    async def until_disconnected(self, work: Awaitable[T]) -> T:
        """``work``'s result, or ClientGoneError with ``work`` cancelled when the client goes away first
        (its queued sequences are then skipped, as for a cancelled gRPC call). Call after the body is read."""
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(self._disconnect())
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task  # the cancellation runs its clean-up (the queue skips what is left)
        if task.cancelled():
            raise ClientGoneError(f"the client closed the connection after {self.elapsed():.3f}s")
        return task.result()

    async def _disconnect(self) -> None:
        while (await self.request.receive())["type"] != "http.disconnect":
            pass

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def _timeout(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise InvalidInputError(
            f"{TIMEOUT_HEADER} must be a number of seconds above 0, got {value!r}", field=TIMEOUT_HEADER
        )
    return seconds


# ------------------------------------------------------------------ the door


class Door:
    """The models, settings, keys and metrics every route reaches through."""

    def __init__(self, registry: ModelRegistry, config: ServerConfig, metrics: Metrics) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self.keys = ApiKeys(config.api_keys)

    def endpoint(
        self, path: str, handler: Handler, *, tei: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """The route's handler with keys checked, errors mapped, metrics recorded."""
        method = f"http:{path}"

        async def run(request: Request) -> Response:
            request_id = uuid.uuid4().hex[:16]
            try:
                if not self.keys.allows(request.headers.get("authorization")):
                    raise UnauthenticatedError(HTTP_HINT)
                call = Call(self, request, method, request_id)
                response = await handler(request, call)
            except ClientGoneError:
                self.metrics.errors.labels(method, str(CLIENT_CLOSED)).inc()
                return Response(status_code=CLIENT_CLOSED)  # nobody reads it
            except Exception as exc:
                status, _ = status_of(exc, tei=tei)
                self.metrics.errors.labels(method, str(status)).inc()
                if status == 500:
                    log.exception("internal error", extra={"request_id": request_id, "method": method})
                return error_response(exc, tei=tei, request_id=request_id)
            self.metrics.request_seconds.labels(method, call.model).observe(call.elapsed())
            response.headers["x-request-id"] = call.id
            return response

        return run


# ------------------------------------------------------------------- inputs


def optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{key} must be a string", field=key)
    return value or None


def optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{key} must be an integer", field=key)
    return value


def boolean(body: dict[str, Any], key: str, default: bool) -> bool:
    """A JSON true/false (or absent/null: the default); strings such as "false" are refused, never truthy."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInputError(f"{key} must be true or false (a JSON boolean), got {value!r}", field=key)
    return value
