"""The in-process API: options, truncation, dimensions, chunking, batch invariance, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from embedsvc import Embedder
from embedsvc.errors import InvalidInputError, ModelLoadError, TextTooLongError
from tests.tiny_models import corpus

LONG = "word " * 400  # over MiniLM's 256-token limit


def test_empty_list_gives_zero_rows(minilm):
    out = minilm.embed([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    assert minilm.embed([], dimensions=64).shape == (0, 64)


def test_empty_string_is_embedded_like_any_other(minilm):
    out = minilm.embed(["", "hello"])
    assert out.shape == (2, 384) and np.isfinite(out).all()
    assert abs(float(np.linalg.norm(out[0])) - 1.0) < 1e-5


def test_matryoshka_truncates_then_normalizes(minilm):
    full = minilm.embed(["a man plays the guitar"], normalize=False)
    short = minilm.embed(["a man plays the guitar"], dimensions=64)
    want = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(short, want, atol=1e-6)
    raw = minilm.embed(["a man plays the guitar"], dimensions=64, normalize=False)
    np.testing.assert_allclose(raw, full[:, :64], atol=1e-6)


def test_normalize_per_request(minilm):
    raw = minilm.embed(["abc def"], normalize=False)
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 1e-3
    unit = minilm.embed(["abc def"], normalize=True)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw), atol=1e-6)


def test_truncation_modes(minilm):
    head = "alpha beta gamma " * 20
    tail = " omega psi chi" * 100
    text = head + tail
    (end,) = minilm.prepare([text], truncation="end")
    (start,) = minilm.prepare([text], truncation="start")
    tok = minilm.tokenizer
    assert len(end.ids) == len(start.ids) == 256
    assert end.ids[0] == tok.cls_token_id and end.ids[-1] == tok.sep_token_id
    assert start.ids[0] == tok.cls_token_id and start.ids[-1] == tok.sep_token_id
    assert tok.decode(end.ids[1:4]) == "alpha beta gamma"
    assert tok.decode(start.ids[-4:-1]) == "omega psi chi"


def test_truncation_none_names_index_tokens_and_limit(minilm):
    with pytest.raises(TextTooLongError) as info:
        minilm.embed(["short", LONG], truncation="none")
    err = info.value
    assert (err.index, err.limit) == (1, 256) and err.n_tokens == 402
    assert "input 1 has 402 tokens" in str(err) and "256" in str(err)


def test_chunked_mode_averages_windows_by_token_count(minilm):
    text = " ".join(corpus(60, seed=3))
    chunks = minilm.prepare([text], chunked=True)
    assert len(chunks) > 1 and all(len(c.ids) <= 256 for c in chunks)
    pooled = minilm.forward(chunks).numpy()
    weights = np.array([c.text_tokens for c in chunks], dtype=np.float32)
    want = (pooled * weights[:, None]).sum(0) / weights.sum()
    want /= np.linalg.norm(want)
    np.testing.assert_allclose(minilm.embed([text], chunked=True)[0], want, atol=1e-6)
    # chunk text tokens cover the whole input exactly once
    assert weights.sum() == len(minilm.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_batch_vs_single_agree(minilm):
    texts = corpus(40, seed=9) + [LONG, "tiny"]
    batch = minilm.embed(texts)
    for i in (0, 7, 40, 41):
        single = minilm.embed([texts[i]])[0]
        assert np.abs(single - batch[i]).max() <= 1e-5


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_batch_vs_single_agree_for_decoders(request, family):
    emb = Embedder.from_pretrained(request.getfixturevalue(f"{family}_dir"))
    texts = corpus(20, seed=4)
    batch = emb.embed(texts)
    for i in (0, 5, 19):
        assert np.abs(emb.embed([texts[i]])[0] - batch[i]).max() <= 1e-5


def test_caller_order_is_restored(minilm):
    texts = ["short", LONG, "medium length sentence here", "x"]
    batch = minilm.embed(texts)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(batch[i], minilm.embed([t])[0], atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pooling": "avg"}, "unknown pooling 'avg'; choose one of cls, mean, last, weighted_mean, max"),
        ({"conversion": "magic"}, "unknown conversion 'magic'"),
        ({"dtype": "int3"}, "unknown dtype 'int3'"),
        ({"batching": "zigzag"}, "unknown batching 'zigzag'"),
        ({"frobnicate": 1}, "unknown option"),
        ({"max_length": 100000}, "max_length must be between 1 and the model's limit"),
        ({"profile": "nope"}, "unknown profile 'nope'"),
    ],
)
def test_bad_load_options(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        Embedder.from_pretrained(**kwargs)


def test_bad_sources(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a folder nor a hub id"):
        Embedder.from_pretrained(str(tmp_path / "missing" / "deep" / "path"))
    with pytest.raises(ModelLoadError, match="no config\\.json"):
        Embedder.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("texts", "kwargs", "message"),
    [
        (["a"], {"dimensions": 385}, "dimensions must be between 1 and 384"),
        (["a"], {"dimensions": 0}, "dimensions must be between 1 and 384"),
        (["a"], {"dimensions": 2.5}, "dimensions must be an integer"),
        (["a", 3], {}, r"inputs\[1\] is int, expected str"),
        (["a", None], {}, r"inputs\[1\] is NoneType, expected str"),
        ("just a string", {}, "not a single string"),
        (["a"], {"truncation": "middle"}, "unknown truncation 'middle'"),
        (["a"], {"input_type": "passage"}, "unknown input_type 'passage'"),
        (["a"], {"prompt_name": "nope"}, "has no prompt 'nope'"),
        (["a"], {"instruction": "do it"}, "has no instruction template"),
    ],
)
def test_bad_embed_arguments(minilm, texts, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        minilm.embed(texts, **kwargs)


def test_errors_are_value_errors_with_the_field(minilm):
    with pytest.raises(ValueError) as info:
        minilm.embed(["a"], dimensions=999)
    assert info.value.field == "dimensions"  # type: ignore[attr-defined]
