"""Qdrant as a vector store: a server or cluster over HTTP, or its local mode in a directory.

Points: id = uuid5(POINT_NAMESPACE, item id) (Qdrant ids are integers or UUIDs), payload
``{"id": item id, "metadata": {...}}`` (filter with keys such as ``metadata.lang``), one unnamed vector
— or, for an index with sparse vectors or token vectors, named ones: ``dense`` (absent without dense
vectors), ``sparse`` (a Qdrant sparse vector: query it with ``using="sparse"``) and ``tokens`` (a
multivector compared by MAX_SIM, dot product: Qdrant's ColBERT-style late interaction).
List values (tags) are payload arrays: Qdrant's ``match`` on ``metadata.tags`` holds when any element does.
Qdrant's upsert replaces a point's payload whole, so a rewritten item keeps no stale metadata.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from embedsvc.errors import FailedPreconditionError
from embedsvc.stores.base import VectorStore, check_items, needs

POINT_NAMESPACE = uuid.UUID("6f0c4a52-8a38-4c36-9d3b-6c1f2d1e9a10")
DENSE, SPARSE, TOKENS = "dense", "sparse", "tokens"  # the named vectors of a collection with more than one


def point_id(item_id: str) -> str:
    """The Qdrant point id of an embedsvc item id."""
    return str(uuid.uuid5(POINT_NAMESPACE, item_id))


class QdrantStore(VectorStore):
    kind = "qdrant"

    def __init__(self, url: str, *, api_key: str | None = None, retries: int = 5) -> None:
        super().__init__(url, retries=retries)
        qdrant = needs("qdrant_client", "qdrant")
        self.models = qdrant.models
        if url.startswith(("http://", "https://")):
            key = api_key or os.environ.get("QDRANT_API_KEY")
            self.client = qdrant.QdrantClient(url=url, api_key=key, timeout=120)
        else:  # local mode keeps its data in this directory; its storage is not thread-safe
            self.client = qdrant.QdrantClient(path=url, force_disable_check_same_thread=True)
        self._lock = threading.Lock()
        self._named: set[str] = set()  # collections with named vectors (prepared with sparse / tokens)
        self._distances = {
            "cosine": self.models.Distance.COSINE,
            "inner_product": self.models.Distance.DOT,
            "l2": self.models.Distance.EUCLID,
        }

    def _call(self, what: str, call: Any) -> Any:
        with self._lock:
            return self.retry(what, call)

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
        distance = self._distances[metric]
        exists = self._call("collection_exists", lambda: self.client.collection_exists(collection))
        if exists and restart:
            self._call("delete_collection", lambda: self.client.delete_collection(collection))
            exists = False
        if sparse or multi_vector_dimension:
            self._prepare_named(collection, exists, dimension, distance, sparse, multi_vector_dimension)
            return
        if not exists:
            params = self.models.VectorParams(size=dimension, distance=distance)
            self._call("create_collection", lambda: self.client.create_collection(collection, params))
            return
        info = self._call("get_collection", lambda: self.client.get_collection(collection))
        vectors = info.config.params.vectors
        if not isinstance(vectors, self.models.VectorParams):
            raise FailedPreconditionError(
                f"Qdrant collection {collection!r} has named vectors; embedsvc writes one unnamed vector: "
                "use another collection name"
            )
        if vectors.size != dimension or vectors.distance != distance:
            raise FailedPreconditionError(
                f"Qdrant collection {collection!r} holds {vectors.size}-dimensional vectors with "
                f"{vectors.distance.value} distance; this model gives {dimension} dimensions and the metric "
                f"is {metric}: use another collection name, the matching model and metric, or restart"
            )

    def _prepare_named(
        self, collection: str, exists: bool, dimension: int, distance: Any, sparse: bool, width: int
    ) -> None:
        m = self.models
        wanted: dict[str, Any] = {}
        if dimension:
            wanted[DENSE] = m.VectorParams(size=dimension, distance=distance)
        if width:
            late = m.MultiVectorConfig(comparator=m.MultiVectorComparator.MAX_SIM)
            wanted[TOKENS] = m.VectorParams(size=width, distance=m.Distance.DOT, multivector_config=late)
        sparse_config = {SPARSE: m.SparseVectorParams()} if sparse else None
        if not exists:
            self._call(
                "create_collection",
                lambda: self.client.create_collection(
                    collection, vectors_config=wanted, sparse_vectors_config=sparse_config
                ),
            )
        else:
            params = self._call(
                "get_collection", lambda: self.client.get_collection(collection)
            ).config.params
            have = params.vectors if isinstance(params.vectors, dict) else {}
            shapes = {name: (v.size, v.distance) for name, v in have.items()}
            if shapes != {name: (v.size, v.distance) for name, v in wanted.items()} or (
                sparse and SPARSE not in (params.sparse_vectors or {})
            ):
                raise FailedPreconditionError(
                    f"Qdrant collection {collection!r} does not hold the named vectors this index writes "
                    f"({', '.join([*wanted, *([SPARSE] if sparse else [])])}, with these sizes): use another "
                    "collection name, or restart"
                )
        self._named.add(collection)

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
        array = check_items(ids, vectors, metadata)
        if collection in self._named or sparse is not None or tokens is not None:
            named = [self._named_vector(array, sparse, tokens, j) for j in range(len(ids))]
            points = [
                self.models.PointStruct(id=point_id(i), vector=v, payload={"id": i, "metadata": dict(m)})
                for i, v, m in zip(ids, named, metadata, strict=True)
            ]
        else:
            points = [
                self.models.PointStruct(
                    id=point_id(i), vector=v.tolist(), payload={"id": i, "metadata": dict(m)}
                )
                for i, v, m in zip(ids, array, metadata, strict=True)
            ]
        # wait=True: acknowledged once applied and persisted, so a checkpoint may move past it
        self._call("upsert", lambda: self.client.upsert(collection, points, wait=True))

    def _named_vector(
        self, array: np.ndarray, sparse: Sequence[Any] | None, tokens: Sequence[Any] | None, j: int
    ) -> dict[str, Any]:
        vector: dict[str, Any] = {}
        if array.shape[1]:
            vector[DENSE] = array[j].tolist()
        if sparse is not None:
            ids, weights = sparse[j]
            vector[SPARSE] = self.models.SparseVector(
                indices=np.asarray(ids).tolist(), values=np.asarray(weights, dtype=np.float32).tolist()
            )
        if tokens is not None:
            vector[TOKENS] = np.asarray(tokens[j], dtype=np.float32).tolist()
        return vector

    def get_parts(self, collection: str, ids: Sequence[str]) -> dict[str, tuple[Any, Any]]:
        points = self._call(
            "retrieve",
            lambda: self.client.retrieve(
                collection, [point_id(i) for i in ids], with_vectors=True, with_payload=True
            ),
        )
        out: dict[str, tuple[Any, Any]] = {}
        for p in points:
            named = p.vector if isinstance(p.vector, dict) else {}
            found = named.get(SPARSE)
            out[p.payload["id"]] = (
                None if found is None else (np.asarray(found.indices), np.asarray(found.values, np.float32)),
                None if TOKENS not in named else np.asarray(named[TOKENS], dtype=np.float32),
            )
        return out

    def count(self, collection: str) -> int:
        return int(self._call("count", lambda: self.client.count(collection, exact=True)).count)

    def get(self, collection: str, ids: Sequence[str]) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        points = self._call(
            "retrieve",
            lambda: self.client.retrieve(
                collection, [point_id(i) for i in ids], with_vectors=True, with_payload=True
            ),
        )
        return {
            p.payload["id"]: (
                # named vectors: the dense one (none in an index without dense vectors)
                np.asarray(
                    p.vector.get(DENSE, []) if isinstance(p.vector, dict) else p.vector, dtype=np.float32
                ),
                dict(p.payload.get("metadata", {})),
            )
            for p in points
        }

    def close(self) -> None:
        with self._lock:
            self.client.close()
