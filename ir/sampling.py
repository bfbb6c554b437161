"""Fresh random inputs for graphs and kernels: never zeros (they hide unwritten outputs), matmul
weights scaled by 1/sqrt(K) as initialisations are, so f16 results stay in range. The structure
arrays of a sparse tensor (CSR/BSR indptr and indices, 2:4 meta) are drawn as valid structures:
power-law row lengths (a graph's degree distribution: a few long rows, many short or empty ones),
columns sorted within each row, two distinct increasing positions per 2:4 group."""

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


def power_law_structure(rng: np.random.Generator, rows: int, cols: int, nnz: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr [rows + 1], indices [nnz]) of a CSR structure whose row lengths follow a power law
    (Pareto weights, shape 1.2); columns uniform and sorted within a row (a row longer than `cols`
    repeats columns, which CSR semantics sum)."""
    weights = rng.pareto(1.2, rows) + 0.05
    row_of = np.sort(rng.choice(rows, size=nnz, p=weights / weights.sum()))
    indptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_of, minlength=rows), out=indptr[1:])
    cols_of = rng.integers(0, cols, nnz)
    order = np.lexsort((cols_of, row_of))
    return indptr, cols_of[order]


def random_meta_24(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """2:4 meta [M, K/2]: per group of four columns two distinct positions, increasing."""
    pairs = np.array([(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)])
    m, half = shape
    return pairs[rng.integers(0, 6, (m, half // 2))].reshape(m, half)


def sparse_structures(nodes: Iterable[Node], rng: np.random.Generator) -> dict[int, np.ndarray]:
    """id(structure operand node) -> a valid random array for every `sparse` node's indptr and indices
    (CSR, BSR) or meta (2:4); the first sparse node reading an operand decides it."""
    out: dict[int, np.ndarray] = {}
    for n in nodes:
        if n.op is not Op.SPARSE:
            continue
        if n.attr("format") == "2:4":
            meta = n.src[1]
            if id(meta) not in out:
                out[id(meta)] = random_meta_24(rng, meta.shape)
            continue
        indptr, indices = n.src[0], n.src[1]
        if id(indptr) in out or id(indices) in out:
            continue
        bm, bn = n.attr("block", (1, 1))
        m, k = n.attr("shape")
        out[id(indptr)], out[id(indices)] = power_law_structure(rng, m // bm, k // bn, indices.shape[0])
    return out


def random_inputs(g: Graph, seed: int) -> dict[str, np.ndarray]:
    """Fresh random inputs of graph `g` by name (floats as float32), drawn with `seed`."""
    scales = weight_scales(g.nodes)
    rng = np.random.default_rng(seed)
    structures = sparse_structures(g.nodes, np.random.default_rng([seed, 1]))
    out = {}
    for n in g.inputs:
        x = structures.get(id(n))
        if x is None:
            x = random_array(rng, n.shape, n.dtype, scales.get(id(n), 1.0))
        out[n.attr("name")] = x.astype(np.float32) if n.dtype.is_float else x
    return out
