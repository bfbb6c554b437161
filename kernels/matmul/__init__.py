"""Matmul family: dense, batched and split-K GEMMs with fused prologues and epilogues."""

from __future__ import annotations

from ..registry import register_template
from .spec import MatmulSpec

register_template(MatmulSpec.family, "triton", __name__ + ".triton_template")
register_template(MatmulSpec.family, "tvm", __name__ + ".tvm_template")

__all__ = ["MatmulSpec"]
