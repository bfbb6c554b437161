"""What the sparse family's specs share: the sparse operand built in the kernel's loads, and the host
check of its structure before any launch (ir/sparse_op.validate_arrays)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...ir.expr import E, Expr
from ...ir.ops import Node, Op
from ...ir.sparse_op import validate_arrays
from ...passes.partition import Kernel
from ..base import KernelSpec
from ..lowering import LoweringError


def sparse_operand(kernel: Kernel, anchor: Node, i: int) -> Node:
    """The anchor's sparse operand `i`, which must be built inside the kernel (its prologue)."""
    sp = anchor.src[i]
    if sp.op is not Op.SPARSE or not any(p is sp for p in kernel.group.prologue):
        raise LoweringError(f"{kernel.name}: the sparse operand of {anchor.op.value} must be a sparse node read by "
                            "this op only (a sparse tensor that is a graph output or feeds several ops is not "
                            "supported yet)")
    return sp


def structure_exprs(spec: KernelSpec, sp: Node, exprs: Sequence[Expr | None]) -> None:
    """Refuse structure operands (indptr, indices, meta) that are not plain loads of kernel inputs:
    check_inputs reads them from the input arrays before the launch, so it must find them there."""
    for e in exprs:
        if e is not None and e.op is not E.LOAD:
            raise LoweringError(f"{spec.name}: the structure arrays of sparse {sp.attr('format')} must be kernel "
                                f"inputs (or views of them), got a computed {e.op.value}")


def host(x: Any) -> np.ndarray:
    """A numpy copy of an input array or torch tensor (any device)."""
    if hasattr(x, "detach"):
        return np.asarray(x.detach().cpu().numpy())
    return np.asarray(x)


def load_array(spec: KernelSpec, e: Expr, inputs: Sequence[Any]) -> np.ndarray:
    """The array a plain load expression reads: its input buffer through the load's strided view."""
    site = spec.loads[e.arg]
    flat = host(inputs[site.buffer]).reshape(-1)
    v = site.view
    idx: Any = np.int64(v.offset)
    for d, (n, s) in enumerate(zip(v.shape, v.strides)):
        axis = [1] * len(v.shape)
        axis[d] = n
        idx = idx + np.arange(n, dtype=np.int64).reshape(axis) * s
    return flat[idx]


def check_structure(spec: KernelSpec, sp: Node, exprs: Sequence[Expr | None], inputs: Sequence[Any]) -> None:
    """Validate the sparse operand's structure arrays, read from the kernel's `inputs`: `exprs` in the
    `sparse` node's operand order, None where an operand is not read (values: (indptr, indices) for
    CSR/BSR, (None, meta) for 2:4)."""
    arrays = tuple(None if e is None else load_array(spec, e, inputs) for e in exprs)
    names = ", ".join(s.attr("name") or s.op.value for s in sp.src)
    validate_arrays(sp.attr("format"), sp.attr("shape"), sp.attr("block", (1, 1)), arrays,
                    what=f"{spec.name}: sparse {sp.attr('format')} ({names})")
