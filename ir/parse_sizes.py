"""The parser's sizes: the header's parameters (`T=16`, `T=dyn[1..8192, hint=512]`) and size expressions
(sums of products of integers and parameters: `T`, `4096*T`, `2*T + 1`), in shapes and in size
attributes. A mixin of ir/parser.py's _Parser, which provides the token helpers."""

from __future__ import annotations

from typing import Any

from . import dims
from .lexer import Tok, is_int_literal

Params = dict[str, Any]  # header parameter -> an int, or a dims.Sym for a dynamic one


def _got(t: Tok) -> str:
    return "end of input" if t.kind == "eof" else repr(t.text)


class SizeParser:
    """Header parameters and size expressions (see the module docstring)."""

    overrides: dict[str, int]
    toks: list[Tok]

    # token helpers: the parser's own override these
    def peek(self, ahead: int = 0) -> Tok:
        raise NotImplementedError

    def next(self) -> Tok:
        raise NotImplementedError

    def accept(self, text: str) -> bool:
        raise NotImplementedError

    def expect(self, text: str, what: str = "") -> Tok:
        raise NotImplementedError

    def expect_kind(self, kind: str, what: str) -> Tok:
        raise NotImplementedError

    def expect_int(self, what: str) -> int:
        raise NotImplementedError

    def error(self, msg: str, t: Tok | None = None) -> Exception:
        raise NotImplementedError


    def size(self, params: Params) -> Any:
        """A size: a sum of products of integers and header parameters (`T`, `4096*T`, `2*T + 1`)."""
        t = self.peek()
        total = self._size_term(params)
        while self.accept("+"):
            total = total + self._size_term(params)
        if not dims.is_dynamic(total) and total < 0:
            raise self.error(f"expected a size, got {total} (sizes are not negative)", t)
        return total

    def _size_term(self, params: Params) -> Any:
        value = self._size_factor(params)
        while self.accept("*"):
            value = value * self._size_factor(params)
        return value

    def _size_factor(self, params: Params) -> Any:
        t = self.next()
        if t.kind == "num" and is_int_literal(t.text):
            if t.text.startswith("-") and self.peek().text != "*":
                raise self.error(f"expected a size, got the negative number {t.text}", t)
            return int(t.text)
        if t.kind == "ident" and t.text in params:
            return params[t.text]
        known = ", ".join(params) or "none declared"
        raise self.error(f"expected a size (an integer or a header parameter: {known}), got {_got(t)}", t)

    def _header(self) -> Params:
        params: Params = {}
        if self.accept("("):
            while not self.accept(")"):
                p = self.expect_kind("ident", "a size parameter name")
                if p.text in params:
                    raise self.error(f"header parameter {p.text} is declared twice", p)
                self.expect("=")
                params[p.text] = self._param_value(p)
                if not self.accept(","):
                    self.expect(")", "or ',' in the parameter list")
                    break
        if self.overrides:
            raise self.error(f"size overrides {sorted(self.overrides)} name no header parameter; "
                             f"parameters: {sorted(params) or 'none'}", self.toks[0])
        return params

    def _param_value(self, p: Tok) -> Any:
        """`N` (a static size) or `dyn[lo..hi]` / `dyn[lo..hi, hint=h]` (a dynamic one); an override
        given at parse time makes either static."""
        if self.peek().text != "dyn":
            v = self.expect_int(f"the size of {p.text}")
            return self.overrides.pop(p.text, v)
        self.next()
        self.expect("[", "after dyn (dyn[lo..hi])")
        lo = self.expect_int(f"the lower bound of {p.text}")
        self.expect("..", "between the bounds (dyn[lo..hi])")
        hi = self.expect_int(f"the upper bound of {p.text}")
        hint = None
        if self.accept(","):
            self.expect("hint", "(dyn[lo..hi, hint=h])")
            self.expect("=")
            hint = self.expect_int(f"the hint of {p.text}")
        self.expect("]", "to close dyn[...]")
        try:
            decl = dims.DynParam(p.text, lo, hi, hint)
            if p.text in self.overrides:
                return decl.check(self.overrides.pop(p.text), "size override")
        except dims.DynamicSizeError as err:
            raise self.error(str(err), p) from None
        return dims.param(decl)
