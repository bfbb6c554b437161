"""A dequantize node as one scalar expression of the logical element (r, c) = (k, n): the B-operand loader
of the quantized GEMM, rendered by the matmul templates' loader hook (Triton tiles and TVM TIR alike).

Leaves: the i32 index variables `r` and `c`, and LOAD(buffer, flat index) of kernel inputs at element
offsets computed from (r, c) through each operand's strided view. Codes are unpacked with shifts and
masks (`(w >> shift) & mask`); a code that straddles two containers (GPTQ's int3) is read from the
two words joined in 64 bits. Codebooks (NF4, bitsandbytes' 256-entry scale map) are a select tree
over the code's bits. FP8 codes are decoded from their bits (fp8_decode), so every target reads them as
bytes. Everything is computed in f32 and rounded once to the out dtype (the reference rounds once from
float64: exact for integer codes and fp8 values with f16/bf16/f32 scales)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...ir import dtypes as dt
from ...ir import expr as ex
from ...ir.expr import E, Expr, ExprLike
from ...ir.ops import Node
from ...ir.quant_op import CONTAINERS, FP8, grid_block, grid_shape, unit
from ...passes.views import StridedView
from ..lowering import LoweringError

R = ex.var("r", dt.i32)
C = ex.var("c", dt.i32)


def shr(a: ExprLike, b: ExprLike) -> Expr:
    """a >> b."""
    return ex.binary(E.SHR, a, b)


def shl(a: ExprLike, b: ExprLike) -> Expr:
    """a << b."""
    return ex.binary(E.SHL, a, b)


@dataclass(frozen=True)
class Operand:
    """One dequantize operand as the kernel reads it: input `buffer` through `view` (its node's shape)."""

    buffer: int
    dtype: dt.DType
    view: StridedView

    def at(self, *index: Expr | int) -> Expr:
        """LOAD of this operand at a multi-index (one entry per view dim)."""
        terms = [i * s if s != 1 else i for i, s in zip(index, self.view.strides) if s and not (i == 0)]
        if self.view.offset or not terms:
            terms.append(self.view.offset)
        flat = terms[0]
        for t in terms[1:]:
            flat = flat + t  # type: ignore[operator]
        flat = flat if isinstance(flat, Expr) else ex.const(flat, dt.i32)
        return ex.load(self.buffer, self.dtype, flat)

    def on_grid(self, grid: tuple[int, int], gr: Expr | int, gc: Expr | int) -> Expr:
        """LOAD at grid cell (gr, gc), for an operand of the grid's shape or with its size-1 axes dropped."""
        if len(self.view.shape) == 2:
            return self.at(gr, gc)
        keep = [i for (i, n) in zip((gr, gc), grid) if n != 1]
        return self.at(*keep)


def _table(index: Expr, values: tuple[float, ...], d: dt.DType) -> Expr:
    """values[index] as a select tree over the bits of `index` (len(values) a power of two)."""
    level = [ex.const(v, d) for v in values]
    bit = 0
    while len(level) > 1:
        sel = (shr(index, bit) & 1).eq(1)
        level = [ex.where(sel, level[i + 1], level[i]) for i in range(0, len(level), 2)]
        bit += 1
    return level[0]


def _slot(j: Expr, order: tuple[int, ...]) -> Expr:
    """The sub-word slot of element j of a unit: j itself, or a nibble table packed in one constant."""
    if order == tuple(range(len(order))):
        return j
    table = sum(s << (4 * i) for i, s in enumerate(order))
    if max(order) < 16 and table < 2**31:
        return shr(ex.const(table, dt.i32), j * 4) & 15
    if max(order) < 16 and table < 2**63:
        return ex.cast(shr(ex.const(table, dt.i64), ex.cast(j * 4, dt.i64)) & 15, dt.i32)
    return ex.cast(_table(j, tuple(float(s) for s in order), dt.f32), dt.i32)


def unpack_codes(op: Operand, logical: tuple[int, int], bits: int, axis: int, order: tuple[int, ...],
                 row: Expr | int, col: Expr | int) -> Expr:
    """The unsigned `bits`-bit code of logical element (row, col) of `op`'s packed containers (i32)."""
    cb = CONTAINERS[op.dtype]
    e, c = unit(bits, cb)
    idx = col if axis == 1 else row
    u, j = idx // e, idx % e  # type: ignore[operator]
    pos = _slot(j, order) * bits if isinstance(j, Expr) else ex.const(order[j] * bits, dt.i32)
    word = u * c + pos // cb if c > 1 else u
    off = pos % cb if c > 1 else pos
    mask = (1 << bits) - 1

    def at(w: Expr | int) -> Expr:
        v = op.at(row, w) if axis == 1 else op.at(w, col)
        return ex.cast(v, dt.i32)

    if cb % bits == 0:
        w = at(word)
        return shr(w, off) & mask if cb == 32 else shr(w & ((1 << cb) - 1), off) & mask
    if cb != 32:
        raise LoweringError(f"dequantize: {bits}-bit codes straddling {op.dtype} containers are not supported "
                            "by the quant_matmul loader (use i32 containers)")
    last = u * c + (c - 1)
    lo = ex.cast(at(word), dt.i64) & 0xFFFFFFFF
    hi = ex.cast(at(ex.minimum(word + 1, last)), dt.i64) & 0xFFFFFFFF
    both = lo | shl(hi, 32)
    return ex.cast(shr(both, ex.cast(off, dt.i64)) & mask, dt.i32)


def grid_index(layout: str, gs: Any, shape: tuple[int, int]) -> tuple[Expr | int, Expr | int]:
    """The (row, column) of the scale/zero grid cell of element (r, c)."""
    bk, bn = grid_block(layout, gs, shape)
    gr = 0 if bk >= shape[0] else R if bk == 1 else R // bk
    gc = 0 if bn >= shape[1] else C if bn == 1 else C // bn
    return gr, gc


def scales(n: Node, ops: list[Operand], shape: tuple[int, int]) -> Expr:
    """The f32 scale of element (r, c) of `n` (double-quantized absmax decoded)."""
    layout, gs = n.attr("scale_layout"), n.attr("group_size")
    grid = grid_shape(layout, gs, shape)
    gr, gc = grid_index(layout, gs, shape)
    s = ops[1]
    if not n.attr("double_quant"):
        return ex.cast(s.on_grid(grid, gr, gc), dt.f32)
    code = ex.cast(s.on_grid(grid, gr, gc), dt.i32) & 0xFF
    scb = n.attr("scale_codebook")
    lut = _table(code, scb, dt.f32) if scb is not None else ex.cast(code, dt.f32)
    pos = gr * grid[1] + gc
    blk = pos // n.attr("dq_block") if isinstance(pos, Expr) else 0
    s2, off = ops[-2], ops[-1]
    offset = off.at(*([0] * len(off.view.shape)))
    return lut * ex.cast(s2.at(blk), dt.f32) + ex.cast(offset, dt.f32)


def fp8_decode(v: Expr) -> Expr:
    """The f16 value of an fp8 LOAD `v`, from its bits (exact: every e4m3 and e5m2 value is an f16 value).

    e5m2 is the high byte of an f16. e4m3 (bias 7, no infinities, S.1111.111 is NaN): its exponent and
    mantissa bits placed at f16's bits 7..14 give the value times 2^-8 (subnormals included, f16 has the
    range), so one f16 multiply by 256 rebiases. No target needs fp8 arithmetic: sm_80, where Triton
    refuses e4m3, and the CPU read the bytes as u8."""
    b = ex.cast(ex.bitcast(v, dt.u8), dt.i32)
    if v.dtype == dt.f8e5m2:
        return ex.bitcast(ex.cast(shl(b, 8), dt.i16), dt.f16)
    bits = shl(b & 0x80, 8) | shl(b & 0x7F, 7)
    val = ex.bitcast(ex.cast(bits, dt.i16), dt.f16) * ex.const(256.0, dt.f16)
    return ex.where((b & 0x7F).eq(0x7F), ex.const(float("nan"), dt.f16), val)


def fp8_parts(n: Node, ops: list[Operand]) -> tuple[Expr, Expr]:
    """(code, scale) of fp8 dequantize node `n` at (r, c): the fp8 LOAD and its f32 scale, for kernels
    that apply the scale after the dot (kernels/quant/spec.py: block-scaled FP8)."""
    return ops[0].at(R, C), scales(n, ops, tuple(n.attr("shape")))


def dequant_parts(n: Node, ops: list[Operand], scale: Expr | None = None,
                  sign_extends: bool = False) -> tuple[Expr, Expr | float | None, Expr]:
    """(value, zero, scale) of integer-coded dequantize node `n` at (r, c), all f32: the element is
    (value - zero) * scale (value * scale when zero is None); zero is a float for symmetric unsigned codes.
    The CPU decode schedule (kernels/quant/tvm_gemv.py) sums value * x per group and applies zero and
    scale once per group. `sign_extends`: signed int8 codes in i8 are the loaded value sign-extended (the
    same value as the generic unpack, which dequant_value keeps so its expression does not change)."""
    shape = tuple(n.attr("shape"))
    bits = n.attr("bits")
    code = unpack_codes(ops[0], shape, bits, n.attr("pack_axis"), n.attr("pack_order"), R, C)
    if n.attr("signed") and sign_extends and ops[0].dtype == dt.i8 and bits == 8:
        code = ex.cast(ops[0].at(R, C), dt.i32)  # one sign extension (the select below costs LLVM five ops)
    elif n.attr("signed"):
        code = ex.where(code.ge(1 << (bits - 1)), code - (1 << bits), code)
    codebook = n.attr("codebook")
    val = _table(code, codebook, dt.f32) if codebook is not None else ex.cast(code, dt.f32)
    s = scales(n, ops, shape) if scale is None else scale
    if n.attr("symmetric"):
        z0 = 1 << (bits - 1) if codebook is None and not n.attr("signed") else 0
        return val, float(z0) if z0 else None, s
    zl, gs = n.attr("zero_layout"), n.attr("group_size")
    zgrid = grid_shape(zl, gs, shape)
    zr, zc = grid_index(zl, gs, shape)
    if n.attr("zeros_packed"):
        z = ex.cast(unpack_codes(ops[2], zgrid, bits, n.attr("pack_axis"), n.attr("pack_order"), zr, zc), dt.f32)
    else:
        z = ex.cast(ops[2].on_grid(zgrid, zr, zc), dt.f32)
    return val, z, s


def dequant_value(n: Node, ops: list[Operand], scale: Expr | None = None) -> Expr:
    """Element (r, c) of dequantize node `n` in its out dtype; `ops` are its operands as the kernel reads them;
    `scale` stands for its f32 scale when given (a tile computed once per scale block)."""
    if n.src[0].dtype in FP8:
        code, s = fp8_parts(n, ops)
        return ex.cast(ex.cast(fp8_decode(code), dt.f32) * s, n.dtype)
    val, z, s = dequant_parts(n, ops, scale)
    w = (val - z) * s if z is not None else val * s
    return ex.cast(w, n.dtype)
