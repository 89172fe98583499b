"""The served models: one ModelService each (embedder or scorer, batch scheduler, shared tokenizers)."""

from __future__ import annotations

import logging

from embedsvc.config import ModelConfig, ServerConfig
from embedsvc.engine.cache import EmbeddingCache
from embedsvc.engine.embedder import Embedder
from embedsvc.engine.fingerprint import served_fingerprint
from embedsvc.engine.options import Limits
from embedsvc.engine.scheduler import BatchRecord
from embedsvc.engine.scorer import Scorer, load_served
from embedsvc.engine.service import ModelService, Tokenizers, measure_throughput
from embedsvc.errors import ModelNotFoundError, UnavailableError
from embedsvc.server.metrics import Metrics

log = logging.getLogger("embedsvc.registry")


class ModelRegistry:
    def __init__(self, config: ServerConfig, metrics: Metrics, tokenizers: Tokenizers) -> None:
        self.config = config
        self.metrics = metrics
        self.tokenizers = tokenizers
        self.limits = Limits(
            max_inputs=config.max_inputs_per_request,
            max_text_bytes=config.max_text_bytes or Limits.max_text_bytes,
            max_request_bytes=config.max_request_bytes or Limits.max_request_bytes,
            max_multi_vector_values=config.max_multi_vector_values,
        )
        self.models: dict[str, ModelService] = {}
        # one cache for every served model (fingerprints in its keys keep them apart); off at 0
        self.cache = EmbeddingCache(round(config.cache_mb * 2**20)) if config.cache_mb > 0 else None
        if self.cache is not None:
            metrics.watch_cache(self.cache)
        self.default_name: str | None = None
        self.state = "loading"  # loading -> serving -> draining

    @staticmethod
    def load_embedders(config: ServerConfig) -> list[tuple[ModelConfig, Embedder | Scorer, float]]:
        """Load every configured model for its task (embed, or rerank / classify: detected from the files,
        ``task`` in the [[models]] table overrides) and measure its throughput (blocking; run it off the
        event loop)."""
        loaded = []
        for model_config in config.models:
            options = dict(model_config.options)
            if model_config.name:
                options["name"] = model_config.name
            log.info(
                "loading model",
                extra={"source": model_config.source or "bundled", "model": model_config.name},
            )
            embedder = load_served(model_config.source, **options)
            throughput = measure_throughput(embedder)
            trunk = embedder.trunk if isinstance(embedder, Scorer) else embedder
            fingerprint = served_fingerprint(embedder)  # weights hashed here, off the event loop
            log.info(
                "model loaded",
                extra={
                    "model": embedder.name,
                    "task": embedder.task if isinstance(embedder, Scorer) else "embed",
                    "dimension": 0 if isinstance(embedder, Scorer) else embedder.dimension,
                    "device": str(trunk.device),
                    "dtype": str(trunk.dtype),
                    "tokens_per_second": round(throughput),
                    "fingerprint": fingerprint.digest,
                },
            )
            loaded.append((model_config, embedder, throughput))
        return loaded

    def install(self, loaded: list[tuple[ModelConfig, Embedder | Scorer, float]]) -> None:
        """Start each model's service (on the running loop) and start serving."""
        for model_config, embedder, throughput in loaded:
            if embedder.name in self.models:
                raise ValueError(
                    f"two served models are both named {embedder.name!r}; give them distinct names"
                )
            self.models[embedder.name] = ModelService.start(
                embedder,
                self.tokenizers,
                self.limits,
                tokens_per_second=throughput,
                max_queue_requests=self.config.max_queue_requests,
                max_queue_tokens=self.config.max_queue_tokens,
                max_queue_seconds=self.config.max_queue_seconds,
                batch_wait_s=self.config.batch_wait_ms / 1000,
                on_batch=self._batch_recorder(embedder.name),
                default=model_config.default,
                cache=self.cache,
            )
        defaults = [m.name for m in self.models.values() if m.default]
        self.default_name = defaults[0] if defaults else next(iter(self.models))
        self.models[self.default_name].default = True
        self.state = "serving"

    def _batch_recorder(self, name: str):  # type: ignore[no-untyped-def]
        def record(batch: BatchRecord) -> None:
            self.metrics.batch_size.labels(name).observe(batch.sequences)
            self.metrics.batch_tokens.labels(name).observe(batch.tokens)
            self.metrics.inference_seconds.labels(name).observe(batch.seconds)

        return record

    def get(self, name: str) -> ModelService:
        if self.state == "loading":
            raise UnavailableError(
                "models are still loading; retry shortly (health reports SERVING when ready)",
                retry_after_s=1.0,
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

    def serving(self, source: str) -> ModelService | None:
        """The served model an index built with ``source`` embeds with, if it is served."""
        return next((m for m in self.models.values() if m.source == source and m.task == "embed"), None)

    async def close(self) -> None:
        for model in self.models.values():
            await model.close()
