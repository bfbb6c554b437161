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
    """id(base node of a matmul's B operand) -> 1/sqrt(K)."""
    out: dict[int, float] = {}
    for n in nodes:
        if n.op is Op.MATMUL:
            b = n.src[1]
            k = b.shape[-1] if n.attr("trans_b") else b.shape[-2]
            out[id(base_of(b))] = 1.0 / math.sqrt(k)
    return out


def random_array(rng: np.random.Generator, shape: tuple[int, ...], d: DType, scale: float = 1.0) -> np.ndarray:
    """Floats ~ N(0, scale^2) as float64, bools fair coins, integers uniform in [-8, 8)."""
    if d.is_float:
        return rng.standard_normal(shape) * scale
    if d.is_bool:
        return rng.random(shape) < 0.5
    return rng.integers(-8, 8, shape)


def random_inputs(g: Graph, seed: int) -> dict[str, np.ndarray]:
    """Fresh random inputs of graph `g` by name (floats as float32), drawn with `seed`."""
    scales = weight_scales(g.nodes)
    rng = np.random.default_rng(seed)
    out = {}
    for n in g.inputs:
        x = random_array(rng, n.shape, n.dtype, scales.get(id(n), 1.0))
        out[n.attr("name")] = x.astype(np.float32) if n.dtype.is_float else x
    return out
