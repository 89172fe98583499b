"""Which served model a request reaches, by name or, unnamed, by the task it asks for."""

from __future__ import annotations

from embedsvc.engine.service import ModelService
from embedsvc.server.registry import ModelRegistry


def served_for(registry: ModelRegistry, name: str | None, task: str) -> ModelService:
    """The model ``name`` names; with no name, the default model when it does ``task``, else the first
    served model that does (so a TEI client's unnamed /rerank reaches the reranker of a server whose
    default is an embedder). When none does, the default: its facade says which call it takes."""
    if name:
        return registry.get(name)
    default = registry.get("")
    if default.task == task:
        return default
    return next((m for m in registry.models.values() if m.task == task), default)
