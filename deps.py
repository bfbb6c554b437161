"""Optional dependencies: which extra of `pip install "tilefuse[EXTRA]"` brings each, and the one helper
that imports one or raises MissingDependency naming that extra.

numpy is the only required dependency; everything else is imported lazily where a feature needs it
(DESIGN.md), through `require`, so a bare install says which extra to add instead of a traceback."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependency

# top-level module -> (distribution, extra); None: not ours to pin (torch: the user picks the CUDA/CPU build)
EXTRAS: dict[str, tuple[str, str | None]] = {
    "tvm": ("apache-tvm", "cpu"),
    "tvm_ffi": ("apache-tvm-ffi", "cpu"),
    "ml_dtypes": ("ml_dtypes", "cpu"),
    "psutil": ("psutil", "cpu"),
    "triton": ("triton", "gpu"),
    "pynvml": ("nvidia-ml-py", "gpu"),
    "sqlalchemy": ("sqlalchemy", "tune"),
    "optuna": ("optuna", "tune"),
    "xgboost": ("xgboost", "tune"),
    "matplotlib": ("matplotlib", "tune"),
    "psycopg": ("psycopg[binary]", "postgres"),
    "plyfile": ("plyfile", "splat"),
    "torch": ("torch", None),
}
TORCH_HINT = "install the torch build for your machine (https://pytorch.org/get-started/locally/)"


def install_hint(module: str) -> str:
    """How to install the optional module `module` (a top-level name from EXTRAS)."""
    dist, extra = EXTRAS[module.split(".")[0]]
    if extra is None:
        return TORCH_HINT if dist == "torch" else f"pip install {dist}"
    return f'pip install "tilefuse[{extra}]"'


def missing(module: str, needed_for: str) -> MissingDependency:
    """The error for optional module `module` being absent when `needed_for` (a phrase) needs it."""
    top = module.split(".")[0]
    dist, extra = EXTRAS[top]
    return MissingDependency(f"{needed_for} needs {dist}, which is not installed: {install_hint(top)}", top, extra)


def available(module: str) -> bool:
    """Whether `module` can be imported (found on the path; not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken entry in sys.modules
        return False


def require(module: str, needed_for: str) -> ModuleType:
    """Import optional module `module` (dotted names allowed) for `needed_for` (a phrase naming the
    feature: "target 'cpu' (TVM)"), or raise MissingDependency naming the extra that installs it.

    Only the module itself (or another optional module it needs) being absent becomes MissingDependency;
    any other ImportError is a broken installation and propagates with its traceback."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        absent = (err.name or "").split(".")[0]
        if absent not in EXTRAS:
            raise
        raise missing(absent, needed_for) from err
