"""Run a corpus through the embedder into an index: batches, in-flight window, checkpoints, rejects.

Exactly-once by construction: ids are stable (the id field, or ``file:record``;
chunks add ``#n``), upserts replace by id, and the checkpoint only advances past
batches the index acknowledged. A rerun after a crash re-sends at most the
batches that were in flight, which replace themselves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from embedsvc.errors import FailedPreconditionError
from embedsvc.pipeline.chunking import Chunker
from embedsvc.pipeline.readers import ReaderOptions, Record, detect_format, expand_inputs, read_records
from embedsvc.pipeline.sinks import LocalSink, PipelineStopped, RemoteSink, StoreSink

log = logging.getLogger("embedsvc.pipeline")

__all__ = ["BuildOptions", "PipelineStopped", "SettingsChangedError", "Summary", "build_index"]


@dataclass(frozen=True)
class BuildOptions:
    index: str
    target: str | None = None  # remote mode: HOST:PORT of a running server
    data_dir: str | None = None  # local mode: index directory
    store: str | None = None  # an external vector store instead of an embedsvc index: qdrant or milvus
    store_url: str | None = None  # its URL, directory (Qdrant local mode) or .db file (Milvus Lite)
    store_api_key: str | None = None  # default: QDRANT_API_KEY / MILVUS_TOKEN
    model: str | None = None  # local: model source (None = bundled); remote: served model name
    api_key: str | None = None
    tls: bool = False  # remote mode: TLS to the server
    tls_ca: str | None = None  # remote mode: CA certificate to trust (PEM file); implies tls
    reader: ReaderOptions = field(default_factory=ReaderOptions)
    chunk_tokens: int | None = None
    chunk_overlap: int = 0
    batch_size: int = 64  # chunks per upsert
    in_flight: int = 4  # upserts outstanding at once (remote mode)
    checkpoint: str | None = None
    rejects: str | None = None
    restart: bool = False
    metric: str = "cosine"
    kind: str = "flat"
    progress: bool | None = None  # None = a bar on a terminal, log lines otherwise
    retries: int = 5
    tokenizer: str | None = None  # remote mode: where to load the chunking tokenizer from


@dataclass
class Summary:
    documents: int = 0
    chunks: int = 0
    tokens: int = 0
    rejected: int = 0
    seconds: float = 0.0
    documents_this_run: int = 0
    tokens_this_run: int = 0
    rejects_file: str | None = None
    checkpoint_file: str | None = None
    truncated: int = 0  # documents (or chunks' documents) longer than the model reads, cut to max_tokens
    max_tokens: int | None = None  # text tokens the model reads of one input (None: not known)
    max_length: int | None = None  # the model's limit, special tokens included
    chunk_tokens: int | None = None

    @property
    def documents_per_s(self) -> float:
        return self.documents_this_run / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_this_run / self.seconds if self.seconds else 0.0

    def report(self) -> str:
        return (
            f"indexed {self.documents} documents ({self.chunks} chunks, {self.tokens} tokens), "
            f"{self.rejected} rejected{f' (see {self.rejects_file})' if self.rejected else ''}; this run: "
            f"{self.documents_this_run} documents in {self.seconds:.1f}s = "
            f"{self.documents_per_s:.1f} docs/s, "
            f"{self.tokens_per_s:.0f} tokens/s"
        ) + self.truncation_note()

    def truncation_note(self) -> str:
        """What was cut, to what limit, and how not to cut it ("" when nothing was)."""
        if not self.truncated:
            return ""
        text = self.max_tokens or 0
        if self.chunk_tokens:
            subject, fix = "had chunks longer than", f"--chunk-tokens under {text} (now {self.chunk_tokens})"
        else:
            subject, fix = (
                "were longer than",
                f"--chunk-tokens {max(1, text * 4 // 5)} --chunk-overlap {text // 6}",
            )
        return (
            f"\n{self.truncated} documents {subject} the model reads ({self.max_length} tokens, "
            f"{text} of them text) and were cut to that: only their beginning is indexed; rerun with {fix} "
            "--restart to index them whole, in pieces"
        )


@dataclass
class _Batch:
    source: str
    next_position: int
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    documents: int = 0
    tokens: int = 0
    truncated: int = 0  # documents with a chunk over the model's limit
    rejects: list[dict[str, Any]] = field(default_factory=list)


class SettingsChangedError(FailedPreconditionError):
    """A rerun reads the files differently from the run whose checkpoint it would continue."""


def reader_settings(options: BuildOptions) -> dict[str, Any]:
    """What decides which documents, ids and chunks a file position stands for: a checkpoint only
    counts file positions, so a rerun must read the files the same way."""
    reader = options.reader
    return {
        "format": reader.format,
        "text_field": reader.text_field,
        "id_field": reader.id_field,
        "metadata_fields": list(reader.metadata_fields),
        "chunk_tokens": options.chunk_tokens,
        "chunk_overlap": options.chunk_overlap,
    }


_SETTING_FLAGS = {
    "format": "--format",
    "text_field": "--text-field",
    "id_field": "--id-field",
    "metadata_fields": "--metadata-fields",
    "chunk_tokens": "--chunk-tokens",
    "chunk_overlap": "--chunk-overlap",
}


class _Checkpoint:
    def __init__(self, path: Path, index: str, settings: dict[str, Any]) -> None:
        self.path = path
        self.index = index
        self.settings = settings
        self.files: dict[str, int] = {}
        self.totals = {"documents": 0, "chunks": 0, "tokens": 0, "rejected": 0, "truncated": 0}

    def load(self) -> None:
        if not self.path.exists():
            return
        data = json.loads(self.path.read_text())
        if data.get("index") != self.index:
            raise PipelineStopped(
                f"checkpoint {self.path} belongs to index {data.get('index')!r}; use --restart"
            )
        saved = data.get("settings")
        if saved is None and self.settings["id_field"] is None:
            log.warning(
                "checkpoint %s is from an embedsvc before 0.2, which kept no reader settings and gave "
                "FILE:RECORD ids unless --id-field was given; records with an 'id' field now get that id. "
                "If the files have one, add --restart to rebuild with one kind of id",
                self.path,
            )
        if saved is not None and saved != self.settings:
            changed = [
                f"{_SETTING_FLAGS[k]} {_shown(saved.get(k))} -> {_shown(self.settings[k])}"
                for k in self.settings
                if saved.get(k) != self.settings[k]
            ]
            raise SettingsChangedError(
                f"checkpoint {self.path} was written by a run that read the files differently "
                f"({'; '.join(changed)}): rerun with the earlier settings to continue it, or add --restart "
                "to rebuild the index with the new ones"
            )
        self.files, self.totals = data["files"], {"truncated": 0, **data["totals"]}  # older: no truncated

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as handle:
            json.dump(
                {
                    "version": 2,
                    "index": self.index,
                    "settings": self.settings,
                    "files": self.files,
                    "totals": self.totals,
                },
                handle,
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


def _shown(value: Any) -> str:
    if value is None:
        return "(default)"
    return ",".join(value) if isinstance(value, list) else str(value)


def _default_paths(options: BuildOptions) -> tuple[Path, Path]:
    if options.data_dir:
        base = Path(options.data_dir) / "pipeline"
    else:
        where = f"{options.store}:{options.store_url}" if options.store else options.target or ""
        key = hashlib.sha1(where.encode()).hexdigest()[:8]
        base = Path(".embedsvc") / f"{options.index}-{key}"
    checkpoint = Path(options.checkpoint) if options.checkpoint else base / f"{options.index}.checkpoint.json"
    # beside the checkpoint: one rejects file per index and destination, never shared through the cwd
    rejects = (
        Path(options.rejects) if options.rejects else checkpoint.parent / f"{options.index}.rejects.jsonl"
    )
    return checkpoint, rejects


def _count_records(files: Sequence[Path], options: ReaderOptions) -> int | None:
    total = 0
    for path in files:
        if detect_format(path, options.format) not in ("jsonl", "text"):
            return None
        with open(path, "rb") as handle:
            total += sum(1 for _ in handle)
    return total


def _batches(
    files: Sequence[Path],
    options: BuildOptions,
    chunker: Chunker,
    done: dict[str, int],
    limit: int | None = None,
) -> Iterator[_Batch]:
    for path in files:
        source = str(path)
        start = done.get(source, 0)
        batch = _Batch(source, start)
        for record in read_records(path, options.reader):
            if record.position < start:
                continue
            batch.next_position = record.position + 1
            _add(batch, record, chunker, path, limit)
            if len(batch.ids) >= options.batch_size:
                yield batch
                batch = _Batch(source, batch.next_position)
        if batch.ids or batch.rejects or batch.next_position > start:
            yield batch


def _add(batch: _Batch, record: Record, chunker: Chunker, path: Path, limit: int | None = None) -> None:
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


class _Progress:
    def __init__(self, enabled: bool | None, total: int | None, already: int) -> None:
        self.bar = None
        self.started = time.monotonic()
        self.last_log = self.started
        self.total = total
        self.done = already
        self.tokens = 0
        if enabled if enabled is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=already, unit="doc", dynamic_ncols=True)

    def update(self, documents: int, tokens: int) -> None:
        self.done += documents
        self.tokens += tokens
        elapsed = max(time.monotonic() - self.started, 1e-9)
        if self.bar is not None:
            self.bar.update(documents)
            self.bar.set_postfix(tokens_per_s=f"{self.tokens / elapsed:.0f}")
        elif time.monotonic() - self.last_log >= 10:
            self.last_log = time.monotonic()
            eta = ""
            if self.total:
                rate = max(self.done, 1) / elapsed
                eta = f", ETA {max(self.total - self.done, 0) / rate:.0f}s"
            print(
                f"embedsvc index build: {self.done} documents, {self.tokens / elapsed:.0f} tokens/s{eta}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def build_index(inputs: Sequence[str], **kwargs: Any) -> Summary:
    """Index ``inputs`` (files or globs); keyword arguments are :class:`BuildOptions` fields."""
    options = kwargs.pop("options", None) or BuildOptions(**kwargs)
    check_destination(options)
    files = expand_inputs(inputs)
    checkpoint_path, rejects_path = _default_paths(options)
    if options.restart:
        checkpoint_path.unlink(missing_ok=True)
        rejects_path.unlink(missing_ok=True)
    checkpoint = _Checkpoint(checkpoint_path, options.index, reader_settings(options))
    checkpoint.load()

    sink = make_sink(options)
    summary = Summary(rejects_file=str(rejects_path), checkpoint_file=str(checkpoint_path))
    started = time.monotonic()
    progress = _Progress(
        options.progress, _count_records(files, options.reader), checkpoint.totals["documents"]
    )
    try:
        sink.open(options.restart)
        chunker = Chunker(sink.tokenizer, options.chunk_tokens, options.chunk_overlap)
        summary.max_length = sink.max_length()
        summary.max_tokens = limit = chunker.text_limit(summary.max_length)
        embeds_here = isinstance(sink, LocalSink) or (isinstance(sink, StoreSink) and sink.remote is None)
        in_flight = 1 if embeds_here else max(options.in_flight, 1)
        with ThreadPoolExecutor(in_flight, thread_name_prefix="upsert") as pool:
            pending: deque[tuple[_Batch, Future[None]]] = deque()

            def finish_oldest() -> None:
                batch, future = pending.popleft()
                future.result()  # raises PipelineStopped / errors: the checkpoint stays before this batch
                if batch.rejects:
                    rejects_path.parent.mkdir(parents=True, exist_ok=True)
                    with open(rejects_path, "a", encoding="utf-8") as handle:
                        for reject in batch.rejects:
                            handle.write(json.dumps(reject) + "\n")
                checkpoint.files[batch.source] = batch.next_position
                for key, value in (
                    ("documents", batch.documents),
                    ("chunks", len(batch.ids)),
                    ("tokens", batch.tokens),
                    ("rejected", len(batch.rejects)),
                    ("truncated", batch.truncated),
                ):
                    checkpoint.totals[key] += value
                checkpoint.save()
                summary.documents_this_run += batch.documents
                summary.tokens_this_run += batch.tokens
                progress.update(batch.documents, batch.tokens)

            for batch in _batches(files, options, chunker, checkpoint.files, limit):
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


def check_destination(options: BuildOptions) -> None:
    if options.store is not None:
        if options.data_dir is not None or not options.store_url:
            raise ValueError(
                "an external store takes its URL (store_url) and no data_dir; target is optional "
                "(embed with a server instead of in this process)"
            )
    elif (options.target is None) == (options.data_dir is None):
        raise ValueError(
            "say where the index goes: target (a running server, --target), data_dir (embedded here, "
            "--data-dir) or a store (--to qdrant|milvus URL)"
        )


def tls_settings(options: BuildOptions) -> tuple[bool, bytes | None]:
    """(TLS on, CA certificate) for the connection to a server."""
    ca = Path(options.tls_ca).read_bytes() if options.tls_ca else None
    return options.tls or ca is not None, ca


def make_sink(options: BuildOptions) -> LocalSink | RemoteSink | StoreSink:
    """Local mode (an index directory), remote mode (a server) or an external store, from the options."""
    if options.store is not None:
        from embedsvc.stores import open_store

        return StoreSink(
            open_store(
                options.store, str(options.store_url), api_key=options.store_api_key, retries=options.retries
            ),
            options.index,
            metric=options.metric,
            target=options.target,
            model=options.model,
            api_key=options.api_key,
            tls=tls_settings(options),
            retries=options.retries,
            tokenizer_source=options.tokenizer,
        )
    if options.data_dir:
        return LocalSink(
            Path(options.data_dir), options.model, options.index, metric=options.metric, kind=options.kind
        )
    return RemoteSink(
        str(options.target),
        options.index,
        model=options.model,
        metric=options.metric,
        kind=options.kind,
        api_key=options.api_key,
        tls=tls_settings(options),
        retries=options.retries,
        tokenizer_source=options.tokenizer,
    )


def _done_future() -> Future[None]:
    future: Future[None] = Future()
    future.set_result(None)
    return future


def summary_dict(summary: Summary) -> dict[str, Any]:
    return {
        **asdict(summary),
        "documents_per_s": summary.documents_per_s,
        "tokens_per_s": summary.tokens_per_s,
    }
