"""The attention_bwd op: gradients of `attention`, with inference, verification and float64 reference.

    attention_bwd(q, k, v, o, do, lse, extra...) {scale, mask_mod?, score_mod?}

q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv] as for `attention` (GQA: q head h reads kv
head h // (Hq // Hkv)); o and do [B, Hq, Sq, Dv] in q's dtype are the forward output and its
gradient; lse [B, Hq, Sq] f32 is the forward's natural-log LSE. Extra operands follow lse, so loads in
mask_mod / score_mod count over all operands: extras are operands 6, 7, ... (`shift_loads` renumbers
a forward expression, whose extras start at 3; the `attention_backward` builder does it).

Results (dq [B, Hq, Sq, D], dk [B, Hkv, Sk, D], dv [B, Hkv, Sk, Dv]) in q's dtype. Semantics
(float64): s_raw = scale q k^T, s = score_mod(s_raw) (s_raw without one), P = exp(s - lse) where
mask_mod holds and lse is finite, else 0 (fully masked rows contribute nothing); dV = P^T dO;
dP = dO V^T; delta = rowsum(dO * O); dS = P * (dP - delta); dS_raw = dS * score_mod'(s_raw) where P
is live, else 0; dQ = scale dS_raw K; dK = scale dS_raw^T Q. dK and dV of a kv head sum over the query
heads of its group.

score_mod may be any expression differentiable in the score (ir/autodiff.py: softcap's c tanh(s / c),
a per-head scale loaded from an extra, where(...) of differentiable branches); score_mod' is its
symbolic derivative, with torch's subgradients at kinks. Additive biases, `score + bias(b, h, q_idx,
kv_idx)` (ALiBi, relative position biases), have score_mod' = 1 and skip the multiplication. A
score_mod that depends on the score through floor, a comparison used as a value, an integer cast,
... raises VerifyError.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import dtypes as dt
from .attention_op import INDEX_VARS, _check_mod, _infer_attention, eval_mask, index_grid, make_loader
from .autodiff import NotDifferentiableError, derivative
from .expr import E, Expr, toposort as expr_toposort, vars_used
from .ops import Node, Op, VerifyError, fmt_shape, register
from .reference import eval_expr, evaluator, rnd

FIRST_EXTRA = 6  # q, k, v, o, do, lse come first


def is_additive(e: Expr) -> bool:
    """Whether score_mod `e` is `score` plus/minus terms that do not depend on the score."""
    if e.op is E.VAR and e.arg == "score":
        return True
    if e.op in (E.ADD, E.SUB):
        a, b = e.src
        if "score" not in vars_used(b) and is_additive(a):
            return True
        return e.op is E.ADD and "score" not in vars_used(a) and is_additive(b)
    return False


def score_derivative(score_mod: Expr) -> Expr | None:
    """d score_mod / d score, or None for an additive score_mod (derivative 1, the fast path)."""
    if is_additive(score_mod):
        return None
    return derivative(score_mod, "score")


def shift_loads(e: Expr, by: int) -> Expr:
    """`e` with every load's operand index increased by `by` (forward extras 3.. -> backward 6..)."""
    memo: dict[int, Expr] = {}
    for n in expr_toposort([e]):
        src = tuple(memo[id(s)] for s in n.src)
        arg = n.arg + by if n.op is E.LOAD else n.arg
        same = arg == n.arg and all(a is b for a, b in zip(src, n.src))
        memo[id(n)] = n if same else Expr(n.op, n.dtype, src, arg)
    return memo[id(e)]


@register(Op.ATTENTION_BWD, (6, 64))
def _infer_attention_bwd(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    q, k, v, o, do, lse = srcs[:6]
    _, _, fwd = _infer_attention(srcs[:3], {"scale": a.get("scale")})
    b, hq, sq, _ = q.shape
    out_shape = (b, hq, sq, v.shape[3])
    what = f"attention_bwd of q {q.dtype}{fmt_shape(q.shape)}"
    for name, x in (("o", o), ("do", do)):
        if x.dtype != q.dtype or x.shape != out_shape:
            raise VerifyError(f"{what}: {name} is {x.dtype}{fmt_shape(x.shape)}; it must be "
                              f"{q.dtype}{fmt_shape(out_shape)} (the forward output's type)")
    if lse.dtype != dt.f32 or lse.shape != (b, hq, sq):
        raise VerifyError(f"{what}: lse is {lse.dtype}{fmt_shape(lse.shape)}; it must be f32{fmt_shape((b, hq, sq))}")
    norm: dict[str, Any] = {"scale": fwd["scale"]}
    idx_vars = {name: dt.i32 for name in INDEX_VARS}
    mods = (("mask_mod", dt.bool_, idx_vars), ("score_mod", dt.f32, {**idx_vars, "score": dt.f32}))
    used: set[int] = set()
    for key, want, allowed in mods:
        e = a.get(key)
        if e is None:
            continue
        norm[key] = _check_mod(e, key, srcs, want, allowed)
        loads = {n.arg for n in expr_toposort([e]) if n.op is E.LOAD}
        if any(i < FIRST_EXTRA for i in loads):
            raise VerifyError(f"attention_bwd: {key} loads operand(s) {sorted(loads)}; extras are operands "
                              f"{FIRST_EXTRA}.. (q, k, v, o, do, lse come first; use shift_loads(expr, 3) on "
                              "a forward expression)")
        used |= loads
    if "score_mod" in norm:
        try:
            score_derivative(norm["score_mod"])
        except NotDifferentiableError as err:
            msg = f"attention_bwd: score_mod has no derivative in the score, so it has no backward: {err}"
            raise VerifyError(msg) from None
    unused = sorted(set(range(FIRST_EXTRA, len(srcs))) - used)
    if unused:
        raise VerifyError(f"{what}: extra operands {unused} are not read by mask_mod or score_mod")
    hkv, sk = k.shape[1], k.shape[2]
    norm["results"] = ((q.dtype, q.shape), (q.dtype, (b, hkv, sk, k.shape[3])), (q.dtype, v.shape))
    return q.dtype, q.shape, norm


def _group_sum(x: np.ndarray, hkv: int) -> np.ndarray:
    """[B, Hq, ...] -> [B, Hkv, ...]: sum over the query heads of each kv head."""
    b, hq = x.shape[:2]
    return x.reshape((b, hkv, hq // hkv) + x.shape[2:]).sum(axis=2)


@evaluator(Op.ATTENTION_BWD)
def _eval_attention_bwd(n: Node, xs: list[Any]) -> Any:
    q, k, v, o, do, lse = (np.asarray(x, dtype=np.float64) for x in xs[:6])
    b, hq, sq, _ = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    kk = np.repeat(k, hq // hkv, axis=1)
    vv = np.repeat(v, hq // hkv, axis=1)
    scale = n.attr("scale")
    s = scale * np.einsum("bhqd,bhkd->bhqk", q, kk)
    shape = (b, hq, sq, sk)
    score_mod = n.attr("score_mod")
    dmod: Any = None
    if score_mod is not None:
        env = {**index_grid(b, hq, sq, sk), "score": s}
        loads = make_loader(xs, "attention_bwd score_mod")
        d_expr = score_derivative(score_mod)
        if d_expr is not None:
            dmod = np.broadcast_to(np.asarray(eval_expr(d_expr, variables=env, loads=loads), dtype=np.float64), shape)
        s = np.broadcast_to(np.asarray(eval_expr(score_mod, variables=env, loads=loads), dtype=np.float64), shape)
    live = eval_mask(n.attr("mask_mod"), xs, shape) & np.isfinite(lse)[..., None]
    p = np.where(live, np.exp(np.where(live, s - lse[..., None], 0.0)), 0.0)
    dv = _group_sum(np.einsum("bhqk,bhqd->bhkd", p, do), hkv)
    dp = np.einsum("bhqd,bhkd->bhqk", do, vv)
    delta = (do * o).sum(axis=-1)
    ds = p * (dp - delta[..., None])
    if dmod is not None:  # the chain rule through score_mod, at the raw score
        ds = np.where(live, ds * dmod, 0.0)
    dq = scale * np.einsum("bhqk,bhkd->bhqd", ds, kk)
    dk = _group_sum(scale * np.einsum("bhqk,bhqd->bhkd", ds, q), hkv)
    return rnd(dq, n.dtype), rnd(dk, n.dtype), rnd(dv, n.dtype)
