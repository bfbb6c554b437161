"""Hostile text and attributes at the IR's door: every one is a ParseError or VerifyError naming the input
and what is accepted, never a traceback from deep inside, a hang, or a silently different graph."""

from __future__ import annotations

import os

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.ir import expr as ex
from tilefuse.ir import lexer
from tilefuse.ir.attrs import ATTRS
from tilefuse.ir.ops import Op, VerifyError, make
from tilefuse.ir.text import MAX_EXPR_DEPTH, ParseError, format_expr, load_graph, parse_expr, parse_graph


def _graph(body: str, header: str = "(T=4)") -> str:
    return f"graph g{header} {{\n  %x = input f32[T, 8]\n{body}\n}}\n"


REDUCE = "  %s = reduce(%x) {op=\"sum\", axes=[1], keepdim=true}\n  output y = %s"


# ---- files ---------------------------------------------------------------------------------
def test_non_utf8_file_is_a_located_error(tmp_path):
    p = tmp_path / "latin1.tf"
    p.write_bytes(_graph(REDUCE).encode() + b"# caf\xe9\n")
    with pytest.raises(ParseError, match=r"latin1.tf:6:6: byte 0xe9 is not UTF-8 text"):
        load_graph(str(p))


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_endless_file_stops_at_the_size_limit():
    with pytest.raises(ParseError, match=r"/dev/zero: larger than the 64 MiB limit for graph files"):
        load_graph("/dev/zero")


def test_size_limit_counts_bytes(tmp_path, monkeypatch):
    p = tmp_path / "g.tf"
    p.write_text(_graph(REDUCE))
    monkeypatch.setattr(lexer, "MAX_FILE_BYTES", p.stat().st_size)
    assert load_graph(str(p)).name == "g"  # exactly at the limit
    monkeypatch.setattr(lexer, "MAX_FILE_BYTES", p.stat().st_size - 1)
    with pytest.raises(ParseError, match="limit for graph files"):
        load_graph(str(p))


# ---- integers ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, what", [
    (_graph(REDUCE, "(T=1.5)"), "the size of T (a non-negative integer), got '1.5'"),
    (_graph(REDUCE, "(T=1e3)"), "the size of T (a non-negative integer), got '1e3'"),
    (_graph(REDUCE, "(T=²)"), "unexpected character '²'"),
    (_graph(REDUCE, "(T=٣)"), "unexpected character '٣'"),  # an Arabic-Indic digit: \d and int() take it
    (_graph(REDUCE).replace("f32[T, 8]", "f32[T, 8.0]"), "expected a size"),
    (_graph("  %s = pointwise(%x) {expr=(add $0:f32 (load 1.5 f32))}\n  output y = %s"),
     "an operand index (a non-negative integer), got '1.5'"),
    (_graph(REDUCE.replace("axes=[1]", "axes=[1.5]")), "attribute axes must be an integer or a list of integers"),
    (_graph("  %s = slice(%x) {starts=[0, 0.5], stops=[4, 8]}\n  output y = %s"),
     "attribute starts must be a list of integers, got (0, 0.5)"),
    (_graph("  %s = result(%x) {index=0.0}\n  output y = %s"), "attribute index must be an integer"),
])
def test_a_float_where_an_integer_is_expected(text, what):
    with pytest.raises(ParseError) as err:
        parse_graph(text, path="t.tf")
    assert what in str(err.value)
    assert "t.tf:" in str(err.value)


@pytest.mark.parametrize("sizes", [{"T": 1.5}, {"T": True}, {"T": 0}, {"T": "4"}])
def test_size_overrides_must_be_positive_integers(sizes):
    with pytest.raises(ParseError, match="must be a positive integer"):
        parse_graph(_graph(REDUCE), sizes=sizes)


# ---- depth ---------------------------------------------------------------------------------
def _nested(depth: int) -> str:
    return "(neg " * depth + "$0:f32" + ")" * depth


def test_deep_nesting_is_refused_with_the_limit():
    with pytest.raises(ParseError, match=f"nested deeper than the limit of {MAX_EXPR_DEPTH} levels"):
        parse_graph(_graph(f"  %s = pointwise(%x) {{expr={_nested(5000)}}}\n  output y = %s"))


def test_nesting_at_the_limit_parses_and_round_trips():
    e = parse_expr(_nested(MAX_EXPR_DEPTH))
    assert parse_expr(format_expr(e)) is e
    with pytest.raises(ParseError, match="limit of"):
        parse_expr(_nested(MAX_EXPR_DEPTH + 1))


def test_unclosed_and_overfull_expressions_are_located():
    with pytest.raises(ParseError, match="expected '\\)' to close the expression"):
        parse_expr("(neg (neg $0:f32)")
    with pytest.raises(ParseError, match="cast takes 1 operand, got 2"):
        parse_expr("(cast f16 $0:f32 $1:f32)")
    with pytest.raises(ParseError, match="add takes 2 operand"):
        parse_expr("(add $0:f32)")


def test_deeply_nested_lists_are_refused():
    text = _graph(REDUCE.replace("axes=[1]", "axes=" + "[" * 5000 + "1" + "]" * 5000))
    with pytest.raises(ParseError, match="lists nested deeper than the limit of 32"):
        parse_graph(text)


# ---- attributes ----------------------------------------------------------------------------
@pytest.mark.parametrize("attrs, what", [
    ('op="sum", axes=[1], keepdim="false"', "attribute keepdim must be true or false, got 'false'"),
    ('op="sum", axes=[1], keep_dim=true', "unknown attribute 'keep_dim'; reduce accepts: axes, keepdim, op"),
    ('op="sum", axes=[1], keepdim=true, keepdim=false', "attribute 'keepdim' is given twice"),
])
def test_attributes_are_checked_by_name_and_type(attrs, what):
    with pytest.raises(ParseError) as err:
        parse_graph(_graph(f"  %s = reduce(%x) {{{attrs}}}\n  output y = %s"))
    assert what in str(err.value)


def test_attribute_checks_apply_to_the_api():
    x = make(Op.INPUT, (), name="x", dtype="f32", shape=(4, 8))
    with pytest.raises(VerifyError, match="unknown attribute 'keep_dim'"):
        make(Op.REDUCE, [x], op="sum", axes=(1,), keep_dim=True)
    with pytest.raises(VerifyError, match="keepdim must be true or false, got 'false'"):
        make(Op.REDUCE, [x], op="sum", axes=(1,), keepdim="false")
    with pytest.raises(VerifyError, match="trans_a must be true or false.*; attribute bogus|unknown attribute 'bogus'"):
        make(Op.MATMUL, [x, x], trans_a=1, bogus=2)
    # numpy scalars (a size taken from an array's shape) are the integers they hold: the same node
    assert make(Op.RESHAPE, [x], shape=(np.int64(32),)) is make(Op.RESHAPE, [x], shape=(32,))


def test_every_problem_is_reported_at_once():
    x = make(Op.INPUT, (), name="x", dtype="f32", shape=(4, 8))
    with pytest.raises(VerifyError) as err:
        make(Op.MATMUL, [x, x], trans_a=1, bogus=2)
    assert "trans_a must be true or false, got 1" in str(err.value)
    assert "unknown attribute 'bogus'" in str(err.value)


def test_the_attribute_table_covers_every_op():
    assert set(ATTRS) == {op.value for op in Op}


# ---- names ---------------------------------------------------------------------------------
def test_an_output_named_like_an_input_is_refused():
    text = _graph("  %s = pointwise(%x) {expr=(neg $0:f32)}\n  output x = %s")
    with pytest.raises(ParseError, match=r"<text>:4:10: output 'x' has the name of an input"):
        parse_graph(text)
    g = tf.GraphBuilder("g")
    x = g.input("x", (4, 8), "f32")
    g.output("x", tf.exp(x))
    with pytest.raises(VerifyError, match=r"outputs \['x'\] have the names of inputs"):
        g.build()


def test_expressions_from_the_api_still_print():
    e = ex.arg(0, "f32")
    for _ in range(3000):  # printing is iterative: deeper than the parser accepts, still printable
        e = -e
    assert format_expr(e).count("(neg") == 3000
