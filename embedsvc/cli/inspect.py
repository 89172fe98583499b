"""``embedsvc inspect``: the recipe a checkpoint gets, offline."""

from __future__ import annotations

import argparse
import json
from typing import Any

from embedsvc.cli.failures import USAGE, CommandError
from embedsvc.cli.serve import BUNDLED

INSPECT_EPILOG = """\
Loads the checkpoint as `embedsvc serve` would and prints its recipe: its task (embed, rerank,
classify), the family and why it was chosen; for a reranker or classifier the scoring recipe (head,
activation, prompt template, the LM-head token ids an LLM reranker reads) and the tokens of a sample
pair; for an embedder every setting (pooling, attention, BOS/EOS, prompts, instruction format, max
length) with the file, profile or option it came from, warnings where the checkpoint's files
contradict each other, and the exact tokens a sample query and document become (and which of them
are pooled), and the model fingerprint the server will attach to every answer.
Options are the [[models]] keys, e.g. --set profile=gritlm --set 'examples=[...]' (JSON values).
"""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "inspect",
        parents=[common],
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
    p.set_defaults(handler=run, parser=p)


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string


def run(args: argparse.Namespace) -> int:
    import logging

    from embedsvc.engine import recipe as recipe_module
    from embedsvc.engine.fingerprint import served_fingerprint
    from embedsvc.engine.scorer import Scorer, load_served

    logging.basicConfig(level=logging.ERROR)  # warnings are part of the output below
    options: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--set {item!r}: expected KEY=VALUE", USAGE)
        options[key.strip()] = _option_value(value)
    if args.profile:
        options["profile"] = args.profile
    if args.trust_remote_code:
        options["trust_remote_code"] = True
    source = None if args.source == BUNDLED else args.source
    model = load_served(source, device=args.device, dtype=args.dtype, **options)
    if isinstance(model, Scorer):
        recipe = model.describe_recipe(
            query=args.query or recipe_module.SAMPLE_QUERY,
            document=args.document or recipe_module.SAMPLE_DOCUMENT,
        )
    else:
        recipe = recipe_module.describe_recipe(
            model,
            query=args.query or recipe_module.SAMPLE_QUERY,
            document=args.document or recipe_module.SAMPLE_DOCUMENT,
        )
    fingerprint = served_fingerprint(model)
    if args.json:
        data = {**recipe.to_dict(), "fingerprint": fingerprint.digest, "fingerprint_parts": fingerprint.parts}
        print(json.dumps(data, indent=2, default=str))
    else:
        print(recipe_module.render_text(recipe))
        print(f"\nfingerprint {fingerprint.digest}  (weights, recipe and numerics; --json lists its parts)")
    return 0
