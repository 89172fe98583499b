"""The fast encoding path gives exactly the token ids (and pooling spans, chunk weights, errors) of
the reference per-token path, for every template kind, truncation side, chunking, EOS/BOS rule and
tokenizer family; and a long text costs what its kept part costs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from embedsvc.engine.inputs import InputEncoder, Template
from embedsvc.errors import EmbedsvcError
from embedsvc.models.profiles import CONVERSION_TEMPLATES
from embedsvc.models.tokens import probe_tokenizer
from tests import families

# one tokenizer per kind real checkpoints ship: WordPiece (BERT), SentencePiece BPE with byte fallback
# (Llama/Mistral), byte-level BPE appending a special (Qwen3) / adding none (gte-Qwen2) / adding both
# (Gemma), Unigram (XLM-R)
_BUILDERS: dict[str, Any] = {
    "wordpiece": lambda d: families.wordpiece_tokenizer(
        d, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    ),
    "llama": lambda d: families.llama_tokenizer(d, add_eos_token=True),
    "qwen3": lambda d: families.bytelevel_tokenizer(
        d,
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        single="$A <|endoftext|>",
        eos_token="<|im_end|>",
    ),
    "gte_qwen2": lambda d: families.bytelevel_tokenizer(
        d, specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], single=None, eos_token="<|endoftext|>"
    ),
    "gemma": lambda d: families.bytelevel_tokenizer(
        d,
        specials=["<pad>", "<eos>", "<bos>", "<unk>"],
        single="<bos> $A <eos>",
        bos_token="<bos>",
        eos_token="<eos>",
    ),
    "unigram": families.unigram_tokenizer,
}

_TEMPLATES = {
    "plain": Template.build(),
    "prompt": Template.build("query: "),
    "instruction": Template.build("Instruct: find it\nQuery: "),
    "glued_prompt": Template.build("Represent"),  # no space: a token may span prompt and text
    "chat": Template.build("<|user|>\n", None, suffix="\n<|embed|>\n"),
    "echo": Template.build("", CONVERSION_TEMPLATES["echo"]),
    "prompteol": Template.build("", CONVERSION_TEMPLATES["prompteol"]),
    "echo_prompt": Template.build("query: ", CONVERSION_TEMPLATES["echo"]),
}

_RULES = {  # (append_eos, prepend_bos, exclude_prompt, prompt_token_skip, rstrip_input)
    "none": (False, False, False, False, False),
    "eos": (True, False, False, False, False),
    "bos_eos_exclude": (True, True, True, False, False),
    "skip_rstrip": (False, False, False, True, True),
}

_WORDS = [
    "the", "query", "passage", "Retrieval", "embedding", "é", "naïve", "中文", "日本語", "😀", "x" * 40,
    "don't", "U.S.A.", "3.14159", "\t", "\n", "  ", "[SEP]", "</s>", "<|im_end|>", "<eos>", "word-piece",
]  # fmt: skip

_texts = st.one_of(
    st.text(max_size=60),
    st.just(""),
    st.sampled_from([" ", "   \n\t ", "\u3000"]),
    st.lists(st.sampled_from(_WORDS), max_size=900).map(" ".join),
    st.lists(st.sampled_from(_WORDS), max_size=300).map("".join),  # long runs without whitespace
    st.builds(lambda w, n: (w + " ") * n, st.sampled_from(_WORDS), st.integers(0, 700)),
)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tokenizers")
    loaded = {}
    for name, build in _BUILDERS.items():
        folder = Path(root / name)
        build(folder)
        loaded[name] = AutoTokenizer.from_pretrained(folder)
    from embedsvc.models.loading import default_model_path

    loaded["minilm"] = AutoTokenizer.from_pretrained(default_model_path())
    return loaded


def _encoder(tokenizer: Any, rule: str, max_length: int) -> InputEncoder:
    append_eos, prepend_bos, exclude_prompt, skip, rstrip = _RULES[rule]
    if tokenizer.eos_token_id is None:
        append_eos = False
    if tokenizer.bos_token_id is None:
        prepend_bos = False
    return InputEncoder(
        tokenizer,
        max_length,
        append_eos=append_eos,
        exclude_prompt=exclude_prompt,
        prepend_bos=prepend_bos,
        tokenizer_appends_special=probe_tokenizer(tokenizer, {}).ends_with_special,
        prompt_token_skip=skip,
        rstrip_input=rstrip,
    )


def _outcome(call: Any) -> Any:
    try:
        return [(e.ids, e.pool_start, e.pool_end, e.text_tokens, e.source) for e in call()]
    except EmbedsvcError as exc:
        return (type(exc).__name__, str(exc))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(_texts, min_size=1, max_size=4),
    family=st.sampled_from([*_BUILDERS, "minilm"]),
    template=st.sampled_from(sorted(_TEMPLATES)),
    rule=st.sampled_from(sorted(_RULES)),
    truncation=st.sampled_from(["end", "start", "none"]),
    chunked=st.booleans(),
    max_length=st.sampled_from([24, 64]),
)
def test_fast_path_gives_the_reference_ids(
    tokenizers: dict[str, Any],
    texts: list[str],
    family: str,
    template: str,
    rule: str,
    truncation: str,
    chunked: bool,
    max_length: int,
) -> None:
    encoder = _encoder(tokenizers[family], rule, max_length)
    tpl = _TEMPLATES[template]
    kwargs: dict[str, Any] = {"truncation": truncation, "chunked": chunked, "first_index": 3}
    fast = _outcome(lambda: encoder.encode(texts, tpl, **kwargs))
    reference = _outcome(lambda: encoder.encode_reference(texts, tpl, **kwargs))
    assert fast == reference


@pytest.mark.parametrize("family", [*_BUILDERS, "minilm"])
@pytest.mark.parametrize("template", sorted(_TEMPLATES))
@pytest.mark.parametrize("truncation", ["end", "start"])
def test_cut_long_texts_keep_the_reference_ids(
    tokenizers: dict[str, Any], family: str, template: str, truncation: str
) -> None:
    """Texts far past the cut bound (cut, verified, or tokenized again), prose and one long word."""
    prose = " ".join(["Retrieval", "embedding", "naïve", "中文", "don't", "the", "passage"] * 400)
    texts = [prose, "x" * 20_000, " " * 5_000 + prose[:3_000], prose + " " * 9_000, "é" * 9_000]
    encoder = _encoder(tokenizers[family], "bos_eos_exclude", 64)
    tpl = _TEMPLATES[template]
    fast = _outcome(lambda: encoder.encode(texts, tpl, truncation=truncation))
    assert fast == _outcome(lambda: encoder.encode_reference(texts, tpl, truncation=truncation))
    assert all(len(ids) <= 64 for ids, *_ in fast)


def test_long_texts_cost_what_their_kept_part_costs(tokenizers: dict[str, Any]) -> None:
    """200 texts of 100 KB cost about as much as 200 texts of 2 KB when both are cut to the limit
    (the reference path tokenizes every character: ~40x here). Generous margin: a shared machine."""
    encoder = _encoder(tokenizers["minilm"], "none", 256)
    tpl = _TEMPLATES["plain"]
    words = "the quick brown fox jumps over the lazy dog while naïve retrieval embeddings wait ".split()
    prose = " ".join(words[i % len(words)] for i in range(20_000))
    short = [prose[i : i + 2_000] for i in range(200)]
    long = [prose[i : i + 100_000] for i in range(200)]

    def best(texts: list[str]) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            encoder.encode(texts, tpl)
            times.append(time.perf_counter() - start)
        return min(times)

    ratio = min(best(long) / best(short) for _ in range(2))
    assert ratio < 4.0, f"200 x 100 KB cost {ratio:.1f}x 200 x 2 KB"


@pytest.mark.parametrize("family", [*_BUILDERS, "minilm"])
def test_long_chunked_texts_tokenized_in_pieces_keep_the_reference_ids(
    tokenizers: dict[str, Any], family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunked text past the piece size is tokenized in verified pieces: the same ids as whole."""
    from embedsvc.engine import inputs

    monkeypatch.setattr(inputs, "_SEGMENT_CHARS", 3_000)
    words = ["Retrieval", "embedding", "naïve", "中文", "don't", "the", "passage", "x" * 30, "3.14"]
    text = " ".join(words[(i * 7) % len(words)] for i in range(4_000))
    texts = [text, "short one", text.replace(" ", "\n")]  # the last has no single space to split at
    for rule in ("none", "bos_eos_exclude"):
        encoder = _encoder(tokenizers[family], rule, 64)
        tpl = _TEMPLATES["plain"]
        fast = _outcome(lambda: encoder.encode(texts, tpl, chunked=True))  # noqa: B023
        assert fast == _outcome(lambda: encoder.encode_reference(texts, tpl, chunked=True))  # noqa: B023
        assert len(fast) > 100


def test_one_8mib_chunked_text_costs_little_memory(tmp_path: Path) -> None:
    """Peak RSS of encoding one 8 MiB text chunked, in a fresh process: the tokenizer's own per-byte
    bookkeeping (~200 bytes per input byte whole) is bounded by the piece size. Generous bound."""
    import subprocess
    import sys

    code = """
import resource, sys
from transformers import AutoTokenizer
from embedsvc.engine.inputs import InputEncoder, Template
from embedsvc.models.loading import default_model_path
tok = AutoTokenizer.from_pretrained(default_model_path())
encoder = InputEncoder(tok, 256, append_eos=False, exclude_prompt=False)
words = "the quick brown fox jumps over the lazy dog while naive retrieval embeddings wait".split()
text = " ".join(words[i % len(words)] for i in range(2_000_000))[: 8 << 20]
encoder.encode(["warm up"], Template.build(), chunked=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = encoder.encode([text], Template.build(), chunked=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(out), (peak - before) / 1024)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    chunks, grown_mb = done.stdout.split()
    assert int(chunks) > 5_000
    assert float(grown_mb) < 300, f"peak RSS grew {grown_mb} MiB"
