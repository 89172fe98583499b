"""``embedsvc index build`` (resumable corpus ingestion), ``index repair`` and ``index export``."""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path
from typing import Any

from embedsvc.cli.failures import INTERRUPTED, NOT_FOUND, STOPPED, USAGE, CommandError, describe
from embedsvc.cli.remote import API_KEY_ENV, api_key_of, target_of

INDEX_EPILOG = """\
modes:
  remote   --target HOST:PORT    (the default mode; target: $EMBEDSVC_TARGET, else 127.0.0.1:50051)
                                 through a running server (batched Upsert, --in-flight at once);
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

index parts:
  --store-text, --sparse [VOCAB], --multi-vector [WIDTH] as for `index create`, for an index the
  build creates (a bge-m3 model: --sparse --multi-vector builds a hybrid index in one command);
  with --to, --sparse / --multi-vector write the model's sparse / token vectors into the store
  (Qdrant named vectors dense, sparse, tokens; Milvus a sparse field, no token vectors)

resuming:
  progress is checkpointed after every acknowledged batch; rerunning the same command after a
  crash or Ctrl-C continues where it stopped, and the index holds each document exactly once.
  The checkpoint records the index parts: a rerun without those flags keeps them.
  --restart deletes the index, the checkpoint and the rejects file and starts over.

scale-out: --ray runs the same pipeline on Ray Data (pip install 'ray[data]'); --ray-address
points it at a cluster. Ids are the same, so reruns replace; it keeps no mid-run checkpoint.

bad records (missing text field, invalid UTF-8, empty text, invalid JSON) are skipped, counted
and written to the rejects file with the reason.
"""


def add_parsers(isub: Any, common: argparse.ArgumentParser) -> None:
    """``index build`` (any mode), ``index repair`` and ``index export`` (offline, on a data directory)."""
    b = isub.add_parser(
        "build",
        parents=[common],
        help="embed a corpus into an index, resumably",
        description="Read JSONL, CSV/TSV, Parquet or text files, chunk, embed and upsert into an index.",
        epilog=INDEX_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("inputs", nargs="+", metavar="INPUT", help="files or globs (quote globs)")
    b.add_argument("--index", required=True, help="index name (created if missing)")
    mode = b.add_mutually_exclusive_group()
    mode.add_argument(
        "--target",
        metavar="HOST:PORT",
        help="remote mode (the default): a running server (default: $EMBEDSVC_TARGET, else 127.0.0.1:50051)",
    )
    mode.add_argument("--data-dir", metavar="DIR", help="local mode: index directory")
    b.add_argument(
        "--to", nargs=2, metavar=("STORE", "URL"), help="write to an external store: qdrant URL or milvus URL"
    )
    b.add_argument("--model", help="local: checkpoint folder or hub id; remote: served model name")
    b.add_argument("--api-key", help=f"server API key (default: ${API_KEY_ENV})")
    b.add_argument(
        "--tls", action="store_true", help="remote mode: connect with TLS, trusting the system's CAs"
    )
    b.add_argument("--tls-ca", metavar="PEM", help="remote mode: TLS, trusting this CA certificate")
    b.add_argument(
        "--format",
        choices=["jsonl", "csv", "tsv", "parquet", "text"],
        help="input format (default: from the file extension; unknown extensions are text)",
    )
    b.add_argument(
        "--id-field",
        help="field holding the document id, required in every record (default: the field 'id' where a "
        "record has one, else FILE:RECORD)",
    )
    b.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    b.add_argument("--metadata-fields", default="", help="comma-separated fields stored as metadata")
    b.add_argument("--chunk-tokens", type=int, help="split documents into windows of this many tokens")
    b.add_argument("--chunk-overlap", type=int, default=0, help="tokens shared by consecutive windows")
    b.add_argument("--batch-size", type=int, default=64, help="chunks per upsert (default 64)")
    b.add_argument("--in-flight", type=int, default=4, help="upserts outstanding at once (remote mode)")
    b.add_argument("--metric", default="cosine", choices=["cosine", "inner_product", "l2"])
    b.add_argument("--kind", default="flat", choices=["flat", "hnsw", "ivf_flat", "ivf_pq"])
    b.add_argument(
        "--store-text",
        action="store_true",
        help="a new index keeps each chunk's text (returned with --texts; needed by --rerank and reembed)",
    )
    b.add_argument(
        "--sparse",
        type=int,
        nargs="?",
        const=0,
        metavar="VOCAB",
        help="keep / write the model's sparse vectors too (VOCAB: term ids below it; default the model's)",
    )
    b.add_argument(
        "--multi-vector",
        type=int,
        nargs="?",
        const=0,
        metavar="WIDTH",
        help="keep / write the model's token vectors for MaxSim (WIDTH: default the model's; not Milvus)",
    )
    b.add_argument(
        "--checkpoint",
        help="checkpoint file (default: DATA_DIR/pipeline/INDEX.checkpoint.json; remote or store mode: "
        "./.embedsvc/INDEX-HASH/)",
    )
    b.add_argument("--rejects", help="rejects file (default: beside the checkpoint, INDEX.rejects.jsonl)")
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
    b.set_defaults(handler=_build, parser=b)
    r = isub.add_parser(
        "repair",
        parents=[common],
        help="salvage a damaged index in a data directory (offline)",
        description="Recover what a damaged index still holds: its snapshot if readable, then its log "
        "records in order up to the first damaged or missing one. Damaged files are moved aside "
        "(*.damaged-TIME), never deleted; prints what was recovered and what was not. The server must "
        "be stopped (it holds the directory).",
    )
    r.add_argument("name", help="index name")
    r.add_argument("--data-dir", required=True, metavar="DIR")
    r.set_defaults(handler=_repair, parser=r)
    e = isub.add_parser(
        "export",
        parents=[common],
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
    e.set_defaults(handler=_export, parser=e)


def _existing_data_dir(path: str) -> Path:
    """An offline command reads a data directory; it never creates one (a typo would look empty)."""
    folder = Path(path)
    if not folder.is_dir():
        raise CommandError(
            f"--data-dir {path}: no such directory (give the folder `embedsvc serve --data-dir` uses)",
            NOT_FOUND,
        )
    return folder


def _repair(args: argparse.Namespace) -> int:
    from embedsvc.index.manager import IndexManager

    data_dir = _existing_data_dir(args.data_dir)
    manager = IndexManager(data_dir)
    try:
        report = manager.repair(args.name)
    finally:
        manager.close()
    print(json.dumps(report, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from embedsvc.stores import open_store
    from embedsvc.stores.export import export_index

    if args.batch_size < 1:
        raise CommandError("--batch-size must be at least 1", USAGE)
    data_dir = _existing_data_dir(args.data_dir)
    store = open_store(args.to[0], args.to[1], api_key=args.api_key)
    try:
        report = export_index(
            data_dir,
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


def _check_inputs(inputs: list[str]) -> None:
    """A folder (or a glob matching only folders) reads nothing: say so instead of indexing nothing."""
    for pattern in inputs:
        matched = glob.glob(pattern, recursive=True)
        if matched and not any(Path(m).is_file() for m in matched):
            folder = pattern.rstrip("/")
            raise CommandError(
                f"{pattern}: a directory, not a file; pass its files, e.g. '{folder}/*.jsonl' or "
                f"'{folder}/**/*.jsonl' (quoted, so that the glob reaches embedsvc)",
                USAGE,
            )


def _saved_documents(options: Any) -> int:
    """Documents the checkpoint holds (0: nothing was written, there is no progress to continue)."""
    from embedsvc.pipeline.checkpoint import default_paths

    try:
        checkpoint, _ = default_paths(options)
        return int(json.loads(checkpoint.read_text())["totals"]["documents"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _stopped(exc: BaseException, options: Any, target: str | None) -> CommandError:
    saved = _saved_documents(options)
    if saved:
        return CommandError(
            f"stopped: {exc}; progress is saved ({saved} documents): rerun the same command to continue",
            STOPPED,
        )
    from embedsvc.client import EmbedServiceError

    cause = exc.__cause__
    if isinstance(cause, EmbedServiceError):  # e.g. no server ever answered: say that, with its code
        message, code = describe(cause, target)
        return CommandError(f"stopped before anything was written: {message}", code)
    return CommandError(f"stopped before anything was written: {exc}", STOPPED)


def _build(args: argparse.Namespace) -> int:
    import logging

    from embedsvc.pipeline import BuildOptions, build_index
    from embedsvc.pipeline.readers import ReaderOptions
    from embedsvc.pipeline.sinks import PipelineStopped

    _check_inputs(args.inputs)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    fields = tuple(f.strip() for f in args.metadata_fields.split(",") if f.strip())
    options = BuildOptions(
        index=args.index,
        target=args.target or (target_of(args) if not (args.data_dir or args.to) else None),
        data_dir=args.data_dir,
        store=args.to[0] if args.to else None,
        store_url=args.to[1] if args.to else None,
        model=args.model,
        api_key=args.api_key or api_key_of(args),
        tls=bool(args.tls or args.tls_ca),
        tls_ca=args.tls_ca,
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
        store_text=args.store_text,
        sparse=args.sparse,
        multi_vector=args.multi_vector,
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
        raise _stopped(exc, options, options.target) from exc
    except KeyboardInterrupt:
        saved = _saved_documents(options)
        raise CommandError(
            f"interrupted; progress is saved ({saved} documents): rerun the same command to continue"
            if saved
            else "interrupted before anything was written",
            INTERRUPTED,
        ) from None
    print(summary.report())
    return 0
