"""Indexing pipeline: read a corpus, chunk it, embed it into an index, resumably.

from embedsvc.pipeline import build_index
summary = build_index(["docs/*.jsonl"], index="docs", data_dir="./data")         # in process
summary = build_index(["docs/*.jsonl"], index="docs", target="127.0.0.1:50051")  # through a server
"""

from embedsvc.pipeline.options import BuildOptions
from embedsvc.pipeline.runner import build_index
from embedsvc.pipeline.summary import Summary

__all__ = ["BuildOptions", "Summary", "build_index"]
