"""The text form of expressions and graphs, in one import: the printer (ir/printer.py), the lexer and
its limits (ir/lexer.py) and the parser (ir/parser.py). Nothing below ir/text imports it, so the
node modules (expr, ops, graph) never import a module that imports them back."""

from .lexer import MAX_EXPR_DEPTH, MAX_FILE_BYTES, MAX_LIST_DEPTH, ParseError
from .parser import load_graph, parse_expr, parse_graph
from .printer import format_expr, format_graph, format_value

__all__ = ["MAX_EXPR_DEPTH", "MAX_FILE_BYTES", "MAX_LIST_DEPTH", "ParseError", "format_expr", "format_graph",
           "format_value", "load_graph", "parse_expr", "parse_graph"]
