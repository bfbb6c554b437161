"""Triton template of CSR SpMM (kernels/sparse/spec.py explains the schedule)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...codegen.headers import header
from ...codegen.triton_expr import tl_type
from ...schedule.config import Config
from .triton_common import IND, Scope, store_outputs

if TYPE_CHECKING:
    from .spec import SpmmSpec


def _binning(spec: SpmmSpec, args: str) -> list[str]:
    """`_count`, `_scan` and `_order`: a counting sort of the rows into log2-length bins, longest first."""
    L: list[str] = []
    for fn in ("count", "order"):
        L += ["", "", "@triton.jit", f"def {spec.name}_{fn}({args}, BLOCK_R: tl.constexpr, NBINS: tl.constexpr):",
              f"{IND}r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)",
              f"{IND}ok = r < {spec.M}"]
        lo = Scope(spec, L, IND, "s", ("r",), "ok").emit(spec.indptr)
        hi = Scope(spec, L, IND, "e", ("(r + 1)",), "ok").emit(spec.indptr)
        L += [f"{IND}length = {hi} - {lo}",
              f"{IND}bits = tl.zeros([BLOCK_R], dtype=tl.int32)",
              f"{IND}for i in tl.static_range(NBINS - 1):",
              f"{IND * 2}bits += (length >= (1 << i)).to(tl.int32)",
              f"{IND}key = NBINS - 1 - bits  # the longest rows first"]
        if fn == "count":
            L.append(f"{IND}tl.atomic_add(counts + key, tl.full([BLOCK_R], 1, tl.int32), mask=ok)")
        else:
            L += [f"{IND}pos = tl.atomic_add(cursor + key, tl.full([BLOCK_R], 1, tl.int32), mask=ok)",
                  f"{IND}tl.store(order + pos, r, mask=ok & (pos >= 0) & (pos < {spec.M}))"]
    L += ["", "", "@triton.jit", f"def {spec.name}_scan({args}, BLOCK_R: tl.constexpr, NBINS: tl.constexpr):",
          f"{IND}i = tl.arange(0, NBINS)",
          f"{IND}c = tl.load(counts + i)",
          f"{IND}tl.store(cursor + i, tl.cumsum(c, 0) - c)"]
    return L


def _row_loop(spec: SpmmSpec, L: list[str]) -> None:
    """acc[BLOCK_N] = sum over the row's nonzeros p of values[p] * B[indices[p], rn]."""
    acc_t = tl_type(spec.acc_dtype)
    start = Scope(spec, L, IND, "s", ("row",), None).emit(spec.indptr)
    end = Scope(spec, L, IND, "e", ("(row + 1)",), None).emit(spec.indptr)
    wide = spec.K * spec.N >= 2**31 and spec.index_dtypes[1].itemsize < 8
    L += [f"{IND}acc = tl.zeros([BLOCK_N], dtype={acc_t})",
          f"{IND}for p0 in range({start}, {end}, BLOCK_NZ):",
          f"{IND * 2}p = p0 + tl.arange(0, BLOCK_NZ)",
          f"{IND * 2}nz = p < {end}"]
    col = Scope(spec, L, IND * 2, "c", ("p",), "nz").emit(spec.indices)
    if wide:  # col * N would overflow int32
        L.append(f"{IND * 2}col = {col}.to(tl.int64)")
        col = "col"
    val = Scope(spec, L, IND * 2, "v", ("p",), "nz").emit(spec.values)
    L.append(f"{IND * 2}bmask = nz[:, None] & nmask[None, :]")
    bv = Scope(spec, L, IND * 2, "b", tuple(spec.b_index(f"{col}[:, None]", "rn[None, :]")), "bmask").emit(spec.b)
    L.append(f"{IND * 2}acc += tl.sum({val}.to({acc_t})[:, None] * {bv}.to({acc_t}), axis=0)")


def render(spec: SpmmSpec, config: Config, interpret: bool = False) -> str:
    """Readable, deterministic Triton source for a CSR SpMM kernel (and its row-binning launches)."""
    swizzle = bool(spec.workspaces(config))
    args = ", ".join(spec.arg_names() + [w.name for w in spec.workspaces(config)])
    L: list[str] = [header(spec, config, "triton"), "import triton", "import triton.language as tl"]
    if swizzle:
        L += _binning(spec, args)
    L += ["", "", "@triton.jit", f"def {spec.name}({args}, BLOCK_N: tl.constexpr, BLOCK_NZ: tl.constexpr):",
          f"{IND}row = tl.load(order + tl.program_id(0))" if swizzle else f"{IND}row = tl.program_id(0)",
          f"{IND}rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)",
          f"{IND}rn = tl.max_contiguous(tl.multiple_of(rn, BLOCK_N), BLOCK_N)  # vector loads of B's rows",
          f"{IND}nmask = rn < {spec.N}"]
    _row_loop(spec, L)
    store_outputs(spec, L, spec.out_index("row", "rn"), "nmask", "[BLOCK_N]", spec.out_offset("row", "rn"))
    return "\n".join(L) + "\n"
