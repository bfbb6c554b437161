"""Dynamic graph parameters in the IR: the text form and builder, the verifier, the reference evaluator
binding sizes from inputs, and the graph key."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.ir import dims
from tilefuse.ir.dims import DynamicSizeError
from tilefuse.ir.lexer import ParseError
from tilefuse.ir.reference import evaluate
from tilefuse.ir.text import parse_graph

MLP = """graph mlp(T=dyn[1..8192, hint=16], H=32) {
  %x = input f16[T, H]
  %w = input f16[H, 48]
  %r = input f32[T, 1]
  %0 = matmul(%x, %w) {out_dtype=f32}
  %1 = pointwise(%0, %r) {expr=(add $0:f32 $1:f32)}
  %2 = reduce(%1) {op="sum", axes=[1], keepdim=true}
  output y = %1
  output s = %2
}
"""


def _inputs(t: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((t, 32)).astype(np.float32), "w": rng.standard_normal((32, 48)).astype(np.float32),
            "r": rng.standard_normal((t, 1)).astype(np.float32)}


def test_text_round_trips_with_ranges_and_hints():
    g = parse_graph(MLP)
    assert g.text.startswith("graph mlp(T=dyn[1..8192, hint=16]) {")
    assert "input f16[T, 32]" in g.text and ": f32[T, 48]" in g.text
    again = parse_graph(g.text)
    assert again.key == g.key and again.text == g.text
    no_hint = parse_graph(MLP.replace(", hint=16", ""))
    assert no_hint.text.startswith("graph mlp(T=dyn[1..8192]) {") and parse_graph(no_hint.text).key == no_hint.key


def test_key_covers_the_range_not_the_bound_value():
    g = parse_graph(MLP)
    assert g.at({"T": 7}).key == g.key
    assert parse_graph(MLP.replace("8192", "4096")).key != g.key
    assert parse_graph(MLP.replace("hint=16", "hint=32")).key != g.key


def test_static_graphs_print_as_before():
    g = parse_graph(MLP, sizes={"T": 16})
    assert not g.is_dynamic and g.text.startswith("graph mlp {")
    assert g.key == parse_graph(MLP.replace("T=dyn[1..8192, hint=16]", "T=16")).key


def test_size_expressions_parse_and_print():
    g = parse_graph("graph g(T=dyn[2..64]) {\n  %x = input f32[T, 4]\n  %y = input f32[2*T + 1]\n"
                    "  %0 = reshape(%x) {shape=[T*4]}\n  output a = %0\n  output b = %y\n}\n")
    assert "input f32[2*T + 1]" in g.text and ": f32[4*T]" in g.text
    assert parse_graph(g.text).key == g.key
    assert int(g.at({"T": 5}).input("y").shape[0]) == 11


def test_builder_matches_the_text_form():
    b = tf.GraphBuilder("mlp")
    t = b.dyn("T", 1, 8192, hint=16)
    x = b.input("x", (t, 32), "f16")
    w = b.input("w", (32, 48), "f16")
    r = b.input("r", (t, 1), "f32")
    y = tf.matmul(x, w, out_dtype="f32") + r
    b.output("y", y)
    b.output("s", tf.reduce(y, "sum", axis=1, keepdim=True))
    assert b.build().key == parse_graph(MLP).key


def test_verifier_compares_sizes_symbolically():
    with pytest.raises(ParseError, match=r"dimension -2 has sizes \[T, 16\]"):
        parse_graph("graph g(T=dyn[1..64]) {\n  %x = input f32[T, 4]\n  %y = input f32[16, 4]\n"
                    "  %0 = pointwise(%x, %y) {expr=(add $0:f32 $1:f32)}\n  output z = %0\n}\n")
    with pytest.raises(ParseError, match="do not broadcast"):
        parse_graph("graph g(T=dyn[1..64], U=dyn[1..64]) {\n  %x = input f32[T, 4]\n  %y = input f32[U, 4]\n"
                    "  %0 = pointwise(%x, %y) {expr=(add $0:f32 $1:f32)}\n  output z = %0\n}\n")


def test_a_parameter_must_be_a_dim_of_an_input_on_its_own():
    with pytest.raises(ParseError, match="no input's dim on their own"):
        parse_graph("graph g(T=dyn[1..64]) {\n  %x = input f32[2*T]\n  output z = %x\n}\n")


def test_range_limits_are_checked_at_the_top():
    with pytest.raises(ParseError, match="dims are at most"):
        parse_graph("graph g(T=dyn[1..4294967296]) {\n  %x = input f32[T]\n  output z = %x\n}\n")


@pytest.mark.parametrize("header, msg", [
    ("T=dyn[0..8]", "1 <= lo <= hi"), ("T=dyn[9..8]", "1 <= lo <= hi"), ("T=dyn[1..8, hint=9]", "hint 9 is outside"),
    ("T=dyn[1 8]", "between the bounds"), ("T=dyn[1..8, hunt=2]", "hint"), ("T=4, T=5", "declared twice"),
])
def test_bad_declarations(header, msg):
    with pytest.raises(ParseError, match=msg):
        parse_graph(f"graph g({header}) {{\n  %x = input f32[T]\n  output z = %x\n}}\n")


def test_override_makes_a_dynamic_parameter_static_within_its_range():
    assert parse_graph(MLP, sizes={"T": 3}).input("x").shape == (3, 32)
    with pytest.raises(ParseError, match=r"T=9000 \(size override\) is outside its declared range 1..8192"):
        parse_graph(MLP, sizes={"T": 9000})


@pytest.mark.parametrize("t", [1, 7, 64])
def test_reference_binds_the_size_from_the_inputs(t):
    g = parse_graph(MLP)
    got = evaluate(g, _inputs(t))
    want = evaluate(parse_graph(MLP, sizes={"T": t}), _inputs(t))
    assert got["y"].shape == (t, 48)
    np.testing.assert_array_equal(got["y"], want["y"])
    np.testing.assert_array_equal(got["s"], want["s"])


def test_reference_refuses_inconsistent_and_out_of_range_sizes():
    g = parse_graph(MLP)
    bad = {**_inputs(4), "r": np.zeros((5, 1), np.float32)}
    with pytest.raises(DynamicSizeError, match="T is 4 in input x dim 0 but 5 in input r dim 0"):
        evaluate(g, bad)
    with pytest.raises(DynamicSizeError, match=r"T=9000 \(input x dim 0\) is outside its declared range 1..8192"):
        evaluate(g, {"x": np.zeros((9000, 32)), "w": np.zeros((32, 48)), "r": np.zeros((9000, 1))})


def test_sym_arithmetic_is_symbolic_and_tracks_the_probe():
    t = dims.param(dims.DynParam("T", 1, 64, 8))
    assert t * 4 == 4 * t and int(t * 4) == 32 and str(t * 4 + 1) == "4*T + 1"
    assert t != 8 and (t * 4) // 4 == t and dims.resolve(-(-t // 3), {"T": 7}) == 3
    assert int(dims.rebind(t * t, {"T": 5})) == 25 and dims.freeze(t * 2, {"T": 5}) == 10
    assert dims.jsonable({"a": [t, 3]}) == {"a": ["dyn:T", 3]}
