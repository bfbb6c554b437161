"""Monotonicity of scalar expressions in one variable: which way an expression moves when the variable
grows and every other leaf is held fixed.

A max (or min) of values `f(x_i)` with `f` non-decreasing in `x` is `f(max x_i)`; with `f` non-increasing
it is `f(min x_i)`. A reduction epilogue uses this to reduce raw values and apply `f` once per result
(the Sparton head: `max_s log1p(relu(h @ W + b))` is `log1p(relu(max_s (h @ W) + b))`, as the bias is
constant along s). The tables below are the one place that says which ops are monotone.

The log and square-root family count as monotone on their domain: outside it an element is NaN, which
a max does not propagate the same way on every backend anyway (numpy does, Triton's maximum need not)."""

from __future__ import annotations

from .expr import E, Expr, toposort

UP, DOWN, FLAT = 1, -1, 0  # non-decreasing, non-increasing, independent of the variable

# Unary ops by the direction they move with their operand.
UNARY_DIRECTION: dict[E, int] = {
    E.EXP: UP, E.EXP2: UP, E.LOG: UP, E.LOG2: UP, E.LOG1P: UP, E.SQRT: UP, E.TANH: UP, E.SIGMOID: UP,
    E.ERF: UP, E.FLOOR: UP, E.CEIL: UP, E.NEG: DOWN, E.RSQRT: DOWN,
}
# Binary ops monotone in each operand whatever the other's value: (direction in operand 0, in operand 1).
BINARY_DIRECTION: dict[E, tuple[int, int]] = {
    E.ADD: (UP, UP), E.SUB: (UP, DOWN), E.MAX: (UP, UP), E.MIN: (UP, UP),
}


def _sign_of_const(e: Expr) -> int | None:
    """UP for a non-negative constant, DOWN for a non-positive one, None when not a constant."""
    if e.op is not E.CONST or isinstance(e.arg, bool):
        return None
    return UP if e.arg >= 0 else DOWN


def _operand_signs(e: Expr) -> tuple[int | None, ...]:
    """How `e` moves with each of its operands (None: not monotone in it, or not known to be)."""
    if e.op in UNARY_DIRECTION:
        return (UNARY_DIRECTION[e.op],)
    if e.op in BINARY_DIRECTION:
        return BINARY_DIRECTION[e.op]
    if e.op is E.CAST:
        # rounding and saturation to a float keep the order (an integer cast may wrap around)
        return (UP if e.dtype.is_float else None,)
    if e.op is E.MUL:  # monotone in one operand when the other is a constant: its sign says which way
        return (_sign_of_const(e.src[1]), _sign_of_const(e.src[0]))
    if e.op is E.DIV:  # x / c with a constant c != 0
        c = e.src[1]
        return (_sign_of_const(c) if c.op is E.CONST and c.arg != 0 else None, None)
    if e.op is E.WHERE:  # a condition independent of the variable picks one monotone branch
        return (None, UP, UP)
    return tuple(None for _ in e.src)


def direction(e: Expr, var: str) -> int | None:
    """UP when `e` is non-decreasing in VAR `var` (all other leaves fixed), DOWN when non-increasing,
    FLAT when it does not read `var`, None when it is neither or not known to be."""
    memo: dict[int, int | None] = {}
    for n in toposort([e]):
        if not n.src:
            memo[id(n)] = UP if n.op is E.VAR and n.arg == var else FLAT
            continue
        moves = [memo[id(s)] for s in n.src]
        if all(m == FLAT for m in moves):
            memo[id(n)] = FLAT
            continue
        found: set[int | None] = set()
        for m, sign in zip(moves, _operand_signs(n)):
            if m != FLAT:
                found.add(None if m is None or sign is None else m * sign)
        memo[id(n)] = found.pop() if len(found) == 1 else None
    return memo[id(e)]
