"""Every op's attributes and the kind of value each accepts, in one table. `make` checks a node's
attributes against it before the op's inference rule runs, so a misspelt attribute (keep_dim) or a
wrongly typed value (keepdim="false", axes=[1.5]) is an error naming the op, the attribute and what is
accepted, instead of being dropped or read as something else. Value ranges (an axis within the rank,
bits in 2, 3, 4, 8) stay with each op's inference rule; this table is about names and types.

Keys are op names (Op.value), so this module needs nothing from ops.py; a test pins that every Op has
an entry."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .dtypes import DType
from .expr import Expr


@dataclass(frozen=True)
class Kind:
    """A kind of attribute value: what the error message calls it, and the test."""

    name: str
    accepts: Callable[[Any], bool]
    optional: bool = False  # None (the attribute's default) is accepted too

    def ok(self, v: Any) -> bool:
        return (self.optional and v is None) or self.accepts(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _all(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, tuple) and all(test(x) for x in v)


def _result_pair(v: Any) -> bool:
    return (isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], (str, DType))
            and _all(_int)(v[1]))


def optional(k: Kind) -> Kind:
    """`k`, or none."""
    return Kind(f"{k.name} or none", k.accepts, optional=True)


BOOL = Kind("true or false", lambda v: isinstance(v, bool))
INT = Kind("an integer", _int)
NUMBER = Kind("a number", _num)
SCALAR = Kind("a number, true or false", lambda v: isinstance(v, (bool, int, float)))
STR = Kind("a string", lambda v: isinstance(v, str))
DTYPE = Kind("a dtype name", lambda v: isinstance(v, (str, DType)))
EXPR = Kind("a scalar expression", lambda v: isinstance(v, Expr))
INTS = Kind("a list of integers", _all(_int))
SHAPE = Kind("a list of positive integers", _all(lambda x: _int(x) and x > 0))
NUMBERS = Kind("a list of numbers", _all(_num))
INT_OR_INTS = Kind("an integer or a list of integers", lambda v: _int(v) or _all(_int)(v))
RESULTS = Kind("a list of [dtype, shape] pairs", _all(_result_pair))

# `results` (multi-result ops) is derived: the printer writes it, inference recomputes it from the operands,
# so text retargeted to another dtype by editing the types still parses.
_ATTENTION = {"scale": optional(NUMBER), "mask_mod": optional(EXPR), "score_mod": optional(EXPR),
              "results": RESULTS}

ATTRS: dict[str, dict[str, Kind]] = {
    "input": {"name": STR, "dtype": DTYPE, "shape": SHAPE},
    "const": {"value": SCALAR, "dtype": DTYPE, "shape": SHAPE},
    "pointwise": {"expr": EXPR},
    "reduce": {"op": STR, "axes": INT_OR_INTS, "keepdim": BOOL},
    "reshape": {"shape": INTS},  # one entry may be -1
    "permute": {"perm": INTS},
    "expand": {"shape": SHAPE},
    "slice": {"starts": INTS, "stops": INTS, "steps": INTS},
    "matmul": {"trans_a": BOOL, "trans_b": BOOL, "out_dtype": DTYPE},
    "result": {"index": INT},
    "attention": {**_ATTENTION, "post_mod": optional(EXPR), "return_lse": BOOL},
    "attention_bwd": _ATTENTION,
    "paged_attention": {"scale": optional(NUMBER), "causal": BOOL, "kv_bits": INT, "group_size": INT,
                        "recent_window": INT, "page_budget": optional(INT), "sink_pages": INT, "local_pages": INT,
                        "return_lse": BOOL, "return_selection": BOOL, "results": RESULTS},
    "dequantize": {"shape": SHAPE, "bits": INT, "out_dtype": DTYPE, "symmetric": BOOL, "double_quant": BOOL,
                   "scale_layout": STR, "group_size": INT_OR_INTS, "codebook": optional(NUMBERS),
                   "pack_dtype": DTYPE, "pack_axis": INT, "pack_order": INTS, "signed": BOOL, "dq_block": INT,
                   "scale_codebook": optional(NUMBERS), "zero_layout": STR, "zeros_packed": BOOL},
    "quantize": {"out_dtype": DTYPE, "group_size": INT, "results": RESULTS},
    "sparse": {"format": STR, "shape": SHAPE, "block": SHAPE, "pattern": NUMBERS},
    "spmm": {"out_dtype": DTYPE, "transposed": BOOL},
    "sddmm": {"out_dtype": DTYPE},
    "sparse_softmax": {"out_dtype": DTYPE},
    "project_gaussians": {"width": INT, "height": INT, "camera": STR, "near": NUMBER, "far": NUMBER,
                          "eps2d": NUMBER, "results": RESULTS},
    "rasterize_gaussians": {"width": INT, "height": INT, "tile": INT, "background": NUMBERS,
                            "pixel_center": NUMBER, "last_contributor": BOOL, "results": RESULTS},
    "project_gaussians_bwd": {"width": INT, "height": INT, "camera": STR, "eps2d": NUMBER, "results": RESULTS},
    "rasterize_gaussians_bwd": {"width": INT, "height": INT, "tile": INT, "background": NUMBERS,
                                "pixel_center": NUMBER, "results": RESULTS},
    "sh_to_color": {"degree": INT},
    "sh_to_color_bwd": {"degree": INT, "results": RESULTS},
}


def plain(v: Any) -> Any:
    """`v` with numpy scalars (np.int64 from a shape, np.float32) as the Python int / float they hold."""
    if isinstance(v, tuple):
        return tuple(plain(x) for x in v)
    if type(v).__name__ == "bool_":
        return bool(v)
    if isinstance(v, (bool, int, float)) or not isinstance(v, numbers.Real):
        return v
    return int(v) if isinstance(v, numbers.Integral) else float(v)


def attr_problems(op: str, attrs: dict[str, Any]) -> list[str]:
    """Every unknown or wrongly typed attribute of an `op` node (empty when all are accepted)."""
    table = ATTRS.get(op, {})
    problems = []
    for name, v in attrs.items():
        kind = table.get(name)
        if kind is None:
            accepted = ", ".join(sorted(table)) or "none"
            problems.append(f"unknown attribute {name!r}; {op} accepts: {accepted}")
        elif not kind.ok(v):
            problems.append(f"attribute {name} must be {kind.name}, got {v!r}")
    return problems

