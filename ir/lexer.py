"""Reading and tokenising the text form: the size limit on graph files, UTF-8 decoding with a located
error, and the located ParseError that every text-form problem raises."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import TilefuseError

# Limits of the text form (README "Limits"): far above any real graph, low enough that a hostile input
# is refused before it costs memory or recursion. A 10,000-node graph file is about 1 MiB.
MAX_FILE_BYTES = 64 << 20
MAX_EXPR_DEPTH = 1000  # nesting of one scalar expression, e.g. (neg (neg ... $0:f32))
MAX_LIST_DEPTH = 32  # nesting of [...] in an attribute value


class ParseError(TilefuseError, ValueError):
    """A malformed text form; the message gives line, column and what was expected."""

    def __init__(self, msg: str, line: int, col: int, source_line: str = "", path: str = "<text>"):
        caret = f"\n  {source_line}\n  {' ' * (col - 1)}^" if source_line else ""
        where = f"{path}:{line}:{col}" if line > 0 else path  # line 0: the whole file (size, encoding)
        super().__init__(f"{where}: {msg}{caret}")
        self.line, self.col = line, col


def read_source(path: str) -> str:
    """The text of the graph file `path`: at most MAX_FILE_BYTES of UTF-8."""
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)  # never more: /dev/zero or a huge file must not fill memory
    if len(data) > MAX_FILE_BYTES:
        raise ParseError(f"larger than the {MAX_FILE_BYTES >> 20} MiB limit for graph files", 0, 0, path=path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ParseError(f"byte 0x{data[err.start]:02x} is not UTF-8 text; graph files are UTF-8",
                         line, col, path=path) from None


# ASCII digits only: Python's \d and str.isdigit accept other scripts' digits and superscripts.
_TOKEN = re.compile(r"""
  (?P<ws>[ \t\r]+|\#[^\n]*) |
  (?P<nl>\n) |
  (?P<str>"(?:[^"\\\n]|\\.)*") |
  (?P<arg>\$[0-9]+) |
  (?P<value>%[A-Za-z_0-9]+) |
  (?P<num>-?(?:[0-9]+\.(?!\.)[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+|\.[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9]+)) |
  (?P<ident>-?[A-Za-z_][A-Za-z_0-9]*) |
  (?P<punct>\.\.|[{}()\[\],=:*+])
""", re.VERBOSE | re.ASCII)
_INT = re.compile(r"-?[0-9]+", re.ASCII)


def is_int_literal(text: str) -> bool:
    """Whether a number token is an integer (no point, no exponent)."""
    return _INT.fullmatch(text) is not None


@dataclass
class Tok:
    kind: str
    text: str
    line: int
    col: int


def lex(src: str, path: str) -> list[Tok]:
    """Tokens of `src`, ending with an `eof` token; ParseError at the first character no token takes."""
    toks: list[Tok] = []
    line, line_start, pos = 1, 0, 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if m is None:
            col = pos - line_start + 1
            raise ParseError(f"unexpected character {src[pos]!r}", line, col, src.split("\n")[line - 1], path)
        kind = m.lastgroup or ""
        if kind == "nl":
            line += 1
            line_start = m.end()
        elif kind != "ws":
            toks.append(Tok(kind, m.group(), line, pos - line_start + 1))
        pos = m.end()
    toks.append(Tok("eof", "", line, pos - line_start + 1))
    return toks
