"""Progress of an index build: a tqdm bar on a terminal, a log line every 10 seconds otherwise."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    def __init__(self, enabled: bool | None, total: int | None, already: int) -> None:
        self.bar = None
        self.started = time.monotonic()
        self.last_log = self.started
        self.total = total
        self.done = already
        self.tokens = 0
        if enabled if enabled is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=already, unit="doc", dynamic_ncols=True)

    def update(self, documents: int, tokens: int) -> None:
        self.done += documents
        self.tokens += tokens
        elapsed = max(time.monotonic() - self.started, 1e-9)
        if self.bar is not None:
            self.bar.update(documents)
            self.bar.set_postfix(tokens_per_s=f"{self.tokens / elapsed:.0f}")
        elif time.monotonic() - self.last_log >= 10:
            self.last_log = time.monotonic()
            eta = ""
            if self.total:
                rate = max(self.done, 1) / elapsed
                eta = f", ETA {max(self.total - self.done, 0) / rate:.0f}s"
            print(
                f"embedsvc index build: {self.done} documents, {self.tokens / elapsed:.0f} tokens/s{eta}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
