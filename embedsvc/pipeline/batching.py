"""Records -> chunks -> batches: each record's chunks under stable ids (the id field, or
``file:record``; chunks add ``#n``), a bad record into the batch's rejects with its reason, and the
file position a batch reaches, which the checkpoint records once the batch is stored."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedsvc.pipeline.chunking import Chunker
from embedsvc.pipeline.readers import ReaderOptions, Record, detect_format, read_records

__all__ = ["Batch", "add_record", "count_records", "read_batches"]


@dataclass
class Batch:
    source: str
    next_position: int
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    documents: int = 0
    tokens: int = 0
    truncated: int = 0  # documents with a chunk over the model's limit
    rejects: list[dict[str, Any]] = field(default_factory=list)


def count_records(files: Sequence[Path], options: ReaderOptions) -> int | None:
    """Records in line-based files (a progress total), None when a format cannot be counted cheaply."""
    total = 0
    for path in files:
        if detect_format(path, options.format) not in ("jsonl", "text"):
            return None
        with open(path, "rb") as handle:
            total += sum(1 for _ in handle)
    return total


def read_batches(
    files: Sequence[Path],
    reader: ReaderOptions,
    batch_size: int,
    chunker: Chunker,
    done: dict[str, int],
    limit: int | None = None,
) -> Iterator[Batch]:
    """Batches of about ``batch_size`` chunks, one file at a time, from the positions in ``done`` on."""
    for path in files:
        source = str(path)
        start = done.get(source, 0)
        batch = Batch(source, start)
        for record in read_records(path, reader):
            if record.position < start:
                continue
            batch.next_position = record.position + 1
            add_record(batch, record, chunker, path, limit)
            if len(batch.ids) >= batch_size:
                yield batch
                batch = Batch(source, batch.next_position)
        if batch.ids or batch.rejects or batch.next_position > start:
            yield batch


def add_record(batch: Batch, record: Record, chunker: Chunker, path: Path, limit: int | None = None) -> None:
    """A record's chunks into the batch, or the record into its rejects; ``limit``: text tokens the
    model reads of one input, to count documents it will truncate."""
    if record.error is None and (record.text is None or not record.text.strip()):
        record.error = "empty text"
    if record.error is not None:
        batch.rejects.append({"source": record.source, "record": record.position, "reason": record.error})
        return
    doc_id = record.id or f"{path.name}:{record.position}"
    chunks = chunker.split(record.text)  # type: ignore[arg-type]
    batch.documents += 1
    if limit is not None and any(chunk.tokens > limit for chunk in chunks):
        batch.truncated += 1
    for chunk in chunks:
        meta = dict(record.metadata)
        if len(chunks) > 1:
            meta.update(
                parent_id=doc_id,
                chunk=chunk.index,
                chunks=len(chunks),
                char_start=chunk.char_start,
                char_end=chunk.char_end,
            )
        batch.ids.append(doc_id if len(chunks) == 1 else f"{doc_id}#{chunk.index}")
        batch.texts.append(chunk.text)
        batch.metadata.append(meta)
        batch.tokens += chunk.tokens
