"""Move an index from an embedsvc data directory into an external store, by id (rerunnable)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from embedsvc.stores.base import VectorStore


def export_index(
    data_dir: Path,
    name: str,
    store: VectorStore,
    *,
    collection: str | None = None,
    batch_size: int = 1000,
    restart: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Copy every item of index ``name`` (vectors as stored, ids, metadata) into ``store``'s collection
    (default: the index's name). Offline: the data directory's lock is taken, so the server must be
    stopped. Writes replace by id: an interrupted export is finished by running it again."""
    from embedsvc.index.manager import IndexManager

    target = collection or name
    started = time.monotonic()
    manager = IndexManager(data_dir)
    try:
        source = manager.get(name)
        spec = source.spec
        tokens_out = spec.multi_vector and store.keeps_token_vectors
        store.prepare(
            target,
            spec.dimension,
            spec.metric,
            restart=restart,
            sparse=spec.sparse,
            multi_vector_dimension=spec.multi_vector_dimension if tokens_out else 0,
        )
        ids = source.ids()
        for start in range(0, len(ids), batch_size):
            found, _ = source.get(ids[start : start + batch_size])
            batch_ids = [item_id for item_id, _, _ in found]
            vectors = [vector for _, vector, _ in found]
            parts = source.parts(batch_ids) if spec.sparse or tokens_out else {}
            store.upsert(
                target,
                batch_ids,
                _stack(vectors, spec.dimension),
                [meta for _, _, meta in found],
                sparse=[parts[i][0] for i in batch_ids] if spec.sparse else None,
                tokens=[parts[i][1] for i in batch_ids] if tokens_out else None,
            )
            if progress:
                done = min(start + batch_size, len(ids))
                print(f"embedsvc index export: {done}/{len(ids)} items", file=sys.stderr, flush=True)
        in_store = store.count(target)
    finally:
        manager.close()
    return {
        "index": name,
        "store": store.kind,
        "location": store.location,
        "collection": target,
        "metric": spec.metric,
        "dimension": spec.dimension,
        "exported": len(ids),
        "sparse": spec.sparse,
        "token_vectors": (
            "exported" if tokens_out else f"not exported: {store.kind} has no multi-vector field"
        )
        if spec.multi_vector
        else "none",
        "count_in_store": in_store,
        "seconds": round(time.monotonic() - started, 3),
    }


def _stack(vectors: list[Any], dimension: int) -> Any:
    import numpy as np

    return np.stack(vectors) if vectors else np.zeros((0, dimension), dtype=np.float32)
