"""IR: dtypes, expressions, text form round trip, located parse errors, verifier messages."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse as tf
from tilefuse.ir import dtypes as dt
from tilefuse.ir import expr as ex
from tilefuse.ir.ops import Op, VerifyError, make
from tilefuse.ir.reference import evaluate
from tilefuse.ir.text import ParseError, format_expr, parse_expr, parse_graph


def _mlp():
    g = tf.GraphBuilder("mlp")
    x = g.input("x", (4, 8), "f16")
    w = g.input("w", (8, 6), "f16")
    b = g.input("b", (6,), "f16")
    g.output("y", tf.softmax(tf.silu(x @ w + b)))
    return g.build()


def test_hash_consing_is_identity():
    a = ex.arg(0, "f32")
    assert ex.exp(a + 1.0) is ex.exp(ex.arg(0, "f32") + 1.0)
    assert ex.const(1, "f32") is not ex.const(1, "i32")
    assert ex.const(float("nan"), "f32") is ex.const(float("nan"), "f32")


def test_graph_text_round_trip_same_key():
    g = _mlp()
    g2 = parse_graph(g.text)
    assert g2.key == g.key
    assert g2.outputs[0][1] is g.outputs[0][1]


def test_key_changes_with_every_field():
    base = _mlp()
    g = tf.GraphBuilder("mlp")
    x = g.input("x", (4, 8), "bf16")
    w = g.input("w", (8, 6), "bf16")
    b = g.input("b", (6,), "bf16")
    g.output("y", tf.softmax(tf.silu(x @ w + b)))
    assert g.build().key != base.key  # dtype
    assert parse_graph(base.text.replace("graph mlp", "graph mlp2")).key != base.key  # name
    assert parse_graph(base.text.replace("output y", "output z")).key != base.key  # output name


@pytest.mark.parametrize("text,where,what", [
    ("graph g {\n  %x = input f16[4, 4]\n  %y = bogus(%x)\n  output y = %y\n}\n", "3:8", "unknown op 'bogus'"),
    ("graph g {\n  %x = input f99[4]\n  output y = %x\n}\n", "2:14", "unknown dtype"),
    ("graph g {\n  %x = input f16[4]\n  output y = %q\n}\n", "3:14", "used before it is defined"),
    ("graph g {\n  %x = input f16[4]\n", "3:1", "expected"),
])
def test_parse_errors_are_located(text, where, what):
    with pytest.raises(ParseError) as err:
        parse_graph(text, path="t.tf")
    assert f"t.tf:{where}:" in str(err.value)
    assert what in str(err.value)


def test_verifier_names_shapes_and_dtypes():
    g = tf.GraphBuilder("bad")
    x = g.input("x", (4, 8), "f16")
    w = g.input("w", (9, 6), "f16")
    with pytest.raises(VerifyError, match=r"matmul of f16\[4, 8\] and f16\[9, 6\].*8 vs 9"):
        x @ w
    y = g.input("y", (3, 5), "f32")
    with pytest.raises(VerifyError, match=r"\[4, 8\], \[3, 5\] do not broadcast"):
        tf.apply(lambda a, b: a.cast("f32") + b, x, y)


def test_size_parameters_override():
    src = "graph p(N=8) {\n  %x = input f32[N, 2]\n  %y = pointwise(%x) {expr=(exp $0:f32)}\n  output y = %y\n}\n"
    assert parse_graph(src).inputs[0].shape == (8, 2)
    assert parse_graph(src, sizes={"N": 3}).inputs[0].shape == (3, 2)
    with pytest.raises(ParseError, match="name no header parameter"):
        parse_graph(src, sizes={"Q": 3})


def test_bf16_and_fp8_rounding():
    x = np.array([1.0 + 2**-9, 1.0 + 3 * 2**-9, 1000.5])
    assert np.all(dt.round_to(x, dt.bf16) == np.array([1.0, 1.0078125, 1000.0]))
    assert dt.round_to(np.array([500.0]), dt.f8e4m3)[0] == 448.0


def test_reference_matmul_and_reduce():
    rng = np.random.default_rng(1)
    g = tf.GraphBuilder("r")
    a = g.input("a", (2, 3, 5), "f64")
    b = g.input("b", (4, 5), "f64")
    g.output("y", tf.matmul(a, b, trans_b=True))
    g.output("s", tf.sum(a, axis=(0, 2)))
    av, bv = rng.standard_normal((2, 3, 5)), rng.standard_normal((4, 5))
    r = evaluate(g.build(), {"a": av, "b": bv})
    np.testing.assert_allclose(r["y"], av @ bv.T)
    np.testing.assert_allclose(r["s"], av.sum(axis=(0, 2)))


_ops = st.sampled_from(["add", "sub", "mul", "max", "min"])
_un = st.sampled_from(["exp", "neg", "abs", "tanh", "sigmoid", "sqrt"])


@st.composite
def _exprs(draw, depth=3):
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from([ex.arg(0, "f32"), ex.arg(1, "f32"), ex.const(draw(st.floats(-4, 4)), "f32")]))
    if draw(st.booleans()):
        return ex.unary(ex.E(draw(_un)), draw(_exprs(depth=depth - 1)))
    return ex.binary(ex.E(draw(_ops)), draw(_exprs(depth=depth - 1)), draw(_exprs(depth=depth - 1)))


@settings(max_examples=60, deadline=None)
@given(_exprs())
def test_expr_text_round_trip(e):
    assert parse_expr(format_expr(e)) is e


def test_multi_result_needs_result_op():
    g = tf.GraphBuilder("t")
    x = g.input("x", (4,), "f32")
    with pytest.raises(VerifyError, match="single result"):
        make(Op.RESULT, [x.node], index=0)
