"""CPU forward passes as whole batches side by side, one intra-op thread each.

torch's intra-op parallelism splits every operator across threads that meet at a barrier after it. On
a machine whose cores are shared, a descheduled thread holds the others at every barrier: measured on
the 2-core VM with other work running (load average 4-5), a 1-layer model's forward over 3 000 texts
took 2.0 s on two intra-op threads and 0.16 s on one; all-MiniLM-L6-v2's 300 texts 10.0 s against
4.7 s; one short query 112 ms against 36 ms (docs/performance.md, "Batches side by side on CPU").
Batches that run side by side on their own threads share no barrier, so a core taken away slows the
work in proportion instead of stalling it, and a small model stops paying a thread wake-up per
operator.

``cpu_parallelism = "operators"`` keeps torch's intra-op threads (one batch at a time): the choice for
one long sequence on many cores, which batches cannot split.
"""

from __future__ import annotations

import functools
import heapq
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

# a forward smaller than workers x this many tokens is not split to feed every worker
MIN_SPLIT_TOKENS = 256

T = TypeVar("T")
R = TypeVar("R")


class ForwardWorkers:
    """``workers`` threads whose torch operators run on one thread each (OpenMP's thread count is
    per thread; the process-wide default is put back for every other thread)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="embedsvc-forward")
        started = threading.Barrier(workers + 1)
        default = torch.get_num_threads()

        def single_thread() -> None:
            torch.get_num_threads()  # torch's lazy per-thread set-up first, or it would undo the next line
            torch.set_num_threads(1)
            started.wait()

        for _ in range(workers):  # every thread started (and set to one thread) before going on
            self._pool.submit(single_thread)
        started.wait()
        # set_num_threads also wrote the process-wide default that threads created later start from
        torch.set_num_threads(default)

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``fn`` over ``items`` on the workers, results in order; the first error is raised."""
        return list(self._pool.map(fn, items))


@functools.cache
def forward_workers(workers: int) -> ForwardWorkers:
    """One pool per size for the process: every model served here shares the same cores."""
    return ForwardWorkers(workers)


def split_for_workers(
    batches: list[list[int]], lengths: Sequence[int], workers: int, *, max_batch_size: int, packed: bool
) -> list[list[int]]:
    """``batches`` again as a multiple of ``workers`` batches of about equal tokens, so every worker
    is busy in every round: the same number of rounds (``batches`` already respect the token budget),
    each batch at most one sequence over its even share. Longest first into the lightest batch
    (sequences of one length stay back to back). Unchanged where splitting does not pay: padded
    batches (their cost is their longest row), one worker, or too few tokens to share."""
    total = sum(lengths)
    if not packed or workers == 1 or total < workers * MIN_SPLIT_TOKENS:
        return batches
    bins = workers * math.ceil(len(batches) / workers)
    loads = [(0, k) for k in range(bins)]
    split: list[list[int]] = [[] for _ in range(bins)]
    for i in sorted((i for batch in batches for i in batch), key=lambda i: -lengths[i]):
        tokens, k = heapq.heappop(loads)
        split[k].append(i)
        heapq.heappush(loads, (tokens + lengths[i], k))
    split = [b for b in split if b]
    if any(len(b) > max_batch_size for b in split):
        return batches
    return split
