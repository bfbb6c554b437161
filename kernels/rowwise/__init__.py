"""Rowwise family: fused pointwise chains and last-axis reductions with the pointwise ops around them
(softmax, RMSNorm, LayerNorm), plus copies. Registered as "pointwise", the family string its tuning
records have always carried, for the fusion-group kinds pointwise, reduction and copy."""

from __future__ import annotations

from ..registry import register_template
from .spec import RowwiseSpec

register_template(RowwiseSpec.family, "triton", __name__ + ".triton_template")
register_template(RowwiseSpec.family, "tvm", __name__ + ".tvm_template")

__all__ = ["RowwiseSpec"]
