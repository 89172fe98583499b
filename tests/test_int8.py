"""The CPU int8 mode: close to fp32, and STS-B within half a Spearman point."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from embedsvc import Embedder
from tests.tiny_models import corpus


@pytest.fixture(scope="module")
def int8():
    return Embedder.from_pretrained(quantize="int8")


def test_int8_vectors_are_close_to_fp32(int8, minilm):
    texts = corpus(40, seed=12)
    cos = (int8.embed(texts) * minilm.embed(texts)).sum(1)
    assert cos.min() > 0.95  # word-salad texts: measured 0.958-0.98
    assert type(int8.model.encoder.layer[0].intermediate.dense).__name__ == "Linear"
    assert "quantized" in type(int8.model.encoder.layer[0].intermediate.dense).__module__


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantize": "int4"}, "unknown quantize"),
        ({"quantize": "int8", "deterministic": True}, "cannot be combined"),
        ({"quantize": "int8", "dtype": "bfloat16"}, "CPU mode for float32"),
    ],
)
def test_bad_quantize_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Embedder.from_pretrained(**kwargs)


@pytest.mark.slow
def test_int8_stsb_within_half_a_point(int8, minilm, stsb_dev):
    s1, s2, gold = stsb_dev

    def rho(emb: Embedder) -> float:
        return float(spearmanr((emb.embed(s1) * emb.embed(s2)).sum(1), gold).statistic) * 100

    assert abs(rho(minilm) - rho(int8)) <= 0.5
    assert np.isfinite(rho(int8))
