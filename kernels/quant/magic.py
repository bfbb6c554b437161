"""The 0x6400 magic-number int4 -> f16 conversion (Marlin, FasterTransformer): the knob I4_F16.

An f16 whose bits are 0x6400 | q (exponent of 1024, q in the low mantissa bits) is exactly 1024 + q, so a
4-bit code becomes an f16 with one OR and a bitcast instead of an int -> float conversion, and one f16
subtraction of 1024 + z (the zero point fused; z's own 1024 + z is the same trick on the zero's code)
leaves q - z exactly. With f16 scales and f16 out, (q - z) * s is then one f16 multiply: the exact
product rounded once, bit-identical to the f32 path of dequant.dequant_value. Otherwise (q - z) goes to
f32 and the rest is the shift/mask path's arithmetic, so every value is identical.

I4_F16: 0 = shifts, masks and int -> float (dequant_value); 1 = the magic conversion in plain bit ops
(every target, the interpreter included); 2 = the OR and the subtraction as inline PTX on two f16 lanes per
32-bit register (`lop3.b32` + `sub.f16x2`, tl.inline_asm_elementwise with pack=2): CUDA targets only, the
interpreter cannot run PTX. The packed layout is the checkpoint's: the conversion reads each nibble where
it is, so nothing is repacked (AWQ's nibble order already puts the pairs (2i, 2i+1) of a word at nibbles
i and i+4, the interleave the word-wide form wants)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...ir import dtypes as dt
from ...ir import expr as ex
from ...ir.expr import E, Expr
from ...ir.ops import Node
from ...ir.quant_op import grid_shape
from ...schedule.config import Config
from ...schedule.target import Target
from .dequant import C, R, Operand, grid_index, scales, unpack_codes

MAGIC = 0x6400  # the f16 bits of 1024.0
KNOB = "I4_F16"
_LOP3 = "lop3.b32 $0, $1, 0x000f000f, 0x64006400, 0xea;"  # (x & 0x000f000f) | 0x64006400 on two lanes


def magic_f16(code: Expr) -> Expr:
    """1024 + code as an f16 from its bits (exact for 0 <= code < 1024)."""
    return ex.bitcast(ex.cast(code | MAGIC, dt.i16), dt.f16)


def applies(n: Node) -> bool:
    """Whether dequantize node `n` has unsigned 4-bit integer codes and a zero point the subtraction fuses
    (symmetric, or packed 4-bit zeros: AWQ). Plain zeros (GPTQ's, unpacked on import) may be any number, so
    (q - z) would stay an f32 subtraction after the conversion: more work than the int -> float it replaces,
    and it spilled (M=1 defaults, sm_80/sm_90 with the inline PTX, sm_90 with the bit ops)."""
    return (n.attr("bits") == 4 and n.attr("codebook") is None and not n.attr("signed")
            and n.src[0].dtype.is_int and (n.attr("symmetric") or n.attr("zeros_packed")))


def value(n: Node, ops: list[Operand]) -> tuple[Expr, Expr]:
    """(element (r, c) of `n` through the magic conversion, the f16 subtraction that the asm form renders)."""
    shape = tuple(n.attr("shape"))
    order, axis = n.attr("pack_order"), n.attr("pack_axis")
    h = magic_f16(unpack_codes(ops[0], shape, 4, axis, order, R, C))
    s = scales(n, ops, shape)
    if n.attr("symmetric"):
        d = h - ex.const(1024.0 + 8, dt.f16)
    else:
        zl, gs = n.attr("zero_layout"), n.attr("group_size")
        zr, zc = grid_index(zl, gs, shape)
        d = h - magic_f16(unpack_codes(ops[2], grid_shape(zl, gs, shape), 4, axis, order, zr, zc))
    if n.dtype == dt.f16 and s.op is E.CAST and s.src[0].dtype == dt.f16:
        return d * s.src[0], d
    return ex.cast(ex.cast(d, dt.f32) * s, n.dtype), d


def asm_text(sub: Expr, name: Callable[[Expr], str]) -> str:
    """`h - z` (f16, h = magic_f16(code)) as inline PTX on two lanes per register: lop3 ORs the magic into
    both nibbles (masking them, so the shifted word is passed as is) and sub.f16x2 subtracts."""
    h, z = sub.src
    code = h.src[0].src[0].src[0]  # BITCAST(CAST(OR(code, MAGIC)))
    word = code.src[0] if code.op is E.AND and code.src[1].op is E.CONST and code.src[1].arg == 15 else code
    args = f"[{name(word)}.to(tl.int16), {name(z)}"
    if z.op is E.CONST:
        bits = int(np.float16(z.arg).view(np.uint16))
        asm = f"{{ .reg .b32 t; {_LOP3} mov.b32 t, {bits | bits << 16:#010x}; sub.f16x2 $0, $0, t; }}"
        return (f"tl.inline_asm_elementwise({asm!r}, '=r,r', [{name(word)}.to(tl.int16)], dtype=tl.float16, "
                "is_pure=True, pack=2)")
    asm = f"{{ {_LOP3} sub.f16x2 $0, $0, $2; }}"
    return f"tl.inline_asm_elementwise({asm!r}, '=r,r,r', {args}], dtype=tl.float16, is_pure=True, pack=2)"


def emulate_asm(words: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """numpy model of asm_text on lanes of two: i16 words and f16 zeros (1024 + z), pairs of adjacent elements
    packed in one 32-bit register, lane 0 in the low half; returns the f16 lanes."""
    w = np.ascontiguousarray(words.astype(np.int16)).view(np.uint32)
    r = (w & 0x000F000F) | 0x64006400
    h = r.view(np.float16)
    return (h - np.ascontiguousarray(zero.astype(np.float16))).astype(np.float16)


def knob_values(target: Target) -> tuple[int, ...]:
    """I4_F16 values on `target`: the inline-PTX form only where PTX runs."""
    return (0, 1, 2) if target.kind == "cuda" else (0, 1)


def reasons(config: Config, target: Target) -> list[str]:
    """Why `config`'s I4_F16 cannot run on `target`."""
    if KNOB in config and config.int(KNOB) == 2 and target.kind != "cuda":
        return [f"{KNOB}=2 (inline PTX lop3/sub.f16x2) runs only on CUDA targets, not {target.name}; "
                f"{KNOB}=1 is the same conversion in plain bit ops"]
    return []


def report_line(config: Config) -> str:
    """What the report says about the int4 -> f16 conversion and the packed layout."""
    how = {0: "shifts, masks and int -> float", 1: "0x6400 magic number, plain bit ops",
           2: "0x6400 magic number, inline PTX lop3.b32 + sub.f16x2 on two lanes"}[config.int(KNOB)]
    return (f"int4 -> f16: {KNOB}={config.int(KNOB)} ({how}); packed layout: the checkpoint's, "
            "read in place (no repack step)")
