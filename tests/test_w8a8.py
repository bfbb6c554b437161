"""W8A8 int8: the quantize row kernel and the i8 x i8 -> i32 GEMM with both scales in its epilogue, on the
Triton interpreter and the CPU against the reference (fresh inputs, poisoned outputs, odd sizes, zero rows),
and AOT for sm_80 / sm_90: spill-free, IMMA / IGMMA in the SASS. The quick AOT test builds the linear layer
once per arch; `pytest -m slow` sweeps M in {1, 16, 4096} and two weight shapes and builds the FP8 quantize.
The FP8 codes on the interpreter come from the software encoder (ir/fp8_encode.py, tests/test_fp8_encode.py)."""

from __future__ import annotations


import numpy as np
import pytest

import tilefuse as tf
from tilefuse.compiler import compile_graph
from tilefuse.ir import dtypes as dt
from tilefuse.ir.reference import evaluate

from helpers import to_np
from test_ir_quantize import hostile_rows, quant_graph


def families(cg) -> list[str]:
    return [ck.spec.family for ck in cg.kernels]


def run_exact(cg, ins: dict) -> dict:
    """Outputs on poisoned buffers (an unwritten i8 code reads -128, never a valid code)."""
    outs = cg.run(ins, poison=True)
    return {name: to_np(outs[name]) for name, _ in cg.graph.outputs}


@pytest.mark.parametrize("target", [pytest.param("interp", marks=pytest.mark.interp), "cpu"])
@pytest.mark.parametrize("m,k", [(1, 72), (5, 200), (7, 4096)])
def test_per_token_int8_is_one_row_kernel_equal_to_the_reference(target, m, k):
    g = quant_graph((m, k))
    cg = compile_graph(g, target, db=None, cost_model=None)
    assert families(cg) == ["pointwise"]  # the absmax reduction and the codes in one pass
    x = hostile_rows(np.random.default_rng(m * k), m, k)
    got, want = run_exact(cg, {"x": x}), evaluate(g, {"x": x})
    for name in ("q", "s"):
        assert np.array_equal(got[name], want[name]), name


@pytest.mark.parametrize("target", [pytest.param("interp", marks=pytest.mark.interp), "cpu"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "f64"])
def test_round_is_ties_to_even_on_every_backend(target, dtype):
    vals = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 1023.5, 2048.0, -3.7]
    if dtype != "f16":
        vals += [4194304.5, 8388607.5, -8388607.5, 8388609.0, 1e10, -1e10]
    g = tf.GraphBuilder("rint")
    g.output("y", tf.apply(tf.ir.expr.round_, g.input("x", (len(vals),), dtype)))
    g = g.build()
    x = np.asarray(vals, dtype=dt.to_numpy(dt.dtype(dtype)))
    got = run_exact(compile_graph(g, target, db=None, cost_model=None), {"x": x})["y"]
    assert np.array_equal(got, np.rint(x.astype(np.float64))), got


@pytest.mark.parametrize("target", [pytest.param("interp", marks=pytest.mark.interp), "cpu"])
def test_rms_norm_then_quantize_is_one_row_kernel(target):
    """The decoder's norm and the activation quantization of the next GEMM share one pass over the row."""
    g = tf.GraphBuilder("norm_quant")
    q, s = tf.quantize(tf.rms_norm(g.input("x", (5, 256), "f16"), g.input("w", (256,), "f16")))
    g.output("q", q)
    g.output("s", s)
    g = g.build()
    cg = compile_graph(g, target, db=None, cost_model=None)
    assert families(cg) == ["pointwise"]
    rng = np.random.default_rng(4)
    ins = {"x": hostile_rows(rng, 5, 256), "w": rng.uniform(0.5, 1.5, 256).astype(np.float16)}
    got, want = run_exact(cg, ins), evaluate(g, ins)
    for name in ("q", "s"):
        assert np.array_equal(got[name], want[name]), name


def fp8_on_the_interpreter():
    g = quant_graph((5, 256), "bf16", "f8e4m3", 128)
    cg = compile_graph(g, "interp", db=None, cost_model=None)
    assert families(cg)[0] == "pointwise"  # then two copies: the grouped results are views of [5, 2, 128]
    x = hostile_rows(np.random.default_rng(3), 5, 256, np.float32)
    return run_exact(cg, {"x": x}), evaluate(g, {"x": evaluate_bf16(x)})


@pytest.mark.interp
def test_fp8_1x128_group_scales_on_the_interpreter():
    got, want = fp8_on_the_interpreter()
    assert np.array_equal(got["s"], want["s"])


@pytest.mark.interp
def test_fp8_1x128_group_codes_on_the_interpreter():
    got, want = fp8_on_the_interpreter()
    assert np.array_equal(got["q"], want["q"])


def evaluate_bf16(x: np.ndarray) -> np.ndarray:
    return dt.round_to(x.astype(np.float64), dt.bf16)


def w8a8_graph(m: int, k: int, n: int, out: str = "f16"):
    g = tf.GraphBuilder("w8a8")
    x = g.input("x", (m, k), "f16")
    y = tf.w8a8_linear(x, g.input("q_w", (k, n), "i8"), g.input("s_w", (n,), "f32"), g.input("b", (n,), "f16"),
                       out_dtype="f32")
    g.output("y", tf.silu(y).to(out))
    return g.build()


def w8a8_inputs(m: int, k: int, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x = hostile_rows(rng, m, k)
    return {"x": x, "q_w": rng.integers(-127, 128, (k, n)).astype(np.int8),
            "s_w": (rng.uniform(0.5, 1.5, n) / (127 * np.sqrt(k))).astype(np.float32),
            "b": rng.standard_normal(n).astype(np.float16)}


@pytest.mark.parametrize("target", [pytest.param("interp", marks=pytest.mark.interp), "cpu"])
@pytest.mark.parametrize("m", [1, 5])
def test_w8a8_linear_is_two_kernels_matching_the_reference(target, m):
    k, n = 256, 72
    g = w8a8_graph(m, k, n, "f32")
    cg = compile_graph(g, target, db=None, cost_model=None)
    assert families(cg) == ["pointwise", "matmul"]  # quantize; GEMM + scales + bias + SiLU
    ins = w8a8_inputs(m, k, n, seed=m)
    got, want = run_exact(cg, ins)["y"], evaluate(g, ins)["y"]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.interp
def test_int8_split_k_sums_exactly_in_i32():
    """127 x 127 x 2048 > 2^24: partial sums kept in an f32 workspace would round."""
    from tilefuse.schedule.config import Config

    m, k, n = 5, 2048, 40
    g = tf.GraphBuilder("i8mm")
    g.output("acc", g.input("a", (m, k), "i8") @ g.input("b", (k, n), "i8"))
    g = g.build()
    name = compile_graph(g, "interp", db=None, cost_model=None, aot=False).kernels[0].spec.name
    cfg = Config(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, GROUP_M=1, SPLIT_K=4, num_warps=4, num_stages=2)
    cg = compile_graph(g, "interp", configs={name: cfg}, db=None, cost_model=None)
    a = np.full((m, k), 127, np.int8)
    b = np.full((k, n), 127, np.int8)
    b[0, :] = -127
    b[1, :] = 1  # not a multiple of 2 after the big terms: f32 cannot hold the sum exactly
    got = run_exact(cg, {"a": a, "b": b})["acc"]
    want = a.astype(np.int64) @ b.astype(np.int64)
    assert want.max() > 2**24 and np.array_equal(got, want)


def assert_w8a8_builds(arch: str, m: int, k: int, n: int) -> None:
    """Both kernels' defaults build without spills; the GEMM issues integer tensor-core MMAs."""
    pytest.importorskip("triton")
    cg = compile_graph(w8a8_graph(m, k, n), arch, db=None, cost_model=None)
    assert families(cg) == ["pointwise", "matmul"]
    for ck in cg.kernels:
        for name, b in ck.binaries[arch].items():
            assert not b.resources.spills, f"{name} M={m} spills on {arch} under {ck.config}: {b.resources}"
            if ck.spec.family != "matmul" or name != ck.spec.name:
                continue
            r = b.resources
            mma = r.igmma if arch == "sm_90" else r.imma
            assert mma > 0 and r.uses_tensor_cores, f"M={m} on {arch} under {ck.config}: no integer MMA ({r})"
            assert r.uses_hgmma == (arch == "sm_90")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_w8a8_default_builds_with_integer_mma(arch):
    assert_w8a8_builds(arch, 16, 1024, 1024)


@pytest.mark.slow
def test_fp8_quantize_builds_natively_for_sm_90_and_as_bytes_for_sm_80():
    pytest.importorskip("triton")
    g = quant_graph((64, 1024), "bf16", "f8e4m3", 128)
    ck = compile_graph(g, "sm_90", db=None, cost_model=None).kernels[0]
    b = ck.binaries["sm_90"][ck.spec.name]
    assert not b.resources.spills and "cvt.rn.satfinite.e4m3x2.f32" in b.ptx and ck.config.int("FP8_BYTES") == 0
    for ck in compile_graph(g, "sm_80", db=None, cost_model=None).kernels:  # Triton refuses fp8e4nv there
        b = ck.binaries["sm_80"][ck.spec.name]
        assert not b.resources.spills and "e4m3" not in b.ptx, ck.spec.name


@pytest.mark.slow
@pytest.mark.parametrize("kn", [(4096, 4096), (4096, 11008)])
@pytest.mark.parametrize("m", [1, 16, 4096])
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_w8a8_defaults_sweep(arch, m, kn):
    assert_w8a8_builds(arch, m, *kn)
