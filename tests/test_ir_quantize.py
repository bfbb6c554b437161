"""The quantize op: its reference against torch's per-token int8 / 1x128 FP8 recipes, its primitive form
(what the kernels compute) equal to the reference bit for bit, the text form, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.cli import main
from tilefuse.ir import VerifyError, dtypes as dt, parse_graph
from tilefuse.ir.ops import Op, make
from tilefuse.ir.reference import evaluate
from tilefuse.passes import canonicalize


def quant_graph(shape, in_dtype="f16", out_dtype="i8", group_size=-1):
    g = tf.GraphBuilder("quant")
    q, s = tf.quantize(g.input("x", shape, in_dtype), out_dtype, group_size)
    g.output("q", q)
    g.output("s", s)
    return g.build()


def hostile_rows(rng, m, k, dtype=np.float16):
    """Random rows, one all zeros, one whose scale is exactly 1 with ties at +-0.5, 1.5, 2.5."""
    x = (rng.standard_normal((m, k)) * 3).astype(dtype)
    if m > 2:
        x[1] = 0
        x[2, :6] = [127.0, 0.5, 1.5, 2.5, -2.5, -0.5]
        x[2, 6:] = np.clip(x[2, 6:], -100, 100)
    return x


def test_int8_per_token_matches_torch_round_and_clamp():
    torch = pytest.importorskip("torch")
    x = hostile_rows(np.random.default_rng(0), 5, 200)
    got = evaluate(quant_graph((5, 200)), {"x": x})
    t = torch.from_numpy(x).float()
    s = t.abs().amax(-1, keepdim=True) / 127
    q = torch.where(s == 0, 0.0, torch.round(t / s).clamp(-127, 127))
    assert np.array_equal(got["s"], s.double().numpy()) and np.array_equal(got["q"], q.double().numpy())
    assert got["q"][2, :6].tolist() == [127, 0, 2, 2, -2, -0]  # ties to even
    assert not got["q"][1].any() and not got["s"][1].any()  # a zero row: scale 0, codes 0, no NaN


def test_fp8_1x128_groups_match_torch():
    torch = pytest.importorskip("torch")
    x = hostile_rows(np.random.default_rng(1), 3, 256).astype(np.float32)
    x[0, 128:] = 0  # one zero group
    got = evaluate(quant_graph((3, 256), "f32", "f8e4m3", 128), {"x": x})
    t = torch.from_numpy(x).view(3, 2, 128)
    s = t.abs().amax(-1, keepdim=True) / 448
    q = torch.where(s == 0, 0.0, t / s).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    assert got["s"].shape == (3, 2) and np.array_equal(got["s"], s.view(3, 2).double().numpy())
    assert np.array_equal(got["q"], q.view(3, 256).double().numpy())


@pytest.mark.parametrize("in_dtype,out_dtype,group", [("f16", "i8", -1), ("bf16", "i8", 64), ("f32", "i8", -1),
                                                      ("f16", "f8e4m3", 128), ("f32", "f8e4m3", -1)])
def test_primitive_form_equals_the_reference(in_dtype, out_dtype, group):
    """The reduction + pointwise form the kernels compute rounds where the reference rounds: equal exactly."""
    g = quant_graph((2, 3, 256), in_dtype, out_dtype, group)
    canon = canonicalize(g)
    assert Op.QUANTIZE not in {n.op for n in canon.nodes}
    rng = np.random.default_rng(2)
    x = hostile_rows(rng, 6, 256, np.float32).reshape(2, 3, 256) * rng.uniform(0.01, 100, (2, 3, 1))
    want, got = evaluate(g, {"x": x}), evaluate(canon, {"x": x})
    for name in ("q", "s"):
        assert np.array_equal(want[name], got[name]), name


def test_text_round_trip_and_derived_results():
    g = quant_graph((4, 256), "f16", "f8e4m3", 128)
    assert parse_graph(g.text).key == g.key
    assert "(f8e4m3[4, 256], f32[4, 2])" in g.text
    short = ("graph q {\n  %x = input f16[4, 256]\n  %0 = quantize(%x)\n  %1 = result(%0) {index=1}\n"
             "  output s = %1\n}\n")
    assert parse_graph(short).output("s").shape == (4, 1)  # per token by default, i8 codes


@pytest.mark.parametrize("build,words", [
    (lambda g: tf.quantize(g.input("x", (4, 64), "i32")), ["quantize of i32[4, 64]", "operand x", "f16, bf16 or f32",
                                                            "got i32"]),
    (lambda g: tf.quantize(g.input("x", (4, 64), "f16"), "f16"), ["out_dtype must be i8 or f8e4m3, got f16"]),
    (lambda g: tf.quantize(g.input("x", (4, 200), "f16"), "f8e4m3", 128),
     ["group_size 128", "divisor of the last axis (200)"]),
    (lambda g: tf.w8a8_linear(g.input("x", (4, 64), "f16"), g.input("w", (64, 8), "f16"), g.input("s", (8,), "f32")),
     ["q_w must be i8[64, 8]", "got f16[64, 8]"]),
    (lambda g: tf.w8a8_linear(g.input("x", (4, 64), "f16"), g.input("w", (32, 8), "i8"), g.input("s", (8,), "f32")),
     ["q_w must be i8[64, N]", "got i8[32, 8]"]),
    (lambda g: tf.w8a8_linear(g.input("x", (4, 64), "f16"), g.input("w", (64, 8), "i8"), g.input("s", (8,), "f16")),
     ["s_w must be f32[8] or f32[1, 8]", "got f16[8]"]),
    (lambda g: tf.w8a8_linear(g.input("x", (4, 64), "f16"), g.input("w", (64, 8), "i8"), g.input("s", (64, 8), "f32")),
     ["s_w must be f32[8] or f32[1, 8]", "got f32[64, 8]"]),
])
def test_bad_input_is_a_verify_error_naming_operand_expected_and_given(build, words):
    with pytest.raises(VerifyError) as err:
        build(tf.GraphBuilder("bad"))
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_a_two_result_node_is_read_through_result():
    x = make(Op.INPUT, name="x", dtype=dt.f16, shape=(4, 64))
    qn = make(Op.QUANTIZE, [x])
    with pytest.raises(VerifyError, match="operand 0 is a quantize with 2 results"):
        make(Op.POINTWISE, [qn], expr=tf.ir.expr.arg(0, dt.i8))
    with pytest.raises(VerifyError, match="output q is a quantize with 2 results"):
        tf.Graph("g", (("q", qn),))


@pytest.mark.parametrize("line,words", [
    ("%0 = quantize(%x) {out_dtype=i8}", ["quantize of i32[4, 8]", "got i32"]),
    ("%0 = quantize(%f) {group_size=3}", ["group_size 3", "last axis (8)"]),
])
def test_cli_bad_quantize_is_one_error_line(tmp_path, capsys, line, words):
    p = tmp_path / "bad.tf"
    p.write_text(f"graph g {{\n  %x = input i32[4, 8]\n  %f = input f16[4, 8]\n  {line}\n"
                 "  %1 = result(%0) {index=0}\n  output y = %1\n}\n")
    assert main(["run", str(p), "--target", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and [ln for ln in err.splitlines() if "error:" in ln] == [err.splitlines()[0]]
    for w in words:
        assert w in err, (w, err)
