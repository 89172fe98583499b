"""Token-window chunking of long documents, with overlap, cut at token boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embedsvc.errors import InvalidInputError


@dataclass(frozen=True)
class Chunk:
    text: str
    index: int
    char_start: int
    char_end: int
    tokens: int


class Chunker:
    def __init__(self, tokenizer: Any, chunk_tokens: int | None, overlap: int = 0) -> None:
        if chunk_tokens is not None and chunk_tokens < 1:
            raise InvalidInputError("--chunk-tokens must be at least 1")
        if chunk_tokens is not None and not 0 <= overlap < chunk_tokens:
            raise InvalidInputError("--chunk-overlap must be at least 0 and smaller than --chunk-tokens")
        self.tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.overlap = overlap

    def count(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text.split())
        # verbose=False: a text longer than the tokenizer's model_max_length is expected here (it is
        # counted, and chunked or reported as truncated), not a warning printed into the progress bar
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def text_limit(self, max_length: int | None) -> int | None:
        """Text tokens a model with ``max_length`` keeps of one input (its special tokens take the
        rest); None where it cannot be told (no limit known, or word counts without a tokenizer)."""
        if max_length is None or self.tokenizer is None:
            return None
        special = getattr(self.tokenizer, "num_special_tokens_to_add", None)
        return max_length - (special(pair=False) if special is not None else 0)

    def split(self, text: str) -> list[Chunk]:
        if self.chunk_tokens is None:
            return [Chunk(text, 0, 0, len(text), self.count(text))]
        if self.tokenizer is None:
            raise InvalidInputError("chunking needs a tokenizer")
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)[
            "offset_mapping"
        ]
        if len(offsets) <= self.chunk_tokens:
            return [Chunk(text, 0, 0, len(text), len(offsets))]
        chunks = []
        step = self.chunk_tokens - self.overlap
        for index, lo in enumerate(range(0, len(offsets), step)):
            window = offsets[lo : lo + self.chunk_tokens]
            start, end = window[0][0], window[-1][1]
            chunks.append(Chunk(text[start:end], index, start, end, len(window)))
            if lo + self.chunk_tokens >= len(offsets):
                break
        return chunks
