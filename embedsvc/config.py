"""Server and model configuration: frozen dataclasses, from one merge of every source.

Plain values only: this module imports no embedsvc subpackage, so anything may read a config. A
check that needs faiss, torch or a checkpoint lives with what it checks and runs before a server
starts (``server/preflight.py``): the index device against the installed faiss, dtypes and devices
against torch.

Precedence, lowest first: the defaults below < the config file's ``[server]`` table < environment
variables ``EMBEDSVC_<KEY>`` (e.g. ``EMBEDSVC_HOST``, ``EMBEDSVC_TLS_CERT``) < command-line flags. A
flag that was not given never overrides. API keys are the one exception: the keys of every source
are accepted together (``EMBEDSVC_API_KEY`` and ``--api-key`` add to the file's), so a key can be
rotated without editing the file; an empty or blank key from any source is refused.

A config file looks like::

    [server]
    host = "127.0.0.1"
    port = 50051
    http = true                  # OpenAI/TEI-compatible HTTP beside gRPC (false: gRPC only)
    http_port = 8080
    metrics_port = 9400          # 0 = no metrics endpoint
    api_keys = ["secret"]        # empty = no authentication
    max_inputs_per_request = 2048
    threads = 8                  # cores this server may use (forward + tokenizer); default: every core

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

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from embedsvc.errors import InvalidInputError


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
    http: bool = True  # OpenAI- and TEI-compatible HTTP beside gRPC
    http_port: int = 8080  # 0 = any free port
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
    # a request's multi-vector floats (estimated tokens x width), refused before any work beyond it
    max_multi_vector_values: int = 32 * 1024 * 1024
    batch_wait_ms: float = 2.0
    grace_period_s: float = 10.0
    tokenizer_threads: int = 2
    # one budget for the process's cores: torch's intra-op threads, the Rust tokenizer's pool and the
    # tokenizing workers (thread_budget below); None: every core, tokenizer_threads as given
    threads: int | None = None
    # batches | operators: how a CPU forward uses those threads (engine/cpu_parallel.py); a model's own
    # cpu_parallelism option wins; None: batches. Checked with the models' options (server/preflight.py)
    cpu_parallelism: str | None = None
    log_level: str = "INFO"
    log_json: bool = True
    data_dir: str | None = None  # index collections live here; None = in memory, lost on exit
    index_fsync: bool = True  # fsync the write-ahead log before acknowledging writes
    snapshot_every: int = 5000  # log records between snapshots
    # auto | cpu | gpu | gpu:N: where FAISS answers unfiltered searches (checked by the index, which
    # knows the GPUs its faiss has, and by server/preflight.py before a server starts)
    index_device: str = "auto"
    # MiB of embedded texts kept in memory (engine/cache.py), shared by the models; 0 = no cache
    cache_mb: float = 0.0
    models: tuple[ModelConfig, ...] = ()

    def __post_init__(self) -> None:
        request_bytes = self.max_request_bytes or min(8 * 1024 * 1024, self.max_message_bytes // 2)
        object.__setattr__(self, "max_request_bytes", request_bytes)
        if self.max_text_bytes is None:
            object.__setattr__(self, "max_text_bytes", min(1024 * 1024, request_bytes))
        if not self.host.strip():
            raise InvalidInputError(
                "host must not be empty (0.0.0.0 listens on every interface)", field="host"
            )
        for name in ("port", "http_port", "metrics_port"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                raise InvalidInputError(
                    f"{name} must be a port number from 0 to 65535 (0 = any free port), not {value!r}",
                    field=name,
                )
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
            "max_multi_vector_values",
        ):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be at least 1", field=name)
        threads = self.threads
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InvalidInputError(
                f"threads must be a whole number of threads >= 1 (the cores this server may use), "
                f"not {self.threads!r}",
                field="threads",
            )
        if self.tokenizer_threads < 1:
            raise InvalidInputError("tokenizer_threads must be at least 1", field="tokenizer_threads")
        if self.max_http_connections is not None and self.max_http_connections < 1:
            raise InvalidInputError("max_http_connections must be at least 1", field="max_http_connections")
        if not self.http_idle_timeout_s > 0:
            raise InvalidInputError("http_idle_timeout_s must be above 0", field="http_idle_timeout_s")
        if not self.cache_mb >= 0:
            raise InvalidInputError(
                f"cache_mb must be 0 (no cache) or a size in MiB, not {self.cache_mb!r}", field="cache_mb"
            )
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
        odd = [key for key in self.api_keys if "," in key or key != key.strip()]
        if odd:
            # a client sends one key from a comma-separated variable, trimmed: such a key never matches
            raise InvalidInputError(
                "an API key contains a comma or starts/ends with whitespace; no client could send it",
                field="api_keys",
            )
        names = [m.name for m in self.models if m.name]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InvalidInputError(
                f"model names must be unique; repeated: {', '.join(duplicates)}", field="models"
            )


_SERVER_KEYS = {f.name for f in fields(ServerConfig)} - {"models"}
# Python threads handing requests to the Rust tokenizer: each call fans out over the tokenizer's own
# pool, so a couple keep it busy; more only contend with the forward for the same cores
_MAX_TOKENIZING_WORKERS = 2


def thread_budget(threads: int) -> dict[str, int]:
    """How a server's ``threads`` are shared: torch's intra-op pool and the Rust tokenizer's pool
    both get the whole budget (they take turns on the cores: the forward runs while the next batch
    is tokenized, and idle OpenMP threads sleep), and the tokenizing workers that feed the Rust
    pool get at most two of it. Returned as the settings they become: the models' ``threads``
    option (intra-op + Rust pool, engine/threads.py) and the server's ``tokenizer_threads``."""
    return {"threads": threads, "tokenizer_threads": min(threads, _MAX_TOKENIZING_WORKERS)}


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


ENV_PREFIX = "EMBEDSVC_"
# the variable the clients read too; EMBEDSVC_API_KEYS is its name before 0.2
API_KEY_VARIABLES = ("EMBEDSVC_API_KEY", "EMBEDSVC_API_KEYS")
_FALSE, _TRUE = ("0", "false", "no", "off"), ("1", "true", "yes", "on")


def _env_value(name: str, kind: str, text: str) -> Any:
    """``text`` read as the [server] field's type, or a one-line error naming the variable."""
    variable = ENV_PREFIX + name.upper()
    base = kind.replace(" | None", "")
    if not text.strip():
        raise InvalidInputError(f"{variable} is set but empty: give it a value, or unset it", field=name)
    try:
        if base == "bool":
            if text.strip().lower() not in _FALSE + _TRUE:
                raise ValueError
            return text.strip().lower() in _TRUE
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
    except ValueError:
        expected = {"int": "an integer", "float": "a number", "bool": "true or false"}[base]
        raise InvalidInputError(f"{variable}={text!r}: expected {expected}", field=name) from None
    return text


def api_keys_from_text(text: str, where: str) -> list[str]:
    """Comma-separated keys; an empty or blank entry is an error, never "no authentication"."""
    keys = [key.strip() for key in text.split(",")]
    if not all(keys):
        raise InvalidInputError(
            f"{where} holds an empty API key (blank, or an empty entry between commas): that would "
            "leave the server open or accept an empty key; set the key, or unset the variable to leave "
            "authentication off",
            field="api_keys",
        )
    return keys


def server_settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """[server] settings from ``EMBEDSVC_<KEY>`` variables that are set (even to an empty value)."""
    environ = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    for f in fields(ServerConfig):
        variable = ENV_PREFIX + f.name.upper()
        if f.name in ("models", "api_keys") or variable not in environ:
            continue
        settings[f.name] = _env_value(f.name, str(f.type), environ[variable])
    keys: list[str] = []
    for variable in API_KEY_VARIABLES:
        if variable in environ:
            keys += api_keys_from_text(environ[variable], variable)
    if keys:
        settings["api_keys"] = keys
    return settings


def _file_keys(value: Any, path: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise InvalidInputError(
            f'{path}: [server] api_keys must be a list of strings, e.g. api_keys = ["KEY1", "KEY2"]',
            field="api_keys",
        )
    return value


def build_server_config(
    file_data: dict[str, Any] | None,
    overrides: dict[str, Any],
    path: str = "config",
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Defaults < file < environment < flags (``overrides``; None = not given). ``environ`` None: no
    environment (callers that want it pass os.environ); API keys of every source add up."""
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
    overrides = dict(overrides)
    from_env = server_settings_from_env(environ) if environ is not None else {}
    keys = [
        *_file_keys(server.pop("api_keys", []), path),
        *from_env.pop("api_keys", []),
        *(overrides.pop("api_keys", None) or []),
    ]
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
    server.update(from_env)
    server.update({key: value for key, value in overrides.items() if value is not None})
    # server-wide defaults of model options: a model's own option still wins
    model_defaults: dict[str, Any] = {}
    threads = server.get("threads")
    if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        # one budget: an explicit tokenizer_threads still wins too
        budget = thread_budget(threads)
        server.setdefault("tokenizer_threads", budget["tokenizer_threads"])
        model_defaults["threads"] = budget["threads"]
    if server.get("cpu_parallelism") is not None:
        model_defaults["cpu_parallelism"] = server["cpu_parallelism"]
    if model_defaults:
        models = [ModelConfig(m.name, m.source, m.default, {**model_defaults, **m.options}) for m in models]
    return ServerConfig(**server, api_keys=tuple(dict.fromkeys(keys)), models=tuple(models))
