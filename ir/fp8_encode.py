"""A software f32 -> float8 e4m3fn encoder written as an integer bit-op expression on the f32 bits.

Backends without a native e4m3 conversion compute casts to f8e4m3 with it: the CPU (TVM has no f8 type;
fp8 buffers hold bytes), the Triton interpreter (Triton 3.6's conversion drops the rounding carry into
the exponent and rounds ties away) and sm_80 (Triton refuses fp8e4nv). The byte equals
`torch.tensor(x).to(torch.float8_e4m3fn)` for every |x| <= 448 and the reference's rounding everywhere:

    round to nearest, ties to even; subnormals (m * 2^-9, m < 8) included, f32 subnormals -> 0;
    |x| >= 448, inf included -> +-448 (0x7e; saturating, as PTX cvt.rn.satfinite and the reference do);
    NaN -> 0x7f with x's sign.
"""

from __future__ import annotations

from . import dtypes as dt
from .expr import E, Expr, binary, bitcast, cast, minimum, substitute, where

F32_448 = 0x43E00000  # bits of 448.0, the largest finite e4m3fn
F32_MIN_NORMAL = 0x3C800000  # bits of 2^-6, the smallest normal e4m3fn
BIAS_SHIFT = (127 - 7) << 3  # f32 exponent bias minus e4m3's, in units of the 3-bit mantissa


def _shr(a: Expr, b: Expr | int) -> Expr:
    return binary(E.SHR, a, b)


def _shl(a: Expr | int, b: Expr) -> Expr:
    return binary(E.SHL, a, b)


def encode_e4m3(x: Expr) -> Expr:
    """The e4m3fn byte (u8) of float `x` (f32, or f16/bf16 widened exactly; f64 is rounded to f32 first)."""
    f = x if x.dtype == dt.f32 else cast(x, dt.f32)
    b = bitcast(f, dt.i32)
    a = b & 0x7FFFFFFF
    sign = _shr(b, 24) & 0x80  # 0x80 for either an arithmetic or a logical shift
    # every branch is computed on a value clamped to 448 so that no i32 arithmetic overflows
    ac = minimum(a, F32_448)
    # normal: drop 20 mantissa bits rounding to nearest even; a carry rolls into the exponent
    normal = _shr(ac + 0x7FFFF + (_shr(ac, 20) & 1), 20) - BIAS_SHIFT
    # subnormal: |x| * 2^9 rounded to an integer m (m = 8 is the smallest normal, code 0x08, as it must be)
    sh = minimum(141 - _shr(ac, 23), 25)  # mant >> 25 is 0 and never rounds up: mant < 2^24
    mant = (ac & 0x7FFFFF) | 0x800000
    q = _shr(mant, sh)
    rem = mant & (_shl(1, sh) - 1)
    half = _shl(1, sh - 1)
    up = rem.gt(half) | (rem.eq(half) & (q & 1).eq(1))
    sub = q + cast(up, dt.i32)
    mag = where(a.gt(0x7F800000), 0x7F, where(a.ge(F32_448), 0x7E, where(a.lt(F32_MIN_NORMAL), sub, normal)))
    return cast(mag | sign, dt.u8)


def soft_fp8_casts(e: Expr, byte: bool = False) -> Expr:
    """`e` with every cast to f8e4m3 replaced by the software encoder's byte bitcast to f8e4m3 (`byte`: the
    u8 byte itself, for kernels that hold fp8 buffers as bytes); `e` itself (the same object) when it has none."""
    def fn(n: Expr) -> Expr | None:
        if n.op is E.CAST and n.dtype == dt.f8e4m3 and n.src[0].dtype.is_float:
            code = encode_e4m3(n.src[0])
            return code if byte else bitcast(code, dt.f8e4m3)
        return None

    if not any(n.op is E.CAST and n.dtype == dt.f8e4m3 for n in e.toposort()):
        return e
    return substitute(e, fn)
