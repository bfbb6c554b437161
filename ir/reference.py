"""The numpy reference evaluator: the semantic definition of every op.

Values are computed in float64 (int64 for integers, bool for bool) and rounded to each node's
dtype after each op, so the result is what an exact computation with dtype-rounded
intermediates gives. Accumulations (sum, matmul) happen in float64.
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Callable, Mapping

import numpy as np

from ..errors import TilefuseError
from . import dtypes as dt
from .dtypes import DType
from .expr import E, Expr
from .graph import Graph
from .ops import Node, Op

Array = np.ndarray
EVALUATORS: dict[Op, Callable[[Node, list[Any]], Any]] = {}


class ReferenceEvalError(TilefuseError, RuntimeError):
    """The reference evaluator cannot evaluate a node (missing rule or bad input array)."""


def evaluator(op: Op) -> Callable[[Callable[[Node, list[Any]], Any]], Callable[[Node, list[Any]], Any]]:
    """Register the reference semantics of `op`."""

    def deco(fn: Callable[[Node, list[Any]], Any]) -> Callable[[Node, list[Any]], Any]:
        EVALUATORS[op] = fn
        return fn

    return deco


def host(x: Any, d: DType) -> Array:
    """The f64/i64/bool working array of `x` (a numpy array or torch tensor) of dtype `d`."""
    if hasattr(x, "detach"):  # torch tensor: go through f32 for types numpy lacks
        t = x.detach().cpu()
        if d in (dt.bf16, dt.f8e4m3, dt.f8e5m2):
            t = t.float()
        x = t.numpy()
    a = np.asarray(x)
    if d.is_float:
        return a.astype(np.float64)
    if d.is_bool:
        return a.astype(bool)
    return a.astype(np.int64)


def evaluate(g: Graph, inputs: Mapping[str, Any]) -> dict[str, Array]:
    """Evaluate `g` on named inputs; returns named outputs as f64/i64/bool arrays."""
    env: dict[int, Any] = {}
    if g.is_dynamic:  # bind each dynamic size from the inputs' shapes (checked for range and agreement)
        g = g.at(g.sizes_of({k: np.shape(v) for k, v in inputs.items()}))
    for n in g.inputs:
        name = n.attr("name")
        if name not in inputs:
            raise ReferenceEvalError(f"graph {g.name}: missing input {name!r}")
        a = host(inputs[name], n.dtype)
        if n.dtype.is_float:  # an input holds values of its dtype (f32 data given for an f16 input rounds)
            a = rnd(a, n.dtype)
        if tuple(a.shape) != tuple(int(d) for d in n.shape):
            raise ReferenceEvalError(f"input {name}: expected shape {list(n.shape)}, got {list(a.shape)}")
        env[id(n)] = a
    for n in g.nodes:
        if id(n) in env:
            continue
        fn = EVALUATORS.get(n.op)
        if fn is None:
            raise ReferenceEvalError(f"no reference semantics for op {n.op.value}")
        env[id(n)] = fn(n, [env[id(s)] for s in n.src])
    return {name: env[id(n)] for name, n in g.outputs}


def rnd(x: Any, d: DType) -> Array:
    """Round to dtype `d` (keeps f64/i64/bool working representation)."""
    return dt.round_to(np.asarray(x), d)


# ---- scalar expressions ------------------------------------------------------------------
_UNARY: dict[E, Callable[[Array], Array]] = {
    E.NEG: np.negative, E.ABS: np.abs, E.EXP: np.exp, E.EXP2: np.exp2, E.LOG: np.log, E.LOG2: np.log2,
    E.LOG1P: np.log1p, E.SQRT: np.sqrt, E.RSQRT: lambda x: 1.0 / np.sqrt(x), E.SIN: np.sin, E.COS: np.cos,
    E.TANH: np.tanh, E.SIGMOID: lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)),
    E.ERF: lambda x: np.vectorize(math.erf, otypes=[np.float64])(x) if np.size(x) else x,
    E.RECIP: lambda x: 1.0 / x, E.FLOOR: np.floor, E.CEIL: np.ceil,
    E.ROUND: np.rint,
}


def _idiv(a: Array, b: Array) -> Array:
    # C semantics (truncation toward zero), as Triton and TVM's truncdiv compute.
    q = np.abs(a) // np.maximum(np.abs(b), 1)
    return np.where((a < 0) ^ (b < 0), -q, q)


def _mod(a: Array, b: Array, d: DType) -> Array:
    if d.is_float:
        return np.fmod(a, b)
    return a - _idiv(a, b) * b


_BINARY: dict[E, Callable[[Array, Array], Array]] = {
    E.ADD: np.add, E.SUB: np.subtract, E.MUL: np.multiply, E.MAX: np.maximum, E.MIN: np.minimum,
    E.POW: np.power, E.LT: np.less, E.LE: np.less_equal, E.GT: np.greater, E.GE: np.greater_equal,
    E.EQ: np.equal, E.NE: np.not_equal, E.AND: np.bitwise_and, E.OR: np.bitwise_or, E.XOR: np.bitwise_xor,
    E.SHL: np.left_shift, E.SHR: np.right_shift,
}


def eval_expr(e: Expr, args: list[Any] | None = None, variables: Mapping[str, Any] | None = None,
              loads: Callable[[int, list[Array]], Array] | None = None) -> Array:
    """Evaluate `e` elementwise: ARG i reads args[i], VAR reads variables, LOAD calls loads."""
    args = args or []
    variables = variables or {}
    memo: dict[int, Array] = {}
    with np.errstate(all="ignore"):
        for n in e.toposort():
            src = [memo[id(s)] for s in n.src]
            if n.op is E.ARG:
                v = np.asarray(args[n.arg])
            elif n.op is E.VAR:
                if n.arg not in variables:
                    raise ReferenceEvalError(f"expression variable {n.arg!r} has no value; given: {sorted(variables)}")
                v = np.asarray(variables[n.arg])
            elif n.op is E.CONST:
                v = np.asarray(n.arg, dtype=np.float64 if n.dtype.is_float else bool if n.dtype.is_bool else np.int64)
            elif n.op is E.LOAD:
                if loads is None:
                    raise ReferenceEvalError("expression loads from an operand but no loader was given")
                v = loads(n.arg, src)
            elif n.op is E.CAST:
                v = src[0]
            elif n.op is E.BITCAST:
                v = _bitcast(src[0], n.src[0].dtype, n.dtype)
            elif n.op is E.NOT:
                v = np.logical_not(src[0]) if n.dtype.is_bool else np.invert(src[0])
            elif n.op in _UNARY:
                v = _UNARY[n.op](src[0])
            elif n.op is E.DIV:
                v = src[0] / src[1] if n.dtype.is_float else _idiv(src[0], src[1])
            elif n.op is E.IDIV:
                v = _idiv(src[0], src[1])
            elif n.op is E.MOD:
                v = _mod(src[0], src[1], n.dtype)
            elif n.op in (E.AND, E.OR, E.XOR) and n.dtype.is_bool:
                v = {E.AND: np.logical_and, E.OR: np.logical_or, E.XOR: np.logical_xor}[n.op](src[0], src[1])
            elif n.op in _BINARY:
                v = _BINARY[n.op](src[0], src[1])
            elif n.op is E.WHERE:
                v = np.where(src[0], src[1], src[2])
            else:
                raise ReferenceEvalError(f"no reference semantics for expression op {n.op.value}")
            memo[id(n)] = v if n.op in (E.ARG, E.VAR, E.LOAD) else rnd(v, n.dtype)
    return memo[id(e)]


def _bitcast(x: Array, src: DType, dst: DType) -> Array:
    a = np.asarray(x).astype(dt.to_numpy(src) if src not in (dt.bf16,) else np.float32)
    if src == dt.bf16 or dst == dt.bf16:
        raise ReferenceEvalError("bitcast to or from bf16 is not supported by the reference")
    return host(a.view(dt.to_numpy(dst)), dst)


# ---- graph ops ---------------------------------------------------------------------------
@evaluator(Op.CONST)
def _const(n: Node, _: list[Any]) -> Array:
    return rnd(np.full(n.shape, n.attr("value"), dtype=np.float64 if n.dtype.is_float else np.int64), n.dtype)


@evaluator(Op.POINTWISE)
def _pointwise(n: Node, xs: list[Any]) -> Array:
    out = eval_expr(n.attr("expr"), xs)
    return np.broadcast_to(out, n.shape).copy()


@evaluator(Op.REDUCE)
def _reduce(n: Node, xs: list[Any]) -> Array:
    fns: dict[str, Callable[..., Any]] = {"sum": np.sum, "max": np.max, "min": np.min, "mean": np.mean}
    fn = fns[n.attr("op")]
    return rnd(fn(xs[0], axis=n.attr("axes"), keepdims=n.attr("keepdim")), n.dtype)


@evaluator(Op.RESHAPE)
def _reshape(n: Node, xs: list[Any]) -> Array:
    return xs[0].reshape(n.shape)


@evaluator(Op.PERMUTE)
def _permute(n: Node, xs: list[Any]) -> Array:
    return np.ascontiguousarray(np.transpose(xs[0], n.attr("perm")))


@evaluator(Op.EXPAND)
def _expand(n: Node, xs: list[Any]) -> Array:
    return np.broadcast_to(xs[0], n.shape).copy()


@evaluator(Op.SLICE)
def _slice(n: Node, xs: list[Any]) -> Array:
    sl = tuple(slice(b, e, s) for b, e, s in zip(n.attr("starts"), n.attr("stops"), n.attr("steps")))
    return xs[0][sl].copy()


@evaluator(Op.MATMUL)
def _matmul(n: Node, xs: list[Any]) -> Array:
    a, b = (x.astype(np.float64) for x in xs)
    if n.attr("trans_a"):
        a = np.swapaxes(a, -1, -2)
    if n.attr("trans_b"):
        b = np.swapaxes(b, -1, -2)
    return rnd(np.matmul(a, b), n.dtype)


@evaluator(Op.RESULT)
def _result(n: Node, xs: list[Any]) -> Array:
    return xs[0][n.attr("index")]
