"""Sparse tensors and the ops on them: `sparse` (pack arrays), `spmm`, `sddmm`, `sparse_softmax`.

A sparse value is a `sparse` node whose operands are the format's arrays; its dtype is the
values' dtype and its shape the dense logical shape [M, K]:

    csr: (indptr i32/i64 [M+1], indices i32/i64 [nnz], values [nnz])
    bsr: (indptr [M/bm+1], indices [nnzb] (block columns), values [nnzb, bm, bn]); attr block=(bm, bn)
    2:4: (values [M, K/2], meta u8/i8 [M, K/2]); in each group of four columns 4g..4g+3 of row m the
         two kept entries values[m, 2g], values[m, 2g+1] sit at columns 4g + meta[m, 2g] and
         4g + meta[m, 2g+1] (meta in 0..3, the two positions distinct)

CSR/BSR indices need not be sorted; duplicates add up (scipy's CSR @ dense semantics).

    spmm(A sparse [M, K], B [K, N]) -> [M, N]   (out_dtype, default the values dtype)
    spmm(A sparse [M, K], x [T, K], transposed=true) -> x @ A^T [T, M] (torch's linear(x, A): an LLM layer
        with pruned weights A [out, in]; canonicalize turns permute(spmm(A, permute(x)))) into it)
    sparse_softmax(S sparse [M, N]) -> values array shaped like S's values: per row of the dense [M, N],
        the softmax over that row's stored entries (each stored entry counts once, duplicates included:
        DGL's edge softmax); an empty row has nothing. Graph attention is
        spmm(sparse(structure, sparse_softmax(sparse(structure, sddmm(q, k, pattern)))), v).
    sddmm(a [M, K], b [N, K], pattern sparse [M, N]) -> values array shaped like the pattern's values
        operand ([nnz], [nnzb, bm, bn] or [M, N/2]): (a @ b^T) at the pattern's nonzeros. Re-wrap it with
        `sparse(structure..., values)` (builders/sparse.py sddmm(..., as_sparse=True)) for a sparse tensor.

The reference evaluator of `sparse` returns a `SparseValue`, consumed by spmm/sddmm; it validates
the structure (indptr monotone from 0 to nnz, indices in range, meta in 0..3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import dtypes as dt
from .ops import Node, Op, VerifyError, fmt_shape, register
from .reference import ReferenceEvalError, evaluator, rnd

FORMATS = ("csr", "bsr", "2:4")
# The optional `pattern` attribute: statistics of a structure known at compile time (the compiler's
# sparse_plan writes them; kernels/sparse/pattern.py), in this order. They are cost-model features and
# part of the workload key, so tuning records of different constant patterns stay apart.
PATTERN_FIELDS = ("row_p50", "row_p90", "row_p99", "row_max", "empty_rows", "fill_16", "fill_32", "fill_64",
                  "conform_24")
INDEX_DTYPES = (dt.i32, dt.i64)


def _desc(srcs: tuple[Node, ...]) -> str:
    return ", ".join(f"{s.dtype}{fmt_shape(s.shape)}" for s in srcs)


@register(Op.SPARSE, (2, 3))
def _infer_sparse(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    fmt = a.get("format")
    what = f"sparse {fmt} of ({_desc(srcs)})"
    if fmt not in FORMATS:
        raise VerifyError(f"sparse: format {fmt!r} not in {FORMATS}")
    shape = tuple(a.get("shape", ()))
    if len(shape) != 2 or any(not isinstance(s, int) or s <= 0 for s in shape):
        raise VerifyError(f"{what}: shape {shape} must be a dense [M, K] of positive ints")
    m, k = shape
    norm: dict[str, Any] = {"format": fmt, "shape": shape}
    if fmt == "2:4":
        if len(srcs) != 2:
            raise VerifyError(f"{what}: 2:4 takes (values [M, K/2], meta [M, K/2])")
        values, meta = srcs
        if k % 4:
            raise VerifyError(f"{what}: 2:4 needs K % 4 == 0, got K={k}")
        if values.shape != (m, k // 2) or meta.shape != (m, k // 2):
            raise VerifyError(f"{what}: values and meta must both be [{m}, {k // 2}] for shape {fmt_shape(shape)}")
        if meta.dtype not in (dt.u8, dt.i8):
            raise VerifyError(f"{what}: meta must be u8 or i8, got {meta.dtype}")
    else:
        if len(srcs) != 3:
            raise VerifyError(f"{what}: {fmt} takes (indptr, indices, values)")
        indptr, indices, values = srcs
        if indptr.dtype not in INDEX_DTYPES or indices.dtype not in INDEX_DTYPES:
            raise VerifyError(f"{what}: indptr and indices must be i32 or i64")
        if indptr.ndim != 1 or indices.ndim != 1:
            raise VerifyError(f"{what}: indptr and indices must be rank 1")
        want_vals: tuple[int, ...]
        if fmt == "csr":
            rows, want_vals = m, (indices.shape[0],)
        else:
            block = tuple(a.get("block", ()))
            if len(block) != 2 or any(not isinstance(x, int) or x <= 0 for x in block):
                raise VerifyError(f"{what}: bsr needs block=(bm, bn) of positive ints, got {block}")
            if m % block[0] or k % block[1]:
                raise VerifyError(f"{what}: shape {fmt_shape(shape)} is not a multiple of block {block}")
            rows, want_vals = m // block[0], (indices.shape[0], *block)
            norm["block"] = block
        if indptr.shape != (rows + 1,):
            raise VerifyError(f"{what}: indptr must be [{rows + 1}] (one more than the {rows} "
                              f"{'rows' if fmt == 'csr' else 'block rows'}), got {fmt_shape(indptr.shape)}")
        if values.shape != want_vals:
            raise VerifyError(f"{what}: values must be {fmt_shape(want_vals)}, got {fmt_shape(values.shape)}")
    if values.dtype.packed or values.dtype.is_bool:
        raise VerifyError(f"{what}: values dtype {values.dtype} not supported")
    if "pattern" in a:
        pattern = tuple(float(x) for x in a["pattern"])
        if len(pattern) != len(PATTERN_FIELDS):
            raise VerifyError(f"{what}: pattern must hold {len(PATTERN_FIELDS)} numbers ({', '.join(PATTERN_FIELDS)})")
        norm["pattern"] = pattern
    return values.dtype, shape, norm


def _values_node(sp: Node) -> Node:
    return sp.src[0] if sp.attr("format") == "2:4" else sp.src[2]


@register(Op.SPMM, (2, 2))
def _infer_spmm(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    sp, b = srcs
    what = f"spmm of {sp.dtype}{fmt_shape(sp.shape)} and {b.dtype}{fmt_shape(b.shape)}"
    if sp.op is not Op.SPARSE:
        raise VerifyError(f"{what}: operand 0 must be a sparse tensor (a sparse node), got {sp.op.value}")
    trans = bool(a.get("transposed", False))
    if b.ndim != 2 or b.shape[int(trans)] != sp.shape[1]:
        want = f"[T, {sp.shape[1]}] (transposed)" if trans else f"[{sp.shape[1]}, N]"
        raise VerifyError(f"{what}: the dense operand must be {want}")
    if not b.dtype.is_float:
        raise VerifyError(f"{what}: the dense operand must be float, got {b.dtype}")
    out = dt.dtype(a.get("out_dtype", sp.dtype))
    norm: dict[str, Any] = {"out_dtype": out}
    if trans:  # only when set: the plain form's text and keys stay what they were
        norm["transposed"] = True
    return out, ((b.shape[0], sp.shape[0]) if trans else (sp.shape[0], b.shape[1])), norm


@register(Op.SDDMM, (3, 3))
def _infer_sddmm(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    x, y, sp = srcs
    what = (f"sddmm of {x.dtype}{fmt_shape(x.shape)}, {y.dtype}{fmt_shape(y.shape)} "
            f"on {sp.dtype}{fmt_shape(sp.shape)}")
    if sp.op is not Op.SPARSE:
        raise VerifyError(f"{what}: operand 2 must be a sparse pattern (a sparse node), got {sp.op.value}")
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise VerifyError(f"{what}: a must be [M, K] and b [N, K] with the same K")
    if (x.shape[0], y.shape[0]) != sp.shape:
        raise VerifyError(f"{what}: the pattern must be [{x.shape[0]}, {y.shape[0]}] ([M, N])")
    if not x.dtype.is_float or not y.dtype.is_float:
        raise VerifyError(f"{what}: a and b must be float")
    out = dt.dtype(a.get("out_dtype", dt.promote(x.dtype, y.dtype)))
    return out, _values_node(sp).shape, {"out_dtype": out}


@register(Op.SPARSE_SOFTMAX, (1, 1))
def _infer_sparse_softmax(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    (sp,) = srcs
    what = f"sparse_softmax of {sp.dtype}{fmt_shape(sp.shape)}"
    if sp.op is not Op.SPARSE:
        raise VerifyError(f"{what}: the operand must be a sparse tensor (a sparse node), got {sp.op.value}")
    if not sp.dtype.is_float:
        raise VerifyError(f"{what}: the values must be float, got {sp.dtype}")
    out = dt.dtype(a.get("out_dtype", sp.dtype))
    if not out.is_float:
        raise VerifyError(f"{what}: out_dtype must be float, got {out}")
    return out, _values_node(sp).shape, {"out_dtype": out}


# ---- reference ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparseValue:
    """A sparse tensor as the reference evaluator holds it: format, dense shape and arrays."""

    format: str
    shape: tuple[int, int]
    arrays: tuple[np.ndarray, ...]
    block: tuple[int, int] = (1, 1)

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, column) of every stored element, in the values' flattened order."""
        m, k = self.shape
        if self.format == "2:4":
            meta = self.arrays[1]
            rows = np.repeat(np.arange(m), k // 2).reshape(m, k // 2)
            cols = (np.arange(k // 2) // 2 * 4)[None, :] + meta
            return rows.reshape(-1), cols.reshape(-1)
        indptr, indices = self.arrays[0], self.arrays[1]
        brows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        bm, bn = self.block
        r = brows[:, None, None] * bm + np.arange(bm)[None, :, None]
        c = indices[:, None, None] * bn + np.arange(bn)[None, None, :]
        r, c = np.broadcast_arrays(r, c)
        return r.reshape(-1), c.reshape(-1)

    @property
    def values(self) -> np.ndarray:
        return self.arrays[0] if self.format == "2:4" else self.arrays[2]

    def to_dense(self) -> np.ndarray:
        """The dense [M, K] matrix (duplicates summed)."""
        out = np.zeros(self.shape, dtype=np.float64)
        r, c = self.coords()
        np.add.at(out, (r, c), self.values.reshape(-1))
        return out


class SparseStructureError(ReferenceEvalError, ValueError):
    """A sparse tensor's arrays do not form its format's structure (indptr, indices, nnz or 2:4 meta)."""


def validate_arrays(fmt: str, shape: tuple[int, int], block: tuple[int, int], arrays: tuple[Any, ...],
                    what: str = "") -> None:
    """Raise SparseStructureError unless `arrays` (numpy, the `sparse` node's operands in order) are a
    valid `fmt` structure of dense `shape`: indptr monotone from 0 to nnz, the values' leading dimension
    nnz, column indices inside the (block) columns, 2:4 meta in 0..3 with two distinct positions per
    group. Indices need not be sorted in any format (duplicates add up, as scipy's CSR @ dense)."""
    name = what or f"sparse {fmt}"
    if fmt == "2:4":
        meta = np.asarray(arrays[1]).astype(np.int64)
        if meta.size and (meta.min() < 0 or meta.max() > 3):
            raise SparseStructureError(f"{name}: meta values span {meta.min()}..{meta.max()}; accepted 0..3")
        if np.any(meta[:, 0::2] == meta[:, 1::2]):
            r, g = np.argwhere(meta[:, 0::2] == meta[:, 1::2])[0]
            raise SparseStructureError(f"{name}: row {r} group {g} names column {meta[r, 2 * g]} twice; "
                                       "the two positions of a group must differ")
        return
    # indices keep their dtype (no int64 copy of nnz elements on every call); min/max widen the two scalars
    indptr, indices = np.asarray(arrays[0]).astype(np.int64), np.asarray(arrays[1])
    nnz = len(indices)
    cols = shape[1] // block[1]
    if indptr[0] != 0 or indptr[-1] != nnz:
        raise SparseStructureError(f"{name}: indptr must run from 0 to nnz={nnz}, got {indptr[0]}..{indptr[-1]}")
    if np.any(np.diff(indptr) < 0):
        raise SparseStructureError(f"{name}: indptr decreases at row {int(np.argmax(np.diff(indptr) < 0))}; "
                                   "it must be non-decreasing")
    if len(arrays) > 2 and np.shape(arrays[2])[:1] != (nnz,):
        raise SparseStructureError(f"{name}: {np.shape(arrays[2])[0]} values for nnz={nnz} indices")
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= cols):
        raise SparseStructureError(f"{name}: column indices span {indices.min()}..{indices.max()}, "
                                   f"outside 0..{cols - 1}")


def _validate(sv: SparseValue) -> None:
    validate_arrays(sv.format, sv.shape, sv.block, sv.arrays)


@evaluator(Op.SPARSE)
def _eval_sparse(n: Node, xs: list[Any]) -> SparseValue:
    fmt = n.attr("format")
    arrays = tuple(np.asarray(x) for x in xs)
    if fmt != "2:4":
        arrays = (arrays[0].astype(np.int64), arrays[1].astype(np.int64), arrays[2])
    else:
        arrays = (arrays[0], arrays[1].astype(np.int64))
    sv = SparseValue(fmt, n.attr("shape"), arrays, n.attr("block", (1, 1)))
    _validate(sv)
    return sv


@evaluator(Op.SPMM)
def _eval_spmm(n: Node, xs: list[Any]) -> np.ndarray:
    sv, b = xs
    b = np.asarray(b, dtype=np.float64)
    if n.attr("transposed", False):
        b = b.T  # x @ A^T is (A @ x^T)^T
    r, c = sv.coords()
    out = np.zeros((sv.shape[0], b.shape[1]), dtype=np.float64)
    # Row-scatter of value * B[col]: the CSR @ dense definition, independent of densifying.
    np.add.at(out, r, sv.values.reshape(-1)[:, None].astype(np.float64) * b[c])
    return rnd(out.T if n.attr("transposed", False) else out, n.dtype)


@evaluator(Op.SDDMM)
def _eval_sddmm(n: Node, xs: list[Any]) -> np.ndarray:
    a, b, sv = xs
    r, c = sv.coords()
    vals = np.einsum("ik,ik->i", np.asarray(a, dtype=np.float64)[r], np.asarray(b, dtype=np.float64)[c])
    return rnd(vals.reshape(n.shape), n.dtype)


@evaluator(Op.SPARSE_SOFTMAX)
def _eval_sparse_softmax(n: Node, xs: list[Any]) -> np.ndarray:
    (sv,) = xs
    rows, _ = sv.coords()
    x = np.asarray(sv.values, dtype=np.float64).reshape(-1)
    peak = np.full(sv.shape[0], -np.inf)
    np.maximum.at(peak, rows, x)
    with np.errstate(invalid="ignore"):  # a row of -inf scores is nan, as a dense softmax's
        e = np.exp(x - peak[rows])
    total = np.zeros(sv.shape[0])
    np.add.at(total, rows, e)
    return rnd((e / total[rows]).reshape(n.shape), n.dtype)


# ---- numpy builders (for tests and examples) -----------------------------------------------------
def csr_from_dense(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr i32, indices i32, values) of the nonzeros of a 2-D array, row-major."""
    x = np.asarray(x)
    rows, cols = np.nonzero(x)
    indptr = np.zeros(x.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=x.shape[0]), out=indptr[1:])
    return indptr, cols.astype(np.int32), x[rows, cols]


def bsr_from_dense(x: np.ndarray, block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr i32, indices i32, values [nnzb, bm, bn]) keeping every block with any nonzero."""
    x = np.asarray(x)
    bm, bn = block
    m, k = x.shape
    if m % bm or k % bn:
        raise ValueError(f"bsr_from_dense: shape {x.shape} is not a multiple of block {block}")
    blocks = x.reshape(m // bm, bm, k // bn, bn).transpose(0, 2, 1, 3)
    keep = np.any(blocks != 0, axis=(2, 3))
    brows, bcols = np.nonzero(keep)
    indptr = np.zeros(m // bm + 1, dtype=np.int32)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    return indptr, bcols.astype(np.int32), blocks[brows, bcols]


def prune_2to4(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the two largest-magnitude entries of every 4 along the last axis.

    Returns (pruned dense array, values [M, K/2], meta u8 [M, K/2] with increasing positions)."""
    x = np.asarray(x)
    m, k = x.shape
    if k % 4:
        raise ValueError(f"prune_2to4: K={k} is not a multiple of 4")
    g = x.reshape(m, k // 4, 4)
    keep = np.sort(np.argsort(-np.abs(g), axis=-1, kind="stable")[..., :2], axis=-1)
    vals = np.take_along_axis(g, keep, axis=-1)
    dense = np.zeros_like(g)
    np.put_along_axis(dense, keep, vals, axis=-1)
    return dense.reshape(m, k), vals.reshape(m, k // 2), keep.reshape(m, k // 2).astype(np.uint8)
