"""Every embedding family against its own reference recipe, written out here.

Each family is a tiny random checkpoint in its hub layout (tests/families.py) under a folder name
that is not the family's hub name, so nothing is recognised by name. References are the model
cards' code (e5-mistral, Qwen3-Embedding, gte-Qwen2, multilingual-e5, bge-m3), the families' own
libraries' logic (GritLM, LLM2Vec, FlagEmbedding's bge-en-icl), or sentence-transformers itself
(EmbeddingGemma, ModernBERT, arctic-embed, the ST on-disk formats). Every family is checked for
queries and documents, in batches mixing inputs shorter and longer than any sliding window, with
padded and packed batching and in deterministic mode.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from embedsvc import Embedder
from embedsvc.errors import ModelLoadError
from tests import families
from tests.test_decoders import e5_model_card, last_token_pool

TASK = families.WEB_TASK
QUERIES = ["how much protein should a female eat", "summit define", "who reads books at school"]
DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog near the river bank in the morning.",
    "a",
    "Children read books at school while the teacher plays music. " * 4,
    "The old man and his dog walk to the city every day to find good bread and water.",
]
MODES = {
    "padded": {"batching": "padded"},
    "packed": {"batching": "packed"},
    "deterministic": {"deterministic": True},
}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_matches(ours: np.ndarray, ref: np.ndarray | torch.Tensor) -> None:
    ref = ref.detach().float().numpy() if isinstance(ref, torch.Tensor) else ref
    assert ours.shape == ref.shape
    cos = cosine_rows(ours, ref)
    assert cos.min() >= 0.9999, cos


def average_pool(last_hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    # as in the multilingual-e5 model card
    last_hidden = last_hidden_states.masked_fill(~attention_mask[..., None].bool(), 0.0)
    return last_hidden.sum(dim=1) / attention_mask.sum(dim=1)[..., None]


def st_reference(folder, texts, prompt_name=None) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, prompt_name=prompt_name, batch_size=2, convert_to_numpy=True)


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    built: dict[str, object] = {}

    def get(name: str):
        if name not in built:
            built[name] = BUILDERS[name](root)
        return built[name]

    return get


BUILDERS = {
    "e5": lambda root: families.build_e5_mistral_layout(root / "acme" / "retriever-7b-ft"),
    "qwen3": lambda root: families.build_qwen3_embedding_layout(root / "acme" / "q-embed-small"),
    "gte_qwen2": lambda root: families.build_gte_qwen2_layout(root / "acme" / "general-embed-q2"),
    "gemma": lambda root: families.build_embeddinggemma_layout(root / "acme" / "on-device-embed"),
    "icl": lambda root: families.build_bge_icl_layout(root / "acme" / "icl-embed"),
    "grit": lambda root: families.build_gritlm_layout(root / "acme" / "unified-7b"),
    "llm2vec": lambda root: families.build_llm2vec_layout(
        root / "l2v" / "base-instruct", root / "l2v" / "bi-mntp", root / "l2v" / "bi-mntp-supervised"
    ),
    "me5": lambda root: families.build_xlmr_layout(root / "acme" / "multi-embed", pooling="mean"),
    "m3": lambda root: families.build_xlmr_layout(root / "acme" / "multi-dense", pooling="cls", seed=22),
    "modernbert": lambda root: families.build_modernbert_layout(root / "acme" / "long-encoder"),
    "arctic": lambda root: families.build_bert_layout(
        root / "acme" / "arctic-like",
        prompts={"query": "Represent this sentence for searching relevant passages: "},
    ),
}


# ---------------------------------------------------------------- e5-mistral and derivatives


def e5_card(folder, texts: list[str], max_length: int) -> torch.Tensor:
    """e5-mistral-7b-instruct's model card: truncate to max_length - 1, append EOS, last token."""
    return torch.from_numpy(e5_model_card(folder, texts, max_length))


def last_token_of(folder, batch, **model_kwargs) -> torch.Tensor:
    """The model cards' common tail: forward the padded batch, last real token, L2-normalize."""
    model = AutoModel.from_pretrained(folder, **model_kwargs).eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return F.normalize(last_token_pool(out.last_hidden_state, batch["attention_mask"]), p=2, dim=1)


@pytest.mark.parametrize("mode", MODES)
def test_e5_mistral_layout_is_recognised_from_its_files(family_dir, mode):
    folder = family_dir("e5")
    emb = Embedder.from_pretrained(folder, **MODES[mode])
    assert emb.settings.append_eos and emb.settings.pooling == "last"
    assert any("add_eos_token" in w for w in emb.settings.warnings)
    queries = emb.embed(QUERIES, input_type="query")
    assert_matches(queries, e5_card(folder, [f"Instruct: {TASK}\nQuery: {q}" for q in QUERIES], 256))
    assert_matches(emb.embed(DOCUMENTS, input_type="document"), e5_card(folder, DOCUMENTS, 256))
    instructed = emb.embed(QUERIES, instruction="Retrieve semantically similar text.")
    ref = e5_model_card(
        folder, [f"Instruct: Retrieve semantically similar text.\nQuery: {q}" for q in QUERIES], 256
    )
    assert_matches(instructed, ref)


def test_e5_without_the_eos_is_far_from_the_card(family_dir):
    """What a name-based recipe did before: the same files without the EOS give other vectors."""
    folder = family_dir("e5")
    wrong = Embedder.from_pretrained(folder, append_eos=False).embed(DOCUMENTS[:1])
    assert cosine_rows(wrong, e5_model_card(folder, DOCUMENTS[:1], 256)).max() < 0.99


# ---------------------------------------------------------------- Qwen3-Embedding


def qwen3_model_card(folder, texts: list[str]) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    batch = tokenizer(texts, padding=True, truncation=True, max_length=8192, return_tensors="pt")
    return last_token_of(folder, batch)


@pytest.mark.parametrize("mode", MODES)
def test_qwen3_embedding_never_gets_a_second_end_token(family_dir, mode):
    folder = family_dir("qwen3")
    emb = Embedder.from_pretrained(folder, **MODES[mode])
    (doc,) = emb.prepare(["summit define"], input_type="document")
    end = emb.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert doc.ids[-1] == end and doc.ids.count(end) == 1
    assert emb.tokenizer.convert_tokens_to_ids("<|im_end|>") not in doc.ids
    assert emb.settings.instruction_template == "Instruct: {instruction}\nQuery:"
    ref = qwen3_model_card(folder, [f"Instruct: {TASK}\nQuery:{q}" for q in QUERIES])
    assert_matches(emb.embed(QUERIES, input_type="query"), ref)
    assert_matches(emb.embed(DOCUMENTS, input_type="document"), qwen3_model_card(folder, DOCUMENTS))


# ---------------------------------------------------------------- gte-Qwen2-instruct


def gte_qwen2_model_card(folder, texts: list[str], max_length: int = 512) -> torch.Tensor:
    """The model card with its own tokenizer (add_eos_token honoured) and its causal Qwen2 model."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = [t[: max_length - 1] + [tokenizer.eos_token_id] for t in tokenizer(texts)["input_ids"]]
    batch = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    return last_token_of(folder, batch)  # the stock Qwen2Model: what its modeling_qwen.py runs


@pytest.mark.parametrize("mode", MODES)
def test_gte_qwen2_follows_its_code_and_tokenizer_config(family_dir, mode):
    folder = family_dir("gte_qwen2")
    emb = Embedder.from_pretrained(folder, **MODES[mode])  # its modeling_qwen.py raises if imported
    assert emb.settings.profile == "gte-qwen2" and emb.settings.attention == "causal"
    assert emb.settings.append_eos
    assert any("is_causal=false" in w for w in emb.settings.warnings)
    ref = gte_qwen2_model_card(folder, [f"Instruct: {TASK}\nQuery: {q}" for q in QUERIES])
    assert_matches(emb.embed(QUERIES, input_type="query"), ref)
    assert_matches(emb.embed(DOCUMENTS, input_type="document"), gte_qwen2_model_card(folder, DOCUMENTS))


# ---------------------------------------------------------------- EmbeddingGemma


@pytest.mark.parametrize("mode", MODES)
def test_embeddinggemma_bidirectional_window_matches_sentence_transformers(family_dir, mode):
    folder = family_dir("gemma")
    emb = Embedder.from_pretrained(folder, **MODES[mode])
    assert emb.settings.attention == "bidirectional" and emb.dimension == 64
    lengths = [len(e.ids) for e in emb.prepare(DOCUMENTS, input_type="document")]
    assert min(lengths) < 24 < max(lengths)  # shorter and longer than the sliding window
    assert_matches(emb.embed(QUERIES, input_type="query"), st_reference(folder, QUERIES, "query"))
    assert_matches(emb.embed(DOCUMENTS, input_type="document"), st_reference(folder, DOCUMENTS, "document"))
    assert_matches(emb.embed(DOCUMENTS, prompt_name="STS"), st_reference(folder, DOCUMENTS, "STS"))


# ---------------------------------------------------------------- bge-en-icl


def bge_icl_reference(folder, queries, task, examples, documents) -> tuple[torch.Tensor, torch.Tensor]:
    """FlagEmbedding's bge-en-icl usage: examples prefix, '<instruct>..\\n<query>..\\n<response>', EOS
    from the tokenizer (add_eos_token), last token."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos = tokenizer.eos_token_id

    def detailed_example(instruct, query, response):
        return f"<instruct>{instruct}\n<query>{query}\n<response>{response}"

    prefix = "\n\n".join(detailed_example(e["instruct"], e["query"], e["response"]) for e in examples)
    prefix = prefix + "\n\n" if examples else ""
    detailed = [f"<instruct>{task}\n<query>{q}" for q in queries]
    decoded = tokenizer.batch_decode(tokenizer(detailed, add_special_tokens=False)["input_ids"])
    new_queries = [prefix + q + "\n<response>" for q in decoded]

    def embed(texts):
        ids = [t + [eos] for t in tokenizer(texts)["input_ids"]]  # the checkpoint's tokenizer adds </s>
        return last_token_of(folder, tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt"))

    return embed(new_queries), embed(documents)


@pytest.mark.parametrize("mode", MODES)
def test_bge_icl_with_in_context_examples(family_dir, mode):
    folder = family_dir("icl")
    examples = [
        {
            "instruct": TASK + ".",
            "query": "what is a virtual interface",
            "response": "A virtual interface is software.",
        },
        {"instruct": TASK + ".", "query": "causes of back pain", "response": "Back pain has many causes."},
    ]
    emb = Embedder.from_pretrained(folder, profile="bge-icl", examples=examples, **MODES[mode])
    ref_q, ref_d = bge_icl_reference(folder, QUERIES, TASK + ".", examples, DOCUMENTS)
    assert_matches(emb.embed(QUERIES, input_type="query"), ref_q)
    assert_matches(emb.embed(DOCUMENTS, input_type="document"), ref_d)
    plain = Embedder.from_pretrained(folder, profile="bge-icl", **MODES[mode])
    ref_q0, _ = bge_icl_reference(folder, QUERIES, TASK + ".", [], DOCUMENTS)
    assert_matches(plain.embed(QUERIES, input_type="query"), ref_q0)


# ---------------------------------------------------------------- GritLM


def gritlm_reference(folder, texts: list[str], instruction: str) -> torch.Tensor:
    """GritLM's library (gritlm.GritLM.encode, attn='bbcc', mean pooling): bidirectional attention,
    the first len(tokenizer(instruction)) positions masked out of the mean."""
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="right")
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    prompt = "<|user|>\n" + instruction + "\n<|embed|>\n" if instruction else "<|embed|>\n"
    rows = []
    for text in texts:  # one at a time: the mask below is exactly GritLM's is_causal=False
        ids = torch.tensor([tokenizer(prompt + text)["input_ids"]])
        full = torch.zeros(1, 1, ids.shape[1], ids.shape[1])
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=full).last_hidden_state[0]
        skip = len(tokenizer(prompt)["input_ids"])
        rows.append(hidden[skip:].mean(0))
    return F.normalize(torch.stack(rows), dim=-1)


@pytest.mark.parametrize("mode", MODES)
def test_gritlm_embeds_bidirectionally_over_the_text(family_dir, mode):
    folder = family_dir("grit")  # a sliding window of 7, shorter than most inputs: not applied
    emb = Embedder.from_pretrained(folder, profile="gritlm", **MODES[mode])
    assert emb.settings.attention == "bidirectional"
    task = "Given a scientific claim, retrieve documents that support it"
    assert_matches(emb.embed(QUERIES, instruction=task), gritlm_reference(folder, QUERIES, task))
    assert_matches(emb.embed(DOCUMENTS, input_type="document"), gritlm_reference(folder, DOCUMENTS, ""))


# ---------------------------------------------------------------- LLM2Vec


def llm2vec_reference(base, adapters, texts: list[str], instruction: str) -> torch.Tensor:
    """llm2vec.LLM2Vec: adapters merged in turn, bidirectional, '[INST] {instr} {text} [/INST]'
    (Mistral-7B-Instruct-v0.2), mean over the text's tokens counted from the end."""
    import peft

    tokenizer = AutoTokenizer.from_pretrained(adapters[-1])
    model = AutoModel.from_pretrained(base, attn_implementation="eager")
    for adapter in adapters:
        model = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    rows = []
    for text in texts:
        joined = f"{instruction.strip()} !@#$%^&*(){text}" if instruction else f"!@#$%^&*(){text}"
        joined = "[INST] " + joined.strip() + " [/INST]"
        head, tail = joined.split("!@#$%^&*()")
        ids = torch.tensor([tokenizer(head + tail)["input_ids"]])
        n_text = len(tokenizer(tail, add_special_tokens=False)["input_ids"])
        full = torch.zeros(1, 1, ids.shape[1], ids.shape[1])
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=full).last_hidden_state[0]
        rows.append(hidden[-n_text:].mean(0))
    return F.normalize(torch.stack(rows), dim=-1)


@pytest.mark.parametrize("mode", MODES)
def test_llm2vec_merges_both_adapters(family_dir, mode):
    supervised = family_dir("llm2vec")
    base, mntp = supervised.parent / "base-instruct", supervised.parent / "bi-mntp"
    emb = Embedder.from_pretrained(supervised, profile="llm2vec", **MODES[mode])
    assert emb.settings.attention == "bidirectional"
    assert emb.settings.prompts["plain"] == "[INST] {text} [/INST]"
    task = "Given a web search query, retrieve relevant passages that answer the query:"
    ref_q = llm2vec_reference(base, [mntp, supervised], QUERIES, task)
    assert_matches(emb.embed(QUERIES, input_type="query"), ref_q)
    ref_d = llm2vec_reference(base, [mntp, supervised], DOCUMENTS, "")
    assert_matches(emb.embed(DOCUMENTS, input_type="document"), ref_d)


def test_adapter_without_peft_is_refused_by_name(family_dir, monkeypatch):
    import sys

    supervised = family_dir("llm2vec")
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ModelLoadError, match=r"embedsvc\[peft\]"):
        Embedder.from_pretrained(supervised, profile="llm2vec")


# ---------------------------------------------------------------- XLM-R encoders


def e5_encoder_card(folder, texts: list[str]) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(texts, max_length=512, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**batch)
    return F.normalize(average_pool(outputs.last_hidden_state, batch["attention_mask"]), p=2, dim=1)


@pytest.mark.parametrize("mode", MODES)
def test_multilingual_e5_prefixes_and_positions(family_dir, mode):
    folder = family_dir("me5")  # its files carry no prompts: the e5 profile supplies them
    emb = Embedder.from_pretrained(folder, profile="e5", **MODES[mode])
    assert_matches(
        emb.embed(QUERIES, input_type="query"), e5_encoder_card(folder, [f"query: {q}" for q in QUERIES])
    )
    ref = e5_encoder_card(folder, [f"passage: {d}" for d in DOCUMENTS])
    assert_matches(emb.embed(DOCUMENTS, input_type="document"), ref)


@pytest.mark.parametrize("mode", MODES)
def test_bge_m3_dense_is_the_normalized_cls(family_dir, mode):
    folder = family_dir("m3")
    emb = Embedder.from_pretrained(folder, **MODES[mode])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(DOCUMENTS, padding=True, truncation=True, max_length=8192, return_tensors="pt")
    with torch.no_grad():
        cls = model(**batch).last_hidden_state[:, 0]  # FlagEmbedding BGEM3: dense = normalized CLS
    assert_matches(emb.embed(DOCUMENTS), F.normalize(cls, dim=-1))


# ---------------------------------------------------------------- ModernBERT, arctic-embed


@pytest.mark.parametrize("mode", MODES)
def test_modernbert_local_attention_matches_sentence_transformers(family_dir, mode):
    folder = family_dir("modernbert")  # local window 8: every document but "a" is longer
    emb = Embedder.from_pretrained(folder, **MODES[mode])
    assert_matches(emb.embed(QUERIES, input_type="query"), st_reference(folder, QUERIES, "query"))
    assert_matches(emb.embed(DOCUMENTS, input_type="document"), st_reference(folder, DOCUMENTS, "document"))


@pytest.mark.parametrize("mode", MODES)
def test_arctic_embed_query_prompt(family_dir, mode):
    folder = family_dir("arctic")
    emb = Embedder.from_pretrained(folder, **MODES[mode])
    assert_matches(emb.embed(QUERIES, input_type="query"), st_reference(folder, QUERIES, "query"))
    assert_matches(emb.embed(DOCUMENTS, input_type="document"), st_reference(folder, DOCUMENTS))


# ---------------------------------------------------------------- sentence-transformers formats


ST_LAYOUTS = {
    "classic": {},
    "new-format": {"new_format": True, "pooling": "mean"},
    "0_Transformer": {"transformer_path": "0_Transformer", "pooling": "max"},
    "dense-stack": {
        "pooling": "mean",
        "dense": [
            (64, 48, "torch.nn.modules.activation.Tanh", True),
            (48, 40, "torch.nn.modules.activation.GELU", False),
            (40, 32, "torch.nn.modules.linear.Identity", True),
        ],
    },
    "weightedmean-unnormalized": {"pooling": "weightedmean", "normalize": False},
    "mean-sqrt-len": {"pooling": "mean_sqrt_len_tokens", "new_format": True},
    "mean-exclude-prompt": {
        "pooling": "mean",
        "include_prompt": False,
        "prompts": {"query": "query: ", "document": "passage: "},
    },
}


@pytest.mark.parametrize("layout", ST_LAYOUTS)
def test_sentence_transformers_layouts(tmp_path, layout):
    folder = families.build_bert_layout(tmp_path / layout, **ST_LAYOUTS[layout])
    emb = Embedder.from_pretrained(folder)
    ours = emb.embed(DOCUMENTS + QUERIES)
    ref = st_reference(folder, DOCUMENTS + QUERIES)
    assert_matches(ours, ref)
    if not ST_LAYOUTS[layout].get("normalize", True) or "sqrt" in layout:
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(ref, axis=1), rtol=1e-4)
    if "prompts" in ST_LAYOUTS[layout]:
        assert_matches(emb.embed(QUERIES, input_type="query"), st_reference(folder, QUERIES, "query"))


def test_a_folder_saved_by_the_installed_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer, models

    source = families.build_bert_layout(tmp_path / "src", pooling="cls")
    transformer = models.Transformer(str(source))
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), "mean")
    dense = models.Dense(64, 24)
    st = SentenceTransformer(modules=[transformer, pooling, dense, models.Normalize()], device="cpu")
    st.save(str(tmp_path / "fine-tuned"))
    emb = Embedder.from_pretrained(tmp_path / "fine-tuned")
    assert emb.dimension == 24
    assert_matches(emb.embed(DOCUMENTS), st.encode(DOCUMENTS, convert_to_numpy=True))


@pytest.mark.parametrize(
    ("module_type", "message"),
    [
        ("sentence_transformers.models.LSTM", "unsupported sentence-transformers module 'LSTM'"),
        (
            "sentence_transformers.models.WordWeights",
            "unsupported sentence-transformers module 'WordWeights'",
        ),
        ("custom_st.Transformer", "custom code shipped with the checkpoint"),
    ],
)
def test_unknown_module_types_are_refused_by_name(tmp_path, module_type, message):
    folder = families.build_bert_layout(tmp_path / "m")
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(1, {"idx": 1, "name": "x", "path": "x", "type": module_type})
    families.write_json(folder / "modules.json", modules)
    with pytest.raises(ModelLoadError, match=message):
        Embedder.from_pretrained(folder)


def test_concatenated_pooling_modes_are_refused(tmp_path):
    folder = families.build_bert_layout(tmp_path / "m", new_format=True, pooling="mean")
    families.patch_json(folder / "1_Pooling" / "config.json", pooling_mode=["mean", "max"])
    with pytest.raises(ModelLoadError, match="mean \\+ max"):
        Embedder.from_pretrained(folder)


# ---------------------------------------------------------------- custom code


def test_custom_code_is_refused_by_default_and_runs_when_allowed(tmp_path):
    import importlib.util
    import sys

    folder = families.build_custom_code_layout(tmp_path / "own-code-embed")
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        Embedder.from_pretrained(folder)
    emb = Embedder.from_pretrained(folder, trust_remote_code=True)
    assert emb.recipe.remote_code and not emb.options.packed

    # reference: the checkpoint's module imported here, mean pooling as its 1_Pooling says
    package = "own_code_reference"
    sys.modules[package] = importlib.util.module_from_spec(
        importlib.util.spec_from_loader(package, loader=None, is_package=True)  # type: ignore[arg-type]
    )
    sys.modules[package].__path__ = [str(folder)]  # type: ignore[attr-defined]
    modeling = importlib.import_module(f"{package}.modeling_tiny")
    model = modeling.TinyEmbedModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = ["search_query: " + q for q in QUERIES]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    ref = F.normalize(average_pool(hidden, batch["attention_mask"]), dim=-1)
    assert_matches(emb.embed(QUERIES, input_type="query"), ref)
    with pytest.raises(ValueError, match="padded batches"):
        Embedder.from_pretrained(folder, trust_remote_code=True, deterministic=True)
