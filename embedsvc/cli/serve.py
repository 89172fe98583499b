"""``embedsvc serve``: options, config file merge, checks before start."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from embedsvc.cli.failures import describe
from embedsvc.config import ModelConfig, build_server_config, load_toml
from embedsvc.models.dtypes import DTYPE_ALIASES
from embedsvc.models.profiles import POOLING_MODES

BUNDLED = "@bundled"

SERVE_EPILOG = f"""\
models:
  --model [NAME=]SOURCE may be repeated to serve several models on one port. SOURCE is a
  checkpoint folder, a hub id (downloaded when online) or {BUNDLED} (all-MiniLM-L6-v2, shipped
  with the package). NAME defaults to the folder's name. Without --model (and without
  [[models]] in --config) the bundled model is served. Requests pick a model by name; an
  empty name means the default model (the first, or the one with default = true).

config file (--config FILE, TOML):
  [server]   host, port, http, http_port, metrics_port, api_keys, tls_cert, tls_key, max_inputs_per_request,
             max_message_bytes, max_text_bytes, max_request_bytes, max_queue_requests,
             max_queue_tokens, max_queue_seconds, max_streams, batch_wait_ms,
             http_idle_timeout_s, max_http_connections, max_filter_leaves, max_multi_vector_values,
             grace_period_s, threads, cpu_parallelism, tokenizer_threads, log_level, log_json, data_dir,
             index_fsync, snapshot_every, index_device, cache_mb
  [[models]] name, source, default, and any engine option: pooling, normalize, dtype, device,
             max_length, profile, conversion (none|echo|prompteol|bidirectional), prompts,
             default_prompt_name, query_prompt_name, document_prompt_name,
             instruction_template, default_instruction, examples, append_eos, prepend_bos,
             include_prompt, attention (causal|bidirectional), batching (auto|packed|padded),
             token_budget, max_batch_size, attention_backend, deterministic,
             deterministic_tile_rows, quantize, trust_remote_code, base_model, threads,
             cpu_parallelism
  `embedsvc inspect SOURCE` shows the recipe a model gets and where each part came from.
  A --model whose NAME matches a [[models]] entry takes that entry's options.

threads (--threads N, threads = N, EMBEDSVC_THREADS=N): the cores this server may use, as one
  budget: torch's intra-op threads and the Rust tokenizer's pool get N each (they take turns:
  the next batch is tokenized while the forward runs; idle threads sleep), the tokenizing
  workers min(N, 2). A model's own threads option and tokenizer_threads override their part.
  Unset: every core, tokenizer_threads 2.
cpu_parallelism (--cpu-parallelism, cpu_parallelism = ..., EMBEDSVC_CPU_PARALLELISM): "batches"
  (default) runs a CPU forward's batches side by side, one intra-op thread each, so a core taken
  by another process slows it in proportion instead of stalling every operator's barrier;
  "operators" runs one batch at a time on torch's intra-op threads (one long input on many cores).

settings: defaults < --config file < environment < flags; a flag not given never overrides.
  Every [server] key can be set as EMBEDSVC_<KEY> (EMBEDSVC_HOST, EMBEDSVC_PORT, EMBEDSVC_HTTP=false,
  EMBEDSVC_TLS_CERT, EMBEDSVC_TLS_KEY, EMBEDSVC_DATA_DIR, ...).
  EMBEDSVC_API_KEY    API key(s), comma-separated; keys from the file, the environment and --api-key
                      are all accepted (an empty key is refused); clients (embedsvc embed, index,
                      models) send the first one

listeners: gRPC on 127.0.0.1:50051 and HTTP (OpenAI /v1/embeddings, TEI /embed) on :8080 by
  default; --no-http (or http = false) serves gRPC only. With TLS, HTTP is HTTPS with the same
  certificate. While it runs, the server keeps a small state file (pid, port, starting/serving)
  in $XDG_RUNTIME_DIR/embedsvc (else a per-user temp folder) so that `--wait` in the clients stops
  early when the server it waits for died starting.
"""


def parse_model(value: str) -> ModelConfig:
    name, sep, source = value.partition("=")
    if not sep:
        name, source = "", value
    if sep and ("/" in name or not name):
        raise argparse.ArgumentTypeError(f"--model {value!r}: expected [NAME=]SOURCE")
    return ModelConfig(name=name or None, source=None if source in (BUNDLED, "") else source)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the gRPC embedding server",
        description="Serve one or more embedding models over gRPC on one port.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        action="append",
        type=parse_model,
        metavar="[NAME=]SOURCE",
        dest="models",
        help="a model to serve (repeatable); see below",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with [server] and [[models]]")
    p.add_argument("--host", help="address to bind (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics HTTP port (default: off)")
    http = p.add_mutually_exclusive_group()
    http.add_argument(
        "--http-port",
        type=int,
        help="port of the OpenAI- (/v1/embeddings) and TEI-compatible (/embed) HTTP front door "
        "(default 8080; 0 = any free port)",
    )
    http.add_argument("--no-http", action="store_true", help="serve gRPC only (config: http = false)")
    p.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="require 'authorization: Bearer KEY' (repeatable); health stays open",
    )
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate chain (with --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="server private key (with --tls-cert)")
    p.add_argument("--max-inputs-per-request", type=int, help="texts per request (default 2048)")
    p.add_argument("--max-message-bytes", type=int, help="largest gRPC message (default 64 MiB)")
    p.add_argument(
        "--max-queue-requests", type=int, help="requests queued per model before RESOURCE_EXHAUSTED"
    )
    p.add_argument("--max-queue-tokens", type=int, help="tokens queued per model before RESOURCE_EXHAUSTED")
    p.add_argument(
        "--max-queue-seconds",
        type=float,
        help="work admitted per model, in seconds of its measured throughput, before RESOURCE_EXHAUSTED "
        "(default 20)",
    )
    p.add_argument(
        "--http-idle-timeout",
        type=float,
        dest="http_idle_timeout_s",
        help="seconds an HTTP connection may wait for a request's headers or sit idle (default 10)",
    )
    p.add_argument(
        "--max-http-connections",
        type=int,
        help="HTTP connections open at once (default: a quarter of the file descriptor limit)",
    )
    p.add_argument(
        "--max-filter-leaves", type=int, help="conditions + listed values in a search filter (default 16384)"
    )
    p.add_argument(
        "--max-multi-vector-values",
        type=int,
        help="multi-vector floats one request may ask for (default 33554432 = 128 MiB of float32)",
    )
    p.add_argument("--max-text-bytes", type=int, help="bytes per input text (default 1 MiB)")
    p.add_argument("--max-request-bytes", type=int, help="bytes of input text per request (default 8 MiB)")
    p.add_argument(
        "--batch-wait-ms", type=float, help="wait this long for concurrent requests to join a batch"
    )
    p.add_argument(
        "--grace-period",
        type=float,
        dest="grace_period_s",
        help="seconds in-flight requests get on SIGTERM/SIGINT (default 10)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where vector indexes are kept durably (default: in memory, lost on exit)",
    )
    p.add_argument(
        "--index-device",
        help="where FAISS answers unfiltered searches: auto (a GPU when the installed faiss has one), "
        "cpu, gpu, gpu:N (default auto)",
    )
    p.add_argument(
        "--cache-mb",
        type=float,
        metavar="MIB",
        help="keep embedded texts in an LRU cache of this many MiB, keyed by model fingerprint, options and "
        "text (default 0: off); hits are bitwise recomputations only with deterministic = true",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="cores this server may use: forward threads, tokenizer pool and tokenizing workers sized "
        "as one budget (default: every core); see below",
    )
    p.add_argument(
        "--cpu-parallelism",
        choices=["batches", "operators"],
        help="CPU forward: whole batches side by side on one thread each (default; a busy machine slows "
        "it in proportion) or one batch at a time on torch's intra-op threads (one long input, many cores)",
    )
    p.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    p.add_argument("--plain-logs", action="store_true", help="human-readable logs instead of JSON lines")
    g = p.add_argument_group("model options (apply to every served model; per model: config file)")
    g.add_argument(
        "--dtype", choices=list(DTYPE_ALIASES), help="default: bfloat16 on a GPU that has it, else float32"
    )
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    g.add_argument("--pooling", choices=list(POOLING_MODES))
    g.add_argument("--profile", help="model family whose recipe to use (default: from the files)")
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="run modeling code shipped inside a checkpoint (config.json auto_map); read it first",
    )
    g.add_argument("--max-length", type=int)
    g.add_argument("--conversion", choices=["none", "echo", "prompteol", "bidirectional"])
    g.add_argument("--batching", choices=["auto", "packed", "padded"])
    g.add_argument("--token-budget", type=int, help="tokens per forward pass (padding counted)")
    g.add_argument("--max-batch-size", type=int, help="sequences per forward pass")
    g.add_argument(
        "--quantize",
        choices=["none", "int8"],
        help="CPU: int8 linear layers through ONNX Runtime (pip install 'embedsvc[int8]')",
    )
    g.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="bitwise batch-invariant embeddings (same text, same bits, whatever the batch)",
    )
    p.set_defaults(handler=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from embedsvc.runtime import StateFile
    from embedsvc.server import logs
    from embedsvc.server.app import serve
    from embedsvc.server.preflight import check_before_start

    file_data = load_toml(args.config) if args.config else None
    model_options = {
        k: getattr(args, k)
        for k in (
            "dtype",
            "device",
            "pooling",
            "max_length",
            "conversion",
            "batching",
            "token_budget",
            "max_batch_size",
            "deterministic",
            "quantize",
            "profile",
            "trust_remote_code",
        )
        if getattr(args, k) is not None
    }
    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
        "http": False if args.no_http else (True if args.http_port is not None else None),
        "http_port": args.http_port,
        "api_keys": args.api_keys,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "max_inputs_per_request": args.max_inputs_per_request,
        "max_message_bytes": args.max_message_bytes,
        "max_queue_requests": args.max_queue_requests,
        "max_queue_tokens": args.max_queue_tokens,
        "max_queue_seconds": args.max_queue_seconds,
        "max_text_bytes": args.max_text_bytes,
        "max_request_bytes": args.max_request_bytes,
        "batch_wait_ms": args.batch_wait_ms,
        "http_idle_timeout_s": args.http_idle_timeout_s,
        "max_http_connections": args.max_http_connections,
        "max_filter_leaves": args.max_filter_leaves,
        "max_multi_vector_values": args.max_multi_vector_values,
        "grace_period_s": args.grace_period_s,
        "threads": args.threads,
        "cpu_parallelism": args.cpu_parallelism,
        "log_level": args.log_level,
        "log_json": False if args.plain_logs else None,
        "data_dir": args.data_dir,
        "index_device": args.index_device,
        "cache_mb": args.cache_mb,
        "models": args.models,
        "model_options": model_options,
    }
    config = build_server_config(file_data, overrides, path=args.config or "config", environ=os.environ)
    state = StateFile(config.host, config.port)  # what `--wait` in a client reads
    state.update("starting")
    try:
        check_before_start(config)  # the whole config, before a port is bound or a model loaded
        logs.configure(config.log_level, config.log_json, native=True)
        asyncio.run(serve(config, on_serving=lambda port: state.update("serving", port=port)))
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            state.update("failed", error=describe(exc)[0])
            raise
        state.remove()
        raise
    state.remove()
    return 0
