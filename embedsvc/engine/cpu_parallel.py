"""CPU forward passes as whole batches side by side, one intra-op thread each.

torch's intra-op parallelism splits every operator across threads that meet at a barrier after it. On
a machine whose cores are shared, a descheduled thread holds the others at every barrier: measured on
the 2-core VM with other work running (load average 4-5), a 1-layer model's forward over 3 000 texts
took 2.0 s on two intra-op threads and 0.16 s on one; all-MiniLM-L6-v2's 300 texts 10.0 s against
4.7 s; one short query 112 ms against 36 ms (docs/performance.md, "Threads"). Batches that run side by
side on their own threads share no barrier, so a core taken away slows the work in proportion instead
of stalling it, and a small model stops paying a thread wake-up per operator.

``cpu_parallelism = "operators"`` keeps torch's intra-op threads (one batch at a time): the choice for
one long sequence on many cores, which batches cannot split.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from embedsvc.engine.batching import plan_batches

# a forward smaller than workers x this many tokens is not split further to feed every worker
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
        if len(items) == 1:
            return [self._pool.submit(fn, items[0]).result()]
        return list(self._pool.map(fn, items))


@functools.cache
def forward_workers(workers: int) -> ForwardWorkers:
    """One pool per size for the process: every model served here shares the same cores."""
    return ForwardWorkers(workers)


def split_for_workers(
    batches: list[list[int]], lengths: Sequence[int], workers: int, *, max_batch_size: int, packed: bool
) -> list[list[int]]:
    """``batches`` again in at least ``workers`` pieces where the tokens allow (longest first), so a
    forward of one or few batches still uses every worker."""
    if len(batches) >= workers:
        return batches
    total = sum(lengths)
    if total < workers * MIN_SPLIT_TOKENS:
        return batches
    return plan_batches(
        lengths, token_budget=math.ceil(total / workers), max_batch_size=max_batch_size, packed=packed
    )
