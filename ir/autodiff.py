"""Symbolic differentiation of scalar expressions: `derivative(e, var)` is d e / d var as an `Expr`.

Forward mode over the hash-consed DAG (one derivative per distinct node, so shared subexpressions stay
shared and the result reuses the nodes of `e`, e.g. d tanh(x) = (1 - tanh(x)^2) x' names tanh(x) once).
Nodes that do not depend on `var` (constants, loads at indices free of it, other variables, index
arithmetic) have derivative 0, which is kept symbolic as "zero" so that products and sums with it vanish.

Non-smooth points follow torch's autograd conventions:
- abs: sign(x) (0 at x == 0);
- max / min (torch.maximum / minimum): the larger (smaller) operand's gradient, half of each on ties;
- where(c, a, b): where(c, a', b'); the condition is not differentiated (it may depend on `var`);
- pow(a, b): the base term is 0 where b == 0, the exponent term is 0 where a == 0 and b >= 0.

Ops that are piecewise constant or not real-valued in `var` (floor, ceil, float mod, comparisons or bit
ops used as values, casts to integer or bool, bitcasts) raise `NotDifferentiableError` naming the op, but
only when the result needs their derivative: `where(score > 0, score, 0.1 * score)` differentiates.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from . import expr as ex
from .expr import E, Expr, ExprError, format_expr

_LN2 = math.log(2.0)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


class NotDifferentiableError(ExprError):
    """An expression whose value depends on the variable through an op with no derivative."""

    def __init__(self, op: E, node: Expr, var: str):
        self.op = op
        what = f"cast to {node.dtype}" if op is E.CAST else op.value
        super().__init__(f"{what} is not differentiable in {var!r}: {format_expr(node)} depends on it; "
                         "differentiable ops are float arithmetic, max/min/abs/where, pow and the float math "
                         "functions (exp, log, tanh, sigmoid, erf, ...)")


class _Blocked:
    """The derivative of a node that depends on `var` through a non-differentiable op (raised if used)."""

    def __init__(self, op: E, node: Expr):
        self.op = op
        self.node = node


# ---- simplifying builders (zero is None) -------------------------------------------------
def _const_value(e: Expr | None) -> float | None:
    if e is None:
        return 0.0
    if e.op is E.CONST and e.dtype.is_float:
        return float(e.arg)
    return None


def _add(a: Expr | None, b: Expr | None) -> Expr | None:
    if a is None:
        return b
    if b is None:
        return a
    ca, cb = _const_value(a), _const_value(b)
    if ca is not None and cb is not None:
        return ex.const(ca + cb, a.dtype)
    if ca == 0.0:
        return b
    if cb == 0.0:
        return a
    return a + b


def _neg(a: Expr | None) -> Expr | None:
    if a is None:
        return None
    if a.op is E.CONST and a.dtype.is_float:
        return ex.const(-float(a.arg), a.dtype)
    if a.op is E.NEG:
        return a.src[0]
    return -a


def _sub(a: Expr | None, b: Expr | None) -> Expr | None:
    if b is None:
        return a
    if a is None:
        return _neg(b)
    ca, cb = _const_value(a), _const_value(b)
    if ca is not None and cb is not None:
        return ex.const(ca - cb, a.dtype)
    if ca == 0.0:
        return _neg(b)
    if cb == 0.0:
        return a
    return a - b


def _mul(a: Expr | None, b: Expr | None) -> Expr | None:
    if a is None or b is None:
        return None
    ca, cb = _const_value(a), _const_value(b)
    if ca is not None and cb is not None:
        return ex.const(ca * cb, a.dtype)
    for c, other in ((ca, b), (cb, a)):
        if c == 1.0:
            return other
        if c == -1.0:
            return _neg(other)
        # 0 * x is not folded for a non-constant x: 0 * inf is NaN, as the reference computes it
    return a * b


def _div(a: Expr | None, b: Expr) -> Expr | None:
    if a is None:
        return None
    ca, cb = _const_value(a), _const_value(b)
    if ca is not None and cb is not None and cb != 0.0:
        return ex.const(ca / cb, a.dtype)
    if cb == 1.0:
        return a
    return a / b


def _where(c: Expr, a: Expr | None, b: Expr | None, like: Expr) -> Expr | None:
    if a is None and b is None:
        return None
    if a is b:
        return a
    zero = ex.const(0.0, like.dtype)
    return ex.where(c, zero if a is None else a, zero if b is None else b)


def _one(like: Expr) -> Expr:
    return ex.const(1.0, like.dtype)


# ---- per-op rules: (node, source derivatives) -> derivative ---------------------------------
Rule = Callable[[Expr, list[Expr | None]], Expr | None]


def _chain(local: Callable[[Expr, Expr], Expr]) -> Rule:
    """A unary rule d f(x) = f'(x) x', with f'(x) built by `local(node, x)`."""
    return lambda n, d: _mul(local(n, n.src[0]), d[0])


def _sign(x: Expr) -> Expr:
    one = _one(x)
    return ex.where(x.gt(0.0), one, ex.where(x.lt(0.0), -one, ex.const(0.0, x.dtype)))


def _minmax(n: Expr, d: list[Expr | None]) -> Expr | None:
    a, b = n.src
    first = a.gt(b) if n.op is E.MAX else a.lt(b)
    second = a.lt(b) if n.op is E.MAX else a.gt(b)
    tie = _mul(_add(d[0], d[1]), ex.const(0.5, n.dtype))
    return _where(first, d[0], _where(second, d[1], tie, n), n)


def _pow(n: Expr, d: list[Expr | None]) -> Expr | None:
    a, b = n.src
    out: Expr | None = None
    if d[0] is not None:
        cb = _const_value(b)
        if cb == 0.0:
            base: Expr | None = None
        elif cb in (1.0, 2.0):
            base = _one(n) if cb == 1.0 else _mul(b, a)
        elif cb is not None:
            base = _mul(b, ex.pow_(a, ex.const(cb - 1.0, b.dtype)))
        else:
            base = _where(b.eq(0.0), None, b * ex.pow_(a, b - 1.0), n)
        out = _mul(base, d[0])
    if d[1] is not None:
        expo = _where(a.eq(0.0) & b.ge(0.0), None, n * ex.log(a), n)
        out = _add(out, _mul(expo, d[1]))
    return out


def _div_rule(n: Expr, d: list[Expr | None]) -> Expr | None:
    # (a / b)' = a' / b - (a / b) b' / b
    return _sub(_div(d[0], n.src[1]), _div(_mul(n, d[1]), n.src[1]))


RULES: dict[E, Rule] = {
    E.NEG: lambda n, d: _neg(d[0]),
    E.ABS: _chain(lambda n, x: _sign(x)),
    E.EXP: _chain(lambda n, x: n),
    E.EXP2: _chain(lambda n, x: n * _LN2),
    E.LOG: lambda n, d: _div(d[0], n.src[0]),
    E.LOG2: lambda n, d: _div(d[0], n.src[0] * _LN2),
    E.LOG1P: lambda n, d: _div(d[0], n.src[0] + 1.0),
    E.SQRT: lambda n, d: _div(_mul(d[0], ex.const(0.5, n.dtype)), n),
    E.RSQRT: _chain(lambda n, x: n * -0.5 / x),
    E.SIN: _chain(lambda n, x: ex.cos(x)),
    E.COS: _chain(lambda n, x: -ex.sin(x)),
    E.TANH: _chain(lambda n, x: 1.0 - n * n),
    E.SIGMOID: _chain(lambda n, x: n * (1.0 - n)),
    E.ERF: _chain(lambda n, x: ex.exp(-(x * x)) * _TWO_OVER_SQRT_PI),
    E.RECIP: _chain(lambda n, x: -(n * n)),
    E.ADD: lambda n, d: _add(d[0], d[1]),
    E.SUB: lambda n, d: _sub(d[0], d[1]),
    E.MUL: lambda n, d: _add(_mul(d[0], n.src[1]), _mul(n.src[0], d[1])),
    E.DIV: _div_rule,
    E.MAX: _minmax,
    E.MIN: _minmax,
    E.POW: _pow,
    E.WHERE: lambda n, d: _where(n.src[0], d[1], d[2], n),
    E.CAST: lambda n, d: None if d[0] is None else ex.cast(d[0], n.dtype),
}
# The sources whose derivatives a rule reads (where's condition is not differentiated).
_VALUE_SRCS = {E.WHERE: (1, 2)}


def _differentiable(n: Expr) -> bool:
    if n.op not in RULES or not n.dtype.is_float:
        return False
    return not (n.op is E.CAST and not n.src[0].dtype.is_float)  # a cast from bool/int is piecewise constant


def derivative(e: Expr, var: str) -> Expr:
    """d e / d var for the float VAR named `var`: an Expr of e's dtype (constant 0 if e does not use it).

    Raises NotDifferentiableError naming the op through which `e` depends on `var` without a derivative."""
    if not e.dtype.is_float:
        raise ExprError(f"derivative: {e.dtype} expression is not real-valued; only float expressions have one")
    memo: dict[int, Expr | None | _Blocked] = {}
    for n in e.toposort():
        if n.op is E.VAR:
            if n.arg != var:
                memo[id(n)] = None
            elif n.dtype.is_float:
                memo[id(n)] = _one(n)
            else:
                memo[id(n)] = _Blocked(E.VAR, n)
            continue
        srcs = [memo[id(s)] for s in n.src]
        if all(s is None for s in srcs):  # does not depend on var (leaves, loads, index arithmetic)
            memo[id(n)] = None
            continue
        if not _differentiable(n):
            blocked = next((s for s in srcs if isinstance(s, _Blocked)), None)
            memo[id(n)] = blocked or _Blocked(n.op, n)
            continue
        used = _VALUE_SRCS.get(n.op, range(len(n.src)))
        bad = next((srcs[i] for i in used if isinstance(srcs[i], _Blocked)), None)
        if bad is not None:
            memo[id(n)] = bad
            continue
        values: list[Expr | None] = [s if isinstance(s, Expr) else None for s in srcs]
        memo[id(n)] = RULES[n.op](n, values)
    out = memo[id(e)]
    if isinstance(out, _Blocked):
        raise NotDifferentiableError(out.op, out.node, var)
    return ex.const(0.0, e.dtype) if out is None else out
