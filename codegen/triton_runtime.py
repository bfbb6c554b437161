"""Loading generated Triton source as a module and launching it on torch tensors (under the
interpreter on CPU, or JIT on a CUDA GPU)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from ..fileio import write_atomic
from ..ir.limits import check_grid
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
           interpret: bool) -> None:
    """Launch a jitted kernel (a LimitError first if `grid` is beyond CUDA's limits, under the interpreter
    too: its grid is the same program count); the interpreter ignores warps and stages."""
    grid = check_grid(grid, str(getattr(fn, "__name__", fn)))
    kw = dict(constexprs)
    if not interpret:
        kw.update(options)
    fn[grid](*args, **kw)
