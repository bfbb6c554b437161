"""The scalar expression ops: one enum and its families as plain sets (tinygrad's GroupOp), apart
from the node type so that the printer and the parser can name ops without importing expressions."""

from __future__ import annotations

import enum

from ..errors import TilefuseError


class E(enum.Enum):
    """Expression ops."""

    ARG = "arg"  # the value of operand `arg` at the current index (pointwise ops)
    VAR = "var"  # a named index variable (b, h, q_idx, kv_idx, i0, ...) or scalar (score)
    CONST = "const"
    LOAD = "load"  # operand `arg` loaded at the explicit indices in src
    # unary
    NEG = "neg"
    NOT = "not"
    ABS = "abs"
    EXP = "exp"
    EXP2 = "exp2"
    LOG = "log"
    LOG2 = "log2"
    LOG1P = "log1p"
    SQRT = "sqrt"
    RSQRT = "rsqrt"
    SIN = "sin"
    COS = "cos"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    ERF = "erf"
    RECIP = "recip"
    FLOOR = "floor"
    CEIL = "ceil"
    ROUND = "round"  # to the nearest integer, ties to even (torch.round, numpy.rint)
    # binary
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    IDIV = "idiv"  # integer division, floor semantics on non-negative operands
    MOD = "mod"
    MAX = "max"
    MIN = "min"
    POW = "pow"
    AND = "and"
    OR = "or"
    XOR = "xor"
    SHL = "shl"
    SHR = "shr"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    EQ = "eq"
    NE = "ne"
    # other
    WHERE = "where"
    CAST = "cast"
    BITCAST = "bitcast"


UNARY = frozenset({E.NEG, E.NOT, E.ABS, E.EXP, E.EXP2, E.LOG, E.LOG2, E.LOG1P, E.SQRT, E.RSQRT, E.SIN,
                   E.COS, E.TANH, E.SIGMOID, E.ERF, E.RECIP, E.FLOOR, E.CEIL,
                   E.ROUND})
FLOAT_UNARY = UNARY - {E.NEG, E.NOT, E.ABS}
BINARY = frozenset({E.ADD, E.SUB, E.MUL, E.DIV, E.IDIV, E.MOD, E.MAX, E.MIN, E.POW, E.AND, E.OR, E.XOR,
                    E.SHL, E.SHR, E.LT, E.LE, E.GT, E.GE, E.EQ, E.NE})
COMPARE = frozenset({E.LT, E.LE, E.GT, E.GE, E.EQ, E.NE})
BITWISE = frozenset({E.AND, E.OR, E.XOR, E.SHL, E.SHR})
LEAVES = frozenset({E.ARG, E.VAR, E.CONST})
# Approximate cost in "flops" of one evaluation, used by fusion to bound recomputation.
COST = {E.EXP: 4, E.EXP2: 4, E.LOG: 4, E.LOG2: 4, E.LOG1P: 4, E.SQRT: 2, E.RSQRT: 2, E.SIN: 4, E.COS: 4,
        E.TANH: 6, E.SIGMOID: 6, E.ERF: 8, E.DIV: 2, E.POW: 8, E.RECIP: 2}


class ExprError(TilefuseError, TypeError):
    """A malformed scalar expression (wrong operand count, dtype or argument)."""
