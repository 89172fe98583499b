"""LlamaIndex ``BaseEmbedding`` and a reranking ``BaseNodePostprocessor`` over an embedsvc server (gRPC).

from embedsvc.integrations.llama_index import EmbedsvcEmbedding, EmbedsvcRerank
Settings.embed_model = EmbedsvcEmbedding(target="127.0.0.1:50051", model_name="e5")
engine = index.as_query_engine(node_postprocessors=[EmbedsvcRerank(model="reranker", top_n=3)])
"""

from __future__ import annotations

from typing import Any

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
    from pydantic import PrivateAttr
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "EmbedsvcEmbedding needs llama-index-core: pip install 'embedsvc[llama-index]'"
    ) from exc

from embedsvc.client import RerankResult
from embedsvc.integrations._clients import ClientPair


class EmbedsvcEmbedding(BaseEmbedding):
    """Texts (nodes) embedded as ``input_type="document"``, queries as ``"query"``."""

    target: str = "127.0.0.1:50051"
    api_key: str | None = None
    tls: bool = False
    timeout: float | None = None
    dimensions: int | None = None
    instruction: str | None = None
    _clients: ClientPair = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        data.setdefault("model_name", "")  # "" = the server's default model
        super().__init__(**data)
        self._clients = ClientPair(self.target, self.api_key, self.tls, self.timeout)

    @classmethod
    def class_name(cls) -> str:
        return "EmbedsvcEmbedding"

    def _options(self, input_type: str) -> dict[str, Any]:
        return self._clients.options(
            model=self.model_name or None,
            dimensions=self.dimensions,
            input_type=input_type,
            instruction=self.instruction if input_type == "query" else None,
        )

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._clients.sync().embed([query], **self._options("query"))[0].tolist()  # type: ignore[no-any-return]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._clients.sync().embed(texts, **self._options("document")).tolist()  # type: ignore[no-any-return]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        vectors = await self._clients.aio().embed([query], **self._options("query"))
        return vectors[0].tolist()  # type: ignore[no-any-return]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._aget_text_embeddings([text]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        vectors = await self._clients.aio().embed(texts, **self._options("document"))
        return vectors.tolist()  # type: ignore[no-any-return]


class EmbedsvcRerank(BaseNodePostprocessor):
    """Keeps the ``top_n`` nodes a reranker model of the server scores best for the query, highest first,
    with the reranker's score as each node's score."""

    target: str = "127.0.0.1:50051"
    model: str | None = None  # None: the server's first reranker
    top_n: int | None = 3  # None: every node, reordered
    instruction: str | None = None
    api_key: str | None = None
    tls: bool = False
    timeout: float | None = None
    _clients: ClientPair = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self._clients = ClientPair(self.target, self.api_key, self.tls, self.timeout)

    @classmethod
    def class_name(cls) -> str:
        return "EmbedsvcRerank"

    def _request(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> tuple[str, list[str]]:
        if query_bundle is None:
            raise ValueError("EmbedsvcRerank needs the query: pass query_bundle or query_str")
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        return query_bundle.query_str, texts

    def _options(self) -> dict[str, Any]:
        return self._clients.options(model=self.model, top_n=self.top_n, instruction=self.instruction)

    @staticmethod
    def _pick(nodes: list[NodeWithScore], results: list[RerankResult]) -> list[NodeWithScore]:
        return [NodeWithScore(node=nodes[r.index].node, score=r.score) for r in results]

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        query, texts = self._request(nodes, query_bundle)
        return self._pick(nodes, self._clients.sync().rerank(query, texts, **self._options()))

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        query, texts = self._request(nodes, query_bundle)
        return self._pick(nodes, await self._clients.aio().rerank(query, texts, **self._options()))
