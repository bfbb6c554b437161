"""Rendering scalar expressions as Triton tile code (one SSA statement per distinct node)."""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Callable

from ..ir import dtypes as dt
from ..ir.expr import E, Expr
from ..ir.expr import toposort as expr_toposort
from .lowering import LoweringError, register_lowering, rule

B = "triton"


def tl_type(d: dt.DType) -> str:
    try:
        return dt.triton_lang(d)
    except dt.DTypeError as err:
        raise LoweringError(f"triton: {err}") from None


def literal(v: Any, d: dt.DType) -> str:
    """A Python literal for a constant; the tile op around it gives it its dtype."""
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float):
        if math.isnan(v):
            return "float('nan')"
        if math.isinf(v):
            return "float('inf')" if v > 0 else "float('-inf')"
        return repr(v)
    return str(int(v))


def _is_literal(x: str) -> bool:
    return x.startswith("float(") or x in ("True", "False") or x.lstrip("-")[:1].isdigit()


def _f32(x: str, d: dt.DType) -> str:
    return f"{x}.to(tl.float32)" if d in (dt.f16, dt.bf16) and not _is_literal(x) else x


def _back(x: str, d: dt.DType) -> str:
    return f"({x}).to({tl_type(d)})" if d in (dt.f16, dt.bf16) else x


_MATH = {E.EXP: "tl.exp({})", E.EXP2: "tl.exp2({})", E.LOG: "tl.log({})", E.LOG2: "tl.log2({})",
         E.SQRT: "tl.sqrt({})", E.RSQRT: "tl.rsqrt({})", E.SIN: "tl.sin({})", E.COS: "tl.cos({})",
         E.SIGMOID: "tl.sigmoid({})", E.ERF: "tl.erf({})", E.FLOOR: "tl.floor({})", E.CEIL: "tl.ceil({})",
         E.LOG1P: "tl.log(1.0 + {})", E.TANH: "(2.0 * tl.sigmoid(2.0 * {}) - 1.0)", E.RECIP: "(1.0 / {})"}


@register_lowering(B, *_MATH)
def _math(e: Expr, a: str) -> str:
    # Triton's math ops take f32/f64: compute half types in f32 and round back, as the reference does.
    return _back(_MATH[e.op].format(_f32(a, e.dtype)), e.dtype)


@register_lowering(B, E.ROUND)
def _round(e: Expr, a: str) -> str:
    # Ties to even with adds only (libdevice.rint does not run in the interpreter, and one code path serves
    # both): |x| + 2^p lies in [2^p, 2^(p+1)), where the spacing is 1, so the FPU's round-to-nearest-even
    # rounds it to an integer; subtracting 2^p is exact. Larger magnitudes (and inf, nan) are left as they are.
    x = _f32(a, e.dtype)
    big = "4503599627370496.0" if e.dtype == dt.f64 else "8388608.0"  # 2^52, 2^23
    r = f"((tl.abs({x}) + {big}) - {big})"
    return _back(f"tl.where(tl.abs({x}) < {big}, tl.where({x} < 0, -{r}, {r}), {x})", e.dtype)


@register_lowering(B, E.NEG)
def _neg(e: Expr, a: str) -> str:
    return _bf16_back(f"(-{_bf16_f32(a, e.dtype)})", e.dtype)


@register_lowering(B, E.ABS)
def _abs(e: Expr, a: str) -> str:
    return _bf16_back(f"tl.abs({_bf16_f32(a, e.dtype)})", e.dtype)


# bf16 arithmetic is computed in f32 and rounded after each op (what the reference does); the
# Triton interpreter has no bf16 arithmetic of its own.
def _bf16_f32(x: str, d: dt.DType) -> str:
    return f"{x}.to(tl.float32)" if d == dt.bf16 and not _is_literal(x) else x


def _bf16_back(x: str, d: dt.DType) -> str:
    return f"({x}).to(tl.bfloat16)" if d == dt.bf16 else x


@register_lowering(B, E.NOT)
def _not(e: Expr, a: str) -> str:
    return f"({a} == 0)" if e.dtype.is_bool else f"(~{a})"


_BIN = {E.ADD: "+", E.SUB: "-", E.MUL: "*", E.LT: "<", E.LE: "<=", E.GT: ">", E.GE: ">=", E.EQ: "==",
        E.NE: "!=", E.AND: "&", E.OR: "|", E.XOR: "^", E.SHL: "<<", E.SHR: ">>", E.MOD: "%"}


@register_lowering(B, *_BIN)
def _binop(e: Expr, a: str, b: str) -> str:
    d = e.src[0].dtype
    return _bf16_back(f"({_bf16_f32(a, d)} {_BIN[e.op]} {_bf16_f32(b, d)})", e.dtype)


@register_lowering(B, E.DIV, E.IDIV)
def _div(e: Expr, a: str, b: str) -> str:
    if e.dtype.is_float and e.op is E.DIV:
        if e.dtype in (dt.f32, dt.bf16):
            # `/` on f32 is PTX div.full.f32 (up to 2 ulp off); the reference divides correctly rounded,
            # and a quantize's codes (round(x / scale)) must match it exactly: div.rn.f32
            return _bf16_back(f"tl.div_rn({_bf16_f32(a, e.dtype)}, {_bf16_f32(b, e.dtype)})", e.dtype)
        return f"({a} / {b})"
    return f"({a} // {b})"


@register_lowering(B, E.MAX, E.MIN)
def _minmax(e: Expr, a: str, b: str) -> str:
    fn = "tl.maximum" if e.op is E.MAX else "tl.minimum"
    return _bf16_back(f"{fn}({_bf16_f32(a, e.dtype)}, {_bf16_f32(b, e.dtype)})", e.dtype)


@register_lowering(B, E.POW)
def _pow(e: Expr, a: str, b: str) -> str:
    fa, fb = _f32(a, e.dtype), _f32(b, e.dtype)
    # x**y = exp2(y*log2|x|), with the sign of x for integral y and NaN otherwise
    body = (f"tl.where({fb} == 0.0, 1.0, tl.where({fa} < 0.0, tl.where({fb} == tl.floor({fb}), "
            f"tl.where(({fb} % 2.0) != 0.0, -1.0, 1.0) * tl.exp2({fb} * tl.log2(-{fa})), float('nan')), "
            f"tl.exp2({fb} * tl.log2({fa}))))")
    return _back(body, e.dtype)


@register_lowering(B, E.WHERE)
def _where(e: Expr, c: str, a: str, b: str) -> str:
    return f"tl.where({c}, {a}, {b})"


@register_lowering(B, E.CAST)
def _cast(e: Expr, a: str) -> str:
    src = e.src[0].dtype
    if src.is_float and not e.dtype.is_float and not e.dtype.is_bool:
        # float -> int truncates toward zero in both Triton and the reference
        return f"{a}.to({tl_type(e.dtype)})"
    if e.dtype.is_bool:
        return f"({a} != 0)"
    return f"{a}.to({tl_type(e.dtype)})"


@register_lowering(B, E.BITCAST)
def _bitcast(e: Expr, a: str) -> str:
    return f"{a}.to({tl_type(e.dtype)}, bitcast=True)"


class TileEmitter:
    """Emits one statement per distinct expression node into `lines`, reusing names (CSE)."""

    def __init__(self, lines: list[str], indent: str, prefix: str, leaf: Callable[[Expr], str | None]):
        self.lines = lines
        self.indent = indent
        self.prefix = prefix
        self.leaf = leaf
        self.memo: dict[int, str] = {}
        self.count = 0

    def emit(self, e: Expr) -> str:
        """The name (or literal) holding `e`'s tile value."""
        for n in expr_toposort([e]):
            if id(n) in self.memo:
                continue
            name = self.leaf(n)
            if name is None:
                if n.op is E.CONST:
                    name = literal(n.arg, n.dtype)
                elif n.op in (E.ARG, E.VAR, E.LOAD):
                    raise LoweringError(f"triton: unbound expression leaf {n.op.value} {n.arg!r}")
                else:
                    text = rule(B, n.op)(n, *(self.memo[id(s)] for s in n.src))
                    name = f"{self.prefix}{self.count}"
                    self.count += 1
                    self.lines.append(f"{self.indent}{name} = {text}")
            self.memo[id(n)] = name
        return self.memo[id(e)]
