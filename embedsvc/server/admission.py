"""What is checked when a request arrives, before any tokenizing: sizes, tenant, and a work estimate.

Sizes are limited per text (``max_text_bytes``) and per request (``max_request_bytes``), well under
the gRPC message limit: a 40 MB text once cost 9.8 GB of memory and minutes of tokenizing. The
estimate (UTF-8 bytes / 3, capped at the model's limit per text unless chunked: about one token
per 3-4 bytes in English, per 3 bytes in CJK) is what the scheduler admits against its queue bound.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from embedsvc.config import ServerConfig
from embedsvc.errors import InvalidInputError

INLINE_TOKENIZE_CHARS = 2048  # requests this small are tokenized on the event loop (well under 1 ms)
INLINE_TOKENIZE_TEXTS = 16  # ... when they are also this few texts (the per-text work is in Python)
SMALL_REQUEST_BYTES = 64 * 1024  # tokenized on the small-request thread, never behind a big request


def tenant_of(context: Any) -> str:
    """Whose work this is, for fair shares: the API key when there is one, else the connection."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            return "key:" + hashlib.sha256(value.encode()).hexdigest()[:12]
    return str(context.peer() or "-")


def request_estimate(
    texts: Sequence[str], config: ServerConfig, *, max_length: int, chunked: bool
) -> tuple[int, int]:
    """(UTF-8 bytes, estimated tokens) of a request; InvalidInputError naming the limit when over one."""
    text_limit, request_limit = config.max_text_bytes or 0, config.max_request_bytes or 0
    total_bytes = 0
    tokens = 0
    for i, text in enumerate(texts):
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if size > text_limit:
            raise InvalidInputError(
                f"input {i} is {size} bytes; the limit is {text_limit} bytes per text "
                "(max_text_bytes): split it into several inputs, or raise the limit",
                field="inputs",
            )
        total_bytes += size
        estimate = size // 3 + 2
        tokens += estimate if chunked else min(estimate, max_length)
    if total_bytes > request_limit:
        raise InvalidInputError(
            f"the request's texts are {total_bytes} bytes; the limit is {request_limit} bytes "
            "per request (max_request_bytes): send them in several requests",
            field="inputs",
        )
    return total_bytes, tokens
