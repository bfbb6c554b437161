"""Compiling a graph with dynamic sizes once, for every value in range.

Each dynamic parameter's range is cut into size buckets (upper ends at the powers of two by default,
or at user-given sizes, and at the range's top). The pass pipeline runs once per bucket, on the graph
bound at the bucket's upper end: the passes decide on symbolic shape equality and expression costs
only, and the kernel grouping, names and code keys must come out the same in every bucket (checked:
a CompileError otherwise). Each kernel then gets a config per bucket (database by bucket key, cost
model, family default at the bucket's size), and each distinct (kernel, config) is built once: its
code takes every dynamic size as a run-time argument, and it is rendered at both ends of the range
first, so code that baked a value in is refused (StaticSizeRequired) instead of running wrong.
A call reads the sizes from its inputs, picks the bucket and runs that bucket's kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .compiled import CompiledGraph, CompiledKernel, CompileError
from .ir.buckets import Buckets, all_edges, bucket_graphs, bucket_of
from .ir.dims import DynamicSizeError
from .ir.graph import Graph
from .kernels import KernelSpec, graph_specs
from .kernels.base import StaticSizeRequired
from .schedule.config import Config
from .schedule.target import Target

Choose = Callable[[KernelSpec], "tuple[Config, str]"]
Build = Callable[[KernelSpec, Config, str], CompiledKernel]


@dataclass
class Bucket:
    """One size bucket: each parameter's (name, lo, hi), the graph compiled at its upper ends."""

    ranges: tuple[tuple[str, int, int], ...]
    compiled: CompiledGraph

    def label(self) -> str:
        return ", ".join(f"{n}={lo}" if lo == hi else f"{n}={lo}..{hi}" for n, lo, hi in self.ranges)


class DynamicCompiledGraph(CompiledGraph):
    """A graph compiled once for every value of its dynamic sizes: one bucket per size range, each with its
    kernels' configs; kernels with equal code and config share one binary. Calls pick the bucket."""

    def __init__(self, graph: Graph, target: Target, edges: dict[str, list[int]], buckets: list[Bucket]):
        hint = {k: p.probe for k, p in graph.params.items()}
        shown = buckets[self._index(edges, hint)].compiled
        super().__init__(graph, target, shown.pipeline, shown.kernels)
        self.edges = edges
        self.buckets = buckets

    @staticmethod
    def _index(edges: Mapping[str, Sequence[int]], sizes: Mapping[str, int]) -> int:
        index = 0
        for name in sorted(edges):  # buckets are the product of each parameter's, in name order
            index = index * len(edges[name]) + bucket_of(edges[name], int(sizes[name]))
        return index

    def bucket(self, sizes: Mapping[str, int]) -> Bucket:
        """The bucket serving `sizes` (each parameter checked against its range)."""
        for k, p in self.graph.params.items():
            if k not in sizes:
                raise DynamicSizeError(f"{self.graph.name}: no value for the dynamic size {k}")
            p.check(int(sizes[k]))
        return self.buckets[self._index(self.edges, sizes)]

    def run(self, inputs: Mapping[str, Any], poison: bool = False) -> dict[str, Any]:
        """Run the bucket of the sizes the inputs have (see CompiledGraph.run)."""
        from .codegen import executors
        from .codegen.input_check import check_inputs
        from .deps import require

        sizes = check_inputs(self.graph, self.target.backend, inputs)
        if self.target.backend == "triton":
            require("torch", f"running a graph compiled for target {self.target.name!r}")
        return executors.run(self.bucket(sizes).compiled, dict(inputs), poison, sizes)

    def distinct_kernels(self) -> list[CompiledKernel]:
        """Every built kernel once (a kernel's buckets that share a config share it)."""
        seen: dict[int, CompiledKernel] = {}
        for b in self.buckets:
            for ck in b.compiled.kernels:
                seen.setdefault(id(ck), ck)
        return list(seen.values())


def _grouping(specs: list[KernelSpec]) -> list[tuple[str, str, str]]:
    return [(s.name, s.family, s.code_key) for s in specs]


def _check_grouping(g: Graph, want: list[tuple[str, str, str]], specs: list[KernelSpec], label: str) -> None:
    got = _grouping(specs)
    if got != want:
        diff = next((f"{w[0]}'s workload differs" if w[:2] == h[:2] else f"{w[0]} ({w[1]}) vs {h[0]} ({h[1]})"
                     for w, h in zip(want, got) if w != h), f"{len(want)} vs {len(got)} kernels")
        raise CompileError(f"{g.name}: the kernels at {label} differ from those at the bottom of the range "
                           f"({diff}): a pass or family decided on a dynamic size's value; make the size static")


def _source(spec: KernelSpec, config: Config, tgt: Target) -> str:
    if tgt.backend == "tvm":
        from .codegen import tvm_runtime

        return tvm_runtime.source(spec, config)
    return spec.render_triton(config, interpret=tgt.kind == "interp")


def _check_value_independent(lo: KernelSpec, hi: KernelSpec, config: Config, tgt: Target) -> None:
    """StaticSizeRequired unless `config`'s code is the same at the bottom and the top of the range (a
    template that used a dynamic size's current value as a number would differ)."""
    a, b = _source(lo, config, tgt).splitlines(), _source(hi, config, tgt).splitlines()
    if a != b:
        line = next((f"{x.strip()!r} vs {y.strip()!r}" for x, y in zip(a, b) if x != y), "lengths differ")
        names = ", ".join(lo.size_params())
        raise StaticSizeRequired(f"{lo.name} ({lo.family}, {tgt.backend}): its code depends on the value of the "
                                 f"dynamic size {names} (first difference between the ends of the range: {line}); "
                                 f"this template needs {names} static (declare it static, or bind it with --set)")


def compile_dynamic(g: Graph, tgt: Target, choose: Choose, build: Build,
                    buckets: Buckets = None) -> DynamicCompiledGraph:
    """Compile `g` once for every value of its dynamic sizes (module docstring): `choose(spec)` gives a
    kernel's config and its source in a bucket, `build(spec, config, source)` builds it (once per
    distinct code and config). `buckets`: the upper ends of the size buckets, for every parameter or
    per parameter name (default: powers of two)."""
    edges = all_edges(g, buckets)
    ends = _Ends(g, tgt)
    want = _grouping(ends.specs({n: p.lo for n, p in g.params.items()}))
    _check_grouping(g, want, ends.specs({n: p.hi for n, p in g.params.items()}), "the top of the range")
    chosen: list[tuple[Bucket, list[tuple[KernelSpec, Config, str]]]] = []
    spans: dict[tuple[str, str], list[tuple[tuple[str, int, int], ...]]] = {}
    for ranges, gb in bucket_graphs(g, edges):
        pipeline, specs = graph_specs(gb, tgt.backend, ranges)
        bucket = Bucket(ranges, CompiledGraph(gb, tgt, pipeline, []))
        _check_grouping(g, want, specs, bucket.label())
        picks = []
        for spec in specs:
            config, source = choose(spec)
            picks.append((spec, config, source))
            spans.setdefault((spec.code_key, config.to_json()), []).append(ranges)
        chosen.append((bucket, picks))
    built: dict[tuple[str, str], CompiledKernel] = {}
    for bucket, picks in chosen:
        for i, (spec, config, source) in enumerate(picks):
            key = (spec.code_key, config.to_json())
            if key not in built:
                if spec.size_params():
                    lo, hi = _span(spans[key])
                    _check_value_independent(ends.specs(lo)[i], ends.specs(hi)[i], config, tgt)
                built[key] = build(spec, config, source)
            bucket.compiled.kernels.append(built[key])
    return DynamicCompiledGraph(g, tgt, edges, [b for b, _ in chosen])


def _span(buckets: list[tuple[tuple[str, int, int], ...]]) -> tuple[dict[str, int], dict[str, int]]:
    """The lowest and highest value of each parameter over the buckets one binary serves: its code must be
    the same at both (a config legal only in small buckets, e.g. a decode schedule, is checked there only)."""
    lo: dict[str, int] = {}
    hi: dict[str, int] = {}
    for ranges in buckets:
        for name, a, b in ranges:
            lo[name] = min(lo.get(name, a), a)
            hi[name] = max(hi.get(name, b), b)
    return lo, hi


class _Ends:
    """The graph's kernel specs with the dynamic sizes bound to given values (cached per values)."""

    def __init__(self, g: Graph, tgt: Target):
        self.g, self.tgt = g, tgt
        self.cache: dict[tuple[tuple[str, int], ...], list[KernelSpec]] = {}

    def specs(self, sizes: Mapping[str, int]) -> list[KernelSpec]:
        key = tuple(sorted(sizes.items()))
        if key not in self.cache:
            self.cache[key] = graph_specs(self.g.at(dict(sizes)), self.tgt.backend, None)[1]
        return self.cache[key]
