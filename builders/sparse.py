"""Builders for sparse tensors (CSR, BSR, 2:4) and the sparse products SpMM and SDDMM."""

from __future__ import annotations

from collections.abc import Sequence

from ..frontend import Tensor
from ..ir import dtypes as dt
from ..ir.ops import Node, Op, VerifyError, make


def sparse_csr(indptr: Tensor, indices: Tensor, values: Tensor, shape: Sequence[int]) -> Tensor:
    """A CSR sparse tensor of dense shape [M, K]."""
    return Tensor(make(Op.SPARSE, [indptr.node, indices.node, values.node], format="csr", shape=tuple(shape)))


def sparse_bsr(indptr: Tensor, indices: Tensor, values: Tensor, shape: Sequence[int],
               block: Sequence[int]) -> Tensor:
    """A BSR sparse tensor: values [nnzb, bm, bn], dense shape [M, K]."""
    return Tensor(make(Op.SPARSE, [indptr.node, indices.node, values.node], format="bsr", shape=tuple(shape),
                       block=tuple(block)))


def sparse_24(values: Tensor, meta: Tensor) -> Tensor:
    """A 2:4 semi-structured tensor: values [M, K/2], meta [M, K/2] (positions 0..3 in each group of 4)."""
    m, half = values.shape
    return Tensor(make(Op.SPARSE, [values.node, meta.node], format="2:4", shape=(m, 2 * half)))


def spmm(a: Tensor, b: Tensor, out_dtype: str | None = None) -> Tensor:
    """Sparse [M, K] @ dense [K, N] -> dense [M, N]."""
    kw = {} if out_dtype is None else {"out_dtype": dt.dtype(out_dtype)}
    return Tensor(make(Op.SPMM, [a.node, b.node], **kw))


def sparse_linear(x: Tensor, w: Tensor, out_dtype: str | None = None) -> Tensor:
    """x [T, K] @ w^T for a sparse w [N, K] (torch's linear(x, w)) -> [T, N], one transposed spmm."""
    kw = {} if out_dtype is None else {"out_dtype": dt.dtype(out_dtype)}
    return Tensor(make(Op.SPMM, [w.node, x.node], transposed=True, **kw))


def sddmm(a: Tensor, b: Tensor, pattern: Tensor, out_dtype: str | None = None, as_sparse: bool = False) -> Tensor:
    """(a @ b^T) at the nonzeros of `pattern`: a values array shaped like the pattern's values, or
    with as_sparse=True a sparse tensor with the pattern's structure and those values."""
    if pattern.node.op is not Op.SPARSE:
        raise VerifyError(f"sddmm: pattern must be a sparse tensor, got {pattern.node.op.value}")
    kw = {} if out_dtype is None else {"out_dtype": dt.dtype(out_dtype)}
    vals = make(Op.SDDMM, [a.node, b.node, pattern.node], **kw)
    return Tensor(_rewrap(pattern.node, vals)) if as_sparse else Tensor(vals)


def sparse_softmax(x: Tensor, out_dtype: str | None = None, as_sparse: bool = False) -> Tensor:
    """Softmax over each row's stored entries of the sparse `x` (graph attention's edge softmax): a values
    array shaped like x's values, or with as_sparse=True a sparse tensor with x's structure and those values."""
    if x.node.op is not Op.SPARSE:
        raise VerifyError(f"sparse_softmax: x must be a sparse tensor, got {x.node.op.value}")
    kw = {} if out_dtype is None else {"out_dtype": dt.dtype(out_dtype)}
    vals = make(Op.SPARSE_SOFTMAX, [x.node], **kw)
    return Tensor(_rewrap(x.node, vals)) if as_sparse else Tensor(vals)


def _rewrap(p: Node, vals: Node) -> Node:
    """A sparse tensor with the structure of sparse `p` and the values `vals`."""
    srcs = [vals, p.src[1]] if p.attr("format") == "2:4" else [p.src[0], p.src[1], vals]
    return make(Op.SPARSE, srcs, **p.attrs)

