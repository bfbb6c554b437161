"""Sparse family: SpMM over a sparse tensor built in the kernel's loads (the `sparse` constructor is
the anchor's prologue on operand 0, never a kernel of its own), with pointwise epilogues; SDDMM; edge
softmax and the fused SDDMM -> edge softmax -> SpMM (graph attention)."""

from __future__ import annotations

from ...ir.ops import Node, Op
from ...passes.fusion_rules import GroupRule, PointwiseEpilogue, Prologue
from ..registry import register_fusion, register_template
from .edge_softmax import SparseAttentionSpec, SparseSoftmaxSpec
from .sddmm import SddmmSpec
from .spec import SpmmSpec

# Cost bound of a fused graph-attention prologue: the sparse constructors, sddmm, sparse_softmax and the
# pointwise ops between them (a scale, a leaky_relu, a cast) are recomputed in the loads, never stored.
FUSED_COST = 64
SPARSE = frozenset({"sparse"})


def one_structure(nodes: list[Node]) -> bool:
    """Every sparse tensor among `nodes` is a CSR tensor over the same indptr and indices: the fused kernels
    walk one structure (a pattern of its own would need a search per nonzero)."""
    sparse = [n for n in nodes if n.op is Op.SPARSE]
    return all(n.attr("format") == "csr" and n.src[:2] == sparse[0].src[:2] for n in sparse)


register_template(SpmmSpec.family, "triton", __name__ + ".triton_template")
register_template(SpmmSpec.family, "tvm", __name__ + ".tvm_template")
# A `sparse` node opens a group named after its op (no family lowers it alone); spmm pulls it in as
# the prologue of operand 0 when spmm is its only reader. Pointwise consumers of the [M, N] output
# (bias, activation, residual, cast) join as the epilogue.
register_fusion(SpmmSpec.family, GroupRule(
    "spmm", anchors=frozenset({Op.SPMM}),
    prologues=(Prologue(operands=(0,), kinds=SPARSE, max_cost=1),),
    epilogues=(PointwiseEpilogue(),)))

register_template(SddmmSpec.family, "triton", __name__ + ".triton_sddmm")
register_template(SddmmSpec.family, "tvm", __name__ + ".tvm_sddmm")
# The pattern's `sparse` node joins sddmm as the prologue of operand 2; pointwise consumers of the
# [nnz] values (a scale, an exp, a cast) join as the epilogue.
register_fusion(SddmmSpec.family, GroupRule(
    "sddmm", anchors=frozenset({Op.SDDMM}),
    prologues=(Prologue(operands=(2,), kinds=SPARSE, max_cost=1),),
    epilogues=(PointwiseEpilogue(),)))

for _fam in (SparseSoftmaxSpec.family, SparseAttentionSpec.family):
    register_template(_fam, "triton", __name__ + ".triton_softmax")
    register_template(_fam, "tvm", __name__ + ".tvm_softmax")
# sparse_softmax reads its operand's constructor in its loads, and with it the sddmm computing the scores
# when nothing else reads them (scores and softmax in one kernel); pointwise consumers of the [nnz]
# probabilities join as the epilogue.
register_fusion(SparseSoftmaxSpec.family, GroupRule(
    "sparse_softmax", anchors=frozenset({Op.SPARSE_SOFTMAX}),
    prologues=(Prologue(operands=(0,), kinds=SPARSE, max_cost=1),
               Prologue(operands=(0,), kinds=SPARSE, max_cost=FUSED_COST, feeders=frozenset({"sddmm"}),
                        needs_feeders=True, accept=one_structure)),
    epilogues=(PointwiseEpilogue(),)))
# An spmm whose sparse operand's values come from a sparse_softmax kernel read by nothing else pulls that
# kernel (with its sddmm) into its loads: the group becomes one graph-attention kernel.
register_fusion(SparseAttentionSpec.family, GroupRule(
    "spmm", prologues=(Prologue(operands=(0,), kinds=SPARSE, max_cost=FUSED_COST,
                                feeders=frozenset({"sparse_softmax"}), needs_feeders=True,
                                becomes=SparseAttentionSpec.family, accept=one_structure),)))
register_fusion(SparseAttentionSpec.family, GroupRule(SparseAttentionSpec.family, epilogues=(PointwiseEpilogue(),)))

__all__ = ["SddmmSpec", "SparseAttentionSpec", "SparseSoftmaxSpec", "SpmmSpec"]
