"""Whose work a request is, for fair shares of a model's queue."""

from __future__ import annotations

import hashlib
from typing import Any

from embedsvc.server.auth import authorization_of, bearer_key


def _keyed(authorization: str | None) -> str | None:
    if not authorization:
        return None
    key = bearer_key(authorization) or authorization  # "Bearer k" and "bearer k" are one tenant
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def tenant_of(context: Any) -> str:
    """The API key when there is one (several connections share its share), else the connection."""
    return _keyed(authorization_of(context.invocation_metadata())) or str(context.peer() or "-")


def tenant_of_http(authorization: str | None, client: tuple[str, int] | None) -> str:
    """The same for an HTTP request: its bearer key, else its connection."""
    if keyed := _keyed(authorization):
        return keyed
    return f"http:{client[0]}:{client[1]}" if client else "http:-"
