"""Tiny random checkpoints of the embedding families users deploy, in their hub folder layouts.

Each builder writes the files the way the hub checkpoint has them — including the known
inconsistencies (e5-mistral's tokenizer_config.json asks for an EOS its tokenizer.json does not
add; gte-Qwen2's config.json says is_causal=false while its code runs causally) — with tiny
random weights. Folder names are chosen by the tests and are never the family's hub name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tests.tiny_models import corpus

WEB_TASK = "Given a web search query, retrieve relevant passages that answer the query"

# tiny shapes: head size 16 (a multiple of 8, so the CUDA flash kernels take it), GQA 4:2
TINY_DECODER = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,
}
TINY_ENCODER = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def patch_json(path: Path, **fields: Any) -> None:
    data = json.loads(path.read_text())
    data.update(fields)
    write_json(path, data)


def _training_text() -> list[str]:
    extra = [
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: x",
        "<|user|>\nfind it\n<|embed|>\n [INST] text [/INST] <instruct>task\n<query>q\n<response>r",
        "task: search result | query: title: none | text: search_query: search_document: query: passage:",
    ]
    return corpus() + extra * 20


def llama_tokenizer(folder: Path, **config: Any) -> None:
    """A SentencePiece-style BPE tokenizer.json (Metaspace, byte fallback) whose post-processor adds
    only <s>, as Mistral / Llama-2 checkpoints ship it, plus tokenizer_config.json fields."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # trained word by word, like SentencePiece's split_by_whitespace: no merge spans two words
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    specials = ["<unk>", "<s>", "</s>"]
    bytes_alphabet = [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(
        _training_text(),
        trainers.BpeTrainer(vocab_size=900, special_tokens=specials + bytes_alphabet, show_progress=False),
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tok.save(str(folder / "tokenizer.json"))
    write_json(
        folder / "tokenizer_config.json",
        {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "model_max_length": 1000000000000000019884624838656,
            "tokenizer_class": "LlamaTokenizer",
            "legacy": False,
            **config,
        },
    )
    write_json(
        folder / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    )


def bytelevel_tokenizer(folder: Path, *, specials: list[str], single: str | None, **config: Any) -> None:
    """A byte-level BPE tokenizer.json (GPT-2 / Qwen style) with the post-processor ``single``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        _training_text(),
        trainers.BpeTrainer(
            vocab_size=700,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    if single:
        used = [t for t in specials if t in single.split()]
        tok.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[(t, tok.token_to_id(t)) for t in used]
        )
    tok.save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", {"model_max_length": 131072, **config})


def unigram_tokenizer(folder: Path, **config: Any) -> None:
    """XLM-RoBERTa's SentencePiece Unigram tokenizer.json: <s>=0 <pad>=1 </s>=2 <unk>=3, "<s> $A </s>"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok.train_from_iterator(
        _training_text(),
        trainers.UnigramTrainer(
            vocab_size=600, special_tokens=specials, unk_token="<unk>", show_progress=False
        ),
    )
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    tok.save(str(folder / "tokenizer.json"))
    write_json(
        folder / "tokenizer_config.json",
        {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "cls_token": "<s>",
            "sep_token": "</s>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "mask_token": "<mask>",
            "model_max_length": 512,
            "tokenizer_class": "XLMRobertaTokenizer",
            **config,
        },
    )


def wordpiece_tokenizer(folder: Path, *, specials: tuple[str, str, str, str, str], **config: Any) -> None:
    """BERT-style WordPiece with "CLS $A SEP"; ``specials`` = (pad, unk, cls, sep, mask) in id order."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True, exist_ok=True)
    pad, unk, cls, sep, mask = specials
    tok = Tokenizer(models.WordPiece(unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        _training_text(),
        trainers.WordPieceTrainer(vocab_size=500, special_tokens=list(specials), show_progress=False),
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )
    tok.decoder = decoders.WordPiece()
    tok.save(str(folder / "tokenizer.json"))
    write_json(
        folder / "tokenizer_config.json",
        {
            "pad_token": pad,
            "unk_token": unk,
            "cls_token": cls,
            "sep_token": sep,
            "mask_token": mask,
            "model_max_length": 512,
            **config,
        },
    )


def _vocab(folder: Path) -> int:
    data = json.loads((folder / "tokenizer.json").read_text())
    added = [t["id"] for t in data.get("added_tokens", [])]
    return max(len(data["model"]["vocab"]), max(added, default=-1) + 1)


def _token_id(folder: Path, token: str) -> int:
    data = json.loads((folder / "tokenizer.json").read_text())
    for added in data.get("added_tokens", []):
        if added["content"] == token:
            return int(added["id"])
    vocab = data["model"]["vocab"]
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        return next(i for i, (piece, _) in enumerate(vocab) if piece == token)
    return int(vocab[token])


def save_model(model: torch.nn.Module, folder: Path, *, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():  # random weights with some spread, so families' recipes differ visibly
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.1)
    model.save_pretrained(folder)


# ------------------------------------------------------- sentence-transformers files


def st_files(
    folder: Path,
    *,
    pooling: str,
    prompts: dict[str, str] | None = None,
    normalize: bool = True,
    dense: list[tuple[int, int, str, bool]] = (),  # type: ignore[assignment]
    include_prompt: bool = True,
    max_seq_length: int | None = None,
    new_format: bool = False,
    transformer_path: str = "",
    default_prompt_name: str | None = None,
) -> None:
    """modules.json and the modules' folders, in the classic layout or sentence-transformers >= 5's."""
    from safetensors.torch import save_file

    def kind(name: str, module: str) -> str:
        if not new_format:
            return f"sentence_transformers.models.{name}"
        where = "sentence_transformer" if name == "Pooling" else "base"
        return f"sentence_transformers.{where}.modules.{module}.{name}"

    modules = [{"idx": 0, "name": "0", "path": transformer_path, "type": kind("Transformer", "transformer")}]
    hidden = json.loads((folder / transformer_path / "config.json").read_text())["hidden_size"]
    legacy_keys = {
        "cls": "pooling_mode_cls_token",
        "mean": "pooling_mode_mean_tokens",
        "max": "pooling_mode_max_tokens",
        "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
        "weightedmean": "pooling_mode_weightedmean_tokens",
        "lasttoken": "pooling_mode_lasttoken",
    }
    pool_dir = f"{len(modules)}_Pooling"
    modules.append({"idx": 1, "name": "1", "path": pool_dir, "type": kind("Pooling", "pooling")})
    if new_format:
        pool_cfg: dict[str, Any] = {"embedding_dimension": hidden, "pooling_mode": pooling}
    else:
        pool_cfg = {"word_embedding_dimension": hidden, **{k: False for k in legacy_keys.values()}}
        pool_cfg[legacy_keys[pooling]] = True
    write_json(folder / pool_dir / "config.json", {**pool_cfg, "include_prompt": include_prompt})
    for i, (n_in, n_out, activation, bias) in enumerate(dense):
        idx = len(modules)
        path = f"{idx}_Dense"
        modules.append({"idx": idx, "name": str(idx), "path": path, "type": kind("Dense", "dense")})
        write_json(
            folder / path / "config.json",
            {"in_features": n_in, "out_features": n_out, "bias": bias, "activation_function": activation},
        )
        torch.manual_seed(100 + i)
        linear = torch.nn.Linear(n_in, n_out, bias=bias)
        tensors = {"linear.weight": linear.weight.detach().contiguous()}
        if bias:
            tensors["linear.bias"] = linear.bias.detach().contiguous()
        save_file(tensors, str(folder / path / "model.safetensors"))
    if normalize:
        idx = len(modules)
        modules.append(
            {"idx": idx, "name": str(idx), "path": f"{idx}_Normalize", "type": kind("Normalize", "normalize")}
        )
        (folder / f"{idx}_Normalize").mkdir(exist_ok=True)
        if new_format:
            write_json(folder / f"{idx}_Normalize" / "config.json", {})
    write_json(folder / "modules.json", modules)
    write_json(
        folder / "config_sentence_transformers.json",
        {
            "__version__": {"sentence_transformers": "5.1.0" if new_format else "2.7.0"},
            "prompts": prompts or {},
            "default_prompt_name": default_prompt_name,
            "similarity_fn_name": "cosine",
        },
    )
    bert_cfg: dict[str, Any] = {"do_lower_case": False}
    if max_seq_length:
        bert_cfg["max_seq_length"] = max_seq_length
    write_json(folder / transformer_path / "sentence_bert_config.json", bert_cfg)


# ---------------------------------------------------------------- decoder families


def _mistral(folder: Path, *, seed: int, sliding_window: int | None = None, **config: Any) -> None:
    import transformers

    vocab = _vocab(folder)
    cfg = transformers.MistralConfig(
        vocab_size=vocab,
        **TINY_DECODER,
        sliding_window=sliding_window,
        bos_token_id=_token_id(folder, "<s>"),
        eos_token_id=_token_id(folder, "</s>"),
        tie_word_embeddings=False,
        **config,
    )
    save_model(transformers.MistralModel(cfg), folder, seed=seed)


def build_e5_mistral_layout(folder: Path, *, seed: int = 11) -> Path:
    """e5-mistral-7b-instruct's files: add_eos_token=true in tokenizer_config.json, a tokenizer.json
    that adds only <s>, last-token ST pooling and named instruction prompts. SFR-Embedding-Mistral,
    SFR-Embedding-2_R and Linq-Embed-Mistral ship the same recipe."""
    llama_tokenizer(folder, add_eos_token=True)
    _mistral(folder, seed=seed)
    st_files(
        folder,
        pooling="lasttoken",
        prompts={
            "web_search_query": f"Instruct: {WEB_TASK}\nQuery: ",
            "sts_query": "Instruct: Retrieve semantically similar text.\nQuery: ",
            "summarization_query": "Instruct: Given a news summary, retrieve other semantically similar "
            "summaries\nQuery: ",
        },
        max_seq_length=256,
    )
    return folder


def build_qwen3_embedding_layout(folder: Path, *, seed: int = 12) -> Path:
    """Qwen3-Embedding: its tokenizer.json appends <|endoftext|> itself (eos_token is <|im_end|>),
    left padding, last-token pooling, 'Instruct: ...\\nQuery:' with no space after the colon."""
    import transformers

    bytelevel_tokenizer(
        folder,
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        single="$A <|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        tokenizer_class="Qwen2Tokenizer",
        add_bos_token=False,
        bos_token=None,
    )
    cfg = transformers.Qwen3Config(
        vocab_size=_vocab(folder),
        **TINY_DECODER,
        eos_token_id=_token_id(folder, "<|endoftext|>"),
        pad_token_id=_token_id(folder, "<|endoftext|>"),
        tie_word_embeddings=True,
    )
    save_model(transformers.Qwen3Model(cfg), folder, seed=seed)
    st_files(
        folder,
        pooling="lasttoken",
        prompts={"query": f"Instruct: {WEB_TASK}\nQuery:", "document": ""},
    )
    return folder


def build_gte_qwen2_layout(folder: Path, *, seed: int = 13) -> Path:
    """gte-Qwen2-*-instruct: config.json with auto_map to its own modeling_qwen.py and is_causal=false
    (its code runs causally), tokenizer_config.json add_eos_token=true that the stock Qwen2 tokenizer
    ignores, last-token pooling, the e5 instruction format."""
    import transformers

    bytelevel_tokenizer(
        folder,
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        single=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        add_eos_token=True,
        tokenizer_class="Qwen2Tokenizer",
        auto_map={
            "AutoTokenizer": ["tokenization_qwen.Qwen2Tokenizer", "tokenization_qwen.Qwen2TokenizerFast"]
        },
    )
    cfg = transformers.Qwen2Config(
        vocab_size=_vocab(folder),
        **TINY_DECODER,
        eos_token_id=_token_id(folder, "<|endoftext|>"),
        tie_word_embeddings=False,
    )
    save_model(transformers.Qwen2Model(cfg), folder, seed=seed)
    patch_json(
        folder / "config.json",
        architectures=["Qwen2ForCausalLM"],
        auto_map={
            "AutoModel": "modeling_qwen.Qwen2Model",
            "AutoModelForCausalLM": "modeling_qwen.Qwen2ForCausalLM",
            "AutoModelForSequenceClassification": "modeling_qwen.Qwen2ForSequenceClassification",
        },
        is_causal=False,
    )
    # the checkpoint's own code: embedsvc must never import it unless trust_remote_code is given
    for name in ("modeling_qwen.py", "tokenization_qwen.py"):
        (folder / name).write_text("raise RuntimeError('custom code was executed')\n")
    st_files(folder, pooling="lasttoken", prompts={"query": f"Instruct: {WEB_TASK}\nQuery: "})
    return folder


EMBEDDING_GEMMA_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "BitextMining": "task: search result | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "STS": "task: sentence similarity | query: ",
}


def build_embeddinggemma_layout(folder: Path, *, seed: int = 14, sliding_window: int = 24) -> Path:
    """EmbeddingGemma: Gemma3TextModel with use_bidirectional_attention and a sliding window, mean
    pooling, two Dense layers without bias or activation, Normalize, task prompts (new ST format)."""
    import transformers

    bytelevel_tokenizer(
        folder,
        specials=["<pad>", "<eos>", "<bos>", "<unk>"],
        single="<bos> $A <eos>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=True,
        tokenizer_class="GemmaTokenizer",
    )
    cfg = transformers.Gemma3TextConfig(
        vocab_size=_vocab(folder),
        **{**TINY_DECODER, "num_hidden_layers": 3},
        query_pre_attn_scalar=16,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        use_bidirectional_attention=True,
        pad_token_id=_token_id(folder, "<pad>"),
        bos_token_id=_token_id(folder, "<bos>"),
        eos_token_id=_token_id(folder, "<eos>"),
    )
    save_model(transformers.Gemma3TextModel(cfg), folder, seed=seed)
    st_files(
        folder,
        pooling="mean",
        prompts=EMBEDDING_GEMMA_PROMPTS,
        dense=[
            (64, 192, "torch.nn.modules.linear.Identity", False),
            (192, 64, "torch.nn.modules.linear.Identity", False),
        ],
        new_format=True,
    )
    return folder


def build_bge_icl_layout(folder: Path, *, seed: int = 15) -> Path:
    """bge-en-icl: a Mistral checkpoint whose tokenizer_config.json asks for an EOS (no ST files)."""
    llama_tokenizer(folder, add_eos_token=True, add_bos_token=True, pad_token="<unk>")
    _mistral(folder, seed=seed)
    return folder


def build_gritlm_layout(folder: Path, *, seed: int = 16, sliding_window: int | None = 7) -> Path:
    """GritLM-7B: a plain Mistral checkpoint (nothing in its files says it embeds bidirectionally)."""
    llama_tokenizer(folder, pad_token="</s>", padding_side="right")
    _mistral(folder, seed=seed, sliding_window=sliding_window)
    return folder


def build_llm2vec_layout(base_dir: Path, mntp_dir: Path, supervised_dir: Path, *, seed: int = 17) -> Path:
    """LLM2Vec: a base decoder; an MNTP adapter folder (config.json with the base's _name_or_path,
    adapter_config.json, adapter_model.safetensors, tokenizer); a supervised adapter on top of it."""
    import peft
    import transformers

    llama_tokenizer(base_dir)
    _mistral(base_dir, seed=seed)
    for i, adapter_dir in enumerate((mntp_dir, supervised_dir)):
        base_path = base_dir if i == 0 else mntp_dir
        model = transformers.AutoModel.from_pretrained(base_dir)
        lora = peft.LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            base_model_name_or_path=str(base_path),
        )
        wrapped = peft.get_peft_model(model, lora)
        torch.manual_seed(seed + 10 + i)
        with torch.no_grad():
            for name, param in wrapped.named_parameters():
                if "lora_B" in name:  # LoRA starts as a no-op; make it change the model
                    param.normal_(0.0, 0.2)
        wrapped.save_pretrained(adapter_dir)
        patch_json(adapter_dir / "adapter_config.json", base_model_name_or_path=str(base_path))
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(base_dir / name, adapter_dir / name)
        config = json.loads((base_dir / "config.json").read_text())
        config["_name_or_path"] = "mistralai/Mistral-7B-Instruct-v0.2"
        write_json(adapter_dir / "config.json", config)
    return supervised_dir


# ---------------------------------------------------------------- encoder families


def build_xlmr_layout(
    folder: Path, *, pooling: str, seed: int = 18, prompts: dict[str, str] | None = None
) -> Path:
    """XLM-RoBERTa (multilingual-e5, bge-m3): <s> $A </s>, positions from padding_idx + 1."""
    import transformers

    unigram_tokenizer(folder)
    cfg = transformers.XLMRobertaConfig(
        vocab_size=_vocab(folder),
        **TINY_ENCODER,
        max_position_embeddings=514,
        pad_token_id=_token_id(folder, "<pad>"),
        bos_token_id=_token_id(folder, "<s>"),
        eos_token_id=_token_id(folder, "</s>"),
        type_vocab_size=1,
    )
    save_model(transformers.XLMRobertaModel(cfg, add_pooling_layer=False), folder, seed=seed)
    st_files(folder, pooling=pooling, prompts=prompts, max_seq_length=512)
    return folder


def build_modernbert_layout(folder: Path, *, seed: int = 19, pooling: str = "mean") -> Path:
    """ModernBERT (gte-modernbert, modernbert-embed): global and local (windowed) attention layers."""
    import transformers

    wordpiece_tokenizer(
        folder, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), model_max_length=8192
    )
    cfg = transformers.ModernBertConfig(
        vocab_size=_vocab(folder),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=512,
        local_attention=8,
        layer_types=["full_attention", "sliding_attention", "sliding_attention"],
        pad_token_id=_token_id(folder, "[PAD]"),
        cls_token_id=_token_id(folder, "[CLS]"),
        sep_token_id=_token_id(folder, "[SEP]"),
        bos_token_id=_token_id(folder, "[CLS]"),
        eos_token_id=_token_id(folder, "[SEP]"),
    )
    save_model(transformers.ModernBertModel(cfg), folder, seed=seed)
    st_files(
        folder,
        pooling=pooling,
        prompts={"query": "search_query: ", "document": "search_document: "},
        new_format=True,
    )
    return folder


def build_bert_layout(
    folder: Path,
    *,
    seed: int = 20,
    pooling: str = "cls",
    prompts: dict[str, str] | None = None,
    transformer_path: str = "",
    new_format: bool = False,
    dense: list[tuple[int, int, str, bool]] = (),  # type: ignore[assignment]
    normalize: bool = True,
    include_prompt: bool = True,
) -> Path:
    """A BERT encoder with sentence-transformers files (arctic-embed, bge, classic ST models)."""
    import transformers

    model_dir = folder / transformer_path
    wordpiece_tokenizer(model_dir, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
    cfg = transformers.BertConfig(
        vocab_size=_vocab(model_dir),
        **TINY_ENCODER,
        max_position_embeddings=512,
        pad_token_id=_token_id(model_dir, "[PAD]"),
    )
    save_model(transformers.BertModel(cfg, add_pooling_layer=False), model_dir, seed=seed)
    st_files(
        folder,
        pooling=pooling,
        prompts=prompts,
        transformer_path=transformer_path,
        new_format=new_format,
        dense=dense,
        normalize=normalize,
        include_prompt=include_prompt,
        max_seq_length=256,
    )
    return folder


# ---------------------------------------------------------------- custom code

CUSTOM_CONFIG = """
from transformers import PretrainedConfig


class TinyEmbedConfig(PretrainedConfig):
    model_type = "tiny-embed"

    def __init__(self, vocab_size=700, hidden_size=32, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
"""

CUSTOM_MODEL = '''
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_tiny import TinyEmbedConfig


class TinyEmbedModel(PreTrainedModel):
    """Not any built-in architecture: embeddings, a gated mixer over the prefix, a projection."""

    config_class = TinyEmbedConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.gate = torch.nn.Linear(config.hidden_size, config.hidden_size)
        self.proj = torch.nn.Linear(config.hidden_size, config.hidden_size)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        x = self.embed(input_ids)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        m = mask[..., None].to(x.dtype)
        prefix = (x * m).cumsum(1) / m.cumsum(1).clamp(min=1)
        h = torch.tanh(self.proj(prefix * torch.sigmoid(self.gate(x))))
        return BaseModelOutput(last_hidden_state=h)
'''


def build_custom_code_layout(folder: Path, *, seed: int = 21) -> Path:
    """A checkpoint with its own modeling code (auto_map), like nomic-embed-text or jina-embeddings."""
    import importlib.util
    import sys

    wordpiece_tokenizer(folder, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
    (folder / "configuration_tiny.py").write_text(CUSTOM_CONFIG)
    (folder / "modeling_tiny.py").write_text(CUSTOM_MODEL)
    package = f"tiny_embed_build_{seed}"
    spec = importlib.util.spec_from_file_location(
        package, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    (folder / "__init__.py").write_text("")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[package] = module
    config_mod = _load_submodule(package, folder, "configuration_tiny")
    model_mod = _load_submodule(package, folder, "modeling_tiny")
    config = config_mod.TinyEmbedConfig(vocab_size=_vocab(folder), hidden_size=32)
    config.auto_map = {
        "AutoConfig": "configuration_tiny.TinyEmbedConfig",
        "AutoModel": "modeling_tiny.TinyEmbedModel",
    }
    config.architectures = ["TinyEmbedModel"]
    save_model(model_mod.TinyEmbedModel(config), folder, seed=seed)
    (folder / "__init__.py").unlink()
    st_files(folder, pooling="mean", prompts={"query": "search_query: "})
    return folder


def _load_submodule(package: str, folder: Path, name: str) -> Any:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"{package}.{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[f"{package}.{name}"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module
