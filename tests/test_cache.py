"""The embedding cache: hits are bitwise recomputations in deterministic mode, the first computation
otherwise; keys keep models and options apart; the memory bound holds (LRU); metrics report it."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from embedsvc import Embedder
from embedsvc.config import build_server_config
from embedsvc.engine.cache import ENTRY_OVERHEAD_BYTES, EmbeddingCache
from embedsvc.engine.inputs import Template
from embedsvc.engine.options import EmbedOptions, Limits, ResolvedOptions
from embedsvc.engine.scheduler import BatchRecord
from embedsvc.engine.service import ModelService, Tokenizers
from embedsvc.errors import InvalidInputError, TextTooLongError
from embedsvc.server.metrics import Metrics
from tests import tiny_models

TEXTS = tiny_models.corpus(40, seed=5)
MiB = 2**20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.build_bert(tmp_path_factory.mktemp("cache") / "encoder-c", st="mean", seed=12)


@pytest.fixture(scope="module")
def deterministic(checkpoint: Path) -> Embedder:
    return Embedder.from_pretrained(checkpoint, device="cpu", deterministic=True)


@pytest.fixture(scope="module")
def fast(checkpoint: Path) -> Embedder:
    return Embedder.from_pretrained(checkpoint, device="cpu")


def _served(
    embedder: Embedder, cache: EmbeddingCache, work: Callable[[ModelService, list[BatchRecord]], Any]
) -> Any:
    """Run ``work`` against the model as the server runs it, with the list of batches its scheduler ran."""

    async def main() -> Any:
        tokenizers = Tokenizers(1)
        batches: list[BatchRecord] = []
        service = ModelService.start(
            embedder,
            tokenizers,
            Limits(),
            tokens_per_second=1e6,
            max_queue_requests=100,
            max_queue_tokens=10_000_000,
            max_queue_seconds=600.0,
            batch_wait_s=0.0,
            on_batch=batches.append,
            cache=cache,
        )
        try:
            return await work(service, batches)
        finally:
            await service.close()
            tokenizers.shutdown()

    return asyncio.run(main())


def test_deterministic_hits_are_bitwise_recomputations(deterministic: Embedder) -> None:
    cache = EmbeddingCache(MiB)
    first, second = TEXTS[:12], TEXTS[6:30]  # half of the second request was cached by the first

    async def work(service: ModelService, batches: list[BatchRecord]) -> Any:
        await service.embed(first)
        return await service.embed(second)

    answer = _served(deterministic, cache, work)
    # recomputed without a cache, in one batch of another composition
    fresh = ModelService.in_process(deterministic).embed_now(second)
    assert answer.vectors.tobytes() == fresh.vectors.tobytes()
    assert answer.token_counts == fresh.token_counts
    assert answer.fingerprint == fresh.fingerprint != ""
    assert cache.hits == 6 and cache.misses == 12 + 18 and cache.entries == 30


def test_a_request_of_hits_never_reaches_the_scheduler(deterministic: Embedder) -> None:
    cache = EmbeddingCache(MiB)

    async def work(service: ModelService, batches: list[BatchRecord]) -> Any:
        await service.embed(TEXTS[:8], EmbedOptions(input_type="query"))
        ran = len(batches)
        again = await service.embed(TEXTS[:8][::-1], EmbedOptions(input_type="query"))
        return ran, len(batches), again

    ran_before, ran_after, again = _served(deterministic, cache, work)
    assert ran_before >= 1 and ran_after == ran_before  # the second request, all hits, ran no batch
    want = ModelService.in_process(deterministic).embed_now(TEXTS[:8][::-1], EmbedOptions(input_type="query"))
    assert again.vectors.tobytes() == want.vectors.tobytes()


def test_without_determinism_a_hit_is_the_first_computation(fast: Embedder) -> None:
    cache = EmbeddingCache(MiB)
    service = ModelService.in_process(fast, cache=cache)
    alone = service.embed_now([TEXTS[0]])
    mixed = service.embed_now([TEXTS[1], TEXTS[0], TEXTS[2]])
    assert mixed.vectors[1].tobytes() == alone.vectors[0].tobytes()
    # and the rest are what the model gives for them (to float tolerance: other batches)
    reference = fast.embed([TEXTS[1], TEXTS[0], TEXTS[2]])
    np.testing.assert_allclose(mixed.vectors, reference, atol=1e-5)


def test_keys_keep_options_and_models_apart(fast: Embedder, deterministic: Embedder) -> None:
    cache = EmbeddingCache(MiB)
    plain = ModelService.in_process(fast, cache=cache)
    other_model = ModelService.in_process(deterministic, cache=cache)
    assert plain.fingerprint.digest != other_model.fingerprint.digest
    text = [TEXTS[3]]
    variants = [
        EmbedOptions(),
        EmbedOptions(input_type="query"),  # the "query: " prompt
        EmbedOptions(dimensions=8),
        EmbedOptions(normalize=False),
        EmbedOptions(truncation="start"),
    ]
    for options in variants:
        got = plain.embed_now(text, options)
        want = fast.embed(text, **{k: v for k, v in vars(options).items() if k != "outputs"})
        np.testing.assert_allclose(got.vectors, want, atol=1e-6)
    other_model.embed_now(text)
    assert cache.hits == 0 and cache.entries == len(variants) + 1
    plain.embed_now(text, EmbedOptions(dimensions=8))
    assert cache.hits == 1


def test_duplicates_are_computed_once_and_errors_name_the_callers_index(fast: Embedder) -> None:
    cache = EmbeddingCache(MiB)
    service = ModelService.in_process(fast, cache=cache)
    texts = [TEXTS[4], TEXTS[5], TEXTS[4], TEXTS[4]]
    got = service.embed_now(texts)
    assert cache.entries == 2 and cache.misses == 4
    assert got.vectors[0].tobytes() == got.vectors[2].tobytes() == got.vectors[3].tobytes()
    with pytest.raises(TextTooLongError) as caught:  # indexes 0 and 1 are hits; 2 is computed alone
        service.embed_now([TEXTS[4], TEXTS[5], "word " * 500], EmbedOptions(truncation="none"))
    assert caught.value.index == 2 and "input 2 " in str(caught.value)


def test_memory_bound_holds_and_least_recently_used_go_first() -> None:
    options = ResolvedOptions(Template.build(""), "end", None, True, False, None)
    width = 96
    entry = width * 4 + ENTRY_OVERHEAD_BYTES
    cache = EmbeddingCache(entry * 50)
    rng = np.random.default_rng(0)
    texts = [f"text {i}" for i in range(200)]
    for start in range(0, 60, 10):
        lookup = cache.lookup("f" * 16, options, texts[start : start + 10])
        cache.store(lookup, rng.random((10, width), dtype=np.float32), [3] * 10)
    assert cache.entries == 50 and cache.bytes <= cache.max_bytes and cache.evictions == 10
    # texts 0-9 were evicted (oldest); touching text 10 keeps it through the next eviction
    assert not cache.lookup("f" * 16, options, texts[:1]).found[0]
    assert cache.lookup("f" * 16, options, texts[10:11]).found[0]
    lookup = cache.lookup("f" * 16, options, texts[60:61])
    cache.store(lookup, rng.random((1, width), dtype=np.float32), [3])
    assert cache.lookup("f" * 16, options, texts[10:11]).found[0] is not None
    assert cache.lookup("f" * 16, options, texts[11:12]).found[0] is None  # the least recently used went


def test_accounted_bytes_match_the_memory_used() -> None:
    options = ResolvedOptions(Template.build("query: "), "end", None, True, False, "query")
    width, n = 384, 5000
    vectors = np.random.default_rng(1).random((n, width), dtype=np.float32)
    texts = [f"a text of a few words, number {i}" for i in range(n)]
    cache = EmbeddingCache(1024 * MiB)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for start in range(0, n, 250):
            lookup = cache.lookup("0123456789abcdef", options, texts[start : start + 250])
            cache.store(lookup, vectors[start : start + 250], list(range(start, start + 250)))
        del lookup
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.85 * cache.bytes <= used <= 1.1 * cache.bytes, (used, cache.bytes)


def test_metrics_report_hits_misses_bytes_entries(fast: Embedder) -> None:
    cache = EmbeddingCache(MiB)
    metrics = Metrics()
    metrics.watch_cache(cache)
    service = ModelService.in_process(fast, cache=cache)
    service.embed_now(TEXTS[:3])
    service.embed_now(TEXTS[:5])
    text = generate_latest(metrics.registry).decode()
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("embedsvc_cache")
    }
    assert samples == {
        "embedsvc_cache_hits_total": 3,
        "embedsvc_cache_misses_total": 5,
        "embedsvc_cache_evictions_total": 0,
        "embedsvc_cache_entries": 5,
        "embedsvc_cache_bytes": 5 * (fast.dimension * 4 + ENTRY_OVERHEAD_BYTES),  # five float32 vectors
        "embedsvc_cache_max_bytes": MiB,
    }


def test_cache_mb_from_file_env_and_flag() -> None:
    assert build_server_config(None, {}).cache_mb == 0  # off by default
    assert build_server_config({"server": {"cache_mb": 64}}, {}).cache_mb == 64
    assert build_server_config(None, {}, environ={"EMBEDSVC_CACHE_MB": "0.5"}).cache_mb == 0.5
    flagged = build_server_config(
        {"server": {"cache_mb": 64}}, {"cache_mb": 128}, environ={"EMBEDSVC_CACHE_MB": "32"}
    )
    assert flagged.cache_mb == 128
    with pytest.raises(InvalidInputError, match="cache_mb"):
        build_server_config({"server": {"cache_mb": -1}}, {})
