"""The ``embedsvc`` command: sub-commands, --version, --debug, one-line errors with distinct exit codes."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback

from embedsvc import __version__
from embedsvc.cli import embed, index, inspect, models, scoring, serve
from embedsvc.cli.failures import INTERRUPTED, MISSING_EXTRA, describe
from embedsvc.cli.remote import connection_options, target_of
from embedsvc.extras import install_hint

EPILOG = """\
exit codes: 0 ok, 1 unexpected (a bug: rerun with --debug), 2 invalid usage or input, 3 index build
stopped (rerun to continue), 4 not found, 5 server unreachable or too slow, 6 API key refused,
7 conflict (exists, wrong state, damaged data), 8 server overloaded or disk full, 9 server cannot
start (port in use, model does not load), 10 optional dependency missing, 130 interrupted.

shell completion: pip install 'embedsvc[completion]', then
  eval "$(register-python-argcomplete embedsvc)"      (bash; zsh: autoload bashcompinit first)
"""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="print tracebacks of failures"
    )
    parser = argparse.ArgumentParser(
        prog="embedsvc",
        description=(
            "Embedding service: serve models over gRPC/HTTP, embed, rerank and classify texts, "
            "build and query indexes."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"embedsvc {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks of failures")
    parser.set_defaults(parser=parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    connection = connection_options()
    serve.add_parser(sub, common)
    embed.add_parser(sub, common, connection)
    scoring.add_parsers(sub, common, connection)
    models.add_parser(sub, common, connection)
    index.add_parser(sub, common, connection)
    inspect.add_parser(sub, common)
    return parser


def _complete(parser: argparse.ArgumentParser) -> None:
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def _extras_needed(args: argparse.Namespace) -> tuple[str, ...]:
    """Extras a command needs in this process: client commands (remote mode) need none. Server and engine
    modules are imported only inside these commands, so `pip install embedsvc` runs all the others."""
    if args.command in ("serve", "inspect"):
        return ("server",)
    sub = getattr(args, "index_command", None)
    if sub in ("repair", "export"):
        return ("index",)
    if sub == "build" and args.data_dir:
        return ("server", "index")
    if sub == "build" and args.to and not args.target:  # embeds in this process for the store
        return ("server",)
    return ()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _complete(parser)
    args, extra = parser.parse_known_args(argv)
    if extra:
        # the innermost command's usage, not the top level's: `serve --prot 1` shows serve's options
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = bool(getattr(args, "debug", False) or os.environ.get("EMBEDSVC_DEBUG"))
    command = " ".join(filter(None, ["embedsvc", args.command, getattr(args, "index_command", None)]))
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # the reader of our output went away (`| head -1`): a normal end for a shell filter. Point
        # stdout at /dev/null so that the interpreter's final flush does not complain either.
        with contextlib.suppress(OSError, ValueError):  # ValueError: a stdout without a descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SystemExit:
        raise
    except BaseException as exc:
        if debug:
            traceback.print_exc()
        hint = install_hint("this command", exc, _extras_needed(args))
        if hint is not None:  # an optional dependency is missing: say which extra installs it
            print(f"{command}: error: {hint}", file=sys.stderr)
            return MISSING_EXTRA
        target = target_of(args) if hasattr(args, "wait") else None  # commands with connection options
        message, code = describe(exc, target)
        print(f"{command}: error: {message}", file=sys.stderr)
        return code
