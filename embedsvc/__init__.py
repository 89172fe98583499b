"""embedsvc: transformer checkpoints as fast, trustworthy text embedders over gRPC."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncEmbedClient", "EmbedClient", "Embedder", "__version__"]

if TYPE_CHECKING:
    from embedsvc.client import AsyncEmbedClient, EmbedClient
    from embedsvc.engine.embedder import Embedder


def __getattr__(name: str) -> Any:
    # lazy: importing the client must not import torch, nor the engine grpc
    if name == "Embedder":
        from embedsvc.engine.embedder import Embedder

        return Embedder
    if name in ("EmbedClient", "AsyncEmbedClient"):
        from embedsvc import client

        return getattr(client, name)
    raise AttributeError(f"module 'embedsvc' has no attribute {name!r}")
