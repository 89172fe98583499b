"""Exception types shared by the engine, the server, the pipeline and the client.

Every class carries a :class:`Category` (*what kind* of problem it is); each door maps categories, not
classes, once: gRPC status codes in ``server/errors.py``, HTTP statuses with OpenAI/TEI error types in
``server/http/plumbing.py``, CLI exit codes in ``cli/failures.py``. Adding an error class therefore means
a class here with its category, nothing else. The message says what to fix.
"""

from __future__ import annotations

import enum


class Category(enum.Enum):
    """The kinds of failure the doors tell apart (docs/serving.md "Errors" lists their statuses)."""

    INVALID = "invalid"  # a malformed request, option, flag or file content
    TOO_LARGE = "too_large"  # a request body over the message limit
    TOO_LONG = "too_long"  # a text over the model's length while truncation is off
    UNAUTHENTICATED = "unauthenticated"  # no valid API key
    NOT_FOUND = "not_found"  # a model, index, id or file that does not exist
    ALREADY_EXISTS = "already_exists"
    FAILED_PRECONDITION = "failed_precondition"  # impossible in the present state
    OVERLOADED = "overloaded"  # a bounded queue is full: retry later
    STORAGE_FULL = "storage_full"  # the disk is full: an operator has to free space
    UNAVAILABLE = "unavailable"  # loading, draining or unreachable
    DEADLINE_EXCEEDED = "deadline_exceeded"
    DATA_LOSS = "data_loss"  # data on disk failed its checks
    CANNOT_LOAD = "cannot_load"  # a model, certificate, port or directory the process needs
    MISSING_EXTRA = "missing_extra"  # an optional dependency is not installed
    STOPPED = "stopped"  # a long job stopped with its progress saved: rerun to continue
    INTERNAL = "internal"  # a bug


class EmbedsvcError(Exception):
    """Base class of every error embedsvc raises on purpose; a subclass sets ``category``."""

    category: Category = Category.INTERNAL


def category_of(exc: BaseException) -> Category:
    """The category of any exception: its own for embedsvc's, a missing extra for ImportError, else a bug."""
    if isinstance(exc, EmbedsvcError):
        return exc.category
    if isinstance(exc, ImportError):  # an optional extra that is not installed
        return Category.MISSING_EXTRA
    return Category.INTERNAL


class InvalidInputError(EmbedsvcError, ValueError):
    """A request or option is malformed (maps to INVALID_ARGUMENT).

    ``field`` names the offending request field when there is one.
    """

    category = Category.INVALID

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TaskMismatchError(InvalidInputError):
    """A call the served model's task does not answer: ``embed`` on a reranker, ``score`` on an embedder.

    The message names the model's task and the call to use instead."""

    category = Category.INVALID


class TextTooLongError(InvalidInputError):
    """A text exceeds the model's max length while truncation is ``"none"``."""

    category = Category.TOO_LONG

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

    category = Category.TOO_LARGE


class UnauthenticatedError(EmbedsvcError):
    """No valid API key (maps to UNAUTHENTICATED / HTTP 401)."""

    category = Category.UNAUTHENTICATED


class ModelLoadError(EmbedsvcError):
    """A model source could not be found or loaded."""

    category = Category.CANNOT_LOAD


class ModelNotFoundError(EmbedsvcError, LookupError):
    """A request names a model that is not served (maps to NOT_FOUND)."""

    category = Category.NOT_FOUND


class OverloadedError(EmbedsvcError):
    """A bounded queue is full, or a request is over a size limit (maps to RESOURCE_EXHAUSTED).

    ``retry_after_s`` is how long the caller should wait before retrying; the doors send it (gRPC
    trailing metadata ``retry-after-ms``, HTTP ``Retry-After``)."""

    category = Category.OVERLOADED

    DEFAULT_RETRY_AFTER_S = 1.0

    def __init__(self, message: str, *, retry_after_s: float = DEFAULT_RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StorageFullError(EmbedsvcError):
    """The disk holding an index is full; nothing was written (maps to RESOURCE_EXHAUSTED)."""

    category = Category.STORAGE_FULL

    retry_after_s = 10.0  # an operator has to free space: retrying at once is pointless


class UnavailableError(EmbedsvcError):
    """The service is loading or draining (maps to UNAVAILABLE); ``retry_after_s`` when known."""

    category = Category.UNAVAILABLE

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class IndexNotFoundError(EmbedsvcError, LookupError):
    """No index of that name (maps to NOT_FOUND)."""

    category = Category.NOT_FOUND


class IndexExistsError(EmbedsvcError):
    """An index of that name already exists (maps to ALREADY_EXISTS)."""

    category = Category.ALREADY_EXISTS


class CorruptDataError(EmbedsvcError):
    """A snapshot or log on disk failed its checks (maps to DATA_LOSS); it is never loaded silently."""

    category = Category.DATA_LOSS


class FailedPreconditionError(EmbedsvcError):
    """Impossible now (maps to FAILED_PRECONDITION): e.g. an index's model is not served."""

    category = Category.FAILED_PRECONDITION


class StartupError(EmbedsvcError):
    """The server cannot start as configured: a port in use, an unreadable certificate, a data directory
    it cannot write."""

    category = Category.CANNOT_LOAD


class DeadlineExceededError(EmbedsvcError, TimeoutError):
    """The request's deadline passed before its work could finish (maps to DEADLINE_EXCEEDED)."""

    category = Category.DEADLINE_EXCEEDED


class MissingExtraError(EmbedsvcError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    category = Category.MISSING_EXTRA


class PipelineStopped(EmbedsvcError, RuntimeError):
    """An index build stopped with its progress saved; rerunning the same command continues it."""

    category = Category.STOPPED
