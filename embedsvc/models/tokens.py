"""What a checkpoint's tokenizer files declare about special tokens, and what the tokenizer does.

transformers < 5 rebuilt a fast tokenizer's post-processor from tokenizer_config.json's
``add_bos_token`` / ``add_eos_token``; transformers >= 5 takes tokenizer.json as it is. Hub
checkpoints whose two files disagree (e5-mistral-7b-instruct, gte-Qwen2) therefore lose a
token silently. The facts here let the recipe follow what the files declare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenizerFacts:
    declared_add_bos: bool | None  # tokenizer_config.json add_bos_token
    declared_add_eos: bool | None  # tokenizer_config.json add_eos_token
    adds_bos: bool  # the loaded tokenizer puts its BOS first
    ends_with_special: bool  # the loaded tokenizer appends a special token (EOS, [SEP], ...)
    appended_token: str | None
    bos_token: str | None
    eos_token: str | None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def probe_tokenizer(tokenizer: Any, tokenizer_config: dict[str, Any]) -> TokenizerFacts:
    """Tokenize a sample and compare it with the declarations of tokenizer_config.json."""
    encoded = tokenizer("a", add_special_tokens=True, return_special_tokens_mask=True)
    ids, special = encoded["input_ids"], encoded["special_tokens_mask"]
    bos_id = tokenizer.bos_token_id
    ends_with_special = bool(ids) and bool(special[-1]) and len(ids) > 1
    return TokenizerFacts(
        declared_add_bos=_flag(tokenizer_config.get("add_bos_token")),
        declared_add_eos=_flag(tokenizer_config.get("add_eos_token")),
        adds_bos=bool(ids) and bos_id is not None and ids[0] == bos_id,
        ends_with_special=ends_with_special,
        appended_token=tokenizer.convert_ids_to_tokens(ids[-1]) if ends_with_special else None,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
    )
