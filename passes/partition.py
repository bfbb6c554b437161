"""partition: turn fusion groups into a kernel DAG with the buffers between kernels."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir.dtypes import DType
from ..ir.graph import Graph
from ..ir.ops import Node, Op, prod
from .fuse import FusedGraph, FusionGroup
from .views import base_of

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Buffer:
    """A contiguous tensor in memory: a graph input, a graph output or a temporary."""

    name: str
    dtype: DType
    shape: Shape
    role: str  # "input" | "output" | "temp"

    @property
    def numel(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True)
class Kernel:
    """One fusion group with the buffers it reads and writes."""

    name: str
    group: FusionGroup
    inputs: tuple[Buffer, ...]
    outputs: tuple[Buffer, ...]  # aligned with group.outputs


@dataclass
class KernelGraph:
    """Kernels in execution order, and which buffer holds each materialised node."""

    graph: Graph
    kernels: list[Kernel]
    buffers: dict[int, Buffer]  # id(node) -> buffer (inputs and kernel outputs)
    inline: frozenset[int]
    outputs: list[tuple[str, Buffer]] = field(default_factory=list)

    def buffer_of(self, n: Node) -> Buffer:
        return self.buffers[id(base_of(n))]


def _reads(n: Node, members: set[int], inline: frozenset[int]) -> list[Node]:
    """Materialised bases that evaluating member `n` reads."""
    out: list[Node] = []
    for s in n.src:
        b = base_of(s)
        if id(b) in members:
            continue
        if id(b) in inline:
            out.extend(_reads(b, members, inline))
        elif b.op is not Op.CONST:
            out.append(b)
    return out


def _leaf_reads(n: Node, inline: frozenset[int]) -> list[Node]:
    b = base_of(n)
    if id(b) in inline:
        return _reads(b, set(), inline)
    return [] if b.op is Op.CONST else [b]


def partition(fg: FusedGraph) -> KernelGraph:
    """Assign buffers to every group boundary and name the kernels k0, k1, ... in order."""
    g = fg.graph
    buffers: dict[int, Buffer] = {}
    for n in g.inputs:
        buffers[id(n)] = Buffer(n.attr("name"), n.dtype, n.shape, "input")
    out_names: dict[int, str] = {}
    for name, n in g.outputs:
        out_names.setdefault(id(n), name)
    kernels: list[Kernel] = []
    final: dict[int, Buffer] = {}
    tmp = 0
    for i, grp in enumerate(fg.groups):
        members = {id(m) for m in grp.nodes}
        reads: list[Node] = _leaf_reads(grp.outputs[0], fg.inline) if grp.kind == "copy" else []
        for m in grp.nodes:
            reads.extend(_reads(m, members, fg.inline))
        ins: list[Buffer] = []
        for r in reads:
            if id(r) not in buffers:
                raise RuntimeError(f"kernel {i} reads {r!r} before any kernel writes it")
            if buffers[id(r)] not in ins:
                ins.append(buffers[id(r)])
        outs: list[Buffer] = []
        for o in grp.outputs:
            if id(o) in out_names:
                buf = Buffer(out_names[id(o)], o.dtype, o.shape, "output")
            else:
                buf = Buffer(f"t{tmp}", o.dtype, o.shape, "temp")
                tmp += 1
            if id(o) in buffers:  # a copy of a graph input: keep reading the input itself
                final[id(o)] = buf
            else:
                buffers[id(o)] = buf
            outs.append(buf)
        kernels.append(Kernel(f"k{i}_{grp.name}", grp, tuple(ins), tuple(outs)))
    outputs = [(name, final.get(id(n), buffers[id(n)])) for name, n in g.outputs]
    return KernelGraph(g, kernels, buffers, fg.inline, outputs)
