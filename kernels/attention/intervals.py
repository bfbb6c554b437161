"""Interval evaluation of scalar expressions over a block grid: bounds (lo, hi) of an expression over
each cell, given the bounds of its variables. The block-sparsity analysis (block_sparsity.py) reads a
mask's bounds per (query block, key block) pair: lo >= 1 is all true, hi <= 0 all false."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...ir import expr as ex
from ...ir.expr import E, Expr

Loader = Callable[[int, list[np.ndarray]], np.ndarray]
Ival = tuple[np.ndarray, np.ndarray]


def _unknown(e: Expr, shape: tuple[int, ...]) -> Ival:
    if e.dtype.is_bool:
        return np.zeros(shape), np.ones(shape)
    return np.full(shape, -np.inf), np.full(shape, np.inf)


def _clean(lo: np.ndarray, hi: np.ndarray) -> Ival:
    return np.where(np.isnan(lo), -np.inf, lo), np.where(np.isnan(hi), np.inf, hi)


def _truth(true: np.ndarray, false: np.ndarray) -> Ival:
    return true.astype(np.float64), 1.0 - false.astype(np.float64)


def _point_const(iv: Ival) -> float | None:
    lo, hi = iv
    if lo.size and np.all(lo == hi) and np.all(lo == lo.flat[0]) and np.isfinite(lo.flat[0]):
        return float(lo.flat[0])
    return None


def _compare(op: E, a: Ival, b: Ival) -> Ival:
    (alo, ahi), (blo, bhi) = a, b
    if op is E.LT:
        return _truth(ahi < blo, alo >= bhi)
    if op is E.LE:
        return _truth(ahi <= blo, alo > bhi)
    if op is E.GT:
        return _truth(alo > bhi, ahi <= blo)
    if op is E.GE:
        return _truth(alo >= bhi, ahi < blo)
    same = (alo == ahi) & (blo == bhi) & (alo == blo)
    apart = (ahi < blo) | (bhi < alo)
    return _truth(same, apart) if op is E.EQ else _truth(apart, same)


def _int_div(op: E, a: Ival, c: float) -> Ival:
    lo, hi = a
    if op is E.IDIV:  # truncation toward zero is monotone non-decreasing for c > 0
        return np.trunc(lo / c), np.trunc(hi / c)
    same_period = (lo >= 0) & (np.floor(lo / c) == np.floor(hi / c))
    nonneg = lo >= 0
    return (np.where(same_period, np.mod(lo, c), np.where(nonneg, 0.0, -(c - 1))),
            np.where(same_period, np.mod(hi, c), c - 1))


def _load(e: Expr, srcs: list[Ival], loads: Loader | None, shape: tuple[int, ...]) -> Ival:
    """A load decides a block pair only where all its indices are constant over the pair."""
    out = _unknown(e, shape)
    if loads is None:
        return out
    point = np.ones(shape, dtype=bool)
    idx = []
    for lo, hi in srcs:
        point &= np.broadcast_to((lo == hi) & np.isfinite(lo), shape)
        idx.append(np.where(np.isfinite(lo), lo, 0).astype(np.int64))
    if not point.any():
        return out
    try:
        val = np.broadcast_to(np.asarray(loads(e.arg, idx), dtype=np.float64), shape)
    except (IndexError, RuntimeError, ValueError):
        return out
    return np.where(point, val, out[0]), np.where(point, val, out[1])


def eval_interval(e: Expr, env: dict[str, Ival], shape: tuple[int, ...], loads: Loader | None = None) -> Ival:
    """Bounds (lo, hi) of `e` over each cell of the block grid, given the bounds of its VARs
    (bools are 0/1). Sound for every expression; ops without a rule give unbounded results."""
    memo: dict[int, Ival] = {}
    with np.errstate(all="ignore"):
        for n in ex.toposort([e]):
            s = [memo[id(x)] for x in n.src]
            memo[id(n)] = _rule(n, s, env, shape, loads)
    lo, hi = memo[id(e)]
    return np.broadcast_to(lo, shape), np.broadcast_to(hi, shape)


def _rule(n: Expr, s: list[Ival], env: dict[str, Ival], shape: tuple[int, ...], loads: Loader | None) -> Ival:
    op = n.op
    if op is E.CONST:
        v = np.array(float(n.arg))
        return v, v
    if op is E.VAR:
        return env[n.arg] if n.arg in env else _unknown(n, shape)
    if op is E.LOAD:
        return _load(n, s, loads, shape)
    if op in ex.COMPARE:
        return _compare(op, s[0], s[1])
    if op is E.WHERE:
        (clo, chi), (alo, ahi), (blo, bhi) = s
        return (np.where(clo == 1, alo, np.where(chi == 0, blo, np.minimum(alo, blo))),
                np.where(clo == 1, ahi, np.where(chi == 0, bhi, np.maximum(ahi, bhi))))
    if n.dtype.is_bool and op in (E.AND, E.OR, E.NOT):
        if op is E.NOT:
            return 1.0 - s[0][1], 1.0 - s[0][0]
        f = np.minimum if op is E.AND else np.maximum
        return f(s[0][0], s[1][0]), f(s[0][1], s[1][1])
    if op is E.NEG:
        return -s[0][1], -s[0][0]
    if op is E.ABS:
        lo, hi = s[0]
        return np.where(lo >= 0, lo, np.where(hi <= 0, -hi, 0.0)), np.maximum(np.abs(lo), np.abs(hi))
    if op in (E.ADD, E.SUB):
        (alo, ahi), (blo, bhi) = s
        return _clean(alo + blo, ahi + bhi) if op is E.ADD else _clean(alo - bhi, ahi - blo)
    if op is E.MUL:
        (alo, ahi), (blo, bhi) = s
        corners = [np.nan_to_num(x, nan=0.0, posinf=np.inf, neginf=-np.inf)
                   for x in (alo * blo, alo * bhi, ahi * blo, ahi * bhi)]
        return np.minimum.reduce(corners), np.maximum.reduce(corners)
    if op in (E.MIN, E.MAX):
        f = np.minimum if op is E.MIN else np.maximum
        return f(s[0][0], s[1][0]), f(s[0][1], s[1][1])
    if op in (E.IDIV, E.MOD) and n.dtype.is_int:
        c = _point_const(s[1])
        if c is not None and c > 0:
            return _int_div(op, s[0], c)
    if op is E.CAST:
        src = n.src[0].dtype
        lo, hi = s[0]
        if n.dtype.is_bool:
            return _truth((lo > 0) | (hi < 0), (lo == 0) & (hi == 0))
        if n.dtype.is_int and src.is_float:
            return np.trunc(lo), np.trunc(hi)
        if src.is_int or src.is_bool or n.dtype.name in ("f32", "f64") or n.dtype.is_int:
            return lo, hi
    return _unknown(n, shape)
