"""Attention mask_mod / score_mod / post_mod builders.

Mask helpers return bool `Expr`s over the VARs b, h, q_idx, kv_idx (i32) for `attention(mask_mod=...)`;
combine them with `&`, `|` and `~`. Helpers reading a tensor take the operand index it will have
in the attention node: q, k, v are 0, 1, 2 and `extra` tensors follow from 3.
`softmax_threshold` builds a post_mod (an f32 Expr over VAR `p`, the softmax probability).
Queries are aligned bottom-right when Sq != Sk: query i sits at key position i + (Sk - Sq).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..frontend import Tensor
from ..ir import dims
from ..ir import dtypes as dt
from ..ir import expr as ex
from ..ir.expr import Expr, ExprLike
from ..ir.ops import VerifyError


def _v(name: str) -> Expr:
    return ex.var(name, dt.i32)


def _q_abs(sq: int, sk: int) -> Expr:
    """The key position of query row q_idx under bottom-right alignment."""
    if dims.is_dynamic(sk - sq):  # a mask's constants are numbers: the offset would freeze at one value
        raise VerifyError(f"mask: the query offset Sk - Sq = {sk - sq!s} depends on a dynamic size; masks with "
                          "dynamic sizes need Sq == Sk (the same parameter) or both static")
    return _v("q_idx") + (sk - sq) if sk != sq else _v("q_idx")


def causal_mask(sq: int, sk: int) -> Expr:
    """kv_idx <= q_idx + (Sk - Sq): causal, bottom-right aligned."""
    return _v("kv_idx").le(_q_abs(sq, sk))


def sliding_window_mask(window: int, sq: int, sk: int) -> Expr:
    """Causal and within the `window` most recent keys, the query's own position included:
    q_pos - window < kv_idx <= q_pos."""
    q = _q_abs(sq, sk)
    return causal_mask(sq, sk) & _v("kv_idx").gt(q - window)


def streaming_mask(sink: int, local: int, sq: int, sk: int) -> Expr:
    """StreamingLLM / LServe streaming heads: causal and (kv_idx < sink or in the `local` window)."""
    return causal_mask(sq, sk) & (_v("kv_idx").lt(sink) | _v("kv_idx").gt(_q_abs(sq, sk) - local))


def strided_mask(stride: int, offset: ExprLike, sq: int, sk: int, local: int = 0) -> Expr:
    """LongGen / S2-Attention strided heads: causal and (kv_idx % stride == offset, or within the
    `local` most recent keys). `offset` may be an Expr (e.g. a per-head shift `h % stride`)."""
    hit = (_v("kv_idx") % stride).eq(offset)
    if local > 0:
        hit = hit | _v("kv_idx").gt(_q_abs(sq, sk) - local)
    return causal_mask(sq, sk) & hit


def per_head_mask(head_masks: Sequence[Expr]) -> Expr:
    """Head h uses head_masks[h]; runs of equal masks become one `where(h < end, ...)` branch."""
    if not head_masks:
        raise VerifyError("per_head_mask: needs one mask per head, got none")
    runs: list[tuple[int, Expr]] = []  # (end head, mask)
    for h, m in enumerate(head_masks):
        if runs and runs[-1][1] is m:
            runs[-1] = (h + 1, m)
        else:
            runs.append((h + 1, m))
    out = runs[-1][1]
    for end, m in reversed(runs[:-1]):
        out = ex.where(_v("h").lt(end), m, out)
    return out


def _batch_head(t: Tensor) -> tuple[ExprLike, ExprLike]:
    return (0 if t.shape[0] == 1 else _v("b")), (0 if t.shape[1] == 1 else _v("h"))


def _truth(e: Expr) -> Expr:
    return e if e.dtype.is_bool else e.ne(0)


def block_mask(operand: int, mask: Tensor, bq: int, bk: int) -> Expr:
    """A bool/u8 block mask [B|1, H|1, ceil(Sq/bq), ceil(Sk/bk)] read at (b, h, q_idx//bq, kv_idx//bk)."""
    b, h = _batch_head(mask)
    return _truth(ex.load(operand, mask.dtype, b, h, _v("q_idx") // bq, _v("kv_idx") // bk))


def topk_block_mask(operand: int, index: Tensor, bq: int, bk: int) -> Expr:
    """Top-k block index lists [B|1, H|1, nqblocks, K] (i32 kv block ids, -1 = padding): true iff
    kv_idx // bk is among the K ids of the query's block (an OR over the K loads)."""
    b, h = _batch_head(index)
    kvb = _v("kv_idx") // bk
    qb = _v("q_idx") // bq
    hits = [ex.load(operand, index.dtype, b, h, qb, j).eq(kvb) for j in range(index.shape[3])]
    out = hits[0]
    for e in hits[1:]:
        out = out | e
    return out


def document_mask(operand: int, doc_id: Tensor) -> Expr:
    """Varlen / packed documents: doc_id[q_idx] == doc_id[kv_idx] for an i32 doc_id [S] (Sq == Sk)."""
    return ex.load(operand, doc_id.dtype, _v("q_idx")).eq(ex.load(operand, doc_id.dtype, _v("kv_idx")))


def softcap_score(cap: float) -> Expr:
    """score_mod for logit soft-capping: cap * tanh(score / cap)."""
    s = ex.var("score", dt.f32)
    return ex.tanh(s * (1.0 / cap)) * cap


def softmax_threshold(tau: float) -> Expr:
    """post_mod for SATA-style score thresholding: keep the probability p where p >= tau, else 0
    (not renormalised: kept rows sum to at most 1)."""
    p = ex.var("p", dt.f32)
    return ex.where(p.ge(float(tau)), p, 0.0)

