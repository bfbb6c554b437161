"""The verifier's size rules (ir/limits.py): every node's dims, element count, integer attributes and
the constants of its expressions, checked as the node is built, so a graph the backends cannot take
never reaches a pass, an allocation or a code generator. Registered into `ops.NODE_CHECKS`."""

from __future__ import annotations

import weakref
from typing import Any

from .dims import is_dynamic, is_polynomial, upper
from .dtypes import DType
from .expr import E, Expr
from .limits import INT64_MAX, INT64_MIN, MAX_DIM, MAX_ELEMENTS, LimitError, pow2_text
from .ops import NODE_CHECKS, Op, Shape, VerifyError, fmt_shape, prod

DIVISIONS = frozenset({E.DIV, E.IDIV, E.MOD})
# Expressions already checked (with everything below them): fusion rebuilds nodes around the same
# growing expressions, and a walk that stops at checked nodes keeps the check linear overall.
_CHECKED: weakref.WeakSet[Expr] = weakref.WeakSet()


class VerifyLimitError(VerifyError, LimitError):
    """A node whose sizes or constants are beyond ir/limits.py (a VerifyError, so the parser places it)."""


def int_text(v: int) -> str:
    """An integer for a message: huge ones by their width (str() of a 5000-digit int raises)."""
    return str(v) if v.bit_length() <= 128 else f"a {v.bit_length()}-bit integer"


def int_range(d: DType) -> tuple[int, int]:
    """The values an integer dtype holds."""
    if d.is_signed:
        return -(2 ** (d.bits - 1)), 2 ** (d.bits - 1) - 1
    return 0, 2**d.bits - 1


def check_shape(what: str, shape: Shape) -> None:
    """Every dim at most MAX_DIM and the element count at most MAX_ELEMENTS."""
    # A dynamic size is checked at the top of its range: every value it may take must fit.
    for i, n in enumerate(shape):
        if is_dynamic(n) and not is_polynomial(n.poly):
            raise VerifyError(f"{what}: dim {i} of {fmt_shape(shape)} divides a dynamic size; shapes are sums "
                              "of products of sizes (write the shape out, or make the size static)")
        if upper(n) > MAX_DIM:
            at = f" at most (for {', '.join(f'{p.name}={p.hi}' for p in n.params)})" if is_dynamic(n) else ""
            raise VerifyLimitError(f"{what}: dim {i} of {fmt_shape(shape)} is {int_text(upper(n))}{at}; dims are "
                                   f"at most {pow2_text(MAX_DIM)}")
    if upper(prod(shape)) > MAX_ELEMENTS:
        raise VerifyLimitError(f"{what}: {fmt_shape(shape)} has {upper(prod(shape))} elements; a tensor has at "
                               f"most {pow2_text(MAX_ELEMENTS)}")


def check_attr(what: str, name: str, v: Any) -> None:
    """Integer attributes within 64 bits; expressions by `check_expr`."""
    if isinstance(v, tuple):
        for x in v:
            check_attr(what, name, x)
    elif isinstance(v, int) and not isinstance(v, bool) and not INT64_MIN <= v <= INT64_MAX:
        raise VerifyLimitError(f"{what}: attribute {name} holds {int_text(v)}, beyond 64 bits (accepted: "
                               f"-2^63 .. 2^63 - 1)")
    elif isinstance(v, Expr):
        check_expr(what, name, v)


def _check_expr_node(what: str, name: str, n: Expr) -> None:
    if n.op is E.CONST and (n.dtype.is_int and not n.dtype.is_bool):
        lo, hi = int_range(n.dtype)
        if not lo <= n.arg <= hi:
            raise VerifyLimitError(f"{what}: {name} has the constant {int_text(n.arg)} of dtype {n.dtype}, "
                                   f"outside its range {lo} .. {hi}")
    divisor = n.src[1] if n.op in DIVISIONS else n.src[0] if n.op is E.RECIP else None
    if divisor is not None and divisor.op is E.CONST and divisor.arg == 0:
        raise VerifyLimitError(f"{what}: {name} divides by the constant 0 ({n.op.value} of {n.dtype}); "
                               "the backends reject it at compile time")


def check_expr(what: str, name: str, e: Expr) -> None:
    """Integer constants within their dtype's range; no division by a constant zero."""
    walked: list[Expr] = []
    stack = [e]
    while stack:
        n = stack.pop()
        if n in _CHECKED:
            continue
        _check_expr_node(what, name, n)
        walked.append(n)
        stack.extend(n.src)
    _CHECKED.update(walked)  # only once the whole expression passed


def check_node(op: Op, dtype: DType, shape: Shape, attrs: dict[str, Any]) -> None:
    """The size rules of one node (its result shapes, integer attributes and expressions)."""
    what = op.value
    check_shape(what, shape)
    for i, (_, s) in enumerate(attrs.get("results", ())):
        check_shape(f"{what} result {i}", tuple(s))
    if op is Op.SLICE:
        for step in attrs.get("steps", ()):
            if step > MAX_DIM:
                raise VerifyLimitError(f"slice: step {int_text(step)} exceeds {pow2_text(MAX_DIM)} (a step past "
                                       "the axis' size selects one element: use the size)")
    if op is Op.CONST and dtype.is_int and isinstance(attrs.get("value"), int):
        lo, hi = int_range(dtype)
        if not lo <= attrs["value"] <= hi:
            raise VerifyLimitError(f"const: value {int_text(attrs['value'])} is outside the range of {dtype} "
                                   f"({lo} .. {hi})")
    for name, v in attrs.items():
        check_attr(what, name, v)


NODE_CHECKS.append(check_node)
