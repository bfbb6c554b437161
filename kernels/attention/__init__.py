"""Attention family: the forward kernel (mask_mod/score_mod/post_mod with compile-time block sparsity
and run-time block lists built by mask_compact), its backward ("attention_bwd") and paged-KV decode
("decode"). Each registers its own spec and Triton template; none has a TVM template yet."""

from __future__ import annotations

from ..registry import register_template
from .bwd_spec import AttentionBwdSpec
from .decode_spec import DecodeSpec
from .spec import AttentionSpec

register_template(AttentionSpec.family, "triton", __name__ + ".triton_template")
register_template(AttentionBwdSpec.family, "triton", __name__ + ".bwd_triton_template")
register_template(DecodeSpec.family, "triton", __name__ + ".decode_triton_template")

__all__ = ["AttentionBwdSpec", "AttentionSpec", "DecodeSpec"]
