"""Quantized GEMM family: dequantize fused as the B-operand prologue of the matmul (kind "quant_matmul").

The family renders through the matmul family's templates: its spec plugs a dequantizing loader into their
operand-loader hook, so epilogues, batching, GROUP_M, split-K, configs and tuning are the matmul's."""

from __future__ import annotations

from ...passes.fusion_rules import GroupRule, Prologue
from ..registry import family, register_fusion, register_template
from .spec import QuantMatmulSpec

# Summed cost of a dequantized B operand (one per dequantize, expression cost of the pointwise ops between it
# and the matmul): two planes and a cast fit, a long elementwise chain stays a kernel of its own.
PROLOGUE_COST = 12
KIND = QuantMatmulSpec.family
MATMUL = family("matmul")

# the matmul family's own templates, which call the spec's loader hook
register_template(KIND, "triton", MATMUL.templates["triton"])
register_template(KIND, "tvm", __name__ + ".tvm_template")
# whatever the matmul's groups accept as epilogues, a quantized matmul's groups accept too
register_fusion(KIND, GroupRule(KIND, epilogues=tuple(e for r in MATMUL.fusion if r.kind == "matmul"
                                                      for e in r.epilogues)))
register_fusion(KIND, GroupRule("matmul", prologues=(
    # x @ dequantize(...): the dequantize is B's loader; dequantize(xq) @ ...: A's (fp8 activations)
    Prologue(operands=(0, 1), kinds=frozenset({"dequantize"}), max_cost=PROLOGUE_COST, becomes=KIND),
    # x @ f(dequantize(...), ...) and x @ (dequantize(p1) + dequantize(p2)): the pointwise chain and the planes
    Prologue(operands=(1,), kinds=frozenset({"pointwise"}), max_cost=PROLOGUE_COST,
             feeders=frozenset({"dequantize"}), becomes=KIND, needs_feeders=True),
)))

__all__ = ["QuantMatmulSpec"]
