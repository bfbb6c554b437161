"""Triton template of 2:4 SpMM, "load as sparse, compute as dense" (Flash-LLM): per BLOCK_K step the
program loads the A tile's kept values and their positions (values [M, K/2], meta [M, K/2]: half of
a dense A's values), rebuilds the dense [BLOCK_M, BLOCK_K] tile in registers (column 4g + j holds the
group's first kept value where its meta is j, the second where its meta is j, else zero) and feeds it
to `tl.dot` with the B tile. Triton has no sparse tensor-core MMA (mma.sp)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...codegen.headers import header
from ...codegen.triton_expr import tl_type
from ...schedule.config import Config
from .triton_common import IND, Scope, dot_args, store_outputs

if TYPE_CHECKING:
    from .spec import SpmmSpec


def render(spec: SpmmSpec, config: Config, interpret: bool = False) -> str:
    """Readable, deterministic Triton source for a 2:4 SpMM kernel."""
    assert spec.meta is not None
    args = ", ".join(spec.arg_names())
    acc_t = tl_type(spec.acc_dtype)
    I2 = IND * 2  # noqa: N806 - an indent, as IND
    L: list[str] = [header(spec, config, "triton"), "import triton", "import triton.language as tl", "", "",
                    "@triton.jit", f"def {spec.name}({args}, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, "
                    "BLOCK_K: tl.constexpr):",
                    f"{IND}rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)",
                    f"{IND}rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)",
                    f"{IND}rn = tl.max_contiguous(tl.multiple_of(rn, BLOCK_N), BLOCK_N)",
                    f"{IND}mmask = rm < {spec.M}",
                    f"{IND}nmask = rn < {spec.N}",
                    f"{IND}acc = tl.zeros([BLOCK_M, BLOCK_N], dtype={acc_t})",
                    f"{IND}for k0 in range(0, {spec.K}, BLOCK_K):",
                    f"{I2}kk = k0 + tl.arange(0, BLOCK_K)",
                    f"{I2}kmask = kk < {spec.K}",
                    f"{I2}h = kk // 4 * 2  # the group's first kept entry in values/meta",
                    f"{I2}pos = (kk % 4)[None, :]",
                    f"{I2}amask = mmask[:, None] & kmask[None, :]",
                    f"{I2}bmask = kmask[:, None] & nmask[None, :]"]
    first = Scope(spec, L, I2, "f", ("rm[:, None]", "h[None, :]"), "amask")
    second = Scope(spec, L, I2, "g", ("rm[:, None]", "(h + 1)[None, :]"), "amask")
    v0, m0 = first.emit(spec.values), first.emit(spec.meta)
    v1, m1 = second.emit(spec.values), second.emit(spec.meta)
    L.append(f"{I2}a = tl.where({m0}.to(tl.int32) == pos, {v0}, tl.where({m1}.to(tl.int32) == pos, {v1}, 0))")
    b = Scope(spec, L, I2, "b", tuple(spec.b_index("kk[:, None]", "rn[None, :]")), "bmask").emit(spec.b)
    da, db, extra = dot_args(spec, "a", b)
    L += [f"{I2}acc = tl.dot({da}, {db}, acc{extra})",
          f"{IND}omask = mmask[:, None] & nmask[None, :]"]
    store_outputs(spec, L, spec.out_index("rm[:, None]", "rn[None, :]"), "omask", "[BLOCK_M, BLOCK_N]",
                  spec.out_offset("rm[:, None]", "rn[None, :]"))
    return "\n".join(L) + "\n"
