"""tilefuse.compile: graph -> pass pipeline -> kernel specs -> configs -> built kernels -> a callable."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from .schedule.config import Config
from .schedule.target import Target, get_target
from .errors import RuntimeUnavailable, TilefuseError  # noqa: F401 - RuntimeUnavailable re-exported
from .ir.graph import Graph, as_graph
from .ir.limits import check_grid
from .kernels import KernelSpec, spec_for
from .passes import PipelineResult, run_pipeline

log = logging.getLogger(__name__)


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


@dataclass
class ConfigSources:
    """Where configs may come from besides the family default: a tuning database, the device
    whose records to prefer, and a trained cost model."""

    db: Any = None  # autotune.database.TuningDB
    device: Any = None  # autotune.device.Device
    model: Any = None  # costmodel.models.CostModel
    candidates: int = 256  # legal configs the cost model ranks


def open_sources(target: Target, db: Any = "auto", cost_model: Any = "auto") -> ConfigSources:
    """The database and cost model `compile` consults. "auto" opens the default database and model
    only if they already exist (compiling never creates them); None disables each."""
    from .settings import get_settings

    src = ConfigSources()
    if target.kind == "interp":  # interpreter timings say nothing about a device
        return src
    st = get_settings()
    if db is not None:
        from .autotune.database import MissingDatabaseError, TuningDB
        from .autotune.device import device_for_target

        if db == "auto":
            try:
                src.db = TuningDB(st.db_url, create=False)
            except MissingDatabaseError:  # nothing tuned yet
                pass
        else:
            src.db = TuningDB(db, create=False) if isinstance(db, str) else db
        if src.db is not None:
            src.device = device_for_target(target.name)
    if cost_model == "auto":
        cost_model = st.model_dir if (st.model_dir / "meta.json").exists() else None
    if cost_model is not None:
        from .costmodel.models import load_model

        src.model = load_model(cost_model) if isinstance(cost_model, (str, Path)) else cost_model
        if src.device is None:
            from .autotune.device import device_for_target

            src.device = device_for_target(target.name)
    return src


def _legal_candidates(spec: KernelSpec, target: Target, n: int) -> list[Config]:
    """Up to `n` legal configs of the knob space, drawn with a fixed seed (deterministic)."""
    import itertools
    import random

    space = spec.knob_space(target)
    names = sorted(space)
    total = 1
    for k in names:
        total *= len(space[k])
    rng = random.Random(0)
    if total <= 4 * n:
        pool = [Config(dict(zip(names, vals))) for vals in itertools.product(*(space[k] for k in names))]
    else:
        pool = [Config({k: rng.choice(space[k]) for k in names}) for _ in range(8 * n)]
    out: list[Config] = []
    for c in pool:
        if c not in out and not spec.constraints(c, target):
            out.append(c)
    rng.shuffle(out)
    return sorted(out[:n], key=lambda c: c.to_json())


def _best_legal(spec: KernelSpec, target: Target, records: list[Any]) -> tuple[Any, float] | None:
    """The fastest verified record whose config is still legal (knob spaces change over time), and its
    time (records.ranked: drift-corrected where the runner paired it with the reference)."""
    from .schedule.records import ranked

    for t, rec in ranked(records):
        problems = spec.check_problems(Config(rec.config), target)
        if not problems:
            return rec, t
        log.warning("%s: stored config %s is no longer legal (%s); skipping it", spec.name,
                    Config(rec.config).to_json(), "; ".join(problems))
    return None


def choose_config(spec: KernelSpec, target: Target, configs: Mapping[str, Config] | None,
                  sources: ConfigSources | None = None) -> tuple[Config, str]:
    """The config for a kernel, in order: given by name; the database's best on this exact device;
    the best on the same architecture; the cost model's pick; the family default."""
    if configs and spec.name in configs:
        return spec.check(Config(configs[spec.name]), target), "given"
    src = sources or ConfigSources()
    if src.db is not None and src.device is not None:
        for how, kw in (("database: this device", {"device_key": src.device.key}),
                        ("database: same arch", {"arch": src.device.arch})):
            hit = _best_legal(spec, target, src.db.records(workload_key=spec.key, status="ok", **kw))
            if hit is not None:
                rec, seconds = hit
                name = rec.device.get("name", "?")
                return Config(rec.config), f"{how} ({name}, {seconds * 1e6:.1f} us)"
    if src.model is not None and src.device is not None:
        from .costmodel.features import featurize

        cands = _legal_candidates(spec, target, src.candidates)
        if cands:
            scores = src.model.predict([featurize(spec, c, src.device) for c in cands])
            best = max(range(len(cands)), key=lambda i: (float(scores[i]), -i))
            return cands[best], f"cost model ({getattr(src.model, 'name', type(src.model).__name__)})"
    return spec.check(spec.default_config(target), target), "default"


def compile_graph(graph: Any, target: str | Target = "cpu", configs: Mapping[str, Config] | None = None,
                  aot: bool = True, db: Any = "auto", cost_model: Any = "auto") -> CompiledGraph:
    """Compile `graph` for `target` ("cpu", "interp", "sm_80", "sm_90").

    Each kernel's config comes from `configs` (by kernel name), else the tuning database `db`
    (exact device, then same arch), else `cost_model`, else the family default; see choose_config."""
    g = as_graph(graph)
    tgt = get_target(target)
    if tgt.kind == "interp":
        ensure_interpreter()
    pipeline = run_pipeline(g)
    kg = pipeline.kernels
    sources = open_sources(tgt, db, cost_model)
    compiled: list[CompiledKernel] = []
    for kernel in kg.kernels:
        spec = spec_for(kg, kernel, tgt.backend)
        config, source = choose_config(spec, tgt, configs, sources)
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
    check_grid(spec.grid(config), spec.name)  # a launch CUDA refuses: say so before building anything
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

    sig = spec.triton_signature(config)
    fns = [spec.name] + ([f"{spec.name}_finish"] if "ws" in sig else [])
    out = {}
    for fn in fns:
        out[fn] = build_triton(text, fn, sig, spec.triton_constexprs(config), arch=tgt.arch,
                               num_warps=config.int("num_warps"), num_stages=config.int("num_stages"),
                               divisible_by_16=tuple(sig), cache=default_cache())
    return out
