"""Attention family: the forward kernel (mask_mod/score_mod/post_mod with compile-time block sparsity
and run-time block lists built by mask_compact), its backward ("attention_bwd") and paged-KV decode
("decode"). Each registers its own spec and Triton template; the forward also a TVM (cpu) template, which
reads the same block lists (tvm_template.py); the backward and decode are Triton only."""

from __future__ import annotations

from ...ir.ops import Op
from ...passes.fusion_rules import GroupRule
from ..registry import register_fusion, register_template
from .bwd_spec import AttentionBwdSpec
from .decode_spec import DecodeSpec
from .spec import AttentionSpec

register_template(AttentionSpec.family, "triton", __name__ + ".triton_template")
register_template(AttentionSpec.family, "tvm", __name__ + ".tvm_template")
register_template(AttentionBwdSpec.family, "triton", __name__ + ".bwd_triton_template")
register_template(DecodeSpec.family, "triton", __name__ + ".decode_triton_template")
# Each kernel is its anchor alone: no prologue or epilogue fuses into attention yet.
register_fusion(AttentionSpec.family, GroupRule("attention", anchors=frozenset({Op.ATTENTION})))
register_fusion(AttentionBwdSpec.family, GroupRule("attention_bwd", anchors=frozenset({Op.ATTENTION_BWD})))
register_fusion(DecodeSpec.family, GroupRule("paged_attention", anchors=frozenset({Op.PAGED_ATTENTION})))

__all__ = ["AttentionBwdSpec", "AttentionSpec", "DecodeSpec"]
