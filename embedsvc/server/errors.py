"""The gRPC door's one error table: error categories to status codes, and back for the client."""

from __future__ import annotations

import grpc

from embedsvc.errors import Category, category_of

# the gRPC door's one table: every category has a code (tests/test_errors.py pins that)
CODES: dict[Category, grpc.StatusCode] = {
    Category.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Category.TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,  # gRPC refuses big messages itself
    Category.TOO_LONG: grpc.StatusCode.INVALID_ARGUMENT,
    Category.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Category.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Category.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Category.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Category.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Category.STORAGE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Category.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Category.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Category.DATA_LOSS: grpc.StatusCode.DATA_LOSS,
    Category.CANNOT_LOAD: grpc.StatusCode.FAILED_PRECONDITION,
    Category.MISSING_EXTRA: grpc.StatusCode.FAILED_PRECONDITION,
    Category.STOPPED: grpc.StatusCode.ABORTED,
    Category.INTERNAL: grpc.StatusCode.INTERNAL,
}


# the reverse, for a client: the first category of each code above, plus codes only other servers send
_CATEGORIES: dict[grpc.StatusCode, Category] = {
    grpc.StatusCode.OUT_OF_RANGE: Category.INVALID,
    grpc.StatusCode.PERMISSION_DENIED: Category.UNAUTHENTICATED,
    grpc.StatusCode.ABORTED: Category.FAILED_PRECONDITION,  # a conflict; STOPPED is the CLI's own
}
for _category, _code in CODES.items():
    _CATEGORIES.setdefault(_code, _category)


def category_for(code: grpc.StatusCode) -> Category:
    """The category a status code received from a server stands for (INTERNAL for unknown codes)."""
    return _CATEGORIES.get(code, Category.INTERNAL)


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code of an expected error, or None for a bug (INTERNAL)."""
    category = category_of(exc)
    return None if category is Category.INTERNAL else CODES[category]


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
