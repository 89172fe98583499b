"""Text Embeddings Inference's API: ``POST /embed``, ``POST /rerank``, ``POST /predict``, ``POST /tokenize``,
``GET /info``, ``GET /health`` (and, in :mod:`.tei_outputs`, ``POST /embed_sparse`` / ``POST /embed_all``),
with TEI's request and response shapes and status codes, so TEI clients
work unchanged (a ``model`` field or ``?model=`` picks a model other than the default; unnamed, /rerank
and /predict reach the first reranker or classifier when the default model is an embedder). Booleans
are JSON booleans: a string such as ``"false"`` is refused, never read as true. A /rerank body with
``documents`` instead of ``texts`` is Cohere's / Jina's shape and is answered in it (:mod:`.cohere`).
TEI's answers are bare lists: the model's fingerprint travels in the ``x-embedsvc-fingerprint`` header."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import embedsvc
from embedsvc import wire
from embedsvc.engine.options import Embedded, EmbedOptions, ModelFacts, ScoreOptions
from embedsvc.errors import InvalidInputError, TextTooLongError, UnavailableError
from embedsvc.server.http import cohere
from embedsvc.server.http.plumbing import (
    FINGERPRINT_HEADER,
    Call,
    Door,
    boolean,
    json_response,
    optional_int,
    optional_str,
)

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
        Route("/rerank", door.endpoint("/rerank", rerank, tei=True), methods=["POST"]),
        Route("/predict", door.endpoint("/predict", predict, tei=True), methods=["POST"]),
        Route("/tokenize", door.endpoint("/tokenize", tokenize, tei=True), methods=["POST"]),
        Route("/info", door.endpoint("/info", info, tei=True), methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]


def _model(call: Call, body: dict[str, object] | None = None) -> str | None:
    named = optional_str(body, "model") if body else None
    return named or call.request.query_params.get("model")


async def embed(request: Request, call: Call) -> Response:
    embedded = await embed_texts(call, await call.body())
    # TEI's answer is a bare list: the fingerprint travels in a header only
    return json_response(list(embedded.vectors), headers={FINGERPRINT_HEADER: embedded.fingerprint})


async def embed_texts(call: Call, body: dict[str, Any], outputs: tuple[str, ...] = ("dense",)) -> Embedded:
    """A TEI body's inputs embedded for ``outputs`` (/embed, /embed_sparse, /embed_all): its model,
    prompt and truncation fields read once; normalize and dimensions only when dense is asked."""
    texts = _inputs(body.get("inputs"))
    served = call.served(_model(call, body))
    dense = "dense" in outputs
    options = EmbedOptions(
        prompt_name=optional_str(body, "prompt_name"),
        dimensions=optional_int(body, "dimensions") if dense else None,
        normalize=boolean(body, "normalize", True) if dense else None,
        truncation=_truncation(body),
        outputs=outputs,
    )
    try:
        return await call.embed(served, texts, options)
    except TextTooLongError as exc:  # name TEI's field, not the Python argument
        raise TextTooLongError(exc.index, exc.n_tokens, exc.limit, TRUNCATE_REMEDY) from None


def _truncation(body: dict[str, object]) -> str:
    """TEI's ``truncate`` (off by default: over-long inputs are refused) and ``truncation_direction``."""
    direction = body.get("truncation_direction") or "Right"
    if direction not in ("Right", "Left", "right", "left"):
        raise InvalidInputError(
            f"truncation_direction must be 'Right' or 'Left', got {direction!r}", field="truncation_direction"
        )
    truncate = boolean(body, "truncate", False)
    return ("end" if str(direction).lower() == "right" else "start") if truncate else "none"


def _score_options(body: dict[str, object]) -> ScoreOptions:
    return ScoreOptions(
        instruction=optional_str(body, "instruction"),  # an extension: LLM rerankers' task
        truncation=_truncation(body),
        raw=boolean(body, "raw_scores", False),
    )


async def rerank(request: Request, call: Call) -> Response:
    """``{"query", "texts", "return_text", "raw_scores", "truncate"}`` -> ``[{"index", "score", "text"?}]``,
    highest score first."""
    body = await call.body()
    if "texts" not in body and "documents" in body:
        return await cohere.rerank_body(body, call, version="1")
    query = body.get("query")
    if not isinstance(query, str):
        raise InvalidInputError("query must be a string", field="query")
    texts = _inputs(body.get("texts"), "texts")
    return_text = boolean(body, "return_text", False)
    options = _score_options(body)
    served = call.served(_model(call, body), "rerank")
    try:
        scored = await call.infer(
            served, served.rerank(query, texts, options, timeout=call.remaining(), tenant=call.tenant)
        )
    except TextTooLongError as exc:
        raise TextTooLongError(exc.index, exc.n_tokens, exc.limit, TRUNCATE_REMEDY) from None
    ranks = []
    for i in wire.ranked(scored.scores, None):
        rank: dict[str, object] = {"index": i, "score": float(scored.scores[i])}
        if return_text:
            rank["text"] = texts[i]
        ranks.append(rank)
    return json_response(ranks, headers={FINGERPRINT_HEADER: scored.fingerprint})


async def predict(request: Request, call: Call) -> Response:
    """``{"inputs": "text" | [a, b] | [[text] or [a, b], ...]}`` -> ``[{"score", "label"}]`` per input,
    highest first (one list for one input, a list of them for a batch). Texts go to a classifier, pairs to
    a reranker (labelled as TEI does: the config's id2label[0], e.g. "LABEL_0")."""
    body = await call.body()
    items, batch = _predict_inputs(body.get("inputs"))
    pairs = [item for item in items if isinstance(item, tuple)]
    if pairs and len(pairs) != len(items):
        raise InvalidInputError(
            "inputs mix single texts and pairs: send texts (a classifier) or pairs (a reranker), not both",
            field="inputs",
        )
    options = _score_options(body)
    served = call.served(_model(call, body), "rerank" if pairs else "classify")
    timeout, tenant = call.remaining(), call.tenant
    labels: tuple[str, ...]
    try:
        if pairs:
            scored = await call.infer(served, served.score(pairs, options, timeout=timeout, tenant=tenant))
            # a reranker's one score, labelled as TEI does: the config's id2label[0] (often "LABEL_0")
            labels, rows = served.labels, scored.scores.reshape(-1, 1)
            fingerprint = scored.fingerprint
        else:
            texts = [item for item in items if isinstance(item, str)]
            classified = await call.infer(
                served, served.classify(texts, options, timeout=timeout, tenant=tenant)
            )
            labels, rows = classified.labels, classified.scores
            fingerprint = classified.fingerprint
    except TextTooLongError as exc:
        raise TextTooLongError(exc.index, exc.n_tokens, exc.limit, TRUNCATE_REMEDY) from None
    out = [[{"score": float(row[j]), "label": labels[j]} for j in wire.ranked(row, None)] for row in rows]
    return json_response(out if batch else out[0], headers={FINGERPRINT_HEADER: fingerprint})


def _predict_inputs(value: object) -> tuple[list[str | tuple[str, str]], bool]:
    """TEI's predict inputs: a text, a pair, or a batch of [text] / [a, b] lists; (items, is a batch)."""
    shape = 'inputs must be a string, a pair ["a", "b"], or a batch [["text"], ["a", "b"], ...]'

    def one(item: object) -> str | tuple[str, str]:
        if isinstance(item, list) and 1 <= len(item) <= 2 and all(isinstance(t, str) for t in item):
            return item[0] if len(item) == 1 else (item[0], item[1])
        raise InvalidInputError(shape, field="inputs")

    if isinstance(value, str):
        return [value], False
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [one(value)], False
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return [one(v) for v in value], True
    raise InvalidInputError(shape, field="inputs")


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
            "model_type": _model_type(facts),
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
            "fingerprint": facts.fingerprint,
            "fingerprint_parts": facts.fingerprint_parts,
            "outputs": list(facts.outputs),
            "sparse_dimension": facts.sparse_dimension or None,
            "multi_vector_dimension": facts.multi_vector_dimension or None,
            "cpu_parallelism": facts.cpu_parallelism or None,
            "forward_workers": facts.forward_workers,
        }
    )


def _model_type(facts: ModelFacts) -> dict[str, Any]:
    """TEI's model_type: an embedding model's pooling, or a reranker's / classifier's labels."""
    if facts.task == "embed":
        return {"embedding": {"pooling": facts.settings.pooling}}
    labels = facts.labels  # a reranker's one output labelled as /predict labels it
    id2label = {str(i): label for i, label in enumerate(labels)}
    label2id = {label: i for i, label in enumerate(labels)}
    kind = "reranker" if facts.task == "rerank" else "classifier"
    return {kind: {"id2label": id2label, "label2id": label2id}}


def _inputs(value: object, field: str = "inputs") -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise InvalidInputError(f"{field} must be a string or a non-empty list of strings", field=field)
