"""Fresh random inputs for graphs and kernels: never zeros (they hide unwritten outputs), matmul
weights scaled by 1/sqrt(K) as initialisations are, so f16 results stay in range. The structure
arrays of a sparse tensor (CSR/BSR indptr and indices, 2:4 meta) are drawn as valid structures:
power-law row lengths (a graph's degree distribution: a few long rows, many short or empty ones),
columns sorted within each row, two distinct increasing positions per 2:4 group. The operands of the
Gaussian splatting ops are drawn as a visible scene: positive scales, nonzero quaternions, opacities in
(0, 1), a rigid view matrix with most Gaussians in front of the camera, positive focal lengths; SH
coefficients whose colours lie around 0.5."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from .dtypes import DType
from .ops import Node, Op, base_of, make

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
                # fp8 codes are drawn as values of order one, like a codebook's
                plain = d.attr("codebook") is None and d.src[0].dtype.is_int
                codes = 1 << max(0, d.attr("bits") - 1) if plain else 1
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
    scales, bounds = weight_scales(g.nodes), code_bounds(g.nodes)
    rng = np.random.default_rng(seed)
    structures = sparse_structures(g.nodes, np.random.default_rng([seed, 1]))
    structures.update(splat_scenes(g.nodes, np.random.default_rng([seed, 2])))
    out = {}
    for n in g.inputs:
        x = structures.get(id(n))
        if x is None:
            x = random_array(rng, n.shape, n.dtype, scales.get(id(n), 1.0), bounds.get(id(n)))
        out[n.attr("name")] = x.astype(np.float32) if n.dtype.is_float else x
    return out


def _rigid_view(rng: np.random.Generator) -> np.ndarray:
    """A world -> camera matrix: a rotation of up to ~0.3 rad about a random axis and a small translation."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    a = rng.uniform(-0.3, 0.3)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    view = np.eye(4)
    view[:3, :3] = np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)  # Rodrigues
    view[:3, 3] = rng.uniform(-0.3, 0.3, 3)
    return view


def projection_operands(rng: np.random.Generator, n: int, width: int, height: int) -> list[np.ndarray]:
    """[means, scales, quats, opacities, viewmat, K] of a project_gaussians draw: n Gaussians in the view
    frustum at depths 2..6 (about 5% behind the camera), linear scales 0.02..0.2, unnormalised nonzero
    quaternions, a rigid view matrix and a 60-degree pinhole K."""
    f = 0.5 * width / math.tan(math.radians(30.0))
    z = np.where(rng.random(n) < 0.05, rng.uniform(-1.0, 0.0, n), rng.uniform(2.0, 6.0, n))
    cam = np.column_stack([rng.uniform(-0.6, 0.6, n) * width / f * np.abs(z),
                           rng.uniform(-0.6, 0.6, n) * height / f * np.abs(z), z])
    view = _rigid_view(rng)
    means = (cam - view[:3, 3]) @ view[:3, :3]  # camera -> world: R^T (p - t)
    k = np.array([[f * rng.uniform(0.9, 1.1), 0, 0.5 * width], [0, f * rng.uniform(0.9, 1.1), 0.5 * height],
                  [0, 0, 1.0]])
    quats = rng.standard_normal((n, 4))
    quats[np.linalg.norm(quats, axis=1) < 1e-3] = (1.0, 0.0, 0.0, 0.0)
    return [means, np.exp(rng.uniform(math.log(0.02), math.log(0.2), (n, 3))), quats,
            rng.uniform(0.2, 0.95, n), view, k]


def raster_operands(rng: np.random.Generator, n: int, width: int, height: int) -> list[np.ndarray]:
    """[means2d, conics, colors, opacities, depths, radii] of a rasterize_gaussians draw: centres over the
    image and a margin around it, 2D covariances of radius 2..12 px, colours in [0, 1], positive depths."""
    sig = rng.uniform(0.7, 4.0, (n, 2))
    a = rng.uniform(0, math.pi, n)
    c, s = np.cos(a), np.sin(a)
    cxx = c * c * sig[:, 0] ** 2 + s * s * sig[:, 1] ** 2
    cyy = s * s * sig[:, 0] ** 2 + c * c * sig[:, 1] ** 2
    cxy = c * s * (sig[:, 0] ** 2 - sig[:, 1] ** 2)
    det = cxx * cyy - cxy * cxy
    m2d = np.column_stack([rng.uniform(-8, width + 8, n), rng.uniform(-8, height + 8, n)])
    return [m2d, np.column_stack([cyy / det, -cxy / det, cxx / det]), rng.random((n, 3)),
            rng.uniform(0.2, 0.95, n), rng.uniform(0.5, 8.0, n), np.ceil(3 * sig.max(1)).astype(np.int64)]


def _forward(op: Op, arrays: list[np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """The reference results of forward `op` on `arrays` (inputs standing in for its operands)."""
    from .reference import EVALUATORS

    arrays = [a.astype(np.float32).astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]  # as fed
    srcs = [make(Op.INPUT, name=f"x{i}", dtype="i32" if a.dtype.kind == "i" else "f32", shape=a.shape)
            for i, a in enumerate(arrays)]
    node = make(op, srcs, **attrs)
    return tuple(EVALUATORS[op](node, arrays))


def backward_operands(n: Node, rng: np.random.Generator) -> list[np.ndarray]:
    """Operands of a splatting backward node that agree with each other: a scene drawn as for the forward,
    the forward's radii (projection) or final_T and last (rasterization) computed from it by the reference,
    and N(0, 1) gradients."""
    keys = ("width", "height", "camera", "eps2d") if n.op is Op.PROJECT_GAUSSIANS_BWD else \
        ("width", "height", "tile", "background", "pixel_center")
    attrs = {k: n.attr(k) for k in keys}
    if n.op is Op.PROJECT_GAUSSIANS_BWD:
        fwd = projection_operands(rng, n.src[0].shape[0], n.attr("width"), n.attr("height"))
        radii = _forward(Op.PROJECT_GAUSSIANS, fwd, attrs)[3]
        return fwd[:3] + fwd[4:] + [radii] + [rng.standard_normal(s.shape) for s in n.src[6:]]
    fwd = raster_operands(rng, n.src[0].shape[0], n.attr("width"), n.attr("height"))
    if n.src[2].shape[1] != 3:  # feature splatting: C channels
        fwd[2] = rng.random(n.src[2].shape)
    _, final_t, last = _forward(Op.RASTERIZE_GAUSSIANS, fwd, {**attrs, "last_contributor": True})
    return fwd + [final_t, last] + [rng.standard_normal(s.shape) for s in n.src[8:]]


def splat_scenes(nodes: Iterable[Node], rng: np.random.Generator) -> dict[int, np.ndarray]:
    """id(operand node) -> a valid array for the operands of every project_gaussians (a visible scene),
    rasterize_gaussians (splats over the image) and their backward ops (backward_operands); the first op
    reading an operand decides it. Operands computed in the graph (a rasterizer fed by a projection) are
    not inputs and are left alone."""
    out: dict[int, np.ndarray] = {}
    for n in nodes:
        if n.op in (Op.PROJECT_GAUSSIANS_BWD, Op.RASTERIZE_GAUSSIANS_BWD):
            for src, arr in zip(n.src, backward_operands(n, rng)):
                out.setdefault(id(src), arr)
            continue
        if n.op is Op.PROJECT_GAUSSIANS:
            draw = projection_operands
        elif n.op is Op.RASTERIZE_GAUSSIANS:
            draw = raster_operands
        else:
            continue
        arrays = draw(rng, n.src[0].shape[0], n.attr("width"), n.attr("height"))
        if n.op is Op.RASTERIZE_GAUSSIANS and n.src[2].shape[1] != 3:  # feature splatting: C channels
            arrays[2] = rng.random(n.src[2].shape)
        if n.op is Op.RASTERIZE_GAUSSIANS and len(n.src) == 8:  # sparse coefficients: K distinct rows of L
            (count, k), rows = n.src[6].shape, n.src[7].shape[0]
            arrays[2] = rng.random((count, k))
            arrays += [np.argsort(rng.random((count, rows)), axis=1)[:, :k], rng.random(n.src[7].shape)]
        for src, arr in zip(n.src, arrays):
            out.setdefault(id(src), arr)
    for n in nodes:  # after the projections, whose means and view matrix an SH op shares
        if n.op in (Op.SH_TO_COLOR, Op.SH_TO_COLOR_BWD):  # the gradient d_colors is drawn as any input
            for src, arr in zip(n.src, sh_operands(rng, n.src[0].shape)):
                out.setdefault(id(src), arr)
    return out


def sh_operands(rng: np.random.Generator, shape: tuple[int, ...]) -> list[np.ndarray]:
    """[coeffs, means, viewmat] of an sh_to_color draw: DC terms ~ N(0, 0.8^2) (colours around 0.5, some
    clamped at 0), higher bands ~ N(0, 0.3^2), means in a unit box and a rigid view matrix."""
    coeffs = rng.standard_normal(shape) * 0.3
    coeffs[:, 0] *= 0.8 / 0.3
    return [coeffs, rng.uniform(-1.0, 1.0, (shape[0], 3)), _rigid_view(rng)]
