"""Issue 23, item 2: a request's options are checked once (``Embedder.resolve``); the hot path
(``prepare``, ``combine``) takes the resolved value as given, and every door keeps the same errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from embedsvc.engine.options import EmbedOptions, Limits
from embedsvc.engine.service import ModelService, Tokenizers
from embedsvc.errors import InvalidInputError
from tests.tiny_models import corpus

CHECKS = ("resolve", "template_for", "check_dimensions", "_check_truncation")


def _counted(monkeypatch: pytest.MonkeyPatch, embedder: Any) -> dict[str, int]:
    """Calls of each option check on ``embedder`` from now on (undone after the test)."""
    calls = dict.fromkeys(CHECKS, 0)
    for name in CHECKS:
        original = getattr(embedder, name)

        def counted(
            *args: Any, _name: str = name, _original: Callable[..., Any] = original, **kw: Any
        ) -> Any:
            calls[_name] += 1
            return _original(*args, **kw)

        monkeypatch.setattr(embedder, name, counted)
    return calls


def _served(embedder: Any, work: Callable[[ModelService], Any]) -> Any:
    """Run ``work`` against the model as the server runs it: scheduler and tokenizer threads."""

    async def main() -> Any:
        tokenizers = Tokenizers(2)
        service = ModelService.start(
            embedder,
            tokenizers,
            Limits(),
            tokens_per_second=1e6,
            max_queue_requests=100,
            max_queue_tokens=10_000_000,
            max_queue_seconds=600.0,
            batch_wait_s=0.0,
        )
        try:
            return await work(service)
        finally:
            await service.close()
            tokenizers.shutdown()

    return asyncio.run(main())


@pytest.mark.parametrize("count", [3, 40])  # 3: tokenized on the loop; 40: on a tokenizer thread
def test_a_served_request_resolves_its_options_once(minilm, monkeypatch, count):
    texts = corpus(count, seed=11)[:count]
    options = EmbedOptions(input_type="query", dimensions=64, truncation="start", chunked=True)
    want = minilm.embed(texts, input_type="query", dimensions=64, truncation="start", chunked=True)
    calls = _counted(monkeypatch, minilm)
    got = _served(minilm, lambda service: service.embed(texts, options))
    assert calls == dict.fromkeys(CHECKS, 1)  # before: the template and the dimensions were checked twice
    assert got.vectors.shape == (count, 64)
    np.testing.assert_allclose(got.vectors, want, atol=1e-5)
    assert got.token_counts == [len(e.ids) for e in minilm.prepare(texts, truncation="start")]


def test_embed_now_and_tokenize_resolve_once(minilm, monkeypatch):
    texts = ["a man plays the guitar", "word " * 400]
    calls = _counted(monkeypatch, minilm)
    got = ModelService.in_process(minilm).embed_now(texts, EmbedOptions(dimensions=32, normalize=False))
    assert calls == dict.fromkeys(CHECKS, 1)
    np.testing.assert_allclose(got.vectors, minilm.embed(texts, normalize=False)[:, :32], atol=1e-5)
    for name in CHECKS:
        calls[name] = 0
    tokens = _served(minilm, lambda service: service.tokenize(texts, EmbedOptions(truncation="start")))
    assert calls == dict.fromkeys(CHECKS, 1)
    assert [ids for ids, _ in tokens] == [e.ids for e in minilm.prepare(texts, truncation="start")]


BAD_OPTIONS = [
    {"truncation": "middle"},
    {"dimensions": 0},
    {"dimensions": 385},
    {"dimensions": 2.5},
    {"input_type": "passage"},
    {"prompt_name": "nope"},
    {"prompt_name": "x", "instruction": "y"},
    {"instruction": "find it", "input_type": "document"},
    {"instruction": "find it"},  # MiniLM has no instruction template
]


@pytest.mark.parametrize("bad", BAD_OPTIONS, ids=lambda bad: "-".join(f"{k}={v}" for k, v in bad.items()))
def test_every_door_refuses_bad_options_with_the_same_error(minilm, bad):
    with pytest.raises(InvalidInputError) as direct:
        minilm.embed(["hello"], **bad)
    with pytest.raises(InvalidInputError) as served:
        ModelService.in_process(minilm).embed_now(["hello"], EmbedOptions(**bad))
    with pytest.raises(InvalidInputError) as prepared:
        minilm.prepare(
            ["hello"], **{k: v for k, v in bad.items() if k != "dimensions"} or {"truncation": "?"}
        )
    assert str(served.value) == str(direct.value) and served.value.field == direct.value.field
    assert direct.value.field == next(iter(bad)) or direct.value.field == "instruction"
    assert prepared.value.field in ("truncation", "input_type", "prompt_name", "instruction")


def test_resolved_options_are_taken_as_given(minilm):
    resolved = minilm.resolve(EmbedOptions(dimensions=16, normalize=False, truncation="none"))
    assert (resolved.dimensions, resolved.normalize, resolved.truncation) == (16, False, "none")
    assert minilm.resolve(EmbedOptions()).normalize is True  # the model's default, filled in once
    encoded = minilm.prepare(["hello world"], resolved)
    vectors = minilm.combine(minilm.forward(encoded), encoded, 1, resolved)
    np.testing.assert_allclose(vectors, minilm.embed(["hello world"], normalize=False)[:, :16], atol=1e-6)
    with pytest.raises(TypeError, match="not both"):
        minilm.prepare(["hello world"], resolved, truncation="end")
