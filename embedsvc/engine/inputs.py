"""From a text to token ids: prompts, conversion templates, truncation, EOS.

A :class:`Template` is literal text around one or more copies of the input
(``prompt + "{text}"``; echo embeddings have two copies). The whole string is
tokenized once; each token is assigned to the part of the template its last
character falls in, so truncation can remove tokens of the *input* only, never
of the prompt, the template or the special tokens.

Two paths give the same ids (tests/test_inputs_fast.py pins it):

* :meth:`InputEncoder.encode` (the one used): the Rust tokenizer called directly,
  no offsets for the plain template (text + the tokenizer's special tokens), a
  vectorized region pass where a template needs one, and a text far longer than
  the model keeps cut at a character bound before tokenizing (verified after: the
  cut must leave ``_SLACK`` tokens beyond what is kept, else the text is tokenized
  again with four times the bound, at worst whole);
* :meth:`InputEncoder.encode_reference`: the original per-token walk, kept as the
  specification the fast path is tested against.
"""

from __future__ import annotations

import bisect
import copy
import ctypes
import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedsvc.errors import InvalidInputError, TextTooLongError

TRUNCATIONS = ("end", "start", "none")
_SPECIAL = -1  # region id of special tokens added by the tokenizer
# a cut text must tokenize to this many input tokens beyond what is kept: what a cut changes (the
# last word, a merge across the cut) stays out of the kept tokens
_SLACK = 16
# characters allowed per kept token before a text is cut (English runs ~4-5 per WordPiece/BPE token);
# a text that keeps fewer tokens in its cut is tokenized again with four times as many
_CHARS_PER_TOKEN = 8
# how far back a cut looks for whitespace, so that it falls between words
_SNAP = 256
# characters a cut text keeps of its other end: where it meets the template's next part
_EDGE = 64
# a chunked text longer than this is tokenized in pieces of about this size (memory), each split
# checked on _JUNCTION characters either side
_SEGMENT_CHARS = 256 * 1024
_JUNCTION = 512
# sequences of this many tokens or more (about 2 MiB of text) and the heap they freed is handed back to
# the system afterwards (trim_heap): an 8 MiB text chunked otherwise left ~45 MiB resident here
TRIM_AFTER_TOKENS = 1 << 19


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
    # a text pair (cross-encoders): where the second text's tokens start (token type 1 from there on)
    second_start: int | None = None
    # outputs beyond the pooled vector this sequence asks for ("sparse", "multi_vector"; engine/outputs.py)
    extra_outputs: tuple[str, ...] = ()
    # ColBERT query expansion: only the first ``attended`` tokens are attended to (None: all of them)
    attended: int | None = None
    query: bool = False  # ColBERT: queries keep every token's vector, documents drop the skiplist's


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

        self._backend = _own_backend(tokenizer)

    # ------------------------------------------------------------------ fast path
    def encode(
        self,
        texts: Sequence[str],
        template: Template,
        *,
        truncation: str = "end",
        chunked: bool = False,
        first_index: int = 0,
    ) -> list[EncodedInput]:
        """The texts' sequences, in order (a chunked text gives several)."""
        if truncation not in TRUNCATIONS:
            raise InvalidInputError(
                f"unknown truncation {truncation!r}; choose one of {', '.join(TRUNCATIONS)}",
                field="truncation",
            )
        if self._backend is None:  # not a fast (Rust) tokenizer
            return self.encode_reference(
                texts, template, truncation=truncation, chunked=chunked, first_index=first_index
            )
        items = [t.rstrip() for t in texts] if self.rstrip_input else list(texts)
        plain = template.parts == ("", "")
        results: list[list[EncodedInput] | None] = [None] * len(items)
        # only a text cut to the model's limit needs a bound; chunks and "none" need every token
        limit = (self.max_length + _SLACK) * _CHARS_PER_TOKEN if truncation != "none" and not chunked else 0
        todo = list(range(len(items)))
        if plain and chunked:
            # a very long text chunked: tokenized in pieces, so memory follows the piece, not the text
            for i in [i for i in todo if len(items[i]) > _SEGMENT_CHARS]:
                pieces_ids = self._segmented(items[i])
                if pieces_ids is not None:
                    ids, special = pieces_ids
                    results[i] = self._fit_plain(ids, special, first_index + i, truncation, chunked, False)
            if len(todo) != sum(r is None for r in results):
                trim_heap()  # the pieces' transient memory back to the system, not kept for the next
            todo = [i for i in todo if results[i] is None]
        while todo:
            pieces = [_cut(items[i], limit, truncation) for i in todo]
            retry = []
            if plain:
                encodings = self._backend.encode_batch_fast(pieces, add_special_tokens=True)
            else:
                encodings = self._backend.encode_batch(
                    [template.render(p)[0] for p in pieces], add_special_tokens=True
                )
            for i, piece, enc in zip(todo, pieces, encodings, strict=True):
                was_cut = len(piece) < len(items[i])
                index = first_index + i
                if plain and piece:
                    fitted = self._fit_plain(
                        enc.ids, enc.special_tokens_mask, index, truncation, chunked, was_cut
                    )
                elif plain:
                    fitted = self._fit_general_ids(
                        enc.ids, enc.special_tokens_mask, 2, index, truncation, chunked, was_cut
                    )
                else:
                    fitted = self._fit_general(enc, piece, template, index, truncation, chunked, was_cut)
                if fitted is None:
                    retry.append(i)
                results[i] = fitted
            todo, limit = retry, limit * 4
        return [e for fitted in results for e in fitted or ()]

    def _fit_plain(
        self,
        ids: list[int] | np.ndarray,
        special: list[int] | np.ndarray,
        index: int,
        truncation: str,
        chunked: bool,
        was_cut: bool,
    ) -> list[EncodedInput] | None:
        """Text + the tokenizer's special tokens: slices, no region per token. None: cut too short."""
        n = len(ids)
        lead = 0
        while lead < n and special[lead]:
            lead += 1
        trail = 0
        while trail < n - lead and special[n - 1 - trail]:
            trail += 1
        if lead + trail != sum(special):  # a special token inside the text: the general rule
            return self._fit_general_ids(
                _as_list(ids), _as_list(special), 1, index, truncation, chunked, was_cut
            )
        content = n - lead - trail
        needs_eos = self.append_eos and (n == 0 or int(ids[-1]) != self.eos_id)
        needs_bos = self.prepend_bos and (n == 0 or int(ids[0]) != self.bos_id)
        budget = self.max_length - (lead + trail + int(needs_eos) + int(needs_bos))
        if budget < 1 and content > 0:
            raise InvalidInputError(
                f"input {index}: the prompt, instruction and template alone take {self.max_length - budget} "
                f"tokens, leaving no room under the model's limit of {self.max_length}",
                field="inputs",
            )
        if was_cut and content < budget + _SLACK:
            return None
        if 0 < content <= budget:  # the common case: the tokenizer's ids as they are, no slicing
            whole = _as_list(ids)
            if needs_eos:
                whole.append(self.eos_id)  # type: ignore[arg-type]
            if needs_bos:
                whole.insert(0, self.bos_id)  # type: ignore[arg-type]
            return [EncodedInput(whole, 0, len(whole), content, index)]
        total = n + int(needs_eos) + int(needs_bos)
        windows = _windows(content, budget, truncation, chunked, index, total, self.max_length)
        head, tail = _as_list(ids[:lead]), _as_list(ids[n - trail :])
        encoded = []
        for lo, hi in windows:
            new_ids = head + _as_list(ids[lead + lo : lead + hi]) + tail
            if needs_eos:
                new_ids.append(self.eos_id)  # type: ignore[arg-type]
            if needs_bos:
                new_ids.insert(0, self.bos_id)  # type: ignore[arg-type]
            if not new_ids:
                raise InvalidInputError(
                    f"input {index} is empty after tokenization and the model adds no special tokens",
                    field="inputs",
                )
            encoded.append(EncodedInput(new_ids, 0, len(new_ids), hi - lo, index))
        return encoded

    def _segmented(self, text: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Ids and special-token mask of ``text`` with the tokenizer's special tokens, tokenized in
        pieces of about ``_SEGMENT_CHARS`` split at single spaces between words. Each split is
        verified: the text around it must tokenize to the same tokens whole as in two halves. None
        where no split point is found or one fails the check (then the text is tokenized whole)."""
        assert self._backend is not None
        splits = [0]
        while len(text) - splits[-1] > _SEGMENT_CHARS:
            at = _split_point(text, splits[-1] + _SEGMENT_CHARS)
            if at is None:
                return None
            splits.append(at)
        splits.append(len(text))
        for at in splits[1:-1]:
            window = text[at - _JUNCTION : at + _JUNCTION]
            whole, left, right = self._backend.encode_batch_fast(
                [window, window[:_JUNCTION], window[_JUNCTION:]], add_special_tokens=False
            )
            if whole.ids != left.ids + right.ids:
                return None
        parts = []
        for lo, hi in itertools.pairwise(splits):
            enc = self._backend.encode_batch_fast([text[lo:hi]], add_special_tokens=False)[0]
            parts.append(np.asarray(enc.ids, dtype=np.int64))
        # the special tokens the tokenizer puts around a text, taken from the first piece
        first = self._backend.encode_batch_fast([text[: splits[1]]], add_special_tokens=True)[0]
        mask = first.special_tokens_mask
        lead = next((k for k, m in enumerate(mask) if not m), len(mask))
        trail = len(mask) - lead - len(parts[0])
        if (
            trail < 0
            or any(mask[lead : len(mask) - trail])
            or first.ids[lead : len(mask) - trail] != parts[0].tolist()
        ):
            return None
        ids = np.concatenate(
            [
                np.asarray(first.ids[:lead], np.int64),
                *parts,
                np.asarray(first.ids[len(mask) - trail :], np.int64),
            ]
        )
        special = np.zeros(len(ids), dtype=np.int64)
        special[:lead] = 1
        special[len(ids) - trail :] = 1
        return ids, special

    def _fit_general_ids(
        self,
        ids: list[int],
        special: list[int],
        region: int,
        index: int,
        truncation: str,
        chunked: bool,
        was_cut: bool,
    ) -> list[EncodedInput] | None:
        # the plain template (no literal text): every non-special token is in one region, the input's
        # (an empty input's tokens fall in the empty literal after it, as the offsets rule says)
        regions = np.where(np.asarray(special, dtype=bool), _SPECIAL, region)
        return self._fit_arrays(
            np.asarray(ids, dtype=np.int64), regions, Template(("", "")), index, truncation, chunked, was_cut
        )

    def _fit_general(
        self,
        enc: Any,
        piece: str,
        template: Template,
        index: int,
        truncation: str,
        chunked: bool,
        was_cut: bool,
    ) -> list[EncodedInput] | None:
        _, region_starts, _ = template.render(piece)
        ids = np.asarray(enc.ids, dtype=np.int64)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        # a token belongs to the region holding its last character
        chars = np.maximum(offsets[:, 0], offsets[:, 1] - 1)
        regions = np.searchsorted(np.asarray(region_starts), chars, side="right") - 1
        regions[np.asarray(enc.special_tokens_mask, dtype=bool)] = _SPECIAL
        return self._fit_arrays(ids, regions, template, index, truncation, chunked, was_cut)

    def _fit_arrays(
        self,
        ids: np.ndarray,
        regions: np.ndarray,
        template: Template,
        index: int,
        truncation: str,
        chunked: bool,
        was_cut: bool,
    ) -> list[EncodedInput] | None:
        """:meth:`_fit` over arrays: the same windows, in whole-array operations."""
        n = len(ids)
        copies = template.copies
        is_copy = (regions >= 0) & (regions % 2 == 1)
        counts = np.bincount(regions[is_copy], minlength=2 * copies)[1::2] if copies else np.zeros(0, int)
        needs_eos = self.append_eos and (n == 0 or int(ids[-1]) != self.eos_id)
        needs_bos = self.prepend_bos and (n == 0 or int(ids[0]) != self.bos_id)
        fixed = n - int(is_copy.sum()) + int(needs_eos) + int(needs_bos)
        budget = (self.max_length - fixed) // max(copies, 1)
        longest = int(counts.max()) if len(counts) else 0
        if budget < 1 and longest > 0:
            raise InvalidInputError(
                f"input {index}: the prompt, instruction and template alone take {fixed} tokens, "
                f"leaving no room under the model's limit of {self.max_length}",
                field="inputs",
            )
        if was_cut and (not len(counts) or int(counts.min()) < budget + _SLACK):
            return None
        total = n + int(needs_eos) + int(needs_bos)
        windows = _windows(longest, budget, truncation, chunked, index, total, self.max_length)

        # runs of one region; a copy's window applies within each of its runs, as in _fit
        change = np.ones(n, dtype=bool)
        change[1:] = regions[1:] != regions[:-1]
        run_starts = np.flatnonzero(change)
        run_of = np.cumsum(change) - 1
        rank = np.arange(n) - run_starts[run_of]
        run_len = np.diff(np.append(run_starts, n))[run_of]
        shift = run_len - longest if truncation == "start" and not chunked else np.zeros(n, dtype=np.int64)
        last_copy = 2 * copies - 1
        encoded = []
        for lo, hi in windows:
            a = np.maximum(lo + shift, 0)
            b = np.maximum(hi + shift, 0)
            keep = ~is_copy | ((rank >= a) & (rank < b))
            new_ids = ids[keep].tolist()
            new_regions = regions[keep]
            if needs_eos:
                new_ids.append(self.eos_id)
                new_regions = np.append(new_regions, _SPECIAL)
            if needs_bos:
                new_ids.insert(0, self.bos_id)
                new_regions = np.insert(new_regions, 0, _SPECIAL)
            if not new_ids:
                raise InvalidInputError(
                    f"input {index} is empty after tokenization and the model adds no special tokens",
                    field="inputs",
                )
            start, end = self._pool_span_arrays(new_regions, template, len(new_ids))
            text_tokens = int((new_regions == last_copy).sum()) if copies else 0
            encoded.append(EncodedInput(new_ids, start, end, text_tokens, index))
        return encoded

    def _pool_span_arrays(self, regions: np.ndarray, template: Template, n: int) -> tuple[int, int]:
        """:meth:`_pool_span` over an array of regions."""
        if template.pool_last_copy:
            where = np.flatnonzero(regions == 2 * template.copies - 1)
            return (int(where[0]), int(where[-1]) + 1) if len(where) else (0, n)
        if self.prompt_token_skip and template.prompt_chars > 0:
            return min(self._prompt_tokens(template.prompt), n - 1), n
        if self.exclude_prompt and template.prompt_chars > 0:
            other = np.flatnonzero((regions != _SPECIAL) & (regions != 0))
            if len(other):
                return int(other[0]), n
        return 0, n

    # ------------------------------------------------------------- reference path

    def encode_reference(
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
        total = len(ids) + int(needs_eos) + int(needs_bos)
        windows = _windows(longest, budget, truncation, chunked, index, total, self.max_length)

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


def _windows(
    tokens: int, budget: int, truncation: str, chunked: bool, index: int, total: int, max_length: int
) -> list[tuple[int, int]]:
    """The ``[lo, hi)`` ranges of an input's ``tokens`` that its sequences keep: all when they fit
    ``budget``; else consecutive chunks (``chunked``), or the first / last ``budget`` tokens per
    ``truncation``. "none" refuses the input (``total``: the whole sequence's length)."""
    if tokens <= budget:
        return [(0, tokens)]
    if chunked:
        return [(s, min(s + budget, tokens)) for s in range(0, tokens, budget)]
    if truncation == "none":
        raise TextTooLongError(index, total, max_length)
    if truncation == "end":
        return [(0, budget)]
    return [(tokens - budget, tokens)]


def _own_backend(tokenizer: Any) -> Any:
    """A private copy of a fast tokenizer's Rust tokenizer, with no truncation or padding set (the
    transformers wrapper sets those on its own copy per call), or None for a slow tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    own = copy.deepcopy(backend)
    own.no_truncation()
    own.no_padding()
    own.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    return own


def _cut(text: str, limit: int, truncation: str) -> str:
    """``text`` with its middle left out: about ``limit`` characters on the side truncation keeps
    (ending between words where whitespace is near) and ``_EDGE`` characters of the other end, so
    the tokens where the input meets the template around it are the full text's. Unchanged when
    short enough or ``limit`` is 0."""
    if not limit or len(text) <= limit + _EDGE:
        return text
    if truncation == "start":
        at = len(text) - limit
        for k in range(at, min(at + _SNAP, len(text) - 1)):
            if text[k].isspace() and not text[k + 1].isspace():
                at = k + 1  # the kept part starts with a whole word
                break
        return text[:_EDGE] + text[at:]
    at = limit
    for k in range(limit, max(limit - _SNAP, 1), -1):
        if text[k].isspace() and not text[k - 1].isspace():
            at = k  # the kept part ends with a whole word
            break
    return text[:at] + text[-_EDGE:]


def _as_list(ids: list[int] | np.ndarray) -> list[int]:
    return ids.tolist() if isinstance(ids, np.ndarray) else ids


def _split_point(text: str, target: int) -> int | None:
    """A single space between two words at or before ``target`` (within ``_SNAP * 16`` characters)
    and at least ``_JUNCTION`` characters from either end; None if there is none."""
    for k in range(min(target, len(text) - _JUNCTION - 1), max(target - _SNAP * 16, _JUNCTION), -1):
        if text[k] == " " and not text[k - 1].isspace() and not text[k + 1].isspace():
            return k
    return None


@functools.cache
def _libc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc keeps it per thread arena otherwise)."""
    trim = _libc_trim()
    if trim is not None:
        trim(0)
