"""Encoder checkpoints: bge model-card recipe and sentence-transformers folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from embedsvc import Embedder
from tests import tiny_models

TEXTS = ["what is a panda?", "The dog runs over the road near the old house.", "x", "music " * 40]
BGE_QUERY = "Represent this sentence for searching relevant passages: "


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def bge_model_card(folder, texts: list[str], max_length: int) -> np.ndarray:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        out = model(**encoded)
    return F.normalize(out[0][:, 0], p=2, dim=1).numpy()  # CLS pooling, normalized


@pytest.mark.parametrize("batching", ["padded", "packed"])
def test_bge_follows_its_model_card(bge_dir, batching):
    emb = Embedder.from_pretrained(bge_dir, batching=batching)
    assert (emb.settings.profile, emb.settings.pooling, emb.settings.normalize) == ("bge", "cls", True)
    docs = emb.embed(TEXTS, input_type="document")
    assert cosine_rows(docs, bge_model_card(bge_dir, TEXTS, emb.max_length)).min() >= 0.9999
    queries = emb.embed(TEXTS, input_type="query")
    ref = bge_model_card(bge_dir, [BGE_QUERY + t for t in TEXTS], emb.max_length)
    assert cosine_rows(queries, ref).min() >= 0.9999


def test_plain_encoder_defaults_to_mean_and_normalize(bert_dir):
    emb = Embedder.from_pretrained(bert_dir)
    assert (emb.settings.profile, emb.settings.pooling, emb.settings.normalize) == ("encoder", "mean", True)
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    model = AutoModel.from_pretrained(bert_dir).eval()
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=emb.max_length, return_tensors="pt")
    with torch.no_grad():
        states = model(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].float()
    ref = F.normalize((states * mask).sum(1) / mask.sum(1), dim=1).numpy()
    assert cosine_rows(emb.embed(TEXTS), ref).min() >= 0.9999


@pytest.mark.parametrize(
    ("pooling", "dense", "include_prompt"),
    [
        ("mean", False, True),
        ("max", False, True),
        ("weighted_mean", False, True),
        ("mean", True, True),
        ("mean", False, False),
    ],
)
def test_sentence_transformers_folders(models_dir, pooling, dense, include_prompt):
    from sentence_transformers import SentenceTransformer

    folder = tiny_models.build_bert(
        models_dir / f"st-{pooling}-{dense}-{include_prompt}",
        st=pooling,
        dense=dense,
        include_prompt=include_prompt,
        seed=5,
    )
    emb = Embedder.from_pretrained(folder)
    assert emb.settings.pooling == pooling and emb.settings.include_prompt == include_prompt
    assert emb.dimension == (16 if dense else 32)
    st = SentenceTransformer(str(folder), device="cpu")
    for input_type, prompt_name in (("query", "query"), ("document", "document"), (None, None)):
        ours = emb.embed(TEXTS, input_type=input_type)
        ref = st.encode(TEXTS, prompt_name=prompt_name, convert_to_numpy=True)
        assert cosine_rows(ours, ref).min() >= 0.9999, (input_type, pooling)
