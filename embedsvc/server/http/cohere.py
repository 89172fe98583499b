"""Cohere's and Jina's rerank API: ``POST /v1/rerank`` and ``POST /v2/rerank``.

What the ``cohere`` SDK (``ClientV2.rerank``, ``Client.rerank``), LangChain's and LlamaIndex's Cohere
rerankers, LiteLLM and Jina clients send: ``model``, ``query``, ``documents`` (strings, or objects with a
``text`` field, or with the fields named in ``rank_fields``), ``top_n``, ``return_documents``. The answer:
``{"id", "results": [{"index", "relevance_score", "document"?}], "meta": {"api_version", "billed_units",
"tokens"}, "usage": {"total_tokens"}}``, highest score first. ``max_tokens_per_doc`` cuts each document
to its first N tokens before scoring, as Cohere does (unset: no cut of its own); a pair still longer than
the model takes is cut at its limit. Extensions:
``instruction`` (LLM rerankers' task), ``raw_scores`` (logits instead of relevance in [0, 1]); the answer
carries the model's ``fingerprint`` (a top-level field and the ``x-embedsvc-fingerprint`` header).
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from embedsvc import wire
from embedsvc.engine.options import ScoreOptions
from embedsvc.errors import InvalidInputError
from embedsvc.server.http.plumbing import (
    FINGERPRINT_HEADER,
    Call,
    Door,
    boolean,
    json_response,
    optional_int,
    optional_str,
)

DOCUMENTS_PER_SEARCH_UNIT = 100  # how Cohere counts billed search units: one query over 100 documents


def routes(door: Door) -> list[Route]:
    async def v1(request: Request, call: Call) -> Response:
        return await rerank_body(await call.body(), call, version="1")

    async def v2(request: Request, call: Call) -> Response:
        return await rerank_body(await call.body(), call, version="2")

    return [
        Route("/v1/rerank", door.endpoint("/v1/rerank", v1), methods=["POST"]),
        Route("/v2/rerank", door.endpoint("/v2/rerank", v2), methods=["POST"]),
    ]


async def rerank_body(body: dict[str, Any], call: Call, *, version: str) -> Response:
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise InvalidInputError("query must be a non-empty string", field="query")
    originals, texts = _documents(body.get("documents"), body.get("rank_fields"))
    top_n = optional_int(body, "top_n")
    wire.ranked([], top_n)  # a bad top_n fails before the work
    options = ScoreOptions(
        instruction=optional_str(body, "instruction"),
        truncation="end",  # Cohere cuts long documents; it never refuses them
        raw=boolean(body, "raw_scores", False),
        max_document_tokens=optional_int(body, "max_tokens_per_doc"),  # checked by the engine facade
    )
    return_documents = boolean(body, "return_documents", False)
    served = call.served(optional_str(body, "model"), "rerank")
    scored = await call.infer(
        served, served.rerank(query, texts, options, timeout=call.remaining(), tenant=call.tenant)
    )
    results = []
    for i in wire.ranked(scored.scores, top_n):
        result: dict[str, Any] = {"index": i, "relevance_score": float(scored.scores[i])}
        if return_documents:
            original = originals[i]
            result["document"] = original if isinstance(original, dict) else {"text": original}
        results.append(result)
    tokens = sum(scored.token_counts)
    return json_response(
        {
            "id": str(uuid.uuid4()),
            "results": results,
            "model": served.name,
            "meta": {
                "api_version": {"version": version},
                "billed_units": {"search_units": math.ceil(len(texts) / DOCUMENTS_PER_SEARCH_UNIT)},
                "tokens": {"input_tokens": tokens, "output_tokens": 0},
            },
            "usage": {"total_tokens": tokens},  # Jina's field
            "fingerprint": scored.fingerprint,  # extension: scores with equal fingerprints compare
        },
        headers={FINGERPRINT_HEADER: scored.fingerprint},
    )


def _documents(value: Any, rank_fields: Any) -> tuple[list[Any], list[str]]:
    """(the documents as sent, the text each is scored by). An object document is scored by its ``text``
    field, or by ``rank_fields`` as "field: value" lines in that order (Cohere's semi-structured form)."""
    if not isinstance(value, list) or not value:
        raise InvalidInputError(
            "documents must be a non-empty list of strings or objects with a text field", field="documents"
        )
    if rank_fields is not None and not (
        isinstance(rank_fields, list) and rank_fields and all(isinstance(f, str) for f in rank_fields)
    ):
        raise InvalidInputError("rank_fields must be a non-empty list of field names", field="rank_fields")
    texts = []
    for i, document in enumerate(value):
        if isinstance(document, str):
            texts.append(document)
        elif isinstance(document, dict) and rank_fields:
            missing = [f for f in rank_fields if not isinstance(document.get(f), str)]
            if missing:
                raise InvalidInputError(
                    f"documents[{i}] has no string field {missing[0]!r} (named in rank_fields)",
                    field="documents",
                )
            texts.append("\n".join(f"{f}: {document[f]}" for f in rank_fields))
        elif isinstance(document, dict) and isinstance(document.get("text"), str):
            texts.append(document["text"])
        else:
            raise InvalidInputError(
                f"documents[{i}] must be a string or an object with a string text field "
                "(or the fields named in rank_fields)",
                field="documents",
            )
    return value, texts
