"""House style, pinned: no library file over 400 lines and no function over 60 lines (bench/, tests/ and
examples/ are not the library). A file or function that grows past these splits into readable parts."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"tests", "bench", "examples", "build", ".venv"}
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def library_files() -> list[Path]:
    out = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT)
        if rel.parts[0] in SKIP or any(part.startswith(".") for part in rel.parts):
            continue
        out.append(p)
    return out


def test_library_files_fit_the_line_budget():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in library_files()
            if (n := p.read_text().count("\n")) > MAX_FILE_LINES]
    assert not long, f"files over {MAX_FILE_LINES} lines:\n" + "\n".join(long)


def test_library_functions_fit_the_line_budget():
    long = []
    for p in library_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
