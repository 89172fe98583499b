"""Run a corpus through the embedder into an index: the in-flight window of upserts, and the
checkpoint advanced past each batch the destination acknowledged.

Exactly-once by construction: ids are stable (``batching.py``), upserts replace by id, and the
checkpoint (``checkpoint.py``) only advances past batches the index acknowledged. A rerun after a
crash re-sends at most the batches that were in flight, which replace themselves.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from embedsvc.pipeline.batching import Batch, count_records, read_batches
from embedsvc.pipeline.checkpoint import Checkpoint, default_paths, reader_settings
from embedsvc.pipeline.chunking import Chunker
from embedsvc.pipeline.options import BuildOptions, check_destination
from embedsvc.pipeline.progress import Progress
from embedsvc.pipeline.readers import expand_inputs
from embedsvc.pipeline.sink_factory import make_sink
from embedsvc.pipeline.sinks import LocalSink, StoreSink
from embedsvc.pipeline.summary import Summary

log = logging.getLogger("embedsvc.pipeline")

__all__ = ["build_index"]


def build_index(inputs: Sequence[str], **kwargs: Any) -> Summary:
    """Index ``inputs`` (files or globs); keyword arguments are :class:`BuildOptions` fields."""
    options = kwargs.pop("options", None) or BuildOptions(**kwargs)
    check_destination(options)
    files = expand_inputs(inputs)
    checkpoint_path, rejects_path = default_paths(options)
    if options.restart:
        checkpoint_path.unlink(missing_ok=True)
        rejects_path.unlink(missing_ok=True)
    checkpoint = Checkpoint(checkpoint_path, options.index, reader_settings(options))
    checkpoint.load()
    options = checkpoint.keep_index_settings(options)

    sink = make_sink(options)
    summary = Summary(rejects_file=str(rejects_path), checkpoint_file=str(checkpoint_path))
    started = time.monotonic()
    total = count_records(files, options.reader)
    progress = Progress(options.progress, total, checkpoint.totals["documents"])
    try:
        sink.open(options.restart)
        checkpoint.check_model(getattr(sink, "fingerprint", lambda: None)())  # external stores: none
        chunker = Chunker(sink.tokenizer, options.chunk_tokens, options.chunk_overlap)
        summary.max_length = sink.max_length()
        summary.max_tokens = limit = chunker.text_limit(summary.max_length)
        embeds_here = isinstance(sink, LocalSink) or (isinstance(sink, StoreSink) and sink.remote is None)
        in_flight = 1 if embeds_here else max(options.in_flight, 1)
        with ThreadPoolExecutor(in_flight, thread_name_prefix="upsert") as pool:
            pending: deque[tuple[Batch, Future[None]]] = deque()

            def finish_oldest() -> None:
                batch, future = pending.popleft()
                future.result()  # raises PipelineStopped / errors: the checkpoint stays before this batch
                if batch.rejects:
                    rejects_path.parent.mkdir(parents=True, exist_ok=True)
                    with open(rejects_path, "a", encoding="utf-8") as handle:
                        for reject in batch.rejects:
                            handle.write(json.dumps(reject) + "\n")
                checkpoint.record(batch)
                summary.documents_this_run += batch.documents
                summary.tokens_this_run += batch.tokens
                progress.update(batch.documents, batch.tokens)

            batches = read_batches(
                files, options.reader, options.batch_size, chunker, checkpoint.files, limit
            )
            for batch in batches:
                work = pool.submit(sink.write, batch.ids, batch.texts, batch.metadata) if batch.ids else None
                done: Future[None] = work if work is not None else _done_future()
                pending.append((batch, done))
                while len(pending) >= in_flight:
                    finish_oldest()
            while pending:
                finish_oldest()
    finally:
        progress.close()
        sink.close()
    summary.seconds = time.monotonic() - started
    summary.documents = checkpoint.totals["documents"]
    summary.chunks = checkpoint.totals["chunks"]
    summary.tokens = checkpoint.totals["tokens"]
    summary.rejected = checkpoint.totals["rejected"]
    summary.truncated = checkpoint.totals["truncated"]
    summary.chunk_tokens = options.chunk_tokens
    if summary.truncated:
        log.warning(summary.truncation_note().strip())
    return summary


def _done_future() -> Future[None]:
    future: Future[None] = Future()
    future.set_result(None)
    return future
