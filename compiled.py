"""What `tilefuse.compile` returns: CompiledKernel (a spec, its config and binaries) and CompiledGraph
(the callable). A graph with dynamic sizes compiles to compiler_dynamic.DynamicCompiledGraph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping

from .deps import require
from .errors import TilefuseError
from .ir.graph import Graph
from .kernels import KernelSpec
from .passes import PipelineResult
from .schedule.config import Config
from .schedule.target import Target


class CompileError(TilefuseError, RuntimeError):
    """A graph that cannot be compiled for the requested target."""


@dataclass
class CompiledKernel:
    """One kernel: its spec, chosen config (and where it came from), source and binaries."""

    spec: KernelSpec
    config: Config
    # "given" | "database: this device (...)" | "database: same arch (...)" | "cost model (...)" | "default"
    config_source: str
    source: str
    binaries: dict[str, Any] = field(default_factory=dict)  # arch name -> TritonBinary (AOT targets)
    build_seconds: float = 0.0
    cached: bool = False
    runner: Any = None  # backend callable (TVM module / jitted Triton function)


class CompiledGraph:
    """A compiled graph: call it with inputs (positional in declaration order, or by name)."""

    def __init__(self, graph: Graph, target: Target, pipeline: PipelineResult, kernels: list[CompiledKernel],
                 constants: Mapping[str, Any] | None = None, patterns: tuple[Any, ...] = ()):
        self.graph = graph
        self.target = target
        self.pipeline = pipeline
        self.kernels = kernels
        # compile-time constants (sparse_plan.py): bound at every run, never passed by the caller
        self.constants = dict(constants or {})
        self.patterns = patterns  # sparse_plan.PatternDecision per constant sparse operand
        self.input_names = [n.attr("name") for n in graph.inputs if n.attr("name") not in self.constants]
        self.output_names = [name for name, _ in graph.outputs]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run on inputs given positionally (declaration order) or by name; one output, or a tuple."""
        from .codegen.input_check import InputTypeError

        if len(args) > len(self.input_names):
            raise InputTypeError(f"{self.graph.name} takes {len(self.input_names)} inputs ({self.input_names}), "
                                 f"got {len(args)}")
        inputs = dict(zip(self.input_names, args))
        for k, v in kwargs.items():
            if k in inputs:
                raise InputTypeError(f"{self.graph.name}: input {k!r} given twice (positionally and by name)")
            inputs[k] = v
        outs = self.run(inputs)
        res = tuple(outs[n] for n in self.output_names)
        return res[0] if len(res) == 1 else res

    def run(self, inputs: Mapping[str, Any], poison: bool = False) -> dict[str, Any]:
        """Run every kernel; `poison` fills outputs and temporaries with NaN / 0x7f.. first, so
        an element a kernel fails to write cannot pass a comparison. Inputs are checked first
        (codegen/input_check.py: InputTypeError / InputValueError name the input)."""
        from .codegen import executors
        from .codegen.input_check import check_inputs

        inputs = {**inputs, **self.constants}
        sizes = check_inputs(self.graph, self.target.backend, inputs)
        if self.target.backend == "triton":
            require("torch", f"running a graph compiled for target {self.target.name!r}")
        return executors.run(self, inputs, poison, sizes)

    def report(self) -> str:
        from .report import format_report

        return format_report(self)
