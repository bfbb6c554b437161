"""What the sparse family's specs share: the sparse operand built in the kernel's loads, and the host
check of its structure before any launch (ir/sparse_op.validate_arrays)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ...ir import dims
from ...ir.dims import DynamicSizeError
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


def _solve(size: Any, n: int) -> tuple[str, int] | None:
    """(parameter, value) when `size` is c + a * P for one parameter P and equals n there, else None."""
    if not dims.is_dynamic(size) or len(size.names) != 1:
        return None
    name = size.names[0]
    terms = dict(size.poly)
    a, c = terms.get((name,), 0), terms.get((), 0)
    if not a or set(terms) - {(), (name,)} or (n - c) % a:
        return None
    return name, (n - c) // a


def call_sizes(spec: KernelSpec, inputs: Sequence[Any], want: Iterable[str]) -> dict[str, int]:
    """The dynamic sizes `want` of this call, read from the shapes of the kernel's input arrays (dims of the
    form c + a * P): the executors checked those shapes against the graph's at the call's sizes, while the
    spec's own sizes are its bucket's upper end (a structure of NNZ=5 stored entries must be checked as 5)."""
    out: dict[str, int] = {}
    for b, x in zip(spec.inputs, inputs):
        for d, n in zip(b.shape, tuple(x.shape)):
            hit = _solve(d, int(n))
            if hit:
                out.setdefault(*hit)
    missing = [k for k in want if k not in out]
    if missing:
        raise DynamicSizeError(f"{spec.name}: the sparse structure check cannot read the dynamic size "
                               f"{', '.join(missing)} from the kernel's input shapes (no input dim is "
                               f"c + a * {missing[0]})")
    return out


def host(x: Any) -> np.ndarray:
    """A numpy copy of an input array or torch tensor (any device)."""
    if hasattr(x, "detach"):
        return np.asarray(x.detach().cpu().numpy())
    return np.asarray(x)


def _view(spec: KernelSpec, e: Expr, sizes: dict[str, int]) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(shape, strides, offset) of the load `e` reads, at the call's sizes."""
    v = spec.loads[e.arg].view
    return dims.resolve(tuple(v.shape), sizes), dims.resolve(tuple(v.strides), sizes), dims.resolve(v.offset, sizes)


def load_array(spec: KernelSpec, e: Expr, inputs: Sequence[Any], sizes: dict[str, int] | None = None) -> np.ndarray:
    """The array a plain load expression reads: its input buffer through the load's strided view (at `sizes`,
    the call's dynamic sizes)."""
    site = spec.loads[e.arg]
    flat = host(inputs[site.buffer]).reshape(-1)
    shape, strides, offset = _view(spec, e, sizes or {})
    if all(s >= 0 for s in strides):
        # a read-only strided view, not a gather: the check runs on every call, and indexing 2*10^7 column
        # indices through an int64 index array took about 100 ms (the SpMM itself 150 ms)
        return np.lib.stride_tricks.as_strided(flat[offset:], shape, tuple(s * flat.itemsize for s in strides),
                                               writeable=False)
    idx: Any = np.int64(offset)
    for d, (n, s) in enumerate(zip(shape, strides)):
        axis = [1] * len(shape)
        axis[d] = n
        idx = idx + np.arange(n, dtype=np.int64).reshape(axis) * s
    return flat[idx]


def torch_view(spec: KernelSpec, e: Expr, inputs: Sequence[Any], sizes: dict[str, int] | None = None) -> Any:
    """The tensor a plain load expression reads, as a strided view of its input where the input lives (at
    `sizes`, the call's dynamic sizes)."""
    import torch

    t = inputs[spec.loads[e.arg].buffer]
    shape, strides, offset = _view(spec, e, sizes or {})
    return torch.as_strided(t, shape, strides, t.storage_offset() + offset)


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
    # the sizes the check reads (the structure's shape and arrays) at this call's values, not the bucket's
    loads = [spec.loads[e.arg].view for e in used]
    need = dims.params_of([tuple(sp.attr("shape"))] + [v.shape + v.strides + (v.offset,) for v in loads])
    sizes = call_sizes(spec, inputs, need) if need else {}
    shape = dims.resolve(tuple(sp.attr("shape")), sizes)
    if mode == "device" and all(hasattr(inputs[spec.loads[e.arg].buffer], "storage_offset") for e in used):
        views = tuple(None if e is None else torch_view(spec, e, inputs, sizes) for e in exprs)
        if structure_ok_on_device(sp.attr("format"), shape, sp.attr("block", (1, 1)), views):
            return
    arrays = tuple(None if e is None else load_array(spec, e, inputs, sizes) for e in exprs)
    names = ", ".join(s.attr("name") or s.op.value for s in sp.src)
    validate_arrays(sp.attr("format"), shape, sp.attr("block", (1, 1)), arrays,
                    what=f"{spec.name}: sparse {sp.attr('format')} ({names})")
