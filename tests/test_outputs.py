"""Sparse and multi-vector outputs against their references, on tiny random checkpoints in the hub layouts.

* bge-m3: FlagEmbedding's BGEM3 inference logic, written out below (FlagEmbedding does not import with
  transformers 5): padded batches sorted by length, dense = normalized CLS, sparse = relu(sparse_linear)
  with the max per token id and CLS/EOS/PAD/UNK dropped, ColBERT = normalized colbert_linear over the
  tokens after CLS. All three from our one forward.
* SPLADE: sentence-transformers' SparseEncoder itself, loading the folder SparseEncoder.save wrote.
* ColBERT: PyLate's preprocess/encode logic and colbert-ir's tokenizer/model logic, written out below
  (pylate cannot be installed here).

Every model is checked in padded and packed batching and in deterministic mode (|delta| <= 1e-5);
folder names are neutral, so nothing is recognised by name.
"""

from __future__ import annotations

import asyncio
import json
import string
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from embedsvc import Embedder
from embedsvc.engine.options import EmbedOptions, Limits
from embedsvc.engine.service import ModelService, Tokenizers
from embedsvc.errors import InvalidInputError, PayloadTooLargeError
from tests import tiny_models

TEXTS = [
    "The quick brown fox jumps over the lazy dog, near the river; in the morning!",
    "a",
    "Children read books at school while the teacher plays music. " * 4,
    "what is the answer? the answer, the answer: the answer.",
    "The old man and his dog walk to the city every day to find good bread and water",
]
MODES = {
    "padded": {"batching": "padded"},
    "packed": {"batching": "packed"},
    "deterministic": {"deterministic": True},
}
TOL = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("outputs")
    return {
        "m3": tiny_models.build_bge_m3(root / "model-a"),
        "splade": tiny_models.build_splade(root / "model-b", root / "mlm-b"),
        "splade_sum": tiny_models.build_splade(root / "model-c", root / "mlm-c", pooling="sum", legacy=True),
        "colbert_ir": tiny_models.build_colbert_ir(root / "model-d"),
        "pylate": tiny_models.build_pylate(root / "model-e"),
    }


def serve(folder: Path, **options: Any) -> ModelService:
    return ModelService.in_process(Embedder.from_pretrained(folder, **options))


def assert_sparse_equal(ours: tuple[np.ndarray, np.ndarray], ref: dict[int, float]) -> None:
    ids, weights = ours
    assert ids.dtype == np.int32 and weights.dtype == np.float32
    assert np.all(np.diff(ids) > 0), "ids ascending, each once"
    assert np.all(weights > 0)
    mine = dict(zip(ids.tolist(), weights.tolist(), strict=True))
    for key in set(mine) | set(ref):  # an id only one side keeps must have a weight within the tolerance
        assert abs(mine.get(key, 0.0) - ref.get(key, 0.0)) <= TOL, (key, mine.get(key), ref.get(key))
    assert len(set(mine) ^ set(ref)) <= 1


def assert_multi_equal(ours: list[np.ndarray], ref: list[np.ndarray]) -> None:
    assert len(ours) == len(ref)
    for mine, want in zip(ours, ref, strict=True):
        assert mine.dtype == np.float32 and mine.shape == want.shape, (mine.shape, want.shape)
        assert np.abs(mine - want).max() <= TOL


# ---------------------------------------------------------------- bge-m3 (FlagEmbedding's logic)


def flag_m3_encode(
    folder: Path, texts: list[str], batch_size: int = 2, max_length: int = 8192
) -> dict[str, Any]:
    """BGEM3FlagModel.encode(return_dense, return_sparse, return_colbert_vecs), written out: tokenize
    without padding, sort by length (longest first), pad each batch, one forward, the three heads."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    hidden = model.config.hidden_size
    sparse_linear = torch.nn.Linear(hidden, 1)
    sparse_linear.load_state_dict(torch.load(folder / "sparse_linear.pt", map_location="cpu"))
    colbert_linear = torch.nn.Linear(hidden, hidden)
    colbert_linear.load_state_dict(torch.load(folder / "colbert_linear.pt", map_location="cpu"))
    unused_tokens = set()
    for name in ("cls_token", "eos_token", "pad_token", "unk_token"):
        if name in tokenizer.special_tokens_map:
            unused_tokens.add(tokenizer.convert_tokens_to_ids(tokenizer.special_tokens_map[name]))

    def process_token_weights(token_weights: np.ndarray, input_ids: list[int]) -> dict[int, float]:
        result: dict[int, float] = defaultdict(int)
        for w, idx in zip(token_weights, input_ids, strict=False):
            if idx not in unused_tokens and w > 0 and w > result[idx]:
                result[idx] = float(w)
        return dict(result)

    inputs = [tokenizer(t, truncation=True, max_length=max_length) for t in texts]
    order = np.argsort([-len(x["input_ids"]) for x in inputs])
    dense, lexical, colbert = [], [], []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer.pad([inputs[i] for i in order[start : start + batch_size]], return_tensors="pt")
            last = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
            dense.append(F.normalize(last[:, 0], dim=-1).numpy())
            token_weights = torch.relu(sparse_linear(last)).squeeze(-1)
            lexical += map(process_token_weights, token_weights.numpy(), batch["input_ids"].numpy().tolist())
            vecs = colbert_linear(last[:, 1:]) * batch["attention_mask"][:, 1:][:, :, None].float()
            vecs = F.normalize(vecs, dim=-1)
            for v, mask in zip(vecs.numpy(), batch["attention_mask"].numpy(), strict=True):
                colbert.append(v[: int(np.sum(mask)) - 1])
    back = np.argsort(order)
    return {
        "dense": np.concatenate(dense)[back],
        "sparse": [lexical[i] for i in back],
        "colbert": [colbert[i] for i in back],
    }


@pytest.fixture(scope="module")
def m3_reference(folders: dict[str, Path]) -> dict[str, Any]:
    return flag_m3_encode(folders["m3"], TEXTS)


@pytest.mark.parametrize("mode", MODES)
def test_bge_m3_three_outputs_from_one_forward_match_flagembedding(
    folders: dict[str, Path], m3_reference: dict[str, Any], mode: str
) -> None:
    service = serve(folders["m3"], **MODES[mode])
    assert service.facts.outputs == ("dense", "sparse", "multi_vector")
    assert service.facts.sparse_dimension == service._embedder.model.config.vocab_size
    assert service.facts.multi_vector_dimension == 64
    got = service.embed_now(TEXTS, EmbedOptions(outputs=("dense", "sparse", "multi_vector")))
    assert np.abs(got.vectors - m3_reference["dense"]).max() <= TOL
    assert got.sparse is not None and got.multi_vectors is not None
    for ours, ref in zip(got.sparse, m3_reference["sparse"], strict=True):
        assert_sparse_equal(ours, ref)
    assert_multi_equal(got.multi_vectors, m3_reference["colbert"])
    # each output alone is the same as asked together
    alone = service.embed_now(TEXTS, EmbedOptions(outputs=("sparse",)))
    assert alone.vectors.shape == (len(TEXTS), 0) and alone.multi_vectors is None
    for a, b in zip(alone.sparse or [], got.sparse, strict=True):
        assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1], atol=TOL)
    dense_only = service.embed_now(TEXTS)
    assert dense_only.sparse is None and dense_only.multi_vectors is None
    assert np.abs(dense_only.vectors - m3_reference["dense"]).max() <= TOL


def test_deterministic_outputs_do_not_depend_on_the_batch(folders: dict[str, Path]) -> None:
    service = serve(folders["m3"], deterministic=True)
    everything = EmbedOptions(outputs=("dense", "sparse", "multi_vector"))
    batch = service.embed_now(TEXTS, everything)
    for i, text in enumerate(TEXTS):
        alone = service.embed_now([text], everything)
        assert np.array_equal(alone.vectors[0], batch.vectors[i])
        assert np.array_equal(alone.sparse[0][0], batch.sparse[i][0])  # type: ignore[index]
        assert np.array_equal(alone.sparse[0][1], batch.sparse[i][1])  # type: ignore[index]
        assert np.array_equal(alone.multi_vectors[0], batch.multi_vectors[i])  # type: ignore[index]


# ---------------------------------------------------------------- SPLADE (SparseEncoder itself)


@pytest.mark.parametrize("name", ["splade", "splade_sum"])
@pytest.mark.parametrize("mode", MODES)
def test_splade_matches_sentence_transformers_sparse_encoder(
    folders: dict[str, Path], name: str, mode: str
) -> None:
    from sentence_transformers import SparseEncoder

    reference = SparseEncoder(str(folders[name]), device="cpu")
    want = reference.encode(TEXTS, convert_to_tensor=True, batch_size=2).to_dense().numpy()
    service = serve(folders[name], **MODES[mode])
    assert service.facts.outputs == ("sparse",)
    assert service.facts.sparse_dimension == want.shape[1]
    got = service.embed_now(TEXTS, EmbedOptions(outputs=("sparse",)))
    assert got.vectors.shape == (len(TEXTS), 0)
    for (ids, weights), row in zip(got.sparse or [], want, strict=True):
        assert_sparse_equal((ids, weights), {int(i): float(row[i]) for i in np.flatnonzero(row)})


def test_sparse_tokens_name_the_vocabulary_entries(folders: dict[str, Path]) -> None:
    service = serve(folders["splade"])
    ids, _ = service.embed_now(["dog"], EmbedOptions(outputs=("sparse",))).sparse[0]  # type: ignore[index]
    tokenizer = AutoTokenizer.from_pretrained(folders["splade"])
    assert service.sparse_tokens(ids[:3].tolist()) == tokenizer.convert_ids_to_tokens(ids[:3].tolist())


# ---------------------------------------------------------------- ColBERT (PyLate's and colbert-ir's logic)


def pylate_encode(folder: Path, texts: list[str], *, is_query: bool) -> list[np.ndarray]:
    """PyLate's ColBERT.preprocess + encode, written out: [MASK] as the padding token, the prefix token
    inserted after [CLS], queries padded to query_length, documents' skiplist tokens dropped."""
    cfg = json.loads((folder / "config_sentence_transformers.json").read_text())
    dense = json.loads((folder / "1_Dense" / "config.json").read_text())
    from safetensors.torch import load_file

    weight = load_file(str(folder / "1_Dense" / "model.safetensors"))["linear.weight"]
    assert not dense["bias"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer.pad_token_id = tokenizer.mask_token_id  # PyLate: an MLM's [MASK] pads (the query expansion)
    skiplist = [tokenizer.convert_tokens_to_ids(w) for w in cfg["skiplist_words"]]
    length = cfg["query_length"] if is_query else cfg["document_length"]
    prefix_id = tokenizer.convert_tokens_to_ids(cfg["query_prefix"] if is_query else cfg["document_prefix"])
    out = tokenizer(
        texts,
        padding="max_length" if is_query and cfg["do_query_expansion"] else "longest",
        truncation=True,
        max_length=length - 1,
        return_tensors="pt",
    )

    def insert(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.cat([t[:, :1], torch.full((t.shape[0], 1), value, dtype=t.dtype), t[:, 1:]], dim=1)

    ids, mask = insert(out["input_ids"], prefix_id), insert(out["attention_mask"], 1)
    if is_query and cfg["attend_to_expansion_tokens"]:
        mask.fill_(1)
    with torch.no_grad():
        tokens = model(input_ids=ids, attention_mask=mask).last_hidden_state @ weight.T
    if is_query:
        keep = torch.ones_like(ids, dtype=torch.bool)
    else:
        keep = ~torch.isin(ids, torch.tensor(skiplist)) & mask.bool()
    return [F.normalize(t[k], p=2, dim=1).numpy() for t, k in zip(tokens, keep, strict=True)]


def colbert_ir_encode(folder: Path, texts: list[str], *, is_query: bool) -> list[np.ndarray]:
    """colbert-ir's QueryTokenizer / DocTokenizer and ColBERT.query / ColBERT.doc, written out: a '. '
    placeholder replaced by the marker, [PAD] turned into [MASK] in queries, punctuation masked in
    documents, the masked vectors dropped (keep_dims=False)."""
    from safetensors.torch import load_file

    meta = json.loads((folder / "artifact.metadata").read_text())
    weight = load_file(str(folder / "model.safetensors"))["linear.weight"]
    tok = AutoTokenizer.from_pretrained(folder)
    bert = AutoModel.from_pretrained(folder).eval()
    batch = [". " + x for x in texts]
    if is_query:
        obj = tok(
            batch, padding="max_length", truncation=True, return_tensors="pt", max_length=meta["query_maxlen"]
        )
        ids, mask = obj["input_ids"], obj["attention_mask"]
        ids[:, 1] = tok.convert_tokens_to_ids(meta["query_token_id"])
        ids[ids == tok.pad_token_id] = tok.mask_token_id
        if meta["attend_to_mask_tokens"]:
            mask[ids == tok.mask_token_id] = 1
        skiplist: list[int] = []
    else:
        obj = tok(
            batch,
            padding="longest",
            truncation="longest_first",
            return_tensors="pt",
            max_length=meta["doc_maxlen"],
        )
        ids, mask = obj["input_ids"], obj["attention_mask"]
        ids[:, 1] = tok.convert_tokens_to_ids(meta["doc_token_id"])
        skiplist = [tok.encode(symbol, add_special_tokens=False)[0] for symbol in string.punctuation]
    with torch.no_grad():
        vecs = bert(ids, attention_mask=mask)[0] @ weight.T
    keep = torch.tensor([[(x not in skiplist) and (x != tok.pad_token_id) for x in d] for d in ids.tolist()])
    vecs = F.normalize(vecs * keep[:, :, None].float(), p=2, dim=2)
    return [v[k].numpy() for v, k in zip(vecs, keep, strict=True)]


@pytest.mark.parametrize("layout", ["pylate", "colbert_ir"])
@pytest.mark.parametrize("mode", MODES)
def test_colbert_matches_its_reference(folders: dict[str, Path], layout: str, mode: str) -> None:
    reference = pylate_encode if layout == "pylate" else colbert_ir_encode
    service = serve(folders[layout], **MODES[mode])
    assert service.facts.outputs == ("multi_vector",)
    assert service.facts.multi_vector_dimension == 16
    for input_type in ("query", "document"):
        want = reference(folders[layout], TEXTS, is_query=input_type == "query")
        got = service.embed_now(TEXTS, EmbedOptions(input_type=input_type, outputs=("multi_vector",)))
        assert got.vectors.shape == (len(TEXTS), 0)
        assert_multi_equal(got.multi_vectors or [], want)
    queries = service.embed_now(TEXTS, EmbedOptions(input_type="query", outputs=("multi_vector",)))
    assert {len(v) for v in queries.multi_vectors or []} == {16}, "queries expanded to query_length"


def test_colbert_deterministic_queries_do_not_depend_on_the_batch(folders: dict[str, Path]) -> None:
    service = serve(folders["pylate"], deterministic=True)
    options = EmbedOptions(input_type="query", outputs=("multi_vector",))
    batch = service.embed_now(TEXTS, options).multi_vectors or []
    for i, text in enumerate(TEXTS):
        assert np.array_equal(service.embed_now([text], options).multi_vectors[0], batch[i])  # type: ignore[index]


# ---------------------------------------------------------------- the scheduler's path, refusals


def test_served_model_batches_requests_with_different_outputs(folders: dict[str, Path]) -> None:
    embedder = Embedder.from_pretrained(folders["m3"])
    direct = ModelService.in_process(embedder)
    wants = [("dense",), ("sparse",), ("multi_vector",), ("dense", "sparse", "multi_vector")]

    async def run() -> list[Any]:
        tokenizers = Tokenizers(1)
        service = ModelService.start(
            embedder,
            tokenizers,
            Limits(),
            tokens_per_second=1e6,
            max_queue_requests=64,
            max_queue_tokens=1 << 20,
            max_queue_seconds=60.0,
            batch_wait_s=0.01,
        )
        try:  # concurrent requests asking for different outputs share forward passes
            return await asyncio.gather(*(service.embed(TEXTS, EmbedOptions(outputs=w)) for w in wants))
        finally:
            await service.close()
            tokenizers.shutdown()

    results = asyncio.run(run())
    for want, got in zip(wants, results, strict=True):
        ref = direct.embed_now(TEXTS, EmbedOptions(outputs=want))
        assert np.allclose(got.vectors, ref.vectors, atol=TOL)
        assert (got.sparse is None) == ("sparse" not in want)
        assert (got.multi_vectors is None) == ("multi_vector" not in want)
        for a, b in zip(got.sparse or [], ref.sparse or [], strict=True):
            assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1], atol=TOL)
        assert_multi_equal(got.multi_vectors or [], ref.multi_vectors or [])
        assert got.token_counts == ref.token_counts


def test_colbert_queries_and_documents_share_batches(folders: dict[str, Path]) -> None:
    embedder = Embedder.from_pretrained(folders["pylate"])
    direct = ModelService.in_process(embedder)
    kinds = ["query", "document", "query"]

    async def run() -> list[Any]:
        tokenizers = Tokenizers(1)
        service = ModelService.start(
            embedder,
            tokenizers,
            Limits(),
            tokens_per_second=1e6,
            max_queue_requests=64,
            max_queue_tokens=1 << 20,
            max_queue_seconds=60.0,
            batch_wait_s=0.01,
        )
        try:  # expanded queries (a key mask: padded) and documents (packed) land in the same batches
            return await asyncio.gather(
                *(service.embed(TEXTS, EmbedOptions(input_type=k, outputs=("multi_vector",))) for k in kinds)
            )
        finally:
            await service.close()
            tokenizers.shutdown()

    for kind, got in zip(kinds, asyncio.run(run()), strict=True):
        ref = direct.embed_now(TEXTS, EmbedOptions(input_type=kind, outputs=("multi_vector",)))
        assert_multi_equal(got.multi_vectors or [], ref.multi_vectors or [])


def test_outputs_are_checked_against_what_the_model_offers(folders: dict[str, Path], bge_dir: Path) -> None:
    plain = serve(bge_dir)
    assert plain.facts.outputs == ("dense",) and plain.facts.sparse_dimension is None
    with pytest.raises(InvalidInputError, match="offers dense") as info:
        plain.embed_now(["x"], EmbedOptions(outputs=("sparse",)))
    assert info.value.field == "outputs"
    splade = serve(folders["splade"])
    with pytest.raises(InvalidInputError, match="offers sparse"):
        splade.embed_now(["x"])  # the default asks for dense, which SPLADE does not give
    m3 = serve(folders["m3"])
    for bad, match in [(("dense", "dense"), "twice"), (("colbert",), "unknown output"), ((), "non-empty")]:
        with pytest.raises(InvalidInputError, match=match):
            m3.embed_now(["x"], EmbedOptions(outputs=bad))
    with pytest.raises(InvalidInputError, match="chunked") as info:
        m3.embed_now(["x"], EmbedOptions(outputs=("sparse",), chunked=True))
    assert info.value.field == "chunked"
    colbert = serve(folders["pylate"])
    with pytest.raises(InvalidInputError, match="truncation"):
        colbert.embed_now(["x"], EmbedOptions(outputs=("multi_vector",), truncation="start"))


def test_multi_vector_size_is_bounded_before_the_forward(folders: dict[str, Path]) -> None:
    embedder = Embedder.from_pretrained(folders["m3"])
    service = ModelService.in_process(embedder, Limits(max_multi_vector_values=64 * 100))
    service.embed_now(["short text"], EmbedOptions(outputs=("multi_vector",)))
    with pytest.raises(PayloadTooLargeError, match="max_multi_vector_values"):
        service.embed_now(["word " * 200], EmbedOptions(outputs=("multi_vector",)))
    service.embed_now(["word " * 200], EmbedOptions(outputs=("sparse",)))  # no bound on the others


def test_recipe_and_load_time_measurement_work_without_dense(folders: dict[str, Path]) -> None:
    from embedsvc.engine.recipe import describe_recipe, render_text
    from embedsvc.engine.service import measure_throughput

    for name, line in [("splade", "outputs     sparse"), ("pylate", "outputs     multi_vector")]:
        embedder = Embedder.from_pretrained(folders[name])
        text = render_text(describe_recipe(embedder))
        assert line in text, text
        assert measure_throughput(embedder) > 0
    m3 = render_text(describe_recipe(Embedder.from_pretrained(folders["m3"]), samples=False))
    assert "outputs     dense, sparse, multi_vector  (bge-m3 heads" in m3
