"""Decoder checkpoints against model-card recipes written out here, on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from embedsvc import Embedder

TEXTS = [
    "how much protein should a female eat",
    "summit define",
    "The quick brown fox jumps over the lazy dog near the river bank in the morning.",
    "a",
    "Children read books at school while the teacher plays music " * 3,
]
E5_TASK = "Given a web search query, retrieve relevant passages that answer the query"


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def last_token_pool(last_hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    # verbatim from the e5-mistral-7b-instruct model card
    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    batch_size = last_hidden_states.shape[0]
    return last_hidden_states[torch.arange(batch_size, device=last_hidden_states.device), sequence_lengths]


def e5_model_card(folder, texts: list[str], max_length: int) -> np.ndarray:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    batch = tokenizer(
        texts, max_length=max_length - 1, return_attention_mask=False, padding=False, truncation=True
    )
    batch["input_ids"] = [ids + [tokenizer.eos_token_id] for ids in batch["input_ids"]]
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    batch = tokenizer.pad(batch, padding=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    return F.normalize(last_token_pool(out.last_hidden_state, batch["attention_mask"]), p=2, dim=1).numpy()


def test_e5_mistral_queries_follow_the_model_card(e5_mistral_dir):
    emb = Embedder.from_pretrained(e5_mistral_dir)
    assert emb.settings.profile == "e5-mistral" and emb.settings.pooling == "last"
    ours = emb.embed(TEXTS, input_type="query", instruction=E5_TASK)
    ref = e5_model_card(e5_mistral_dir, [f"Instruct: {E5_TASK}\nQuery: {t}" for t in TEXTS], emb.max_length)
    assert cosine_rows(ours, ref).min() >= 0.9999


def test_e5_mistral_documents_get_no_instruction(e5_mistral_dir):
    emb = Embedder.from_pretrained(e5_mistral_dir)
    ours = emb.embed(TEXTS, input_type="document")
    ref = e5_model_card(e5_mistral_dir, TEXTS, emb.max_length)
    assert cosine_rows(ours, ref).min() >= 0.9999
    # the default query instruction is the web-search one
    np.testing.assert_allclose(
        emb.embed(TEXTS[:2], input_type="query"), emb.embed(TEXTS[:2], instruction=E5_TASK), atol=1e-6
    )


def test_e5_mistral_truncation_keeps_room_for_eos(e5_mistral_dir):
    emb = Embedder.from_pretrained(e5_mistral_dir, max_length=12)
    long_text = TEXTS[4]
    ours = emb.embed([long_text], input_type="document")
    ref = e5_model_card(e5_mistral_dir, [long_text], 12)
    assert cosine_rows(ours, ref).min() >= 0.9999
    (enc,) = emb.prepare([long_text])
    assert len(enc.ids) == 12 and enc.ids[-1] == emb.tokenizer.eos_token_id


def test_eos_is_appended_on_the_token_ids(e5_mistral_dir):
    emb = Embedder.from_pretrained(e5_mistral_dir)
    tok = emb.tokenizer
    plain = tok("summit define")["input_ids"]
    assert plain[-1] != tok.eos_token_id  # the tokenizer itself does not add it
    (enc,) = emb.prepare(["summit define"], input_type="document")
    assert enc.ids == [*plain, tok.eos_token_id]
    (query,) = emb.prepare(["summit define"], input_type="query", instruction="Find it")
    assert query.ids == [*tok("Instruct: Find it\nQuery: summit define")["input_ids"], tok.eos_token_id]


def test_instruction_is_rejected_for_documents(e5_mistral_dir):
    emb = Embedder.from_pretrained(e5_mistral_dir)
    with pytest.raises(ValueError, match="instruction applies to queries"):
        emb.embed(["x"], input_type="document", instruction="task")


def test_e5_prompt_names_from_sentence_transformers_files(e5_mistral_dir):
    emb = Embedder.from_pretrained(e5_mistral_dir)
    ours = emb.embed(TEXTS[:2], prompt_name="sts_query")
    ref = e5_model_card(
        e5_mistral_dir,
        [f"Instruct: Retrieve semantically similar text.\nQuery: {t}" for t in TEXTS[:2]],
        emb.max_length,
    )
    assert cosine_rows(ours, ref).min() >= 0.9999


def vllm_style_reference(folder, texts: list[str]) -> np.ndarray:
    """What vLLM does to a converted *ForCausalLM: last token of the plain tokenization, normalized."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    rows = []
    with torch.no_grad():
        for text in texts:  # one at a time: no padding question in the reference
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            rows.append(model(input_ids=ids).last_hidden_state[0, -1])
    return F.normalize(torch.stack(rows), dim=1).numpy()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("batching", ["padded", "packed"])
def test_generic_decoders_pool_the_last_token(request, family, batching):
    folder = request.getfixturevalue(f"{family}_dir")
    emb = Embedder.from_pretrained(folder, batching=batching)
    assert emb.settings.profile == "decoder" and emb.is_decoder
    assert cosine_rows(emb.embed(TEXTS), vllm_style_reference(folder, TEXTS)).min() >= 0.9999


def test_lm_head_is_not_loaded(llama_dir):
    emb = Embedder.from_pretrained(llama_dir)
    names = [n for n, _ in emb.model.named_parameters()]
    assert not any("lm_head" in n for n in names)
    assert type(emb.model).__name__ == "LlamaModel"


def hf_states(folder, text: str, *, bidirectional: bool = False) -> tuple[torch.Tensor, list[int], object]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    enc = tokenizer(text, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]])
    kwargs = {}
    if bidirectional:
        # a 4D float mask of zeros is used as given by eager attention: no causal triangle at all
        kwargs["attention_mask"] = torch.zeros(1, 1, ids.shape[1], ids.shape[1])
    with torch.no_grad():
        states = model(input_ids=ids, **kwargs).last_hidden_state[0]
    return states, enc["offset_mapping"], enc


def test_echo_pools_over_the_second_copy(llama_dir):
    text = "the dog runs over the road"
    emb = Embedder.from_pretrained(llama_dir, conversion="echo")
    assert emb.settings.pooling == "mean"
    full = f"Rewrite the sentence: {text}, rewritten sentence: {text}"
    states, offsets, _ = hf_states(llama_dir, full)
    second = full.rindex(text)
    keep = [i for i, (a, b) in enumerate(offsets) if b > a and b - 1 >= second]
    ref = F.normalize(states[keep].mean(0), dim=0).numpy()
    assert float(emb.embed([text])[0] @ ref) >= 0.9999


def test_prompteol_takes_the_last_token_of_its_template(llama_dir):
    text = "a man plays the guitar"
    emb = Embedder.from_pretrained(llama_dir, conversion="prompteol")
    states, _, _ = hf_states(llama_dir, f'This sentence : "{text}" means in one word:"')
    ref = F.normalize(states[-1], dim=0).numpy()
    assert float(emb.embed([text])[0] @ ref) >= 0.9999


@pytest.mark.parametrize("batching", ["padded", "packed"])
def test_bidirectional_switches_the_causal_mask_off(llama_dir, batching):
    texts = ["a man plays the guitar", "the dog"]
    emb = Embedder.from_pretrained(llama_dir, conversion="bidirectional", batching=batching)
    assert emb.settings.pooling == "mean"
    refs = [F.normalize(hf_states(llama_dir, t, bidirectional=True)[0].mean(0), dim=0).numpy() for t in texts]
    assert cosine_rows(emb.embed(texts), np.stack(refs)).min() >= 0.9999
    causal = Embedder.from_pretrained(llama_dir, pooling="mean").embed(texts)
    assert cosine_rows(causal, np.stack(refs)).max() < 0.999  # it really changed something


def test_conversion_needs_a_decoder(bert_dir):
    with pytest.raises(ValueError, match="applies to decoder models"):
        Embedder.from_pretrained(bert_dir, conversion="echo")
