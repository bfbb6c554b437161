"""A graph: named inputs, named outputs, and the nodes between them. Its key is the sha256 of
its canonical text form, so it is the same in every process."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from . import dims
from .dims import DynParam, DynamicSizeError
from .ops import Node, Op, VerifyError, make, toposort
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
        self._check_params()

    def _check_params(self) -> None:
        """Every dynamic parameter a node reads is one dim of some input on its own (so a call's input
        shapes bind it), declared with one range throughout the graph."""
        try:
            used = dims.params_of(v for n in self.nodes for v in (n.shape, *(a for _, a in n.arg)))
        except DynamicSizeError as err:
            raise VerifyError(f"graph {self.name}: {err}") from None
        unbound = sorted(set(used) - set(self.bare_dims))
        if unbound:
            raise VerifyError(f"graph {self.name}: dynamic parameters {unbound} are no input's dim on their own; "
                              "each needs an input dim that is exactly the parameter, so calls can bind it")

    @cached_property
    def bare_dims(self) -> dict[str, list[tuple[str, int]]]:
        """Dynamic parameter -> the (input name, axis) pairs whose size is exactly that parameter."""
        out: dict[str, list[tuple[str, int]]] = {}
        for n in self.inputs:
            for axis, d in enumerate(n.shape):
                if dims.is_dynamic(d) and d.poly == (((d.names[0],), 1),):
                    out.setdefault(d.names[0], []).append((n.attr("name"), axis))
        return out

    @cached_property
    def params(self) -> dict[str, DynParam]:
        """The graph's dynamic parameters by name, sorted (empty for a static graph)."""
        found = dims.params_of(n.shape for n in self.inputs)
        return {k: found[k] for k in sorted(found)}

    @property
    def is_dynamic(self) -> bool:
        return bool(self.params)

    def sizes_of(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
        """The value of each dynamic parameter read from input shapes (input name -> shape): every input
        dim that is the parameter must agree, and the value must be in range (DynamicSizeError naming the
        parameter and the inputs otherwise)."""
        sizes: dict[str, int] = {}
        seen: dict[str, str] = {}
        for name, places in self.bare_dims.items():
            for inp, axis in places:
                shape = shapes.get(inp)
                if shape is None or axis >= len(shape):
                    continue  # a missing input or a wrong rank is the shape check's to report
                v = int(shape[axis])
                where = f"input {inp} dim {axis}"
                if name in sizes and sizes[name] != v:
                    raise DynamicSizeError(f"dynamic size {name} is {sizes[name]} in {seen[name]} but {v} in "
                                           f"{where}; every input dim declared {name} must have the same size")
                self.params[name].check(v, where)
                sizes.setdefault(name, v)
                seen.setdefault(name, where)
        return sizes

    def at(self, sizes: Mapping[str, int]) -> Graph:
        """The same graph with its dynamic parameters bound to `sizes` (each in range): shapes stay
        symbolic, their int values become these (what the reference and each size bucket compute with)."""
        for k, v in sizes.items():
            if k in self.params:
                self.params[k].check(int(v))
        return self._rebuilt(lambda v: dims.rebind(v, sizes))

    def freeze(self, sizes: Mapping[str, int]) -> Graph:
        """The graph with the dynamic parameters in `sizes` made static (a static graph once all are)."""
        for k, v in sizes.items():
            if k in self.params:
                self.params[k].check(int(v))
        return self._rebuilt(lambda v: dims.freeze(v, sizes))

    def _rebuilt(self, fn: Any) -> Graph:
        if not self.params:
            return self
        new: dict[int, Node] = {}
        for n in list(self.inputs) + self.nodes:
            if id(n) in new:
                continue
            attrs = {k: fn(v) for k, v in n.arg}
            if n.op in (Op.INPUT, Op.CONST):  # their type lives in the node, not in its attributes
                attrs.update(dtype=n.dtype, shape=fn(n.shape))
            new[id(n)] = make(n.op, [new[id(s)] for s in n.src], **attrs)
        return Graph(self.name, tuple((k, new[id(n)]) for k, n in self.outputs), tuple(new[id(n)] for n in self.inputs))

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
