"""Fresh random inputs for graphs and kernels: never zeros (they hide unwritten outputs), matmul
weights scaled by 1/sqrt(K) as initialisations are, so f16 results stay in range."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from .dtypes import DType
from .ops import Node, Op, base_of

if TYPE_CHECKING:
    from .graph import Graph


def weight_scales(nodes: Iterable[Node]) -> dict[int, float]:
    """id(base node of a matmul's B operand) -> 1/sqrt(K); for a dequantized B, its float operands (scales)
    get 1/(sqrt(K) x the largest code magnitude), so the weights it makes are of the same size."""
    out: dict[int, float] = {}
    for n in nodes:
        if n.op is Op.MATMUL:
            b = n.src[1]
            k = b.shape[-1] if n.attr("trans_b") else b.shape[-2]
            out[id(base_of(b))] = 1.0 / math.sqrt(k)
            d = base_of(b)
            if d.op is Op.DEQUANTIZE:
                codes = 1 if d.attr("codebook") is not None else 1 << max(0, d.attr("bits") - 1)
                for s in d.src[1:]:
                    if s.dtype.is_float:
                        out[id(base_of(s))] = 1.0 / (math.sqrt(k) * codes)
    return out


def code_bounds(nodes: Iterable[Node]) -> dict[int, tuple[int, int]]:
    """id(base node of an integer dequantize operand) -> [lo, hi) of valid values: packed containers take
    any bit pattern (every pattern is a valid packing of codes), unpacked zero points 0 <= z < 2^bits."""
    out: dict[int, tuple[int, int]] = {}
    for d in nodes:
        if d.op is not Op.DEQUANTIZE:
            continue
        for i, s in enumerate(d.src):
            if not s.dtype.is_int:
                continue
            unpacked_zeros = i == 2 and not d.attr("symmetric") and not d.attr("zeros_packed")
            bits = d.attr("bits") if unpacked_zeros else 8 * s.dtype.itemsize
            lo = 0 if unpacked_zeros or not s.dtype.is_signed else -(1 << (bits - 1))
            out[id(base_of(s))] = (lo, lo + (1 << bits))
    return out


def random_array(rng: np.random.Generator, shape: tuple[int, ...], d: DType, scale: float = 1.0,
                 bounds: tuple[int, int] | None = None) -> np.ndarray:
    """Floats ~ N(0, scale^2) as float64, bools fair coins, integers uniform in `bounds` (default [-8, 8))."""
    if d.is_float:
        return rng.standard_normal(shape) * scale
    if d.is_bool:
        return rng.random(shape) < 0.5
    lo, hi = bounds or (-8, 8)
    return rng.integers(lo, hi, shape, dtype=np.int64)


def random_inputs(g: Graph, seed: int) -> dict[str, np.ndarray]:
    """Fresh random inputs of graph `g` by name (floats as float32), drawn with `seed`."""
    scales, bounds = weight_scales(g.nodes), code_bounds(g.nodes)
    rng = np.random.default_rng(seed)
    out = {}
    for n in g.inputs:
        x = random_array(rng, n.shape, n.dtype, scales.get(id(n), 1.0), bounds.get(id(n)))
        out[n.attr("name")] = x.astype(np.float32) if n.dtype.is_float else x
    return out
