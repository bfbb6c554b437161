"""What every tilefuse command shares: loading a .tf file with --set sizes, random inputs, usage errors."""

from __future__ import annotations

import re
from typing import Any

from ..errors import TilefuseError


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


def load_graph_arg(path: str, sets: list[str]) -> Any:
    """The graph in the .tf file `path`, with `--set` sizes applied."""
    from ..ir.text import load_graph

    try:
        return load_graph(path, parse_sizes(sets))
    except FileNotFoundError:
        raise UsageError(f"no such file {path}") from None


def random_inputs(g: Any, seed: int) -> dict[str, Any]:
    """Fresh random inputs by name (floats as float32; see ir.sampling)."""
    import numpy as np

    from ..ir.sampling import random_array, weight_scales

    scales = weight_scales(g.nodes)
    rng = np.random.default_rng(seed)
    out = {}
    for n in g.inputs:
        x = random_array(rng, n.shape, n.dtype, scales.get(id(n), 1.0))
        out[n.attr("name")] = x.astype(np.float32) if n.dtype.is_float else x
    return out
