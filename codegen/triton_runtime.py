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
from ..schedule.launch import LaunchPlan, jit_kwargs
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
    once, here, so a timing loop pays only for the launches. Host steps are called as plain functions."""
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
