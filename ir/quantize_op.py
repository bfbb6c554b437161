"""The quantize op: dynamic (per token, per group) absmax quantization of activations, two results.

    %0 = quantize(%x) {out_dtype=i8, group_size=-1} : (i8[M, K], f32[M, 1])
    %1 = result(%0) {index=0} : i8[M, K]       # the codes q
    %2 = result(%0) {index=1} : f32[M, 1]      # the scales s, x ~ q * s

`x` is f16, bf16 or f32 of rank >= 1; its last axis (K) is cut into groups of `group_size` G consecutive
elements (G = -1, the default: the whole row, one scale per token; G must divide K). Per group:

    amax  = max |x|                                   (exact in x's dtype)
    s     = f32(amax / qmax)                          qmax = 127 for i8, 448 for f8e4m3
    v     = f32(f32(x) / s)
    i8:     q = clamp(round(v), -127, 127)            round = to nearest, ties to even (torch.round)
    f8e4m3: q = f8e4m3(clamp(v, -448, 448))           round to nearest even (torch's .to(float8_e4m3fn))
    a group of zeros has s = 0 and q = 0 (no NaN)

The scale has x's shape with the last axis K/G: [M, 1] per token (it broadcasts against an [M, N] GEMM
output as is), [M, K/128] for DeepSeek-V3 / DeepGEMM's 1x128 FP8 activation groups. The codes are
symmetric (no zero point), so -128 is never produced: q * s is the dequantized value. This is what
vLLM's `scaled_int8_quant` computes with torch (`x / s`, then `round`, then the clamp). Inputs are
expected finite (an inf makes its group's scale inf).

The op is a composite: `primitives` writes it as a last-axis max reduction and pointwise ops, which the
canonicalizer substitutes, so the row-kernel family fuses it into one kernel on every backend, exactly
as it fuses a softmax. The reference below is the semantic definition; a test holds the two equal.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import dtypes as dt
from . import expr as ex
from .ops import Node, Op, Shape, VerifyError, fmt_shape, make, register
from .reference import evaluator, rnd

QMAX = {dt.i8: 127.0, dt.f8e4m3: 448.0}
IN_DTYPES = (dt.f16, dt.bf16, dt.f32)


def _group(x: Node, a: dict[str, Any], what: str) -> int:
    """The group length G along the last axis (K for group_size=-1)."""
    gs = a.get("group_size", -1)
    k = x.shape[-1]
    if gs == -1:
        return k
    if gs <= 0 or k % gs:
        raise VerifyError(f"{what}: group_size {gs} must be -1 (one group per row) or a positive divisor of "
                          f"the last axis ({k})")
    return int(gs)


@register(Op.QUANTIZE, (1, 1))
def _infer_quantize(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    (x,) = srcs
    what = f"quantize of {x.dtype}{fmt_shape(x.shape)}"
    if x.dtype not in IN_DTYPES:
        raise VerifyError(f"{what}: operand x must be f16, bf16 or f32, got {x.dtype}")
    if x.ndim < 1:
        raise VerifyError(f"{what}: operand x needs rank >= 1 (groups run along the last axis)")
    out = dt.dtype(a.get("out_dtype", "i8"))
    if out not in QMAX:
        raise VerifyError(f"{what}: out_dtype must be i8 or f8e4m3, got {out}")
    g = _group(x, a, what)
    scale_shape = (*x.shape[:-1], x.shape[-1] // g)
    norm = {"out_dtype": out, "group_size": a.get("group_size", -1),
            "results": ((out, x.shape), (dt.f32, scale_shape))}
    return out, x.shape, norm


def _grouped(x: Node, g: int) -> Shape:
    return (*x.shape[:-1], x.shape[-1] // g, g)


@evaluator(Op.QUANTIZE)
def _eval_quantize(n: Node, xs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    x = n.src[0]
    out = n.attr("out_dtype")
    g = x.shape[-1] if n.attr("group_size") == -1 else n.attr("group_size")
    xv = np.asarray(xs[0], dtype=np.float64).reshape(_grouped(x, g))
    qmax = QMAX[out]
    s = rnd(np.max(np.abs(xv), axis=-1, keepdims=True) / qmax, dt.f32)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = rnd(xv / s, dt.f32)
    if out == dt.i8:
        q = np.clip(np.rint(v), -qmax, qmax)
    else:
        q = rnd(np.clip(v, -qmax, qmax), out)
    q = rnd(np.where(s == 0, 0.0, q), out)
    return q.reshape(x.shape), s.reshape(n.attr("results")[1][1])


def primitives(n: Node) -> tuple[Node, Node]:
    """(q, scale) of quantize node `n` as a last-axis max reduction and pointwise ops, equal to the
    reference element for element (each pointwise op rounds to f32 where the reference does)."""
    x = n.src[0]
    out = n.attr("out_dtype")
    g = x.shape[-1] if n.attr("group_size") == -1 else n.attr("group_size")
    qmax = QMAX[out]
    xg = x if g == x.shape[-1] else make(Op.RESHAPE, [x], shape=_grouped(x, g))
    absx = make(Op.POINTWISE, [xg], expr=ex.abs_(ex.arg(0, x.dtype)))
    amax = make(Op.REDUCE, [absx], op="max", axes=(xg.ndim - 1,), keepdim=True)
    scale = make(Op.POINTWISE, [amax], expr=ex.cast(ex.arg(0, x.dtype), dt.f32) / qmax)
    s = ex.arg(1, dt.f32)
    v = ex.cast(ex.arg(0, x.dtype), dt.f32) / s
    if out == dt.i8:
        v = ex.round_(v)
    v = ex.maximum(ex.minimum(v, qmax), -qmax)
    q_expr = ex.cast(ex.where(s.eq(0.0), 0.0, v), out)
    q = make(Op.POINTWISE, [xg, scale], expr=q_expr)
    if g != x.shape[-1]:
        q = make(Op.RESHAPE, [q], shape=x.shape)
        scale = make(Op.RESHAPE, [scale], shape=n.attr("results")[1][1])
    return q, scale
