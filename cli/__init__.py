"""The tilefuse command line: `tilefuse compile|run|show|tune|devices|db|costmodel`. The library never
prints; this package owns output, progress and exit codes (one `error:` line and exit 2 for a
TilefuseError)."""

from __future__ import annotations

from .common import UsageError, load_graph_arg, random_inputs
from .main import check_against_reference, main, write_bundle

__all__ = ["UsageError", "check_against_reference", "load_graph_arg", "main", "random_inputs", "write_bundle"]
