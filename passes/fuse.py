"""fuse: partition the nodes of a canonical graph into fusion groups.

Groups are formed producer-first in topological order. A node joins the group of one of its
operands when the group's rules allow it (same iteration domain, no cycle between groups):

- pointwise chains share one group;
- a last-axis reduction joins the group that computes its operand, with the pointwise ops
  around it (softmax, RMSNorm, LayerNorm become one row kernel);
- pointwise consumers of a matmul with the matmul's output shape become its epilogue;
- a cheap pointwise group feeding only a matmul operand becomes that operand's prologue.

Views are never computed: kernels read through them (strided loads). Cheap pointwise ops of
graph inputs are inlined into every consumer instead of getting a kernel of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import expr as ex
from ..ir.graph import Graph
from ..ir.ops import ANCHORS, LEAF, VIEWS, Node, Op, make
from .rewrite import pat, rewrite_graph
from .views import base_of, strided_view

Shape = tuple[int, ...]
# Largest per-element expression cost that fusion recomputes rather than materialises.
INLINE_COST = 4
PROLOGUE_COST = 8


@dataclass(frozen=True)
class FusionGroup:
    """Nodes computed by one kernel. `outputs` are the members written to memory."""

    kind: str  # "pointwise" | "reduction" | "matmul" | "copy"
    anchor: Node | None
    domain: Shape
    nodes: tuple[Node, ...]
    outputs: tuple[Node, ...]
    prologue: tuple[Node, ...] = ()

    @property
    def name(self) -> str:
        """A readable kernel name from the ops it fuses (stable across processes)."""
        parts: list[str] = []
        for n in self.nodes:
            if n.op is Op.POINTWISE:
                e = n.attr("expr")
                word = e.op.value if e.op.value not in ("arg", "cast") else "cast" if e.op.value == "cast" else "copy"
            elif n.op is Op.REDUCE:
                word = n.attr("op")
            else:
                word = n.op.value
            if word not in parts:
                parts.append(word)
        if not parts:
            parts = ["copy"]
        return "_".join(parts[:5])


@dataclass
class FusedGraph:
    """A graph with its nodes assigned to fusion groups (groups in a valid execution order)."""

    graph: Graph
    groups: list[FusionGroup]
    inline: frozenset[int] = field(default_factory=frozenset)  # ids of nodes recomputed in consumers

    def group_of(self, n: Node) -> FusionGroup | None:
        for g in self.groups:
            if any(m is n for m in g.nodes) or (g.kind == "copy" and g.outputs[0] is n):
                return g
        return None


def row_shape(domain: Shape) -> Shape:
    return tuple(domain[:-1]) + (1,)


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


class _Fuser:
    def __init__(self, g: Graph):
        self.g = g
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

    def can_join(self, n: Node, grp: _G) -> bool:
        if n.op is Op.POINTWISE:
            if grp.kind == "pointwise":
                ok = n.shape == grp.domain
            elif grp.kind == "reduction":
                ok = n.shape in (grp.domain, row_shape(grp.domain))
            elif grp.kind == "matmul":
                ok = n.shape == grp.domain and all(
                    self.where.get(id(s)) is not grp or self.direct_member(s, grp) for s in n.src)
            else:
                ok = False
        elif n.op is Op.REDUCE:
            src = n.src[0]
            ok = grp.kind in ("pointwise", "reduction") and src.shape == grp.domain and self.direct_member(src, grp)
        else:
            ok = False
        if not ok:
            return False
        # Members read through a view must be materialised: a view of a value inside the
        # same kernel is not addressable.
        if any(s.op in VIEWS and self.where.get(id(base_of(s))) is grp for s in n.src):
            return False
        others = self.producers(n) - {grp.id}
        return not any(self.reaches(o, grp.id) for o in others)

    # -- formation --
    def new_group(self, n: Node, kind: str, domain: Shape) -> _G:
        grp = _G(len(self.groups), kind, n if n.op in ANCHORS else None, domain, [n])
        self.groups.append(grp)
        self.where[id(n)] = grp
        return grp

    def visit(self, n: Node) -> None:
        if n.op in LEAF or n.op in VIEWS:
            return
        if self.is_inline(n):
            self.inline.add(id(n))
            return
        if n.op is Op.MATMUL:
            grp = self.new_group(n, "matmul", n.shape)
            for s in n.src:
                self.try_prologue(s, grp)
            return
        if n.op is Op.RESULT and id(n.src[0]) in self.where:
            # results of a multi-result anchor are written by the anchor's kernel
            grp = self.where[id(n.src[0])]
            grp.nodes.append(n)
            self.where[id(n)] = grp
            return
        if n.op not in (Op.POINTWISE, Op.REDUCE):
            self.new_group(n, n.op.value, n.shape)
            return
        candidates = sorted({self.where[id(s)].id for s in n.src if id(s) in self.where}, reverse=True)
        for gid in candidates:
            grp = self.groups[gid]
            if self.can_join(n, grp):
                grp.nodes.append(n)
                self.where[id(n)] = grp
                if n.op is Op.REDUCE:
                    grp.kind = "reduction"
                return
        if n.op is Op.REDUCE:
            self.new_group(n, "reduction", n.src[0].shape)
        else:
            self.new_group(n, "pointwise", n.shape)

    def try_prologue(self, s: Node, mm: _G) -> None:
        """Pull a cheap pointwise group that only feeds this matmul operand into its loads."""
        grp = self.where.get(id(s))
        if grp is None or grp.kind != "pointwise" or grp.nodes[-1] is not s:
            return
        if id(s) in self.outputs or len(self.users[id(s)]) != 1:
            return
        members = {id(m) for m in grp.nodes}
        for m in grp.nodes:
            if m is not s and (id(m) in self.outputs or any(id(u) not in members for u in self.users[id(m)])):
                return
        if sum(ex.cost(m.attr("expr")) for m in grp.nodes) > PROLOGUE_COST:
            return
        grp.alive = False
        for m in grp.nodes:
            self.where[id(m)] = mm
        mm.prologue.extend(grp.nodes)

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

    def freeze(self, grp: _G) -> FusionGroup:
        members = {id(m) for m in grp.nodes + grp.prologue}
        topo = [n for n in self.g.nodes if id(n) in members]
        outs = tuple(n for n in topo if id(n) in self.outputs
                     or any(id(u) not in members for u in self.users[id(n)]))
        prologue = tuple(n for n in topo if any(p is n for p in grp.prologue))
        return FusionGroup(grp.kind, grp.anchor, grp.domain, tuple(topo), outs, prologue)


def fuse(g: Graph) -> FusedGraph:
    """Assign every computed node of a canonical graph to a fusion group."""
    return _Fuser(legalize_views(g)).run()
