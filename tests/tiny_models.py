"""Tiny random checkpoints saved in the real checkpoints' folder layout.

Each builder trains a tokenizer on the spot with ``tokenizers`` and saves a
random model (hidden <= 64) the way the real hub folder looks, including the
sentence-transformers files of e5-mistral-7b-instruct and bge-base-en-v1.5.
"""

from __future__ import annotations

import json
import random
import shutil
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


# ------------------------------------------------------- rerankers and classifiers


def _seq_classifier(folder: Path, model: torch.nn.Module, *, seed: int) -> None:
    from tests.families import save_model

    save_model(model, folder, seed=seed)


def build_bert_cross_encoder(folder: Path, *, layout: str, seed: int = 30) -> Path:
    """ms-marco-MiniLM's shape: BertForSequenceClassification with one label, in one of the layouts
    sentence-transformers wrote over the years: "st" (saved here by the installed release: modules.json,
    activation_fn in config_sentence_transformers.json), "st4" (config.json sentence_transformers.
    activation_fn, releases 4 and 5), "legacy" (config.json sbert_ce_default_activation_function, < 4)."""
    import transformers

    from tests.families import _token_id, _vocab, patch_json, wordpiece_tokenizer

    target = folder
    if layout == "st":
        folder = folder.with_name(folder.name + "-unsaved")
    wordpiece_tokenizer(folder, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), model_max_length=64)
    cfg = transformers.BertConfig(
        vocab_size=_vocab(folder),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        pad_token_id=_token_id(folder, "[PAD]"),
        num_labels=1,
    )
    _seq_classifier(folder, transformers.BertForSequenceClassification(cfg), seed=seed)
    if layout == "st":
        from sentence_transformers import CrossEncoder

        CrossEncoder(str(folder), device="cpu").save(str(target))
        shutil.rmtree(folder)
    elif layout == "st4":
        patch_json(
            folder / "config.json",
            sentence_transformers={"activation_fn": "torch.nn.modules.activation.Tanh", "version": "4.1.0"},
        )
    elif layout == "legacy":
        patch_json(
            folder / "config.json", sbert_ce_default_activation_function="torch.nn.modules.linear.Identity"
        )
    return target


def build_xlmr_cross_encoder(folder: Path, *, seed: int = 31) -> Path:
    """bge-reranker-base/large/v2-m3's shape: XLMRobertaForSequenceClassification, one label, no
    sentence-transformers files (CrossEncoder's default activation: Sigmoid)."""
    import transformers

    from tests.families import TINY_ENCODER, _token_id, _vocab, unigram_tokenizer

    unigram_tokenizer(folder, model_max_length=64)
    cfg = transformers.XLMRobertaConfig(
        vocab_size=_vocab(folder),
        **TINY_ENCODER,
        max_position_embeddings=130,
        pad_token_id=_token_id(folder, "<pad>"),
        bos_token_id=_token_id(folder, "<s>"),
        eos_token_id=_token_id(folder, "</s>"),
        type_vocab_size=1,
        num_labels=1,
    )
    _seq_classifier(folder, transformers.XLMRobertaForSequenceClassification(cfg), seed=seed)
    return folder


def build_modernbert_cross_encoder(folder: Path, *, seed: int = 32) -> Path:
    """gte-reranker-modernbert-base's shape: ModernBertForSequenceClassification, one label, mean
    classifier pooling, global and windowed attention layers."""
    import transformers

    from tests.families import _token_id, _vocab, wordpiece_tokenizer

    wordpiece_tokenizer(folder, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), model_max_length=64)
    cfg = transformers.ModernBertConfig(
        vocab_size=_vocab(folder),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=128,
        local_attention=8,
        layer_types=["full_attention", "sliding_attention", "sliding_attention"],
        pad_token_id=_token_id(folder, "[PAD]"),
        cls_token_id=_token_id(folder, "[CLS]"),
        sep_token_id=_token_id(folder, "[SEP]"),
        bos_token_id=_token_id(folder, "[CLS]"),
        eos_token_id=_token_id(folder, "[SEP]"),
        classifier_pooling="mean",
        num_labels=1,
    )
    _seq_classifier(folder, transformers.ModernBertForSequenceClassification(cfg), seed=seed)
    return folder


EMOTIONS = {0: "joy", 1: "anger", 2: "neutral"}


def build_bert_classifier(folder: Path, *, multi_label: bool, seed: int = 33) -> Path:
    """A text classifier (TEI /predict, vLLM /classify): BertForSequenceClassification with id2label;
    multi_label sets problem_type multi_label_classification (a sigmoid per label)."""
    import transformers

    from tests.families import _token_id, _vocab, wordpiece_tokenizer

    wordpiece_tokenizer(folder, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), model_max_length=64)
    cfg = transformers.BertConfig(
        vocab_size=_vocab(folder),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        pad_token_id=_token_id(folder, "[PAD]"),
        id2label=EMOTIONS,
        label2id={v: k for k, v in EMOTIONS.items()},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    _seq_classifier(folder, transformers.BertForSequenceClassification(cfg), seed=seed)
    return folder


def _answer_tokenizer(folder: Path, *, specials: list[str], **config: object) -> None:
    """A byte-level BPE tokenizer (Qwen style, no post-processor) whose vocabulary holds "yes" and "no"
    as single tokens, as real LLM vocabularies do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tests.families import _training_text, write_json

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    answers = ['Judge whether the Document meets the requirements: "yes" or "no". yes no Yes No'] * 40
    tok.train_from_iterator(
        _training_text() + answers,
        trainers.BpeTrainer(
            vocab_size=800,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    assert tok.token_to_id("yes") is not None and tok.token_to_id("no") is not None
    tok.save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", {"model_max_length": 131072, **config})


def build_qwen3_reranker(folder: Path, *, seed: int = 34) -> Path:
    """Qwen3-Reranker's files: a plain Qwen3ForCausalLM (untied LM head, as in the 4B and 8B), a
    Qwen tokenizer padding on the left; the reranker is recognised by name or profile."""
    import transformers

    from tests.families import TINY_DECODER, _token_id, _vocab

    _answer_tokenizer(
        folder,
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        tokenizer_class="Qwen2Tokenizer",
        bos_token=None,
    )
    cfg = transformers.Qwen3Config(
        vocab_size=_vocab(folder),
        **TINY_DECODER,
        eos_token_id=_token_id(folder, "<|im_end|>"),
        pad_token_id=_token_id(folder, "<|endoftext|>"),
        tie_word_embeddings=False,
    )
    _seq_classifier(folder, transformers.Qwen3ForCausalLM(cfg), seed=seed)
    return folder


def build_gemma_reranker(folder: Path, *, seed: int = 35) -> Path:
    """bge-reranker-v2-gemma's files: GemmaForCausalLM (LM head tied to the embeddings) with a
    SentencePiece-style tokenizer whose BOS is not its pad token."""
    import transformers

    from tests.families import TINY_DECODER, _token_id, _vocab, llama_tokenizer

    llama_tokenizer(folder, pad_token="<unk>")
    cfg = transformers.GemmaConfig(
        vocab_size=_vocab(folder),
        **TINY_DECODER,
        bos_token_id=_token_id(folder, "<s>"),
        eos_token_id=_token_id(folder, "</s>"),
        pad_token_id=_token_id(folder, "<unk>"),
        tie_word_embeddings=True,
    )
    _seq_classifier(folder, transformers.GemmaForCausalLM(cfg), seed=seed)
    return folder


# ------------------------------------------------- sparse and multi-vector layouts


def build_bge_m3(folder: Path, *, seed: int = 31) -> Path:
    """bge-m3's hub layout: XLM-RoBERTa weights, sentence-transformers files (CLS pooling, Normalize),
    and ``sparse_linear.pt`` (hidden -> 1) and ``colbert_linear.pt`` (hidden -> hidden) beside them."""
    from tests.families import build_xlmr_layout

    build_xlmr_layout(folder, pooling="cls", seed=seed)
    hidden = json.loads((folder / "config.json").read_text())["hidden_size"]
    torch.manual_seed(seed + 1)
    sparse, colbert = torch.nn.Linear(hidden, 1), torch.nn.Linear(hidden, hidden)
    with torch.no_grad():
        sparse.weight.normal_(0.0, 0.3)  # about half the tokens get a positive weight
    torch.save(sparse.state_dict(), folder / "sparse_linear.pt")
    torch.save(colbert.state_dict(), folder / "colbert_linear.pt")
    return folder


def build_masked_lm(folder: Path, *, seed: int = 32) -> Path:
    """A BERT *ForMaskedLM checkpoint (the base SPLADE checkpoints are trained from)."""
    import transformers

    from tests.families import TINY_ENCODER, _token_id, _vocab, save_model, wordpiece_tokenizer

    wordpiece_tokenizer(folder, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
    cfg = transformers.BertConfig(
        vocab_size=_vocab(folder),
        **TINY_ENCODER,
        max_position_embeddings=512,
        pad_token_id=_token_id(folder, "[PAD]"),
    )
    save_model(transformers.BertForMaskedLM(cfg), folder, seed=seed)
    return folder


def build_splade(
    folder: Path, work: Path, *, pooling: str = "max", legacy: bool = False, seed: int = 32
) -> Path:
    """SPLADE as sentence-transformers' SparseEncoder saves it (``SparseEncoder.save``, for real);
    ``legacy``: the module names sentence-transformers 5.0 wrote (``sparse_encoder.models.MLMTransformer``),
    which SPLADE checkpoints on the hub carry."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    base = build_masked_lm(work, seed=seed)
    transformer = Transformer(str(base), transformer_task="fill-mask", max_seq_length=96)
    SparseEncoder(modules=[transformer, SpladePooling(pooling)], device="cpu").save(str(folder))
    if legacy:
        modules = json.loads((folder / "modules.json").read_text())
        modules[0]["type"] = "sentence_transformers.sparse_encoder.models.MLMTransformer"
        modules[1]["type"] = "sentence_transformers.sparse_encoder.models.SpladePooling"
        _write_json(folder / "modules.json", modules)
    return folder


def _colbert_tokenizer(folder: Path) -> None:
    """BERT's WordPiece with [unused0] / [unused1] in the vocabulary (colbert-ir's markers)."""
    from tests.families import wordpiece_tokenizer

    wordpiece_tokenizer(folder, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
    data = json.loads((folder / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    for token in ("[unused0]", "[unused1]"):
        vocab[token] = len(vocab)
    (folder / "tokenizer.json").write_text(json.dumps(data))


def build_colbert_ir(folder: Path, *, seed: int = 33, query_maxlen: int = 16, doc_maxlen: int = 24) -> Path:
    """colbert-ir's layout (colbertv2.0): an HF_ColBERT config, BERT weights under ``bert.`` with the
    projection ``linear.weight`` (no bias) in the same file, settings in ``artifact.metadata``."""
    import transformers
    from safetensors.torch import save_file

    from tests.families import TINY_ENCODER, _token_id, _vocab

    _colbert_tokenizer(folder)
    cfg = transformers.BertConfig(
        vocab_size=_vocab(folder),
        **TINY_ENCODER,
        max_position_embeddings=512,
        pad_token_id=_token_id(folder, "[PAD]"),
    )
    torch.manual_seed(seed)
    bert = transformers.BertModel(cfg, add_pooling_layer=False)
    with torch.no_grad():
        for param in bert.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.1)
    linear = torch.nn.Linear(cfg.hidden_size, 16, bias=False)
    state = {f"bert.{k}": v.contiguous() for k, v in bert.state_dict().items()}
    state["linear.weight"] = linear.weight.detach().contiguous()
    save_file(state, str(folder / "model.safetensors"))
    config = cfg.to_dict()
    config["architectures"] = ["HF_ColBERT"]
    _write_json(folder / "config.json", config)
    _write_json(
        folder / "artifact.metadata",
        {
            "query_token_id": "[unused0]",
            "doc_token_id": "[unused1]",
            "query_maxlen": query_maxlen,
            "doc_maxlen": doc_maxlen,
            "dim": 16,
            "mask_punctuation": True,
            "attend_to_mask_tokens": False,
            "similarity": "cosine",
        },
    )
    return folder


def build_pylate(
    folder: Path, *, seed: int = 34, query_length: int = 16, document_length: int = 24, attend: bool = False
) -> Path:
    """PyLate's sentence-transformers layout: a BERT whose tokenizer gained "[Q] " and "[D] ", a
    ``pylate.models.Dense.Dense`` projection (no bias), PyLate's keys in config_sentence_transformers.json."""
    import string

    import transformers
    from safetensors.torch import save_file

    from tests.families import TINY_ENCODER, _token_id, save_model, wordpiece_tokenizer

    wordpiece_tokenizer(folder, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["[Q] ", "[D] "])  # as PyLate does: plain added tokens
    tokenizer.save_pretrained(folder)
    cfg = transformers.BertConfig(
        vocab_size=len(tokenizer),
        **TINY_ENCODER,
        max_position_embeddings=512,
        pad_token_id=_token_id(folder, "[PAD]"),
    )
    cfg.architectures = ["BertModel"]
    save_model(transformers.BertModel(cfg, add_pooling_layer=False), folder, seed=seed)
    torch.manual_seed(seed + 1)
    linear = torch.nn.Linear(cfg.hidden_size, 16, bias=False)
    (folder / "1_Dense").mkdir(exist_ok=True)
    save_file(
        {"linear.weight": linear.weight.detach().contiguous()}, str(folder / "1_Dense" / "model.safetensors")
    )
    _write_json(
        folder / "1_Dense" / "config.json",
        {
            "in_features": cfg.hidden_size,
            "out_features": 16,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
            "use_residual": False,
        },
    )
    _write_json(
        folder / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
        ],
    )
    _write_json(
        folder / "config_sentence_transformers.json",
        {
            "__version__": {"sentence_transformers": "3.4.1", "pylate": "1.1.7"},
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "MaxSim",
            "query_prefix": "[Q] ",
            "document_prefix": "[D] ",
            "query_length": query_length,
            "document_length": document_length,
            "attend_to_expansion_tokens": attend,
            "skiplist_words": list(string.punctuation),
            "do_query_expansion": True,
        },
    )
    _write_json(
        folder / "sentence_bert_config.json", {"max_seq_length": document_length - 1, "do_lower_case": False}
    )
    return folder
