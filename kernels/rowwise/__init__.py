"""Rowwise family: fused pointwise chains and last-axis reductions with the pointwise ops around them
(softmax, RMSNorm, LayerNorm), plus copies. Registered as "pointwise", the family string its tuning
records have always carried, for the fusion-group kinds pointwise, reduction and copy."""

from __future__ import annotations

from ...ir.ops import Op
from ...passes.fusion_rules import GroupRule, PointwiseEpilogue, ReductionEpilogue
from ..registry import register_fusion, register_template
from .spec import RowwiseSpec

register_template(RowwiseSpec.family, "triton", __name__ + ".triton_template")
register_template(RowwiseSpec.family, "tvm", __name__ + ".tvm_template")
# A pointwise chain of one shape is one group; a last-axis reduction of a member joins it (the group
# becomes a row kernel), and so do pointwise ops on the rows or on their per-row results. Copies are
# not fusion groups the fuser forms from rules: it adds them for outputs no kernel computes.
_LAST_AXIS = frozenset({-1})
register_fusion(
    RowwiseSpec.family,
    GroupRule("pointwise", opens=frozenset({Op.POINTWISE}),
              epilogues=(PointwiseEpilogue(), ReductionEpilogue(_LAST_AXIS, becomes="reduction"))),
    GroupRule("reduction", opens=frozenset({Op.REDUCE}),
              epilogues=(PointwiseEpilogue(rows=True), ReductionEpilogue(_LAST_AXIS))),
)

__all__ = ["RowwiseSpec"]
