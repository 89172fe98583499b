"""HTTP beside gRPC, in the same process: OpenAI's and TEI's embedding APIs over the same models.

* OpenAI (:mod:`.openai`): ``POST /v1/embeddings`` (also ``/embeddings``), ``GET /v1/models``.
* Text Embeddings Inference (:mod:`.tei`): ``POST /embed``, ``POST /rerank``, ``POST /predict``,
  ``POST /tokenize``, ``GET /info``, ``GET /health``, with TEI's request and response shapes and status codes;
  (:mod:`.tei_outputs`) ``POST /embed_sparse`` and ``POST /embed_all`` for sparse and multi-vector models.
* Cohere / Jina rerank (:mod:`.cohere`): ``POST /v1/rerank``, ``POST /v2/rerank``.
* Shared plumbing (:mod:`.plumbing`): errors to statuses, API keys, body limits, deadlines
  (``X-Request-Timeout``), cancelling work whose client disconnected, metrics labelled by model.
* Serving (:mod:`.serving`): uvicorn on the gRPC server's event loop, with an idle timeout and a
  connection cap, so no client can hold the process's file descriptors.

Routes only convert JSON to :class:`EmbedOptions` / :class:`ScoreOptions` and back; the engine facade
does the rest.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from embedsvc.config import ServerConfig
from embedsvc.server.http import cohere, openai, tei, tei_outputs
from embedsvc.server.http.plumbing import Door
from embedsvc.server.http.serving import serve_http
from embedsvc.server.metrics import Metrics
from embedsvc.server.registry import ModelRegistry

__all__ = ["HttpFrontDoor", "serve_http"]


class HttpFrontDoor:
    def __init__(self, registry: ModelRegistry, config: ServerConfig, metrics: Metrics) -> None:
        self.door = Door(registry, config, metrics)

    def app(self) -> Starlette:
        routes: list[Route] = [
            *openai.routes(self.door),
            *tei.routes(self.door),
            *tei_outputs.routes(self.door),
            *cohere.routes(self.door),
        ]
        return Starlette(routes=routes)
