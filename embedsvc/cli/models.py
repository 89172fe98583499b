"""``embedsvc models``: what a running server serves (ListModels)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from embedsvc.cli.output import print_json, print_table
from embedsvc.cli.remote import open_client
from embedsvc.wire import ModelInfo


def add_parser(sub: Any, common: argparse.ArgumentParser, connection: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "models",
        parents=[common, connection],
        help="list the models a running server serves",
        description="List the models a running server serves, with their dimensions, recipe and device.",
        epilog="example:\n  embedsvc models --target 10.0.0.5:50051 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="every field, as JSON")
    p.set_defaults(handler=run, parser=p)


def run(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        models = client.list_models()
    if args.json:
        print_json([dataclasses.asdict(m) for m in models])
        return 0
    header = ("MODEL", "TASK", "OUTPUTS", "DIM", "MAX TOKENS", "POOLING", "DEVICE", "DTYPE", "QUANTIZED")
    print_table(
        [
            (
                m.name + (" (default)" if m.default else ""),
                m.task,
                _outputs(m),
                m.dimension,
                m.max_length,
                m.pooling,
                m.device,
                m.dtype,
                m.quantization,
                m.source,
            )
            for m in models
        ],
        (*header, "SOURCE"),
    )
    return 0


def _outputs(model: ModelInfo) -> str:
    """What a call gives back: an embedder's outputs (dense, sparse, multi_vector), a reranker's one
    score, a classifier's labels."""
    if model.task == "embed":
        return ",".join(model.outputs)
    if model.task == "classify":
        return f"labels({len(model.labels)})"
    return "score"
