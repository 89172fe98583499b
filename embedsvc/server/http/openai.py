"""OpenAI's embeddings API: ``POST /v1/embeddings`` (also ``/embeddings``) and ``GET /v1/models``.

What the ``openai`` SDK, LangChain's ``OpenAIEmbeddings``, LlamaIndex, LiteLLM and vector databases'
vectorizers send. The SDK asks for base64 by default; both encodings are served. Extensions:
``input_type``, ``instruction``, ``prompt_name``, ``truncate`` ("end" | "start" | "none"); answers carry
the model's ``fingerprint`` (a top-level field and the ``x-embedsvc-fingerprint`` header).
"""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from embedsvc.engine.options import EmbedOptions
from embedsvc.errors import InvalidInputError, TextTooLongError
from embedsvc.server.http.plumbing import (
    FINGERPRINT_HEADER,
    Call,
    Door,
    json_response,
    optional_int,
    optional_str,
)

TRUNCATE_REMEDY = 'send "truncate": "end" (keep the start) or "start" (keep the end)'


def routes(door: Door) -> list[Route]:
    embeddings = door.endpoint("/v1/embeddings", create_embeddings)
    return [
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/embeddings", door.endpoint("/embeddings", create_embeddings), methods=["POST"]),
        Route("/v1/models", door.endpoint("/v1/models", list_models), methods=["GET"]),
    ]


async def create_embeddings(request: Request, call: Call) -> Response:
    body = await call.body()
    texts = _input(body.get("input"))
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise InvalidInputError(
            f"encoding_format must be 'float' or 'base64', got {encoding!r}", field="encoding_format"
        )
    served = call.served(optional_str(body, "model"))
    options = EmbedOptions(
        input_type=optional_str(body, "input_type"),
        prompt_name=optional_str(body, "prompt_name"),
        instruction=optional_str(body, "instruction"),
        dimensions=optional_int(body, "dimensions"),
        truncation=optional_str(body, "truncate") or "end",
    )
    try:
        embedded = await call.embed(served, texts, options)
    except TextTooLongError as exc:  # name this API's field, not the Python argument
        raise TextTooLongError(exc.index, exc.n_tokens, exc.limit, TRUNCATE_REMEDY) from None
    if encoding == "base64":
        rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in embedded.vectors]
    else:
        rows = list(embedded.vectors)
    return json_response(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
            "model": served.name,
            "usage": {"prompt_tokens": embedded.total_tokens, "total_tokens": embedded.total_tokens},
            "fingerprint": embedded.fingerprint,  # extension: vectors with equal fingerprints compare
        },
        headers={FINGERPRINT_HEADER: embedded.fingerprint},
    )


async def list_models(request: Request, call: Call) -> Response:
    registry = call.door.registry
    registry.get("")  # 503 while loading or draining
    data = [
        {
            "id": m.name,
            "object": "model",
            "created": 0,
            "owned_by": "embedsvc",
            "dimension": m.dimension,
            "fingerprint": m.fingerprint.digest,
            "task": m.task,  # embed | rerank (/v1/rerank) | classify (/predict)
        }
        for m in registry.models.values()
    ]
    return json_response({"object": "list", "data": data})


def _input(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(v, int) or (isinstance(v, list) and all(isinstance(x, int) for x in v)) for v in value
        )
    ):
        raise InvalidInputError(
            "input holds token ids; embedsvc takes text (its models have their own tokenizers). "
            "LangChain's OpenAIEmbeddings sends tiktoken ids unless check_embedding_ctx_length=False",
            field="input",
        )
    if value is None or value == [] or value == "":
        raise InvalidInputError("input must be a string or a non-empty list of strings", field="input")
    raise InvalidInputError("input must be a string or a list of strings", field="input")
