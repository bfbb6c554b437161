"""Triton template of CSR SDDMM (kernels/sparse/sddmm.py explains the schedule)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...codegen.headers import header
from ...codegen.triton_expr import literal, tl_type
from ...ir.expr import E
from ...schedule.config import Config
from .triton_common import IND, Scope

if TYPE_CHECKING:
    from .sddmm import SddmmSpec


def render(spec: SddmmSpec, config: Config, interpret: bool = False) -> str:
    """Readable, deterministic Triton source for a CSR SDDMM kernel."""
    args = ", ".join(spec.arg_names())
    acc_t = tl_type(spec.acc_dtype)
    I2, I3 = IND * 2, IND * 3  # noqa: N806 - indents, as IND
    L: list[str] = [header(spec, config, "triton"), "import triton", "import triton.language as tl", "", "",
                    "@triton.jit", f"def {spec.name}({args}, BLOCK_NZ: tl.constexpr, BLOCK_K: tl.constexpr):",
                    f"{IND}row = tl.program_id(0)"]
    start = Scope(spec, L, IND, "s", ("row",), None).emit(spec.indptr)
    end = Scope(spec, L, IND, "e", ("(row + 1)",), None).emit(spec.indptr)
    L += [f"{IND}for p0 in range({start}, {end}, BLOCK_NZ):",
          f"{I2}p = p0 + tl.arange(0, BLOCK_NZ)",
          f"{I2}nz = p < {end}",
          f"{I2}acc = tl.zeros([BLOCK_NZ], dtype={acc_t})"]
    col = Scope(spec, L, I2, "c", ("p",), "nz").emit(spec.indices)
    L += [f"{I2}for k0 in range(0, {spec.K}, BLOCK_K):",
          f"{I3}rk = k0 + tl.arange(0, BLOCK_K)",
          f"{I3}kmask = rk < {spec.K}",
          f"{I3}bmask = nz[:, None] & kmask[None, :]"]
    a = Scope(spec, L, I3, "a", ("row", "rk"), "kmask").emit(spec.a)
    b = Scope(spec, L, I3, "b", (f"{col}[:, None]", "rk[None, :]"), "bmask").emit(spec.b)
    L.append(f"{I3}acc += tl.sum({a}.to({acc_t})[None, :] * {b}.to({acc_t}), axis=1)")
    out = Scope(spec, L, I2, "o", ("p",), "nz")
    for i, e in spec.outs:
        v = out.em.emit(e)
        if e.op is E.CONST:
            v = f"tl.full([BLOCK_NZ], {literal(e.arg, e.dtype)}, {tl_type(e.dtype)})"
        L.append(f"{I2}tl.store(out{i} + p, {v}.to({tl_type(spec.outputs[i].dtype)}), mask=nz)")
    return "\n".join(L) + "\n"
