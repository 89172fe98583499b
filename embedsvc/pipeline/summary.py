"""What an index build did: counts, speed, and what was cut to the model's limit and how not to cut it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Summary", "summary_dict"]


@dataclass
class Summary:
    documents: int = 0
    chunks: int = 0
    tokens: int = 0
    rejected: int = 0
    seconds: float = 0.0
    documents_this_run: int = 0
    tokens_this_run: int = 0
    rejects_file: str | None = None
    checkpoint_file: str | None = None
    truncated: int = 0  # documents (or chunks' documents) longer than the model reads, cut to max_tokens
    max_tokens: int | None = None  # text tokens the model reads of one input (None: not known)
    max_length: int | None = None  # the model's limit, special tokens included
    chunk_tokens: int | None = None

    @property
    def documents_per_s(self) -> float:
        return self.documents_this_run / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_this_run / self.seconds if self.seconds else 0.0

    def report(self) -> str:
        return (
            f"indexed {self.documents} documents ({self.chunks} chunks, {self.tokens} tokens), "
            f"{self.rejected} rejected{f' (see {self.rejects_file})' if self.rejected else ''}; this run: "
            f"{self.documents_this_run} documents in {self.seconds:.1f}s = "
            f"{self.documents_per_s:.1f} docs/s, "
            f"{self.tokens_per_s:.0f} tokens/s"
        ) + self.truncation_note()

    def truncation_note(self) -> str:
        """What was cut, to what limit, and how not to cut it ("" when nothing was)."""
        if not self.truncated:
            return ""
        text = self.max_tokens or 0
        if self.chunk_tokens:
            subject, fix = "had chunks longer than", f"--chunk-tokens under {text} (now {self.chunk_tokens})"
        else:
            subject, fix = (
                "were longer than",
                f"--chunk-tokens {max(1, text * 4 // 5)} --chunk-overlap {text // 6}",
            )
        return (
            f"\n{self.truncated} documents {subject} the model reads ({self.max_length} tokens, "
            f"{text} of them text) and were cut to that: only their beginning is indexed; rerun with {fix} "
            "--restart to index them whole, in pieces"
        )


def summary_dict(summary: Summary) -> dict[str, Any]:
    return {
        **asdict(summary),
        "documents_per_s": summary.documents_per_s,
        "tokens_per_s": summary.tokens_per_s,
    }
