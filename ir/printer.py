"""The printer of the text form: canonical text of attribute values and graphs. A graph's key is the
sha256 of `format_graph`'s output, so this output never changes for an existing graph.

    graph mlp(T=4, H=64) {
      %x = input f16[T, H]
      %w = input f16[H, H]
      %0 = matmul(%x, %w) {out_dtype=f32, trans_a=false, trans_b=false} : f32[4, 64]
      %1 = pointwise(%0) {expr=(cast f16 (mul $0:f32 (sigmoid $0:f32)))} : f16[4, 64]
      output y = %1
    }

The printer writes concrete sizes, so print -> parse -> print is the identity (ir/parser.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import dtypes as dt
from .expr import Expr, fmt_float, format_expr
from .ops import Node, Op, VerifyError, results_of

if TYPE_CHECKING:
    from .graph import Graph

__all__ = ["format_expr", "format_graph", "format_value"]


def format_value(v: Any) -> str:
    """Text of one attribute value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return fmt_float(v)
    if isinstance(v, dt.DType):
        return v.name
    if isinstance(v, Expr):
        return format_expr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, tuple):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    raise VerifyError(f"attribute value {v!r} of type {type(v).__name__} has no text form")


def _type_text(n: Node) -> str:
    res = results_of(n)
    parts = [f"{d}[{', '.join(map(str, s))}]" for d, s in res]
    return parts[0] if len(parts) == 1 else "(" + ", ".join(parts) + ")"


def format_graph(g: Graph) -> str:
    """Canonical text of a graph (inputs by name, other values numbered in topological order)."""
    names: dict[int, str] = {}
    # Only dynamic parameters are written (static ones are substituted), so a static graph's text and
    # key are what they always were; a dynamic graph's key covers each range, never a bound value.
    header = ", ".join(f"{p.name}={p.text()}" for p in g.params.values())
    lines = [f"graph {g.name}{f'({header})' if header else ''} {{"]
    for n in g.inputs:
        names[id(n)] = "%" + n.attr("name")
        lines.append(f"  %{n.attr('name')} = input {_type_text(n)}")
    k = 0
    for n in g.nodes:
        if n.op is Op.INPUT:
            continue
        names[id(n)] = f"%{k}"
        k += 1
        attrs = ", ".join(f"{a}={format_value(v)}" for a, v in n.arg)
        srcs = ", ".join(names[id(s)] for s in n.src)
        lines.append(f"  {names[id(n)]} = {n.op.value}({srcs})" + (f" {{{attrs}}}" if attrs else "")
                     + f" : {_type_text(n)}")
    for name, n in g.outputs:
        lines.append(f"  output {name} = {names[id(n)]}")
    lines.append("}")
    return "\n".join(lines) + "\n"
