"""What an index build is asked to do: :class:`BuildOptions`, and the check that it names one destination."""

from __future__ import annotations

from dataclasses import dataclass, field

from embedsvc.pipeline.readers import ReaderOptions

__all__ = ["BuildOptions", "check_destination"]


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
    # what an index the build creates keeps, and what a store sink writes (checkpointed: a rerun keeps them)
    store_text: bool = False  # each chunk's text (embedsvc indexes only)
    sparse: int | None = None  # sparse vectors; the vocabulary size, 0 for the model's (None: none)
    multi_vector: int | None = None  # token vectors; their width, 0 for the model's (None: none)
    progress: bool | None = None  # None = a bar on a terminal, log lines otherwise
    retries: int = 5
    tokenizer: str | None = None  # remote mode: where to load the chunking tokenizer from


def check_destination(options: BuildOptions) -> None:
    if options.store is not None:
        if options.store_text:
            raise ValueError(
                "store_text (--store-text) keeps texts in an embedsvc index; an external store gets vectors "
                "and metadata (put the text in a --metadata-fields field to keep it there)"
            )
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
