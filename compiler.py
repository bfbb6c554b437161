"""tilefuse.compile: graph -> pass pipeline -> kernel specs -> configs -> built kernels -> a callable."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

from .schedule.config import Config
from .schedule.target import Target, get_target
from .deps import available, require
from .errors import RuntimeUnavailable, TilefuseError  # noqa: F401 - RuntimeUnavailable re-exported
from .compiled import CompiledGraph, CompiledKernel, CompileError
from .compiler_dynamic import compile_dynamic
from .ir.graph import as_graph
from .kernels import KernelSpec, fusion_rules, spec_for
from .passes import run_pipeline

log = logging.getLogger(__name__)


class CompileOptionError(TilefuseError, TypeError):
    """`tilefuse.compile` called with keyword arguments it does not take (a TypeError, as Python's own)."""


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
    from .settings import costmodel_to_load, get_settings

    src = ConfigSources()
    if target.kind == "interp":  # interpreter timings say nothing about a device
        return src
    st = get_settings()
    if db is not None:
        src.db = _open_db(st.db_url if db == "auto" else db, auto=db == "auto")
        if src.db is not None:
            from .autotune.device import device_for_target

            src.device = device_for_target(target.name)
    if cost_model == "auto":
        cost_model = costmodel_to_load(st)  # warns once when TILEFUSE_COSTMODEL names no model
    if cost_model is not None:
        from .costmodel.models import load_model

        src.model = load_model(cost_model) if isinstance(cost_model, (str, Path)) else cost_model
        if src.device is None:
            from .autotune.device import device_for_target

            src.device = device_for_target(target.name)
    return src


def _open_db(db: Any, auto: bool) -> Any:
    """The tuning database `db` (a URL or an open TuningDB); with `auto`, None when nothing was tuned yet."""
    if not isinstance(db, str):
        return db
    # A bare install (no sqlalchemy) has tuned nothing, so the default database missing is the common
    # case: compile without it rather than ask for the [tune] extra. A database that is there is read.
    if auto and not available("sqlalchemy") and not _sqlite_file_may_exist(db):
        return None
    require("sqlalchemy", f"reading the tuning database {db}")
    from .autotune.database import MissingDatabaseError, TuningDB

    if not auto:
        return TuningDB(db, create=False)
    try:
        return TuningDB(db, create=False)
    except MissingDatabaseError:  # nothing tuned yet
        return None


def _sqlite_file_may_exist(url: str) -> bool:
    """False only for a sqlite:/// URL whose file is absent (TuningDB decides everything else)."""
    prefix = "sqlite:///"
    return not url.startswith(prefix) or Path(url[len(prefix):]).exists()


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
                  aot: bool = True, db: Any = "auto", cost_model: Any = "auto",
                  constants: Mapping[str, Any] | None = None,
                  buckets: Sequence[int] | Mapping[str, Sequence[int]] | None = None) -> CompiledGraph:
    """Compile `graph` for `target` ("cpu", "interp", "sm_80", "sm_90").

    Each kernel's config comes from `configs` (by kernel name), else the tuning database `db`
    (exact device, then same arch), else `cost_model`, else the family default; see choose_config.
    `constants` (input name -> array) are fixed at compile time and bound at every run; a sparse operand
    built from constants gets its format chosen from its pattern (sparse_plan.py).
    A graph with dynamic sizes compiles once for all of them (compiler_dynamic.py), with a config per
    size bucket: `buckets` are the buckets' upper ends (default: powers of two)."""
    g = as_graph(graph)
    tgt = get_target(target)
    if tgt.kind == "interp":
        ensure_interpreter()
    require_backend(tgt)
    sources = open_sources(tgt, db, cost_model)
    consts: dict[str, Any] = {}
    patterns: list[Any] = []
    if constants:
        if g.is_dynamic:
            raise CompileOptionError(f"compile: constants= needs static sizes; {g.name} has dynamic parameters "
                                     f"{sorted(g.params)} (bind them, e.g. with --set)")
        from .sparse_plan import check_constants, plan

        g, consts, patterns = plan(g, check_constants(g, constants), tgt, sources, _legal_candidates)

    def choose(spec: KernelSpec) -> tuple[Config, str]:
        return choose_config(spec, tgt, configs, sources)

    def build(spec: KernelSpec, config: Config, source: str) -> CompiledKernel:
        t0 = time.perf_counter()
        ck = _build(spec, config, source, tgt, aot)
        ck.build_seconds = time.perf_counter() - t0
        return ck

    if g.is_dynamic:
        dyn = compile_dynamic(g, tgt, choose, build, buckets)
        check_config_names(configs, {k.spec.name for b in dyn.buckets for k in b.compiled.kernels}, g.name)
        return dyn
    if buckets is not None:
        raise CompileOptionError(f"compile: buckets= is for graphs with dynamic sizes; {g.name} has none")
    pipeline = run_pipeline(g, fusion_rules())
    kg = pipeline.kernels
    specs = [spec_for(kg, k, tgt.backend) for k in kg.kernels]
    check_config_names(configs, {spec.name for spec in specs}, g.name)
    compiled = [build(spec, *choose(spec)) for spec in specs]
    return CompiledGraph(g, tgt, pipeline, compiled, consts, tuple(patterns))


def check_config_names(configs: Mapping[str, Config] | None, names: set[str], graph: str) -> None:
    """CompileOptionError when `configs` names a kernel the graph does not have: a misspelt name would
    otherwise leave that kernel on its default config without a word."""
    unknown = sorted(set(configs or {}) - names)
    if unknown:
        raise CompileOptionError(f"compile: configs= names kernel{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(unknown)}, which {graph} does not have; its kernels: "
                                 f"{', '.join(sorted(names))}")


def require_backend(tgt: Target) -> None:
    """MissingDependency (naming the extra) unless the backend that builds kernels for `tgt` is installed."""
    if tgt.backend == "tvm":
        require("tvm", f"target {tgt.name!r} (the TVM CPU backend)")
    else:
        require("triton", f"target {tgt.name!r} (Triton)")


def check_compile_options(options: Mapping[str, Any]) -> None:
    """CompileOptionError naming every keyword that compile_graph does not take (and those it does)."""
    import inspect

    accepted = [n for n in inspect.signature(compile_graph).parameters if n not in ("graph", "target")]
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        raise CompileOptionError(f"compile: unknown keyword argument{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(unknown)}; accepted: target, {', '.join(accepted)}")


def check_against_reference(cg: CompiledGraph, seed: int = 0, inputs: Mapping[str, Any] | None = None
                            ) -> list[tuple[str, float, float, bool]]:
    """Run `cg` with poisoned outputs on `inputs` (default: fresh random ones drawn with `seed`) and
    compare each output with the numpy reference: (output, max error, bound, ok) each."""
    import numpy as np

    from .ir import dtypes as dt
    from .ir.reference import evaluate
    from .ir.sampling import random_inputs

    ins = dict(inputs) if inputs is not None else random_inputs(cg.graph, seed)
    outs = cg.run(ins, poison=True)
    ref = evaluate(cg.graph, ins)
    rows = []
    for name, node in cg.graph.outputs:
        got = outs[name]
        if hasattr(got, "detach"):
            got = got.detach().cpu().float().numpy() if node.dtype.is_float else got.detach().cpu().numpy()
        got = np.asarray(got, dtype=np.float64)
        rtol, atol = dt.tolerance(node.dtype)
        scale = float(np.max(np.abs(ref[name]))) if ref[name].size else 1.0
        err = float(np.max(np.abs(got - ref[name]))) if got.size else 0.0
        bound = atol * max(1.0, scale) + rtol * scale
        rows.append((name, err, bound, bool(np.isfinite(err) and err <= bound)))
    return rows


def _build(spec: KernelSpec, config: Config, source: str, tgt: Target, aot: bool) -> CompiledKernel:
    if tgt.kind == "cpu":
        from .codegen import tvm_runtime
        from .codegen.cache import default_cache

        mod = tvm_runtime.build(spec, config, default_cache())
        return CompiledKernel(spec, config, source, tvm_runtime.source(spec, config), runner=mod,
                              cached=bool(getattr(mod, "from_cache", False)))
    spec.launch_plan(config)  # checks every launch's grid: a launch CUDA refuses fails before any build
    text = spec.render_triton(config, interpret=tgt.kind == "interp")
    ck = CompiledKernel(spec, config, source, text)
    if tgt.kind == "cuda" and aot:
        ck.binaries[tgt.name] = build_aot(spec, config, text, tgt)
        ck.cached = all(getattr(b, "from_cache", False) for b in ck.binaries[tgt.name].values())
    return ck


def build_aot(spec: KernelSpec, config: Config, text: str, tgt: Target) -> dict[str, Any]:
    """Cubins for every jitted function the kernel's launch plan launches on `tgt` (function name ->
    binary), each with its own launch's signature, constexprs and options."""
    from .codegen.aot import build_triton
    from .codegen.cache import default_cache

    plan = spec.launch_plan(config)
    out = {}
    for fn in plan.functions():
        ln = plan.launch_of(fn)
        sig = ln.signature()
        pointers = tuple(k for k, t in sig.items() if t.startswith("*"))  # never a dynamic size's value
        out[fn] = build_triton(text, fn, sig, dict(ln.constexprs), arch=tgt.arch, num_warps=ln.num_warps,
                               num_stages=ln.num_stages, divisible_by_16=pointers, cache=default_cache())
    return out
