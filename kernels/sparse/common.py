"""What the sparse family's specs share: the sparse operand built in the kernel's loads, and the host
check of its structure before any launch (ir/sparse_op.validate_arrays)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...ir.expr import E, Expr
from ...ir.ops import Node, Op
from ...ir.sparse_op import validate_arrays
from ...settings import get_settings
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


def plain_value(spec: KernelSpec, n: Node) -> Expr:
    """The kernel's expression of graph value `n` over its own shape, nothing substituted."""
    return spec.lowering.value(n, tuple(n.shape), lambda _: None)


def csr_structure(spec: KernelSpec, sp: Node) -> tuple[Expr, Expr, int]:
    """(indptr, indices, nnz) of the CSR operand `sp`, its structure arrays checked to be kernel inputs."""
    indptr, indices = plain_value(spec, sp.src[0]), plain_value(spec, sp.src[1])
    structure_exprs(spec, sp, (indptr, indices))
    return indptr, indices, sp.src[1].shape[0]


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
    if all(s >= 0 for s in v.strides):
        # a read-only strided view, not a gather: the check runs on every call, and indexing 2*10^7 column
        # indices through an int64 index array took about 100 ms (the SpMM itself 150 ms)
        return np.lib.stride_tricks.as_strided(flat[v.offset:], v.shape, tuple(s * flat.itemsize for s in v.strides),
                                               writeable=False)
    idx: Any = np.int64(v.offset)
    for d, (n, s) in enumerate(zip(v.shape, v.strides)):
        axis = [1] * len(v.shape)
        axis[d] = n
        idx = idx + np.arange(n, dtype=np.int64).reshape(axis) * s
    return flat[idx]


def torch_view(spec: KernelSpec, e: Expr, inputs: Sequence[Any]) -> Any:
    """The tensor a plain load expression reads, as a strided view of its input where the input lives."""
    import torch

    site = spec.loads[e.arg]
    t = inputs[site.buffer]
    v = site.view
    return torch.as_strided(t, v.shape, v.strides, t.storage_offset() + v.offset)


def structure_ok_on_device(fmt: str, shape: tuple[int, int], block: tuple[int, int], arrays: Sequence[Any]) -> bool:
    """validate_arrays' checks as reductions where the tensors live, read back as one scalar: no copy of
    the arrays (False: something is wrong; the host check then says what)."""
    import torch

    if fmt == "2:4":
        meta = arrays[1].to(torch.int16)
        bad = (meta.min() < 0) | (meta.max() > 3) | (meta[:, 0::2] == meta[:, 1::2]).any()
    else:
        ip, ix = arrays[0], arrays[1]
        bad = (ip[0] != 0) | (ip[-1] != ix.shape[0]) | (torch.diff(ip) < 0).any()
        if ix.shape[0]:
            bad = bad | (ix.min() < 0) | (ix.max() >= shape[1] // block[1])
    return not bool(bad.item())


def check_structure(spec: KernelSpec, sp: Node, exprs: Sequence[Expr | None], inputs: Sequence[Any]) -> None:
    """Validate the sparse operand's structure arrays, read from the kernel's `inputs`: `exprs` in the
    `sparse` node's operand order, None where an operand is not read (values: (indptr, indices) for
    CSR/BSR, (None, meta) for 2:4). TILEFUSE_SPARSE_CHECK picks how: "device" (the default) checks torch
    tensors where they live, with one scalar read back instead of copying the arrays each run (numpy
    arrays are on the host already); "host" copies them; "off" trusts the caller."""
    mode = get_settings().sparse_check
    if mode == "off":
        return
    used = [e for e in exprs if e is not None]
    if mode == "device" and all(hasattr(inputs[spec.loads[e.arg].buffer], "storage_offset") for e in used):
        views = tuple(None if e is None else torch_view(spec, e, inputs) for e in exprs)
        if structure_ok_on_device(sp.attr("format"), sp.attr("shape"), sp.attr("block", (1, 1)), views):
            return
    arrays = tuple(None if e is None else load_array(spec, e, inputs) for e in exprs)
    names = ", ".join(s.attr("name") or s.op.value for s in sp.src)
    validate_arrays(sp.attr("format"), sp.attr("shape"), sp.attr("block", (1, 1)), arrays,
                    what=f"{spec.name}: sparse {sp.attr('format')} ({names})")
