"""Milvus as a vector store: a server or cluster (``http(s)://HOST:19530``), or Milvus Lite in a file.

Collections embedsvc creates: ``id`` VARCHAR primary key (the item id itself), ``vector``
FLOAT_VECTOR with an AUTOINDEX for the metric, ``metadata`` JSON (filter with expressions such as
``metadata["lang"] == "en"``; list values are JSON arrays: ``json_contains(metadata["tags"], "a")``).
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

    def prepare(self, collection: str, dimension: int, metric: str, *, restart: bool = False) -> None:
        client = self.client
        exists = self.retry("has_collection", lambda: client.has_collection(collection))
        if exists and restart:
            self.retry("drop_collection", lambda: client.drop_collection(collection))
            self._loaded.discard(collection)
            exists = False
        if not exists:
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", self.data_type.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
            schema.add_field("vector", self.data_type.FLOAT_VECTOR, dim=dimension)
            schema.add_field("metadata", self.data_type.JSON)
            index = client.prepare_index_params()
            index.add_index("vector", index_type="AUTOINDEX", metric_type=METRICS[metric])
            self.retry(
                "create_collection",
                lambda: client.create_collection(collection, schema=schema, index_params=index),
            )
            return
        described = self.retry("describe_collection", lambda: client.describe_collection(collection))
        fields = {f["name"]: f for f in described["fields"]}
        vector, key, meta = fields.get("vector"), fields.get("id"), fields.get("metadata")
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
    ) -> None:
        array = check_items(ids, vectors, metadata)
        for i, item_id in enumerate(ids):
            if len(item_id.encode()) > MAX_ID_BYTES:
                raise InvalidInputError(
                    f"item {i}: Milvus ids hold at most {MAX_ID_BYTES} bytes", field="ids"
                )
        rows = [
            {"id": i, "vector": v.tolist(), "metadata": dict(m)}
            for i, v, m in zip(ids, array, metadata, strict=True)
        ]
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

    def close(self) -> None:
        self.client.close()
        if self._lite:  # Milvus Lite keeps serving (and locking) the file until told, or until exit
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.location)
