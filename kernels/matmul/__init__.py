"""Matmul family: dense, batched and split-K GEMMs with fused prologues and epilogues."""

from __future__ import annotations

from ...ir.ops import Op
from ...passes.fusion_rules import GroupRule, PointwiseEpilogue, Prologue, ReductionEpilogue
from ..registry import register_fusion, register_template
from .spec import MatmulSpec

# Largest summed per-element expression cost of a pointwise operand chain recomputed in the tile loads.
PROLOGUE_COST = 8

register_template(MatmulSpec.family, "triton", __name__ + ".triton_template")
register_template(MatmulSpec.family, "tvm", __name__ + ".tvm_template")
# Pointwise chains that feed only A or B are recomputed in the loads (scales, casts); pointwise consumers
# of the output's shape (bias, activation, residual) are applied to the accumulator before the store.
# A reduction of the tile values over rows (M; S of a batched [B, S, V]) or columns (N) is reduced in the
# tile and combined across tiles (the Sparton head's max over S, DoRA's column norm), so the full product
# is never written unless something else reads it; pointwise ops of the reduced results come along. Only
# floating-point values: the partials are f32 (f64 for f64 values). A reduction over N of a value that is
# read elsewhere too (x @ w then softmax or LayerNorm) is left to the row kernel that reads the value.
register_fusion(MatmulSpec.family, GroupRule(
    "matmul", anchors=frozenset({Op.MATMUL}),
    prologues=(Prologue(operands=(0, 1), kinds=frozenset({"pointwise"}), max_cost=PROLOGUE_COST),),
    epilogues=(PointwiseEpilogue(), ReductionEpilogue(frozenset({-2, -1}), floats_only=True, squeeze=True,
                                                     sole_use_axes=frozenset({-1})),
               PointwiseEpilogue(reduced=True))))

__all__ = ["MatmulSpec"]
