"""Dynamic sizes in a bundle: size expressions as small postfix programs that the loader (Python) and the
generated C both evaluate, and the manifest's `dynamic` section (each parameter's range and the size
buckets). A program is a JSON list of integers (pushed), parameter names (pushed: the run's value) and
the operators + - * // % (pop two, push one), with Python's meaning: a ceiling division -(-T // 64) floors a
negative value, which the generated C does with tf_floordiv (templates/sizes.c.in), not with C's `/`."""

from __future__ import annotations

from typing import Any

from ..ir import dims
from .plan import ExportError

OPS = ("+", "-", "*", "//", "%")


def _poly_program(poly: Any) -> list[Any]:
    out: list[Any] = []
    for i, (mono, coeff) in enumerate(poly):
        term: list[Any] = [] if coeff == 1 and mono else [int(coeff)]
        for atom in mono:
            term += [atom] if isinstance(atom, str) else [*_poly_program(atom[1]), *_poly_program(atom[2]), atom[0]]
        # multiply the term's factors together: one "*" per factor after the first
        factors = (0 if coeff == 1 and mono else 1) + len(mono)
        out += term + ["*"] * (factors - 1)
        if i:
            out.append("+")
    return out or [0]


def size_value(x: Any) -> int | list[Any]:
    """A size as the manifest stores it: the int, or the program of a dynamic size's expression."""
    return _poly_program(x.poly) if dims.is_dynamic(x) else int(x)


def evaluate(program: int | list[Any], sizes: dict[str, int]) -> int:
    """The value of a stored size at `sizes` (the loader carries a copy of this function)."""
    if isinstance(program, int):
        return program
    stack: list[int] = []
    for tok in program:
        if isinstance(tok, int):
            stack.append(tok)
        elif tok in OPS:
            b, a = stack.pop(), stack.pop()
            stack.append(a + b if tok == "+" else a - b if tok == "-" else a * b if tok == "*"
                         else a // b if tok == "//" else a % b)
        else:
            stack.append(sizes[tok])
    return stack[0]


def size_text(program: int | list[Any]) -> str:
    """A stored size as readable infix text (documentation in the generated headers)."""
    if isinstance(program, int):
        return str(program)
    stack: list[str] = []
    for tok in program:
        if isinstance(tok, str) and tok in OPS:
            b, a = stack.pop(), stack.pop()
            stack.append(f"({a}{tok}{b})" if tok in "+-" else f"{a}{tok}{b}")
        else:
            stack.append(str(tok))
    return stack[0].removeprefix("(").removesuffix(")") if stack[0].startswith("(") and stack[0].endswith(")") and \
        stack[0].count("(") == 1 else stack[0]


def c_expr(program: int | list[Any], names: list[str], array: str = "sz") -> str:
    """A stored size as a C expression of int64_t over `array`[i] (the value of names[i])."""
    if isinstance(program, int):
        return f"INT64_C({program})"
    stack: list[str] = []
    for tok in program:
        if isinstance(tok, int):
            stack.append(f"INT64_C({tok})")
        elif tok in OPS:
            b, a = stack.pop(), stack.pop()
            # C's / and % truncate; tf_floordiv and tf_mod (templates/sizes.c.in) are Python's // and %
            func = {"//": "tf_floordiv", "%": "tf_mod"}.get(tok)
            stack.append(f"{func}({a}, {b})" if func else f"({a} {tok} {b})")
        elif tok in names:
            stack.append(f"{array}[{names.index(tok)}]")
        else:
            raise ExportError(f"size program {program}: {tok!r} is not a dynamic parameter ({names})")
    return stack[0]


def dynamic_entry(cg: Any) -> dict[str, Any]:
    """The manifest's `dynamic` section of a DynamicCompiledGraph: parameters (name order) and buckets."""
    params = [{"name": n, "lo": p.lo, "hi": p.hi, "hint": p.probe} for n, p in sorted(cg.graph.params.items())]
    buckets = [{"ranges": [[n, lo, hi] for n, lo, hi in b.ranges]} for b in cg.buckets]
    return {"params": params, "edges": {n: list(e) for n, e in sorted(cg.edges.items())}, "buckets": buckets}
