"""Closed-loop load for the benchmarks: N client threads, k texts per request, until the corpus is done."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np


class TextEmbedder(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray: ...

    def close(self) -> None: ...


def closed_loop(
    connect: Callable[[], TextEmbedder], texts: list[str], clients: int, per_request: int
) -> tuple[np.ndarray, float, list[float]]:
    """Vectors in corpus order, wall seconds, and each request's seconds; one connection per client."""
    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    out: list[np.ndarray | None] = [None] * len(chunks)
    latencies: list[float] = []
    lock = threading.Lock()
    cursor = iter(range(len(chunks)))
    errors: list[BaseException] = []

    def worker() -> None:
        client = connect()
        try:
            client.embed(["warm"])
            while True:
                with lock:
                    k = next(cursor, None)
                if k is None:
                    return
                started = time.perf_counter()
                out[k] = client.embed(chunks[k])
                with lock:
                    latencies.append(time.perf_counter() - started)
        except BaseException as exc:  # reported by the caller, not lost in a thread
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return np.concatenate(out), elapsed, latencies  # type: ignore[arg-type]
