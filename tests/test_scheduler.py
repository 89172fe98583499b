"""The batch scheduler with the real bundled model: batching, ordering, cancellation, deadlines, limits."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedsvc.engine.scheduler import BatchScheduler, DeadlineExceededError
from embedsvc.errors import OverloadedError
from tests.tiny_models import corpus


def make(minilm, **kwargs) -> BatchScheduler:
    options = {
        "name": "minilm",
        "token_budget": 256,
        "max_batch_size": 64,
        "max_queue_requests": 100,
        "max_queue_tokens": 1_000_000,
        "batch_wait_s": 0.001,
    }
    options.update(kwargs)
    return BatchScheduler(minilm.forward, **options)


def test_concurrent_requests_share_batches_and_keep_order(minilm):
    texts = corpus(60, seed=1)[:60]
    want = minilm.forward(minilm.prepare(texts)).numpy()

    async def run() -> tuple[list[np.ndarray], int]:
        scheduler = make(minilm)
        scheduler.start()
        parts = [minilm.prepare(texts[i : i + 6]) for i in range(0, 60, 6)]
        results = await asyncio.gather(*(scheduler.submit(p) for p in parts))
        await scheduler.close()
        return [r.numpy() for r in results], scheduler.stats.batches

    results, batches = asyncio.run(run())
    assert np.abs(np.concatenate(results) - want).max() <= 1e-5
    assert batches < 10  # ten requests did not need ten forward passes


def test_cancelled_request_is_skipped(minilm):
    async def run() -> BatchScheduler:
        scheduler = make(minilm, token_budget=64)
        scheduler.start()
        first = asyncio.create_task(scheduler.submit(minilm.prepare(corpus(40, seed=2))))
        doomed = asyncio.create_task(scheduler.submit(minilm.prepare(corpus(40, seed=3))))
        await asyncio.sleep(0.01)
        doomed.cancel()
        await first
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await scheduler.close()
        return scheduler

    scheduler = asyncio.run(run())
    assert scheduler.stats.skipped_sequences > 0
    assert scheduler.stats.forwarded_sequences < 120
    assert scheduler.queued_tokens == 0


def test_expired_request_is_not_started(minilm):
    async def run() -> None:
        scheduler = make(minilm, token_budget=64)
        scheduler.start()
        blocker = asyncio.create_task(scheduler.submit(minilm.prepare(corpus(60, seed=4))))
        with pytest.raises(DeadlineExceededError):
            await scheduler.submit(minilm.prepare(["late"]), timeout=0.0)
        await blocker
        await scheduler.close()

    asyncio.run(run())


def test_queue_limits(minilm):
    async def run() -> None:
        scheduler = make(minilm, max_queue_requests=1, max_queue_tokens=50)
        # not started: nothing drains the queue
        first = asyncio.create_task(scheduler.submit(minilm.prepare(["one two three"])))
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError, match="max_queue_requests=1"):
            await scheduler.submit(minilm.prepare(["x"]))
        scheduler.max_queue_requests = 10
        with pytest.raises(OverloadedError, match="max_queue_tokens=50"):
            await scheduler.submit(minilm.prepare(["word " * 100]))
        first.cancel()
        await scheduler.close()

    asyncio.run(run())


def test_a_tenant_may_always_queue_one_batch_beside_a_flood(minilm):
    """With a queue of a tenth of a second, a tenant's share of it (0.05 s: 50 tokens at 1 000 tokens/s)
    is smaller than one batch: a request of one batch or less is still admitted beside a tenant that keeps
    the queue full (it was refused forever); more than one batch, or a second batch on top, is not."""
    scheduler = make(minilm, token_budget=256, max_queue_seconds=0.1, tokens_per_second=1000.0)
    with scheduler.admit(5000, tenant="flood"):
        one_batch = scheduler.admit(256, tenant="light")
        beyond = pytest.raises(OverloadedError, match=r"holds 0\.3s")
        with one_batch, beyond, scheduler.admit(1, tenant="light"):  # one batch admitted, no more
            pass
        with pytest.raises(OverloadedError, match=r"max_queue_seconds=0\.1"), scheduler.admit(257, "light"):
            pass  # more than one batch at once
    with scheduler.admit(100_000, tenant="light"):  # alone on the model: never refused
        pass
