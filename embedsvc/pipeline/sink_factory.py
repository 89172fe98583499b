"""The sink an index build writes to, from its options: an index directory (local mode), a server
(remote mode) or an external vector store."""

from __future__ import annotations

from pathlib import Path

from embedsvc.pipeline.options import BuildOptions
from embedsvc.pipeline.sinks import IndexParts, LocalSink, RemoteSink, StoreSink

__all__ = ["make_sink", "tls_settings"]


def tls_settings(options: BuildOptions) -> tuple[bool, bytes | None]:
    """(TLS on, CA certificate) for the connection to a server."""
    ca = Path(options.tls_ca).read_bytes() if options.tls_ca else None
    return options.tls or ca is not None, ca


def make_sink(options: BuildOptions) -> LocalSink | RemoteSink | StoreSink:
    """Local mode (an index directory), remote mode (a server) or an external store, from the options."""
    keeps = IndexParts(options.store_text, options.sparse, options.multi_vector)
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
            keeps=keeps,
        )
    if options.data_dir:
        return LocalSink(
            Path(options.data_dir),
            options.model,
            options.index,
            metric=options.metric,
            kind=options.kind,
            keeps=keeps,
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
        keeps=keeps,
    )
