"""Graph-level IR: one frozen, hash-consed node type (op, dtype, shape, src, attrs) and the
per-op shape/dtype inference rules that make every node verified at construction."""

from __future__ import annotations

import enum
import math
import threading
import weakref
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Iterable

from ..errors import TilefuseError
from . import dtypes as dt
from .attrs import attr_problems, plain
from .dims import Sym
from .dtypes import DType
from .expr import E, Expr, toposort as expr_toposort

Shape = tuple[int, ...]


class Op(enum.Enum):
    """Graph ops."""

    INPUT = "input"
    CONST = "const"
    POINTWISE = "pointwise"
    REDUCE = "reduce"
    RESHAPE = "reshape"
    PERMUTE = "permute"
    EXPAND = "expand"
    SLICE = "slice"
    MATMUL = "matmul"
    RESULT = "result"  # result `index` of a multi-result op
    ATTENTION = "attention"
    ATTENTION_BWD = "attention_bwd"  # (dq, dk, dv) of attention
    PAGED_ATTENTION = "paged_attention"  # decode against a paged KV cache
    DEQUANTIZE = "dequantize"
    QUANTIZE = "quantize"  # dynamic absmax quantization: (codes, scales), ir/quantize_op.py
    SPARSE = "sparse"  # pack arrays into a sparse tensor (csr, bsr, 2:4)
    SPMM = "spmm"
    SDDMM = "sddmm"
    SPARSE_SOFTMAX = "sparse_softmax"  # softmax over each row's stored entries
    PROJECT_GAUSSIANS, RASTERIZE_GAUSSIANS = "project_gaussians", "rasterize_gaussians"
    PROJECT_GAUSSIANS_BWD = "project_gaussians_bwd"  # (d_means3d, d_scales, d_quats) of the projection
    RASTERIZE_GAUSSIANS_BWD = "rasterize_gaussians_bwd"  # (d_means2d, d_conics, d_colors, d_opacities)
    SH_TO_COLOR = "sh_to_color"  # view-dependent colours of spherical-harmonic coefficients
    SH_TO_COLOR_BWD = "sh_to_color_bwd"  # (d_coeffs, d_means) of sh_to_color


VIEWS = frozenset({Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.SLICE})
LEAF = frozenset({Op.INPUT, Op.CONST})
ANCHORS = frozenset({Op.MATMUL, Op.ATTENTION, Op.ATTENTION_BWD, Op.PAGED_ATTENTION, Op.SPMM, Op.SDDMM,
                     Op.SPARSE_SOFTMAX, Op.PROJECT_GAUSSIANS, Op.RASTERIZE_GAUSSIANS, Op.PROJECT_GAUSSIANS_BWD,
                     Op.RASTERIZE_GAUSSIANS_BWD})
REDUCE_OPS = ("sum", "max", "min", "mean")


class VerifyError(TilefuseError, ValueError):
    """A node whose operands, shapes, dtypes or attributes are not accepted by its op."""


Attrs = tuple[tuple[str, Any], ...]
_CACHE: weakref.WeakValueDictionary[tuple[Any, ...], Node] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def _freeze(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        raise VerifyError("attribute values may not be dicts")
    return v


class Node:
    """A hash-consed graph node; build with `make` (which infers and verifies)."""

    __slots__ = ("op", "dtype", "shape", "src", "arg", "__weakref__")
    op: Op
    dtype: DType
    shape: Shape
    src: tuple[Node, ...]
    arg: Attrs

    def __new__(cls, op: Op, dtype: DType, shape: Shape, src: tuple[Node, ...], arg: Attrs) -> Node:
        key = (op, dtype, shape, tuple(id(s) for s in src), _attr_key(arg))
        with _LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                return hit
            self = object.__new__(cls)
            for k, v in (("op", op), ("dtype", dtype), ("shape", shape), ("src", src), ("arg", arg)):
                object.__setattr__(self, k, v)
            _CACHE[key] = self
            return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Node is immutable")

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.arg)

    def attr(self, name: str, default: Any = None) -> Any:
        for k, v in self.arg:
            if k == name:
                return v
        return default

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return prod(self.shape)

    def __repr__(self) -> str:
        return f"Node<{self.op.value} {self.dtype}{fmt_shape(self.shape)}>"


def _attr_key(arg: Attrs) -> Any:
    # Distinguish 1, 1.0 and True, which compare equal in Python.
    def k(v: Any) -> Any:
        if isinstance(v, tuple):
            return tuple(k(x) for x in v)
        if isinstance(v, (Expr, Node)):
            return ("id", id(v))
        return (type(v).__name__, v)

    return tuple((name, k(v)) for name, v in arg)


# ---- op definitions ----------------------------------------------------------------------
@dataclass(frozen=True)
class OpDef:
    """How one op checks its operands and attributes and infers its result type."""

    op: Op
    # (srcs, attrs) -> (dtype, shape, normalised attrs); raises VerifyError.
    infer: Callable[[tuple[Node, ...], dict[str, Any]], tuple[DType, Shape, dict[str, Any]]]
    num_src: tuple[int, int] = (0, 1 << 30)


OPDEFS: dict[Op, OpDef] = {}
# Rules every node passes after its op's inference (ir/verify_limits.py registers the size limits).
NODE_CHECKS: list[Callable[[Op, DType, Shape, dict[str, Any]], None]] = []


def register(op: Op, num_src: tuple[int, int] = (0, 1 << 30)) -> Callable[[Any], Any]:
    """Register the inference rule of `op`."""

    def deco(fn: Any) -> Any:
        OPDEFS[op] = OpDef(op, fn, num_src)
        return fn

    return deco


def make(op: Op, srcs: Iterable[Node] = (), /, **attrs: Any) -> Node:
    """Build (or find) the node `op(srcs, attrs)`, inferring dtype and shape and verifying."""
    srcs = tuple(srcs)
    d = OPDEFS.get(op)
    if d is None:
        raise VerifyError(f"op {op.value} has no definition registered")
    lo, hi = d.num_src
    if not lo <= len(srcs) <= hi:
        want = str(lo) if lo == hi else f"{lo}..{hi}"
        raise VerifyError(f"{op.value}: expected {want} operands, got {len(srcs)}")
    for i, s in enumerate(srcs):
        if not isinstance(s, Node):
            raise VerifyError(f"{op.value}: operand {s!r} is not a Node")
        if op is not Op.RESULT and s.attr("results") is not None:
            raise VerifyError(f"{op.value}: operand {i} is a {s.op.value} with {len(s.attr('results'))} results; "
                              "read one through result(...) {index=i}")
    given = {k: plain(_freeze(v)) for k, v in attrs.items()}
    problems = attr_problems(op.value, given)
    if problems:
        raise VerifyError(f"{op.value}: " + "; ".join(problems))
    dtype, shape, norm = d.infer(srcs, given)
    for check in NODE_CHECKS:
        check(op, dtype, shape, norm)
    arg = tuple(sorted(norm.items()))
    return Node(op, dtype, tuple(s if isinstance(s, Sym) else int(s) for s in shape), srcs, arg)


def fmt_shape(s: Shape) -> str:
    return "[" + ", ".join(map(str, s)) + "]"


def broadcast_shapes(*shapes: Shape, what: str = "pointwise") -> Shape:
    """Numpy broadcasting of shapes; raises naming every shape on mismatch."""
    nd = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(nd):
        dims = {s[len(s) - nd + i] for s in shapes if len(s) - nd + i >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise VerifyError(f"{what}: shapes {', '.join(fmt_shape(s) for s in shapes)} do not broadcast "
                              f"(dimension {i - nd} has sizes {sorted(dims)}; each must be equal or 1)")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _norm_axes(axes: Any, ndim: int, what: str) -> tuple[int, ...]:
    if isinstance(axes, int):
        axes = (axes,)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise VerifyError(f"{what}: axis {a} out of range for rank {ndim}")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise VerifyError(f"{what}: repeated axis in {tuple(axes)}")
    return tuple(sorted(out))


@register(Op.INPUT, (0, 0))
def _input(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    name = a.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise VerifyError(f"input: name must be an identifier, got {name!r}")
    d = dt.dtype(a.get("dtype", "f32"))
    shape = tuple(a.get("shape", ()))
    if any((not isinstance(s, int)) or s <= 0 for s in shape):
        raise VerifyError(f"input {name}: shape {shape} must be positive integers")
    return d, shape, {"name": name}


@register(Op.CONST, (0, 0))
def _const(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    d = dt.dtype(a.get("dtype", "f32"))
    v = a.get("value")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        if not (isinstance(v, bool) and d.is_bool):
            raise VerifyError(f"const: value must be a number, got {v!r}")
    v = bool(v) if d.is_bool else float(v) if d.is_float else int(v)
    shape = tuple(a.get("shape", ()))
    return d, shape, {"value": v}


@register(Op.POINTWISE, (1, 64))
def _pointwise(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    e = a.get("expr")
    if not isinstance(e, Expr):
        raise VerifyError(f"pointwise: 'expr' must be an Expr, got {type(e).__name__}")
    for n in expr_toposort([e]):
        if n.op is E.ARG or n.op is E.LOAD:
            if not 0 <= n.arg < len(srcs):
                raise VerifyError(f"pointwise: expression uses operand ${n.arg} but only {len(srcs)} given")
            if n.dtype != srcs[n.arg].dtype:
                raise VerifyError(f"pointwise: operand ${n.arg} is {srcs[n.arg].dtype} but the expression "
                                  f"reads it as {n.dtype}")
        if n.op is E.LOAD:
            raise VerifyError("pointwise: explicit loads are not allowed; use $i for the current element")
        if n.op is E.VAR:
            raise VerifyError(f"pointwise: free variable {n.arg!r}; pointwise expressions use only $i operands")
    shape = broadcast_shapes(*(s.shape for s in srcs))
    return e.dtype, shape, {"expr": e}


@register(Op.REDUCE, (1, 1))
def _reduce(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    (x,) = srcs
    rop = a.get("op")
    if rop not in REDUCE_OPS:
        raise VerifyError(f"reduce: op {rop!r} not one of {REDUCE_OPS}")
    axes = _norm_axes(a.get("axes", tuple(range(x.ndim))), x.ndim, f"reduce {rop} of {x.dtype}{fmt_shape(x.shape)}")
    keepdim = bool(a.get("keepdim", False))
    if rop == "mean" and not x.dtype.is_float:
        raise VerifyError(f"reduce mean: needs a float operand, got {x.dtype}")
    if x.dtype.packed or x.dtype.is_bool:
        raise VerifyError(f"reduce {rop}: unsupported dtype {x.dtype}")
    shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape) if keepdim or i not in axes)
    return x.dtype, shape, {"op": rop, "axes": axes, "keepdim": keepdim}


@register(Op.RESHAPE, (1, 1))
def _reshape(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    (x,) = srcs
    shape = list(a.get("shape", ()))
    if shape.count(-1) > 1:
        raise VerifyError(f"reshape: at most one -1 in {tuple(shape)}")
    known = 1
    for s in shape:
        if s != -1:
            known *= s
    if -1 in shape:
        if known == 0 or x.numel % known:
            raise VerifyError(f"reshape: cannot reshape {fmt_shape(x.shape)} to {tuple(shape)}")
        shape[shape.index(-1)] = x.numel // known
    if any(s <= 0 for s in shape) or prod(shape) != x.numel:
        raise VerifyError(f"reshape: {fmt_shape(x.shape)} ({x.numel} elements) cannot become "
                          f"{fmt_shape(tuple(shape))} ({prod(shape)} elements)")
    return x.dtype, tuple(shape), {"shape": tuple(shape)}


@register(Op.PERMUTE, (1, 1))
def _permute(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    (x,) = srcs
    perm = tuple(a.get("perm", ()))
    if sorted(perm) != list(range(x.ndim)):
        raise VerifyError(f"permute: {perm} is not a permutation of the {x.ndim} axes of {fmt_shape(x.shape)}")
    return x.dtype, tuple(x.shape[p] for p in perm), {"perm": perm}


@register(Op.EXPAND, (1, 1))
def _expand(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    (x,) = srcs
    shape = tuple(a.get("shape", ()))
    if len(shape) < x.ndim:
        raise VerifyError(f"expand: cannot expand {fmt_shape(x.shape)} to lower rank {fmt_shape(shape)}")
    if broadcast_shapes(x.shape, shape, what="expand") != shape:
        raise VerifyError(f"expand: {fmt_shape(x.shape)} does not broadcast to {fmt_shape(shape)}")
    return x.dtype, shape, {"shape": shape}


@register(Op.SLICE, (1, 1))
def _slice(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    (x,) = srcs
    starts, stops = tuple(a.get("starts", ())), tuple(a.get("stops", ()))
    steps = tuple(a.get("steps", (1,) * len(starts)))
    if not len(starts) == len(stops) == len(steps) == x.ndim:
        raise VerifyError(f"slice of {fmt_shape(x.shape)}: starts/stops/steps need {x.ndim} entries each")
    shape = []
    for i, (b, e, st, n) in enumerate(zip(starts, stops, steps, x.shape)):
        if st <= 0 or not 0 <= b < e <= n:
            raise VerifyError(f"slice of {fmt_shape(x.shape)}: axis {i} range {b}:{e}:{st} is not within 0..{n} "
                              "with a positive step and a non-empty result")
        shape.append((e - b + st - 1) // st)
    return x.dtype, tuple(shape), {"starts": starts, "stops": stops, "steps": steps}


@register(Op.MATMUL, (2, 2))
def _matmul(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    x, w = srcs
    ta, tb = bool(a.get("trans_a", False)), bool(a.get("trans_b", False))
    what = f"matmul of {x.dtype}{fmt_shape(x.shape)} and {w.dtype}{fmt_shape(w.shape)}"
    if x.ndim < 2 or w.ndim < 2:
        raise VerifyError(f"{what}: both operands need rank >= 2")
    if not (x.dtype.is_float or x.dtype.is_int) or x.dtype.packed or w.dtype.packed:
        raise VerifyError(f"{what}: operands must be float or (unpacked) int; dequantize packed weights first")
    m, k1 = (x.shape[-1], x.shape[-2]) if ta else (x.shape[-2], x.shape[-1])
    k2, n = (w.shape[-1], w.shape[-2]) if tb else (w.shape[-2], w.shape[-1])
    if k1 != k2:
        raise VerifyError(f"{what} (trans_a={ta}, trans_b={tb}): contraction sizes differ, {k1} vs {k2}")
    batch = broadcast_shapes(x.shape[:-2], w.shape[:-2], what=what)
    default_out = dt.i32 if x.dtype.is_int and w.dtype.is_int else dt.promote(x.dtype, w.dtype)
    out = dt.dtype(a.get("out_dtype", default_out))
    return out, (*batch, m, n), {"trans_a": ta, "trans_b": tb, "out_dtype": out}


@register(Op.RESULT, (1, 1))
def _result(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    (x,) = srcs
    results = x.attr("results")
    if results is None:
        raise VerifyError(f"result: operand {x.op.value} has a single result; use it directly")
    i = a.get("index")
    if not isinstance(i, int) or not 0 <= i < len(results):
        raise VerifyError(f"result: index {i!r} out of range for {x.op.value} with {len(results)} results")
    d, shape = results[i]
    return dt.dtype(d), tuple(shape), {"index": i}


prod = math.prod  # the product of sizes (1 for an empty shape)


def results_of(n: Node) -> tuple[tuple[DType, Shape], ...]:
    """(dtype, shape) per result: one for ordinary nodes, several for multi-result ops."""
    r = n.attr("results")
    return ((n.dtype, n.shape),) if r is None else tuple((dt.dtype(d), tuple(s)) for d, s in r)


def toposort(roots: Iterable[Node]) -> list[Node]:
    """Nodes reachable from `roots`, each after its operands (iterative, deterministic)."""
    seen: set[int] = set()
    order: list[Node] = []
    stack: list[tuple[Node, bool]] = [(r, False) for r in reversed(list(roots))]
    while stack:
        n, done = stack.pop()
        if done:
            order.append(n)
            continue
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.append((n, True))
        stack.extend((s, False) for s in reversed(n.src) if id(s) not in seen)
    return order


def base_of(n: Node) -> Node:
    """The first non-view node below a chain of views."""
    while n.op in VIEWS:
        n = n.src[0]
    return n
