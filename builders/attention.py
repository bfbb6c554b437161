"""Builders for the attention op and its backward (the masks and score mods are in builders/masks.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..frontend import Tensor
from ..ir.expr import Expr
from ..ir.ops import Op, VerifyError, make
from .common import results


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, mask_mod: Expr | None = None,
              score_mod: Expr | None = None, extra: Sequence[Tensor] = (), return_lse: bool = False,
              post_mod: Expr | None = None) -> Any:
    """post_mod(softmax(scale q k^T (score_mod, masked))) v (post_mod: an f32 Expr over VAR `p`, see
    `softmax_threshold`; not renormalised); returns out, or (out, lse) with return_lse."""
    kw: dict[str, Any] = {"return_lse": return_lse}
    if scale is not None:
        kw["scale"] = float(scale)
    if mask_mod is not None:
        kw["mask_mod"] = mask_mod
    if score_mod is not None:
        kw["score_mod"] = score_mod
    if post_mod is not None:
        kw["post_mod"] = post_mod
    node = make(Op.ATTENTION, [q.node, k.node, v.node, *(t.node for t in extra)], **kw)
    return results(node) if return_lse else Tensor(node)


# Builder for the attention_bwd op (ir/attention_bwd_op.py): gradients of `attention`.
def attention_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dout: Tensor, lse: Tensor, *,
                       scale: float | None = None, mask_mod: Expr | None = None, score_mod: Expr | None = None,
                       extra: Sequence[Tensor] = ()) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of `attention(q, k, v, scale, mask_mod, score_mod, extra, return_lse=True) -> (out, lse)`
    given dout. mask_mod / score_mod are the forward's expressions (extras from operand 3); their loads
    are renumbered to the backward's operands (extras from 6). score_mod must be differentiable in the
    score (softcap, scales, where(...) of differentiable branches, additive biases)."""
    from ..ir.attention_bwd_op import shift_loads

    for t in (out, lse):  # results of the forward node: its post-softmax expression has no backward here
        fwd = t.node.src[0] if t.node.op is Op.RESULT else t.node
        if fwd.op is Op.ATTENTION and fwd.attr("post_mod") is not None:
            raise VerifyError("attention backward does not support post-softmax expressions (the forward "
                              "attention has a post_mod); differentiate an attention without post_mod")
    kw: dict[str, Any] = {}
    if scale is not None:
        kw["scale"] = float(scale)
    if mask_mod is not None:
        kw["mask_mod"] = shift_loads(mask_mod, 3)
    if score_mod is not None:
        kw["score_mod"] = shift_loads(score_mod, 3)
    srcs = [t.node for t in (q, k, v, out, dout, lse, *extra)]
    dq, dk, dv = results(make(Op.ATTENTION_BWD, srcs, **kw))
    return dq, dk, dv
