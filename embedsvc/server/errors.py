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


def message_for(exc: BaseException) -> str:
    field = getattr(exc, "field", None)
    text = str(exc)
    return f"{field}: {text}" if field and not text.startswith(f"{field}") else text
