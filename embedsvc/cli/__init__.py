# PYTHON_ARGCOMPLETE_OK
"""Command line: ``embedsvc serve | embed | models | index ... | inspect`` (``embedsvc --help``)."""

from embedsvc.cli.main import main
from embedsvc.cli.serve import parse_model

__all__ = ["main", "parse_model"]
