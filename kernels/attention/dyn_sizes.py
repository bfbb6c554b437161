"""Attention with dynamic sizes (a dynamic batch or sequence length, e.g. `S=dyn[1..4096]`).

The forward's block-sparsity analysis needs concrete sizes: with dynamic ones it falls back from compile
time to run time. The kernel reads the same CSR block lists as for a static graph; they are analysed on
the host for the sizes of each call (the same `analyze`, so any static mask_mod works: causal, sliding
window, streaming, per-head forms), copied to the device once per (sizes, block size, device) and cached
(the most recent CACHED_SIZES of them). The kernel takes the sizes as int arguments, masks ragged query and
key blocks whatever the value (the template's `size % block != 0` tests are never false for a symbolic size)
and computes its row count ceil(Sq / BLOCK_M) from the argument. Heads and head dims stay static; a mask that
reads operands (block masks, top-k lists) needs static sizes, since its operands' block shapes follow them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...ir import dims

CACHED_SIZES = 64  # block-list entries kept per spec: a serving loop sees a few hundred distinct sizes at most


def concrete(sizes_of: Sequence[Any], sizes: Mapping[str, int] | None) -> tuple[int, ...]:
    """`sizes_of` (ints or dynamic sizes) as plain ints: evaluated at `sizes`, else at their binding."""
    if sizes is None:
        return tuple(int(x) for x in sizes_of)
    return tuple(int(dims.resolve(x, sizes)) for x in sizes_of)


def sizes_from_inputs(buffers: Sequence[Any], tensors: Sequence[Any]) -> dict[str, int]:
    """The value of each dynamic parameter that is a whole dim of one of the kernel's input buffers, read
    from the shape of the tensor passed for it (a launch's inputs always have their resolved shapes)."""
    out: dict[str, int] = {}
    for buf, t in zip(buffers, tensors):
        for d, n in zip(buf.shape, tuple(t.shape)):
            if dims.is_dynamic(d) and len(d.poly) == 1 and d.poly[0][1] == 1 and len(d.poly[0][0]) == 1:
                atom = d.poly[0][0][0]
                if isinstance(atom, str):
                    out[atom] = int(n)
    return out


def cdiv_text(x: Any, b: int) -> str:
    """ceil(x / b) as code: the number for a static x, `((S + b-1) // b)` for a dynamic one (positive
    operands only: Triton's integer division truncates, so the `-(-x // b)` idiom would be wrong there)."""
    if dims.is_dynamic(x):
        return f"(({x} + {b - 1}) // {b})"
    return str(-(-int(x) // b))


def remember(cache: dict[Any, Any], key: Any, value: Any, keep: int = CACHED_SIZES) -> Any:
    """Store `value` under `key`, dropping the oldest entries beyond `keep`; returns `value`."""
    cache[key] = value
    while len(cache) > keep:
        del cache[next(iter(cache))]
    return value
