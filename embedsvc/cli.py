"""Command line: ``embedsvc serve``, ``embedsvc embed``, ``embedsvc inspect``, ``embedsvc index``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from embedsvc.config import ModelConfig, build_server_config, load_toml
from embedsvc.errors import EmbedsvcError, InvalidInputError
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
  [server]   host, port, http_port, metrics_port, api_keys, tls_cert, tls_key, max_inputs_per_request,
             max_message_bytes, max_text_bytes, max_request_bytes, max_queue_requests,
             max_queue_tokens, max_queue_seconds, max_streams, batch_wait_ms,
             grace_period_s, tokenizer_threads, log_level, log_json, data_dir,
             index_fsync, snapshot_every, index_device
  [[models]] name, source, default, and any engine option: pooling, normalize, dtype, device,
             max_length, profile, conversion (none|echo|prompteol|bidirectional), prompts,
             default_prompt_name, query_prompt_name, document_prompt_name,
             instruction_template, default_instruction, examples, append_eos, prepend_bos,
             include_prompt, attention (causal|bidirectional), batching (auto|packed|padded),
             token_budget, max_batch_size, attention_backend, deterministic,
             deterministic_tile_rows, quantize, trust_remote_code, base_model
  `embedsvc inspect SOURCE` shows the recipe a model gets and where each part came from.
  Flags given on the command line win over the file. A --model whose NAME matches a
  [[models]] entry takes that entry's options.

environment:
  EMBEDSVC_API_KEYS   comma-separated API keys (instead of --api-key on the command line)
"""


def _parse_model(value: str) -> ModelConfig:
    name, sep, source = value.partition("=")
    if not sep:
        name, source = "", value
    if sep and ("/" in name or not name):
        raise argparse.ArgumentTypeError(f"--model {value!r}: expected [NAME=]SOURCE")
    return ModelConfig(name=name or None, source=None if source in (BUNDLED, "") else source)


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the gRPC embedding server",
        description="Serve one or more embedding models over gRPC on one port.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        action="append",
        type=_parse_model,
        metavar="[NAME=]SOURCE",
        dest="models",
        help="a model to serve (repeatable); see below",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with [server] and [[models]]")
    p.add_argument("--host", help="address to bind (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics HTTP port (default: off)")
    p.add_argument(
        "--http-port",
        type=int,
        help="also serve OpenAI- (/v1/embeddings) and TEI-compatible (/embed) HTTP on this port "
        "(default: off; 0 = any free port)",
    )
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
    p.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    p.add_argument("--plain-logs", action="store_true", help="human-readable logs instead of JSON lines")
    g = p.add_argument_group("model options (apply to every served model; per model: config file)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
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


def _serve(args: argparse.Namespace) -> int:
    from embedsvc.server import logs
    from embedsvc.server.app import serve

    file_data = load_toml(args.config) if args.config else None
    # keys from the command line and the environment add to the config file's, never replace them
    api_keys = list(args.api_keys or [])
    if os.environ.get("EMBEDSVC_API_KEYS"):
        api_keys += [k.strip() for k in os.environ["EMBEDSVC_API_KEYS"].split(",") if k.strip()]
    if api_keys:
        from_file = (file_data or {}).get("server", {}).get("api_keys") or []
        api_keys = list(dict.fromkeys([*from_file, *api_keys]))
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
        "http_port": args.http_port,
        "api_keys": api_keys,
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
        "grace_period_s": args.grace_period_s,
        "log_level": args.log_level,
        "log_json": False if args.plain_logs else None,
        "data_dir": args.data_dir,
        "index_device": args.index_device,
        "models": args.models,
        "model_options": model_options,
    }
    config = build_server_config(file_data, overrides, path=args.config or "config")
    logs.configure(config.log_level, config.log_json)
    asyncio.run(serve(config))
    return 0


def _embed_parser(sub: Any) -> None:
    p = sub.add_parser("embed", help="embed texts with a running server and print JSON lines")
    p.add_argument("texts", nargs="+")
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--model")
    p.add_argument("--input-type", choices=["query", "document"])
    p.add_argument("--dimensions", type=int)
    p.add_argument("--api-key", default=os.environ.get("EMBEDSVC_API_KEY"))


def _embed(args: argparse.Namespace) -> int:
    from embedsvc.client import EmbedClient

    with EmbedClient(args.target, api_key=args.api_key) as client:
        vectors = client.embed(
            args.texts, model=args.model, input_type=args.input_type, dimensions=args.dimensions
        )
    for text, vector in zip(args.texts, vectors, strict=True):
        print(json.dumps({"text": text, "embedding": [round(float(x), 7) for x in vector]}))
    return 0


INSPECT_EPILOG = """\
Loads the checkpoint as `embedsvc serve` would and prints its recipe: the family and why it was
chosen, every setting (pooling, attention, BOS/EOS, prompts, instruction format, max length) with
the file, profile or option it came from, warnings where the checkpoint's files contradict each
other, and the exact tokens a sample query and document become (and which of them are pooled).
Options are the [[models]] keys, e.g. --set profile=gritlm --set 'examples=[...]' (JSON values).
"""


def _inspect_parser(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="show the recipe a checkpoint gets, and where each part of it came from",
        description="Audit how a checkpoint will be embedded before embedding a corpus with it.",
        epilog=INSPECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help=f"checkpoint folder, hub id, or {BUNDLED}")
    p.add_argument("--profile", help="model family whose recipe to use (default: from the files)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own code")
    p.add_argument("--device", default="cpu", help="device to load on (default cpu)")
    p.add_argument("--dtype", help="float32, float16, bfloat16")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any model option (JSON value)"
    )
    p.add_argument("--query", help="sample query to tokenize")
    p.add_argument("--document", help="sample document to tokenize")
    p.add_argument("--json", action="store_true", help="print the recipe as JSON")


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string


def _inspect(args: argparse.Namespace) -> int:
    import logging

    from embedsvc import Embedder
    from embedsvc.models import recipe as recipe_module

    logging.basicConfig(level=logging.ERROR)  # warnings are part of the output below
    options: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--set {item!r}: expected KEY=VALUE")
        options[key.strip()] = _option_value(value)
    if args.profile:
        options["profile"] = args.profile
    if args.trust_remote_code:
        options["trust_remote_code"] = True
    source = None if args.source == BUNDLED else args.source
    embedder = Embedder.from_pretrained(source, device=args.device, dtype=args.dtype, **options)
    recipe = recipe_module.describe_recipe(
        embedder,
        query=args.query or recipe_module.SAMPLE_QUERY,
        document=args.document or recipe_module.SAMPLE_DOCUMENT,
    )
    if args.json:
        print(json.dumps(recipe.to_dict(), indent=2, default=str))
    else:
        print(recipe_module.render_text(recipe))
    return 0


INDEX_EPILOG = """\
modes:
  remote   --target HOST:PORT    through a running server (batched Upsert, --in-flight at once);
                                 --model picks the served model a new index is bound to
  local    --data-dir DIR        the engine in this process writes the index directory, which
                                 `embedsvc serve --data-dir DIR --model SOURCE` serves later;
                                 --model is the checkpoint (default: the bundled model)
  store    --to qdrant|milvus URL
                                 an external vector store instead of an embedsvc index (the
                                 --index name is its collection): embedded in this process
                                 (--model), or by a server with --target. URL: http(s)://HOST:PORT,
                                 a directory (Qdrant local mode) or a .db file (Milvus Lite);
                                 keys from QDRANT_API_KEY / MILVUS_TOKEN

resuming:
  progress is checkpointed after every acknowledged batch; rerunning the same command after a
  crash or Ctrl-C continues where it stopped, and the index holds each document exactly once.
  --restart deletes the index, the checkpoint and the rejects file and starts over.

scale-out: --ray runs the same pipeline on Ray Data (pip install 'ray[data]'); --ray-address
points it at a cluster. Ids are the same, so reruns replace; it keeps no mid-run checkpoint.

bad records (missing text field, invalid UTF-8, empty text, invalid JSON) are skipped, counted
and written to the rejects file with the reason.
"""


def _index_parser(sub: Any) -> None:
    p = sub.add_parser("index", help="build vector indexes from corpora")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser(
        "build",
        help="embed a corpus into an index, resumably",
        description="Read JSONL, CSV/TSV, Parquet or text files, chunk, embed and upsert into an index.",
        epilog=INDEX_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("inputs", nargs="+", metavar="INPUT", help="files or globs (quote globs)")
    b.add_argument("--index", required=True, help="index name (created if missing)")
    mode = b.add_mutually_exclusive_group()
    mode.add_argument("--target", metavar="HOST:PORT", help="remote mode: a running embedsvc server")
    mode.add_argument("--data-dir", metavar="DIR", help="local mode: index directory")
    b.add_argument(
        "--to", nargs=2, metavar=("STORE", "URL"), help="write to an external store: qdrant URL or milvus URL"
    )
    b.add_argument("--model", help="local: checkpoint folder or hub id; remote: served model name")
    b.add_argument("--api-key", default=os.environ.get("EMBEDSVC_API_KEY"))
    b.add_argument(
        "--format",
        choices=["jsonl", "csv", "tsv", "parquet", "text"],
        help="input format (default: from the file extension; unknown extensions are text)",
    )
    b.add_argument("--id-field", help="field holding the document id (default: FILE:RECORD)")
    b.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    b.add_argument("--metadata-fields", default="", help="comma-separated fields stored as metadata")
    b.add_argument("--chunk-tokens", type=int, help="split documents into windows of this many tokens")
    b.add_argument("--chunk-overlap", type=int, default=0, help="tokens shared by consecutive windows")
    b.add_argument("--batch-size", type=int, default=64, help="chunks per upsert (default 64)")
    b.add_argument("--in-flight", type=int, default=4, help="upserts outstanding at once (remote mode)")
    b.add_argument("--metric", default="cosine", choices=["cosine", "inner_product", "l2"])
    b.add_argument("--kind", default="flat", choices=["flat", "hnsw", "ivf_flat", "ivf_pq"])
    b.add_argument("--checkpoint", help="checkpoint file (default: under the data dir, or ./.embedsvc/)")
    b.add_argument("--rejects", help="rejects file (default: INDEX.rejects.jsonl)")
    b.add_argument("--tokenizer", help="remote mode: tokenizer for chunking (default: the served model's)")
    b.add_argument("--restart", action="store_true", help="drop the index and the checkpoint, start over")
    b.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    b.add_argument(
        "--ray",
        action="store_true",
        help="run on Ray Data: parallel reading/chunking tasks, embedding in an actor pool",
    )
    b.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster (e.g. ray://HEAD:10001; default: RAY_ADDRESS or a local instance)",
    )
    b.add_argument("--ray-actors", type=int, help="embedding actors (default: one per two CPU slots)")
    r = isub.add_parser(
        "repair",
        help="salvage a damaged index in a data directory (offline)",
        description="Recover what a damaged index still holds: its snapshot if readable, then its log "
        "records in order up to the first damaged or missing one. Damaged files are moved aside "
        "(*.damaged-TIME), never deleted; prints what was recovered and what was not. The server must "
        "be stopped (it holds the directory).",
    )
    r.add_argument("name", help="index name")
    r.add_argument("--data-dir", required=True, metavar="DIR")
    e = isub.add_parser(
        "export",
        help="copy an index into Qdrant or Milvus (offline)",
        description="Copy every item of an index (vectors as stored, ids, metadata) from a data directory "
        "into an external store's collection, created with the index's dimension and metric. Writes "
        "replace by id: an interrupted export is finished by running it again. The server must be "
        "stopped (it holds the directory).",
    )
    e.add_argument("name", help="index name")
    e.add_argument("--data-dir", required=True, metavar="DIR")
    e.add_argument("--to", nargs=2, required=True, metavar=("STORE", "URL"), help="qdrant URL or milvus URL")
    e.add_argument("--collection", help="collection name in the store (default: the index name)")
    e.add_argument("--batch-size", type=int, default=1000, help="items per write (default 1000)")
    e.add_argument("--restart", action="store_true", help="drop the collection in the store first")
    e.add_argument("--api-key", help="store key (default: QDRANT_API_KEY / MILVUS_TOKEN)")


def _repair(args: argparse.Namespace) -> int:
    from pathlib import Path

    from embedsvc.index.manager import IndexManager

    manager = IndexManager(Path(args.data_dir))
    try:
        report = manager.repair(args.name)
    finally:
        manager.close()
    print(json.dumps(report, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from embedsvc.stores import open_store
    from embedsvc.stores.export import export_index

    if args.batch_size < 1:
        raise InvalidInputError("--batch-size must be at least 1", field="batch_size")
    store = open_store(args.to[0], args.to[1], api_key=args.api_key)
    try:
        report = export_index(
            Path(args.data_dir),
            args.name,
            store,
            collection=args.collection,
            batch_size=args.batch_size,
            restart=args.restart,
            progress=sys.stderr.isatty(),
        )
    finally:
        store.close()
    print(json.dumps(report, indent=2))
    return 0


def _index(args: argparse.Namespace) -> int:
    import logging

    if args.index_command == "repair":
        return _repair(args)
    if args.index_command == "export":
        return _export(args)

    from embedsvc.pipeline import BuildOptions, build_index
    from embedsvc.pipeline.readers import ReaderOptions
    from embedsvc.pipeline.sinks import PipelineStopped

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    fields = tuple(f.strip() for f in args.metadata_fields.split(",") if f.strip())
    options = BuildOptions(
        index=args.index,
        target=args.target,
        data_dir=args.data_dir,
        store=args.to[0] if args.to else None,
        store_url=args.to[1] if args.to else None,
        model=args.model,
        api_key=args.api_key,
        reader=ReaderOptions(
            id_field=args.id_field, text_field=args.text_field, metadata_fields=fields, format=args.format
        ),
        chunk_tokens=args.chunk_tokens,
        chunk_overlap=args.chunk_overlap,
        batch_size=args.batch_size,
        in_flight=args.in_flight,
        checkpoint=args.checkpoint,
        rejects=args.rejects,
        restart=args.restart,
        metric=args.metric,
        kind=args.kind,
        progress=False if args.no_progress else None,
        tokenizer=args.tokenizer,
    )
    try:
        if args.ray:
            from embedsvc.pipeline.ray_runner import build_index_ray

            summary = build_index_ray(args.inputs, options, address=args.ray_address, actors=args.ray_actors)
        else:
            summary = build_index(args.inputs, options=options)
    except PipelineStopped as exc:
        print(
            f"embedsvc index build: stopped: {exc}\nprogress is saved; rerun the same command to continue",
            file=sys.stderr,
        )
        return 3
    except KeyboardInterrupt:
        print("embedsvc index build: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"embedsvc index build: error: {exc}", file=sys.stderr)
        return 2
    print(summary.report())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embedsvc", description="gRPC embedding service")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _embed_parser(sub)
    _inspect_parser(sub)
    _index_parser(sub)
    args = parser.parse_args(argv)
    try:
        return {"serve": _serve, "embed": _embed, "inspect": _inspect, "index": _index}[args.command](args)
    except EmbedsvcError as exc:
        print(f"embedsvc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
