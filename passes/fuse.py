"""fuse: partition the nodes of a canonical graph into fusion groups, by the rules families declare.

Groups are formed producer-first in topological order. A node joins the group of one of its
operands when that group's rule (passes/fusion_rules.py) accepts it as an epilogue and no cycle
between groups results; otherwise it opens a group of the kind its op is declared to open (ops no
family declares open a group named after the op). Today's families declare:

- rowwise: pointwise chains share one group; a last-axis reduction joins the group that computes
  its operand, with the pointwise ops around it (softmax, RMSNorm, LayerNorm become one row kernel);
- matmul: pointwise consumers with the matmul's output shape become its epilogue, and so do reductions
  of them over rows or columns across tiles (with pointwise ops of their results); a cheap pointwise
  group feeding only a matmul operand becomes that operand's prologue;
- attention, its backward and paged decode: their anchors, with nothing fused.

Views are never computed: kernels read through them (strided loads). Cheap pointwise ops of
graph inputs are inlined into every consumer instead of getting a kernel of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import expr as ex
from ..ir.graph import Graph
from ..ir.ops import ANCHORS, LEAF, VIEWS, Node, Op, make
from .groups import FusedGraph, FusionGroup, row_shape  # noqa: F401  (re-exported)
from .fusion_rules import (Epilogue, FusionRules, GroupRule, PointwiseEpilogue, Prologue, ReductionEpilogue, Sibling,
                           reduce_axis)
from .rewrite import pat, rewrite_graph
from .views import base_of, strided_view, unit_reshape

Shape = tuple[int, ...]
# Largest per-element expression cost that fusion recomputes in every consumer rather than materialises.
INLINE_COST = 4


def _size(groups: list[_G]) -> int:
    return sum(len(g.nodes) for g in groups)


# ---- legalisation: views that need a copy --------------------------------------------------
def _copy_before_reshape(n: Node, _: object) -> Node | None:
    if strided_view(n) is not None:
        return None
    x = n.src[0]
    copy = make(Op.POINTWISE, [x], expr=ex.arg(0, x.dtype))
    return make(Op.RESHAPE, [copy], shape=n.shape)


def legalize_views(g: Graph) -> Graph:
    """Insert copies where a reshape cannot view its operand's memory."""
    return rewrite_graph(g, [(pat(Op.RESHAPE), _copy_before_reshape)])


# ---- group formation ---------------------------------------------------------------------
@dataclass
class _G:
    id: int
    kind: str
    anchor: Node | None
    domain: Shape
    nodes: list[Node]
    prologue: list[Node] = field(default_factory=list)
    alive: bool = True
    # results of reduction epilogues and what is computed from them: node id -> the reduced axis (negative)
    reduced: dict[int, int] = field(default_factory=dict)
    squeeze: set[int] = field(default_factory=set)  # reductions whose squeezed result the group may write


class _Fuser:
    def __init__(self, g: Graph, rules: FusionRules):
        self.g = g
        self.rules = rules
        self.groups: list[_G] = []
        self.where: dict[int, _G] = {}
        self.users = g.users
        self.outputs = {id(n) for _, n in g.outputs}
        self.inline: set[int] = set()

    # -- queries --
    def is_inline(self, n: Node) -> bool:
        """Cheap pointwise op of graph inputs: recompute in each consumer."""
        if n.op is not Op.POINTWISE or id(n) in self.outputs:
            return False
        if any(u.op in VIEWS for u in self.users[id(n)]):
            return False
        if ex.cost(n.attr("expr")) > INLINE_COST:
            return False
        return all(base_of(s).op in LEAF for s in n.src)

    def producers(self, n: Node) -> set[int]:
        """Ids of groups whose members `n` reads (through views and inlined nodes)."""
        out: set[int] = set()
        for s in n.src:
            b = base_of(s)
            if id(b) in self.inline:
                out |= self.producers(b)
            elif id(b) in self.where:
                out.add(self.where[id(b)].id)
        return out

    def deps(self, gid: int) -> set[int]:
        grp = self.groups[gid]
        out: set[int] = set()
        for m in grp.nodes + grp.prologue:
            out |= self.producers(m)
        out.discard(gid)
        return out

    def reaches(self, src: int, dst: int) -> bool:
        """Whether group `src` depends (transitively) on group `dst`."""
        stack, seen = [src], set()
        while stack:
            k = stack.pop()
            if k == dst:
                return True
            if k in seen:
                continue
            seen.add(k)
            stack.extend(self.deps(k))
        return False

    def direct_member(self, s: Node, grp: _G) -> bool:
        """`s` is read directly (no view) and computed in `grp` (not in its prologue)."""
        return self.where.get(id(s)) is grp and all(p is not s for p in grp.prologue)

    def can_join(self, n: Node, grp: _G) -> Epilogue | None:
        """The epilogue rule of `grp` that accepts `n`, if joining creates no cycle between groups."""
        rule = self.rules.rule(grp.kind)
        if rule is None:
            return None
        accepted = next((e for e in rule.epilogues if self.accepts(e, n, grp)), None)
        if accepted is None:
            return None
        others = self.producers(n) - {grp.id}
        return None if any(self.reaches(o, grp.id) for o in others) else accepted

    def accepts(self, e: Epilogue, n: Node, grp: _G) -> bool:
        if isinstance(e, PointwiseEpilogue):
            if n.op is not Op.POINTWISE:
                return False
            if e.reduced:
                return self.reduced_axis(n, grp) is not None
            if not e.rows and any(id(base_of(s)) in grp.reduced for s in n.src):
                return False  # a reduction across tiles is complete only after every tile
            shapes = (grp.domain, row_shape(grp.domain)) if e.rows else (grp.domain,)
            return n.shape in shapes and all(self.where.get(id(s)) is not grp or self.direct_member(s, grp)
                                             for s in n.src) and not self.reads_member_view(n, grp)
        if n.op is not Op.REDUCE or n.attr("op") not in e.ops or (e.floats_only and not n.dtype.is_float):
            return False
        axis = reduce_axis(n)
        src = base_of(n.src[0])
        return (src.shape == grp.domain and self.direct_member(src, grp) and id(src) not in grp.reduced
                and (n.src[0] is src or n.src[0].src[0] is src) and axis in e.axes
                and not (axis in e.sole_use_axes and self.read_elsewhere(src, n)))

    def read_elsewhere(self, src: Node, n: Node) -> bool:
        """Whether anything but reduction `n` (directly or through its own permute) reads `src`."""
        return id(src) in self.outputs or any(
            u is not n and not (u is n.src[0] and len(self.users[id(u)]) == 1) for u in self.users[id(src)])

    def reduced_axis(self, n: Node, grp: _G) -> int | None:
        """The axis of the reductions of `grp` that pointwise `n` reads alone (through the reshape that drops
        the unit axis, or directly with its own shape), or None when it reads anything else."""
        axes: set[int] = set()
        for s in n.src:
            if s.op is Op.CONST:
                continue
            b = s.src[0] if s.op is Op.RESHAPE else s
            if self.where.get(id(b)) is not grp or id(b) not in grp.reduced or s.shape != n.shape:
                return None
            if s is not b and not unit_reshape(s.shape, b.shape):
                return None
            axes.add(grp.reduced[id(b)])
        return axes.pop() if len(axes) == 1 else None

    def reads_member_view(self, n: Node, grp: _G) -> bool:
        """Members read through a view must be materialised: a view of a value inside the same kernel
        is not addressable."""
        return any(s.op in VIEWS and self.where.get(id(base_of(s))) is grp for s in n.src)

    # -- formation --
    def new_group(self, n: Node, kind: str, domain: Shape, anchor: Node | None) -> _G:
        grp = _G(len(self.groups), kind, anchor, domain, [n])
        self.groups.append(grp)
        self.where[id(n)] = grp
        return grp

    def visit(self, n: Node) -> None:
        if n.op in LEAF or n.op in VIEWS:
            self.join_squeezed_output(n)
            return
        if self.is_inline(n):
            self.inline.add(id(n))
            return
        if n.op is Op.RESULT and id(n.src[0]) in self.where:
            # results of a multi-result anchor are written by the anchor's kernel
            grp = self.where[id(n.src[0])]
            grp.nodes.append(n)
            self.where[id(n)] = grp
            return
        rule = self.rules.opener(n.op)
        if rule is not None and n.op in rule.anchors:
            grp = self.new_group(n, rule.kind, n.shape, n)
            for i, s in enumerate(n.src):
                self.try_prologues(i, s, grp, rule)
            self.adopt_siblings(grp)
            return
        if n.op not in ANCHORS and (self.try_sibling(n) or self.try_join(n)):
            return
        # a reduction iterates over its operand's shape
        domain = n.src[0].shape if n.op is Op.REDUCE else n.shape
        kind = rule.kind if rule is not None else n.op.value
        self.new_group(n, kind, domain, n if n.op in ANCHORS else None)

    def try_join(self, n: Node) -> bool:
        """Join the latest producer group whose rule accepts `n` as an epilogue (a reduction epilogue may
        read its operand through the canonical reduce's permute, so producers are found through views)."""
        bases = [base_of(s) for s in n.src]
        candidates = sorted({self.where[id(b)].id for b in bases if id(b) in self.where}, reverse=True)
        for gid in candidates:
            grp = self.groups[gid]
            e = self.can_join(n, grp)
            if e is not None:
                grp.nodes.append(n)
                self.where[id(n)] = grp
                if isinstance(e, ReductionEpilogue):
                    grp.reduced[id(n)] = reduce_axis(n)
                    if e.squeeze:
                        grp.squeeze.add(id(n))
                elif e.reduced:
                    grp.reduced[id(n)] = self.reduced_axis(n, grp) or 0
                if e.becomes is not None:
                    grp.kind = e.becomes
                return True
        return False

    def join_squeezed_output(self, n: Node) -> None:
        """A graph output that reshapes the unit axes of a reduction its group may squeeze (and that nothing
        else reads) is written by that group: its elements are the reduction's, in the same order."""
        src = n.src[0] if n.src else n
        grp = self.where.get(id(src))
        if (n.op is not Op.RESHAPE or id(n) not in self.outputs or self.users[id(n)] or grp is None
                or id(src) not in grp.squeeze or not unit_reshape(n.shape, src.shape)):
            return
        grp.nodes.append(n)
        self.where[id(n)] = grp
        grp.reduced[id(n)] = grp.reduced[id(src)]

    def sibling_rule(self, n: Node, grp: _G) -> Sibling | None:
        """The sibling rule of anchor group `grp` that takes `n` (it reads the anchor's operands)."""
        rule, a = self.rules.rule(grp.kind), grp.anchor
        if rule is None or a is None or not grp.alive:
            return None
        return next((s for s in rule.siblings if n.op in s.ops and all(
            i < len(n.src) and j < len(a.src) and n.src[i] is a.src[j] for i, j in s.shared)), None)

    def try_sibling(self, n: Node) -> bool:
        """Join the latest anchor group that takes `n` as a sibling, if that creates no cycle."""
        for grp in reversed(self.groups):
            if self.sibling_rule(n, grp) is not None and not any(
                    self.reaches(o, grp.id) for o in self.producers(n) - {grp.id}):
                grp.nodes.append(n)
                self.where[id(n)] = grp
                return True
        return False

    def adopt_siblings(self, anchor: _G) -> None:
        """Pull into a new anchor group the siblings visited before it (each still a group of its own, of
        that one node), unless the anchor reads a group that reads the sibling."""
        for grp in self.groups:
            # one node, with the results of a multi-result sibling (they joined its group when visited)
            if not grp.alive or grp.anchor is not None or grp is anchor or not grp.nodes or any(
                    m.op is not Op.RESULT or m.src[0] is not grp.nodes[0] for m in grp.nodes[1:]):
                continue
            if self.sibling_rule(grp.nodes[0], anchor) is None:
                continue
            if any(self.reaches(d, grp.id) for d in self.deps(anchor.id)):
                continue
            grp.alive = False
            for m in grp.nodes:
                anchor.nodes.append(m)
                self.where[id(m)] = anchor

    def try_prologues(self, i: int, s: Node, anchor: _G, rule: GroupRule) -> None:
        """Pull the groups computing operand `i` into the anchor's loads: of the prologue rules that fit,
        the one that pulls in the most nodes (the first declared among equals)."""
        best: tuple[Prologue, list[_G]] | None = None
        for pro in rule.prologues:
            pulled = self.prologue(i, s, pro)
            if pulled is not None and (best is None or _size(pulled) > _size(best[1])):
                best = (pro, pulled)
        if best is None:
            return
        pro, pulled = best
        for g in pulled:
            g.alive = False
            # a pulled-in anchor group brings its own prologue along (sddmm's pattern into edge softmax)
            for m in g.nodes + g.prologue:
                self.where[id(m)] = anchor
            anchor.prologue.extend(g.nodes + g.prologue)
        if pro.becomes is not None:
            anchor.kind = pro.becomes

    def prologue(self, i: int, s: Node, pro: Prologue) -> list[_G] | None:
        """The groups `pro` pulls in for operand `i` computed by `s`, or None when it does not apply."""
        grp = self.where.get(id(s))
        if i not in pro.operands or grp is None or grp.kind not in pro.kinds or grp.nodes[-1] is not s:
            return None
        if id(s) in self.outputs or len(self.users[id(s)]) != 1:
            return None
        pulled = [grp] + self.feeders(grp, pro)
        if pro.needs_feeders and len(pulled) == 1:
            return None
        members = {id(m) for g in pulled for m in g.nodes + g.prologue}
        for g in pulled:
            for m in g.nodes + g.prologue:
                if m is not s and (id(m) in self.outputs or any(id(u) not in members for u in self.users[id(m)])):
                    return None
        if sum(pro.cost(m) for g in pulled for m in g.nodes + g.prologue) > pro.max_cost:
            return None
        if pro.accept is not None and not pro.accept([m for g in pulled for m in g.nodes + g.prologue]):
            return None
        return pulled

    def feeders(self, root: _G, pro: Prologue) -> list[_G]:
        """Groups of a `pro.feeders` kind that `root` (or another feeder) reads directly."""
        out: list[_G] = []
        stack = [root]
        while stack:
            g = stack.pop()
            for m in g.nodes:
                for src in m.src:
                    f = self.where.get(id(src))
                    if f is not None and f is not root and f.alive and f.kind in pro.feeders and f not in out:
                        out.append(f)
                        stack.append(f)
        return out

    def run(self) -> FusedGraph:
        for n in self.g.nodes:
            self.visit(n)
        live = [grp for grp in self.groups if grp.alive]
        # Graph outputs that no kernel computes (inputs, views, inlined ops) get a copy kernel.
        copies = []
        for _name, n in self.g.outputs:
            if id(n) not in self.where:
                copies.append(FusionGroup("copy", None, n.shape, (), (n,)))
        order = self.toposort(live)
        result = [self.freeze(grp) for grp in order] + copies
        return FusedGraph(self.g, result, frozenset(self.inline))

    def toposort(self, live: list[_G]) -> list[_G]:
        done: set[int] = set()
        order: list[_G] = []
        pending = list(live)
        while pending:
            for grp in pending:
                if self.deps(grp.id) <= done:
                    order.append(grp)
                    done.add(grp.id)
                    pending.remove(grp)
                    break
            else:
                raise RuntimeError("fusion produced a cycle between groups")  # prevented by can_join
        return order

    def escapes(self, n: Node, members: set[int]) -> bool:
        """Whether a node outside `members` reads `n`: a view counts through its own readers (a reduction
        epilogue reads its operand through a permute inside the kernel)."""
        return any(id(u) not in members and (u.op not in VIEWS or id(u) in self.outputs or self.escapes(u, members))
                   for u in self.users[id(n)])

    def freeze(self, grp: _G) -> FusionGroup:
        members = {id(m) for m in grp.nodes + grp.prologue}
        topo = [n for n in self.g.nodes if id(n) in members]
        outs = tuple(n for n in topo if id(n) in self.outputs or self.escapes(n, members))
        prologue = tuple(n for n in topo if any(p is n for p in grp.prologue))
        return FusionGroup(grp.kind, grp.anchor, grp.domain, tuple(topo), outs, prologue)


def fuse(g: Graph, rules: FusionRules) -> FusedGraph:
    """Assign every computed node of a canonical graph to a fusion group by the families' `rules`."""
    return _Fuser(legalize_views(g), rules).run()
