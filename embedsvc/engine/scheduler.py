"""Dynamic batching across concurrent callers of one model.

Callers ``submit`` already-tokenized sequences; one worker task per model
gathers sequences from the queue (across requests, oldest first) into
token-budget batches and runs each forward pass on a dedicated thread, off the
event loop. A big request is thus split into batches by the server, and small
concurrent ones share a batch. The queue is bounded in requests and tokens;
cancelled or expired requests leave it and their unstarted work is skipped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from embedsvc.engine.inputs import EncodedInput
from embedsvc.errors import EmbedsvcError, OverloadedError, UnavailableError


class DeadlineExceededError(EmbedsvcError, TimeoutError):
    """The request's deadline passed before its work could start (maps to DEADLINE_EXCEEDED)."""


@dataclass
class _Pending:
    seqs: Sequence[EncodedInput]
    future: asyncio.Future[torch.Tensor]
    deadline: float | None
    enqueued_at: float
    results: list[torch.Tensor | None] = field(default_factory=list)
    next_seq: int = 0
    done: int = 0
    started_at: float | None = None

    @property
    def remaining_tokens(self) -> int:
        return sum(len(s.ids) for s in self.seqs[self.next_seq :])


@dataclass
class SchedulerStats:
    batches: int = 0
    forwarded_sequences: int = 0
    skipped_sequences: int = 0
    rejected_requests: int = 0


@dataclass(frozen=True)
class BatchRecord:
    """What one forward pass did, for metrics."""

    sequences: int
    tokens: int
    seconds: float


class BatchScheduler:
    def __init__(
        self,
        forward: Callable[[Sequence[EncodedInput]], torch.Tensor],
        *,
        name: str,
        token_budget: int,
        max_batch_size: int,
        max_queue_requests: int,
        max_queue_tokens: int,
        batch_wait_s: float = 0.002,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        self._forward = forward
        self.name = name
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.max_queue_requests = max_queue_requests
        self.max_queue_tokens = max_queue_tokens
        self.batch_wait_s = batch_wait_s
        self._on_batch = on_batch
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_tokens = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"forward-{name}")
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._contended = False
        self._forward_running = False
        self.stats = SchedulerStats()

    # ------------------------------------------------------------------ api
    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"scheduler-{self.name}")

    async def submit(self, seqs: Sequence[EncodedInput], *, timeout: float | None = None) -> torch.Tensor:
        """Pooled vectors ``[len(seqs), d]`` in order; raises OverloadedError when the queue is full."""
        if self._closed:
            raise UnavailableError(f"model {self.name} is shutting down")
        loop = asyncio.get_running_loop()
        if not seqs:
            return torch.empty((0, 0))
        tokens = sum(len(s.ids) for s in seqs)
        if len(self._queue) >= self.max_queue_requests:
            self.stats.rejected_requests += 1
            raise OverloadedError(
                f"model {self.name} has {len(self._queue)} requests queued, the limit "
                f"(max_queue_requests={self.max_queue_requests}); retry with backoff"
            )
        if self._queued_tokens + tokens > self.max_queue_tokens and self._queue:
            self.stats.rejected_requests += 1
            raise OverloadedError(
                f"model {self.name} has {self._queued_tokens} tokens queued; this request's {tokens} "
                f"would pass the limit (max_queue_tokens={self.max_queue_tokens}); "
                "retry with backoff or send less"
            )
        now = loop.time()
        pending = _Pending(
            seqs=seqs,
            future=loop.create_future(),
            deadline=None if timeout is None else now + timeout,
            enqueued_at=now,
            results=[None] * len(seqs),
        )
        self._queue.append(pending)
        self._queued_tokens += tokens
        if self._forward_running or len(self._queue) > 1:
            self._contended = True
        self._wakeup.set()
        try:
            return await pending.future
        finally:
            if not pending.future.done():
                pending.future.cancel()  # our caller went away: the worker skips what is left

    async def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(UnavailableError(f"model {self.name} is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --------------------------------------------------------------- worker
    def _drop(self, pending: _Pending) -> None:
        self.stats.skipped_sequences += len(pending.seqs) - pending.next_seq
        self._queued_tokens -= pending.remaining_tokens
        pending.next_seq = len(pending.seqs)

    def _take_batch(self, now: float) -> list[tuple[_Pending, int]]:
        batch: list[tuple[_Pending, int]] = []
        tokens = 0
        for pending in list(self._queue):
            if pending.future.done():  # cancelled by its caller
                self._drop(pending)
            elif pending.deadline is not None and now >= pending.deadline and pending.next_seq == 0:
                self._drop(pending)
                pending.future.set_exception(
                    DeadlineExceededError(
                        f"deadline passed after {now - pending.enqueued_at:.3f}s in the queue"
                    )
                )
            while pending.next_seq < len(pending.seqs) and len(batch) < self.max_batch_size:
                n = len(pending.seqs[pending.next_seq].ids)
                if batch and tokens + n > self.token_budget:
                    break
                if pending.started_at is None:
                    pending.started_at = now
                batch.append((pending, pending.next_seq))
                pending.next_seq += 1
                tokens += n
                self._queued_tokens -= n
            if pending.next_seq >= len(pending.seqs):
                self._queue.remove(pending)
            if len(batch) >= self.max_batch_size or tokens >= self.token_budget:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            # wait for company only when callers overlapped recently (a request arrived while a forward ran):
            # one caller at a time, however fast, never waits
            if self._contended and self.batch_wait_s > 0 and self._queued_tokens < self.token_budget:
                await asyncio.sleep(self.batch_wait_s)  # let concurrent callers join this batch
            self._contended = False
            batch = self._take_batch(loop.time())
            if not self._queue:
                self._wakeup.clear()
            if not batch:
                continue
            seqs = [p.seqs[i] for p, i in batch]
            started = time.perf_counter()
            self._forward_running = True
            try:
                pooled = await loop.run_in_executor(self._executor, self._forward, seqs)
            except Exception as exc:  # a failed forward fails its requests, never the worker
                self._forward_running = False
                for pending in {id(p): p for p, _ in batch}.values():
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                    self._drop(pending)
                    if pending in self._queue:
                        self._queue.remove(pending)
                continue
            self._forward_running = False
            elapsed = time.perf_counter() - started
            self.stats.batches += 1
            self.stats.forwarded_sequences += len(seqs)
            if self._on_batch is not None:
                self._on_batch(BatchRecord(len(seqs), sum(len(s.ids) for s in seqs), elapsed))
            for row, (pending, index) in enumerate(batch):
                pending.results[index] = pooled[row]
                pending.done += 1
                if pending.done == len(pending.seqs) and not pending.future.done():
                    pending.future.set_result(torch.stack(pending.results))  # type: ignore[arg-type]
