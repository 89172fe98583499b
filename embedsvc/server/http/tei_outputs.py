"""TEI's sparse and multi-vector routes: ``POST /embed_sparse`` (per input, ``[{"index", "value"}]``
over the vocabulary, ids ascending, zeros left out) and ``POST /embed_all`` (per input, one vector per
token: the model's multi-vector output, such as ColBERT's). Same request fields as ``/embed`` (without
``normalize`` and ``dimensions``, which shape dense vectors only); a model without the output answers
TEI's validation error naming what it offers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from embedsvc.server.http.plumbing import FINGERPRINT_HEADER, Call, Door, json_response
from embedsvc.server.http.tei import embed_texts


def routes(door: Door) -> list[Route]:
    return [
        Route("/embed_sparse", door.endpoint("/embed_sparse", embed_sparse, tei=True), methods=["POST"]),
        Route("/embed_all", door.endpoint("/embed_all", embed_all, tei=True), methods=["POST"]),
    ]


async def embed_sparse(request: Request, call: Call) -> Response:
    embedded = await embed_texts(call, await call.body(), ("sparse",))
    assert embedded.sparse is not None  # asked: the facade gives it or refuses
    # the weights stay numpy float32 scalars: orjson writes their shortest float32 form, as TEI does
    return json_response(
        [
            [{"index": i, "value": v} for i, v in zip(ids.tolist(), weights, strict=True)]
            for ids, weights in embedded.sparse
        ],
        headers={FINGERPRINT_HEADER: embedded.fingerprint},
    )


async def embed_all(request: Request, call: Call) -> Response:
    embedded = await embed_texts(call, await call.body(), ("multi_vector",))
    assert embedded.multi_vectors is not None
    # orjson writes each [tokens, dim] array as nested lists
    return json_response(embedded.multi_vectors, headers={FINGERPRINT_HEADER: embedded.fingerprint})
