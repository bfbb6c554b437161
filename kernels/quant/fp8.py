"""Block-scaled FP8 GEMM (DeepSeek-V3 / DeepGEMM style) inside the quantized GEMM family.

`dequantize(xq, sx) @ dequantize(wq, sw)` with fp8 codes on both sides, the activation scales per row
and 128-K group (sx [M, K/128]) and the weight scales per 128 x 128 block (sw [K/128, N/128]), or any
scale grids whose K groups are multiples of 128: the kernel never materialises scaled operands. Each K
step of BLOCK_K = 128 multiplies the raw fp8 tiles and scales the f32 product,
`acc += dot(a, b) * sa[:, None] * sb[None, :]` (kernels/matmul/triton_template.py, ScaledDot).

The knob FP8_MMA picks how the tiles reach the tensor cores: 1 = native fp8 MMA (wgmma on sm_90, e4m3
mma.sync from sm_89), 0 = the bytes decoded to f16 in registers (dequant.fp8_decode) and an f16 dot,
for sm_80, where Triton refuses e4m3 altogether. Under FP8_MMA=0 the fp8 inputs are declared as u8
pointers (the same bytes). The CPU (TVM) has no scaled-dot schedule: there the family's loaders dequantize
both operands into its f32 panels, the same values up to rounding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...ir import dtypes as dt
from ...ir.expr import Expr
from ...ir.ops import Node
from ...ir.quant_op import FP8, grid_block
from ...schedule.config import Config
from ...schedule.target import Target
from ..matmul.spec import ScaledDot
from .dequant import Operand, fp8_decode, fp8_parts

# One scale per 128 consecutive K: the step of the scaled dot.
BLOCK = 128
# Triton accepts e4m3 (fp8e4nv) dots from sm_89 on.
NATIVE_ARCH = 89


@dataclass(frozen=True)
class Fp8Side:
    """One operand of the scaled dot: its fp8 code LOAD and f32 scale, expressions of (r, c)."""

    code: Expr
    scale: Expr


@dataclass(frozen=True)
class Fp8Gemm:
    """Both operands of a block-scaled FP8 GEMM."""

    a: Fp8Side
    b: Fp8Side

    def scaled_dot(self, config: Config) -> ScaledDot:
        """The tiles for `config`: raw fp8 under FP8_MMA=1, decoded to f16 otherwise."""
        if native(config):
            return ScaledDot(self.a.code, self.b.code, self.a.scale, self.b.scale, self.a.code.dtype)
        return ScaledDot(fp8_decode(self.a.code), fp8_decode(self.b.code), self.a.scale, self.b.scale, dt.f16)


def k_group(n: Node, axis: int) -> int:
    """How many consecutive elements along `axis` of dequantize node `n` share a scale."""
    shape = tuple(n.attr("shape"))
    return grid_block(n.attr("scale_layout"), n.attr("group_size"), shape)[axis]


def fp8_gemm(a: Node, b: Node, a_ops: list[Operand], b_ops: list[Operand], k: int) -> Fp8Gemm | None:
    """The scaled-dot form of `dequantize(a) @ dequantize(b)` when both hold fp8 codes whose scales are
    constant over each 128-K step (K groups that are multiples of 128, or all of K); else None."""
    if a.src[0].dtype not in FP8 or b.src[0].dtype not in FP8 or k < BLOCK:
        return None
    if any(g % BLOCK and g < k for g in (k_group(a, 1), k_group(b, 0))):
        return None
    return Fp8Gemm(Fp8Side(*fp8_parts(a, a_ops)), Fp8Side(*fp8_parts(b, b_ops)))


def native(config: Config) -> bool:
    """Whether `config` asks for native fp8 tensor-core dots."""
    return "FP8_MMA" in config and config.int("FP8_MMA") == 1


def native_ok(target: Target) -> bool:
    """Whether `target` has native e4m3 dots (the interpreter runs either form)."""
    return target.kind == "interp" or target.arch >= NATIVE_ARCH


def knobs(space: dict[str, tuple[Any, ...]], target: Target) -> dict[str, tuple[Any, ...]]:
    """The matmul's GPU knob space with BLOCK_K fixed to the scale step and the FP8_MMA choice."""
    return {**space, "BLOCK_K": (BLOCK,), "FP8_MMA": (0, 1) if native_ok(target) else (0,)}


def reasons(config: Config, target: Target) -> list[str]:
    """Why `config` cannot run the scaled dot, in the user's terms (prefixed to the knob-space check)."""
    out = []
    if "BLOCK_K" in config and config.int("BLOCK_K") != BLOCK:
        out.append(f"block-scaled fp8: BLOCK_K must be {BLOCK} (one activation and one weight scale per "
                   f"{BLOCK}-K step), got BLOCK_K={config['BLOCK_K']}")
    if native(config) and not native_ok(target):
        out.append(f"block-scaled fp8: FP8_MMA=1 (native e4m3 dots) needs sm_{NATIVE_ARCH} or newer; "
                   f"{target.name} decodes the bytes in software (FP8_MMA=0)")
    return out


def default(cfg: Config, target: Target, m: int) -> Config:
    """The family default with the scaled dot's BLOCK_K and the target's fp8 path (native from sm_89). Prefill
    tiles (AOT builds, M=N=4000, K=4224): native 128 x 128, 8 warps, 4 stages (202 registers, QGMMA); the
    software decode 64 x 128, 8 warps (198 registers; at 128 x 128 the decoded f16 tiles spill 46 stores)."""
    mma = int(target.kind == "cuda" and target.arch >= NATIVE_ARCH)
    cfg = cfg.replace(BLOCK_K=BLOCK, FP8_MMA=mma)
    if m > 64:
        cfg = cfg.replace(BLOCK_M=128 if mma else 64, BLOCK_N=128, num_warps=8,
                          num_stages=4 if target.schedule_arch >= 90 else 3)
    return cfg
