"""LangChain ``Embeddings`` and a reranking ``BaseDocumentCompressor`` over an embedsvc server (gRPC).

from embedsvc.integrations.langchain import EmbedsvcEmbeddings, EmbedsvcRerank
embeddings = EmbedsvcEmbeddings("127.0.0.1:50051", model="e5")
vectors = embeddings.embed_documents(["..."]); query = embeddings.embed_query("...")
reranker = EmbedsvcRerank(target="127.0.0.1:50051", model="reranker", top_n=3)
best = reranker.compress_documents(documents, "query")  # or ContextualCompressionRetriever(...)
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from typing import Any

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.embeddings import Embeddings
    from pydantic import ConfigDict, PrivateAttr
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("EmbedsvcEmbeddings needs langchain-core: pip install 'embedsvc[langchain]'") from exc

from embedsvc.client import RerankResult
from embedsvc.integrations._clients import ClientPair


class EmbedsvcEmbeddings(Embeddings):
    """Documents embedded as ``input_type="document"``, queries as ``"query"`` (with ``instruction``
    when given, else the model's own query prompt or default task)."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        model: str | None = None,
        api_key: str | None = None,
        tls: bool = False,
        timeout: float | None = None,
        dimensions: int | None = None,
        instruction: str | None = None,
    ) -> None:
        self.model = model
        self.dimensions = dimensions
        self.instruction = instruction
        self._clients = ClientPair(target, api_key, tls, timeout)

    def _documents(self) -> dict[str, object]:
        return self._clients.options(model=self.model, dimensions=self.dimensions, input_type="document")

    def _query(self) -> dict[str, object]:
        return self._clients.options(
            model=self.model, dimensions=self.dimensions, input_type="query", instruction=self.instruction
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self._clients.sync().embed(texts, **self._documents()).tolist()  # type: ignore[call-overload]

    def embed_query(self, text: str) -> list[float]:
        return self._clients.sync().embed([text], **self._query())[0].tolist()  # type: ignore[call-overload]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = await self._clients.aio().embed(texts, **self._documents())  # type: ignore[call-overload]
        return vectors.tolist()  # type: ignore[no-any-return]

    async def aembed_query(self, text: str) -> list[float]:
        vectors = await self._clients.aio().embed([text], **self._query())  # type: ignore[call-overload]
        return vectors[0].tolist()  # type: ignore[no-any-return]


class EmbedsvcRerank(BaseDocumentCompressor):
    """Keeps the ``top_n`` documents a reranker model of the server scores best for the query, highest
    first, each a copy with ``metadata["relevance_score"]``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    target: str = "127.0.0.1:50051"
    model: str | None = None  # None: the server's first reranker
    top_n: int | None = 3  # None: every document, reordered
    instruction: str | None = None
    api_key: str | None = None
    tls: bool = False
    timeout: float | None = None
    _clients: ClientPair = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self._clients = ClientPair(self.target, self.api_key, self.tls, self.timeout)

    def _options(self) -> dict[str, Any]:
        return self._clients.options(model=self.model, top_n=self.top_n, instruction=self.instruction)

    @staticmethod
    def _pick(documents: Sequence[Document], results: list[RerankResult]) -> list[Document]:
        out = []
        for result in results:
            original = documents[result.index]
            metadata = {**deepcopy(original.metadata), "relevance_score": result.score}
            out.append(Document(page_content=original.page_content, metadata=metadata, id=original.id))
        return out

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        texts = [d.page_content for d in documents]
        return self._pick(documents, self._clients.sync().rerank(query, texts, **self._options()))

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        texts = [d.page_content for d in documents]
        return self._pick(documents, await self._clients.aio().rerank(query, texts, **self._options()))
