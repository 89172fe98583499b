"""Server and model configuration: frozen dataclasses, from a TOML file merged with CLI flags.

A config file looks like::

    [server]
    host = "127.0.0.1"
    port = 50051
    metrics_port = 9400          # 0 = no metrics endpoint
    api_keys = ["secret"]        # empty = no authentication
    max_inputs_per_request = 2048

    [[models]]
    name = "minilm"              # omitted: the folder / hub name
    # source omitted: the bundled all-MiniLM-L6-v2
    default = true

    [[models]]
    name = "e5"
    source = "/models/intfloat/e5-mistral-7b-instruct"
    dtype = "bfloat16"
    max_length = 4096
    [models.prompts]
    query = "Instruct: Given a question, retrieve passages that answer it\\nQuery: "
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from embedsvc.errors import InvalidInputError
from embedsvc.index.gpu import check_device_setting


@dataclass(frozen=True)
class ModelConfig:
    """One served model; ``options`` go to :meth:`Embedder.from_pretrained` as they are."""

    name: str | None = None
    source: str | None = None
    default: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 0
    http_port: int | None = None  # OpenAI- and TEI-compatible HTTP; None = off, 0 = any free port
    api_keys: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    max_inputs_per_request: int = 2048
    max_message_bytes: int = 64 * 1024 * 1024
    # bytes of one input text / of all input texts of a request; None: 1 MiB / 8 MiB, kept under
    # half the message limit
    max_text_bytes: int | None = None
    max_request_bytes: int | None = None
    max_queue_requests: int = 1024
    max_queue_tokens: int = 2_000_000
    max_queue_seconds: float = 20.0  # work queued per model, in seconds of its measured throughput
    max_streams: int = 256  # EmbedStreams open at once
    # HTTP: seconds a connection may sit without a request in progress (headers, keep-alive), and
    # connections open at once (None: a quarter of the process's file descriptor limit, at most 1024)
    http_idle_timeout_s: float = 10.0
    max_http_connections: int | None = None
    max_filter_leaves: int = 16_384  # conditions + listed values in one search filter
    batch_wait_ms: float = 2.0
    grace_period_s: float = 10.0
    tokenizer_threads: int = 2
    log_level: str = "INFO"
    log_json: bool = True
    data_dir: str | None = None  # index collections live here; None = in memory, lost on exit
    index_fsync: bool = True  # fsync the write-ahead log before acknowledging writes
    snapshot_every: int = 5000  # log records between snapshots
    index_device: str = "auto"  # auto | cpu | gpu | gpu:N: where FAISS answers unfiltered searches
    models: tuple[ModelConfig, ...] = ()

    def __post_init__(self) -> None:
        request_bytes = self.max_request_bytes or min(8 * 1024 * 1024, self.max_message_bytes // 2)
        object.__setattr__(self, "max_request_bytes", request_bytes)
        if self.max_text_bytes is None:
            object.__setattr__(self, "max_text_bytes", min(1024 * 1024, request_bytes))
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidInputError("TLS needs both tls_cert and tls_key", field="tls_cert")
        for name in (
            "max_inputs_per_request",
            "max_message_bytes",
            "max_text_bytes",
            "max_request_bytes",
            "max_queue_requests",
            "max_queue_tokens",
            "max_streams",
            "max_filter_leaves",
        ):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be at least 1", field=name)
        if self.max_http_connections is not None and self.max_http_connections < 1:
            raise InvalidInputError("max_http_connections must be at least 1", field="max_http_connections")
        if not self.http_idle_timeout_s > 0:
            raise InvalidInputError("http_idle_timeout_s must be above 0", field="http_idle_timeout_s")
        if not self.max_queue_seconds > 0:
            raise InvalidInputError("max_queue_seconds must be above 0", field="max_queue_seconds")
        assert self.max_text_bytes is not None and self.max_request_bytes is not None
        if self.max_text_bytes > self.max_request_bytes or self.max_request_bytes >= self.max_message_bytes:
            raise InvalidInputError(
                "limits must nest: max_text_bytes <= max_request_bytes < max_message_bytes",
                field="max_request_bytes",
            )
        empty = [i for i, key in enumerate(self.api_keys) if not key or not key.strip()]
        if empty:
            raise InvalidInputError(
                'an API key is empty (e.g. --api-key "$KEY" with KEY unset): that would let anyone in '
                "with an empty key; set the key, or leave authentication off",
                field="api_keys",
            )
        check_device_setting(self.index_device)
        names = [m.name for m in self.models if m.name]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InvalidInputError(
                f"model names must be unique; repeated: {', '.join(duplicates)}", field="models"
            )


_SERVER_KEYS = {f.name for f in fields(ServerConfig)} - {"models"}
_MODEL_KEYS = {"name", "source", "default"}


def _model_from_table(table: dict[str, Any], where: str) -> ModelConfig:
    if not isinstance(table, dict):
        raise InvalidInputError(f"{where}: each [[models]] entry must be a table")
    options = {k: v for k, v in table.items() if k not in _MODEL_KEYS}
    return ModelConfig(
        name=table.get("name"),
        source=table.get("source"),
        default=bool(table.get("default", False)),
        options=options,
    )


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise InvalidInputError(f"cannot read config file {path}: {exc}", field="config") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"config file {path} is not valid TOML: {exc}", field="config") from exc


def build_server_config(
    file_data: dict[str, Any] | None, overrides: dict[str, Any], path: str = "config"
) -> ServerConfig:
    """File values, then explicit CLI overrides (None = not given)."""
    data = dict(file_data or {})
    unknown_top = sorted(set(data) - {"server", "models"})
    if unknown_top:
        raise InvalidInputError(
            f"{path}: unknown section(s) {', '.join(unknown_top)}; use [server] and [[models]]"
        )
    server = dict(data.get("server") or {})
    unknown = sorted(set(server) - _SERVER_KEYS)
    if unknown:
        raise InvalidInputError(
            f"{path}: unknown [server] key(s) {', '.join(unknown)}; known: {', '.join(sorted(_SERVER_KEYS))}"
        )
    models = [_model_from_table(t, f"{path} [[models]] #{i}") for i, t in enumerate(data.get("models") or [])]
    cli_models: list[ModelConfig] = overrides.pop("models", None) or []
    model_options: dict[str, Any] = overrides.pop("model_options", None) or {}
    if cli_models:
        # --model flags pick which models to serve; a file entry with the same name lends its options
        by_name = {m.name: m for m in models if m.name}
        merged = []
        for m in cli_models:
            base = by_name.get(m.name) if m.name else None
            merged.append(
                ModelConfig(
                    name=m.name,
                    source=m.source or (base.source if base else None),
                    default=m.default or (base.default if base else False),
                    options={**(base.options if base else {}), **m.options},
                )
            )
        models = merged
    if not models:
        models = [ModelConfig()]
    if model_options:
        models = [ModelConfig(m.name, m.source, m.default, {**m.options, **model_options}) for m in models]
    for key, value in overrides.items():
        if value is not None:
            server[key] = value
    if "api_keys" in server:
        server["api_keys"] = tuple(server["api_keys"])
    return ServerConfig(**server, models=tuple(models))
