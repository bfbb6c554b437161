"""Triton template of BSR SpMM: one program per (block row, BLOCK_N columns), one `tl.dot` per stored
block of the row ([bm, bn] padded to tl.dot's tile with masks) with the bn rows of B it meets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...codegen.headers import header
from ...codegen.triton_expr import tl_type
from ...schedule.config import Config
from .triton_common import IND, Scope, dot_args, store_outputs

if TYPE_CHECKING:
    from .spec import SpmmSpec


def render(spec: SpmmSpec, config: Config, interpret: bool = False) -> str:
    """Readable, deterministic Triton source for a BSR SpMM kernel."""
    (bm, bn), (pm, pk) = spec.block, spec.dot_block()
    args = ", ".join(spec.arg_names())
    acc_t = tl_type(spec.acc_dtype)
    L: list[str] = [header(spec, config, "triton"), "import triton", "import triton.language as tl", "", "",
                    "@triton.jit", f"def {spec.name}({args}, BLOCK_N: tl.constexpr):",
                    f"{IND}brow = tl.program_id(0)",
                    f"{IND}rm = tl.arange(0, {pm})",
                    f"{IND}rk = tl.arange(0, {pk})",
                    f"{IND}rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)",
                    f"{IND}rn = tl.max_contiguous(tl.multiple_of(rn, BLOCK_N), BLOCK_N)",
                    f"{IND}nmask = rn < {spec.N}",
                    f"{IND}amask = (rm < {bm})[:, None] & (rk < {bn})[None, :]",
                    f"{IND}bmask = (rk < {bn})[:, None] & nmask[None, :]"]
    start = Scope(spec, L, IND, "s", ("brow",), None).emit(spec.indptr)
    end = Scope(spec, L, IND, "e", ("(brow + 1)",), None).emit(spec.indptr)
    L += [f"{IND}acc = tl.zeros([{pm}, BLOCK_N], dtype={acc_t})",
          f"{IND}for p in range({start}, {end}):"]
    col = Scope(spec, L, IND * 2, "c", ("p",), None).emit(spec.indices)
    wide = spec.K * spec.N >= 2**31 and spec.index_dtypes[1].itemsize < 8
    L.append(f"{IND * 2}k = {col}{'.to(tl.int64)' if wide else ''} * {bn} + rk")
    a = Scope(spec, L, IND * 2, "a", ("p", "rm[:, None]", "rk[None, :]"), "amask").emit(spec.values)
    b = Scope(spec, L, IND * 2, "b", tuple(spec.b_index("k[:, None]", "rn[None, :]")), "bmask").emit(spec.b)
    da, db, extra = dot_args(spec, a, b)
    L += [f"{IND * 2}acc = tl.dot({da}, {db}, acc{extra})",
          f"{IND}row = brow * {bm} + rm",
          f"{IND}omask = (rm < {bm})[:, None] & nmask[None, :]"]
    store_outputs(spec, L, spec.out_index("row[:, None]", "rn[None, :]"), "omask", f"[{pm}, BLOCK_N]",
                  spec.out_offset("row[:, None]", "rn[None, :]"))
    return "\n".join(L) + "\n"
