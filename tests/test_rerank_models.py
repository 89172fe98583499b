"""Rerankers and classifiers against each family's own reference, on tiny random checkpoints saved in
the hub layouts under neutral folder names (issue 24):

* cross-encoders against sentence-transformers' CrossEncoder (a folder it saved itself, its 4/5 and
  < 4 config.json formats; BERT, XLM-R, ModernBERT heads);
* Qwen3-Reranker against its model card's code, bge-reranker-v2-gemma against FlagEmbedding's LLM
  reranker logic, both written out here with the whole *ForCausalLM (LM head included);
* classifiers against transformers' own forward with the activation written out.

Scores agree to 1e-5 (float32), packed and padded, with pairs longer than the limit truncated.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from embedsvc.engine.options import ScoreOptions
from embedsvc.engine.scorer import Scorer, load_served
from embedsvc.engine.service import ModelService, Tokenizers
from embedsvc.errors import InvalidInputError, ModelLoadError, TaskMismatchError, TextTooLongError
from tests import tiny_models
from tests.tiny_models import corpus

TOL = 1e-5
LONG = " ".join(corpus(60, seed=5))  # far over every tiny model's limit
QUERIES = ["a man plays the guitar", "where is the river", "what does the child read"]
DOCS = [
    "A man is playing music on a guitar.",
    "The river runs through the old city.",
    LONG,
    "Children read books at school.",
    "",
    "Blue sky.",
]
PAIRS = [(q, d) for q in QUERIES for d in DOCS]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerankers")
    out = {
        f"ce-{layout}": tiny_models.build_bert_cross_encoder(root / f"m{i}", layout=layout)
        for i, layout in enumerate(("st", "st4", "legacy"))
    }
    out["xlmr"] = tiny_models.build_xlmr_cross_encoder(root / "m3")
    out["modernbert"] = tiny_models.build_modernbert_cross_encoder(root / "m4")
    out["multi"] = tiny_models.build_bert_classifier(root / "m5", multi_label=True)
    out["single"] = tiny_models.build_bert_classifier(root / "m6", multi_label=False)
    out["qwen3"] = tiny_models.build_qwen3_reranker(root / "m7")
    out["gemma"] = tiny_models.build_gemma_reranker(root / "m8")
    out["embedder"] = tiny_models.build_bert(root / "m9", st="mean")
    return out


def both_batchings(folder, **options):
    """The same checkpoint served packed (the default) and in padded batches."""
    return [load_served(folder, **options), load_served(folder, batching="padded", **options)]


# ------------------------------------------------------------------ cross-encoders


@pytest.mark.parametrize("layout", ["ce-st", "ce-st4", "ce-legacy", "xlmr", "modernbert"])
def test_cross_encoders_score_as_sentence_transformers_does(folders, layout):
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(folders[layout]), device="cpu")
    expected = reference.predict(PAIRS, batch_size=7, convert_to_numpy=True)
    assert np.ptp(expected) > 1e-3  # the pairs are told apart: a wrong head or token type would show
    for scorer in both_batchings(folders[layout]):
        assert isinstance(scorer, Scorer) and scorer.task == "rerank"
        got = scorer.score(PAIRS)
        assert got.dtype == np.float32 and got.shape == (len(PAIRS),)
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_the_declared_activation_is_the_one_applied(folders):
    described = {k: load_served(folders[k]).describe() for k in ("ce-st", "ce-st4", "ce-legacy", "xlmr")}
    assert described["ce-st"]["activation"] == "sigmoid"
    assert described["ce-st"]["activation_source"] == "config_sentence_transformers.json activation_fn"
    assert described["ce-st4"]["activation"] == "tanh"
    assert described["ce-legacy"]["activation"] == "identity"
    assert "sbert_ce_default_activation_function" in described["ce-legacy"]["activation_source"]
    assert described["xlmr"]["activation"] == "sigmoid"  # CrossEncoder's default for one label
    assert "XLMRobertaClassificationHead" in described["xlmr"]["head"]


def test_cross_encoder_truncation_keeps_the_start_or_refuses(folders):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = folders["ce-legacy"]  # identity activation: the logits themselves
    tokenizer = AutoTokenizer.from_pretrained(folder, truncation_side="left")
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    pairs = [("where is the river " * 20, LONG), ("a dog", "runs " * 200), ("a cat", "eats")]
    batch = tokenizer(
        [q for q, _ in pairs], [d for _, d in pairs], truncation=True, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        expected = model(**batch).logits[:, 0].numpy()
    scorer = load_served(folder)
    np.testing.assert_allclose(scorer.score(pairs, truncation="start"), expected, atol=TOL, rtol=0)
    raw = scorer.score(pairs, raw=True)
    assert raw.shape == (3,)
    with pytest.raises(TextTooLongError, match="limit of 64"):
        scorer.score(pairs, truncation="none")


# --------------------------------------------------------------------- classifiers


@pytest.mark.parametrize("kind", ["multi", "single"])
def test_classifiers_give_one_score_per_label(folders, kind):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = folders[kind]
    texts = [d or "." for d in DOCS] + QUERIES
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**tokenizer(texts, truncation=True, padding=True, return_tensors="pt")).logits
    # TEI's /predict: a sigmoid per label for multi-label models, else a softmax over the labels
    expected = (torch.sigmoid(logits) if kind == "multi" else torch.softmax(logits, dim=-1)).numpy()
    for scorer in both_batchings(folder):
        assert scorer.task == "classify" and scorer.labels == ("joy", "anger", "neutral")
        np.testing.assert_allclose(scorer.classify(texts), expected, atol=TOL, rtol=0)
        np.testing.assert_allclose(scorer.classify(texts, raw=True), logits.numpy(), atol=TOL, rtol=0)


# ------------------------------------------------------------------ LLM rerankers


def qwen3_model_card(folder, pairs, instruction, max_length):
    """Qwen3-Reranker's model card code, with the whole Qwen3ForCausalLM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_tokens = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(suffix, add_special_tokens=False)

    def format_instruction(instruction, query, doc):
        if instruction is None:
            instruction = "Given a web search query, retrieve relevant passages that answer the query"
        return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"

    texts = [format_instruction(instruction, q, d) for q, d in pairs]
    inputs = tokenizer(
        texts,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
    )
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
    inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
    with torch.no_grad():
        batch_scores = model(**inputs).logits[:, -1, :]
    true_vector = batch_scores[:, token_true_id]
    false_vector = batch_scores[:, token_false_id]
    batch_scores = torch.stack([false_vector, true_vector], dim=1)
    batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
    return batch_scores[:, 1].exp().numpy(), (true_vector - false_vector).numpy()


@pytest.mark.filterwarnings("ignore:`max_length` is ignored")  # the model card pads with max_length
@pytest.mark.parametrize("instruction", [None, "Find the sentence about music"])
def test_qwen3_reranker_scores_as_its_model_card(folders, instruction):
    folder = folders["qwen3"]
    expected, logit_gap = qwen3_model_card(folder, PAIRS, instruction, max_length=128)
    assert np.ptp(expected) > 1e-3
    for scorer in both_batchings(folder, profile="qwen3-reranker", max_length=128):
        assert scorer.task == "rerank" and scorer.scoring.family == "qwen3-reranker"
        np.testing.assert_allclose(scorer.score(PAIRS, instruction=instruction), expected, atol=TOL, rtol=0)
        raw = scorer.score(PAIRS, instruction=instruction, raw=True)
        np.testing.assert_allclose(raw, logit_gap, atol=1e-4, rtol=0)


def test_llm_rerankers_compute_only_the_answer_rows_of_the_lm_head(folders):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for key, profile, tokens in (
        ("qwen3", "qwen3-reranker", ("no", "yes")),
        ("gemma", "bge-reranker-gemma", None),
    ):
        scorer = load_served(folders[key], profile=profile)
        assert not any("lm_head" in name for name, _ in scorer.trunk.model.named_parameters())
        full = AutoModelForCausalLM.from_pretrained(folders[key])
        tokenizer = AutoTokenizer.from_pretrained(folders[key])
        ids = (
            tokenizer.convert_tokens_to_ids(list(tokens))
            if tokens
            else [tokenizer("Yes", add_special_tokens=False)["input_ids"][0]]
        )
        assert list(scorer.token_ids.values()) == ids
        hidden = torch.randn(3, full.config.hidden_size)
        with torch.no_grad():
            np.testing.assert_allclose(
                scorer._head(hidden).numpy(), full.lm_head(hidden)[:, ids].numpy(), atol=1e-6, rtol=0
            )
        assert scorer.describe()["lm_head_token_ids"] == dict(scorer.token_ids)


def flag_llm_reranker(folder, pairs, max_length):
    """FlagEmbedding's LLM reranker (bge-reranker-v2-gemma) compute_score, written out: FlagEmbedding
    does not import with transformers 5."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    yes_loc = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    query_max_length = max_length * 3 // 4
    prompt = (
        "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
        "providing a prediction of either 'Yes' or 'No'."
    )
    queries = tokenizer(
        [f"A: {q}" for q, _ in pairs], add_special_tokens=False, max_length=query_max_length, truncation=True
    )["input_ids"]
    passages = tokenizer(
        [f"B: {p}" for _, p in pairs], add_special_tokens=False, max_length=max_length, truncation=True
    )["input_ids"]
    prompt_inputs = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    sep_inputs = tokenizer("\n", add_special_tokens=False)["input_ids"]
    encode_max_length = max_length + len(sep_inputs) + len(prompt_inputs)
    items = []
    for q, p in zip(queries, passages, strict=True):
        assert tokenizer.bos_token_id is not None and tokenizer.bos_token_id != tokenizer.pad_token_id
        # prepare_for_model(first, second, truncation="only_second", max_length=encode_max_length,
        # add_special_tokens=False), as FlagEmbedding's prepare_for_model_compat does it on transformers 5
        first, second = [tokenizer.bos_token_id] + q, sep_inputs + p
        tokens_to_remove = len(first) + len(second) - encode_max_length
        if 0 < tokens_to_remove < len(second):
            second = second[:-tokens_to_remove]
        items.append(first + second + sep_inputs + prompt_inputs)
    longest = max(len(i) for i in items)
    ids = torch.tensor([[tokenizer.pad_token_id] * (longest - len(i)) + i for i in items])  # left padding
    mask = torch.tensor([[0] * (longest - len(i)) + [1] * len(i) for i in items])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -1, :]  # last_logit_pool, left padded
    scores = logits[:, yes_loc]
    return scores.numpy(), torch.sigmoid(scores).numpy()  # normalize=False, normalize=True


def test_gemma_reranker_scores_as_flagembedding(folders):
    folder = folders["gemma"]
    raw, normalized = flag_llm_reranker(folder, PAIRS, max_length=48)
    assert np.ptp(raw) > 1e-3
    for scorer in both_batchings(folder, profile="bge-reranker-gemma", max_length=48):
        np.testing.assert_allclose(scorer.score(PAIRS, raw=True), raw, atol=1e-4, rtol=0)
        np.testing.assert_allclose(scorer.score(PAIRS), normalized, atol=TOL, rtol=0)


def test_llm_rerankers_are_recognised_by_name_and_task_is_checked(folders, tmp_path):
    from embedsvc.models.tasks import scoring_recipe

    config = json.loads((folders["qwen3"] / "config.json").read_text())
    assert scoring_recipe("Qwen/Qwen3-Reranker-0.6B", config, {}).family == "qwen3-reranker"
    assert scoring_recipe("BAAI/bge-reranker-v2-gemma", config, {}).family == "bge-reranker-gemma"
    assert scoring_recipe("Qwen/Qwen3-0.6B", config, {}) is None  # a plain LLM: an embedder
    assert scoring_recipe("Qwen/Qwen3-Reranker-0.6B", config, {}, task="embed") is None
    with pytest.raises(ModelLoadError, match="profile"):
        scoring_recipe("some-llm", config, {}, task="rerank")
    classifier = json.loads((folders["multi"] / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="classify"):
        scoring_recipe("x", classifier, {}, task="rerank")
    with pytest.raises(InvalidInputError, match="unknown task"):
        load_served(folders["xlmr"], task="sort")
    from embedsvc.engine.embedder import Embedder

    with pytest.raises(InvalidInputError, match="load_served"):
        Embedder.from_pretrained(folders["xlmr"], task="rerank")
    # a cross-encoder's encoder can still be served as an embedder when asked for
    assert isinstance(load_served(folders["xlmr"], task="embed", pooling="cls"), Embedder)


# ---------------------------------------------------------------------- the facade


def test_the_service_reranks_under_load_as_in_process(folders):
    from embedsvc.engine.embedder import Embedder

    reranker = load_served(folders["ce-st"])
    now = ModelService.in_process(reranker)
    expected = now.rerank_now(QUERIES[0], DOCS).scores
    np.testing.assert_allclose(expected, reranker.score([(QUERIES[0], d) for d in DOCS]), atol=TOL, rtol=0)

    async def serve():
        tokenizers = Tokenizers(2)
        service = ModelService.start(
            reranker,
            tokenizers,
            now.limits,
            tokens_per_second=1e5,
            max_queue_requests=64,
            max_queue_tokens=10**6,
            max_queue_seconds=60,
            batch_wait_s=0.002,
        )
        try:
            many = await asyncio.gather(*(service.rerank(QUERIES[0], DOCS, tenant=str(i)) for i in range(16)))
            pairs = await service.score(PAIRS, ScoreOptions(raw=True), timeout=30)
            with pytest.raises(TaskMismatchError, match=r"rerank model.*call rerank or score"):
                await service.embed(["x"])
            with pytest.raises(TaskMismatchError, match="classify"):
                await service.classify(["x"])
            return many, pairs, service.facts
        finally:
            await service.close()
            tokenizers.shutdown()

    many, pairs, facts = asyncio.run(serve())
    for scored in many:
        np.testing.assert_allclose(scored.scores, expected, atol=TOL, rtol=0)
        assert scored.token_counts == many[0].token_counts and scored.total_tokens > len(DOCS) * 3
    assert pairs.scores.shape == (len(PAIRS),)
    assert (facts.task, facts.dimension, facts.scoring["family"]) == ("rerank", 0, "cross-encoder")

    embedder = ModelService.in_process(Embedder.from_pretrained(folders["embedder"]))
    assert embedder.task == "embed"
    with pytest.raises(TaskMismatchError, match=r"embed model.*call embed"):
        embedder.score_now([("a", "b")])
    classifier = ModelService.in_process(load_served(folders["multi"]))
    got = classifier.classify_now(["a dog runs", "the sun"])
    assert got.scores.shape == (2, 3) and got.labels == ("joy", "anger", "neutral")
    assert classifier.facts.labels == ("joy", "anger", "neutral")
    # a reranker's one score column bears its config's one label (as TEI's /predict names it), an LLM
    # reranker's, with no label in its config, transformers' name for label 0
    config = json.loads((folders["ce-st"] / "config.json").read_text())
    assert facts.labels == (config["id2label"]["0"],) == ("LABEL_0",)
    qwen3 = ModelService.in_process(load_served(folders["qwen3"], profile="qwen3-reranker"))
    assert qwen3.labels == qwen3.facts.labels == ("LABEL_0",)
    with pytest.raises(TaskMismatchError):
        classifier.rerank_now("q", ["d"])


def test_requests_are_checked_once_with_fields_named(folders):
    service = ModelService.in_process(load_served(folders["ce-st"]))
    with pytest.raises(InvalidInputError, match="pairs\\[1\\]") as bad:
        service.score_now([("a", "b"), ("only one",)])  # type: ignore[list-item]
    assert bad.value.field == "pairs"
    with pytest.raises(InvalidInputError, match="documents\\[0\\] is int"):
        service.rerank_now("q", [3])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="truncation"):
        service.score_now([("a", "b")], ScoreOptions(truncation="middle"))
    with pytest.raises(InvalidInputError, match="takes no instruction"):
        service.score_now([("a", "b")], ScoreOptions(instruction="be nice"))
    for bad in (0, -2, True, 1.5):  # a per-request document token limit: at least 1, checked here
        with pytest.raises(
            InvalidInputError, match="max_tokens_per_doc must be an integer of at least 1"
        ) as e:
            service.rerank_now("q", ["d"], ScoreOptions(max_document_tokens=bad))  # type: ignore[arg-type]
        assert e.value.field == "max_tokens_per_doc"
    classifier = ModelService.in_process(load_served(folders["multi"]))
    with pytest.raises(InvalidInputError, match="applies to rerankers") as e:
        classifier.classify_now(["a"], ScoreOptions(max_document_tokens=3))
    assert e.value.field == "max_tokens_per_doc"
    from embedsvc.engine.options import Limits

    small = ModelService.in_process(load_served(folders["ce-st"]), Limits(max_text_bytes=10))
    with pytest.raises(InvalidInputError, match="pair 0 is 12 bytes"):
        small.score_now([("abcdef", "ghijkl")])


def test_the_server_loads_rerankers_by_task_and_inspect_shows_the_recipe(folders, capsys):
    from embedsvc.cli.main import main
    from embedsvc.config import ModelConfig, ServerConfig
    from embedsvc.server.registry import ModelRegistry

    config = ServerConfig(
        models=(
            ModelConfig(
                name="rr",
                source=str(folders["qwen3"]),
                options={"task": "rerank", "profile": "qwen3-reranker"},
            ),
            ModelConfig(name="cls", source=str(folders["single"])),
        )
    )
    loaded = ModelRegistry.load_embedders(config)
    assert [(type(m).__name__, m.task) for _, m, _ in loaded] == [
        ("Scorer", "rerank"),
        ("Scorer", "classify"),
    ]
    assert all(rate > 0 for _, _, rate in loaded)

    assert main(["inspect", str(folders["qwen3"]), "--profile", "qwen3-reranker", "--json"]) == 0
    recipe = json.loads(capsys.readouterr().out)
    assert recipe["task"] == "rerank"
    scoring = recipe["scoring"]
    assert scoring["family"] == "qwen3-reranker" and set(scoring["lm_head_token_ids"]) == {"yes", "no"}
    assert "<Document>: {document}" in scoring["prompt"]
    assert recipe["samples"]["pair"]["tokens"][-1]  # the exact tokens of a sample pair
    assert main(["inspect", str(folders["ce-legacy"])]) == 0
    text = capsys.readouterr().out
    assert "task        rerank" in text and "identity" in text
