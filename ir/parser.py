"""The parser of the text form (ir/printer.py writes it): located errors, no recursion on the
expression nesting, and the limits of ir/lexer.py.

Header parameters name sizes usable in input shapes; they may be overridden at parse time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import dims
from . import dtypes as dt
from . import expr as ex
from .expr import E, Expr
from .graph import Graph
from .parse_sizes import Params, SizeParser
from .lexer import MAX_EXPR_DEPTH, MAX_LIST_DEPTH, ParseError, Tok, is_int_literal, lex, read_source
from .ops import Node, Op, VerifyError, make, results_of

__all__ = ["ParseError", "load_graph", "parse_expr", "parse_graph"]

_NAMED_FLOATS = ("nan", "inf", "-inf")


@dataclass
class _Open:
    """An expression whose '(' has been read and whose operands are being collected."""

    op: E
    at: Tok  # the op name, where operand-count errors point
    start: Tok  # the '(', where errors from building the expression point
    dtype: dt.DType | None = None  # cast / bitcast / load
    operand: int = 0  # load
    args: list[Expr] = field(default_factory=list)


class _Parser(SizeParser):
    def __init__(self, src: str, path: str, sizes: dict[str, int] | None):
        self.src_lines = src.split("\n")
        self.path = path
        self.toks = lex(src, path)
        self.i = 0
        self.overrides = dict(sizes or {})
        self.params: Params = {}

    # -- helpers --
    def peek(self, ahead: int = 0) -> Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

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
            raise self.error(f"expected {text!r}{' ' + what if what else ''}, got {_got(t)}")
        return self.next()

    def expect_kind(self, kind: str, what: str) -> Tok:
        t = self.peek()
        if t.kind != kind:
            raise self.error(f"expected {what}, got {_got(t)}")
        return self.next()

    def expect_int(self, what: str) -> int:
        t = self.peek()
        if t.kind != "num" or not is_int_literal(t.text) or t.text.startswith("-"):
            raise self.error(f"expected {what} (a non-negative integer), got {_got(t)}")
        return int(self.next().text)

    def accept(self, text: str) -> bool:
        t = self.peek()
        if t.text == text:
            self.i += 1
            return True
        return False

    def dtype(self) -> dt.DType:
        t = self.expect_kind("ident", "a dtype name")
        try:
            return dt.dtype(t.text)
        except dt.DTypeError as err:
            raise self.error(str(err), t) from None

    # -- expressions (an explicit stack: nesting depth costs no Python recursion) --
    def expr(self) -> Expr:
        stack: list[_Open] = []
        while True:
            t = self.peek()
            if t.text == "(":
                if len(stack) >= MAX_EXPR_DEPTH:
                    raise self.error(f"expression nested deeper than the limit of {MAX_EXPR_DEPTH} levels", t)
                stack.append(self._open())
                continue
            if t.text == ")" and stack:
                self.next()
                done = stack.pop()
                value = self._close(done)
            elif t.kind == "eof" and stack:
                raise self.error("expected ')' to close the expression")
            else:
                value = self._leaf()
            if not stack:
                return value
            stack[-1].args.append(value)

    def _open(self) -> _Open:
        start = self.next()
        opt = self.expect_kind("ident", "an expression op name")
        try:
            op = E(opt.text)
        except ValueError:
            ops = ", ".join(sorted(o.value for o in E if o not in ex.LEAVES))
            raise self.error(f"unknown expression op {opt.text!r}; accepted: {ops}", opt) from None
        frame = _Open(op, opt, start)
        if op is E.LOAD:
            frame.operand = self.expect_int("an operand index")
        if op in (E.CAST, E.BITCAST, E.LOAD):
            frame.dtype = self.dtype()
        return frame

    def _close(self, f: _Open) -> Expr:
        try:
            if f.op is E.LOAD:
                assert f.dtype is not None
                return ex.load(f.operand, f.dtype, *f.args)
            if f.op in (E.CAST, E.BITCAST):
                if len(f.args) != 1:
                    raise self.error(f"{f.op.value} takes 1 operand, got {len(f.args)}", f.at)
                assert f.dtype is not None
                return ex.cast(f.args[0], f.dtype) if f.op is E.CAST else ex.bitcast(f.args[0], f.dtype)
            return _build(f.op, f.args, self, f.at)
        except ex.ExprError as err:
            raise self.error(str(err), f.start) from None

    def _leaf(self) -> Expr:
        t = self.peek()
        try:
            if t.kind == "arg":
                self.next()
                self.expect(":", "and a dtype after the operand")
                return ex.arg(int(t.text[1:]), self.dtype())
            if t.kind in ("num", "ident") and self.peek(1).text == ":":
                self.next()
                self.next()
                d = self.dtype()
                if t.kind == "ident" and t.text not in ("true", "false", *_NAMED_FLOATS):
                    return ex.var(t.text, d)
                return ex.const(_literal(t.text), d)
        except ex.ExprError as err:
            raise self.error(str(err), t) from None
        raise self.error("expected an expression: $i:dtype, name:dtype, number:dtype or (op ...)")

    # -- attribute values --
    def value(self, depth: int = 0) -> Any:
        t = self.peek()
        if t.text == "[":
            if depth >= MAX_LIST_DEPTH:
                raise self.error(f"lists nested deeper than the limit of {MAX_LIST_DEPTH} levels", t)
            self.next()
            items = []
            while not self.accept("]"):
                items.append(self.value(depth + 1))
                if not self.accept(","):
                    self.expect("]", "or ',' in the list")
                    break
            return tuple(items)
        if t.text == "(" or t.kind == "arg" or (t.kind in ("num", "ident") and self.peek(1).text == ":"):
            return self.expr()
        if (t.kind == "ident" and dims.is_dynamic(self.params.get(t.text))) or self.peek(1).text in ("*", "+"):
            return self.size(self.params)  # a size attribute over dynamic parameters (reshape's shape)
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
            if t.text in _NAMED_FLOATS:
                return float(t.text)
            return t.text
        raise self.error(f"expected an attribute value, got {_got(t)}", t)

    def type_(self, params: Params) -> tuple[dt.DType, tuple[int, ...]]:
        d = self.dtype()
        self.expect("[", "to open the shape")
        dims: list[Any] = []
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
        params = self.params = self._header()
        self.expect("{", "to open the graph body")
        values: dict[str, Node] = {}
        inputs: list[Node] = []
        outputs: list[tuple[str, Node]] = []
        while not self.accept("}"):
            if self.peek().text == "output":
                self._output(values, inputs, outputs)
                continue
            vt = self.expect_kind("value", "a value definition '%name = ...', 'output' or '}'")
            self.expect("=")
            opt = self.expect_kind("ident", "an op name")
            node = self._input(vt, opt, params) if opt.text == "input" else self._node(opt, values, params)
            if node.op is Op.INPUT:
                inputs.append(node)
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

    def _output(self, values: dict[str, Node], inputs: list[Node], outputs: list[tuple[str, Node]]) -> None:
        self.next()
        ot = self.expect_kind("ident", "an output name")
        if any(n.attr("name") == ot.text for n in inputs):
            # The output buffer would replace the input's before a kernel reads it.
            raise self.error(f"output {ot.text!r} has the name of an input; inputs and outputs need "
                             "distinct names", ot)
        self.expect("=")
        outputs.append((ot.text, self.ref(values)))

    def _input(self, vt: Tok, opt: Tok, params: Params) -> Node:
        d, shape = self.type_(params)
        return self._make(Op.INPUT, (), {"name": vt.text[1:], "dtype": d, "shape": shape}, opt)

    def _node(self, opt: Tok, values: dict[str, Node], params: Params) -> Node:
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
        attrs = self._attrs(op)
        if op is Op.CONST and self.accept(":"):
            # const carries its type in the annotation
            d, shape = self.type_(params)
            attrs.update(dtype=d, shape=shape)
            return self._make(op, srcs, attrs, opt)
        node = self._make(op, srcs, attrs, opt)
        if self.accept(":"):
            self._check_annotation(node, params)
        return node

    def _attrs(self, op: Op) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if self.accept("{"):
            while not self.accept("}"):
                k = self.expect_kind("ident", "an attribute name")
                if k.text in attrs:
                    raise self.error(f"{op.value}: attribute {k.text!r} is given twice", k)
                self.expect("=")
                attrs[k.text] = self.value()
                if not self.accept(","):
                    self.expect("}", "or ',' in the attribute list")
                    break
        return attrs

    def _check_annotation(self, node: Node, params: Params) -> None:
        t = self.peek()
        res = results_of(node)
        if self.accept("("):
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


def _got(t: Tok) -> str:
    return "end of input" if t.kind == "eof" else repr(t.text)


def _literal(s: str) -> Any:
    if s in ("true", "false"):
        return s == "true"
    if s in _NAMED_FLOATS:
        return float(s)
    if is_int_literal(s):
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


def _check_sizes(sizes: dict[str, int] | None, path: str) -> None:
    for k, v in (sizes or {}).items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ParseError(f"size override {k}={v!r} must be a positive integer", 0, 0, path=path)


def parse_expr(src: str) -> Expr:
    """Parse one S-expression."""
    p = _Parser(src, "<expr>", None)
    e = p.expr()
    if p.peek().kind != "eof":
        raise p.error("expected end of expression")
    return e


def parse_graph(src: str, path: str = "<text>", sizes: dict[str, int] | None = None) -> Graph:
    """Parse a graph; `sizes` overrides header parameters (e.g. small sizes for a CPU check)."""
    _check_sizes(sizes, path)
    return _Parser(src, path, sizes).graph()


def load_graph(path: str, sizes: dict[str, int] | None = None) -> Graph:
    """Parse the graph in a `.tf` file (at most lexer.MAX_FILE_BYTES of UTF-8)."""
    return parse_graph(read_source(path), path, sizes)

