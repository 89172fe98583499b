# PYTHON_ARGCOMPLETE_OK
"""Command line: ``embedsvc serve | embed | rerank | score | classify | models | index ... | inspect``
(``embedsvc --help``).

Owns argument parsing, settings from flags, the one-line messages and exit codes (``failures.py``) and
output formats; each command only converts and calls down. May import any package: it is the top, and
nothing in embedsvc imports it but ``__main__`` (``tests/test_layering.py`` pins this).
"""

import os

# gRPC's C core prints INFO lines of its own to stderr ("Got goaway" when a server stops under a
# waiting client), outside any command's one-line messages and the server's log format. It reads the
# level once, when grpc is imported: hence here, before anything imports it. Set it to see them.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from embedsvc.cli.main import main
from embedsvc.cli.serve import parse_model

__all__ = ["main", "parse_model"]
