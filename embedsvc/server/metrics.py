"""Prometheus metrics, in a registry of their own (several servers may share a process in tests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from embedsvc.engine.cache import EmbeddingCache

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("embedsvc_requests", "RPCs handled", ["method", "model"], registry=r)
        self.errors = Counter(
            "embedsvc_errors", "RPCs failed, by status code", ["method", "code"], registry=r
        )
        self.inputs = Counter("embedsvc_inputs", "Texts embedded", ["model"], registry=r)
        self.tokens = Counter("embedsvc_tokens", "Tokens embedded (no padding)", ["model"], registry=r)
        self.queue_requests = Gauge("embedsvc_queue_requests", "Requests waiting", ["model"], registry=r)
        self.queue_tokens = Gauge("embedsvc_queue_tokens", "Tokens waiting", ["model"], registry=r)
        self.batch_size = Histogram(
            "embedsvc_batch_sequences",
            "Sequences per forward pass",
            ["model"],
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.batch_tokens = Histogram(
            "embedsvc_batch_tokens",
            "Tokens per forward pass",
            ["model"],
            registry=r,
            buckets=(16, 64, 256, 1024, 4096, 8192, 16384, 32768, 65536),
        )
        self.queue_seconds = Histogram(
            "embedsvc_queue_seconds",
            "Time from arrival to the start of inference",
            ["model"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.inference_seconds = Histogram(
            "embedsvc_inference_seconds",
            "Forward pass time per batch",
            ["model"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.index_damaged = Gauge(
            "embedsvc_index_damaged",
            "1 for an index whose files failed their checks at start-up (not served; see ListIndexes)",
            ["index"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "embedsvc_request_seconds",
            "Whole RPC time",
            ["method", "model"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )

    def watch_cache(self, cache: EmbeddingCache) -> None:
        """Report the embedding cache's counters as they are at each scrape."""
        self.registry.register(_CacheCollector(cache))

    def serve(self, port: int, host: str) -> None:
        start_http_server(port, addr=host, registry=self.registry)


class _CacheCollector(Collector):
    def __init__(self, cache: EmbeddingCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self.cache
        yield CounterMetricFamily("embedsvc_cache_hits", "Texts answered from the embedding cache", c.hits)
        yield CounterMetricFamily("embedsvc_cache_misses", "Texts the embedding cache did not hold", c.misses)
        yield CounterMetricFamily(
            "embedsvc_cache_evictions", "Entries evicted to stay in bounds", c.evictions
        )
        yield GaugeMetricFamily("embedsvc_cache_bytes", "Bytes the embedding cache holds", c.bytes)
        yield GaugeMetricFamily(
            "embedsvc_cache_max_bytes", "The embedding cache's bound (cache_mb)", c.max_bytes
        )
        yield GaugeMetricFamily("embedsvc_cache_entries", "Texts the embedding cache holds", c.entries)
