"""The served models: one embedder and one batch scheduler each."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from embedsvc.config import ModelConfig, ServerConfig
from embedsvc.engine.embedder import Embedder
from embedsvc.engine.scheduler import BatchRecord, BatchScheduler
from embedsvc.errors import ModelNotFoundError, UnavailableError
from embedsvc.server.metrics import Metrics

log = logging.getLogger("embedsvc.registry")


@dataclass
class ServedModel:
    name: str
    config: ModelConfig
    embedder: Embedder
    scheduler: BatchScheduler


def _measure_throughput(embedder: Embedder) -> float:
    """Tokens per second of one full forward pass, the unit the queue bound is measured in."""
    words = max(8, min(embedder.max_length, 128) // 2)
    encoded = embedder.prepare(["the quick brown fox jumps over the lazy dog " * (words // 9 + 1)] * 8)
    embedder.forward(encoded)  # warm-up: first calls allocate
    started = time.perf_counter()
    embedder.forward(encoded)
    return sum(len(e.ids) for e in encoded) / max(time.perf_counter() - started, 1e-6)


class ModelRegistry:
    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.default_name: str | None = None
        self.state = "loading"  # loading -> serving -> draining

    @staticmethod
    def load_embedders(config: ServerConfig) -> list[tuple[ModelConfig, Embedder]]:
        """Load every configured model (blocking; run it off the event loop)."""
        loaded = []
        for model_config in config.models:
            options = dict(model_config.options)
            if model_config.name:
                options["name"] = model_config.name
            log.info(
                "loading model",
                extra={"source": model_config.source or "bundled", "model": model_config.name},
            )
            embedder = Embedder.from_pretrained(model_config.source, **options)
            embedder.measured_tokens_per_second = _measure_throughput(embedder)
            log.info(
                "model loaded",
                extra={
                    "model": embedder.name,
                    "dimension": embedder.dimension,
                    "device": str(embedder.device),
                    "dtype": str(embedder.dtype),
                    "tokens_per_second": round(embedder.measured_tokens_per_second),
                },
            )
            loaded.append((model_config, embedder))
        return loaded

    def install(self, loaded: list[tuple[ModelConfig, Embedder]]) -> None:
        """Create schedulers (on the running loop) and start serving."""
        for model_config, embedder in loaded:
            if embedder.name in self.models:
                raise ValueError(
                    f"two served models are both named {embedder.name!r}; give them distinct names"
                )
            scheduler = BatchScheduler(
                embedder.forward,
                name=embedder.name,
                token_budget=embedder.options.token_budget,
                max_batch_size=embedder.options.max_batch_size,
                max_queue_requests=self.config.max_queue_requests,
                max_queue_tokens=self.config.max_queue_tokens,
                max_queue_seconds=self.config.max_queue_seconds,
                tokens_per_second=embedder.measured_tokens_per_second,
                batch_wait_s=self.config.batch_wait_ms / 1000,
                on_batch=self._batch_recorder(embedder.name),
            )
            scheduler.start()
            self.models[embedder.name] = ServedModel(embedder.name, model_config, embedder, scheduler)
        defaults = [m.name for m in self.models.values() if m.config.default]
        self.default_name = defaults[0] if defaults else next(iter(self.models))
        self.state = "serving"

    def _batch_recorder(self, name: str):  # type: ignore[no-untyped-def]
        def record(batch: BatchRecord) -> None:
            self.metrics.batch_size.labels(name).observe(batch.sequences)
            self.metrics.batch_tokens.labels(name).observe(batch.tokens)
            self.metrics.inference_seconds.labels(name).observe(batch.seconds)

        return record

    def get(self, name: str) -> ServedModel:
        if self.state == "loading":
            raise UnavailableError(
                "models are still loading; retry shortly (health reports SERVING when ready)"
            )
        if self.state == "draining":
            raise UnavailableError("the server is shutting down; retry on another replica")
        key = name or self.default_name
        try:
            return self.models[key]  # type: ignore[index]
        except KeyError:
            raise ModelNotFoundError(
                f"model {name!r} is not served here; served models: {', '.join(self.models)}"
            ) from None

    async def close(self) -> None:
        for model in self.models.values():
            await model.scheduler.close()
