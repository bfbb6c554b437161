"""Sparse family: SpMM over a sparse tensor built in the kernel's loads (the `sparse` constructor is
the anchor's prologue on operand 0, never a kernel of its own), with pointwise epilogues."""

from __future__ import annotations

from ...ir.ops import Op
from ...passes.fusion_rules import GroupRule, PointwiseEpilogue, Prologue
from ..registry import register_fusion, register_template
from .sddmm import SddmmSpec
from .spec import SpmmSpec

register_template(SpmmSpec.family, "triton", __name__ + ".triton_template")
register_template(SpmmSpec.family, "tvm", __name__ + ".tvm_template")
# A `sparse` node opens a group named after its op (no family lowers it alone); spmm pulls it in as
# the prologue of operand 0 when spmm is its only reader. Pointwise consumers of the [M, N] output
# (bias, activation, residual, cast) join as the epilogue.
register_fusion(SpmmSpec.family, GroupRule(
    "spmm", anchors=frozenset({Op.SPMM}),
    prologues=(Prologue(operands=(0,), kinds=frozenset({"sparse"}), max_cost=1),),
    epilogues=(PointwiseEpilogue(),)))

register_template(SddmmSpec.family, "triton", __name__ + ".triton_sddmm")
register_template(SddmmSpec.family, "tvm", __name__ + ".tvm_sddmm")
# The pattern's `sparse` node joins sddmm as the prologue of operand 2; pointwise consumers of the
# [nnz] values (a scale, an exp, a cast) join as the epilogue.
register_fusion(SddmmSpec.family, GroupRule(
    "sddmm", anchors=frozenset({Op.SDDMM}),
    prologues=(Prologue(operands=(2,), kinds=frozenset({"sparse"}), max_cost=1),),
    epilogues=(PointwiseEpilogue(),)))

__all__ = ["SddmmSpec", "SpmmSpec"]
