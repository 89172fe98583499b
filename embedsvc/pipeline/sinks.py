"""Where embedded chunks go: an index directory in process, a running server over gRPC, or an external
vector store (Qdrant, Milvus) with vectors embedded in process or by a server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.engine.options import Embedded, EmbedOptions
from embedsvc.errors import PipelineStopped

DOCUMENTS = EmbedOptions(input_type="document")
log = logging.getLogger("embedsvc.pipeline")


@dataclass(frozen=True)
class IndexParts:
    """What an index the build creates keeps beside dense vectors (``index create``'s --store-text,
    --sparse, --multi-vector), and which model outputs a store sink writes. sparse / multi_vector:
    None: not kept; 0: the model's width; else that width."""

    store_text: bool = False
    sparse: int | None = None
    multi_vector: int | None = None

    def check(self, index: str, store_text: bool, sparse: bool, multi_vector: bool) -> None:
        """An index that exists already must keep what the build asks for (it was made without it)."""
        missing = [
            flag
            for flag, asked, kept in (
                ("--store-text", self.store_text, store_text),
                ("--sparse", self.sparse is not None, sparse),
                ("--multi-vector", self.multi_vector is not None, multi_vector),
            )
            if asked and not kept
        ]
        if missing:
            raise PipelineStopped(
                f"index {index!r} exists and was created without {', '.join(missing)}: "
                "add --restart to rebuild it with them, or build into another --index"
            )

    def outputs(self, model: str, offered: Sequence[str]) -> tuple[str, ...]:
        """The model outputs a store sink writes: dense where the model gives it, and what was asked."""
        wanted = [name for name in ("dense",) if name in offered]
        wanted += [
            name
            for name, asked in (("sparse", self.sparse), ("multi_vector", self.multi_vector))
            if asked is not None
        ]
        missing = [name for name in wanted if name not in offered]
        if missing or not wanted:
            raise PipelineStopped(
                f"model {model!r} gives no {' or '.join(missing) or 'dense'} output (it gives "
                f"{', '.join(offered)}): drop the flag, or add --sparse for a model without dense output"
            )
        return tuple(wanted)


class _OneModel:
    """The index facade's view of the pipeline's one in-process model (always serving)."""

    state = "serving"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.models = {model.name: model}

    def get(self, name: str) -> Any:
        return self.model

    def serving(self, source: str) -> Any:
        return self.model if source == self.model.source else None


async def _embed_here(served: Any, texts: list[str], options: EmbedOptions) -> Embedded:
    """In this thread, without a queue: the pipeline's own model."""
    return served.embed_now(texts, options)  # type: ignore[no-any-return]


class LocalSink:
    """In-process engine writing to an index directory that a server can open later, through the
    index facade (embedsvc.index.service), which checks writes as it does for the server."""

    def __init__(
        self,
        data_dir: Path,
        model: str | None,
        index: str,
        *,
        metric: str,
        kind: str,
        model_options: dict[str, Any] | None = None,
        keeps: IndexParts | None = None,
    ) -> None:
        from embedsvc import Embedder
        from embedsvc.engine.service import ModelService
        from embedsvc.index.manager import IndexManager
        from embedsvc.index.service import Indexes

        self.manager = IndexManager(data_dir)  # first: a directory in use is refused before a model loads
        self.model = ModelService.in_process(Embedder.from_pretrained(model, **(model_options or {})))
        # no request to bound in process: embed_now applies the model's own limits to texts
        self.indexes = Indexes(self.manager, _OneModel(self.model), max_inputs=2**31, max_batch_hits=2**31)
        self.index = index
        self.metric, self.kind = metric, kind
        self.keeps = keeps or IndexParts()
        self.tokenizer = self.model.tokenizer

    def max_length(self) -> int | None:
        """Tokens the model reads of one input; the rest of a longer one is cut off."""
        return int(self.model.facts.max_length)

    def fingerprint(self) -> tuple[str, dict[str, str]] | None:
        """The model's fingerprint (digest, parts), which the checkpoint records."""
        return self.model.fingerprint.digest, dict(self.model.fingerprint.parts)

    def open(self, restart: bool) -> None:
        if restart and self.indexes.exists(self.index):
            self.indexes.drop(self.index)
        if not self.indexes.exists(self.index):
            self.indexes.create(
                self.index,
                "",
                metric=self.metric,
                kind=self.kind,
                store_text=self.keeps.store_text,
                sparse=self.keeps.sparse,
                multi_vector=self.keeps.multi_vector,
            )
        spec = self.indexes.collection(self.index).spec
        if spec.model_source != self.model.source:
            raise PipelineStopped(
                f"index {self.index!r} was built with model {spec.model_source}, "
                f"not {self.model.source}; "
                "use the same --model, another --index, or --restart"
            )
        self.keeps.check(self.index, spec.store_text, spec.sparse, spec.multi_vector)

    def write(self, ids: Sequence[str], texts: Sequence[str], metadata: Sequence[dict[str, Any]]) -> None:
        """Embedded here through the index facade, which keeps the texts when the index does."""
        from embedsvc.index.service import NewItem

        items = [NewItem(i, text=t, metadata=m) for i, t, m in zip(ids, texts, metadata, strict=True)]
        asyncio.run(self.indexes.upsert(self.index, items, _embed_here))

    def write_vectors(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[dict[str, Any]],
        *,
        texts: Sequence[str] | None = None,
    ) -> None:
        """Vectors embedded elsewhere (the Ray path's actors); ``texts``: what they were made from, kept
        when the index keeps texts."""
        asyncio.run(self.indexes.upsert_vectors(self.index, ids, vectors, metadata, texts=texts))

    def close(self) -> None:
        self.manager.close()


class RemoteSink:
    """A running server: batched Upsert calls with the texts; the server embeds them.

    The runner keeps several writes in flight through one client, whose window narrows when the
    server refuses work for load and widens as it takes it (AIMD, honouring the server's retry hint:
    :mod:`embedsvc.pacing`), so the build slows to what the server takes. A server that goes away
    (UNAVAILABLE, or a call that outlives its deadline) is retried here with backoff, a few times."""

    RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")  # RESOURCE_EXHAUSTED: the client paces it

    def __init__(
        self,
        target: str,
        index: str,
        *,
        model: str | None,
        metric: str,
        kind: str,
        api_key: str | None,
        tls: tuple[bool, bytes | None] = (False, None),
        retries: int = 5,
        tokenizer_source: str | None = None,
        keeps: IndexParts | None = None,
    ) -> None:
        from embedsvc import EmbedClient

        self.client = EmbedClient(
            target, api_key=api_key, tls=tls[0], root_certificates=tls[1], timeout=300, chunk_size=100_000
        )
        self.target = target
        self.index = index
        self.model = model
        self.metric = metric
        self.kind = kind
        self.retries = retries
        self.keeps = keeps or IndexParts()
        self.tokenizer = self._tokenizer(tokenizer_source)

    def _tokenizer(self, source: str | None) -> Any:
        try:
            from transformers import AutoTokenizer
        except ModuleNotFoundError:  # a client-only install (pip install embedsvc) builds through the server
            log.warning("no local tokenizer (transformers is not installed): token counts are word counts")
            return None

        from embedsvc.models.loading import DEFAULT_MODEL_SOURCE, default_model_path

        if source is None:
            models = self._retry(self.client.list_models)
            wanted = [m for m in models if m.name == self.model or (self.model is None and m.default)]
            source = wanted[0].source if wanted else None
        if source in (None, DEFAULT_MODEL_SOURCE):
            return AutoTokenizer.from_pretrained(default_model_path())
        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError):
            log.warning("no local tokenizer for %s: token counts are word counts; pass --tokenizer", source)
            return None

    def _retry(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        from embedsvc import pacing
        from embedsvc.client import EmbedServiceError

        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                return call(*args, **kwargs)
            except EmbedServiceError as exc:
                if exc.code.name == "RESOURCE_EXHAUSTED" and pacing.retryable(
                    exc.code.name, exc.details, idempotent=True, attempt=0
                ):
                    raise PipelineStopped(
                        f"the server at {self.target} refused work for load for {self.client.timeout:g}s "
                        f"while this build slowed down ({exc.details})"
                    ) from exc
                if exc.code.name not in self.RETRYABLE:
                    raise
                if attempt == self.retries:
                    raise PipelineStopped(
                        f"the server at {self.target} failed {self.retries + 1} times in a row "
                        f"({exc.code.name}: {exc.details})"
                    ) from exc
                log.warning("server call failed (%s); retrying in %.1fs", exc.code.name, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    def open(self, restart: bool) -> None:
        from embedsvc.client import EmbedServiceError

        if restart:
            try:
                self._retry(self.client.delete_index, self.index)
            except EmbedServiceError as exc:
                if exc.code.name != "NOT_FOUND":
                    raise
        existing = {i.name: i for i in self._retry(self.client.list_indexes)}
        if self.index not in existing:
            self._retry(
                self.client.create_index,
                self.index,
                model=self.model,
                metric=self.metric,
                kind=self.kind,
                store_text=self.keeps.store_text,
                sparse=self.keeps.sparse,
                multi_vector=self.keeps.multi_vector,
            )
        else:
            info = existing[self.index]
            self.keeps.check(
                self.index, info.store_text, bool(info.sparse_dimension), bool(info.multi_vector_dimension)
            )

    def write(self, ids: Sequence[str], texts: Sequence[str], metadata: Sequence[dict[str, Any]]) -> None:
        self._retry(self.client.upsert, self.index, list(ids), texts=list(texts), metadata=list(metadata))

    def write_vectors(
        self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]]
    ) -> None:
        self._retry(self.client.upsert, self.index, list(ids), vectors=vectors, metadata=list(metadata))

    def embed(self, texts: Sequence[str], outputs: tuple[str, ...] = ("dense",)) -> Embedded:
        """Document vectors from the server's Embed RPC (for an external store): the ``outputs`` asked."""
        got = self._retry(
            self.client.embed, list(texts), model=self.model, input_type="document", outputs=outputs
        )
        return Embedded(
            np.asarray(got.dense, np.float32)
            if got.dense is not None
            else np.zeros((len(texts), 0), np.float32),
            list(got.tokens),
            sparse=None if got.sparse is None else [(v.indices, v.values) for v in got.sparse],
            multi_vectors=got.multi_vectors,
        )

    def served(self) -> Any:
        """The served model's ModelInfo (PipelineStopped if the server does not serve it)."""
        models = self._retry(self.client.list_models)
        wanted = [m for m in models if m.name == self.model or (self.model is None and m.default)]
        if not wanted:
            served = ", ".join(m.name for m in models)
            raise PipelineStopped(
                f"the server at {self.target} does not serve {self.model!r} (it serves {served})"
            )
        return wanted[0]

    def max_length(self) -> int | None:
        """Tokens the served model reads of one input (ModelInfo.max_length); None if it is not served, or
        the server does not list its models (a gateway without ListModels): then nothing is counted."""
        from embedsvc.client import EmbedServiceError

        try:
            models = self._retry(self.client.list_models)
        except EmbedServiceError as exc:
            if exc.code.name != "UNIMPLEMENTED":
                raise
            return None
        wanted = [m for m in models if m.name == self.model or (self.model is None and m.default)]
        return int(wanted[0].max_length) if wanted and wanted[0].max_length else None

    def fingerprint(self) -> tuple[str, dict[str, str]] | None:
        """The served model's fingerprint (None from a server before fingerprints, or one that serves
        no EmbeddingService: an index-only front, whose vectors the checkpoint cannot tie to a model)."""
        from embedsvc.client import EmbedServiceError

        try:
            models = self._retry(self.client.list_models)
        except EmbedServiceError as exc:
            if exc.code.name == "UNIMPLEMENTED":
                return None
            raise
        wanted = [m for m in models if m.name == self.model or (self.model is None and m.default)]
        digest = wanted[0].fingerprint if wanted else ""
        return (digest, dict(wanted[0].fingerprint_parts)) if digest else None

    def close(self) -> None:
        self.client.close()


class StoreSink:
    """An external vector store (Qdrant, Milvus): chunks embedded in this process (``model``) or by the
    server at ``target``, written by id, so reruns replace what a crash left half-done."""

    def __init__(
        self,
        store: Any,
        collection: str,
        *,
        metric: str,
        target: str | None,
        model: str | None,
        api_key: str | None,
        tls: tuple[bool, bytes | None] = (False, None),
        retries: int = 5,
        tokenizer_source: str | None = None,
        keeps: IndexParts | None = None,
    ) -> None:
        self.store = store
        self.index = collection
        self.metric = metric
        self.keeps = keeps or IndexParts()
        self.outputs: tuple[str, ...] = ("dense",)  # decided by open() from what the model gives
        self.remote: RemoteSink | None = None
        self.local: Any = None
        if target is not None:
            self.remote = RemoteSink(
                target,
                collection,
                model=model,
                metric=metric,
                kind="flat",
                api_key=api_key,
                tls=tls,
                retries=retries,
                tokenizer_source=tokenizer_source,
            )
            self.tokenizer = self.remote.tokenizer
        else:
            from embedsvc import Embedder
            from embedsvc.engine.service import ModelService

            self.local = ModelService.in_process(Embedder.from_pretrained(model))
            self.tokenizer = self.local.tokenizer

    def max_length(self) -> int | None:
        return self.remote.max_length() if self.remote is not None else int(self.local.facts.max_length)

    def _stopped(self, exc: Exception) -> PipelineStopped:
        return PipelineStopped(f"{self.store.kind} at {self.store.location}: {exc}")

    def open(self, restart: bool) -> None:
        from embedsvc.errors import FailedPreconditionError, UnavailableError

        facts = self.remote.served() if self.remote is not None else self.local.facts
        self.outputs = self.keeps.outputs(facts.name, facts.outputs)
        width = int(facts.multi_vector_dimension or 0)
        if "multi_vector" in self.outputs:
            if not self.store.keeps_token_vectors:
                raise PipelineStopped(
                    f"{self.store.kind} has no multi-vector field, so token vectors cannot be written: "
                    "drop --multi-vector (Qdrant keeps them)"
                )
            if self.keeps.multi_vector and self.keeps.multi_vector != width:
                raise PipelineStopped(
                    f"--multi-vector {self.keeps.multi_vector}, but model {facts.name!r} gives {width}-wide "
                    "token vectors: leave the width out to take the model's"
                )
        dense = int(facts.dimension) if "dense" in self.outputs else 0
        try:
            self.store.prepare(
                self.index,
                dense,
                self.metric,
                restart=restart,
                sparse="sparse" in self.outputs,
                multi_vector_dimension=width if "multi_vector" in self.outputs else 0,
            )
        except (FailedPreconditionError, UnavailableError) as exc:
            raise self._stopped(exc) from exc

    def write(self, ids: Sequence[str], texts: Sequence[str], metadata: Sequence[dict[str, Any]]) -> None:
        """Each output open() chose, from one forward pass; the store converts them (as for an export)."""
        from embedsvc.errors import UnavailableError

        if self.remote is not None:
            embedded = self.remote.embed(texts, self.outputs)
        else:
            options = EmbedOptions(input_type="document", outputs=self.outputs)
            embedded = self.local.embed_now(list(texts), options)
        try:
            self.store.upsert(
                self.index,
                list(ids),
                embedded.vectors,
                list(metadata),
                sparse=embedded.sparse,
                tokens=embedded.multi_vectors,
            )
        except UnavailableError as exc:
            raise self._stopped(exc) from exc

    def write_vectors(
        self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]]
    ) -> None:
        from embedsvc.errors import UnavailableError

        try:
            self.store.upsert(self.index, list(ids), vectors, list(metadata))
        except UnavailableError as exc:
            raise self._stopped(exc) from exc

    def close(self) -> None:
        self.store.close()
        if self.remote is not None:
            self.remote.close()
