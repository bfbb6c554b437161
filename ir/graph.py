"""A graph: named inputs, named outputs, and the nodes between them. Its key is the sha256 of
its canonical text form, so it is the same in every process."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

from .ops import Node, Op, VerifyError, toposort
from .printer import format_graph


@dataclass(frozen=True)
class Graph:
    """An immutable computation: `outputs` are (name, node) pairs; inputs are found from them."""

    name: str
    outputs: tuple[tuple[str, Node], ...]
    # Inputs in declaration order; any input reachable from the outputs must be listed.
    inputs: tuple[Node, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise VerifyError(f"graph name {self.name!r} is not an identifier")
        names = [n for n, _ in self.outputs]
        if len(set(names)) != len(names):
            raise VerifyError(f"graph {self.name}: duplicate output names {names}")
        if not self.outputs:
            raise VerifyError(f"graph {self.name}: has no outputs")
        for name, n in self.outputs:
            if n.attr("results") is not None:
                raise VerifyError(f"graph {self.name}: output {name} is a {n.op.value} with {len(n.attr('results'))} "
                                  "results; output one through result(...) {index=i}")
        reachable = [n for n in self.nodes if n.op is Op.INPUT]
        declared = {id(n) for n in self.inputs}
        ordered = list(self.inputs) + [n for n in reachable if id(n) not in declared]
        in_names = [n.attr("name") for n in ordered]
        if len(set(in_names)) != len(in_names):
            raise VerifyError(f"graph {self.name}: two different inputs share a name in {in_names}")
        clash = sorted(set(in_names) & set(names))
        if clash:
            # Buffers are bound by name: an output named like an input would overwrite it before it is read.
            raise VerifyError(f"graph {self.name}: outputs {clash} have the names of inputs; inputs and outputs "
                              "need distinct names")
        object.__setattr__(self, "inputs", tuple(ordered))

    @cached_property
    def nodes(self) -> list[Node]:
        """Every node reachable from the outputs, operands first."""
        return toposort([n for _, n in self.outputs])

    @cached_property
    def users(self) -> dict[int, list[Node]]:
        """id(node) -> the nodes that use it as an operand (graph outputs are not listed)."""
        u: dict[int, list[Node]] = {id(n): [] for n in self.nodes}
        for n in self.nodes:
            for s in dict.fromkeys(n.src):
                u[id(s)].append(n)
        return u

    def input(self, name: str) -> Node:
        for n in self.inputs:
            if n.attr("name") == name:
                return n
        raise KeyError(f"graph {self.name} has no input {name!r}; inputs: {[n.attr('name') for n in self.inputs]}")

    def output(self, name: str) -> Node:
        for k, n in self.outputs:
            if k == name:
                return n
        raise KeyError(f"graph {self.name} has no output {name!r}")

    @cached_property
    def text(self) -> str:
        return format_graph(self)

    @cached_property
    def key(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def replace(self, outputs: tuple[tuple[str, Node], ...]) -> Graph:
        """The same graph with new output nodes; declared inputs stay, even unused, so the
        compiled callable keeps its signature."""
        return Graph(self.name, outputs, self.inputs)

    def __str__(self) -> str:
        return self.text


def as_graph(g: object) -> Graph:
    """`g` itself when it is a Graph, else the graph a builder (anything with `build()`) builds."""
    if isinstance(g, Graph):
        return g
    build = getattr(g, "build", None)
    if callable(build):
        built = build()
        if isinstance(built, Graph):
            return built
    raise VerifyError(f"expected a Graph or GraphBuilder, got {type(g).__name__}")
