"""What every external vector store offers embedsvc, and how one is opened from a kind and a URL."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from embedsvc.errors import EmbedsvcError, InvalidInputError, MissingExtraError, UnavailableError

log = logging.getLogger("embedsvc.stores")
STORE_KINDS = ("qdrant", "milvus")
T = TypeVar("T")


class VectorStore(ABC):
    """A collection-holding vector engine. Writes replace by id and are durable when they return."""

    kind: str

    def __init__(self, location: str, *, retries: int = 5) -> None:
        self.location = location
        self.retries = retries

    @abstractmethod
    def prepare(
        self,
        collection: str,
        dimension: int,
        metric: str,
        *,
        restart: bool = False,
        sparse: bool = False,
        multi_vector_dimension: int = 0,
    ) -> None:
        """Create ``collection`` if missing (dropped first with ``restart``); an existing one must have
        this dimension and metric (FailedPreconditionError otherwise). ``sparse`` /
        ``multi_vector_dimension``: a sparse vector / token vectors per item too (dimension 0: no dense
        vector), where the engine holds them (``keeps_token_vectors``)."""

    @abstractmethod
    def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[Mapping[str, Any]],
        *,
        sparse: Sequence[Any] | None = None,
        tokens: Sequence[Any] | None = None,
    ) -> None:
        """Insert or replace items by id, metadata included (no key of an earlier version survives);
        ``sparse``: (term ids, weights) per item; ``tokens``: [tokens, width] per item."""

    keeps_token_vectors = True  # False: the engine has no multi-vector field (token vectors are not written)

    def get_parts(self, collection: str, ids: Sequence[str]) -> dict[str, tuple[Any, Any]]:
        """``{id: (sparse (ids, weights) or None, token vectors or None)}`` for the ids that exist."""
        raise NotImplementedError

    @abstractmethod
    def count(self, collection: str) -> int: ...

    @abstractmethod
    def get(self, collection: str, ids: Sequence[str]) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        """``{id: (vector, metadata)}`` for the ids that exist."""

    @abstractmethod
    def close(self) -> None: ...

    def retry(self, what: str, call: Callable[[], T]) -> T:
        """A call to the engine, retried with backoff; the last failure becomes UnavailableError."""
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                return call()
            except EmbedsvcError:
                raise  # our own checks: retrying cannot help
            except Exception as exc:  # the engines' clients raise their own types (HTTP, gRPC, Milvus)
                if attempt == self.retries:
                    raise UnavailableError(
                        f"{self.kind} at {self.location}: {what} failed {self.retries + 1} times in a row "
                        f"({type(exc).__name__}: {exc})"
                    ) from exc
                log.warning("%s %s failed (%s); retrying in %.1fs", self.kind, what, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")


def check_items(ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[Mapping[str, Any]]) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or len(array) != len(ids) or len(metadata) != len(ids):
        raise InvalidInputError(
            f"{len(ids)} ids, {len(array)} vectors and {len(metadata)} metadata entries: they must match",
            field="items",
        )
    if not np.isfinite(array).all():
        raise InvalidInputError("a vector contains NaN or infinity", field="vectors")
    for i, item_id in enumerate(ids):
        if not isinstance(item_id, str) or not item_id:
            raise InvalidInputError(f"item {i}: ids must be non-empty strings", field="ids")
    return array


def open_store(kind: str, url: str, *, api_key: str | None = None, retries: int = 5) -> VectorStore:
    """``qdrant``: ``http(s)://HOST:6333`` (a server or cluster; ``api_key`` or QDRANT_API_KEY), or a
    directory (Qdrant's local mode). ``milvus``: ``http(s)://HOST:19530`` (``api_key`` is the token, or
    MILVUS_TOKEN), or a ``*.db`` file (Milvus Lite)."""
    if kind == "qdrant":
        from embedsvc.stores.qdrant import QdrantStore

        return QdrantStore(url, api_key=api_key, retries=retries)
    if kind == "milvus":
        from embedsvc.stores.milvus import MilvusStore

        return MilvusStore(url, token=api_key, retries=retries)
    raise InvalidInputError(f"unknown store {kind!r}; choose one of {', '.join(STORE_KINDS)}", field="store")


def needs(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"this store needs {module}: pip install 'embedsvc[{extra}]'") from exc
