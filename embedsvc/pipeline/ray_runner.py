"""The same pipeline on Ray Data: files read and chunked in parallel tasks, embedding in an actor pool.

Point it at a cluster with ``--ray-address ray://HEAD:10001`` (or ``RAY_ADDRESS``); without an address
a local Ray instance is started. Writes go through the index API (a local index directory, or a server's
Upsert). Ids are the same as the plain pipeline's, so a rerun replaces rather than duplicates; there is no
mid-run checkpoint in this mode: a rerun embeds everything again.

``--store-text`` keeps each chunk's text: in local mode the driver writes it beside the actors' vectors; in
remote mode the texts go to the server's Upsert, which embeds and keeps them (a write carries a text or
a vector, not both), so the actors pass them through. Sparse and token vectors are not written here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.pipeline.batching import Batch, add_record
from embedsvc.pipeline.checkpoint import default_paths
from embedsvc.pipeline.chunking import Chunker
from embedsvc.pipeline.options import BuildOptions, check_destination
from embedsvc.pipeline.readers import expand_inputs, read_records
from embedsvc.pipeline.sink_factory import make_sink, tls_settings
from embedsvc.pipeline.sinks import DOCUMENTS, LocalSink
from embedsvc.pipeline.summary import Summary


def _tokenizer_for(options: BuildOptions) -> Any:
    from transformers import AutoTokenizer

    from embedsvc.models.loading import resolve_source
    from embedsvc.models.st_files import read_st_files

    source = options.tokenizer or (options.model if options.target is None else None)
    resolved = resolve_source(source)
    st = read_st_files(resolved.folder)
    return AutoTokenizer.from_pretrained(st.transformer_dir if st else resolved.folder)


def _read_and_chunk(
    row: dict[str, Any], options: BuildOptions, limit: int | None = None
) -> list[dict[str, Any]]:
    """One file -> rows of chunks (and rejects), in file order; ``limit``: text tokens the model reads."""
    path = Path(row["path"])
    chunker = Chunker(_tokenizer_for(options), options.chunk_tokens, options.chunk_overlap)
    rows: list[dict[str, Any]] = []
    for record in read_records(path, options.reader):
        batch = Batch(str(path), record.position)
        add_record(batch, record, chunker, path, limit)
        for reject in batch.rejects:
            rows.append(
                {
                    "id": "",
                    "text": "",
                    "metadata": "{}",
                    "tokens": 0,
                    "documents": 0,
                    "truncated": 0,
                    "reject": json.dumps(reject),
                }
            )
        for i, (item_id, text, meta) in enumerate(zip(batch.ids, batch.texts, batch.metadata, strict=True)):
            rows.append(
                {
                    "id": item_id,
                    "text": text,
                    "metadata": json.dumps(meta),
                    "tokens": batch.tokens if i == 0 else 0,
                    "documents": 1 if i == 0 else 0,
                    "truncated": batch.truncated if i == 0 else 0,
                    "reject": "",
                }
            )
    return rows


class _EmbedActor:
    """Holds one embedder (local mode) or one client (remote mode) for its lifetime."""

    def __init__(self, options: BuildOptions) -> None:
        self.options = options
        if options.target is None:  # an index directory or an external store: embedded here
            from embedsvc import Embedder
            from embedsvc.engine.service import ModelService

            self.model = ModelService.in_process(Embedder.from_pretrained(options.model))
        else:
            from embedsvc import EmbedClient

            tls, ca = tls_settings(options)
            self.client = EmbedClient(
                str(options.target), api_key=options.api_key, tls=tls, root_certificates=ca, timeout=300
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = [i for i, reject in enumerate(batch["reject"]) if not reject]
        texts = [str(batch["text"][i]) for i in good]
        dimension = None
        vectors = np.zeros((len(batch["id"]), 1), dtype=np.float32)
        if texts:
            if self.options.target is None:
                embedded = self.model.embed_now(texts, DOCUMENTS).vectors
            else:
                embedded = self.client.embed(texts, model=self.options.model, input_type="document")
            dimension = embedded.shape[1]
            vectors = np.zeros((len(batch["id"]), dimension), dtype=np.float32)
            vectors[good] = embedded
        return {**batch, "vector": vectors}


def build_index_ray(
    inputs: Sequence[str], options: BuildOptions, *, address: str | None = None, actors: int | None = None
) -> Summary:
    parts = (("--sparse", options.sparse), ("--multi-vector", options.multi_vector))
    given = [flag for flag, value in parts if value is not None]
    if given:  # the actors return dense vectors only: these parts would be left out
        raise ValueError(
            f"--ray with {' and '.join(given)}: the Ray path writes dense vectors (and texts with "
            f"--store-text) only; drop {' and '.join(given)}, or drop --ray to build them in one process"
        )
    check_destination(options)
    import ray

    server_embeds = options.store_text and options.target is not None  # remote mode keeping texts
    files = expand_inputs(inputs)
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    started = time.monotonic()
    sink = make_sink(options)
    rejects_path = default_paths(options)[1]  # beside the index, as the in-process runner keeps it
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    summary = Summary(rejects_file=str(rejects_path))
    try:
        sink.open(options.restart)
        summary.max_length = sink.max_length()
        summary.max_tokens = Chunker(_tokenizer_for(options), None).text_limit(summary.max_length)
        summary.chunk_tokens = options.chunk_tokens
        cpus = int(ray.cluster_resources().get("CPU", 1))
        pool = actors or max(1, cpus // 2)  # an actor per two CPU slots: torch uses its own threads
        dataset: Any = ray.data.from_items(
            [{"path": str(f)} for f in files], override_num_blocks=max(len(files), 1)
        )
        reader: Any = _read_and_chunk  # Ray passes options through fn_kwargs
        dataset = dataset.flat_map(reader, fn_kwargs={"options": options, "limit": summary.max_tokens})
        if not server_embeds:
            dataset = dataset.map_batches(
                _EmbedActor,
                fn_constructor_kwargs={"options": options},
                batch_size=options.batch_size,
                concurrency=pool,
                batch_format="numpy",
            )
        with open(summary.rejects_file, "a", encoding="utf-8") as rejects:  # type: ignore[arg-type]
            for batch in dataset.iter_batches(batch_size=options.batch_size, batch_format="numpy"):
                keep = [i for i, reject in enumerate(batch["reject"]) if not reject]
                for reject in batch["reject"]:
                    if reject:
                        rejects.write(str(reject) + "\n")
                        summary.rejected += 1
                if keep:
                    ids = [str(batch["id"][i]) for i in keep]
                    meta = [json.loads(str(batch["metadata"][i])) for i in keep]
                    texts = [str(batch["text"][i]) for i in keep]
                    if server_embeds:
                        sink.write(ids, texts, meta)
                    else:
                        vectors = np.stack([batch["vector"][i] for i in keep])
                        if options.store_text:
                            assert isinstance(sink, LocalSink)  # a store refuses texts (check_destination)
                            sink.write_vectors(ids, vectors, meta, texts=texts)
                        else:
                            sink.write_vectors(ids, vectors, meta)
                summary.chunks += len(keep)
                summary.documents += int(batch["documents"].sum())
                summary.tokens += int(batch["tokens"].sum())
                summary.truncated += int(batch["truncated"].sum())
    finally:
        sink.close()
    summary.seconds = time.monotonic() - started
    summary.documents_this_run, summary.tokens_this_run = summary.documents, summary.tokens
    return summary
