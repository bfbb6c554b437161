"""canonicalize: constant folding, algebraic simplification, view cleanup and the canonical
form of reductions (one trailing axis, keepdim). Dead code is dropped because a graph holds only
what its outputs reach."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..ir import expr as ex
from ..ir.expr import E, Expr
from ..ir.graph import Graph
from ..ir.ops import Node, Op, broadcast_shapes, make
from ..ir.quantize_op import primitives
from .rewrite import Rule, pat, rewrite_expr, rewrite_graph


# ---- expression rules --------------------------------------------------------------------
def _is_const(e: Expr, v: float) -> bool:
    return e.op is E.CONST and not isinstance(e.arg, bool) and e.arg == v


def _fold_expr(e: Expr, _: Any) -> Expr | None:
    if e.op in ex.LEAVES or e.op is E.LOAD or not e.src or not all(s.op is E.CONST for s in e.src):
        return None
    from ..ir.reference import eval_expr

    v = eval_expr(e)
    val = v.item()
    if isinstance(val, float) and not math.isfinite(val) and not e.dtype.is_float:
        return None
    return ex.const(bool(val) if e.dtype.is_bool else val, e.dtype)


def _identity_expr(e: Expr, _: Any) -> Expr | None:
    a = e.src[0]
    b = e.src[1] if len(e.src) > 1 else None
    if e.op is E.ADD and b is not None:
        if _is_const(b, 0):
            return a
        if _is_const(a, 0):
            return b
    if e.op is E.SUB and b is not None and _is_const(b, 0):
        return a
    if e.op is E.MUL and b is not None:
        if _is_const(b, 1):
            return a
        if _is_const(a, 1):
            return b
    if e.op is E.DIV and b is not None and _is_const(b, 1):
        return a
    if e.op is E.NEG and a.op is E.NEG:
        return a.src[0]
    if e.op is E.CAST and a.op is E.CAST:
        inner = a.src[0]
        # widening a float and narrowing back is exact: cast(cast(x:f16, f32), f16) == x
        if inner.dtype == e.dtype and inner.dtype.is_float and a.dtype.is_float and a.dtype.bits >= inner.dtype.bits:
            return inner
    return None


EXPR_RULES: list[Rule] = [
    (pat(), _fold_expr),
    (pat(*(ex.BINARY | ex.UNARY | {E.CAST})), _identity_expr),
]


def simplify_expr(e: Expr) -> Expr:
    """Fold constants and drop algebraic identities in an expression."""
    return rewrite_expr(e, EXPR_RULES)


# ---- graph rules -------------------------------------------------------------------------
def _pointwise(srcs: list[Node], e: Expr) -> Node:
    return make(Op.POINTWISE, srcs, expr=e)


def _renumber(e: Expr, mapping: dict[int, Expr]) -> Expr:
    return ex.substitute(e, lambda n: mapping.get(n.arg) if n.op is E.ARG else None)


def _simplify_pointwise(n: Node, _: Any) -> Node | None:
    e = n.attr("expr")
    s = simplify_expr(e)
    if s is e:
        return None
    if not ex.args_used(s):  # became a constant
        return make(Op.CONST, value=s.arg, dtype=n.dtype, shape=n.shape) if s.op is E.CONST else None
    return _compact(n, s)


def _compact(n: Node, e: Expr) -> Node:
    """Drop unused and duplicate operands of a pointwise node with expression `e`."""
    used = sorted(ex.args_used(e))
    srcs: list[Node] = []
    mapping: dict[int, Expr] = {}
    for i in used:
        s = n.src[i]
        if s not in srcs:
            srcs.append(s)
        mapping[i] = ex.arg(srcs.index(s), s.dtype)
    new_e = _renumber(e, mapping)
    out = _pointwise(srcs, new_e)
    if out.shape != n.shape:  # dropping an operand lost a broadcast: make it explicit
        out = make(Op.EXPAND, [out], shape=n.shape)
    return out


def _inline_consts(n: Node, _: Any) -> Node | None:
    e = n.attr("expr")
    mapping: dict[int, Expr] = {}
    for i, s in enumerate(n.src):
        if s.op is Op.CONST:
            mapping[i] = ex.const(s.attr("value"), s.dtype)
    if not mapping:
        return None
    new_e = simplify_expr(_renumber(e, {**{i: ex.arg(i, s.dtype) for i, s in enumerate(n.src)}, **mapping}))
    if not ex.args_used(new_e):
        from ..ir.reference import eval_expr

        val = eval_expr(new_e).item()
        return make(Op.CONST, value=val, dtype=n.dtype, shape=n.shape)
    return _compact(n, new_e)


def _compact_operands(n: Node, _: Any) -> Node | None:
    """Drop duplicate operands, and operands the expression never reads: a dead operand would pull its
    producer (a matmul, a reduction) into the consumer's kernel, where no store uses it and the TVM
    schedule finds no block for it."""
    used = ex.args_used(n.attr("expr"))
    if not used or (len(set(map(id, n.src))) == len(n.src) and len(used) == len(n.src)):
        return None
    return _compact(n, n.attr("expr"))


def _identity_pointwise(n: Node, _: Any) -> Node | None:
    e = n.attr("expr")
    if e.op is E.ARG and len(n.src) == 1 and n.src[0].shape == n.shape and n.src[0].dtype == n.dtype:
        return n.src[0]
    return None


def _absorb_expand(n: Node, _: Any) -> Node | None:
    for i, s in enumerate(n.src):
        if s.op is Op.EXPAND:
            srcs = list(n.src)
            srcs[i] = s.src[0]
            if broadcast_shapes(*(x.shape for x in srcs)) == n.shape:
                return _pointwise(srcs, n.attr("expr"))
    return None


def _view_identity(n: Node, _: Any) -> Node | None:
    x = n.src[0]
    if n.op in (Op.RESHAPE, Op.EXPAND) and n.shape == x.shape:
        return x
    if n.op is Op.PERMUTE and n.attr("perm") == tuple(range(x.ndim)):
        return x
    if n.op is Op.SLICE and n.shape == x.shape:
        return x
    if n.op is Op.RESHAPE and x.op is Op.RESHAPE:
        return make(Op.RESHAPE, [x.src[0]], shape=n.shape)
    if n.op is Op.PERMUTE and x.op is Op.PERMUTE:
        inner, outer = x.attr("perm"), n.attr("perm")
        return make(Op.PERMUTE, [x.src[0]], perm=tuple(inner[p] for p in outer))
    if n.op is Op.EXPAND and x.op is Op.EXPAND:
        return make(Op.EXPAND, [x.src[0]], shape=n.shape)
    return None


def _const_view(n: Node, _: Any) -> Node | None:
    x = n.src[0]
    if x.op is Op.CONST:
        return make(Op.CONST, value=x.attr("value"), dtype=x.dtype, shape=n.shape)
    return None


def _canonical_reduce(n: Node, _: Any) -> Node | None:
    """reduce over any axes -> permute reduced axes last, merge them, reduce the last axis keepdim."""
    x = n.src[0]
    axes = n.attr("axes")
    last = (x.ndim - 1,)
    if axes == last and n.attr("keepdim"):
        return None
    if x.ndim == 0:
        return None
    kept = [i for i in range(x.ndim) if i not in axes]
    y = x
    if axes != tuple(range(len(kept), x.ndim)):
        y = make(Op.PERMUTE, [y], perm=tuple(kept + list(axes)))
    red = int(np.prod([x.shape[a] for a in axes]))
    flat = tuple(x.shape[i] for i in kept) + (red,)
    if y.shape != flat:
        y = make(Op.RESHAPE, [y], shape=flat)
    r = make(Op.REDUCE, [y], op=n.attr("op"), axes=(len(flat) - 1,), keepdim=True)
    return r if r.shape == n.shape else make(Op.RESHAPE, [r], shape=n.shape)


def _quantize_primitives(n: Node, _: Any) -> Node | None:
    """A result of `quantize` -> its reduction and pointwise ops (ir/quantize_op.py), which the row-kernel
    family fuses like a softmax: the absmax reduction and the codes share one kernel."""
    if n.src[0].op is not Op.QUANTIZE:
        return None
    return primitives(n.src[0])[n.attr("index")]


def _trivial_reduce(n: Node, _: Any) -> Node | None:
    """A reduction over a single element is that element."""
    x = n.src[0]
    if n.attr("axes") == (x.ndim - 1,) and n.attr("keepdim") and x.ndim and x.shape[-1] == 1:
        return x
    return None


def _transposed_spmm(n: Node, _: Any) -> Node | None:
    """permute(spmm(A, B), (1, 0)) -> spmm(A, B^T, transposed): x @ A^T as one kernel storing [T, M]
    (B^T of a permuted x is x itself once the two permutes fold)."""
    mm = n.src[0]
    if mm.op is not Op.SPMM or n.attr("perm") != (1, 0) or mm.attr("transposed", False):
        return None
    x = make(Op.PERMUTE, [mm.src[1]], perm=(1, 0))
    return make(Op.SPMM, [mm.src[0], x], out_dtype=mm.attr("out_dtype"), transposed=True)


RULES: list[Rule] = [
    (pat(Op.RESULT), _quantize_primitives),
    (pat(Op.PERMUTE), _transposed_spmm),
    (pat(Op.REDUCE), _trivial_reduce),
    (pat(Op.POINTWISE), _inline_consts),
    (pat(Op.POINTWISE), _compact_operands),
    (pat(Op.POINTWISE), _simplify_pointwise),
    (pat(Op.POINTWISE), _absorb_expand),
    (pat(Op.POINTWISE), _identity_pointwise),
    (pat(Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.SLICE), _const_view),
    (pat(Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.SLICE), _view_identity),
    (pat(Op.REDUCE), _canonical_reduce),
]


def canonicalize(g: Graph) -> Graph:
    """Apply the canonicalization rules to a fixpoint."""
    return rewrite_graph(g, RULES)
