"""From a text to token ids: prompts, conversion templates, truncation, EOS.

A :class:`Template` is literal text around one or more copies of the input
(``prompt + "{text}"``; echo embeddings have two copies). The whole string is
tokenized once with offsets; each token is assigned to the part of the template
its last character falls in, so truncation can remove tokens of the *input*
only, never of the prompt, the template or the special tokens.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from embedsvc.errors import InvalidInputError, TextTooLongError

TRUNCATIONS = ("end", "start", "none")
_SPECIAL = -1  # region id of special tokens added by the tokenizer


@dataclass(frozen=True)
class Template:
    """Literal ``parts`` interleaved with copies of the input: p0 TEXT p1 TEXT p2 ..."""

    parts: tuple[str, ...]
    prompt_chars: int = 0  # how much of parts[0] is the prompt (excluded with include_prompt=False)
    pool_last_copy: bool = False  # echo: pool over the last copy of the input only

    @classmethod
    def build(cls, prompt: str = "", method_template: str | None = None, suffix: str = "") -> Template:
        """``prompt`` goes before the input and ``suffix`` after it (a chat wrapper's end);
        ``method_template`` (a conversion's, with "{text}" once or twice) goes between them."""
        parts = (method_template or "{text}").split("{text}")
        return cls(
            parts=(prompt + parts[0], *parts[1:-1], parts[-1] + suffix),
            prompt_chars=len(prompt),
            pool_last_copy=len(parts) > 2,
        )

    @property
    def prompt(self) -> str:
        return self.parts[0][: self.prompt_chars]

    @property
    def copies(self) -> int:
        return len(self.parts) - 1

    def render(self, text: str) -> tuple[str, list[int], list[int]]:
        """The full string, region start offsets, and each region's id.

        Regions alternate literal (even ids) and input copy (odd ids).
        """
        pieces: list[str] = []
        starts: list[int] = []
        offset = 0
        for i, part in enumerate(self.parts):
            for piece in (part, text) if i < self.copies else (part,):
                starts.append(offset)
                pieces.append(piece)
                offset += len(piece)
        return "".join(pieces), starts, list(range(len(starts)))


@dataclass(frozen=True)
class EncodedInput:
    """One sequence ready for the model; chunked inputs give several per text."""

    ids: list[int]
    pool_start: int
    pool_end: int
    text_tokens: int  # input tokens kept (weights chunk averaging)
    source: int  # index of the caller's text


class InputEncoder:
    """Turns texts into :class:`EncodedInput` following a model's settings."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        *,
        append_eos: bool,
        exclude_prompt: bool,
        prepend_bos: bool = False,
        tokenizer_appends_special: bool = False,
        prompt_token_skip: bool = False,
        rstrip_input: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        # never a second end token: a tokenizer that appends one itself (Qwen3-Embedding) gets none
        self.append_eos = append_eos and not tokenizer_appends_special
        self.tokenizer_appends_special = tokenizer_appends_special
        self.prepend_bos = prepend_bos
        self.exclude_prompt = exclude_prompt
        self.prompt_token_skip = prompt_token_skip
        self.rstrip_input = rstrip_input
        self.eos_id: int | None = tokenizer.eos_token_id
        self.bos_id: int | None = tokenizer.bos_token_id
        if append_eos and self.eos_id is None:
            raise InvalidInputError("append_eos is set but the tokenizer has no eos_token_id")
        if prepend_bos and self.bos_id is None:
            raise InvalidInputError("prepend_bos is set but the tokenizer has no bos_token_id")

    def encode(
        self,
        texts: Sequence[str],
        template: Template,
        *,
        truncation: str = "end",
        chunked: bool = False,
        first_index: int = 0,
    ) -> list[EncodedInput]:
        if truncation not in TRUNCATIONS:
            raise InvalidInputError(
                f"unknown truncation {truncation!r}; choose one of {', '.join(TRUNCATIONS)}",
                field="truncation",
            )
        rendered = [template.render(t.rstrip() if self.rstrip_input else t) for t in texts]
        batch = self.tokenizer(
            [r[0] for r in rendered],
            add_special_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_attention_mask=False,
            verbose=False,  # no "longer than 512" warning: _fit cuts or chunks to the model's own limit
        )
        out: list[EncodedInput] = []
        for i, (_, region_starts, _) in enumerate(rendered):
            regions = self._regions(
                batch["input_ids"][i],
                batch["offset_mapping"][i],
                batch["special_tokens_mask"][i],
                region_starts,
            )
            out.extend(
                self._fit(batch["input_ids"][i], regions, template, first_index + i, truncation, chunked)
            )
        return out

    @staticmethod
    def _regions(
        ids: list[int], offsets: list[tuple[int, int]], special: list[int], region_starts: list[int]
    ) -> list[int]:
        regions = []
        for (start, end), is_special in zip(offsets, special, strict=True):
            if is_special:
                regions.append(_SPECIAL)
                continue
            # a token belongs to the region holding its last character
            char = max(start, end - 1)
            regions.append(bisect.bisect_right(region_starts, char) - 1)
        return regions

    def _fit(
        self,
        ids: list[int],
        regions: list[int],
        template: Template,
        index: int,
        truncation: str,
        chunked: bool,
    ) -> list[EncodedInput]:
        copy_regions = [2 * c + 1 for c in range(template.copies)]
        copy_tokens = {r: [i for i, reg in enumerate(regions) if reg == r] for r in copy_regions}
        needs_eos = self.append_eos and (not ids or ids[-1] != self.eos_id)
        needs_bos = self.prepend_bos and (not ids or ids[0] != self.bos_id)
        fixed = len(ids) - sum(len(v) for v in copy_tokens.values()) + int(needs_eos) + int(needs_bos)
        budget = (self.max_length - fixed) // max(template.copies, 1)
        longest = max((len(v) for v in copy_tokens.values()), default=0)
        if budget < 1 and longest > 0:
            raise InvalidInputError(
                f"input {index}: the prompt, instruction and template alone take {fixed} tokens, "
                f"leaving no room under the model's limit of {self.max_length}",
                field="inputs",
            )

        if longest <= budget:
            windows = [(0, longest)]
        elif chunked:
            windows = [(s, min(s + budget, longest)) for s in range(0, longest, budget)]
        elif truncation == "none":
            raise TextTooLongError(index, len(ids) + int(needs_eos) + int(needs_bos), self.max_length)
        elif truncation == "end":
            windows = [(0, budget)]
        else:
            windows = [(longest - budget, longest)]

        # the sequence as runs of one region each (a copy of the input is one contiguous run):
        # a window is then assembled from slices, in time linear in its own length
        runs: list[tuple[int, int, int]] = []  # (region, start, stop)
        for i, region in enumerate(regions):
            if runs and runs[-1][0] == region:
                runs[-1] = (region, runs[-1][1], i + 1)
            else:
                runs.append((region, i, i + 1))
        encoded = []
        for lo, hi in windows:
            new_ids, new_regions = [], []
            for region, start, stop in runs:
                if region in copy_tokens:
                    # copies can tokenize to slightly different lengths: anchor "start" at each one's end
                    n = stop - start
                    shift = n - longest if truncation == "start" and not chunked else 0
                    a, b = max(lo + shift, 0), max(hi + shift, 0)
                    start, stop = start + min(a, n), start + min(b, n)
                new_ids.extend(ids[start:stop])
                new_regions.extend(regions[start:stop])
            if needs_eos:
                new_ids.append(self.eos_id)  # type: ignore[arg-type]
                new_regions.append(_SPECIAL)
            if needs_bos:
                new_ids.insert(0, self.bos_id)  # type: ignore[arg-type]
                new_regions.insert(0, _SPECIAL)
            if not new_ids:
                raise InvalidInputError(
                    f"input {index} is empty after tokenization and the model adds no special tokens",
                    field="inputs",
                )
            start, end = self._pool_span(new_regions, template, new_ids)
            text_tokens = sum(1 for r in new_regions if r == copy_regions[-1]) if copy_regions else 0
            encoded.append(EncodedInput(new_ids, start, end, text_tokens, index))
        return encoded

    @functools.lru_cache(maxsize=64)  # noqa: B019 - few prompts per model, encoder lives as long
    def _prompt_tokens(self, prompt: str) -> int:
        encoded = self.tokenizer(prompt, add_special_tokens=True, return_special_tokens_mask=True)
        count = len(encoded["input_ids"])
        if self.tokenizer_appends_special and count and encoded["special_tokens_mask"][-1]:
            count -= 1  # an end token the tokenizer appends is not part of the prompt's prefix
        return count

    def _pool_span(self, regions: list[int], template: Template, ids: list[int]) -> tuple[int, int]:
        if template.pool_last_copy:
            last_copy = 2 * template.copies - 1
            where = [i for i, r in enumerate(regions) if r == last_copy]
            if where:
                return where[0], where[-1] + 1
            return 0, len(ids)
        if self.prompt_token_skip and template.prompt_chars > 0:
            # GritLM's library: skip as many leading positions as the prompt alone tokenizes to,
            # its BOS included
            skip = self._prompt_tokens(template.prompt)
            return min(skip, len(ids) - 1), len(ids)
        if self.exclude_prompt and template.prompt_chars > 0:
            # like sentence-transformers: skip the leading special tokens and the prompt's tokens
            first_other = next(
                (i for i, r in enumerate(regions) if r not in (_SPECIAL, 0)),
                len(ids),
            )
            if first_other < len(ids):
                return first_other, len(ids)
        return 0, len(ids)
