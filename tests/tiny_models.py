"""Tiny random checkpoints saved in the real checkpoints' folder layout.

Each builder trains a tokenizer on the spot with ``tokenizers`` and saves a
random model (hidden <= 64) the way the real hub folder looks, including the
sentence-transformers files of e5-mistral-7b-instruct and bge-base-en-v1.5.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

CORPUS_WORDS = tuple(
    (
        "the a an of to in and is was for on that with as by at from it this be are or not have has had "
        "man woman dog cat guitar music play playing plays runs running eats food bread water river house "
        "car road street city country world people child children school teacher student book books read "
        "query passage document search find answer question what who where when why how sentence word "
        "embedding vector model service server client network quick brown fox jumps over lazy day night "
        "sun moon star sky blue red green yellow big small old new good bad happy sad fast slow "
    ).split()
)


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(CORPUS_WORDS) for _ in range(rng.randint(1, 30))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ""]))
    # punctuation used by prompts and conversion templates, so it gets real tokens
    lines += ['Instruct: a query, "quoted" text; more: Rewrite the sentence: x, rewritten sentence: x'] * 20
    return lines


def _wordpiece_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    fast = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    fast.save_pretrained(folder)


def _bpe_tokenizer(folder: Path, *, bos: str | None, eos: str, pad: str | None, add_bos: bool) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [t for t in (bos, eos, pad, "<unk>") if t]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus(),
        trainers.BpeTrainer(
            vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    if add_bos and bos:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, bos_id)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token="<unk>",
        model_max_length=256,
    )
    fast.save_pretrained(folder)


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _st_files(
    folder: Path,
    *,
    pooling_key: str,
    prompts: dict[str, str],
    max_seq_length: int,
    include_prompt: bool = True,
    dense: tuple[int, int] | None = None,
) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if dense:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
        )
        _write_json(
            folder / "2_Dense" / "config.json",
            {
                "in_features": dense[0],
                "out_features": dense[1],
                "bias": True,
                "activation_function": "torch.nn.modules.activation.Tanh",
            },
        )
        torch.manual_seed(7)
        linear = torch.nn.Linear(*dense)
        from safetensors.torch import save_file

        save_file(
            {
                "linear.weight": linear.weight.detach().contiguous(),
                "linear.bias": linear.bias.detach().contiguous(),
            },
            str(folder / "2_Dense" / "model.safetensors"),
        )
    modules.append(
        {
            "idx": len(modules),
            "name": str(len(modules)),
            "path": "2_Normalize" if not dense else "3_Normalize",
            "type": "sentence_transformers.models.Normalize",
        }
    )
    _write_json(folder / "modules.json", modules)
    pool = {
        k: False
        for k in (
            "pooling_mode_cls_token",
            "pooling_mode_mean_tokens",
            "pooling_mode_max_tokens",
            "pooling_mode_mean_sqrt_len_tokens",
            "pooling_mode_weightedmean_tokens",
            "pooling_mode_lasttoken",
        )
    }
    pool[pooling_key] = True
    hidden = json.loads((folder / "config.json").read_text())["hidden_size"]
    _write_json(
        folder / "1_Pooling" / "config.json",
        {"word_embedding_dimension": hidden, **pool, "include_prompt": include_prompt},
    )
    _write_json(
        folder / "config_sentence_transformers.json",
        {
            "__version__": {"sentence_transformers": "2.7.0"},
            "prompts": prompts,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    _write_json(
        folder / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False}
    )


def build_bert(
    folder: Path, *, st: str | None = None, seed: int = 0, dense: bool = False, include_prompt: bool = True
) -> Path:
    """A BERT encoder; ``st`` in (None, "bge", "mean", "max", "weighted_mean") adds ST files."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    _wordpiece_tokenizer(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=400,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    keys = {
        "bge": "pooling_mode_cls_token",
        "mean": "pooling_mode_mean_tokens",
        "max": "pooling_mode_max_tokens",
        "weighted_mean": "pooling_mode_weightedmean_tokens",
    }
    if st is not None:
        prompts = {} if st == "bge" else {"query": "query: ", "document": "passage: "}
        _st_files(
            folder,
            pooling_key=keys[st],
            prompts=prompts,
            max_seq_length=64,
            include_prompt=include_prompt,
            dense=(32, 16) if dense else None,
        )
    return folder


def build_decoder(folder: Path, family: str, *, seed: int = 0, e5_st_files: bool = False) -> Path:
    """A ``*ForCausalLM`` checkpoint (lm_head included) for llama, mistral or qwen2."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    if family == "qwen2":
        _bpe_tokenizer(folder, bos=None, eos="<|endoftext|>", pad="<|endoftext|>", add_bos=False)
    else:
        _bpe_tokenizer(folder, bos="<s>", eos="</s>", pad=None, add_bos=True)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]
    torch.manual_seed(seed)
    config = config_cls(
        vocab_size=len(tok),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model_cls(config).save_pretrained(folder)
    if e5_st_files:
        _st_files(
            folder,
            pooling_key="pooling_mode_lasttoken",
            max_seq_length=96,
            prompts={
                "web_search_query": "Instruct: Given a web search query, retrieve relevant passages "
                "that answer the query\nQuery: ",
                "sts_query": "Instruct: Retrieve semantically similar text.\nQuery: ",
            },
        )
    return folder
