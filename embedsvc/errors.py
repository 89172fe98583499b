"""Exception types shared by the engine, the server and the client.

The engine raises these; the server maps each to one gRPC status code, so the
type says *what kind* of problem it is and the message says what to fix.
"""

from __future__ import annotations


class EmbedsvcError(Exception):
    """Base class of every error embedsvc raises on purpose."""


class InvalidInputError(EmbedsvcError, ValueError):
    """A request or option is malformed (maps to INVALID_ARGUMENT).

    ``field`` names the offending request field when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TextTooLongError(InvalidInputError):
    """A text exceeds the model's max length while truncation is ``"none"``."""

    # how to ask for truncation, in the words of the door the request came through
    REMEDY = "pass truncation='end' (keep the start), 'start' (keep the end) or enable chunked mode"

    def __init__(self, index: int, n_tokens: int, limit: int, remedy: str = REMEDY) -> None:
        super().__init__(
            f"input {index} has {n_tokens} tokens, more than the model's limit of {limit}; "
            f"shorten it, or {remedy}",
            field="inputs",
        )
        self.index = index
        self.n_tokens = n_tokens
        self.limit = limit


class PayloadTooLargeError(InvalidInputError):
    """A request body over the message limit (HTTP 413; gRPC refuses such messages itself)."""


class UnauthenticatedError(EmbedsvcError):
    """No valid API key (maps to UNAUTHENTICATED / HTTP 401)."""


class ModelLoadError(EmbedsvcError):
    """A model source could not be found or loaded."""


class ModelNotFoundError(EmbedsvcError, LookupError):
    """A request names a model that is not served (maps to NOT_FOUND)."""


class OverloadedError(EmbedsvcError):
    """A bounded queue is full, or a request is over a size limit (maps to RESOURCE_EXHAUSTED).

    ``retry_after_s`` is how long the caller should wait before retrying; the doors send it (gRPC
    trailing metadata ``retry-after-ms``, HTTP ``Retry-After``)."""

    DEFAULT_RETRY_AFTER_S = 1.0

    def __init__(self, message: str, *, retry_after_s: float = DEFAULT_RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StorageFullError(EmbedsvcError):
    """The disk holding an index is full; nothing was written (maps to RESOURCE_EXHAUSTED)."""

    retry_after_s = 10.0  # an operator has to free space: retrying at once is pointless


class UnavailableError(EmbedsvcError):
    """The service is loading or draining (maps to UNAVAILABLE); ``retry_after_s`` when known."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class IndexNotFoundError(EmbedsvcError, LookupError):
    """No index of that name (maps to NOT_FOUND)."""


class IndexExistsError(EmbedsvcError):
    """An index of that name already exists (maps to ALREADY_EXISTS)."""


class CorruptDataError(EmbedsvcError):
    """A snapshot or log on disk failed its checks (maps to DATA_LOSS); it is never loaded silently."""


class FailedPreconditionError(EmbedsvcError):
    """Impossible now (maps to FAILED_PRECONDITION): e.g. an index's model is not served."""


class StartupError(EmbedsvcError):
    """The server cannot start as configured: a port in use, an unreadable certificate, a data directory
    it cannot write."""
