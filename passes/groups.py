"""The result of fusion: groups of nodes, each computed by one kernel (passes/fuse.py forms them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir.graph import Graph
from ..ir.ops import VIEWS, Node, Op

Shape = tuple[int, ...]


@dataclass(frozen=True)
class FusionGroup:
    """Nodes computed by one kernel. `outputs` are the members written to memory."""

    kind: str  # a declared group kind ("pointwise", "reduction", "matmul", ...), "copy", or an op name
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
            if n.op in VIEWS:  # a reshape written as a graph output names nothing
                continue
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
    """The shape of one value per row of `domain` (a last-axis reduction with keepdim)."""
    return tuple(domain[:-1]) + (1,)
