"""One place that maps embedsvc exceptions to gRPC status codes."""

from __future__ import annotations

import grpc

from embedsvc.engine.scheduler import DeadlineExceededError
from embedsvc.errors import (
    CorruptDataError,
    FailedPreconditionError,
    IndexExistsError,
    IndexNotFoundError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    OverloadedError,
    StorageFullError,
    UnauthenticatedError,
    UnavailableError,
)

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StorageFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ModelLoadError, grpc.StatusCode.FAILED_PRECONDITION),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (IndexNotFoundError, grpc.StatusCode.NOT_FOUND),
    (IndexExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (CorruptDataError, grpc.StatusCode.DATA_LOSS),
    (ImportError, grpc.StatusCode.FAILED_PRECONDITION),  # an optional extra is not installed
)


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code of an expected error, or None for a bug (INTERNAL)."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return None


RETRY_AFTER_MS = "retry-after-ms"  # trailing metadata: how long to wait before retrying, decimal ms


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds a refused caller should wait before retrying, when the error says (overload, loading)."""
    value = getattr(exc, "retry_after_s", None)
    return float(value) if isinstance(value, int | float) and value > 0 else None


def retry_metadata(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """The retry hint as trailing metadata (``retry-after-ms``), or nothing."""
    seconds = retry_after_s(exc)
    return () if seconds is None else ((RETRY_AFTER_MS, str(max(1, round(seconds * 1000)))),)


def message_for(exc: BaseException) -> str:
    field = getattr(exc, "field", None)
    text = str(exc)
    return f"{field}: {text}" if field and not text.startswith(f"{field}") else text
