"""LangChain ``Embeddings`` over an embedsvc server (gRPC).

from embedsvc.integrations.langchain import EmbedsvcEmbeddings
embeddings = EmbedsvcEmbeddings("127.0.0.1:50051", model="e5")
vectors = embeddings.embed_documents(["..."]); query = embeddings.embed_query("...")
"""

from __future__ import annotations

try:
    from langchain_core.embeddings import Embeddings
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("EmbedsvcEmbeddings needs langchain-core: pip install 'embedsvc[langchain]'") from exc

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
