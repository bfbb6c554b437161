"""Quantized GEMM family: x @ dequantize(...) is one matmul kernel whose B loader dequantizes, for every
integer/codebook format, on the Triton interpreter and the CPU (TVM), against the float64 reference with
fresh random inputs and poisoned outputs."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.compiler import compile_graph
from tilefuse.ir import dtypes as dt
from tilefuse.ir.reference import evaluate

from helpers import to_np
from quant_formats import Case, awq, graph, gptq, inputs, int2_asym, int8_per_channel, nf4, sym_int4

M, K, N = 5, 256, 72  # odd M, N not a multiple of any tile: every mask is exercised


def check(cg: object, case: Case, seed: int) -> None:
    """Run on fresh inputs with poisoned outputs; compare with the reference (tolerance by dtype)."""
    ins = inputs(case, cg.graph, seed)  # type: ignore[attr-defined]
    outs = cg.run(ins, poison=True)  # type: ignore[attr-defined]
    want = evaluate(cg.graph, ins)["y"]  # type: ignore[attr-defined]
    got = to_np(outs["y"])
    assert got.shape == want.shape and np.all(np.isfinite(got)), "unwritten (poisoned) or non-finite elements"
    rtol, atol = dt.tolerance(cg.graph.outputs[0][1].dtype)  # type: ignore[attr-defined]
    scale = max(1.0, float(np.max(np.abs(want))))
    err = float(np.max(np.abs(got - want)))
    assert err <= (atol + rtol) * scale, f"{case.name}: max error {err} (scale {scale})"


def kernels(cg: object) -> list[tuple[str, str]]:
    return [(k.spec.family, k.spec.name) for k in cg.kernels]  # type: ignore[attr-defined]


INTERP_CASES = [awq(128), gptq(4, True), gptq(4, False), gptq(3, False, 64), sym_int4(-1), sym_int4(64),
                int2_asym(64, True), int2_asym(128, False), nf4()]


@pytest.mark.interp
@pytest.mark.parametrize("case", INTERP_CASES, ids=lambda c: c.name)
def test_formats_on_the_interpreter(case: Case) -> None:
    cg = compile_graph(graph(case, M, K, N, epilogue=True), "interp", db=None, cost_model=None)
    assert [f for f, _ in kernels(cg)] == ["quant_matmul"]  # dequantize, matmul, bias, SiLU: one kernel
    check(cg, case, seed=11)


@pytest.mark.parametrize("case", [awq(128), sym_int4(-1, "f32", "f32"), int8_per_channel("f32"), gptq(3, False, 64)],
                         ids=lambda c: c.name)
def test_formats_on_the_cpu(case: Case) -> None:
    cg = compile_graph(graph(case, M, K, N, epilogue=True), "cpu", db=None, cost_model=None)
    assert [f for f, _ in kernels(cg)] == ["quant_matmul"]
    check(cg, case, seed=12)


@pytest.mark.interp
def test_split_k_batched_and_group_m_apply_unchanged() -> None:
    from tilefuse.schedule.config import Config

    case = awq(128)
    g = graph(case, 3, K, N, batch=(2,))
    probe = compile_graph(g, "interp", db=None, cost_model=None, aot=False)
    name = probe.kernels[0].spec.name
    cfg = Config(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, GROUP_M=4, SPLIT_K=2, num_warps=2, num_stages=2, I4_F16=0)
    cg = compile_graph(g, "interp", configs={name: cfg}, db=None, cost_model=None)
    assert cg.kernels[0].config == cfg
    check(cg, case, seed=13)


@pytest.mark.interp
def test_two_dequantized_planes_summed_are_one_kernel() -> None:
    """PTQTP-style trit-planes: x @ (dequantize(p1) + dequantize(p2)), each a symmetric int2 plane."""
    b = tf.GraphBuilder("planes")
    x = b.input("x", (M, K), "f16")
    planes = [tf.dequantize(b.input(f"p{i}", (K, N // 4), "u8"), b.input(f"s{i}", (N,), "f16"), shape=(K, N),
                            bits=2, group_size=-1) for i in range(2)]
    b.output("y", x @ (planes[0] + planes[1]))
    cg = compile_graph(b.build(), "interp", db=None, cost_model=None)
    assert [f for f, _ in kernels(cg)] == ["quant_matmul"]
    src = cg.kernels[0].spec.render_triton(cg.kernels[0].config)
    assert "b_dq0_" in src and "b_dq1_" in src
    rng = np.random.default_rng(3)
    from quant_formats import pack_stream

    ins = {"x": rng.standard_normal((M, K)).astype(np.float32)}
    for i in range(2):
        ins[f"p{i}"] = pack_stream(rng.integers(0, 4, (K, N)), 2, 8, 1, dtype=np.uint8)
        ins[f"s{i}"] = rng.uniform(0.01, 0.05, (N,)).astype(np.float32)
    got = to_np(cg.run(ins, poison=True)["y"])
    want = evaluate(cg.graph, ins)["y"]
    assert np.max(np.abs(got - want)) <= 2e-3 * max(1.0, float(np.max(np.abs(want))))


def test_plain_matmul_source_has_no_loader_and_quant_keys_differ_by_format() -> None:
    b = tf.GraphBuilder("plain")
    b.output("y", b.input("x", (M, K), "f16") @ b.input("w", (K, N), "f16"))
    cg = compile_graph(b.build(), "interp", db=None, cost_model=None, aot=False)
    assert kernels(cg)[0][0] == "matmul" and "_dq" not in cg.kernels[0].spec.render_triton(cg.kernels[0].config)
    keys = {compile_graph(graph(c, M, K, N), "interp", db=None, cost_model=None, aot=False).kernels[0].spec.key
            for c in (awq(128), awq(64), gptq(4, True), sym_int4(-1))}
    assert len(keys) == 4


def test_format_features() -> None:
    spec = compile_graph(graph(awq(128), 1, K, N), "interp", db=None, cost_model=None, aot=False).kernels[0].spec
    cfg = spec.default_config(spec_target())
    f = spec.features(cfg)
    assert f["quant_bits"] == 4 and f["quant_group"] == 128 and f["quant_planes"] == 1
    wbytes = K * N // 2 + (K // 128) * (N // 8) * 4 + (K // 128) * N * 2  # qweight, qzeros, scales
    assert f["quant_weight_bytes_per_flop"] == pytest.approx(wbytes / (2.0 * K * N), rel=0.01)


def spec_target():  # noqa: ANN201 - a Target
    from tilefuse.schedule.target import get_target

    return get_target("interp")


AWQ_TEXT = """graph awq {{
  %x = input f16[5, 256]
  %qw = input {qw}
  %qz = input i32[2, 9]
  %s = input {s}
  %0 = dequantize(%qw, %s, %qz) {{{attrs}}} : f16[256, 72]
  %1 = matmul(%x, %0) {{out_dtype=f16, trans_a=false, trans_b=false}} : f16[5, 72]
  output y = %1
}}
"""


@pytest.mark.parametrize("qw,s,g,words", [
    ("i32[256, 8]", "f16[2, 72]", 128, ("packed", "i32[256, 8]", "[256, 9]")),  # packed shape mismatch
    ("i32[256, 9]", "i32[2, 72]", 128, ("scales", "i32")),                    # scales of the wrong dtype
    ("i32[256, 9]", "f16[3, 72]", 96, ("i32[256, 9]", "K=256", "group_size 96")),  # K % G != 0
])
def test_bad_quantized_weights_are_one_cli_error_line(tmp_path, capsys, qw, s, g, words) -> None:
    from tilefuse.cli import main

    path = tmp_path / "bad.tf"
    attrs = (f"bits=4, group_size={g}, out_dtype=f16, pack_axis=1, pack_order=[0, 4, 1, 5, 2, 6, 3, 7], "
             'scale_layout="group_k", shape=[256, 72], symmetric=false, zeros_packed=true')
    path.write_text(AWQ_TEXT.format(qw=qw, s=s, attrs=attrs))
    assert main(["run", str(path), "--target", "interp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # one `error:` line (the parser adds the offending source line and a caret under it)
    assert [line.startswith("error:") for line in err] == [True, False, False], err
    assert all(w in err[0] for w in words), err[0]


def test_cpu_decode_schedule_is_the_small_m_default_and_the_gemm_stays_a_candidate() -> None:
    from tilefuse.schedule.target import get_target

    cpu = get_target("cpu")
    case = awq(128)
    cg = compile_graph(graph(case, 3, K, N, epilogue=True), "cpu", db=None, cost_model=None)
    spec, cfg = cg.kernels[0].spec, cg.kernels[0].config
    assert cfg.int("gemv") == 2 and spec.pack_units() == (1, 8) and spec.knob_space(cpu)["gemv"] == (0, 1, 2)
    # the register-blocked GEMM (dequantizing B into its panel) and the unfactored decode schedule are the
    # same kernel under gemv=0 and gemv=1
    for other in (cfg.replace(gemv=0, tile_n=128, micro_n=32, vector=16), cfg.replace(gemv=1, tile_n=64)):
        assert not spec.constraints(other, cpu)
        run = compile_graph(graph(case, 3, K, N, epilogue=True), "cpu", configs={spec.name: other},
                            db=None, cost_model=None)
        check(run, case, seed=13)
    assert compile_graph(graph(case, 17, K, N), "cpu", db=None, cost_model=None).kernels[0].config.int("gemv") == 0
    big = compile_graph(graph(case, 48, K, N), "cpu", db=None, cost_model=None).kernels[0]
    assert any("gemv: M=48" in m for m in big.spec.constraints(big.config.replace(gemv=1), cpu))
    bad = spec.constraints(cfg.replace(tile_n=96, vector=16), cpu)
    assert any("tile_n=96 is not a multiple of 8 codes per word" in m for m in bad)


def test_cpu_decode_schedule_reads_packed_words_with_contiguous_vectors() -> None:
    """Under gemv=2 (the default here) and gemv=1 the packed words are read inside the k loop (no dequantized
    B panel) and a word's eight codes sit in different accumulators, so the word loads are plain vector loads
    (j // 8 folds)."""
    from tilefuse.codegen.tvm_runtime import scheduled_module
    from tilefuse.kernels.quant import cpu_gemv
    from tilefuse.schedule.target import get_target

    cpu_target = get_target("cpu")

    for case, units in ((awq(128), (1, 8)), (gptq(4, True), (8, 1)), (gptq(3, False, 64), (32, 1))):
        cg = compile_graph(graph(case, 1, K, N), "cpu", db=None, cost_model=None)
        spec, cfg = cg.kernels[0].spec, cg.kernels[0].config
        assert spec.pack_units() == units and cfg.int("gemv") == (2 if units[1] > 1 else 1)  # cpu_gemv.default
        if units[1] == 1:
            cfg = cpu_gemv.default(spec, spec._decode_base(cpu_target), cpu_target, any_layout=True)
            cg = compile_graph(graph(case, 1, K, N), "cpu", configs={spec.name: cfg}, db=None, cost_model=None)
        for c in (cfg, cfg.replace(gemv=1, tile_n=64, vector=8)):
            text = scheduled_module(spec, c).script()
            assert "Bpack" not in text and "T.vectorized" in text and "T.Div(" not in text
        check(cg, case, seed=14)


def test_shared_memory_counts_the_staged_loader_loads() -> None:
    """Triton stages the B loader's loads (an i32 word per element, zeros, scales), not an f16 tile: AWQ's
    decode default built with 292 KB on sm_90 (cap 227 KB) while the estimate said 80 KB. The estimate
    counts each load's tile now, and every default of the formats fits its arch."""
    from tilefuse.schedule.target import get_target

    spec = compile_graph(graph(awq(128), 1, 4096, 4096), "interp", db=None, cost_model=None, aot=False).kernels[0].spec
    cfg = spec.default_config(get_target("sm_90")).replace(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, num_stages=4)
    assert spec.smem_bytes(cfg) == 4 * (16 * 128 * 2 + 128 * 64 * (4 + 4 + 2))
    for case in (awq(128), gptq(4, False), gptq(3, False, 64), sym_int4(64)):
        s = compile_graph(graph(case, 1, 4096, 4096), "interp", db=None, cost_model=None, aot=False).kernels[0].spec
        for arch in ("sm_80", "sm_90"):
            t = get_target(arch)
            assert s.smem_bytes(s.default_config(t)) <= t.max_shared_bytes, (case.name, arch)
