"""Loading generated Triton source as a module and launching it on torch tensors (under the
interpreter on CPU, or JIT on a CUDA GPU)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from collections.abc import Callable, Mapping
from typing import Any

from ..fileio import write_atomic
from ..ir.limits import check_grid
from ..schedule.launch import LaunchPlan, Pending, jit_kwargs
from ..settings import get_settings

_LOCK = threading.Lock()
_MODULES: dict[tuple[str, bool], ModuleType] = {}


def source_dir() -> Path:
    """Where generated modules are written so Triton can read their source."""
    root = get_settings().cache_dir / "src"
    root.mkdir(parents=True, exist_ok=True)
    return root


def load_module(source: str, interpret: bool) -> ModuleType:
    """Import generated source (once per process and mode); `interpret` picks the Triton
    interpreter regardless of the TRITON_INTERPRET environment variable."""
    digest = hashlib.sha256(source.encode()).hexdigest()
    key = (digest, interpret)
    with _LOCK:
        hit = _MODULES.get(key)
        if hit is not None:
            return hit
        path = source_dir() / f"k_{digest[:24]}.py"
        if not path.exists() or path.read_text(encoding="utf-8") != source:
            write_atomic(path, source)
        name = f"tilefuse_generated_{digest[:24]}_{'interp' if interpret else 'jit'}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        from triton import knobs

        with knobs.runtime.scope():
            knobs.runtime.interpret = interpret
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        _MODULES[key] = mod
        return mod


def launch(fn: Any, grid: tuple[int, ...], args: list[Any], constexprs: dict[str, Any], options: dict[str, int],
           interpret: bool) -> Any:
    """Launch a jitted kernel (a LimitError first if `grid` is beyond CUDA's limits, under the interpreter
    too: its grid is the same program count); the interpreter ignores warps and stages."""
    grid = check_grid(grid, str(getattr(fn, "__name__", fn)))
    return fn[grid](*args, **jit_kwargs(constexprs, options, interpret))


def plan_launcher(mod: ModuleType, plan: LaunchPlan, bound: Mapping[str, Any], interpret: bool) -> Callable[[], Any]:
    """A callable that launches every launch of `plan` in order from the kernel's loaded module `mod`
    with the arguments `bound` (name -> tensor, LaunchPlan.bind) and returns what the first launch
    returned (under the JIT, its compiled kernel). Functions, arguments and keywords are resolved
    once, here, so a timing loop pays only for the launches. Host steps are called as plain functions.
    A plan with readbacks takes _readback_launcher."""
    if plan.readbacks:
        return _readback_launcher(mod, plan, bound, interpret)
    calls = [(getattr(mod, ln.fn) if ln.host else getattr(mod, ln.fn)[ln.grid], ln.values(bound),
              {} if ln.host else ln.kwargs(interpret)) for ln in plan.launches]

    def run() -> Any:
        first = None
        for i, (fn, args, kw) in enumerate(calls):
            k = fn(*args, **kw)
            if i == 0:
                first = k
        return first

    return run


def _readback_launcher(mod: ModuleType, plan: LaunchPlan, bound: Mapping[str, Any],
                       interpret: bool) -> Callable[[], Any]:
    """plan_launcher for a plan with readbacks (schedule/launch.py): after the launch a readback follows,
    one element of its workspace is read to the host (int(): a 4-byte copy, the run's one synchronisation
    per readback), then the Pending workspaces it sizes are allocated at that size and the grids it sizes
    are computed. Each call allocates them afresh, as gsplat allocates its intersection buffers per frame."""
    pending = {name: v for name, v in bound.items() if isinstance(v, Pending)}
    fns = {ln.fn: getattr(mod, ln.fn) for ln in plan.launches}
    kws = [{} if ln.host else ln.kwargs(interpret) for ln in plan.launches]

    def run() -> Any:
        vals, first = dict(bound), None
        read: dict[str, int] = {}
        for i, ln in enumerate(plan.launches):
            args = ln.values(vals)
            k = fns[ln.fn](*args) if ln.host else fns[ln.fn][ln.grid_at(read)](*args, **kws[i])
            first = k if i == 0 else first
            for rb in plan.readbacks:
                if rb.after == ln.fn and rb.name not in read:
                    read[rb.name] = int(vals[rb.source][rb.index])
                    vals.update({name: p.make(p.workspace.at(read[rb.name])) for name, p in pending.items()
                                 if p.workspace.sized_by == rb.name})
        return first

    return run
