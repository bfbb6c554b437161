"""The attention op: inference, verification and numpy reference semantics.

    attention(q, k, v, extra...) {scale, mask_mod?, score_mod?, post_mod?, return_lse}

q is [B, Hq, Sq, D], k is [B, Hkv, Sk, D], v is [B, Hkv, Sk, Dv] with Hq % Hkv == 0 (grouped-query
attention: q head h reads kv head h // (Hq // Hkv)); q, k, v share one dtype in f16/bf16/f32.
Operands after v ("extras") are tensors that `mask_mod` / `score_mod` / `post_mod` read with explicit
loads; operand numbering counts over all operands (q=0, k=1, v=2, extras from 3).

Semantics (float64): s = scale * q k^T; s = score_mod(s) if given (VAR `score`:f32 and the index
VARs b, h, q_idx, kv_idx:i32); positions where mask_mod (a bool Expr over b, h, q_idx, kv_idx) is
false get -inf; P = softmax_kv(s); out = P @ v. Rows with every position masked output 0 and lse = -inf.
With return_lse the node has two results: (out [B, Hq, Sq, Dv] in q's dtype, lse [B, Hq, Sq] f32,
the natural-log logsumexp of the (scaled, score-modded, masked) scores).

post_mod (an f32 Expr over VAR `p`:f32, the final probability exp(s - lse) of the position, and the
index VARs) rewrites the probabilities after the softmax, e.g. SATA's threshold
`where(p >= tau, p, 0)`: P' = post_mod(P) where mask_mod holds, 0 where it does not (and 0 on rows
whose lse is -inf); out = P' @ v. P' is NOT renormalised: its rows need not sum to 1, and this op
offers no way to renormalise them (the row sums are what the same attention computes with v = ones;
a caller needing renormalised output must divide by those itself). lse stays the logsumexp of the
scores before post_mod.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import dtypes as dt
from .expr import E, Expr, toposort as expr_toposort
from .ops import Node, Op, VerifyError, fmt_shape, register
from .reference import ReferenceEvalError, eval_expr, evaluator, rnd

ATTN_DTYPES = (dt.f16, dt.bf16, dt.f32)
INDEX_VARS = ("b", "h", "q_idx", "kv_idx")


def _check_mod(e: Any, name: str, srcs: tuple[Node, ...], want: dt.DType, allowed: dict[str, dt.DType]) -> Expr:
    """Verify a mask_mod/score_mod/post_mod expression: its dtype, free variables and operand loads."""
    if not isinstance(e, Expr):
        raise VerifyError(f"attention: {name} must be an Expr, got {type(e).__name__}")
    if e.dtype != want:
        raise VerifyError(f"attention: {name} must produce {want}, got {e.dtype}")
    for n in expr_toposort([e]):
        if n.op is E.VAR:
            if n.arg not in allowed:
                raise VerifyError(f"attention: {name} uses variable {n.arg!r}; accepted: {sorted(allowed)}")
            if n.dtype != allowed[n.arg]:
                raise VerifyError(f"attention: {name} variable {n.arg!r} must be {allowed[n.arg]}, got {n.dtype}")
        elif n.op is E.ARG:
            raise VerifyError(f"attention: {name} may not use $i operands; read extras with (load i dtype idx...)")
        elif n.op is E.LOAD:
            i = n.arg
            if not 3 <= i < len(srcs):
                raise VerifyError(f"attention: {name} loads operand {i} but the extra operands are 3.."
                                  f"{len(srcs) - 1} (q, k, v are 0, 1, 2 and cannot be loaded)")
            x = srcs[i]
            if n.dtype != x.dtype:
                raise VerifyError(f"attention: {name} loads operand {i} as {n.dtype} but it is {x.dtype}")
            if len(n.src) != x.ndim:
                raise VerifyError(f"attention: {name} loads operand {i} {x.dtype}{fmt_shape(x.shape)} with "
                                  f"{len(n.src)} indices; it needs {x.ndim}")
    return e


def attention_scale(scale: Any, d: int, what: str) -> float:
    """The score scale: 1/sqrt(head dim) by default, else a finite number (inf or nan would make every
    score inf or nan, and no workload key can hold them)."""
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise VerifyError(f"{what}: scale must be a number, got {scale!r}")
    try:
        value = float(scale)
    except OverflowError:  # an int beyond the float range
        value = math.inf
    if not math.isfinite(value):
        raise VerifyError(f"{what}: scale must be a finite number, got {scale!r}")
    return value

@register(Op.ATTENTION, (3, 64))
def _infer_attention(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    q, k, v = srcs[:3]
    what = (f"attention of q {q.dtype}{fmt_shape(q.shape)}, k {k.dtype}{fmt_shape(k.shape)}, "
            f"v {v.dtype}{fmt_shape(v.shape)}")
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise VerifyError(f"{what}: q, k, v must be rank 4 ([B, H, S, D])")
    if q.dtype not in ATTN_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise VerifyError(f"{what}: q, k, v must share one dtype in {[str(d) for d in ATTN_DTYPES]}")
    b, hq, sq, d = q.shape
    if k.shape[0] != b or v.shape[0] != b:
        raise VerifyError(f"{what}: batch sizes differ")
    if k.shape[3] != d:
        raise VerifyError(f"{what}: q and k head dims differ ({d} vs {k.shape[3]})")
    if v.shape[1] != k.shape[1] or v.shape[2] != k.shape[2]:
        raise VerifyError(f"{what}: k and v must agree on kv heads and kv length")
    hkv, dv = k.shape[1], v.shape[3]
    if hq % hkv:
        raise VerifyError(f"{what}: q heads {hq} must be a multiple of kv heads {hkv} (GQA)")
    norm: dict[str, Any] = {"scale": attention_scale(a.get("scale"), d, "attention")}
    idx_vars = {name: dt.i32 for name in INDEX_VARS}
    if a.get("mask_mod") is not None:
        norm["mask_mod"] = _check_mod(a["mask_mod"], "mask_mod", srcs, dt.bool_, idx_vars)
    if a.get("score_mod") is not None:
        norm["score_mod"] = _check_mod(a["score_mod"], "score_mod", srcs, dt.f32, {**idx_vars, "score": dt.f32})
    if a.get("post_mod") is not None:
        norm["post_mod"] = _check_mod(a["post_mod"], "post_mod", srcs, dt.f32, {**idx_vars, "p": dt.f32})
    used = set()
    for key in ("mask_mod", "score_mod", "post_mod"):
        if key in norm:
            used |= {n.arg for n in expr_toposort([norm[key]]) if n.op is E.LOAD}
    unused = sorted(set(range(3, len(srcs))) - used)
    if unused:
        raise VerifyError(f"{what}: extra operands {unused} are not read by mask_mod, score_mod or post_mod")
    out_shape = (b, hq, sq, dv)
    ret_lse = a.get("return_lse", False)
    if not isinstance(ret_lse, bool):
        raise VerifyError(f"attention: return_lse must be true or false, got {ret_lse!r}")
    if ret_lse:
        norm["return_lse"] = True
        norm["results"] = ((q.dtype, out_shape), (dt.f32, (b, hq, sq)))
    return q.dtype, out_shape, norm


def index_grid(b: int, h: int, sq: int, sk: int) -> dict[str, np.ndarray]:
    """Broadcastable int64 arrays for the VARs b, h, q_idx, kv_idx over [B, H, Sq, Sk]."""
    return {
        "b": np.arange(b).reshape(b, 1, 1, 1), "h": np.arange(h).reshape(1, h, 1, 1),
        "q_idx": np.arange(sq).reshape(1, 1, sq, 1), "kv_idx": np.arange(sk).reshape(1, 1, 1, sk),
    }


def make_loader(xs: list[Any], what: str) -> Any:
    """A LOAD callback reading operand arrays with bounds checks (out of range is an error)."""

    def load(i: int, idx: list[np.ndarray]) -> np.ndarray:
        arr = xs[i]
        full = np.broadcast_arrays(*[np.asarray(j, dtype=np.int64) for j in idx])
        for axis, j in enumerate(full):
            if j.size and (j.min() < 0 or j.max() >= arr.shape[axis]):
                raise ReferenceEvalError(f"{what}: load of operand {i} index on axis {axis} spans "
                                      f"{j.min()}..{j.max()}, outside 0..{arr.shape[axis] - 1}")
        return arr[tuple(full)]

    return load


def eval_mask(mask: Expr | None, xs: list[Any], shape: tuple[int, int, int, int]) -> np.ndarray:
    """The [B, H, Sq, Sk] boolean mask of `mask` (all true when None)."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    grid = index_grid(*shape)
    m = eval_expr(mask, variables=grid, loads=make_loader(xs, "attention mask_mod"))
    return np.broadcast_to(np.asarray(m, dtype=bool), shape)


def _post(post_mod: Expr, p: np.ndarray, keep: np.ndarray, xs: list[Any]) -> np.ndarray:
    """post_mod applied to the probabilities `p` [B, H, Sq, Sk]; 0 where `keep` is false."""
    grid = index_grid(*p.shape)
    pm = eval_expr(post_mod, variables={**grid, "p": p}, loads=make_loader(xs, "attention post_mod"))
    return np.where(keep, np.broadcast_to(np.asarray(pm, dtype=np.float64), p.shape), 0.0)


@evaluator(Op.ATTENTION)
def _eval_attention(n: Node, xs: list[Any]) -> Any:
    q, k, v = (np.asarray(x, dtype=np.float64) for x in xs[:3])
    b, hq, sq, _ = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    group = hq // hkv
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    s = n.attr("scale") * np.einsum("bhqd,bhkd->bhqk", q, k)
    score_mod = n.attr("score_mod")
    if score_mod is not None:
        grid = index_grid(b, hq, sq, sk)
        s = eval_expr(score_mod, variables={**grid, "score": s}, loads=make_loader(xs, "attention score_mod"))
        s = np.broadcast_to(np.asarray(s, dtype=np.float64), (b, hq, sq, sk))
    mask = eval_mask(n.attr("mask_mod"), xs, (b, hq, sq, sk))
    s = np.where(mask, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    live = np.isfinite(m)
    p = np.exp(s - np.where(live, m, 0.0))
    denom = p.sum(axis=-1, keepdims=True)
    post_mod = n.attr("post_mod")
    with np.errstate(divide="ignore", invalid="ignore"):
        if post_mod is None:
            out = np.einsum("bhqk,bhkd->bhqd", p, v) / np.where(live, denom, 1.0)
        else:
            weights = _post(post_mod, p / np.where(live, denom, 1.0), mask & live, xs)
            out = np.einsum("bhqk,bhkd->bhqd", weights, v)
        lse = np.where(live, m + np.log(np.where(live, denom, 1.0)), -np.inf)[..., 0]
    out = np.where(live, out, 0.0)
    out = rnd(out, n.dtype)
    if n.attr("return_lse"):
        return out, rnd(lse, dt.f32)
    return out
