"""The factored CPU decode schedule's side of the quantized GEMM spec (kernels/quant/tvm_gemv.py builds it):
whether the B operand factors as (value - zero) * scale with zero and scale constant over runs of K, the
config's problems under `gemv=2`, and its default for decode shapes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...ir import dtypes as dt
from ...ir import expr as ex
from ...ir.expr import E, Expr
from ...ir.quant_op import FP8, grid_block
from ...schedule.config import Config
from ...schedule.target import Target
from .dequant import Operand, dequant_parts

if TYPE_CHECKING:
    from .spec import QuantMatmulSpec

# the factored schedule is the default up to this many rows (the GEMM above)
DEFAULT_M = 16
# f32 lanes of one vector register the default assumes (AVX2; on AVX-512 the same code runs on ymm)
LANES = 8
# register accumulators a strip of columns keeps per k-step (of 16 ymm: the rest hold x, the word, the mask)
STRIP_ACCUMULATORS = 8
MIN_TILE_K = 16  # the smallest tile_k of the CPU knob space
WIDE_GRAIN = 64  # wide tasks (wide_tiles) are whole int4 strips
WIDE_TASKS = 4  # the default splits N in this many tasks (2 a thread on 2 cores)


@dataclass(frozen=True)
class GemvFactors:
    """The B operand as (value - zero) * scale, zero and scale constant over `run` rows of K: loader expressions
    over (r, c); zero a float for symmetric unsigned codes, None for signed ones."""

    value: Expr
    zero: Expr | float | None
    scale: Expr
    run: int
    unscale: Expr | None = None  # what the group sums of `value` are multiplied by first (unshifted codes)


def factors(spec: QuantMatmulSpec, operand_of: Callable[[Any], Operand]) -> GemvFactors | None:
    """The factored form when B is exactly one integer-coded dequantize and the activations are float. An
    f16/bf16 dequantize is summed in f32 without rounding each weight to its dtype first (the reference
    does): the difference is below the rounding of the f16/bf16 result itself."""
    if spec.b_expr.op is not E.VAR or spec.fp8 is not None or spec.operand_dtype.is_int:
        return None
    plane = next((p for p in spec.planes if p.var == spec.b_expr.arg), None)
    if plane is None or not plane.node.dtype.is_float or plane.node.src[0].dtype in FP8:
        return None
    n = plane.node
    value, zero, scale = dequant_parts(n, [operand_of(s) for s in n.src], sign_extends=True)
    shape, gs = tuple(n.attr("shape")), n.attr("group_size")
    layouts = [n.attr("scale_layout")] + ([n.attr("zero_layout")] if isinstance(zero, Expr) else [])
    runs = [grid_block(lay, gs, shape)[0] for lay in layouts]
    run = min([r for r in runs if r < spec.K], default=1 << 30)
    # scales that change within MIN_TILE_K rows of K (NF4's absmax blocks run along N): nothing to factor
    if run < MIN_TILE_K:
        return None
    # codes packed along N: the shift depends on the column only, so the factor can wait for the group's end
    unshifted = _unshifted(value, n.attr("bits")) if n.attr("pack_axis") == 1 else None
    if unshifted is None:
        return GemvFactors(value, zero, scale, run)
    return GemvFactors(unshifted[0], zero, scale, run, unshifted[1])


def _unshifted(value: Expr, bits: int) -> tuple[Expr, Expr] | None:
    """For a code unpacked from an i32 word as f32((w >> off) & mask): (f32((w >> e) & (mask << (off - e))),
    2^(e - off)), the code times 2^(off - e) and the factor that undoes it (exact: a power of two), with
    e = max(0, off + bits - 31) so the masked field never reaches the sign bit. Every code of a word but the
    top one (e = 0) loses its shift in the k loop: int4 takes 24 vector ops per word instead of 31."""
    if value.op is not E.CAST or value.dtype != dt.f32 or value.src[0].op is not E.AND:
        return None
    shifted, mask = value.src[0].src
    if shifted.op is not E.SHR or mask.op is not E.CONST or mask.arg != (1 << bits) - 1:
        return None
    word, off = shifted.src
    if word.dtype != dt.i32:
        return None
    e = ex.maximum(off + (bits - 31), 0)
    field = ex.binary(E.SHR, word, e) & ex.binary(E.SHL, mask, off - e)
    factor = ex.const(1.0, dt.f32) / ex.cast(ex.binary(E.SHL, ex.const(1, dt.i32), off - e), dt.f32)
    return ex.cast(field, dt.f32), factor


def wide_tiles(spec: QuantMatmulSpec, tiles: tuple[int, ...]) -> tuple[int, ...]:
    """The CPU tile_n values plus N split in 1..8 column ranges (multiples of 64): a task walks all K rows of
    its columns, one row per page once a packed row is over 4 KB (int4, N=11008: 5.5 KB), so narrow tasks
    take a TLB miss per row each (measured single-threaded at M=1, K=4096, N=11008: 256-column tasks 11.4 ms,
    1408 columns 7.0 ms, 5504 columns 5.0 ms)."""
    return tuple(sorted(set(tiles) | {-(-spec.N // (p * WIDE_GRAIN)) * WIDE_GRAIN for p in (1, 2, 4, 8)}))


def problems(spec: QuantMatmulSpec, config: Config) -> list[str]:
    """Why `config` (gemv=2) cannot build: no factored form, a k-tile across scale groups, a strip
    (micro_n columns) that is not whole vectors of words or does not divide the task."""
    f = spec.gemv_factors()
    if f is None:
        return ["gemv=2: the weights are not one integer-coded dequantize (no factored form)"]
    _, en = spec.pack_units()
    tn, tk, strip, vec = (config.int(k) for k in ("tile_n", "tile_k", "micro_n", "vector"))
    out = []
    if f.run % tk:
        out.append(f"gemv=2: tile_k={tk} does not divide the {f.run} rows of K sharing a scale and zero")
    if strip % (en * vec) or tn % strip:
        out.append(f"gemv=2: micro_n={strip} (a strip of columns) must be a multiple of {en} codes per word x "
                   f"vector={vec} and divide tile_n={tn}")
    return out


def default(spec: QuantMatmulSpec, base: Config, target: Target, any_layout: bool = False) -> Config | None:
    """gemv=2 for decode shapes: k-tiles within one scale group (at most 64 rows), strips of columns whose
    M x en x (strip / en / 8) accumulators fill about STRIP_ACCUMULATORS ymm registers, N in WIDE_TASKS
    column ranges (wide_tiles). `any_layout`: also for one code per column (not the default there)."""
    f = spec.gemv_factors()
    if f is None:
        return None
    ek, en = spec.pack_units()
    if en == 1 and not any_layout:
        # one code per column (int8, GPTQ packed along K): at M=1, N=11008 LLVM did not finish building this
        # schedule in 4 minutes (int8 and GPTQ int4; the unfactored gemv=1 builds in 4 s), cause not found yet:
        # gemv=2 stays a tuning candidate for them, not the default
        return None
    # 64 rows: a k-tile's rows are as many pages once a packed row is over 4 KB, and the strips of a task walk
    # them again and again (Zen 2's L1 DTLB: 64 entries). Measured, int4 M=1 N=11008 (2 threads, medians):
    # tile_k 128 2.8..4.0 ms, 64 2.2..2.7 ms; N=4096: 0.71..0.76 and 0.69..0.70 ms
    tk = 64
    while tk > MIN_TILE_K and (f.run % tk or tk > max(ek, spec.K)):
        tk //= 2
    if f.run % tk or tk % ek:
        return None  # scales change every few rows (NF4's absmax blocks along N): gemv=1 dequantizes per element
    words = max(1, STRIP_ACCUMULATORS // (spec.M * en))  # vectors of words per strip
    strip = en * LANES * min(8, 1 << (words.bit_length() - 1))
    # the k-step body is M x en x (strip / en / LANES) vector FMAs (x ek unpacked rows): unrolled further only
    # when that is small (M=16 int4 unrolled 4x made 512 FMAs a step, slow to compile and no faster)
    unroll = 4 if ek == 1 and tk % 4 == 0 and spec.M * strip // LANES <= STRIP_ACCUMULATORS else 1
    # WIDE_TASKS column ranges (wide_tiles): at N=4096 (2 threads) tasks of 512 columns took 0.75..3.7 ms,
    # of 1024 and 2048 0.66..0.70 ms; at N=11008 ranges of 1408..5504 columns were alike, 256 slower
    tn = max(strip, -(-spec.N // (WIDE_TASKS * WIDE_GRAIN)) * WIDE_GRAIN)
    cfg = base.replace(gemv=2, tile_n=tn, tile_k=tk, micro_n=strip, vector=LANES, unroll=unroll)
    return None if spec.constraints(cfg, target) else cfg
