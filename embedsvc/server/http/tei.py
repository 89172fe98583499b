"""Text Embeddings Inference's API: ``POST /embed``, ``POST /tokenize``, ``GET /info``, ``GET /health``,
with TEI's request and response shapes and status codes, so TEI clients work unchanged (a ``model``
field or ``?model=`` picks a model other than the default). Booleans are JSON booleans: a string such
as ``"false"`` is refused, never read as true."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import embedsvc
from embedsvc.engine.options import Embedded, EmbedOptions
from embedsvc.errors import InvalidInputError, TextTooLongError, UnavailableError
from embedsvc.server.http.plumbing import Call, Door, boolean, json_response, optional_int, optional_str

TRUNCATE_REMEDY = 'send "truncate": true (with "truncation_direction": "Right" or "Left")'


def routes(door: Door) -> list[Route]:
    async def health(request: Request) -> Response:
        try:
            door.registry.get("")
        except UnavailableError as exc:
            return json_response({"error": str(exc), "error_type": "Unhealthy"}, 503)
        return Response(status_code=200)

    return [
        Route("/embed", door.endpoint("/embed", embed, tei=True), methods=["POST"]),
        Route("/tokenize", door.endpoint("/tokenize", tokenize, tei=True), methods=["POST"]),
        Route("/info", door.endpoint("/info", info, tei=True), methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]


def _model(call: Call, body: dict[str, object] | None = None) -> str | None:
    named = optional_str(body, "model") if body else None
    return named or call.request.query_params.get("model")


async def embed(request: Request, call: Call) -> Response:
    embedded = await embed_texts(call, await call.body())
    return json_response(list(embedded.vectors))


async def embed_texts(call: Call, body: dict[str, Any], outputs: tuple[str, ...] = ("dense",)) -> Embedded:
    """A TEI body's inputs embedded for ``outputs`` (/embed, /embed_sparse, /embed_all): its model,
    prompt and truncation fields read once; normalize and dimensions only when dense is asked."""
    texts = _inputs(body.get("inputs"))
    served = call.served(_model(call, body))
    direction = body.get("truncation_direction") or "Right"
    if direction not in ("Right", "Left", "right", "left"):
        raise InvalidInputError(
            f"truncation_direction must be 'Right' or 'Left', got {direction!r}", field="truncation_direction"
        )
    truncate = boolean(body, "truncate", False)
    dense = "dense" in outputs
    options = EmbedOptions(
        prompt_name=optional_str(body, "prompt_name"),
        dimensions=optional_int(body, "dimensions") if dense else None,
        normalize=boolean(body, "normalize", True) if dense else None,
        truncation=("end" if direction.lower() == "right" else "start") if truncate else "none",
        outputs=outputs,
    )
    try:
        return await call.embed(served, texts, options)
    except TextTooLongError as exc:  # name TEI's field, not the Python argument
        raise TextTooLongError(exc.index, exc.n_tokens, exc.limit, TRUNCATE_REMEDY) from None


async def tokenize(request: Request, call: Call) -> Response:
    body = await call.body()
    texts = _inputs(body.get("inputs"))
    served = call.served(_model(call, body))
    options = EmbedOptions(prompt_name=optional_str(body, "prompt_name"))
    add_special = boolean(body, "add_special_tokens", True)
    special = served.special_token_ids
    out = []
    for ids, tokens in await call.until_disconnected(served.tokenize(texts, options)):
        pairs = list(zip(ids, tokens, strict=True))
        if not add_special:
            pairs = [(i, t) for i, t in pairs if i not in special]
        out.append(
            [{"id": i, "text": t, "special": i in special, "start": None, "stop": None} for i, t in pairs]
        )
    return json_response(out)


async def info(request: Request, call: Call) -> Response:
    served = call.served(_model(call))
    config = call.door.config
    facts = served.facts
    return json_response(
        {
            "model_id": facts.source,
            "model_sha": None,
            "model_dtype": facts.dtype,
            "model_type": {"embedding": {"pooling": facts.settings.pooling}},
            "max_concurrent_requests": config.max_queue_requests,
            "max_input_length": facts.max_length,
            "max_batch_tokens": facts.token_budget,
            "max_batch_requests": facts.max_batch_size,
            "max_client_batch_size": config.max_inputs_per_request,
            "auto_truncate": False,
            "tokenization_workers": config.tokenizer_threads,
            "version": embedsvc.__version__,
            "sha": None,
            "docker_label": None,
            "prompts": facts.settings.prompts,
            "name": facts.name,
            "dimension": facts.dimension,
            "outputs": list(facts.outputs),
            "sparse_dimension": facts.sparse_dimension or None,
            "multi_vector_dimension": facts.multi_vector_dimension or None,
        }
    )


def _inputs(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise InvalidInputError("inputs must be a string or a non-empty list of strings", field="inputs")
