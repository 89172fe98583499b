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
        try:
            from embedsvc.engine.embedder import Embedder
        except ModuleNotFoundError as exc:  # a client-only install: name the extra
            from embedsvc.extras import install_hint

            hint = install_hint("embedsvc.Embedder", exc, ("server",))
            if hint is None:
                raise
            raise ImportError(hint) from exc
        return Embedder
    if name in ("EmbedClient", "AsyncEmbedClient"):
        from embedsvc import client

        return getattr(client, name)
    raise AttributeError(f"module 'embedsvc' has no attribute {name!r}")
