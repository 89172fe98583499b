"""One sync and one lazily made async gRPC client per integration object."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from embedsvc.client import AsyncEmbedClient, EmbedClient


@dataclass
class ClientPair:
    target: str
    api_key: str | None = None
    tls: bool = False
    timeout: float | None = None
    _sync: EmbedClient | None = None
    _async: dict[int, AsyncEmbedClient] = field(default_factory=dict)

    def sync(self) -> EmbedClient:
        if self._sync is None:
            self._sync = EmbedClient(self.target, self.api_key, tls=self.tls, timeout=self.timeout)
        return self._sync

    def aio(self) -> AsyncEmbedClient:
        # an asyncio channel belongs to the loop it was made on: one per running loop
        loop = id(asyncio.get_running_loop())
        if loop not in self._async:
            self._async[loop] = AsyncEmbedClient(
                self.target, self.api_key, tls=self.tls, timeout=self.timeout
            )
        return self._async[loop]

    def options(self, **values: Any) -> dict[str, Any]:
        return {k: v for k, v in values.items() if v is not None}
