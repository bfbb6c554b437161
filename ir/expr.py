"""The scalar expression language shared by pointwise ops, attention mask/score mods,
dequantization and splatting math.

An `Expr` is a frozen, hash-consed node (op, dtype, src, arg): building the same expression
twice returns the same object, so structural equality is identity and CSE is free.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any, Union
from collections.abc import Callable

from . import dtypes as dt
from .dtypes import DType
from .expr_ops import (BINARY, BITWISE, COMPARE, COST, FLOAT_UNARY, LEAVES, UNARY, E,  # noqa: F401 - re-exported
                       ExprError)


Scalar = Union[bool, int, float]
_NAN = float("nan")
_CACHE: weakref.WeakValueDictionary[tuple[Any, ...], Expr] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


class Expr:
    """A hash-consed scalar expression node."""

    __slots__ = ("op", "dtype", "src", "arg", "__weakref__")
    op: E
    dtype: DType
    src: tuple[Expr, ...]
    arg: Any

    def __new__(cls, op: E, dtype: DType, src: tuple[Expr, ...] = (), arg: Any = None) -> Expr:
        key = (op, dtype, tuple(id(s) for s in src), arg, type(arg))
        with _LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                return hit
            self = object.__new__(cls)
            object.__setattr__(self, "op", op)
            object.__setattr__(self, "dtype", dtype)
            object.__setattr__(self, "src", tuple(src))
            object.__setattr__(self, "arg", arg)
            _CACHE[key] = self
            return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Expr is immutable")

    def __reduce__(self) -> Any:
        return (Expr, (self.op, self.dtype, self.src, self.arg))

    def __repr__(self) -> str:
        return f"Expr<{format_expr(self)}>"

    # -- friendly builders (identity stays ==; comparisons are methods) --------------------
    def __add__(self, o: ExprLike) -> Expr:
        return binary(E.ADD, self, o)

    def __radd__(self, o: ExprLike) -> Expr:
        return binary(E.ADD, o, self)

    def __sub__(self, o: ExprLike) -> Expr:
        return binary(E.SUB, self, o)

    def __rsub__(self, o: ExprLike) -> Expr:
        return binary(E.SUB, o, self)

    def __mul__(self, o: ExprLike) -> Expr:
        return binary(E.MUL, self, o)

    def __rmul__(self, o: ExprLike) -> Expr:
        return binary(E.MUL, o, self)

    def __truediv__(self, o: ExprLike) -> Expr:
        return binary(E.DIV, self, o)

    def __rtruediv__(self, o: ExprLike) -> Expr:
        return binary(E.DIV, o, self)

    def __floordiv__(self, o: ExprLike) -> Expr:
        return binary(E.IDIV, self, o)

    def __mod__(self, o: ExprLike) -> Expr:
        return binary(E.MOD, self, o)

    def __neg__(self) -> Expr:
        return unary(E.NEG, self)

    def __and__(self, o: ExprLike) -> Expr:
        return binary(E.AND, self, o)

    def __or__(self, o: ExprLike) -> Expr:
        return binary(E.OR, self, o)

    def __invert__(self) -> Expr:
        return unary(E.NOT, self)

    def lt(self, o: ExprLike) -> Expr:
        return binary(E.LT, self, o)

    def le(self, o: ExprLike) -> Expr:
        return binary(E.LE, self, o)

    def gt(self, o: ExprLike) -> Expr:
        return binary(E.GT, self, o)

    def ge(self, o: ExprLike) -> Expr:
        return binary(E.GE, self, o)

    def eq(self, o: ExprLike) -> Expr:
        return binary(E.EQ, self, o)

    def ne(self, o: ExprLike) -> Expr:
        return binary(E.NE, self, o)

    def cast(self, d: DType | str) -> Expr:
        return cast(self, d)

    def toposort(self) -> list[Expr]:
        """All nodes of this expression, each after its sources."""
        return toposort([self])


ExprLike = Union[Expr, Scalar]


# ---- constructors ------------------------------------------------------------------------
def const(value: Scalar, d: DType | str) -> Expr:
    """A constant of dtype `d` (the value is normalised to the dtype's Python type)."""
    d = dt.dtype(d)
    if d.is_bool:
        v: Scalar = bool(value)
    elif d.is_float:
        try:
            v = float(value)
        except OverflowError:  # an integer literal beyond float64: infinite, as the decimal 1e400 reads
            v = math.inf if value > 0 else -math.inf
        if v != v:
            v = _NAN  # one NaN object, so NaN constants hash-cons to one node
    else:
        if isinstance(value, float) and not value.is_integer():
            raise ExprError(f"integer constant of dtype {d} given non-integer value {value}")
        v = int(value)
    return Expr(E.CONST, d, (), v)


def arg(i: int, d: DType | str) -> Expr:
    """Operand `i` of a pointwise op at the current index."""
    return Expr(E.ARG, dt.dtype(d), (), int(i))


def var(name: str, d: DType | str = dt.i32) -> Expr:
    """A named variable: an index (b, h, q_idx, kv_idx) or an injected scalar (score)."""
    if not name.isidentifier():
        raise ExprError(f"variable name {name!r} is not an identifier")
    return Expr(E.VAR, dt.dtype(d), (), name)


def load(operand: int, d: DType | str, *index: ExprLike) -> Expr:
    """Operand tensor `operand` (of dtype `d`) read at explicit integer indices."""
    idx = tuple(_lift(i, dt.i32) for i in index)
    for i in idx:
        if not (i.dtype.is_int or i.dtype.is_bool):
            raise ExprError(f"load index must be an integer expression, got {i.dtype}")
    return Expr(E.LOAD, dt.dtype(d), idx, int(operand))


def _lift(x: ExprLike, like: DType) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, bool):
        return const(x, dt.bool_)
    if isinstance(x, int) and not like.is_bool:
        return const(x, like)
    if isinstance(x, float):
        return const(x, like if like.is_float else dt.f32)
    if isinstance(x, int):
        return const(x, dt.i32)
    raise ExprError(f"cannot use {x!r} ({type(x).__name__}) in an expression")


def unary(op: E, x: ExprLike) -> Expr:
    """Apply a unary op; float math on an integer operand computes in f32."""
    if op not in UNARY:
        raise ExprError(f"{op.value} is not a unary op")
    x = _lift(x, dt.f32)
    if op is E.NEG and x.dtype.is_bool:
        raise ExprError("neg: arithmetic on a bool operand; use not, or cast it to an integer dtype first")
    if op is E.NOT:
        if not (x.dtype.is_bool or x.dtype.is_int):
            raise ExprError(f"not: operand must be bool or integer, got {x.dtype}")
        return Expr(op, x.dtype, (x,))
    if op in FLOAT_UNARY and not x.dtype.is_float:
        x = cast(x, dt.f32)
    return Expr(op, x.dtype, (x,))


BOOL_ARITHMETIC = frozenset({E.ADD, E.SUB, E.MUL, E.DIV, E.IDIV, E.MOD, E.POW})


def binary(op: E, a: ExprLike, b: ExprLike) -> Expr:
    """Apply a binary op with dtype promotion; Python scalars take the other side's dtype."""
    if op not in BINARY:
        raise ExprError(f"{op.value} is not a binary op")
    if not isinstance(a, Expr) and not isinstance(b, Expr):
        raise ExprError(f"{op.value}: at least one operand must be an Expr")
    a = _lift(a, b.dtype if isinstance(b, Expr) else dt.f32)
    b = _lift(b, a.dtype)
    d = dt.promote(a.dtype, b.dtype)
    if d.is_bool and op in BOOL_ARITHMETIC:  # numpy (the reference) refuses bool subtraction, backends differ
        raise ExprError(f"{op.value}: arithmetic on bool operands; cast them to an integer dtype first, or use "
                        "and/or/xor")
    if op in BITWISE:
        if not (d.is_int or d.is_bool):
            raise ExprError(f"{op.value}: operands must be integer or bool, got {a.dtype} and {b.dtype}")
    if op in (E.IDIV, E.MOD) and not d.is_int and op is E.IDIV:
        raise ExprError(f"idiv: operands must be integer, got {a.dtype} and {b.dtype}")
    if op is E.POW and not d.is_float:
        d = dt.f32
    a = a if a.dtype == d else cast(a, d)
    b = b if b.dtype == d else cast(b, d)
    return Expr(op, dt.bool_ if op in COMPARE else d, (a, b))


def where(c: ExprLike, a: ExprLike, b: ExprLike) -> Expr:
    """Select `a` where `c` is true, else `b`."""
    c = _lift(c, dt.bool_)
    if not c.dtype.is_bool:
        c = binary(E.NE, c, 0)
    if not isinstance(a, Expr) and not isinstance(b, Expr):
        a = _lift(a, dt.f32)
    a = _lift(a, b.dtype if isinstance(b, Expr) else dt.f32)
    b = _lift(b, a.dtype)
    d = dt.promote(a.dtype, b.dtype)
    a = a if a.dtype == d else cast(a, d)
    b = b if b.dtype == d else cast(b, d)
    return Expr(E.WHERE, d, (c, a, b))


def cast(x: ExprLike, d: DType | str) -> Expr:
    """Convert to dtype `d` (float->int truncates toward zero)."""
    d = dt.dtype(d)
    if d.packed:
        raise ExprError(f"cannot cast to packed dtype {d}")
    x = _lift(x, d)
    if x.dtype == d:
        return x
    return Expr(E.CAST, d, (x,), None)


def bitcast(x: Expr, d: DType | str) -> Expr:
    """Reinterpret the bits of `x` as dtype `d` of the same width."""
    d = dt.dtype(d)
    if d.bits != x.dtype.bits:
        raise ExprError(f"bitcast needs equal widths: {x.dtype} ({x.dtype.bits} bits) to {d} ({d.bits} bits)")
    return Expr(E.BITCAST, d, (x,))


def _u(op: E) -> Callable[[ExprLike], Expr]:
    return lambda x: unary(op, x)


exp = _u(E.EXP)
exp2 = _u(E.EXP2)
log = _u(E.LOG)
log2 = _u(E.LOG2)
log1p = _u(E.LOG1P)
sqrt = _u(E.SQRT)
rsqrt = _u(E.RSQRT)
sin = _u(E.SIN)
cos = _u(E.COS)
tanh = _u(E.TANH)
sigmoid = _u(E.SIGMOID)
erf = _u(E.ERF)
recip = _u(E.RECIP)
floor = _u(E.FLOOR)
ceil = _u(E.CEIL)
round_ = _u(E.ROUND)
abs_ = _u(E.ABS)


def maximum(a: ExprLike, b: ExprLike) -> Expr:
    return binary(E.MAX, a, b)


def minimum(a: ExprLike, b: ExprLike) -> Expr:
    return binary(E.MIN, a, b)


def pow_(a: ExprLike, b: ExprLike) -> Expr:
    return binary(E.POW, a, b)


def silu(x: Expr) -> Expr:
    return x * sigmoid(x)


def gelu(x: Expr) -> Expr:
    return x * 0.5 * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))


def relu(x: Expr) -> Expr:
    return maximum(x, 0.0 if x.dtype.is_float else 0)


# ---- traversal ---------------------------------------------------------------------------
def toposort(roots: list[Expr]) -> list[Expr]:
    """Nodes reachable from `roots`, each after its sources (iterative, deterministic)."""
    seen: set[int] = set()
    order: list[Expr] = []
    stack: list[tuple[Expr, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        e, done = stack.pop()
        if done:
            order.append(e)
            continue
        if id(e) in seen:
            continue
        seen.add(id(e))
        stack.append((e, True))
        stack.extend((s, False) for s in reversed(e.src) if id(s) not in seen)
    return order


def substitute(e: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """Rebuild `e` bottom-up, replacing each node for which `fn` returns a new node."""
    memo: dict[int, Expr] = {}
    for n in toposort([e]):
        rep = fn(n)
        if rep is not None:
            memo[id(n)] = rep
            continue
        src = tuple(memo[id(s)] for s in n.src)
        memo[id(n)] = n if all(a is b for a, b in zip(src, n.src)) else Expr(n.op, n.dtype, src, n.arg)
    return memo[id(e)]


def args_used(e: Expr) -> set[int]:
    """Operand indices referenced by ARG or LOAD nodes."""
    return {n.arg for n in toposort([e]) if n.op in (E.ARG, E.LOAD)}


def vars_used(e: Expr) -> set[str]:
    """Names of the VAR nodes in `e`."""
    return {n.arg for n in toposort([e]) if n.op is E.VAR}


def cost(e: Expr) -> int:
    """Approximate per-element cost of evaluating `e` once (distinct nodes only)."""
    return sum(COST.get(n.op, 1) for n in toposort([e]) if n.op not in LEAVES)


# ---- text --------------------------------------------------------------------------------
def fmt_float(v: float) -> str:
    """Text of a float that parses back to the same value (nan, inf, -inf by name)."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(float(v))


def _leaf_text(n: Expr) -> str:
    if n.op is E.ARG:
        return f"${n.arg}:{n.dtype}"
    if n.op is E.VAR:
        return f"{n.arg}:{n.dtype}"
    v = n.arg
    s = ("true" if v else "false") if isinstance(v, bool) else fmt_float(v) if isinstance(v, float) else str(v)
    return f"{s}:{n.dtype}"


def format_expr(e: Expr) -> str:
    """S-expression text of a scalar expression (the parser's input form; iterative, any depth)."""
    memo: dict[int, str] = {}
    for n in e.toposort():
        if n.op in LEAVES:
            s = _leaf_text(n)
        elif n.op is E.LOAD:
            s = "(load " + " ".join([str(n.arg), str(n.dtype)] + [memo[id(x)] for x in n.src]) + ")"
        elif n.op in (E.CAST, E.BITCAST):
            s = f"({n.op.value} {n.dtype} {memo[id(n.src[0])]})"
        else:
            s = "(" + " ".join([n.op.value] + [memo[id(x)] for x in n.src]) + ")"
        memo[id(n)] = s
    return memo[id(e)]
