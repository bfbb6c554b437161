"""What every tilefuse command shares: loading a .tf file with --set sizes, random inputs, usage errors."""

from __future__ import annotations

import re
from typing import Any

from ..errors import TilefuseError
from ..ir.sampling import random_inputs  # noqa: F401 - re-exported: the CLI's inputs are the library's


class UsageError(TilefuseError, ValueError):
    """A command line the CLI cannot act on (a malformed option, a missing file)."""


def parse_sizes(items: list[str]) -> dict[str, int]:
    """`--set NAME=INT` options as a dict of sizes."""
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        # ASCII digits only: str.isdigit accepts superscripts ('²'), which int() then refuses.
        if not k.isidentifier() or re.fullmatch(r"[0-9]+", v, re.ASCII) is None or int(v) == 0:
            raise UsageError(f"--set expects NAME=INT with a positive integer size, got {it!r}")
        out[k] = int(v)
    return out


BUCKETS_HELP = ("upper ends of the size buckets of the graph's dynamic sizes, each with its own config "
                "(default: powers of two); tune and compile with the same buckets")


def parse_buckets(text: str | None) -> list[int] | None:
    """`--buckets 1,16,128`: the upper ends of the size buckets of dynamic sizes (None: not given)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or any(re.fullmatch(r"[0-9]+", p, re.ASCII) is None or int(p) == 0 for p in parts):
        raise UsageError(f"--buckets expects positive integers separated by commas (1,16,128), got {text!r}")
    return [int(p) for p in parts]


def load_graph_arg(path: str, sets: list[str]) -> Any:
    """The graph in the .tf file `path`, with `--set` sizes applied."""
    from ..ir.text import load_graph

    try:
        return load_graph(path, parse_sizes(sets))
    except FileNotFoundError:
        raise UsageError(f"no such file {path}") from None
