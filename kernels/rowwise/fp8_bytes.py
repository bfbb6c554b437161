"""FP8 buffers of a row kernel as bytes (the knob FP8_BYTES), for sm_80, where Triton refuses fp8e4nv.

Under FP8_BYTES=1 every fp8 input and output is a u8 pointer (the executor passes a uint8 view of the
same memory, codegen/executors.as_declared), a cast to f8e4m3 is the software encoder's byte
(ir/fp8_encode.py) and the byte is stored as is; fp8 values are only copied or bitcast to u8 (their use as
numbers would need a decode: refused). FP8_BYTES=0 keeps the native type: Triton converts with
`cvt.rn.satfinite` from sm_89 on. The knob exists only for kernels that touch an fp8 buffer.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...codegen.lowering import LoweringError
from ...ir import dtypes as dt
from ...ir.expr import E, Expr
from ...ir.fp8_encode import soft_fp8_casts
from ...schedule.config import Config
from ...schedule.launch import LaunchPlan
from ...schedule.target import Target

KNOB = "FP8_BYTES"
FP8 = (dt.f8e4m3, dt.f8e5m2)
NATIVE_ARCH = 89  # Triton's fp8e4nv from sm_89


def touches_fp8(buffers: list[Any]) -> bool:
    """Whether any of the kernel's buffers holds fp8."""
    return any(b.dtype in FP8 for b in buffers)


def native_ok(target: Target) -> bool:
    """Whether `target` takes fp8e4nv pointers (the interpreter takes both forms)."""
    return target.kind == "interp" or target.arch >= NATIVE_ARCH


def knob_values(target: Target) -> tuple[int, ...]:
    """FP8_BYTES values legal on `target`."""
    return (0, 1) if native_ok(target) else (1,)


def default(target: Target) -> int:
    """Bytes where the native type is refused (sm_80), the native conversion elsewhere."""
    return int(target.kind == "cuda" and target.arch < NATIVE_ARCH)


def as_bytes(config: Config) -> bool:
    """Whether `config` stores fp8 buffers as bytes."""
    return KNOB in config and config.int(KNOB) == 1


def byte_plan(plan: LaunchPlan) -> LaunchPlan:
    """`plan` with every fp8 pointer declared u8."""
    def swap(args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(replace(a, triton_type="*u8") if a.triton_type in ("*fp8e4nv", "*fp8e5") else a for a in args)

    return replace(plan, args=swap(plan.args), launches=tuple(replace(ln, args=swap(ln.args)) for ln in plan.launches))


def byte_expr(e: Expr) -> Expr:
    """`e` computing fp8 results as bytes: casts to f8e4m3 encoded in software; LoweringError for a use of an
    fp8 value as a number."""
    e = soft_fp8_casts(e, byte=True)
    for n in e.toposort():
        if any(s.dtype in FP8 for s in n.src) and not (n.op is E.BITCAST and n.dtype == dt.u8):
            raise LoweringError(f"triton: {n.op.value} of an {n.src[0].dtype} value with fp8 buffers as bytes "
                                f"({KNOB}=1, sm_80): fp8 values are only copied there")
    return e
