"""Milvus as a vector store: a server or cluster (``http(s)://HOST:19530``), or Milvus Lite in a file.

Collections embedsvc creates: ``id`` VARCHAR primary key (the item id itself), ``vector``
FLOAT_VECTOR with an AUTOINDEX for the metric, ``metadata`` JSON (filter with expressions such as
``metadata["lang"] == "en"``; list values are JSON arrays: ``json_contains(metadata["tags"], "a")``).
An index with sparse vectors adds ``sparse`` SPARSE_FLOAT_VECTOR with an inverted index (inner product)
and has no ``vector`` field when it keeps no dense vectors. Token vectors are not written: Milvus has
no MaxSim field these clients create (``keeps_token_vectors`` is False; an export says so).
Metadata is one JSON field rather than dynamic fields: Milvus Lite 3.2's upsert keeps dynamic fields
the new row lacks (checked), so a rewritten item would keep stale keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from embedsvc.errors import FailedPreconditionError, InvalidInputError
from embedsvc.stores.base import VectorStore, check_items, needs

METRICS = {"cosine": "COSINE", "inner_product": "IP", "l2": "L2"}
MAX_ID_BYTES = 65_535  # Milvus's VARCHAR limit


class MilvusStore(VectorStore):
    kind = "milvus"
    keeps_token_vectors = False

    def __init__(self, uri: str, *, token: str | None = None, retries: int = 5) -> None:
        super().__init__(uri, retries=retries)
        pymilvus = needs("pymilvus", "milvus")
        self._lite = not uri.startswith(("http://", "https://", "tcp://"))
        if self._lite:
            needs("milvus_lite", "milvus")  # a local file: Milvus Lite runs it
        self.data_type = pymilvus.DataType
        self.client = pymilvus.MilvusClient(uri=uri, token=token or os.environ.get("MILVUS_TOKEN", ""))
        self._loaded: set[str] = set()

    def _load(self, collection: str) -> None:
        """Milvus answers get/query only for collections loaded into memory; a reopened one is not."""
        if collection not in self._loaded:
            self.retry("load_collection", lambda: self.client.load_collection(collection))
            self._loaded.add(collection)

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
        client = self.client
        exists = self.retry("has_collection", lambda: client.has_collection(collection))
        if exists and restart:
            self.retry("drop_collection", lambda: client.drop_collection(collection))
            self._loaded.discard(collection)
            exists = False
        if not exists:
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", self.data_type.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
            if dimension:
                schema.add_field("vector", self.data_type.FLOAT_VECTOR, dim=dimension)
            if sparse:
                schema.add_field("sparse", self.data_type.SPARSE_FLOAT_VECTOR)
            schema.add_field("metadata", self.data_type.JSON)
            index = client.prepare_index_params()
            if dimension:
                index.add_index("vector", index_type="AUTOINDEX", metric_type=METRICS[metric])
            if sparse:
                index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
            self.retry(
                "create_collection",
                lambda: client.create_collection(collection, schema=schema, index_params=index),
            )
            return
        described = self.retry("describe_collection", lambda: client.describe_collection(collection))
        fields = {f["name"]: f for f in described["fields"]}
        vector, key, meta = fields.get("vector"), fields.get("id"), fields.get("metadata")
        if sparse and fields.get("sparse", {}).get("type") != self.data_type.SPARSE_FLOAT_VECTOR:
            raise FailedPreconditionError(
                f"Milvus collection {collection!r} has no SPARSE_FLOAT_VECTOR field 'sparse' for this "
                "index's "
                "sparse vectors: use another collection name, or restart"
            )
        if not dimension:
            if vector is not None:
                raise FailedPreconditionError(
                    f"Milvus collection {collection!r} holds dense vectors; this index has none: use another "
                    "collection name, or restart"
                )
            return
        if (
            vector is None
            or key is None
            or meta is None
            or not key.get("is_primary")
            or vector["type"] != self.data_type.FLOAT_VECTOR
        ):
            raise FailedPreconditionError(
                f"Milvus collection {collection!r} does not have embedsvc's fields (id VARCHAR primary key, "
                f"vector FLOAT_VECTOR, metadata JSON; it has {sorted(fields)}): use another collection name"
            )
        have_metric = self.retry("describe_index", lambda: client.describe_index(collection, "vector"))
        have_dim = int(vector["params"]["dim"])
        if have_dim != dimension or have_metric.get("metric_type") != METRICS[metric]:
            raise FailedPreconditionError(
                f"Milvus collection {collection!r} holds {have_dim}-dimensional vectors indexed for "
                f"{have_metric.get('metric_type')}; this model gives {dimension} dimensions and the metric "
                f"is {metric}: use another collection name, the matching model and metric, or restart"
            )

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
        for i, item_id in enumerate(ids):
            if len(item_id.encode()) > MAX_ID_BYTES:
                raise InvalidInputError(
                    f"item {i}: Milvus ids hold at most {MAX_ID_BYTES} bytes", field="ids"
                )
        rows: list[dict[str, Any]] = [
            {"id": i, "metadata": dict(m)} for i, m in zip(ids, metadata, strict=True)
        ]
        for j, row in enumerate(rows):
            if array.shape[1]:
                row["vector"] = array[j].tolist()
            if sparse is not None:
                term_ids, weights = sparse[j]
                row["sparse"] = dict(
                    zip(np.asarray(term_ids).tolist(), np.asarray(weights).tolist(), strict=True)
                )
        self.retry("upsert", lambda: self.client.upsert(collection, rows))

    def count(self, collection: str) -> int:
        self._load(collection)
        rows = self.retry(
            "count",
            lambda: self.client.query(
                collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
            ),
        )
        return int(rows[0]["count(*)"])

    def get(self, collection: str, ids: Sequence[str]) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        self._load(collection)
        rows = self.retry(
            "get",
            lambda: self.client.get(collection, ids=list(ids), output_fields=["vector", "metadata"]),
        )
        return {
            r["id"]: (np.asarray(r["vector"], dtype=np.float32), dict(r.get("metadata") or {})) for r in rows
        }

    def get_parts(self, collection: str, ids: Sequence[str]) -> dict[str, tuple[Any, Any]]:
        self._load(collection)
        rows = self.retry("get", lambda: self.client.get(collection, ids=list(ids), output_fields=["sparse"]))
        out: dict[str, tuple[Any, Any]] = {}
        for r in rows:
            found = r.get("sparse")
            terms = sorted(found) if found is not None else []
            out[r["id"]] = (
                None
                if found is None
                else (np.asarray(terms, dtype=np.int64), np.asarray([found[t] for t in terms], np.float32)),
                None,
            )
        return out

    def close(self) -> None:
        self.client.close()
        if self._lite:  # Milvus Lite keeps serving (and locking) the file until told, or until exit
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.location)
