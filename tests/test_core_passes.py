"""Passes: canonicalization rules, fusion decisions, and the pipeline preserving semantics."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse as tf
from tilefuse.ir.graph import Graph
from tilefuse.ir.reference import evaluate
from tilefuse.ir.text import load_graph, parse_graph
from tilefuse.passes import canonicalize, run_pipeline
from tilefuse.kernels import fusion_rules


def _text_graph(body: str) -> Graph:
    return parse_graph("graph t {\n" + body + "\n}\n")


def test_canonicalize_before_expected():
    before = _text_graph("""  %x = input f32[4, 6]
  %0 = pointwise(%x) {expr=(mul $0:f32 1.0:f32)}
  %1 = permute(%0) {perm=[1, 0]}
  %2 = permute(%1) {perm=[1, 0]}
  %3 = pointwise(%2) {expr=(add $0:f32 0.0:f32)}
  %4 = reduce(%3) {op="sum", axes=[0], keepdim=false}
  output y = %4""")
    expected = _text_graph("""  %x = input f32[4, 6]
  %0 = permute(%x) {perm=[1, 0]}
  %1 = reduce(%0) {op="sum", axes=[1], keepdim=true}
  %2 = reshape(%1) {shape=[6]}
  output y = %2""")
    assert canonicalize(before).key == expected.key


def test_decoder_mlp_fuses_into_four_kernels():
    g = load_graph("examples/decoder_mlp.tf", {"T": 4, "H": 64, "I": 96})
    kg = run_pipeline(g, fusion_rules()).kernels
    kinds = [k.group.kind for k in kg.kernels]
    assert kinds == ["reduction", "matmul", "matmul", "matmul"]
    # RMSNorm in one kernel; bias+SiLU fused into the gate GEMM; bias, SiLU(gate)*up into the up GEMM;
    # the residual into the down GEMM.
    assert [len(k.group.nodes) for k in kg.kernels] == [4, 3, 3, 2]
    assert [b.name for b in kg.kernels[-1].outputs] == ["y"]


def test_softmax_is_one_kernel_and_views_are_not_kernels():
    g = tf.GraphBuilder("s")
    x = g.input("x", (5, 7), "f32")
    g.output("y", tf.softmax(tf.permute(x, (1, 0))))
    kg = run_pipeline(g.build(), fusion_rules()).kernels
    assert len(kg.kernels) == 1 and kg.kernels[0].group.kind == "reduction"


def test_prologue_is_fused_into_matmul_operand():
    g = tf.GraphBuilder("p")
    x = g.input("x", (8, 16), "f32")
    s = g.input("s", (16,), "f32")
    w = g.input("w", (16, 4), "f32")
    h = tf.exp(x) * s
    g.output("y", tf.cast(h, "f16") @ tf.cast(w, "f16"))
    kg = run_pipeline(g.build(), fusion_rules()).kernels
    assert len(kg.kernels) == 1
    assert kg.kernels[0].group.prologue


def test_shared_value_is_materialised_once():
    g = tf.GraphBuilder("m")
    x = g.input("x", (8, 16), "f32")
    t = tf.exp(x) * 3.0
    g.output("a", tf.sum(t, -1))
    g.output("b", t @ tf.permute(x, (1, 0)))
    kg = run_pipeline(g.build(), fusion_rules()).kernels
    assert sum(len(k.outputs) for k in kg.kernels) >= 2


@st.composite
def _random_graph(draw):
    g = tf.GraphBuilder("h")
    r, c = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    vals = [g.input("x", (r, c), "f64"), g.input("y", (c,), "f64")]
    for _ in range(draw(st.integers(1, 7))):
        a = draw(st.sampled_from(vals))
        choice = draw(st.integers(0, 5))
        if choice == 0:
            b = draw(st.sampled_from(vals))
            try:
                vals.append(a * b + 1.0)
            except Exception:
                continue
        elif choice == 1:
            vals.append(tf.exp(a * 0.1))
        elif choice == 2 and a.ndim == 2:
            vals.append(tf.max(a, -1, keepdim=True) - a)
        elif choice == 3 and a.ndim == 2:
            vals.append(tf.softmax(a))
        elif choice == 4:
            vals.append(tf.maximum(a, 0.0) * 2.0 + 0.0)
        elif a.ndim == 2:
            vals.append(tf.sum(a, 0))
    g.output("out", vals[-1])
    if len(vals) > 3:
        g.output("mid", vals[len(vals) // 2])
    return g.build()


@settings(max_examples=40, deadline=None)
@given(_random_graph(), st.integers(0, 2**31))
def test_pipeline_preserves_reference_semantics(g, seed):
    """Random graphs evaluate the same before and after canonicalisation."""
    rng = np.random.default_rng(seed)
    ins = {n.attr("name"): rng.standard_normal(n.shape) for n in g.inputs}
    before = evaluate(g, ins)
    after = evaluate(canonicalize(g), ins)
    for k in before:
        np.testing.assert_allclose(after[k], before[k], rtol=1e-12, atol=1e-12)
    run_pipeline(g, fusion_rules())  # fusion and partition accept every such graph


def test_rewrite_memo_survives_dead_temporaries():
    """Regression: rewrite_graph memoised by id(); a rule's temporary node died, its id was reused
    and mean(x, 0) was rewritten into an unrelated value."""
    g = parse_graph("""graph prop {
  %x = input f32[1, 2]
  %0 = pointwise(%x) {expr=(mul $0:f32 $0:f32)}
  %1 = pointwise(%0) {expr=(add $0:f32 0.5:f32)}
  %2 = reduce(%1) {axes=[0], keepdim=false, op="mean"}
  %3 = reduce(%x) {axes=[0], keepdim=false, op="mean"}
  output out = %2
  output mid = %3
}""")
    x = {"x": np.array([[1.5, -2.0]])}
    c = canonicalize(g)
    assert c.output("out") is not c.output("mid")
    np.testing.assert_allclose(evaluate(c, x)["mid"], [1.5, -2.0])
