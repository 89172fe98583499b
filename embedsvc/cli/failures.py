"""What a failed command prints (one line saying what to do) and the exit code it returns."""

from __future__ import annotations

import grpc

from embedsvc import errors
from embedsvc.client import EmbedServiceError

# exit codes (README: "Exit codes"); argparse's own usage errors are 2 as well
OK = 0
FAILED = 1  # unexpected: a bug; --debug shows the traceback
USAGE = 2  # a flag, value, file content or request the server refused as invalid
STOPPED = 3  # index build stopped midway: rerun the same command to continue
NOT_FOUND = 4  # an index, model, id or file that does not exist
UNREACHABLE = 5  # the server (or store) could not be reached or did not answer in time
DENIED = 6  # API key missing or not accepted
CONFLICT = 7  # already exists, in the wrong state, or damaged data
EXHAUSTED = 8  # the server is overloaded or its disk is full: retry later
CANNOT_START = 9  # serve: a port in use, a model that does not load
MISSING_EXTRA = 10  # an optional dependency is not installed: the message names the extra
INTERRUPTED = 130

# the CLI's one table: every category has an exit code (tests/test_errors.py pins that)
EXIT_CODES: dict[errors.Category, int] = {
    errors.Category.INVALID: USAGE,
    errors.Category.TOO_LARGE: USAGE,
    errors.Category.TOO_LONG: USAGE,
    errors.Category.UNAUTHENTICATED: DENIED,
    errors.Category.NOT_FOUND: NOT_FOUND,
    errors.Category.ALREADY_EXISTS: CONFLICT,
    errors.Category.FAILED_PRECONDITION: CONFLICT,
    errors.Category.DATA_LOSS: CONFLICT,
    errors.Category.OVERLOADED: EXHAUSTED,
    errors.Category.STORAGE_FULL: EXHAUSTED,
    errors.Category.UNAVAILABLE: UNREACHABLE,
    errors.Category.DEADLINE_EXCEEDED: UNREACHABLE,
    errors.Category.CANNOT_LOAD: CANNOT_START,
    errors.Category.MISSING_EXTRA: MISSING_EXTRA,
    errors.Category.STOPPED: STOPPED,
    errors.Category.INTERNAL: FAILED,
}

# what the command's own file and argument checks raise, in categories (the CLI reads local files)
_LOCAL: tuple[tuple[type[BaseException], errors.Category], ...] = (
    (FileNotFoundError, errors.Category.NOT_FOUND),
    (IsADirectoryError, errors.Category.INVALID),
    (ValueError, errors.Category.INVALID),
)


def _category(exc: BaseException) -> errors.Category:
    category = errors.category_of(exc)
    if category is errors.Category.INTERNAL:
        category = next((c for kind, c in _LOCAL if isinstance(exc, kind)), category)
    return category


class CommandError(Exception):
    """A failure the command itself diagnosed: ``message`` is the whole line, ``code`` the exit code."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


def _server_message(exc: EmbedServiceError, target: str | None) -> str:
    where = f" at {target}" if target else ""
    if exc.code == grpc.StatusCode.UNAVAILABLE:
        reason = exc.details.splitlines()[0] if exc.details else "unavailable"
        return (
            f"cannot reach the server{where} ({reason}): "
            "is `embedsvc serve` running there? Point --target (or EMBEDSVC_TARGET) at it; a TLS server "
            "needs --tls or --tls-ca"
        )
    if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the server{where} did not answer within --timeout: raise it, or retry when it is less busy"
    if exc.code == grpc.StatusCode.UNAUTHENTICATED:
        return f"{exc.details}: pass --api-key KEY or set EMBEDSVC_API_KEY"
    return exc.details or exc.code.name


def describe(exc: BaseException, target: str | None = None) -> tuple[str, int]:
    """The one-line message and the exit code for ``exc``."""
    if isinstance(exc, CommandError):
        return str(exc), exc.code
    code = EXIT_CODES[_category(exc)]
    if isinstance(exc, EmbedServiceError):
        return _server_message(exc, target), code
    if code != FAILED:
        text = str(exc)
        if isinstance(exc, FileNotFoundError) and exc.filename:
            text = f"no such file: {exc.filename}"
        return text, code
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", FAILED
    return f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", FAILED
