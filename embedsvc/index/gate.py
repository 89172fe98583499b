"""A write barrier per index, for a re-embed's last copy and swap.

Every write to an index passes ``writing(index)``; ``held(index)`` makes new writes wait (on the event
loop, holding no thread) and waits for the ones in flight to finish, so the holder sees the index still.
Writes are never refused for it: they go on when the hold ends, into whatever collection serves the index
then. Everything here runs on one event loop (the server's), so plain counters need no lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class WriteGates:
    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}
        self._released: dict[str, asyncio.Event] = {}  # set when the index's hold ends
        self._drained: dict[str, asyncio.Event] = {}  # set when a held index has no write in flight

    def held_now(self, index: str) -> bool:
        return index in self._released

    @asynccontextmanager
    async def writing(self, index: str) -> AsyncIterator[None]:
        """Around one write: waits while the index is held."""
        while (released := self._released.get(index)) is not None:
            await released.wait()
        self._in_flight[index] = self._in_flight.get(index, 0) + 1
        try:
            yield
        finally:
            left = self._in_flight[index] - 1
            if left:
                self._in_flight[index] = left
            else:
                del self._in_flight[index]
                if (drained := self._drained.get(index)) is not None:
                    drained.set()

    @asynccontextmanager
    async def held(self, index: str) -> AsyncIterator[None]:
        """New writes to ``index`` wait until this ends; entered once the writes in flight are done."""
        if index in self._released:
            raise RuntimeError(f"index {index!r} is held already")
        released, drained = asyncio.Event(), asyncio.Event()
        self._released[index], self._drained[index] = released, drained
        try:
            while self._in_flight.get(index):
                drained.clear()
                await drained.wait()
            yield
        finally:
            del self._released[index], self._drained[index]
            released.set()
