"""What every TVM (CPU) template shares about its PrimFunc's arguments: the 32-bit indexing limit, and the
TVMScript preamble (flat input and output buffers, any auxiliary int32 arrays, then each dynamic size as an
int32 scalar: the order the TVM runtime passes them in) for templates written with the IRBuilder."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T  # noqa: N812 - the TVMScript convention

from ..ir import dtypes as dt
from ..ir.dims import upper
from .lowering import LoweringError
from .tvm_expr import prim, size_var, tvm_dtype

if TYPE_CHECKING:
    from ..kernels.base import KernelSpec  # annotations only: codegen never imports kernels

INDEX32 = 2**31 - 1


def check_index32(spec: KernelSpec) -> None:
    """LoweringError when a buffer needs 64-bit element offsets (the TIR indexes in int32), sized at the top of
    each dynamic range."""
    for b in list(spec.inputs) + list(spec.outputs):
        if upper(b.numel) > INDEX32:
            raise LoweringError(f"tvm: buffer {b.name} of {b.numel} elements needs 64-bit indexing, "
                                "which the tvm backend does not support yet")


@contextmanager
def script_func(spec: KernelSpec, aux: Sequence[str] = (), dtype: Callable[[dt.DType, str], str] = tvm_dtype
                ) -> Iterator[tuple[list[Any], list[Any], list[Any], Any]]:
    """Open the PrimFunc `spec.name`(in0.., out0.., aux.., sizes..) over flat buffers (`dtype` spells each
    buffer's element type); each `aux` name is an int32 array whose length each call decides. Yields (input
    buffers, output buffers, aux buffers, the IRBuilder, whose `get()` is the PrimFunc once the block closes)."""
    check_index32(spec)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(spec.name)
            T.func_attr({"tirx.noalias": True, "global_symbol": spec.name})
            ins = [T.arg(f"in{i}", T.buffer((prim(b.numel),), dtype(b.dtype, f"input {b.name}")))
                   for i, b in enumerate(spec.inputs)]
            outs = [T.arg(f"out{i}", T.buffer((prim(b.numel),), dtype(b.dtype, f"output {b.name}")))
                    for i, b in enumerate(spec.outputs)]
            extra = [T.arg(n, T.buffer((tirx.Var(f"{n}_len", "int32"),), "int32")) for n in aux]
            for name in spec.size_params():
                T.arg(name, size_var(name))
            yield ins, outs, extra, ib
