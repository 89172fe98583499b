"""The bundled all-MiniLM-L6-v2 against sentence-transformers itself."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy.stats import spearmanr

from embedsvc import Embedder
from tests.tiny_models import CORPUS_WORDS, corpus


def varied_sentences() -> list[str]:
    rng = random.Random(42)
    texts = corpus(240, seed=11)
    # long inputs: past the model's 256-token limit, so truncation must match too
    texts += [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(100, 400))) for _ in range(30)]
    texts += [
        "",
        " ",
        "Ünïcödé façade — naïve café, 東京タワー, Привет мир!",
        "emoji 🙂🚀 inside text",
        "tabs\tand\nnewlines\r\nmixed",
        "UPPER lower MiXeD",
        "numbers 3.14159 and 42, 1e-9",
        "a" * 600,
        "punctuation!!! ??? ... ;;; :::",
        "<html><b>markup</b></html>",
    ]
    return texts


@pytest.fixture(scope="module")
def st_model(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


@pytest.mark.parametrize("batching", ["padded", "packed"])
def test_cosine_parity_with_sentence_transformers(st_model, batching):
    texts = varied_sentences()
    ours = Embedder.from_pretrained(batching=batching, token_budget=4096).embed(texts)
    ref = st_model.encode(texts, batch_size=32, convert_to_numpy=True)
    assert ours.shape == ref.shape == (len(texts), 384)
    assert ours.dtype == np.float32
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.99999, f"worst text {int(cos.argmin())}: cosine {cos.min()}"


def test_settings_come_from_the_sentence_transformers_files(minilm):
    s = minilm.settings
    assert (s.pooling, s.normalize, s.max_length, s.profile) == ("mean", True, 256, "sentence-transformers")
    assert minilm.dimension == 384 and minilm.name == "all-MiniLM-L6-v2"


@pytest.mark.slow
def test_stsb_dev_spearman_matches_sentence_transformers(minilm, st_model, stsb_dev):
    s1, s2, gold = stsb_dev

    def spearman(a: np.ndarray, b: np.ndarray) -> float:
        return float(spearmanr((a * b).sum(1), gold).statistic)

    ours = spearman(minilm.embed(s1), minilm.embed(s2))
    ref = spearman(
        st_model.encode(s1, normalize_embeddings=True), st_model.encode(s2, normalize_embeddings=True)
    )
    assert round(ours, 4) == round(ref, 4), (ours, ref)
    assert ours > 0.8
