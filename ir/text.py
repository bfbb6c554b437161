"""The text form of expressions and graphs: a printer and a located-error parser.

    graph mlp(T=4, H=64) {
      %x = input f16[T, H]
      %w = input f16[H, H]
      %0 = matmul(%x, %w) {out_dtype=f32, trans_a=false, trans_b=false} : f32[4, 64]
      %1 = pointwise(%0) {expr=(cast f16 (mul $0:f32 (sigmoid $0:f32)))} : f16[4, 64]
      output y = %1
    }

Header parameters name sizes usable in input shapes; they may be overridden at parse time.
The printer writes concrete sizes, so print -> parse -> print is the identity.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import TilefuseError
from . import dtypes as dt
from . import expr as ex
from .expr import E, Expr
from .graph import Graph
from .ops import Node, Op, VerifyError, make, results_of


class ParseError(TilefuseError, ValueError):
    """A malformed text form; the message gives line, column and what was expected."""

    def __init__(self, msg: str, line: int, col: int, source_line: str = "", path: str = "<text>"):
        caret = f"\n  {source_line}\n  {' ' * (col - 1)}^" if source_line else ""
        super().__init__(f"{path}:{line}:{col}: {msg}{caret}")
        self.line, self.col = line, col


# ---- printing ----------------------------------------------------------------------------
def _fmt_float(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(float(v))


def format_expr(e: Expr) -> str:
    """S-expression text of a scalar expression."""
    memo: dict[int, str] = {}
    for n in e.toposort():
        if n.op is E.ARG:
            s = f"${n.arg}:{n.dtype}"
        elif n.op is E.VAR:
            s = f"{n.arg}:{n.dtype}"
        elif n.op is E.CONST:
            v = n.arg
            s = ("true" if v else "false") if isinstance(v, bool) else _fmt_float(v) if isinstance(v, float) else str(v)
            s = f"{s}:{n.dtype}"
        elif n.op is E.LOAD:
            s = "(load " + " ".join([str(n.arg), str(n.dtype)] + [memo[id(x)] for x in n.src]) + ")"
        elif n.op in (E.CAST, E.BITCAST):
            s = f"({n.op.value} {n.dtype} {memo[id(n.src[0])]})"
        else:
            s = "(" + " ".join([n.op.value] + [memo[id(x)] for x in n.src]) + ")"
        memo[id(n)] = s
    return memo[id(e)]


def format_value(v: Any) -> str:
    """Text of one attribute value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _fmt_float(v)
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
    lines = [f"graph {g.name} {{"]
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


# ---- lexing ------------------------------------------------------------------------------
_TOKEN = re.compile(r"""
  (?P<ws>[ \t\r]+|\#[^\n]*) |
  (?P<nl>\n) |
  (?P<str>"(?:[^"\\\n]|\\.)*") |
  (?P<arg>\$\d+) |
  (?P<value>%[A-Za-z_0-9]+) |
  (?P<num>-?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\.\d+(?:[eE][-+]?\d+)?|\d+)) |
  (?P<ident>-?[A-Za-z_][A-Za-z_0-9]*) |
  (?P<punct>[{}()\[\],=:])
""", re.VERBOSE)


@dataclass
class Tok:
    kind: str
    text: str
    line: int
    col: int


def _lex(src: str, path: str) -> list[Tok]:
    toks: list[Tok] = []
    line, line_start, pos = 1, 0, 0
    lines = src.split("\n")
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if m is None:
            col = pos - line_start + 1
            raise ParseError(f"unexpected character {src[pos]!r}", line, col, lines[line - 1], path)
        kind = m.lastgroup or ""
        if kind == "nl":
            line += 1
            line_start = m.end()
        elif kind != "ws":
            toks.append(Tok(kind, m.group(), line, pos - line_start + 1))
        pos = m.end()
    toks.append(Tok("eof", "", line, pos - line_start + 1))
    return toks


# ---- parsing -----------------------------------------------------------------------------
class _Parser:
    def __init__(self, src: str, path: str, sizes: dict[str, int] | None):
        self.src_lines = src.split("\n")
        self.path = path
        self.toks = _lex(src, path)
        self.i = 0
        self.overrides = dict(sizes or {})

    # -- helpers --
    def peek(self) -> Tok:
        return self.toks[self.i]

    def next(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def error(self, msg: str, t: Tok | None = None) -> ParseError:
        t = t or self.peek()
        src = self.src_lines[t.line - 1] if 0 < t.line <= len(self.src_lines) else ""
        return ParseError(msg, t.line, t.col, src, self.path)

    def expect(self, text: str, what: str = "") -> Tok:
        t = self.peek()
        if t.text != text:
            got = repr(t.text) if t.kind != "eof" else "end of input"
            raise self.error(f"expected {text!r}{' ' + what if what else ''}, got {got}")
        return self.next()

    def expect_kind(self, kind: str, what: str) -> Tok:
        t = self.peek()
        if t.kind != kind:
            got = repr(t.text) if t.kind != "eof" else "end of input"
            raise self.error(f"expected {what}, got {got}")
        return self.next()

    def accept(self, text: str) -> bool:
        if self.peek().text == text:
            self.i += 1
            return True
        return False

    def dtype(self) -> dt.DType:
        t = self.expect_kind("ident", "a dtype name")
        try:
            return dt.dtype(t.text)
        except dt.DTypeError as err:
            raise self.error(str(err), t) from None

    # -- expressions --
    def expr(self) -> Expr:
        t = self.peek()
        try:
            if t.kind == "arg":
                self.next()
                self.expect(":", "and a dtype after the operand")
                return ex.arg(int(t.text[1:]), self.dtype())
            if t.kind in ("num", "ident") and self.toks[self.i + 1].text == ":":
                self.next()
                self.next()
                d = self.dtype()
                if t.kind == "ident" and t.text not in ("true", "false", "nan", "inf", "-inf"):
                    return ex.var(t.text, d)
                return ex.const(_literal(t.text), d)
            if t.text == "(":
                self.next()
                opt = self.expect_kind("ident", "an expression op name")
                try:
                    op = E(opt.text)
                except ValueError:
                    ops = ", ".join(sorted(o.value for o in E if o not in ex.LEAVES))
                    raise self.error(f"unknown expression op {opt.text!r}; accepted: {ops}", opt) from None
                if op in (E.CAST, E.BITCAST):
                    d = self.dtype()
                    x = self.expr()
                    self.expect(")")
                    return ex.cast(x, d) if op is E.CAST else ex.bitcast(x, d)
                if op is E.LOAD:
                    idx_t = self.expect_kind("num", "an operand index")
                    d = self.dtype()
                    idx = []
                    while self.peek().text != ")":
                        idx.append(self.expr())
                    self.next()
                    return ex.load(int(idx_t.text), d, *idx)
                args = []
                while self.peek().text != ")":
                    if self.peek().kind == "eof":
                        raise self.error("expected ')' to close the expression")
                    args.append(self.expr())
                self.next()
                return _build(op, args, self, opt)
        except ex.ExprError as err:
            raise self.error(str(err), t) from None
        raise self.error("expected an expression: $i:dtype, name:dtype, number:dtype or (op ...)")

    # -- attribute values --
    def value(self) -> Any:
        t = self.peek()
        if t.text == "[":
            self.next()
            items = []
            while not self.accept("]"):
                items.append(self.value())
                if not self.accept(","):
                    self.expect("]", "or ',' in the list")
                    break
            return tuple(items)
        if t.text == "(" or t.kind == "arg" or (t.kind in ("num", "ident") and self.toks[self.i + 1].text == ":"):
            return self.expr()
        self.next()
        if t.kind == "num":
            return _literal(t.text)
        if t.kind == "str":
            return t.text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        if t.kind == "ident":
            if t.text in ("true", "false"):
                return t.text == "true"
            if t.text == "none":
                return None
            if t.text in ("nan", "inf", "-inf"):
                return float(t.text)
            return t.text
        raise self.error(f"expected an attribute value, got {t.text!r}", t)

    def size(self, params: dict[str, int]) -> int:
        t = self.next()
        if t.kind == "num" and t.text.isdigit():
            return int(t.text)
        if t.kind == "ident" and t.text in params:
            return params[t.text]
        known = ", ".join(params) or "none declared"
        raise self.error(f"expected a size (an integer or a header parameter: {known}), got {t.text!r}", t)

    def type_(self, params: dict[str, int]) -> tuple[dt.DType, tuple[int, ...]]:
        d = self.dtype()
        self.expect("[", "to open the shape")
        dims: list[int] = []
        while not self.accept("]"):
            dims.append(self.size(params))
            if not self.accept(","):
                self.expect("]", "or ',' in the shape")
                break
        return d, tuple(dims)

    # -- graph --
    def graph(self) -> Graph:
        self.expect("graph", "at the start of the file")
        name = self.expect_kind("ident", "a graph name").text
        params: dict[str, int] = {}
        if self.accept("("):
            while not self.accept(")"):
                p = self.expect_kind("ident", "a size parameter name")
                self.expect("=")
                v = self.expect_kind("num", "an integer size")
                params[p.text] = int(self.overrides.pop(p.text, int(v.text)))
                if not self.accept(","):
                    self.expect(")", "or ',' in the parameter list")
                    break
        if self.overrides:
            raise self.error(f"size overrides {sorted(self.overrides)} name no header parameter; "
                             f"parameters: {sorted(params) or 'none'}", self.toks[0])
        self.expect("{", "to open the graph body")
        values: dict[str, Node] = {}
        inputs: list[Node] = []
        outputs: list[tuple[str, Node]] = []
        while not self.accept("}"):
            t = self.peek()
            if t.text == "output":
                self.next()
                oname = self.expect_kind("ident", "an output name").text
                self.expect("=")
                outputs.append((oname, self.ref(values)))
                continue
            vt = self.expect_kind("value", "a value definition '%name = ...', 'output' or '}'")
            self.expect("=")
            opt = self.expect_kind("ident", "an op name")
            if opt.text == "input":
                d, shape = self.type_(params)
                node = self._make(Op.INPUT, (), {"name": vt.text[1:], "dtype": d, "shape": shape}, opt)
                inputs.append(node)
            else:
                try:
                    op = Op(opt.text)
                except ValueError:
                    ops = ", ".join(o.value for o in Op)
                    raise self.error(f"unknown op {opt.text!r}; accepted: {ops}", opt) from None
                self.expect("(", f"to open the operands of {op.value}")
                srcs = []
                while not self.accept(")"):
                    srcs.append(self.ref(values))
                    if not self.accept(","):
                        self.expect(")", "or ',' in the operand list")
                        break
                attrs: dict[str, Any] = {}
                if self.accept("{"):
                    while not self.accept("}"):
                        k = self.expect_kind("ident", "an attribute name").text
                        self.expect("=")
                        attrs[k] = self.value()
                        if not self.accept(","):
                            self.expect("}", "or ',' in the attribute list")
                            break
                if op is Op.CONST and self.peek().text == ":":
                    # const carries its type in the annotation
                    self.next()
                    d, shape = self.type_(params)
                    attrs.update(dtype=d, shape=shape)
                    node = self._make(op, srcs, attrs, opt)
                else:
                    node = self._make(op, srcs, attrs, opt)
                    if self.accept(":"):
                        self._check_annotation(node, params)
            if vt.text in values:
                raise self.error(f"value {vt.text} is defined twice", vt)
            values[vt.text] = node
        if self.peek().kind != "eof":
            raise self.error("expected end of input after the graph's closing '}'")
        if not outputs:
            raise self.error("graph has no 'output NAME = %value' line")
        try:
            return Graph(name, tuple(outputs), tuple(inputs))
        except VerifyError as err:
            raise self.error(str(err), self.toks[0]) from None

    def _check_annotation(self, node: Node, params: dict[str, int]) -> None:
        t = self.peek()
        res = results_of(node)
        if t.text == "(":
            self.next()
            got = []
            while not self.accept(")"):
                got.append(self.type_(params))
                self.accept(",")
        else:
            got = [self.type_(params)]
        if [(d, tuple(s)) for d, s in res] != got:
            want = ", ".join(f"{d}{list(s)}" for d, s in res)
            have = ", ".join(f"{d}{list(s)}" for d, s in got)
            raise self.error(f"type annotation {have} disagrees with the inferred type {want}", t)

    def ref(self, values: dict[str, Node]) -> Node:
        t = self.expect_kind("value", "a value reference '%name'")
        if t.text not in values:
            raise self.error(f"value {t.text} is used before it is defined", t)
        return values[t.text]

    def _make(self, op: Op, srcs: Any, attrs: dict[str, Any], at: Tok) -> Node:
        try:
            return make(op, srcs, **attrs)
        except (VerifyError, dt.DTypeError, ex.ExprError, TypeError) as err:
            raise self.error(str(err), at) from None


def _literal(s: str) -> Any:
    if s in ("true", "false"):
        return s == "true"
    if s in ("nan", "inf", "-inf"):
        return float(s)
    if re.fullmatch(r"-?\d+", s):
        return int(s)
    return float(s)


def _build(op: E, args: list[Expr], p: _Parser, at: Tok) -> Expr:
    want = 3 if op is E.WHERE else 1 if op in ex.UNARY else 2 if op in ex.BINARY else -1
    if len(args) != want:
        raise p.error(f"{op.value} takes {want} operand(s), got {len(args)}", at)
    if op is E.WHERE:
        return ex.where(*args)
    if op in ex.UNARY:
        return ex.unary(op, args[0])
    # Keep the operands' dtypes exactly as written: the printer writes explicit casts.
    a, b = args
    if a.dtype != b.dtype:
        raise p.error(f"{op.value}: operand dtypes differ ({a.dtype} vs {b.dtype}); write an explicit cast", at)
    return ex.binary(op, a, b)


def parse_expr(src: str) -> Expr:
    """Parse one S-expression."""
    p = _Parser(src, "<expr>", None)
    e = p.expr()
    if p.peek().kind != "eof":
        raise p.error("expected end of expression")
    return e


def parse_graph(src: str, path: str = "<text>", sizes: dict[str, int] | None = None) -> Graph:
    """Parse a graph; `sizes` overrides header parameters (e.g. small sizes for a CPU check)."""
    return _Parser(src, path, sizes).graph()


def load_graph(path: str, sizes: dict[str, int] | None = None) -> Graph:
    """Parse the graph in a `.tf` file."""
    with open(path, encoding="utf-8") as f:
        return parse_graph(f.read(), path, sizes)
