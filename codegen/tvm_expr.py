"""Lowering scalar expressions to TVM TIR expressions (one PrimExpr per distinct node; shared ones Let-bound).

Rules follow the Triton lowering: half-precision transcendental math is computed in f32 and
rounded back, integer division and modulo truncate toward zero, float->int casts truncate.
TVM is imported lazily by whoever imports this module (it is an optional dependency).
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Callable

import numpy as np

import tvm
from tvm import tirx

from ..ir import dims
from ..ir import dtypes as dt
from ..ir.expr import E, Expr
from ..ir.expr import toposort as expr_toposort
from ..ir.fp8_encode import soft_fp8_casts
from .lowering import LoweringError, register_lowering, rule
from .tvm_runtime import element_aligned

B = "tvm"
PrimExpr = Any  # tvm.tirx.PrimExpr; kept loose so mypy does not need TVM's stubs
# TVM's passes walk a PrimExpr recursively in C++: a chain of 3000 fused adds overflowed the 8 MiB stack
# (a segfault, not an exception); 2500 built. Refuse deeper expressions with a LoweringError instead.
MAX_TVM_EXPR_DEPTH = 1000

_FP8 = (dt.f8e4m3, dt.f8e5m2)
_TVM_NAMES = {dt.f64: "float64", dt.f32: "float32", dt.f16: "float16", dt.bf16: "bfloat16",
              dt.i64: "int64", dt.i32: "int32", dt.i16: "int16", dt.i8: "int8", dt.u8: "uint8",
              dt.bool_: "bool"}


def tvm_storage_dtype(d: dt.DType, op: str = "value") -> str:
    """TVM dtype of a buffer holding `d`: fp8 buffers hold their bytes (uint8), which only a bitcast to u8
    may read (the fp8 decode of the quantized GEMM); everything else as tvm_dtype."""
    return "uint8" if d in _FP8 else tvm_dtype(d, op)


def tvm_dtype(d: dt.DType, op: str = "value") -> str:
    """TVM spelling of a tilefuse dtype; LoweringError (naming op, dtype, backend) when unsupported."""
    name = _TVM_NAMES.get(d)
    if name is None:
        raise LoweringError(f"tvm: dtype {d} of {op} is not supported by the tvm backend; accepted: "
                            f"{', '.join(sorted(x.name for x in _TVM_NAMES))}")
    return name


def dtype_of(x: PrimExpr) -> str:
    """The TVM dtype string of a PrimExpr."""
    return str(x.ty)


def is_half(d: dt.DType) -> bool:
    """Whether `d` is computed in f32 for math (f16, bf16)."""
    return d in (dt.f16, dt.bf16)


def constant(v: Any, d: dt.DType) -> PrimExpr:
    """A TIR constant of dtype `d` (inf and nan included)."""
    name = tvm_dtype(d, "const")
    if d.is_bool:
        return tirx.const(bool(v), "bool")
    if d.is_float:
        f = float(v)
        if d in (dt.f32, dt.f16, dt.bf16) and math.isfinite(f):
            # TVM refuses a literal beyond the type's range (and folds casts of one): round it as the
            # reference rounds values to the dtype (65519:f16 -> 65504, 65520:f16 -> inf).
            with np.errstate(over="ignore"):
                f = float(dt.round_to(np.asarray(f), d))
        if math.isnan(f) or math.isinf(f):
            # TVM's FloatImm accepts inf/nan; build it in f32 and cast for half types.
            c = tirx.const(f, "float32" if is_half(d) else name)
            return tirx.Cast(name, c) if is_half(d) else c
        return tirx.const(f, name)
    return tirx.const(int(v), name)


def _to_f32(x: PrimExpr, d: dt.DType) -> PrimExpr:
    return tirx.Cast("float32", x) if is_half(d) else x


def _back(x: PrimExpr, d: dt.DType) -> PrimExpr:
    return tirx.Cast(tvm_dtype(d), x) if is_half(d) else x


def exp_f32(x: PrimExpr) -> PrimExpr:
    """exp; in f32 a Cephes-style polynomial (about 1 ulp) that vectorizes, where LLVM would call
    libm once per lane. inf, -inf and NaN map as exp does."""
    if dtype_of(x) != "float32":
        return tirx.exp(x)

    def c(v: float) -> PrimExpr:
        return tirx.const(v, "float32")

    hi = 88.3762626647949
    xc = tirx.Max(tirx.Min(x, c(hi)), c(-hi))
    n = tirx.floor(xc * c(1.44269504088896341) + c(0.5))
    r = xc - n * c(0.693359375) - n * c(-2.12194440e-4)
    p = c(1.9875691500e-4)
    for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + c(coef)
    p = p * r * r + r + c(1.0)
    scale = tirx.reinterpret("float32", tirx.LShift(tirx.Cast("int32", n) + tirx.const(127, "int32"),
                                                    tirx.const(23, "int32")))
    y = p * scale
    y = tirx.Select(x > c(88.72283935546875), c(float("inf")), y)  # above log(FLT_MAX)
    return tirx.Select(tirx.isnan(x), x, y)


def _sigmoid(x: PrimExpr) -> PrimExpr:
    one = tirx.const(1.0, dtype_of(x))
    return one / (one + exp_f32(-x))


_MATH: dict[E, Callable[[PrimExpr], PrimExpr]] = {
    E.EXP: exp_f32, E.EXP2: tirx.exp2, E.LOG: tirx.log, E.LOG2: tirx.log2, E.LOG1P: tirx.log1p,
    E.SQRT: tirx.sqrt, E.RSQRT: lambda x: tirx.const(1.0, dtype_of(x)) / tirx.sqrt(x), E.SIN: tirx.sin,
    E.COS: tirx.cos, E.TANH: tirx.tanh, E.SIGMOID: _sigmoid, E.ERF: tirx.erf,
    E.RECIP: lambda x: tirx.const(1.0, dtype_of(x)) / x, E.FLOOR: tirx.floor, E.CEIL: tirx.ceil,
    E.ROUND: tirx.nearbyint,  # ties to even (llvm.nearbyint)
}


@register_lowering(B, *_MATH)
def _math(e: Expr, a: PrimExpr) -> PrimExpr:
    if not e.dtype.is_float:
        raise LoweringError(f"tvm: {e.op.value} needs a float operand, got dtype {e.dtype}")
    return _back(_MATH[e.op](_to_f32(a, e.dtype)), e.dtype)


@register_lowering(B, E.NEG)
def _neg(e: Expr, a: PrimExpr) -> PrimExpr:
    return tirx.const(0, dtype_of(a)) - a if not e.dtype.is_float else -a


@register_lowering(B, E.ABS)
def _abs(e: Expr, a: PrimExpr) -> PrimExpr:
    return tirx.abs(a)


@register_lowering(B, E.NOT)
def _not(e: Expr, a: PrimExpr) -> PrimExpr:
    return tirx.Not(a) if e.dtype.is_bool else tirx.bitwise_not(a)


@register_lowering(B, E.ADD, E.SUB, E.MUL)
def _arith(e: Expr, a: PrimExpr, b: PrimExpr) -> PrimExpr:
    if e.dtype.is_bool:
        raise LoweringError(f"tvm: {e.op.value} on dtype bool is not supported")
    return {E.ADD: tirx.Add, E.SUB: tirx.Sub, E.MUL: tirx.Mul}[e.op](a, b)


@register_lowering(B, E.DIV, E.IDIV)
def _div(e: Expr, a: PrimExpr, b: PrimExpr) -> PrimExpr:
    if e.dtype.is_float and e.op is E.DIV:
        return tirx.Div(a, b)
    if not e.dtype.is_int:
        raise LoweringError(f"tvm: {e.op.value} needs integer operands, got dtype {e.dtype}")
    return tirx.truncdiv(a, b)  # C semantics, as the reference defines


@register_lowering(B, E.MOD)
def _mod(e: Expr, a: PrimExpr, b: PrimExpr) -> PrimExpr:
    if e.dtype.is_float:
        return _back(tirx.fmod(_to_f32(a, e.dtype), _to_f32(b, e.dtype)), e.dtype)
    return tirx.truncmod(a, b)


@register_lowering(B, E.MAX, E.MIN)
def _minmax(e: Expr, a: PrimExpr, b: PrimExpr) -> PrimExpr:
    return tirx.Max(a, b) if e.op is E.MAX else tirx.Min(a, b)


@register_lowering(B, E.POW)
def _pow(e: Expr, a: PrimExpr, b: PrimExpr) -> PrimExpr:
    # libm pow handles negative bases with integral exponents as numpy does.
    return _back(tirx.power(_to_f32(a, e.dtype), _to_f32(b, e.dtype)), e.dtype)


_BITWISE = {E.AND: tirx.bitwise_and, E.OR: tirx.bitwise_or, E.XOR: tirx.bitwise_xor,
            E.SHL: tirx.LShift, E.SHR: tirx.RShift}


@register_lowering(B, *_BITWISE)
def _bitwise(e: Expr, a: PrimExpr, b: PrimExpr) -> PrimExpr:
    if e.dtype.is_bool:
        if e.op is E.AND:
            return tirx.And(a, b)
        if e.op is E.OR:
            return tirx.Or(a, b)
        if e.op is E.XOR:
            return tirx.NE(a, b)
        raise LoweringError(f"tvm: {e.op.value} on dtype bool is not supported")
    return _BITWISE[e.op](a, b)


_CMP = {E.LT: tirx.LT, E.LE: tirx.LE, E.GT: tirx.GT, E.GE: tirx.GE, E.EQ: tirx.EQ, E.NE: tirx.NE}


@register_lowering(B, *_CMP)
def _compare(e: Expr, a: PrimExpr, b: PrimExpr) -> PrimExpr:
    return _CMP[e.op](a, b)


@register_lowering(B, E.WHERE)
def _where(e: Expr, c: PrimExpr, a: PrimExpr, b: PrimExpr) -> PrimExpr:
    return tirx.Select(c, a, b)


@register_lowering(B, E.CAST)
def _cast(e: Expr, a: PrimExpr) -> PrimExpr:
    src = e.src[0].dtype
    if e.dtype.is_bool:
        return tirx.NE(a, tirx.const(0, dtype_of(a)) if not src.is_bool else tirx.const(False, "bool"))
    if src.is_float and e.dtype.is_int:
        # fptosi truncates toward zero; NaN becomes 0 as the reference's nan_to_num does. TVM has no
        # isnan for bf16: test the value widened to f32 (exact).
        a = tirx.Select(tirx.isnan(_to_f32(a, src)), tirx.const(0.0, dtype_of(a)), a)
    if is_half(src) and is_half(e.dtype):
        a = tirx.Cast("float32", a)  # f16 <-> bf16 goes through f32
    return tirx.Cast(tvm_dtype(e.dtype, "cast"), a)


@register_lowering(B, E.BITCAST)
def _bitcast(e: Expr, a: PrimExpr) -> PrimExpr:
    if (e.src[0].dtype in _FP8 and e.dtype == dt.u8) or (e.src[0].dtype == dt.u8 and e.dtype in _FP8):
        return a  # an fp8 value is its byte (tvm_storage_dtype): loaded, or encoded by ir/fp8_encode.py
    return tirx.reinterpret(tvm_dtype(e.dtype, "bitcast"), a)


def _check_depth(nodes: list[Expr]) -> None:
    depth: dict[int, int] = {}
    for n in nodes:
        depth[id(n)] = 1 + max((depth[id(s)] for s in n.src), default=0)
    deepest = max(depth.values(), default=0)
    if deepest > MAX_TVM_EXPR_DEPTH:
        raise LoweringError(f"tvm: a fused expression {deepest} ops deep exceeds the CPU backend's limit of "
                            f"{MAX_TVM_EXPR_DEPTH} (TVM recurses on it in C++); the Triton targets take it")


def _check_dtypes(n: Expr) -> None:
    """LoweringError unless TVM can compute `n`: an fp8 value is only ever a byte, loaded or encoded in software
    (a cast to f8e4m3, soft_fp8_casts), and bitcast to u8 or stored."""
    if (n.op is E.LOAD and n.dtype in _FP8) or (n.op is E.BITCAST and n.src[0].dtype == dt.u8):
        return
    if any(s.dtype in _FP8 for s in n.src) and not (n.op is E.BITCAST and n.dtype == dt.u8):
        raise LoweringError(f"tvm: {n.op.value} of an {n.src[0].dtype} value is not supported by the tvm backend "
                            "(fp8 values are bytes there: decoded by a dequantize, encoded by a cast to f8e4m3)")
    tvm_dtype(n.dtype, n.op.value)


def _shared(nodes: list[Expr]) -> set[int]:
    """Ids of the non-leaf nodes used more than once among `nodes`: each is bound once with a Let."""
    uses: dict[int, int] = {}
    for n in nodes:
        for s in n.src:
            uses[id(s)] = uses.get(id(s), 0) + 1
    return {id(n) for n in nodes if n.src and uses.get(id(n), 0) > 1}


def _bind(value: PrimExpr, lets: list[tuple[Any, PrimExpr]]) -> PrimExpr:
    """A variable for `value`, appended to `lets`."""
    var = tirx.Var(f"cse{len(lets)}", dtype_of(value))
    lets.append((var, value))
    return var


def lower_expr(e: Expr, leaf: Callable[[Expr], PrimExpr | None],
               memo: dict[int, PrimExpr] | None = None) -> PrimExpr:
    """The TIR expression of `e`; `leaf` binds LOAD and VAR leaves (None: not a leaf it knows).

    A subexpression used more than once is bound to a variable with `tirx.Let`: TVM's passes walk a
    PrimExpr as a tree, so a shared DAG (`y*sigmoid(y)` chained) costs 2^depth without it (a chain of
    three took 37 s to build, four more than 300 s). `memo` (id(node) -> PrimExpr) holds closed
    expressions shared across calls: a caller that passes one (and whose `leaf` reads operands from it, as
    the matmul loaders do) gets every node lowered into it and no Let bindings, since a bound variable would
    escape its Let through the memo."""
    e = soft_fp8_casts(e)  # TVM has no f8 type: the cast is integer bit ops producing the byte
    nodes = expr_toposort([e])
    _check_depth(nodes)
    # TVM's bf16/f16 storage legalization leaves a Let's value unvisited (a bf16 RMSNorm read raw bits):
    # expressions touching half precision stay unbound trees
    shared = set() if memo is not None or any(is_half(n.dtype) for n in nodes) else _shared(nodes)
    memo = {} if memo is None else memo
    local = memo
    lets: list[tuple[Any, PrimExpr]] = []
    for n in nodes:
        if id(n) in local:
            continue
        _check_dtypes(n)
        out = leaf(n)
        if out is None:
            if n.op is E.CONST:
                out = constant(n.arg, n.dtype)
            elif n.op in (E.ARG, E.VAR, E.LOAD):
                raise LoweringError(f"tvm: unbound expression leaf {n.op.value} {n.arg!r}")
            else:
                out = rule(B, n.op)(n, *(local[id(s)] for s in n.src))
        if id(n) in shared and n is not e:
            out = _bind(out, lets)
        local[id(n)] = out
    result = local[id(e)]
    for var, value in reversed(lets):
        result = tirx.Let(var, value, result)
    return result


def tvm_version() -> str:
    """The installed TVM version (part of every build-cache key)."""
    return str(tvm.__version__)


def _merged_dims(shape: tuple[int, ...], strides: tuple[int, ...]) -> list[tuple[int, int]]:
    """(size, stride) groups after merging dims that step through memory as one (size-1 dims dropped)."""
    out: list[tuple[int, int]] = []
    for size, stride in zip(shape, strides):
        if size == 1:
            continue
        if out and out[-1][1] == stride * size:
            out[-1] = (out[-1][0] * size, stride)
        else:
            out.append((size, stride))
    return out


def view_offset(shape: tuple[int, ...], strides: tuple[int, ...], offset: int, lead: int,
                flat: PrimExpr, trailing: list[PrimExpr]) -> PrimExpr:
    """Element offset of a strided view: its first `lead` dims are indexed by the row-major
    unflattening of `flat`, the remaining dims by `trailing`."""
    terms: list[PrimExpr] = []
    groups = _merged_dims(shape[:lead], strides[:lead])
    inner = 1
    for g, (size, stride) in reversed(list(enumerate(groups))):
        if stride:
            idx = flat if inner == 1 else tirx.floordiv(flat, prim(inner))
            if g > 0:
                idx = tirx.floormod(idx, prim(size))
            terms.append(idx if stride == 1 else idx * prim(stride))
        inner *= size
    for d, idx in enumerate(trailing):
        stride = strides[lead + d]
        if stride and shape[lead + d] != 1:
            terms.append(idx if stride == 1 else idx * prim(stride))
    total: PrimExpr | None = (prim(offset) if dims.is_dynamic(offset) else tirx.const(offset, "int32")) \
        if offset else None
    for t in reversed(terms):
        total = t if total is None else total + t
    return tirx.const(0, "int32") if total is None else total


def size_var(name: str) -> Any:
    """The TIR variable of dynamic size `name` (int32, as every index of the tvm backend)."""
    v = _SIZE_VARS.get(name)
    if v is None:
        v = _SIZE_VARS[name] = tirx.Var(name, "int32")
    return v


_SIZE_VARS: dict[str, Any] = {}


def _poly(p: tuple[Any, ...]) -> PrimExpr:
    total: PrimExpr | None = None
    for mono, c in p:
        term: PrimExpr | None = tirx.const(c, "int32") if c != 1 or not mono else None
        for a in mono:
            if isinstance(a, str):
                v = size_var(a)
            else:
                v = (tirx.floordiv if a[0] == "//" else tirx.floormod)(_poly(a[1]), _poly(a[2]))
            term = v if term is None else term * v
        total = term if total is None else total + term
    return tirx.const(0, "int32") if total is None else total


def prim(x: Any) -> Any:
    """A size as TVM takes it: a plain int, or for a dynamic size the TIR expression over its size
    variables (a Sym passed to TVM as is would become the constant of its current value)."""
    return _poly(x.poly) if dims.is_dynamic(x) else int(x)


def prim_module(name: str, num_outputs: int, inputs: list[Any], outputs: list[tuple[int, Any]],
                sizes: list[str] | tuple[str, ...] = ()) -> Any:
    """An IRModule with one PrimFunc `name` taking (inputs..., outputs by buffer index..., int32 sizes...)."""
    import tvm
    from tvm import te

    by_index = dict(outputs)
    if sorted(by_index) != list(range(num_outputs)):
        raise LoweringError(f"tvm: {name} does not write every output buffer")
    params = list(inputs) + [by_index[i] for i in range(num_outputs)] + [size_var(n) for n in sizes]
    func = element_aligned(te.create_prim_func(params))  # tvm_runtime.zero_copy_ok's contract
    return tvm.IRModule({name: func.with_attr("global_symbol", name)})

