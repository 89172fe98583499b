"""External vector engines as the place vectors go when one node is not enough: Qdrant and Milvus.

The indexing pipeline (``embedsvc index build --to qdrant URL``), ``embedsvc index export`` and Python
code write through :func:`open_store`; ids, metadata and replace-by-id semantics are the built-in
index's, so reruns stay exactly-once. Searching is done with the engine's own client (see the README).

May import: ``index/`` (an export reads a built index), ``errors``, and each engine's client library,
lazily. Never ``engine/``, ``server/``, ``pipeline/`` or ``cli/``: the pipeline embeds, a store only
stores (``tests/test_layering.py`` pins this).
"""

from __future__ import annotations

from embedsvc.stores.base import STORE_KINDS, VectorStore, open_store

__all__ = ["STORE_KINDS", "VectorStore", "open_store"]
