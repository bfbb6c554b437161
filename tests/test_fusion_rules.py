"""Fusion declared by families: rules a family declares (passes/fusion_rules.py) decide the grouping.

Test-only rules prove the two mechanisms later families plug into: a `dequantize` prologue on the
matmul's B operand (quantized GEMM) and a reduction epilogue across tiles (the Sparton head)."""

from __future__ import annotations

import dataclasses

import pytest

import tilefuse as tf
from tilefuse.compiler import compile_graph
from tilefuse.ir.ops import Op
from tilefuse.kernels import fusion_rules, registry, spec_for
from tilefuse.passes import canonicalize, fuse, run_pipeline
from tilefuse.passes.fusion_rules import FusionRules, GroupRule, PointwiseEpilogue, Prologue, ReductionEpilogue
from tilefuse.report import format_report

M, K, N, G = 16, 256, 64, 128


def _awq(g: tf.GraphBuilder, name: str) -> tf.Tensor:
    qw = g.input(f"{name}_q", (K, N // 8), "i32")
    qz = g.input(f"{name}_z", (K // G, N // 8), "i32")
    sc = g.input(f"{name}_s", (K // G, N), "f16")
    return tf.dequantize_awq(qw, qz, sc, group_size=G)


def _base() -> FusionRules:
    """The registered families' rules without the quant_matmul family's (which declares the real dequantize
    prologue, tests/test_quant_gemm.py)."""
    return FusionRules.of(r for fam in registry.families().values() if fam.name != "quant_matmul" for r in fam.fusion)


def _with(*extra: GroupRule, base: FusionRules | None = None) -> FusionRules:
    """The registered families' rules (less quant_matmul's) plus test-only `extra` rules (merged by kind)."""
    return FusionRules.of([*(base or _base()).groups.values(), *extra])


def _no_matmul_reductions() -> FusionRules:
    """The base rules with the matmul's reduction epilogues (and the pointwise ops of their results) taken out."""
    groups = dict(_base().groups)
    keep = tuple(e for e in groups["matmul"].epilogues if isinstance(e, PointwiseEpilogue) and not e.reduced)
    groups["matmul"] = dataclasses.replace(groups["matmul"], epilogues=keep)
    return FusionRules.of(groups.values())


def _groups(g: tf.GraphBuilder, rules: FusionRules) -> list[tuple[str, list[str]]]:
    """(kind, ops) of each group that computes something (not the copies of view outputs)."""
    fused = fuse(canonicalize(g.build()), rules)
    return [(grp.kind, [n.op.value for n in grp.nodes]) for grp in fused.groups if grp.kind != "copy"]


def _dequant_b(operands: tuple[int, ...], becomes: str | None = None) -> GroupRule:
    """A test-only prologue rule: dequantize on the given matmul operands (one unit of cost per node)."""
    pro = Prologue(operands, frozenset({"dequantize"}), max_cost=4, cost=lambda n: 1, becomes=becomes)
    return GroupRule("matmul", prologues=(pro,))


def x_at_dequant() -> tf.GraphBuilder:
    g = tf.GraphBuilder("x_deq")
    g.output("y", g.input("x", (M, K), "f16") @ _awq(g, "w"))
    return g


def test_dequantize_stays_its_own_group_without_a_rule():
    assert _groups(x_at_dequant(), _base()) == [("dequantize", ["dequantize"]), ("matmul", ["matmul"])]


def test_dequantize_prologue_rule_on_b_makes_one_group():
    fused = fuse(canonicalize(x_at_dequant().build()), _with(_dequant_b((1,))))
    assert [grp.kind for grp in fused.groups] == ["matmul"]
    grp = fused.groups[0]
    assert [n.op for n in grp.prologue] == [Op.DEQUANTIZE]
    assert grp.anchor is not None and grp.anchor.op is Op.MATMUL


def test_prologue_rule_applies_only_to_its_operand():
    assert len(_groups(x_at_dequant(), _with(_dequant_b((0,))))) == 2
    g = tf.GraphBuilder("deq_x")
    g.output("y", tf.matmul(_awq(g, "w"), g.input("x", (N, M), "f16")))  # dequantized A, rule on B
    assert len(_groups(g, _with(_dequant_b((1,))))) == 2


def test_prologue_cost_limit_and_becomes():
    assert len(_groups(x_at_dequant(), _with(GroupRule("matmul", prologues=(Prologue(
        (1,), frozenset({"dequantize"}), max_cost=0, cost=lambda n: 1),))))) == 2
    # a family extending another's anchor names the kind it lowers
    assert _groups(x_at_dequant(), _with(_dequant_b((1,), becomes="test_qmatmul"))) == [
        ("test_qmatmul", ["dequantize", "matmul"])]


def test_sum_of_two_dequantized_planes_comes_along_as_feeders():
    g = tf.GraphBuilder("two_planes")
    g.output("y", g.input("x", (M, K), "f16") @ (_awq(g, "hi") + _awq(g, "lo")))
    # today: the add is a pointwise prologue, the planes are kernels of their own
    assert sorted(k for k, _ in _groups(g, _base())) == ["dequantize", "dequantize", "matmul"]
    planes = GroupRule("matmul", prologues=(Prologue((1,), frozenset({"pointwise"}), max_cost=8,
                                                     feeders=frozenset({"dequantize"})),))
    # both rules fit operand 1; the one pulling in the most nodes wins
    assert _groups(g, _with(planes)) == [("matmul", ["dequantize", "dequantize", "pointwise", "matmul"])]


def _mm_relu_reduce(op: str, axis: int, batch: tuple[int, ...] = ()) -> tf.GraphBuilder:
    g = tf.GraphBuilder("sparton_head")
    h = g.input("h", (*batch, M, K), "f32")
    w = g.input("w", (K, N), "f32")
    b = g.input("b", (N,), "f32")
    g.output("s", tf.reduce(tf.relu(h @ w + b), op, axis=axis))
    return g


MAX_OVER_M = GroupRule("matmul", epilogues=(ReductionEpilogue(frozenset({-2}), ops=frozenset({"max"})),))


def test_reduction_epilogue_over_m_makes_one_group():
    no_reductions = _no_matmul_reductions()
    assert len(_groups(_mm_relu_reduce("max", 0), no_reductions)) == 2
    # matmul, bias add, relu and the max over M (read through the canonical form's permute)
    assert _groups(_mm_relu_reduce("max", 0), _with(MAX_OVER_M, base=no_reductions)) == [
        ("matmul", ["matmul", "pointwise", "pointwise", "reduce"])]
    fused = fuse(canonicalize(_mm_relu_reduce("max", 0).build()), _with(MAX_OVER_M, base=no_reductions))
    assert [o.op for o in fused.groups[0].outputs] == [Op.REDUCE]
    # batched: M is axis 1 of [B, M, N]
    assert [k for k, _ in _groups(_mm_relu_reduce("max", 1, (3,)), _with(MAX_OVER_M, base=no_reductions))] == [
        "matmul"]
    # the matmul family declares it (kernels/matmul): the group also writes the squeezed [N] output itself
    fused = fuse(canonicalize(_mm_relu_reduce("max", 0).build()), fusion_rules())
    assert [(g.kind, [n.op.value for n in g.nodes]) for g in fused.groups] == [
        ("matmul", ["matmul", "pointwise", "pointwise", "reduce", "reshape"])]
    assert [o.op for o in fused.groups[0].outputs] == [Op.RESHAPE]


@pytest.mark.parametrize("op,axis", [("sum", 0), ("max", 1), ("max", -1)])
def test_reduction_that_the_rule_does_not_declare_stays_separate(op, axis):
    rules = _with(MAX_OVER_M, base=_no_matmul_reductions())
    assert [k for k, _ in _groups(_mm_relu_reduce(op, axis), rules)] == ["matmul", "reduction"]


def test_fusion_rules_conflicts_are_refused():
    with pytest.raises(ValueError, match="opens groups of two kinds"):
        FusionRules.of([GroupRule("a", anchors=frozenset({Op.MATMUL})), GroupRule("b", opens=frozenset({Op.MATMUL}))])
    with pytest.raises(ValueError, match="does not lower"):
        registry.register_fusion("matmul", GroupRule("attention", anchors=frozenset({Op.ATTENTION})))
    with pytest.raises(ValueError, match="does not lower"):  # an extension that nobody would lower
        registry.register_fusion("attention", _dequant_b((1,)))
    with pytest.raises(ValueError, match="unknown kernel family"):
        registry.register_fusion("no_such_family", _dequant_b((1,)))


def test_registered_families_declare_their_anchors():
    rules = fusion_rules()
    assert {op for op in Op if rules.is_anchor(op)} == {Op.MATMUL, Op.ATTENTION, Op.ATTENTION_BWD,
                                                         Op.PAGED_ATTENTION, Op.SPMM, Op.SDDMM, Op.SPARSE_SOFTMAX,
                                                         Op.PROJECT_GAUSSIANS, Op.RASTERIZE_GAUSSIANS,
                                                         Op.PROJECT_GAUSSIANS_BWD, Op.RASTERIZE_GAUSSIANS_BWD}
    assert rules.opener(Op.POINTWISE).kind == "pointwise" and rules.opener(Op.REDUCE).kind == "reduction"


def test_reduction_and_copy_kernels_get_the_rowwise_tvm_template():
    """RowwiseSpec.family is "pointwise" for every rowwise kind; the registry maps the kinds to it."""
    g = tf.GraphBuilder("softmax_and_copy")
    x = g.input("x", (8, 32), "f32")
    g.output("y", tf.softmax(x))
    g.output("xt", x.T)  # a view of an input: no kernel computes it, so a copy kernel writes it
    kg = run_pipeline(g.build(), fusion_rules()).kernels
    kinds = {k.group.kind: spec_for(kg, k, "tvm") for k in kg.kernels}
    assert set(kinds) == {"reduction", "copy"}
    rowwise = registry.template("pointwise", "tvm")
    for spec in kinds.values():
        assert spec.family == "pointwise" and spec.template("tvm") is rowwise
    report = format_report(compile_graph(g.build(), "cpu", db=None, cost_model=None))
    assert "[pointwise/reduction]" in report and "[pointwise/copy]" in report
