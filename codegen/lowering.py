"""Per-op lowering rules: each backend registers how every expression op renders; a missing
rule raises an error naming the op and the backend."""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

from ..errors import LoweringError
from ..ir.expr import E

RULES: dict[str, dict[E, Callable[..., Any]]] = {}


def register_lowering(backend: str, *ops: E) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn` as the rule rendering `ops` on `backend`."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        table = RULES.setdefault(backend, {})
        for op in ops:
            table[op] = fn
        return fn

    return deco


def rule(backend: str, op: E) -> Callable[..., Any]:
    """The rule for `op` on `backend`, or a LoweringError naming both."""
    fn = RULES.get(backend, {}).get(op)
    if fn is None:
        raise LoweringError(f"no {backend} lowering rule for expression op '{op.value}'")
    return fn
