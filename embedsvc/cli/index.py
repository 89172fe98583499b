"""``embedsvc index ...`` on a running server: list, describe, count, get, search, delete, drop, create,
rebind, reembed."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from embedsvc.cli import build
from embedsvc.cli.failures import NOT_FOUND, USAGE, CommandError
from embedsvc.cli.output import print_json, print_table, vector_json, warn
from embedsvc.cli.remote import open_client
from embedsvc.index.ann import KIND_PARAMS, KINDS, METRICS

MAX_PAGE = 10_000  # ids per ListIds call (the server's limit)

EXAMPLES = """\
examples:
  embedsvc index create docs --kind hnsw --hnsw-m 32 --store-text
  embedsvc index build corpus.jsonl --index docs --target 127.0.0.1:50051
  embedsvc index list
  embedsvc index describe docs
  embedsvc index ids docs --limit 20
  embedsvc index search docs "how do I rotate keys?" -k 5 --filter '{"lang": "en"}'
  embedsvc index search docs "rotate keys" -k 5 --rerank my-reranker --candidates 50 --texts
  embedsvc index get docs doc-17 --vectors
  embedsvc index reembed docs        (after the model changed: every stored text embedded again)
  embedsvc index rebind docs         (accept the changed model's vectors beside the old ones)
  embedsvc index delete docs doc-17 doc-18
  embedsvc index drop docs --yes
  embedsvc index export docs --data-dir ./data --to qdrant http://localhost:6333   (server stopped)
"""


def add_parser(sub: Any, common: argparse.ArgumentParser, connection: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "index",
        parents=[common],
        help="vector indexes: create, build, list, describe, search, get, delete, drop, export, repair, "
        "rebind, reembed",
        description="Manage and query vector indexes.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(parser=p)
    isub = p.add_subparsers(dest="index_command", required=True, metavar="COMMAND")
    parents = [common, connection]

    def command(name: str, help_text: str, handler: Any) -> argparse.ArgumentParser:
        q = isub.add_parser(
            name, parents=parents, help=help_text, description=help_text[0].upper() + help_text[1:]
        )
        q.set_defaults(handler=handler, parser=q)
        return q

    q = command("list", "list the server's indexes", _list)
    q.add_argument("--json", action="store_true", help="every field, as JSON")

    q = command("describe", "show an index's model, kind, parameters, size and state", _describe)
    q.add_argument("name")
    q.add_argument("--json", action="store_true")

    q = command("count", "print how many items an index holds", _count)
    q.add_argument("name")

    q = command("ids", "list the ids an index holds, oldest write first, a page at a time", _ids)
    q.add_argument("name")
    q.add_argument("--limit", type=int, help="print at most N ids (default: all)")
    q.add_argument("--page-token", default="", help="continue where an earlier --limit stopped")
    q.add_argument(
        "--json", action="store_true", help='one JSON object: {"ids": [...], "next_page_token", "count"}'
    )

    q = command("get", "print items by id as JSON lines (exit 4 if any id is missing)", _get)
    q.add_argument("name")
    q.add_argument("ids", nargs="+", metavar="ID")
    q.add_argument("--vectors", action="store_true", help="include each item's vector")
    q.add_argument(
        "--texts", action="store_true", help="include each item's stored text (store_text indexes)"
    )

    q = command("search", "nearest items to a text or vector (or to each line of --input)", _search)
    q.add_argument("name")
    q.add_argument("text", nargs="?", help="query text (embedded with the index's model)")
    q.add_argument("--vector", metavar="JSON", help="query vector as a JSON list, instead of text")
    q.add_argument(
        "--input", metavar="FILE", help='one query text per line ("-": stdin), answered as JSON lines'
    )
    q.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    q.add_argument("--filter", metavar="JSON", help='metadata filter, e.g. \'{"year": {"gte": 2020}}\'')
    q.add_argument("--ef-search", type=int, help="HNSW: candidates explored (recall vs speed)")
    q.add_argument("--nprobe", type=int, help="IVF: lists searched (recall vs speed)")
    q.add_argument("--instruction", help="task instruction for instruction-following models")
    q.add_argument("--texts", action="store_true", help="show each hit's stored text (store_text indexes)")
    q.add_argument(
        "--rerank",
        metavar="MODEL",
        help="rerank the nearest candidates' stored texts with this served reranker",
    )
    q.add_argument("--rerank-instruction", help="--rerank: instruction for instruction-following rerankers")
    q.add_argument(
        "--sparse",
        metavar="JSON",
        help='sparse query as {"term id": weight, ...} (alone, or with --vector for hybrid)',
    )
    q.add_argument(
        "--mode",
        choices=("dense", "sparse", "hybrid"),
        default="dense",
        help="what to search with (default dense)",
    )
    q.add_argument("--fusion", choices=("rrf", "weighted"), default="rrf", help="hybrid: how lists combine")
    q.add_argument("--dense-weight", type=float, help="hybrid: weight of the dense list (default 1)")
    q.add_argument("--sparse-weight", type=float, help="hybrid: weight of the sparse list (default 1)")
    q.add_argument("--rrf-k", type=int, help="hybrid rrf: the rank offset (default 60)")
    q.add_argument(
        "--candidates",
        type=int,
        default=0,
        help="candidates before the final k: reranked by --rerank (default max(k, 50)), per list for hybrid "
        "and --maxsim (default max(k, 100))",
    )
    q.add_argument(
        "--maxsim", action="store_true", help="re-rank by MaxSim over the items' token vectors (text queries)"
    )
    q.add_argument("--json", action="store_true", help="hits as JSON")

    q = command("delete", "delete items by id (unknown ids are ignored and counted)", _delete)
    q.add_argument("name")
    q.add_argument("ids", nargs="*", metavar="ID")
    q.add_argument("--input", metavar="FILE", help='ids to delete, one per line ("-": stdin)')

    q = command("drop", "delete a whole index and its files", _drop)
    q.add_argument("name")
    q.add_argument("--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)")

    q = command("create", "create an empty index bound to a served model", _create)
    q.add_argument("name")
    q.add_argument("--model", help="served model whose vectors it holds (default: the server's default)")
    q.add_argument("--metric", choices=METRICS, default="cosine")
    q.add_argument("--kind", choices=KINDS, default="flat")
    q.add_argument(
        "--store-text",
        action="store_true",
        help="keep each item's text (returned with --texts; needed by --rerank and reembed)",
    )
    q.add_argument(
        "--sparse",
        type=int,
        nargs="?",
        const=0,
        metavar="VOCAB",
        help="keep sparse vectors too (VOCAB: term ids below it; default the model's vocabulary)",
    )
    q.add_argument(
        "--multi-vector",
        type=int,
        nargs="?",
        const=0,
        metavar="WIDTH",
        help="keep token vectors for MaxSim re-ranking (float16, 2 x tokens x WIDTH bytes an item)",
    )
    q.add_argument("--no-dense", action="store_true", help="no dense vectors (with --sparse)")
    for param in _PARAMS:
        q.add_argument(f"--{param.replace('_', '-')}", type=int, dest=param, help=_PARAM_HELP[param])
    q.add_argument("--json", action="store_true")

    q = command(
        "rebind",
        "accept the index's model as served now: its vectors then mix two models until reembed",
        _rebind,
    )
    q.add_argument("name")
    q.add_argument("--json", action="store_true")

    q = command(
        "reembed",
        "embed every stored text again with the index's model as served now; swapped in when done",
        _reembed,
    )
    q.add_argument("name")

    build.add_parsers(isub, common)


_PARAMS = tuple(dict.fromkeys(p for params in KIND_PARAMS.values() for p in params))  # IVF kinds share some
_PARAM_HELP = {
    "hnsw_m": "HNSW: links per node (default 32)",
    "hnsw_ef_construction": "HNSW: candidates while building (default 200)",
    "hnsw_ef_search": "HNSW: candidates per search (default 192)",
    "ivf_nlist": "IVF: coarse lists (default 32)",
    "ivf_nprobe": "IVF: lists searched (default 24)",
    "pq_m": "IVF-PQ: sub-quantizers (default: dimension/4 rounded to a divisor)",
    "pq_bits": "IVF-PQ: bits per code (default 8)",
    "rerank": "IVF-PQ: candidates re-ranked exactly, as a multiple of k (default 8)",
}


def _info_dict(info: Any) -> dict[str, Any]:
    return dataclasses.asdict(info)


def _list(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        infos = client.list_indexes()
    if args.json:
        print_json([_info_dict(i) for i in infos])
        return 0
    print_table(
        [
            (
                i.name,
                i.model or f"({i.model_source}, not served)",
                i.kind,
                i.metric,
                i.dimension,
                i.count,
                i.status,
            )
            for i in infos
        ],
        ("INDEX", "MODEL", "KIND", "METRIC", "DIM", "ITEMS", "STATUS"),
    )
    return 0


def _print_info(info: Any, as_json: bool) -> None:
    if as_json:
        print_json(_info_dict(info))
        return
    rows = [
        ("name", info.name),
        ("model", info.model or "(not served by this server)"),
        ("model source", info.model_source),
        ("dimension", info.dimension),
        ("metric", info.metric),
        ("kind", info.kind),
        *((name, value) for name, value in info.params.items()),
        ("items", info.count),
        ("status", info.status),
        ("durable", "yes" if info.durable else "no (in memory: lost when the server stops)"),
        ("texts", "kept" if info.store_text else "not kept"),
        ("fingerprint", f"{info.fingerprint or '(none yet: binds on first text use)'} ({info.binding})"),
    ]
    if info.sparse_dimension or info.multi_vector_dimension:
        rows += [
            ("sparse vocabulary", info.sparse_dimension or "(no sparse vectors)"),
            ("token vector width", info.multi_vector_dimension or "(no token vectors)"),
            ("sparse + token bytes", info.representation_bytes),
        ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")


def _describe(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        _print_info(client.describe_index(args.name), args.json)
    return 0


def _count(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        print(client.count(args.name))
    return 0


def _ids(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise CommandError("--limit must be at least 1", USAGE)
    collected: list[str] = []  # --json only: plain output streams
    shown, token, count = 0, args.page_token, 0
    with open_client(args) as client:
        while True:
            # pages end where --limit does, so the token printed continues exactly there
            wanted = 0 if args.limit is None else min(args.limit - shown, MAX_PAGE)
            page = client.list_ids(args.name, wanted, token)
            token, count, shown = page.next_page_token, page.count, shown + len(page.ids)
            if args.json:
                collected += page.ids
            elif page.ids:
                print("\n".join(page.ids))
            if not token or (args.limit is not None and shown >= args.limit):
                break
    if args.json:
        print_json({"ids": collected, "next_page_token": token, "count": count})
    elif token:
        warn(f"{shown} ids shown ({count} in {args.name!r}); continue with --page-token {token}")
    return 0


def _get(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        found = client.get(args.name, args.ids, return_text=args.texts)
    for item_id in dict.fromkeys(args.ids):
        if item_id in found:
            vector, metadata, *text = found[item_id]
            line = f'{{"id": {json.dumps(item_id)}, "metadata": {json.dumps(metadata)}'
            if args.texts:
                line += f', "text": {json.dumps(text[0])}'
            print(line + (f', "vector": {vector_json(vector)}}}' if args.vectors else "}"))
    missing = [i for i in dict.fromkeys(args.ids) if i not in found]
    if missing:
        warn(f"not in index {args.name!r}: {', '.join(missing)}")
        return NOT_FOUND
    return 0


def _json_argument(text: str, flag: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{flag}: not valid JSON ({exc.msg} at character {exc.pos})", USAGE) from None


def _read_lines(path: str) -> list[str]:
    handle = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        return [line.rstrip("\r\n") for line in handle if line.strip()]
    finally:
        if handle is not sys.stdin:
            handle.close()


def _hit_dicts(hits: list[Any]) -> list[dict[str, Any]]:
    parts = ("rerank_score", "text", "dense_score", "sparse_score", "maxsim_score")
    return [
        {
            "id": h.id,
            "score": h.score,
            "metadata": h.metadata,
            **{p: getattr(h, p) for p in parts if getattr(h, p) is not None},
        }
        for h in hits
    ]


def _sparse_argument(text: str) -> tuple[list[int], list[float]]:
    given = _json_argument(text, "--sparse")
    try:
        if not isinstance(given, dict):
            raise ValueError
        pairs = [(int(term), float(weight)) for term, weight in given.items()]
    except (TypeError, ValueError):
        raise CommandError(
            "--sparse must be a JSON object of term id -> weight, e.g. '{\"17\": 0.8}'", USAGE
        ) from None
    return [t for t, _ in pairs], [w for _, w in pairs]


def _search(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise CommandError("-k must be at least 1 (results per query)", USAGE)
    given = [x for x in (args.text, args.vector, args.input) if x is not None]
    if len(given) != 1 and not (not given and args.sparse is not None):
        raise CommandError("give exactly one query: TEXT, --vector JSON or --input FILE", USAGE)
    where = _json_argument(args.filter, "--filter") if args.filter else None
    if where is not None and not isinstance(where, dict):
        raise CommandError('--filter must be a JSON object, e.g. \'{"lang": "en"}\'', USAGE)
    if args.rerank is None and args.rerank_instruction:
        raise CommandError("--rerank-instruction goes with --rerank MODEL", USAGE)
    if args.candidates < 0:
        raise CommandError("--candidates must be 0 (the default) or more", USAGE)
    rerank = (
        None
        if args.rerank is None
        else {"model": args.rerank, "candidates": args.candidates, "instruction": args.rerank_instruction}
    )
    options = {
        "ef_search": args.ef_search,
        "nprobe": args.nprobe,
        "instruction": args.instruction,
        "return_text": args.texts,
        "rerank": rerank,
        "mode": args.mode,
        "fusion": args.fusion,
        "dense_weight": args.dense_weight,
        "sparse_weight": args.sparse_weight,
        "rrf_k": args.rrf_k,
        "candidates": args.candidates,
        "multi_vector_rerank": args.maxsim,
    }
    sparse = _sparse_argument(args.sparse) if args.sparse is not None else None
    with open_client(args) as client:
        if args.input is not None:
            queries = _read_lines(args.input)
            if not queries:
                raise CommandError(f"{args.input}: no query lines", USAGE)
            results = client.search_batch(args.name, texts=queries, k=args.k, filter=where, **options)
            for query, hits in zip(queries, results, strict=True):
                print(json.dumps({"query": query, "hits": _hit_dicts(hits)}))
            return 0
        vector = _json_argument(args.vector, "--vector") if args.vector is not None else None
        if vector is not None and not (isinstance(vector, list) and vector):
            raise CommandError("--vector must be a non-empty JSON list of numbers", USAGE)
        hits = client.search(
            args.name, text=args.text, vector=vector, k=args.k, filter=where, sparse=sparse, **options
        )
    if args.json:
        print_json(_hit_dicts(hits))
    else:
        reranked, texts = any(h.rerank_score is not None for h in hits), args.texts
        print_table(
            [
                (
                    rank,
                    *((h.rerank_score,) if reranked else ()),
                    h.score,
                    h.id,
                    h.metadata,
                    *((h.text,) if texts else ()),
                )
                for rank, h in enumerate(hits, 1)
            ],
            (
                "#",
                *(("RERANK",) if reranked else ()),
                "SCORE",
                "ID",
                "METADATA",
                *(("TEXT",) if texts else ()),
            ),
        )
    return 0


def _delete(args: argparse.Namespace) -> int:
    ids = list(args.ids) + (_read_lines(args.input) if args.input else [])
    if not ids:
        raise CommandError("give the ids to delete: ID arguments or --input FILE", USAGE)
    with open_client(args) as client:
        deleted = client.delete(args.name, ids)
        left = client.count(args.name)
    print(f"deleted {deleted} of {len(set(ids))} ids from {args.name!r}; {left} items left")
    return 0


def _drop(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(f"dropping {args.name!r} deletes it for good: add --yes to confirm", USAGE)
        answer = input(f"drop index {args.name!r} and all its items? type its name to confirm: ")
        if answer.strip() != args.name:
            raise CommandError("not confirmed; nothing was dropped", USAGE)
    with open_client(args) as client:
        client.delete_index(args.name)
    print(f"dropped index {args.name!r}")
    return 0


def _create(args: argparse.Namespace) -> int:
    params = {p: getattr(args, p) for p in _PARAMS if getattr(args, p) is not None}
    with open_client(args) as client:
        info = client.create_index(
            args.name,
            model=args.model,
            metric=args.metric,
            kind=args.kind,
            store_text=args.store_text,
            dense=False if args.no_dense else None,
            sparse=args.sparse,
            multi_vector=args.multi_vector,
            **params,
        )
    _print_info(info, args.json)
    return 0


def _rebind(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        info = client.rebind(args.name)
    _print_info(info, args.json)
    return 0


def _reembed(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        done = client.reembed(args.name)  # bounded by --timeout: raise it for a large index
    print(
        f"re-embedded {done.reembedded} items of {args.name!r}; "
        f"bound to fingerprint {done.fingerprint or '-'}"
    )
    return 0
