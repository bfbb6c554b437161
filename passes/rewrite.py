"""One rewrite driver for graphs and expressions: rules are (pattern, fn) pairs, `fn` returns a
new node or None. Nodes are rebuilt bottom-up; each node is rewritten to a fixpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Iterable

from ..ir.expr import E, Expr
from ..ir.expr import toposort as expr_toposort
from ..ir.graph import Graph
from ..ir.ops import Node, Op, toposort

MAX_STEPS = 64


class RewriteError(RuntimeError):
    """A rewrite rule did not reach a fixpoint (it keeps rewriting the same node)."""


@dataclass(frozen=True)
class Pat:
    """Matches a node whose op is in `ops` (any op when empty) and for which `where` holds."""

    ops: frozenset[Any] = frozenset()
    where: Callable[[Any], bool] | None = None

    def match(self, n: Any) -> bool:
        return (not self.ops or n.op in self.ops) and (self.where is None or self.where(n))


Rule = tuple[Pat, Callable[..., Any]]


def pat(*ops: Any, where: Callable[[Any], bool] | None = None) -> Pat:
    return Pat(frozenset(ops), where)


def _apply(n: Any, rules: Iterable[Rule], ctx: Any) -> Any:
    for _ in range(MAX_STEPS):
        for p, fn in rules:
            if p.match(n):
                new = fn(n, ctx)
                if new is not None and new is not n:
                    n = new
                    break
        else:
            return n
    raise RewriteError(f"rewrite of {n!r} did not reach a fixpoint in {MAX_STEPS} steps")


def rewrite_graph(g: Graph, rules: list[Rule], ctx: Any = None) -> Graph:
    """Rewrite every node of `g` bottom-up with `rules`; returns a new graph (nothing mutated).

    A rule may build new nodes; their operands are rewritten too, so the result is a fixpoint."""
    from ..ir.ops import make

    # id -> (node, result): the node is kept alive so its id cannot be reused by a node a rule
    # builds later (temporaries built by rules would otherwise die and alias memo entries).
    memo: dict[int, tuple[Node, Node]] = {}

    def rebuild(n: Node, src: tuple[Node, ...]) -> Node:
        if n.op is Op.INPUT or all(a is b for a, b in zip(src, n.src)):
            return n
        return make(n.op, src, **dict(n.arg))

    def rw(n: Node) -> Node:
        hit = memo.get(id(n))
        if hit is not None and hit[0] is n:
            return hit[1]
        cur = rebuild(n, tuple(rw(s) for s in n.src))
        for _ in range(MAX_STEPS):
            new = next((r for p, fn in rules if p.match(cur) and (r := fn(cur, ctx)) is not None and r is not cur),
                       None)
            if new is None:
                break
            cur = rebuild(new, tuple(rw(s) for s in new.src))
        else:
            raise RewriteError(f"rewrite of {n!r} did not reach a fixpoint in {MAX_STEPS} steps")
        memo[id(n)] = (n, cur)
        memo[id(cur)] = (cur, cur)
        return cur

    for n in toposort([n for _, n in g.outputs]):  # operands first keeps the recursion shallow
        rw(n)
    return g.replace(tuple((name, rw(n)) for name, n in g.outputs))


def rewrite_expr(e: Expr, rules: list[Rule], ctx: Any = None) -> Expr:
    """Rewrite an expression bottom-up with `rules` to a fixpoint."""
    memo: dict[int, Expr] = {}
    for n in expr_toposort([e]):
        src = tuple(memo[id(s)] for s in n.src)
        cur = n if all(a is b for a, b in zip(src, n.src)) else Expr(n.op, n.dtype, src, n.arg)
        memo[id(n)] = _apply(cur, rules, ctx)
    return memo[id(e)]


__all__ = ["E", "Pat", "Rule", "RewriteError", "pat", "rewrite_expr", "rewrite_graph"]
