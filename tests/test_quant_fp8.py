"""Block-scaled FP8 GEMM (kernels/quant/fp8.py): dequantize_fp8_act(xq, sx) @ dequantize_fp8_block(wq, sw) is one
quant_matmul kernel that scales each 128-K step's product, on the interpreter (native fp8 dots and the software
decode), on the CPU, and for fp8 weight-only GEMMs; against the float64 reference with poisoned outputs, odd M,
N not a multiple of the 128 block and K not a multiple of it either (the last, partial block has its scale)."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.compiler import compile_graph
from tilefuse.errors import TilefuseError
from tilefuse.ir import dtypes as dt
from tilefuse.ir.reference import evaluate
from tilefuse.schedule.target import get_target

from fp8_cases import fp8_codes, fp8_graph, fp8_inputs, fp8_mismatch
from helpers import to_np

N = 200  # not a multiple of 128 (nor of the decode tile's 64): the last weight block is partial


def run_checked(cg: object, ins: dict[str, np.ndarray]) -> None:
    """Poisoned outputs; max error within the output dtype's tolerance and DeepGEMM's mismatch < 1e-3."""
    got = to_np(cg.run(ins, poison=True)["y"])  # type: ignore[attr-defined]
    want = evaluate(cg.graph, ins)["y"]  # type: ignore[attr-defined]
    assert got.shape == want.shape and np.all(np.isfinite(got)), "unwritten (poisoned) or non-finite elements"
    rtol, atol = dt.tolerance(cg.graph.outputs[0][1].dtype)  # type: ignore[attr-defined]
    scale = max(1.0, float(np.max(np.abs(want))))
    err = float(np.max(np.abs(got - want)))
    assert err <= (atol + rtol) * scale, f"max error {err} (scale {scale})"
    assert fp8_mismatch(got, want) < 1e-3


def compiled(g: tf.Graph, target: str, **knobs: int) -> object:
    """`g` compiled for `target` with its family default, the given knobs replaced."""
    probe = compile_graph(g, target, db=None, cost_model=None, aot=False)
    ck = probe.kernels[0]
    if not knobs:
        return probe
    return compile_graph(g, target, configs={ck.spec.name: ck.config.replace(**knobs)}, db=None, cost_model=None)


@pytest.mark.interp
@pytest.mark.parametrize("m,k,mma", [(1, 384, 0), (5, 320, 0), (5, 384, 1), (1, 320, 1)])
def test_block_scaled_fp8_on_the_interpreter(m: int, k: int, mma: int) -> None:
    g = fp8_graph(m, k, N, epilogue=m == 5)
    cg = compiled(g, "interp", FP8_MMA=mma)
    ck = cg.kernels[0]  # type: ignore[attr-defined]
    assert [c.spec.family for c in cg.kernels] == ["quant_matmul"]  # type: ignore[attr-defined]
    assert ck.spec.fp8 is not None and ck.config.int("BLOCK_K") == 128
    src = ck.spec.render_triton(ck.config)
    assert "acc += tl.dot(" in src and "* sa_ld" in src and "* sb_ld" in src
    # native: the fp8 tiles go to tl.dot as loaded; software: their bytes are decoded to f16 first
    assert ("tl.float16, bitcast=True" in src) == (mma == 0)
    assert f"FP8_MMA={mma} ({'native' if mma else 'bytes decoded'}" in cg.report()  # type: ignore[attr-defined]
    run_checked(cg, fp8_inputs(g, seed=m * 100 + k))


@pytest.mark.interp
@pytest.mark.parametrize("mma", [0, 1])
def test_checkpoint_nk_layout_with_split_k(mma: int) -> None:
    """DeepSeek-V3 stores weight [N, K] and weight_scale_inv [N/128, K/128]: read transposed, split-K 2."""
    g = fp8_graph(3, 512, 256, layout="nk", out="bf16")
    cg = compiled(g, "interp", FP8_MMA=mma, SPLIT_K=2, BLOCK_N=128)
    run_checked(cg, fp8_inputs(g, seed=5 + mma))


@pytest.mark.parametrize("m", [1, 5])
def test_block_scaled_fp8_on_the_cpu(m: int) -> None:
    """The CPU dequantizes both operands into its f32 panels (GEMV schedule at M=1, GEMM at M=5)."""
    g = fp8_graph(m, 320, N, epilogue=True)
    cg = compile_graph(g, "cpu", db=None, cost_model=None)
    assert [c.spec.family for c in cg.kernels] == ["quant_matmul"]
    assert cg.kernels[0].config.int("gemv") == (m == 1)
    run_checked(cg, fp8_inputs(g, seed=m))


def weight_only(m: int, k: int, n: int) -> tuple[tf.Graph, dict[str, np.ndarray]]:
    b = tf.GraphBuilder("w8a16_fp8")
    w = tf.dequantize_fp8_block(b.input("wq", (k, n), "f8e4m3"), b.input("sw", (-(-k // 128), -(-n // 128)), "f32"),
                                out_dtype="f16")
    b.output("y", b.input("x", (m, k), "f16") @ w)
    rng = np.random.default_rng(k)
    ins = {"x": rng.standard_normal((m, k)).astype(np.float32), "wq": fp8_codes(rng, (k, n)),
           "sw": rng.uniform(0.5, 1.5, (-(-k // 128), -(-n // 128))).astype(np.float32) / (130 * k ** 0.5)}
    return b.build(), ins


@pytest.mark.parametrize("target", [pytest.param("interp", marks=pytest.mark.interp), "cpu"])
def test_fp8_weight_only_gemm_decodes_in_the_loader(target: str) -> None:
    g, ins = weight_only(5, 256, N)
    cg = compile_graph(g, target, db=None, cost_model=None)
    assert [c.spec.family for c in cg.kernels] == ["quant_matmul"] and cg.kernels[0].spec.fp8 is None
    run_checked(cg, ins)


def test_a_nan_code_gives_nan_like_the_reference() -> None:
    """e4m3's S.1111.111 is NaN: the decode keeps it (not the 480 its bits would give), in its column only."""
    g, ins = weight_only(2, 128, 16)
    ins["wq"][7, 3] = np.nan
    got = to_np(compile_graph(g, "cpu", db=None, cost_model=None).run(ins)["y"])
    want = evaluate(g, ins)["y"]
    assert np.isnan(got[:, 3]).all() and np.isnan(want[:, 3]).all()
    assert np.isfinite(np.delete(got, 3, axis=1)).all()


def test_knob_space_offers_block_k_128_only_and_native_dots_from_sm_89() -> None:
    spec = compiled(fp8_graph(16, 256, 256), "interp").kernels[0].spec  # type: ignore[attr-defined]
    s80, s90 = spec.knob_space(get_target("sm_80")), spec.knob_space(get_target("sm_90"))
    assert s80["BLOCK_K"] == s90["BLOCK_K"] == (128,)
    assert s80["FP8_MMA"] == (0,) and s90["FP8_MMA"] == (0, 1)
    assert spec.default_config(get_target("sm_90")).int("FP8_MMA") == 1
    assert spec.default_config(get_target("sm_80")).int("FP8_MMA") == 0
    # a K group the scaled dot cannot step over (64) takes the dequantizing loader instead
    b = tf.GraphBuilder("g64")
    x = tf.dequantize(b.input("xq", (4, 256), "f8e4m3"), b.input("sx", (4, 4), "f32"), shape=(4, 256), bits=8,
                      group_size=64, scale_layout="group_n", out_dtype="f16")
    b.output("y", x @ tf.dequantize_fp8_block(b.input("wq", (256, 128), "f8e4m3"), b.input("sw", (2, 1), "f32"),
                                              out_dtype="f16"))
    other = compile_graph(b.build(), "interp", db=None, cost_model=None, aot=False).kernels[0]
    assert other.spec.family == "quant_matmul" and other.spec.fp8 is None
    assert "FP8_MMA" not in other.config


@pytest.mark.parametrize("target,knobs,words", [
    ("interp", {"BLOCK_K": 64}, ("BLOCK_K must be 128", "got BLOCK_K=64")),
    ("sm_80", {"FP8_MMA": 1}, ("FP8_MMA=1", "sm_89", "sm_80")),
])
def test_configs_the_scaled_dot_cannot_run_are_clear_errors(target: str, knobs: dict[str, int], words) -> None:
    g = fp8_graph(16, 256, 256)
    name = compile_graph(g, "interp", db=None, cost_model=None, aot=False).kernels[0].spec.name
    cfg = compile_graph(g, target, db=None, cost_model=None, aot=False).kernels[0].config.replace(**knobs)
    with pytest.raises(TilefuseError) as err:
        compile_graph(g, target, configs={name: cfg}, db=None, cost_model=None, aot=False)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_software_decode_declares_u8_pointers_and_native_fp8e4nv() -> None:
    """sm_80's Triton refuses fp8e4nv pointers: under FP8_MMA=0 the codes are u8 (the executors pass views)."""
    ck = compiled(fp8_graph(16, 256, 256), "interp").kernels[0]  # type: ignore[attr-defined]
    sw = ck.spec.launch_plan(ck.config.replace(FP8_MMA=0)).launches[0].signature()
    hw = ck.spec.launch_plan(ck.config.replace(FP8_MMA=1)).launches[0].signature()
    assert [sw[a] for a in ("in0", "in2")] == ["*u8", "*u8"] and [hw[a] for a in ("in0", "in2")] == ["*fp8e4nv"] * 2
    assert sw["in1"] == hw["in1"] == "*fp32"


FP8_TEXT = """graph fp8 {{
  %xq = input f8e4m3[4, 256]
  %sx = input {sx}
  %wq = input f8e4m3[256, 128]
  %sw = input f32[2, 1]
  %x = dequantize(%xq, %sx) {{bits=8, group_size=128, out_dtype=f32, scale_layout="group_n"}} : f32[4, 256]
  %w = dequantize(%wq, %sw) {{bits=8, group_size=128, out_dtype=f32, scale_layout="block"}} : f32[256, 128]
  %y = matmul(%x, %w) {{out_dtype=bf16, trans_a=false, trans_b=false}} : bf16[4, 128]
  output y = %y
}}
"""


@pytest.mark.parametrize("sx,words", [
    ("i32[4, 2]", ("scales", "f16/bf16/f32/f64", "i32")),           # activation scales of the wrong dtype
    ("f8e4m3[4, 2]", ("scales", "f16/bf16/f32/f64", "f8e4m3")),     # fp8 scales
    ("f32[4, 3]", ("scales", "f32[4, 3]", "[4, 2]")),                 # one scale per 128 K: 2 groups, not 3
])
def test_bad_fp8_scales_are_one_cli_error_line(tmp_path, capsys, sx: str, words) -> None:
    from tilefuse.cli import main

    path = tmp_path / "bad.tf"
    path.write_text(FP8_TEXT.format(sx=sx))
    assert main(["run", str(path), "--target", "interp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error:") and not any(line.startswith("error:") for line in err[1:]), err
    assert all(w in err[0] for w in words), err[0]


@pytest.mark.interp
def test_fp8_text_form_runs(tmp_path, capsys) -> None:
    from tilefuse.cli import main

    path = tmp_path / "ok.tf"
    path.write_text(FP8_TEXT.format(sx="f32[4, 2]"))
    assert main(["run", str(path), "--target", "interp"]) == 0, capsys.readouterr().err
