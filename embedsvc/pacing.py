"""How a client slows to what the server takes: an AIMD window on requests in flight, and when (and
whether) to retry a refused or failed request.

The server refuses work it cannot queue with RESOURCE_EXHAUSTED and says how long to wait in the
trailing metadata key ``retry-after-ms`` (decimal milliseconds). A refusal halves the window of
requests in flight (multiplicative decrease, never below one); each success widens it by about one
request per window's worth of successes (additive increase, up to the ceiling). A refused request
waits the server's hint (or an exponential backoff when there is none), with jitter so that callers
refused together do not come back together, and is sent again until the caller's deadline.
UNAVAILABLE is retried a few times, and only for calls that are safe to repeat (idempotent).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

RETRY_AFTER_KEY = "retry-after-ms"
FIRST_BACKOFF = 0.1  # seconds before the first retry when the server gives no hint
MAX_BACKOFF = 5.0
UNAVAILABLE_RETRIES = 4  # about 1.5 s of backoff in all, more when the server gives a hint
# gRPC's own message-size refusals are RESOURCE_EXHAUSTED too, but no retry makes a message smaller
_PERMANENT = ("larger than max", "message too large")
_UNREACHABLE = ("failed to connect to all addresses", "connections to all backends failing")


def retry_after(trailing: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """The server's hint, in seconds, from trailing metadata; None when absent or unreadable."""
    for key, value in trailing or ():
        if key == RETRY_AFTER_KEY:
            try:
                ms = float(value.decode() if isinstance(value, bytes) else value)
            except ValueError:
                return None
            return ms / 1000 if ms >= 0 else None
    return None


def retryable(code: str, details: str, *, idempotent: bool, attempt: int) -> bool:
    """Whether a failure with this status (its name) may be sent again after try ``attempt`` (from 0).
    Refusals for load are retried until the deadline; UNAVAILABLE only a few times (a replica that
    drains or restarts), so that a server that is not there at all is said at once, not after the
    whole timeout."""
    if code == "RESOURCE_EXHAUSTED":
        return not any(p in details.lower() for p in _PERMANENT)
    if code != "UNAVAILABLE" or not idempotent or attempt >= UNAVAILABLE_RETRIES:
        return False
    # no server of the target can be reached at all (gRPC has retried the connection already): say so
    return not any(p in details.lower() for p in _UNREACHABLE)


def backoff(attempt: int, hint: float | None) -> float:
    """Seconds to wait before try ``attempt + 1`` (attempt counts from 0): the server's hint plus up
    to a quarter more, else "full jitter" over an exponential ceiling."""
    if hint is not None:
        return hint * (1 + random.random() / 4)
    return random.uniform(FIRST_BACKOFF / 2, min(MAX_BACKOFF, FIRST_BACKOFF * 2**attempt))


class Window:
    """An AIMD limit on requests in flight, shared by every call of one client."""

    def __init__(self, ceiling: int) -> None:
        if ceiling < 1:
            raise ValueError(f"the in-flight ceiling must be at least 1, got {ceiling}")
        self.ceiling = ceiling
        self.size = float(ceiling)
        self.in_flight = 0
        self._changed = asyncio.Condition()

    @property
    def limit(self) -> int:
        return max(1, int(self.size))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
        try:
            yield
        finally:
            async with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()

    def succeeded(self) -> None:
        self.size = min(float(self.ceiling), self.size + 1 / self.limit)

    def refused(self) -> None:
        # halve what was really in flight (the window may sit far above it)
        self.size = max(1.0, min(self.size, float(self.in_flight)) / 2)
