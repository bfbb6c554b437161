"""Fusion rules: what each kernel family declares about the groups it lowers (passes/fuse.py applies them).

A `GroupRule` names a fusion-group kind and says
- which ops are its anchor (`anchors`: each opens a group of its own and never joins another) or open a
  group when they join none (`opens`: the rowwise family's pointwise ops and reductions);
- which producer groups may be pulled into an anchor operand's loads (`Prologue`);
- which consumers may join the group (`PointwiseEpilogue`, `ReductionEpilogue`);
- which ops reading the anchor's own operands join it (`Sibling`).

Families declare rules (kernels/registry.py) and the pipeline receives them as explicit context:
`run_pipeline(g, kernels.fusion_rules())`. Rules of the same kind from several families merge, so a
family can add a prologue to an anchor another family owns (`becomes` then names the kind that the
anchor's group turns into, so that the declaring family lowers it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..ir import expr as ex
from ..ir.ops import REDUCE_OPS, VIEWS, Node, Op


def expr_cost(n: Node) -> int:
    """Per-element cost of a node: its expression's cost for pointwise ops, one for any other op."""
    return ex.cost(n.attr("expr")) if n.op is Op.POINTWISE else 1


def _moves_one_axis_last(perm: tuple[int, ...]) -> bool:
    """A permute that moves one axis last and keeps the others in order (the canonical reduce's)."""
    return list(perm[:-1]) == [a for a in range(len(perm)) if a != perm[-1]]


def reduce_axis(n: Node) -> int:
    """The axis (negative) of its operand's base that a canonical reduce `n` reduces: the last one, or the
    one the canonical form's permute moved last; 0 for a reduce of any other form."""
    src, axes = n.src[0], n.attr("axes")
    if len(axes) != 1:
        return 0
    if src.op is Op.PERMUTE and _moves_one_axis_last(src.attr("perm")):
        return src.attr("perm")[axes[0]] - src.ndim
    return axes[0] - src.ndim if src.op not in VIEWS else 0


@dataclass(frozen=True)
class Prologue:
    """A producer group computing anchor operand `operands[i]` that the anchor's kernel recomputes in its
    loads: the group's kind is in `kinds`, it feeds nothing else, and the summed `cost` of what is pulled
    in is at most `max_cost`. Groups of a kind in `feeders` that feed only the pulled-in nodes come along
    (a sum of two dequantized planes); with `needs_feeders` the rule applies only when one does. `accept`,
    when given, must hold of the nodes that would be pulled in (a condition kinds and costs cannot state)."""

    operands: tuple[int, ...]
    kinds: frozenset[str]
    max_cost: int
    feeders: frozenset[str] = frozenset()
    cost: Callable[[Node], int] = expr_cost
    becomes: str | None = None
    needs_feeders: bool = False
    accept: Callable[[list[Node]], bool] | None = None


@dataclass(frozen=True)
class PointwiseEpilogue:
    """A pointwise consumer of the group's domain shape (or, with `rows`, of one value per row) joins, if it
    reads group members directly (not through a view, not a prologue value) and, without `rows`, no result
    of a reduction epilogue. With `reduced`, a pointwise op of the results of reduction epilogues over one
    axis joins instead (read directly or through a reshape of unit axes; constants aside,
    nothing else), computed once per result (a column norm's sqrt). `becomes` as below."""

    rows: bool = False
    becomes: str | None = None
    reduced: bool = False


@dataclass(frozen=True)
class ReductionEpilogue:
    """A reduction (`ops`) of a group member of the domain's shape over one of `axes` (negative: -1 is the
    last axis) joins; across tiles when the axis is tiled. The canonical form moves the reduced axis last
    with a permute, which this rule reads through. `becomes` is the kind the group turns into. With
    `floats_only` only reductions of floating-point values join. With `squeeze` the group also writes a
    graph output that is the reduction's result reshaped by dropping or adding unit axes (the canonical
    form's reshape), instead of a copy kernel doing so. Over an axis in `sole_use_axes` it joins only when
    nothing else reads the value it reduces (a value written anyway is left to the kernels that read it:
    a softmax after a matmul stays one row kernel)."""

    axes: frozenset[int]
    ops: frozenset[str] = frozenset(REDUCE_OPS)
    becomes: str | None = None
    floats_only: bool = False
    squeeze: bool = False
    sole_use_axes: frozenset[int] = frozenset()


Epilogue = PointwiseEpilogue | ReductionEpilogue


@dataclass(frozen=True)
class Sibling:
    """An op of `ops` that reads some of the anchor's own operands and joins the anchor's group, so that one
    kernel computes both from one load (the projection evaluates the spherical-harmonic colours from the
    means and view matrix it loads anyway): each (i, j) of `shared` says the op's operand i is the anchor's
    operand j, the same node. Whichever of the two the topological order visits second joins the other."""

    ops: frozenset[Op]
    shared: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class GroupRule:
    """Everything the fuser knows about one fusion-group kind."""

    kind: str
    anchors: frozenset[Op] = frozenset()
    opens: frozenset[Op] = frozenset()
    prologues: tuple[Prologue, ...] = ()
    epilogues: tuple[Epilogue, ...] = ()
    siblings: tuple[Sibling, ...] = ()


@dataclass(frozen=True)
class FusionRules:
    """The rules of every group kind, merged by kind, and which kind each op opens."""

    groups: dict[str, GroupRule] = field(default_factory=dict)
    by_op: dict[Op, GroupRule] = field(default_factory=dict)

    @staticmethod
    def of(rules: Iterable[GroupRule]) -> FusionRules:
        """Merge rules by kind (prologues and epilogues in declaration order); ValueError when two kinds
        claim one op."""
        merged: dict[str, GroupRule] = {}
        for r in rules:
            old = merged.get(r.kind)
            if old is not None:
                r = GroupRule(r.kind, old.anchors | r.anchors, old.opens | r.opens, old.prologues + r.prologues,
                              old.epilogues + r.epilogues, old.siblings + r.siblings)
            merged[r.kind] = r
        by_op: dict[Op, GroupRule] = {}
        for r in merged.values():
            both = sorted(o.value for o in r.anchors & r.opens)
            if both:
                raise ValueError(f"fusion-group kind {r.kind!r} declares {both} both as anchors and as group openers")
            for op in r.anchors | r.opens:
                if op in by_op:
                    raise ValueError(f"op {op.value!r} opens groups of two kinds: {by_op[op].kind!r} and {r.kind!r}")
                by_op[op] = r
        return FusionRules(merged, by_op)

    def rule(self, kind: str) -> GroupRule | None:
        """The rule of group kind `kind`, or None when no family declares one."""
        return self.groups.get(kind)

    def opener(self, op: Op) -> GroupRule | None:
        """The rule whose groups `op` anchors or opens, or None."""
        return self.by_op.get(op)

    def is_anchor(self, op: Op) -> bool:
        """Whether `op` is a declared anchor (opens a group of its own, never joins one)."""
        r = self.by_op.get(op)
        return r is not None and op in r.anchors
