"""One test per crash signature the fuzz campaign found outside the parser and size-limit classes
(bench/results/fuzz_campaign-*.md): each mutant went on to raise something other than TilefuseError."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tilefuse.errors import TilefuseError
from tilefuse.ir import Op, parse_graph
from tilefuse.kernels import fusion_rules, spec_for
from tilefuse.passes import run_pipeline
from tilefuse.schedule.target import get_target


def _specs(text: str, target: str) -> list:
    tgt = get_target(target)
    kg = run_pipeline(parse_graph(text), fusion_rules()).kernels
    return [spec_for(kg, k, tgt.backend) for k in kg.kernels]


def _tvm_modules(text: str) -> None:
    from tilefuse.codegen.tvm_runtime import scheduled_module

    tgt = get_target("cpu")
    for spec in _specs(text, "cpu"):
        scheduled_module(spec, spec.check(spec.default_config(tgt), tgt))


# An epilogue that no longer reads the matmul, a norm that no longer reads its reduction: the dead value
# pulled its producer into the kernel, and the TVM schedule found no block for it (ScheduleError).
DEAD_MATMUL = """graph g {
  %x = input f16[16, 64]
  %w = input f16[64, 32]
  %b = input f16[32]
  %m = matmul(%x, %w) {out_dtype=f16}
  %y = pointwise(%m, %b) {expr=(add 20.0:f16 $1:f16)}
  output y = %y
}"""
DEAD_REDUCTION = """graph g {
  %x = input f32[4, 64]
  %n = input f32[64]
  %r = reduce(%x) {op="mean", axes=[1], keepdim=true}
  %y = pointwise(%x, %r, %n) {expr=(mul 2.0:f32 $2:f32)}
  output y = %y
}"""


@pytest.mark.parametrize("text, dead", [(DEAD_MATMUL, Op.MATMUL), (DEAD_REDUCTION, Op.REDUCE)])
def test_an_operand_the_expression_never_reads_is_dropped(text, dead):
    canonical = run_pipeline(parse_graph(text), fusion_rules()).canonical
    assert all(n.op is not dead for n in canonical.nodes)
    _tvm_modules(text)


# A paged_attention whose output is unused and only its lse is: the decode template stored into `out`
# regardless (KeyError: 'out').
LSE_ONLY = """graph decode {
  %q = input bf16[4, 8, 1, 32]
  %kp = input bf16[9, 4, 2, 32]
  %vp = input bf16[9, 4, 2, 32]
  %ip = input i32[5]
  %ix = input i32[7]
  %ll = input i32[4]
  %0 = paged_attention(%q, %kp, %vp, %ip, %ix, %ll) {causal=true, kv_bits=16, return_lse=true}
  %2 = result(%0) {index=1}
  output lse = %2
}"""


@pytest.mark.parametrize("target", ["interp", "sm_90"])
def test_a_decode_kernel_whose_only_used_result_is_the_lse_renders(target):
    tgt = get_target(target)
    (spec,) = _specs(LSE_ONLY, target)
    config = spec.check(spec.default_config(tgt), tgt)
    src = spec.render_triton(config, interpret=target == "interp")
    assert "tl.store(out0 + q_row," in src and src.count("tl.store(out0") == src.count("tl.store(")
    spec.launch_plan(config)


def test_a_bf16_to_int_cast_lowers_for_tvm():
    # TVM has no isnan for bf16 (InternalError); the NaN test now widens to f32 first.
    _tvm_modules("graph g {\n %x = input bf16[2, 7]\n %y = pointwise(%x) {expr=(cast i32 $0:bf16)}\n output y = %y\n}")


@pytest.mark.parametrize("value, dtype, want", [
    (65504.0, "f16", 65504.0), (65519.0, "f16", 65504.0), (65520.0, "f16", math.inf), (2147483647, "f16", math.inf),
    (-1e39, "f16", -math.inf), (1e39, "f32", math.inf), (-3.5e38, "f32", -math.inf), (1e39, "bf16", math.inf),
    (0.1, "f32", float(np.float32(0.1))),
])
def test_a_float_constant_beyond_its_dtype_rounds_as_the_reference_rounds(value, dtype, want):
    # TVM refused the literal (ValueError: exceeds maximum of float16) and folds casts of one.
    from tvm import tirx

    from tilefuse.codegen.tvm_expr import constant
    from tilefuse.ir import dtypes as dt

    c = constant(value, dt.dtype(dtype))
    got = c.value if isinstance(c, tirx.FloatImm) else c.value.value  # Cast(f32 inf) for the half types
    assert got == want


def test_a_constant_beyond_f16_runs_on_the_cpu_like_the_reference():
    import tilefuse as tf
    from tilefuse.ir.reference import evaluate

    g = parse_graph("graph g {\n %x = input f16[8]\n %y = pointwise(%x) {expr=(where (gt $0:f16 70000.0:f16) $0:f16 "
                    "(add $0:f16 65519.0:f16))}\n output y = %y\n}")
    x = np.linspace(-4, 4, 8).astype(np.float16)
    got = tf.compile(g, target="cpu", db=None, cost_model=None)(x)
    np.testing.assert_array_equal(np.asarray(got, np.float64), evaluate(g, {"x": x})["y"])


@pytest.mark.parametrize("scale", ["inf", "-inf", "nan", "1e999", "1" + "0" * 400])
@pytest.mark.parametrize("op", ["attention", "paged_attention"])
def test_an_attention_scale_must_be_finite(op, scale):
    # scale=1e999 reached the workload key (ValueError: Out of range float values are not JSON compliant).
    text = (LSE_ONLY.replace("return_lse=true}", f"return_lse=true, scale={scale}}}") if op == "paged_attention" else
            "graph g {\n %q = input f16[1, 2, 16, 32]\n %k = input f16[1, 2, 16, 32]\n %v = input f16[1, 2, 16, 32]\n"
            f" %o = attention(%q, %k, %v) {{scale={scale}}}\n output o = %o\n}}")
    with pytest.raises(TilefuseError, match="scale must be a finite number"):
        parse_graph(text)


def test_an_integer_literal_beyond_float64_in_a_float_constant_reads_as_infinity():
    """Fuzz campaign: (gt $0:f32 -10^400:f32) was an OverflowError in ir/expr.const."""
    import math

    from tilefuse.ir import expr as ex

    assert ex.const(-(10 ** 400), "f32").arg == -math.inf
    assert ex.const(10 ** 400, "f64").arg == math.inf


@pytest.mark.parametrize("attrs", ['near=1e999', 'eps2d=nan', 'far=' + '9' * 400])
def test_splatting_attributes_must_be_finite(attrs):
    """Fuzz campaign: an infinite projection attribute reached the workload key (JSON has no inf) and a
    400-digit one overflowed float(); both are verifier errors now."""
    text = ("graph g {\n  %m = input f32[4, 3]\n  %s = input f32[4, 3]\n  %q = input f32[4, 4]\n"
            "  %o = input f32[4]\n  %v = input f32[4, 4]\n  %k = input f32[3, 3]\n"
            f"  %p = project_gaussians(%m, %s, %q, %o, %v, %k) {{width=8, height=8, {attrs}}}\n"
            "  %m2 = result(%p) {index=0}\n  output y = %m2\n}\n")
    with pytest.raises(TilefuseError, match="finite number"):
        parse_graph(text)


@pytest.mark.parametrize("text", ["(sub (lt q_idx:i32 4:i32) (lt kv_idx:i32 4:i32))", "(neg (lt q_idx:i32 4:i32))",
                                  "(add (lt q_idx:i32 4:i32) (lt kv_idx:i32 4:i32))"])
def test_arithmetic_on_bool_operands_is_an_expression_error(text):
    """Fuzz campaign: a mask_mod with (sub bool bool) passed the verifier and crashed the block analysis in
    numpy, which refuses bool subtraction."""
    from tilefuse.ir.parser import parse_expr

    with pytest.raises(TilefuseError, match="arithmetic on( a)? bool"):
        parse_expr(text)
