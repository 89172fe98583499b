"""Whose work a request is, for fair shares of a model's queue."""

from __future__ import annotations

import hashlib
from typing import Any


def tenant_of(context: Any) -> str:
    """The API key when there is one (several connections share its share), else the connection."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            return "key:" + hashlib.sha256(value.encode()).hexdigest()[:12]
    return str(context.peer() or "-")


def tenant_of_http(authorization: str | None, client: tuple[str, int] | None) -> str:
    """The same for an HTTP request: its bearer key, else its connection."""
    if authorization:
        return "key:" + hashlib.sha256(authorization.encode()).hexdigest()[:12]
    return f"http:{client[0]}:{client[1]}" if client else "http:-"
