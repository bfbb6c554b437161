"""tilefuse.compile: graph -> pass pipeline -> kernel specs -> configs -> built kernels -> a callable."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping

from .autotune.config import Config
from .autotune.target import Target, get_target
from .ir.graph import Graph
from .kernels import KernelSpec, spec_for
from .passes import PipelineResult, run_pipeline

log = logging.getLogger(__name__)


class CompileError(RuntimeError):
    """A graph that cannot be compiled for the requested target."""


class RuntimeUnavailable(RuntimeError):
    """A compiled graph that cannot run here (e.g. an sm_90 build on a machine without a GPU)."""


@dataclass
class CompiledKernel:
    """One kernel: its spec, chosen config (and where it came from), source and binaries."""

    spec: KernelSpec
    config: Config
    config_source: str  # "default" | "given" | later: "database (device)", "database (arch)", "cost model"
    source: str
    binaries: dict[str, Any] = field(default_factory=dict)  # arch name -> TritonBinary (AOT targets)
    build_seconds: float = 0.0
    cached: bool = False
    runner: Any = None  # backend callable (TVM module / jitted Triton function)


def ensure_interpreter() -> None:
    """Make Triton run kernels under its interpreter; it must be chosen before triton is imported."""
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
        return
    import triton.language.standard as standard
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(standard.zeros, InterpretedFunction):
        raise CompileError("target 'interp' needs the Triton interpreter, but triton was already imported without "
                           "TRITON_INTERPRET=1; set TRITON_INTERPRET=1 in the environment (or compile for 'interp' "
                           "before importing triton)")


def _as_graph(g: Any) -> Graph:
    if isinstance(g, Graph):
        return g
    if hasattr(g, "build"):
        return g.build()
    raise CompileError(f"expected a Graph or GraphBuilder, got {type(g).__name__}")


def _triton_signature(spec: KernelSpec, config: Config) -> dict[str, str]:
    from .ir import dtypes as dt

    sig = {}
    for name, buf in zip(spec.arg_names(), spec.inputs + spec.outputs):
        sig[name] = "*" + dt.triton_sig(buf.dtype)
    if getattr(spec, "workspace_shape", lambda c: None)(config) is not None:
        sig["ws"] = "*fp32"
    return sig


class CompiledGraph:
    """A compiled graph: call it with inputs (positional in declaration order, or by name)."""

    def __init__(self, graph: Graph, target: Target, pipeline: PipelineResult, kernels: list[CompiledKernel]):
        self.graph = graph
        self.target = target
        self.pipeline = pipeline
        self.kernels = kernels
        self.input_names = [n.attr("name") for n in graph.inputs]
        self.output_names = [name for name, _ in graph.outputs]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) > len(self.input_names):
            raise TypeError(f"{self.graph.name} takes {len(self.input_names)} inputs ({self.input_names}), "
                            f"got {len(args)}")
        inputs = dict(zip(self.input_names, args))
        for k, v in kwargs.items():
            if k in inputs:
                raise TypeError(f"input {k!r} given twice")
            inputs[k] = v
        outs = self.run(inputs)
        res = tuple(outs[n] for n in self.output_names)
        return res[0] if len(res) == 1 else res

    def run(self, inputs: Mapping[str, Any], poison: bool = False) -> dict[str, Any]:
        """Run every kernel; `poison` fills outputs and temporaries with NaN / 0x7f.. first, so
        an element a kernel fails to write cannot pass a comparison."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise TypeError(f"{self.graph.name}: missing inputs {missing}")
        for n in self.graph.inputs:
            x = inputs[n.attr("name")]
            if tuple(x.shape) != n.shape:
                raise ValueError(f"input {n.attr('name')}: expected shape {list(n.shape)}, got {list(x.shape)}")
        from .codegen import executors

        return executors.run(self, dict(inputs), poison)

    def report(self) -> str:
        from .report import format_report

        return format_report(self)


def choose_config(spec: KernelSpec, target: Target, configs: Mapping[str, Config] | None) -> tuple[Config, str]:
    """The config for a kernel: an explicit one (by kernel name) or the family default."""
    if configs and spec.name in configs:
        return spec.check(Config(configs[spec.name]), target), "given"
    return spec.check(spec.default_config(target), target), "default"


def compile_graph(graph: Any, target: str | Target = "cpu", configs: Mapping[str, Config] | None = None,
                  aot: bool = True) -> CompiledGraph:
    """Compile `graph` for `target` ("cpu", "interp", "sm_80", "sm_90")."""
    g = _as_graph(graph)
    tgt = get_target(target)
    if tgt.kind == "interp":
        ensure_interpreter()
    pipeline = run_pipeline(g)
    kg = pipeline.kernels
    compiled: list[CompiledKernel] = []
    for kernel in kg.kernels:
        spec = spec_for(kg, kernel, tgt.backend)
        config, source = choose_config(spec, tgt, configs)
        t0 = time.perf_counter()
        ck = _build(spec, config, source, tgt, aot)
        ck.build_seconds = time.perf_counter() - t0
        compiled.append(ck)
    return CompiledGraph(g, tgt, pipeline, compiled)


def _build(spec: KernelSpec, config: Config, source: str, tgt: Target, aot: bool) -> CompiledKernel:
    if tgt.kind == "cpu":
        from .codegen import tvm_runtime
        from .codegen.cache import default_cache

        mod = tvm_runtime.build(spec, config, default_cache())
        return CompiledKernel(spec, config, source, tvm_runtime.source(spec, config), runner=mod,
                              cached=bool(getattr(mod, "from_cache", False)))
    text = spec.render_triton(config, interpret=tgt.kind == "interp")
    ck = CompiledKernel(spec, config, source, text)
    if tgt.kind == "cuda" and aot:
        ck.binaries[tgt.name] = build_aot(spec, config, text, tgt)
        ck.cached = all(getattr(b, "from_cache", False) for b in ck.binaries[tgt.name].values())
    return ck


def build_aot(spec: KernelSpec, config: Config, text: str, tgt: Target) -> dict[str, Any]:
    """Cubins for every jitted function of the kernel's module on `tgt` (function name -> binary)."""
    from .codegen.aot import build_triton
    from .codegen.cache import default_cache

    sig = _triton_signature(spec, config)
    fns = [spec.name] + ([f"{spec.name}_finish"] if "ws" in sig else [])
    out = {}
    for fn in fns:
        out[fn] = build_triton(text, fn, sig, spec.triton_constexprs(config), arch=tgt.arch,
                               num_warps=config.int("num_warps"), num_stages=config.int("num_stages"),
                               divisible_by_16=tuple(sig), cache=default_cache())
    return out
