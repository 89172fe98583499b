"""Indexing pipeline: read a corpus, chunk it, embed it into an index, resumably.

from embedsvc.pipeline import build_index
summary = build_index(["docs/*.jsonl"], index="docs", data_dir="./data")         # in process
summary = build_index(["docs/*.jsonl"], index="docs", target="127.0.0.1:50051")  # through a server

Rooms: ``readers`` (files -> records), ``chunking``, ``batching`` (records -> chunks -> batches with
stable ids), ``checkpoint`` (how far each file went, and the reader settings a rerun must keep),
``progress``, ``sinks`` (where batches go) and ``sink_factory`` (which sink, from the options),
``options`` / ``summary`` (what was asked, what was done), ``runner`` (the in-process orchestration)
and ``ray_runner`` (the same on Ray Data).

May import: ``engine/`` (local mode embeds in this process), ``index/`` (local mode writes an index
directory), ``models/`` (where a tokenizer comes from), ``stores/``, ``client`` and ``pacing`` (remote
mode), ``errors``. Never ``server/`` or ``cli/`` (``tests/test_layering.py`` pins this).
"""

from embedsvc.pipeline.options import BuildOptions
from embedsvc.pipeline.runner import build_index
from embedsvc.pipeline.summary import Summary

__all__ = ["BuildOptions", "Summary", "build_index"]
