"""Dynamic batching across concurrent callers of one model, with admission and fair shares.

Callers ``submit`` already-tokenized sequences; one worker task per model gathers sequences from
the queue into token-budget batches and runs each forward pass on a dedicated thread, off the event
loop. A big request is split into batches by the server; small concurrent ones share a batch.

Overload is refused early and fairly:

* ``admit`` runs when a request *arrives*, before it is tokenized, with an estimate of its tokens.
  The queue is bounded in **seconds of work** on this machine (tokens / the measured forward
  throughput), so a refusal (RESOURCE_EXHAUSTED) comes in microseconds instead of after minutes
  in a queue. A caller (tenant: a connection or an API key) still under its fair share of the queue
  is admitted even when the queue is full, so one heavy caller cannot lock light ones out; a caller
  alone on the model is never refused by this bound (it would be refused for its own earlier work).
  Every refusal carries ``retry_after_s``: about how long until the request would fit.
* batches are filled round-robin across tenants, one sequence each in turn: a light caller's
  request rides in the next batch instead of waiting behind a flood.
* deadlines and cancellations drop a request's remaining work, started or not.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from embedsvc.engine.inputs import TRIM_AFTER_TOKENS, EncodedInput, trim_heap
from embedsvc.engine.outputs import join_rows
from embedsvc.errors import DeadlineExceededError, OverloadedError, UnavailableError

DEFAULT_TENANT = "-"
MIN_RETRY_AFTER_S = 0.05  # a retry hint below this would only invite a busy loop of refusals
MAX_RETRY_AFTER_S = 30.0
# after a request of TRIM_AFTER_TOKENS or more is answered: seconds until its freed heap is handed back
# (its handler drops the last references once the response is sent)
TRIM_DELAY_S = 0.5


@dataclass
class _Pending:
    seqs: Sequence[EncodedInput]
    future: asyncio.Future[Any]
    deadline: float | None
    enqueued_at: float
    tenant: str
    results: list[Any] = field(default_factory=list)  # rows of the forward's result (engine/outputs.py)
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
        # pooled vectors [n, d], or engine/outputs.Forwarded for models with sparse / multi-vector heads
        forward: Callable[[Sequence[EncodedInput]], Any],
        *,
        name: str,
        token_budget: int,
        max_batch_size: int,
        max_queue_requests: int,
        max_queue_tokens: int,
        max_queue_seconds: float = float("inf"),
        batch_wait_s: float = 0.002,
        tokens_per_second: float | None = None,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        self._forward = forward
        self.name = name
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.max_queue_requests = max_queue_requests
        self.max_queue_tokens = max_queue_tokens
        self.max_queue_seconds = max_queue_seconds
        self.batch_wait_s = batch_wait_s
        # forward throughput, tokens per second: measured at load, then a moving average of batches
        self.tokens_per_second = tokens_per_second or 1000.0
        self._on_batch = on_batch
        self._tenants: collections.OrderedDict[str, collections.deque[_Pending]] = collections.OrderedDict()
        self._queued_requests = 0
        self._queued_tokens = 0
        # admitted work (estimated tokens) per tenant: arrivals not yet finished, tokenizing included
        self._admitted: collections.Counter[str] = collections.Counter()
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
        return self._queued_requests

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def queued_seconds(self) -> float:
        """Estimated seconds of work admitted and not yet done."""
        return sum(self._admitted.values()) / self.tokens_per_second

    def _drain_seconds(self, tokens: int) -> float:
        """A retry hint: how long the model takes to work through ``tokens``, within sane bounds."""
        return min(max(tokens / self.tokens_per_second, MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"scheduler-{self.name}")

    @contextlib.contextmanager
    def admit(self, estimated_tokens: int, tenant: str = DEFAULT_TENANT) -> Iterator[None]:
        """Reserve room for a request before it is tokenized; OverloadedError (at once) if there is none.

        A tenant under its fair share (the queue bound divided among the tenants with work, at least
        one batch of ``token_budget`` tokens) is always admitted, and so is a tenant alone on the model
        (nobody else has work admitted): its own earlier requests are what it waits on, so it is
        queued, bounded by its deadline, never refused. Others
        are admitted only while the whole queue stays under ``max_queue_seconds``. A refusal says how
        long to wait: about the time the queue needs to drain to where this request fits."""
        if self._closed:
            raise UnavailableError(f"model {self.name} is shutting down")
        rate = self.tokens_per_second
        total = sum(self._admitted.values())
        others = [t for t, n in self._admitted.items() if n > 0 and t != tenant]
        # never less than one batch: a share smaller than the forward's unit starved a caller whose every
        # request was bigger than it while another tenant kept work queued (a 0.1 s queue, seen in CI)
        fair_share = max(self.max_queue_seconds / (len(others) + 1), self.token_budget / rate)
        own = (self._admitted[tenant] + estimated_tokens) / rate
        # an idle model takes any request, however big: the bound is on waiting, not on size
        over = (total + estimated_tokens) / rate - self.max_queue_seconds
        if others and over > 0 and own > fair_share:
            self.stats.rejected_requests += 1
            held = self._admitted[tenant] / rate
            raise OverloadedError(
                f"model {self.name} has about {total / rate:.1f}s of work queued (max_queue_seconds="
                f"{self.max_queue_seconds:g}) and this caller already holds {held:.1f}s of it; "
                "retry after the hinted delay, or send smaller requests",
                retry_after_s=min(max(over, MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S),
            )
        self._admitted[tenant] += estimated_tokens
        try:
            yield
        finally:
            self._admitted[tenant] -= estimated_tokens
            if self._admitted[tenant] <= 0:
                del self._admitted[tenant]

    async def submit(
        self, seqs: Sequence[EncodedInput], *, timeout: float | None = None, tenant: str = DEFAULT_TENANT
    ) -> Any:
        """Pooled vectors ``[len(seqs), d]`` in order (the forward's result type: a tensor, or a
        ``Forwarded`` with per-sequence outputs); raises OverloadedError when the queue is full."""
        if self._closed:
            raise UnavailableError(f"model {self.name} is shutting down")
        loop = asyncio.get_running_loop()
        if not seqs:
            return torch.empty((0, 0))
        tokens = sum(len(s.ids) for s in seqs)
        if self._queued_requests >= self.max_queue_requests:
            self.stats.rejected_requests += 1
            raise OverloadedError(
                f"model {self.name} has {self._queued_requests} requests queued, the limit "
                f"(max_queue_requests={self.max_queue_requests}); retry after the hinted delay",
                retry_after_s=self._drain_seconds(self._queued_tokens),
            )
        # hard memory bounds, for lone tenants too (the bound in seconds, in admit, spares them)
        if self._queued_tokens + tokens > self.max_queue_tokens and self._queued_requests:
            self.stats.rejected_requests += 1
            raise OverloadedError(
                f"model {self.name} has {self._queued_tokens} tokens queued; this request's {tokens} "
                f"would pass the limit (max_queue_tokens={self.max_queue_tokens}); "
                "retry after the hinted delay, or send less",
                retry_after_s=self._drain_seconds(self._queued_tokens + tokens - self.max_queue_tokens),
            )
        now = loop.time()
        if timeout is not None and timeout <= 0:
            raise DeadlineExceededError("the deadline passed before the request reached the model")
        pending = _Pending(
            seqs=seqs,
            future=loop.create_future(),
            deadline=None if timeout is None else now + timeout,
            enqueued_at=now,
            tenant=tenant,
            results=[None] * len(seqs),
        )
        self._tenants.setdefault(tenant, collections.deque()).append(pending)
        self._queued_requests += 1
        self._queued_tokens += tokens
        if self._forward_running or self._queued_requests > 1:
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
        for queue in self._tenants.values():
            for pending in queue:
                if not pending.future.done():
                    pending.future.set_exception(UnavailableError(f"model {self.name} is shutting down"))
        self._tenants.clear()
        self._queued_requests = self._queued_tokens = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --------------------------------------------------------------- worker
    def _finish(self, pending: _Pending) -> None:
        """Take a request out of the queue: its remaining work is skipped."""
        self.stats.skipped_sequences += len(pending.seqs) - pending.next_seq
        self._queued_tokens -= pending.remaining_tokens
        pending.next_seq = len(pending.seqs)
        queue = self._tenants.get(pending.tenant)
        if queue is not None and pending in queue:
            queue.remove(pending)
            self._queued_requests -= 1
            if not queue:
                del self._tenants[pending.tenant]

    def _head(self, tenant: str, now: float) -> _Pending | None:
        """The tenant's oldest request with work left; drops cancelled and expired ones on the way."""
        queue = self._tenants.get(tenant)
        while queue:
            pending = queue[0]
            if pending.future.done():  # cancelled by its caller
                self._finish(pending)
            elif pending.deadline is not None and now >= pending.deadline:
                self._finish(pending)
                where = "in the queue" if pending.started_at is None else "before its last batch"
                pending.future.set_exception(
                    DeadlineExceededError(f"deadline passed after {now - pending.enqueued_at:.3f}s {where}")
                )
            elif pending.next_seq >= len(pending.seqs):
                queue.popleft()  # all of it is in flight; it completes when its batch returns
                self._queued_requests -= 1
            else:
                return pending
            queue = self._tenants.get(tenant)
        self._tenants.pop(tenant, None)
        return None

    def _take_batch(self, now: float) -> list[tuple[_Pending, int]]:
        """Sequences round-robin across tenants, one each in turn, under the token budget."""
        batch: list[tuple[_Pending, int]] = []
        tokens = 0
        progress = True
        while progress and len(batch) < self.max_batch_size and tokens < self.token_budget:
            progress = False
            for tenant in list(self._tenants):
                pending = self._head(tenant, now)
                if pending is None:
                    continue
                n = len(pending.seqs[pending.next_seq].ids)
                if batch and tokens + n > self.token_budget:
                    continue
                if pending.started_at is None:
                    pending.started_at = now
                batch.append((pending, pending.next_seq))
                pending.next_seq += 1
                tokens += n
                self._queued_tokens -= n
                progress = True
                if len(batch) >= self.max_batch_size:
                    break
        for tenant in list(self._tenants):  # next batch starts with the next tenant
            self._head(tenant, now)
        if self._tenants:
            self._tenants.move_to_end(next(iter(self._tenants)))
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
            if not self._tenants:
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
                    self._finish(pending)
                continue
            self._forward_running = False
            elapsed = time.perf_counter() - started
            self._record(len(seqs), sum(len(s.ids) for s in seqs), elapsed)
            for row, (pending, index) in enumerate(batch):
                pending.results[index] = pooled[row]
                pending.done += 1
                if pending.done == len(pending.seqs) and not pending.future.done():
                    pending.future.set_result(join_rows(pending.results))
                    if sum(len(s.ids) for s in pending.seqs) >= TRIM_AFTER_TOKENS:
                        # a huge request's sequences and buffers are freed once it is answered:
                        # their heap back to the system then (glibc keeps it otherwise)
                        loop.call_later(TRIM_DELAY_S, self._trim_heap)

    def _trim_heap(self) -> None:
        if not self._closed:  # on the forward thread: never between a batch's ops, never on the loop
            self._executor.submit(trim_heap)

    def _record(self, sequences: int, tokens: int, seconds: float) -> None:
        self.stats.batches += 1
        self.stats.forwarded_sequences += sequences
        if seconds > 0 and tokens >= 64:  # tiny batches measure overheads, not throughput
            self.tokens_per_second = 0.8 * self.tokens_per_second + 0.2 * (tokens / seconds)
        if self._on_batch is not None:
            self._on_batch(BatchRecord(sequences, tokens, seconds))
