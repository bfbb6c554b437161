"""Reduction epilogues of the matmul family: a sum, mean, max or min of the tile values over the output's
rows (M) or columns (N), across tiles.

Each program reduces its tile along the reduced axis to one partial per kept index; the partials of the
tiles along that axis are combined by a finishing launch that reads them from a workspace in a fixed
order (or, when one tile spans the axis, by the tile program itself). Two stages rather than atomics:
a sum is deterministic, nothing needs initialising to -inf, and the finish applies what follows the
reduction (a mean's division, a column norm's sqrt) once per result.

A max or min of `f(acc)` with `f` monotone in the accumulator (ir/monotone.py) and every other value it
reads constant along the reduced axis (a bias per column for a max over rows) is taken on the raw
accumulator, and `f` is applied once per result in the finish: the Sparton head's log1p(relu(. + b))
runs on [B, V] values, not [B, S, V]. Otherwise `f` is applied per element before the reduction."""

from __future__ import annotations

from dataclasses import dataclass

from ...ir import dtypes as dt
from ...ir import expr as ex
from ...ir.dtypes import DType
from ...ir.expr import E, Expr
from ...ir.monotone import DOWN, UP, direction
from ...ir.ops import Node, Op
from ...passes.fusion_rules import reduce_axis
from ...passes.views import base_of
from ..lowering import LoadSite

RED = "red"  # the VAR a reduction's `post` reads: the combined value
FLIP = {"max": "min", "min": "max"}


@dataclass(frozen=True)
class MatmulReduction:
    """One reduction epilogue, as the templates render it."""

    axis: str  # "m" (over rows: one result per column) or "n" (over columns: one result per row)
    op: str  # the partial and the combine: sum (a mean too), max or min
    value: Expr  # what is reduced, at (batch..., m, n): reads VAR acc and loads
    post: Expr  # the result from VAR `red` (the combined value, in `acc_dtype`), in the reduce's dtype
    acc_dtype: DType  # partials and their combination: f32, or f64 for f64 values
    raw: bool  # a max/min of the raw values, with what follows applied once per result (monotone)

    def describe(self) -> list[str]:
        """JSON data for the workload description."""
        return [self.axis, self.op, ex.format_expr(self.value), ex.format_expr(self.post), self.acc_dtype.name,
                str(self.raw)]


def is_reduced_stage(members: list[Node]) -> set[int]:
    """Ids of the group members computed from reduction results (the reductions, the reshape a group
    writes for a squeezed result, the pointwise ops of results), in a topologically ordered group."""
    out: set[int] = set()
    for m in members:
        if m.op is Op.REDUCE or m.op is Op.RESHAPE or any(id(base_of(s)) in out for s in m.src):
            out.add(id(m))
    return out


def _invariant(value: Expr, loads: list[LoadSite], pos: int) -> bool:
    """Whether every load `value` makes is constant along domain position `pos`."""
    return all(loads[n.arg].view.strides[pos] == 0 for n in value.toposort() if n.op is E.LOAD)


def plan(n: Node, value: Expr, shape: tuple[int, ...], acc: Expr, loads: list[LoadSite]) -> MatmulReduction:
    """The reduction epilogue of canonical reduce `n` of `value` (the operand's value at (batch..., m, n) of a
    matmul of output `shape`, reading accumulator VAR `acc`)."""
    pos = len(shape) + reduce_axis(n)
    axis = "m" if pos == len(shape) - 2 else "n"
    rop = n.attr("op")
    acc_dt = dt.f64 if n.dtype == dt.f64 else dt.f32
    red = ex.var(RED, acc_dt)
    way = direction(value, acc.arg) if rop in FLIP and acc.dtype == dt.f32 else None
    if way in (UP, DOWN) and _invariant(value, loads, pos):
        # f(max acc) = max f(acc) for f non-decreasing; f(min acc) for f non-increasing
        post = ex.substitute(value, lambda e: ex.cast(red, acc.dtype) if e is acc else None)
        return MatmulReduction(axis, rop if way == UP else FLIP[rop], acc, ex.cast(post, n.dtype), acc_dt, True)
    total = red / float(shape[pos]) if rop == "mean" else red
    return MatmulReduction(axis, "sum" if rop == "mean" else rop, value, ex.cast(total, n.dtype), acc_dt, False)


def identity(op: str) -> str:
    """The Triton literal a masked-off element of a partial contributes."""
    return {"sum": "0.0", "max": "float('-inf')", "min": "float('inf')"}[op]
