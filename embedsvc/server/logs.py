"""Server logging: JSON lines, or plain lines that keep every structured field as key=value."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any

# color_message: uvicorn's copy of its message with terminal colour codes
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}
# third-party loggers whose INFO lines alarm or clutter (faiss's loader reports a missing AVX512 build
# as a ModuleNotFoundError although it falls back to the generic one as designed)
QUIET_LOGGERS = ("faiss", "faiss.loader", "httpx", "httpcore", "urllib3", "filelock", "asyncio")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED}


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _plain_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (not text or any(c in text for c in ' ="\n')) else text


class PlainFormatter(logging.Formatter):
    """``TIME LEVEL logger message key=value ...``: readable, and nothing the JSON form has is lost."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        parts += [f"{key}={_plain_value(value)}" for key, value in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class ThirdPartyRootInfo(logging.Filter):
    """Drops INFO/DEBUG that libraries log on the root logger itself (``logging.info(...)``): ONNX
    Runtime's quantizer writes ~40 "Quantization parameters for tensor ..." lines that way, and its
    advice to pre-process models as a warning. Our own loggers are named; other libraries' warnings
    and everyone's errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root" or record.levelno >= logging.ERROR:
            return True
        return record.levelno >= logging.WARNING and "onnxruntime" not in record.pathname


# absl / gRPC C-core prefix: "E1130 12:00:00.123456   4242 ssl_transport_security.cc:1659] message"
_NATIVE_LINE = re.compile(r"^([DIWEF])\d{4} [\d:.]+\s+\d+ ([^\]]+)\] ?(.*)$")
_NATIVE_LEVELS = {"D": logging.DEBUG, "I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR}


def _pump_native(read_fd: int) -> None:
    log = logging.getLogger("native")
    with os.fdopen(read_fd, "rb") as lines:
        for raw in lines:
            text = raw.decode(errors="replace").rstrip()
            if not text:
                continue
            match = _NATIVE_LINE.match(text)
            if match:
                level = _NATIVE_LEVELS.get(match.group(1), logging.CRITICAL)
                log.log(level, match.group(3), extra={"source": match.group(2)})
            else:
                log.warning(text)


def capture_native_stderr() -> None:
    """Route what native code writes to file descriptor 2 (gRPC's C core, ONNX Runtime's C++ logger)
    into the log, one record per line, so that every line the server prints has the log's format
    (a wrong-protocol client made gRPC print a raw "Handshake failed" line). Python's own stderr keeps
    the original descriptor, so error messages at exit never depend on the reader thread."""
    try:
        original = os.dup(2)
        read_fd, write_fd = os.pipe()
    except OSError:
        return
    sys.stderr.flush()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    sys.stderr = open(original, "w", buffering=1, errors="backslashreplace")  # noqa: SIM115 - process-long
    threading.Thread(target=_pump_native, args=(read_fd,), name="native-stderr", daemon=True).start()


def configure(level: str, json_lines: bool, native: bool = False) -> None:
    """Log lines to stderr; ``native``: native libraries' stderr lines become records too."""
    if native:
        capture_native_stderr()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else PlainFormatter())
    handler.addFilter(ThirdPartyRootInfo())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # warnings.warn from libraries: records in the same format
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
