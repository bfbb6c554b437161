"""The architecture, pinned: layers import only downwards (DESIGN.md), no module imports a module
that imports it back (deferred imports included), and nothing under kernels/ or costmodel/ imports
autotune. Imports under `if TYPE_CHECKING:` are annotations only and never run, so they are skipped."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lowest first. Modules of one rank may import each other (acyclically); never a higher rank.
LAYERS = [
    {"errors", "fileio", "settings", "deps"},
    {"ir"},
    {"passes"},
    {"schedule"},
    {"codegen"},
    {"kernels"},
    {"costmodel"},
    {"autotune"},
    {"compiler", "compiled", "compiler_dynamic", "sparse_plan", "report", "frontend", "builders", "gpu_check",
     "export", "__init__"},
    {"cli", "demo"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
SKIP = {"tests", "bench", "examples", "build", ".venv"}


def library_modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT)
        if rel.parts[0] in SKIP or any(part.startswith(".") for part in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Library modules `name` imports anywhere in its body (functions included)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    package = name.split(".") if is_pkg and name != "__init__" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level == 0:
                    if not (child.module or "").startswith("tilefuse"):
                        continue
                    base = (child.module or "").split(".")[1:]
                else:
                    base = package[:len(package) - (child.level - 1)] if child.level > 1 else list(package)
                    base = base + (child.module.split(".") if child.module else [])
                for alias in child.names:
                    cand = ".".join(base + [alias.name])
                    target = cand if cand in modules else ".".join(base)
                    if target in modules:
                        found.add(target)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("tilefuse."):
                        mod = alias.name.split(".", 1)[1]
                        if mod in modules:
                            found.add(mod)
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = library_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def _rank(mod: str) -> int:
    return RANK[mod.split(".")[0]]


def test_every_library_module_has_a_layer():
    unknown = sorted({m.split(".")[0] for m in library_modules()} - set(RANK))
    assert not unknown, f"add these top-level modules to a layer in LAYERS: {unknown}"


def test_layers_import_only_downwards():
    bad = [f"{m} ({LAYERS[_rank(m)]}) imports {d}" for m, deps in import_graph().items() for d in sorted(deps)
           if _rank(d) > _rank(m)]
    assert not bad, "\n".join(bad)


def test_kernels_and_costmodel_never_import_autotune():
    bad = [f"{m} imports {d}" for m, deps in import_graph().items() for d in sorted(deps)
           if m.split(".")[0] in ("kernels", "costmodel") and d.split(".")[0] == "autotune"]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = import_graph()
    # Tarjan-free check: a cycle exists iff some module reaches itself.
    cycles = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycles.append(" -> ".join(path + [start]))
                    stack.clear()
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_deferred_imports(tmp_path):
    # A mutation check of the checker itself: a deferred import inside a function counts.
    mods = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    mods["a"].write_text("def f():\n    from .b import g\n    return g\n")
    mods["b"].write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n")
    assert imports_of("a", mods["a"], mods) == {"b"}
    assert imports_of("b", mods["b"], mods) == set()
