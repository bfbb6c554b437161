"""The TVM (LLVM, CPU) backend: expression lowering, rowwise and matmul templates under default and
non-default configs at sizes that are not multiples of the tiles, f32/f16/bf16, poisoned outputs
against the reference; determinism of the scheduled TIR; the build cache skipping compilation."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

import tilefuse as tf  # noqa: E402
from tilefuse.schedule.config import Config  # noqa: E402
from tilefuse.schedule.target import get_target  # noqa: E402
from tilefuse.codegen import tvm_runtime  # noqa: E402
from tilefuse.codegen.cache import BuildCache  # noqa: E402
from tilefuse.codegen.lowering import LoweringError  # noqa: E402
from tilefuse.ir import dtypes as dt  # noqa: E402
from tilefuse.ir import expr as ex  # noqa: E402
from tilefuse.ir.reference import evaluate  # noqa: E402
from tilefuse.kernels.base import KernelSpec  # noqa: E402
from tilefuse.kernels.matmul import MatmulSpec  # noqa: E402
from tilefuse.kernels.rowwise import RowwiseSpec  # noqa: E402
from tilefuse.passes import run_pipeline  # noqa: E402
from tilefuse.kernels import fusion_rules  # noqa: E402

CPU = get_target("cpu")
M, K, N = 37, 53, 71


def specs_of(g: tf.GraphBuilder) -> tuple[Any, list[KernelSpec]]:
    """The kernel graph of `g` and one spec per kernel, in execution order."""
    kg = run_pipeline(g.build(), fusion_rules()).kernels
    out: list[KernelSpec] = []
    for k in kg.kernels:
        out.append(MatmulSpec(kg, k) if k.group.kind == "matmul" else RowwiseSpec(kg, k))
    return kg, out


def random_inputs(kg: Any, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ins = {}
    for n in kg.graph.inputs:
        d = n.dtype
        x = rng.standard_normal(n.shape)
        ins[n.attr("name")] = dt.round_to(x, d).astype(dt.to_numpy(d))
    return ins


def run_graph(kg: Any, specs: list[KernelSpec], configs: dict[str, Config], cache: BuildCache | None,
              seed: int = 0) -> None:
    """Build every kernel, run them in order on poisoned buffers and compare with the reference."""
    ins = random_inputs(kg, seed)
    bufs: dict[str, np.ndarray] = dict(ins)
    for spec in specs:
        cfg = spec.check(configs.get(spec.name, spec.default_config(CPU)), CPU)
        kern = tvm_runtime.build(spec, cfg, cache)
        outs = [np.full(b.shape, np.nan if b.dtype.is_float else 123, dtype=dt.to_numpy(b.dtype))
                for b in spec.outputs]
        kern([bufs[b.name] for b in spec.inputs], outs)
        for b, o in zip(spec.outputs, outs):
            bufs[b.name] = o
    ref = evaluate(kg.graph, ins)
    for name, buf in kg.outputs:
        got = bufs[buf.name].astype(np.float64)
        want = ref[name]
        assert got.shape == want.shape, (name, got.shape, want.shape)
        assert np.all(np.isfinite(got)), f"{name}: unwritten (poisoned) or non-finite elements"
        rtol, atol = dt.tolerance(buf.dtype)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


# ---- graphs ---------------------------------------------------------------------------------
def chain(d: str) -> tf.GraphBuilder:
    g = tf.GraphBuilder("chain")
    x, y = g.input("x", (M, K), d), g.input("y", (K,), d)
    g.output("z", tf.tanh(tf.silu(x) * y + 0.5) - tf.exp(tf.minimum(x, 1.0)))
    return g


def softmax(d: str) -> tf.GraphBuilder:
    g = tf.GraphBuilder("softmax")
    g.output("y", tf.softmax(g.input("x", (M, K), d)))
    return g


def rmsnorm(d: str) -> tf.GraphBuilder:
    g = tf.GraphBuilder("rmsnorm")
    g.output("y", tf.rms_norm(g.input("x", (3, M, K), d), g.input("w", (K,), d)))
    return g


def layernorm(d: str) -> tf.GraphBuilder:
    g = tf.GraphBuilder("layernorm")
    g.output("y", tf.layer_norm(g.input("x", (M, K), d), g.input("w", (K,), d), g.input("b", (K,), d)))
    return g


def two_outputs(d: str) -> tf.GraphBuilder:
    g = tf.GraphBuilder("two")
    x = g.input("x", (M, K), d)
    g.output("s", tf.softmax(x))
    g.output("m", tf.max(x, axis=-1, keepdim=True))
    return g


def transposed(d: str) -> tf.GraphBuilder:
    g = tf.GraphBuilder("transposed")
    x = g.input("x", (K, M), d)
    g.output("y", tf.silu(tf.permute(x, (1, 0))) * 2.0)
    return g


def mm_epilogue(d: str) -> tf.GraphBuilder:
    g = tf.GraphBuilder("mm_epi")
    x, w, b = g.input("x", (M, K), d), g.input("w", (K, N), d), g.input("b", (N,), d)
    g.output("y", tf.silu(x @ w + b))
    return g


def mm_trans_b(d: str) -> tf.GraphBuilder:
    g = tf.GraphBuilder("mm_tb")
    x, s, w = g.input("x", (M, K), "f32"), g.input("s", (K,), "f32"), g.input("w", (N, K), d)
    g.output("y", tf.matmul(tf.cast(x * s, d), w, trans_b=True))
    return g


def mm_batched(d: str) -> tf.GraphBuilder:
    g = tf.GraphBuilder("bmm")
    a, b = g.input("a", (2, 3, M, K), d), g.input("b", (K, N), d)
    g.output("y", tf.relu(a @ b))
    return g


def mm_trans_a_int8(d: str) -> tf.GraphBuilder:
    g = tf.GraphBuilder("mm_ta_i8")
    x, w = g.input("x", (K, M), "i8"), g.input("w", (K, N), "i8")
    g.output("y", tf.cast(tf.matmul(x, w, trans_a=True), "f32") * 0.5)
    return g


ROWWISE = [chain, softmax, rmsnorm, layernorm, two_outputs, transposed]
MATMUL = [mm_epilogue, mm_trans_b, mm_batched]


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("make", ROWWISE + MATMUL, ids=lambda f: f.__name__)
def test_default_config_matches_reference(make: Any, dtype: str, tmp_path: Path) -> None:
    kg, specs = specs_of(make(dtype))
    run_graph(kg, specs, {}, BuildCache(tmp_path), seed=len(dtype))


ROW_CONFIGS = [Config(vector=1, parallel_rows=1, unroll=0), Config(vector=32, parallel_rows=4, unroll=1),
               Config(vector=4, parallel_rows=64, unroll=0)]
MM_CONFIGS = [Config(tile_m=8, tile_n=16, tile_k=16, micro_m=2, micro_n=8, vector=4, unroll=2),
              Config(tile_m=24, tile_n=48, tile_k=32, micro_m=6, micro_n=48, vector=16, unroll=8),
              Config(tile_m=48, tile_n=128, tile_k=64, micro_m=12, micro_n=16, vector=8, unroll=1)]


@pytest.mark.parametrize("i", range(3))
@pytest.mark.parametrize("make", [softmax, layernorm, two_outputs, mm_epilogue, mm_batched],
                         ids=lambda f: f.__name__)
def test_non_default_configs(make: Any, i: int, tmp_path: Path) -> None:
    kg, specs = specs_of(make("f32"))
    configs = {s.name: (MM_CONFIGS if s.family == "matmul" else ROW_CONFIGS)[i] for s in specs}
    run_graph(kg, specs, configs, None, seed=i)


def test_matmul_transposed_int8(tmp_path: Path) -> None:
    kg, specs = specs_of(mm_trans_a_int8("f32"))
    run_graph(kg, specs, {}, BuildCache(tmp_path))
    for i, cfg in enumerate(MM_CONFIGS):
        run_graph(kg, specs, {s.name: cfg for s in specs}, None, seed=i)


def test_matmul_micro_kernel_runs_k_outside_the_register_tile() -> None:
    _, specs = specs_of(mm_epilogue("f32"))
    mm = next(s for s in specs if s.family == "matmul")
    text = tvm_runtime.source(mm, Config(tile_m=24, tile_n=64, tile_k=16, micro_m=6, micro_n=32, vector=8,
                                         unroll=2))
    # k (8 x 2 unrolled) outside the micro tile: 6 rows x 4 vectors of 8 lanes, all unrolled
    assert re.search(r"for \w+ in range\(8\):\s+for \w+ in T\.unroll\(2\):\s+for \w+ in T\.unroll\(6\):"
                     r"\s+for \w+ in T\.unroll\(4\):\s+for \w+ in T\.vectorized\(8\):"
                     r"\s+with T\.sblock\(\"P_update\"\)", text), text


def test_matmul_cpu_constraints_and_defaults() -> None:
    _, specs = specs_of(mm_epilogue("f32"))
    mm = next(s for s in specs if s.family == "matmul")
    ok = Config(tile_m=24, tile_n=64, tile_k=16, micro_m=6, micro_n=32, vector=16, unroll=2)
    assert mm.constraints(ok, CPU) == []
    assert any("registers" in p for p in mm.constraints(ok.replace(micro_m=12, micro_n=48, tile_n=48), CPU))
    assert any("multiple of micro_m" in p for p in mm.constraints(ok.replace(tile_m=32), CPU))
    assert any("multiple of vector" in p for p in mm.constraints(ok.replace(micro_n=8), CPU))
    assert any("multiple of unroll" in p for p in mm.constraints(ok.replace(unroll=32), CPU))
    assert any("larger than the problem" in p for p in mm.constraints(ok.replace(tile_m=192), CPU))
    for m, n, k in [(1, 1, 1), (5, 3, 700), (37, 71, 53), (100, 17, 33), (1024, 1024, 1024), (4096, 96, 4096)]:
        g = tf.GraphBuilder("mm")
        g.output("y", g.input("x", (m, k), "f32") @ g.input("w", (k, n), "f32"))
        spec = specs_of(g)[1][0]
        cfg = spec.default_config(CPU)
        spec.check(cfg, CPU)
        assert all(v in spec.knob_space(CPU)[knob] for knob, v in cfg.items()), (m, n, k, cfg)


def test_tir_is_deterministic() -> None:
    for make in (layernorm, mm_epilogue):
        _, specs = specs_of(make("f16"))
        for spec in specs:
            cfg = spec.default_config(CPU)
            a = tvm_runtime.source(spec, cfg)
            _, again = specs_of(make("f16"))
            b = tvm_runtime.source(again[specs.index(spec)], cfg)
            assert a == b
            assert a.startswith(f"# tilefuse generated tvm kernel: {spec.name}")
            assert cfg.to_json() in a


def test_schedule_shapes_the_tir() -> None:
    _, specs = specs_of(mm_epilogue("f32"))
    mm = next(s for s in specs if s.family == "matmul")
    text = tvm_runtime.source(mm, Config(tile_m=24, tile_n=64, tile_k=16, micro_m=6, micro_n=32, vector=8,
                                         unroll=2))
    assert "T.parallel" in text and "T.vectorized(8)" in text
    assert text.count('T.sblock("out0")') == 1 and "C_init" in text and "P_init" in text
    assert "Apack = " in text and "Bpack = " in text and 'scope="local"' in text
    _, specs = specs_of(softmax("f32"))
    text = tvm_runtime.source(specs[0], Config(vector=16, parallel_rows=4, unroll=0))
    assert "red0_rf" in text and "red1_rf" in text and "T.vectorized(16)" in text


def test_cache_hit_does_no_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kg, specs = specs_of(softmax("f32"))
    spec = specs[0]
    cfg = spec.default_config(CPU)
    cache = BuildCache(tmp_path)
    first = tvm_runtime.build(spec, cfg, cache)
    assert first.compiled and not first.from_cache

    def boom(*a: Any, **k: Any) -> bytes:
        raise AssertionError("compiled on a cache hit")

    monkeypatch.setattr(tvm_runtime, "compile_library", boom)
    second = tvm_runtime.build(spec, cfg, BuildCache(tmp_path))
    assert second.from_cache and second.key == first.key
    run_graph(kg, specs, {}, BuildCache(tmp_path))
    # every knob changes the key
    other = tvm_runtime.cache_payload(spec, cfg.replace(vector=4))
    assert cache.key(other) != first.key
    assert tvm_runtime.cache_payload(spec, cfg)["code"] == tvm_runtime.code_fingerprint()


def test_the_build_cache_key_follows_the_template_code(tmp_path: Path) -> None:
    # A template edit must miss the cache: the workload key alone kept serving libraries of older templates.
    for sub in ("kernels/matmul", "cli"):
        (tmp_path / sub).mkdir(parents=True)
        (tmp_path / sub / "x.py").write_text("A = 1\n")
    before = tvm_runtime.tree_fingerprint(tmp_path)
    (tmp_path / "cli" / "x.py").write_text("A = 2\n")  # not code that writes TIR
    assert tvm_runtime.tree_fingerprint(tmp_path) == before
    (tmp_path / "kernels" / "matmul" / "x.py").write_text("A = 2\n")
    assert tvm_runtime.tree_fingerprint(tmp_path) != before


def test_expression_lowering_rules() -> None:
    from tvm import tirx

    from tilefuse.codegen import tvm_expr

    x = ex.var("x", "f16")
    e = ex.exp(x) + ex.cast(ex.cast(x, "f32"), "i32") // 3 * 0 + ex.erf(x)
    lowered = tvm_expr.lower_expr(e, lambda n: tirx.Var("x", "float16") if n.op is ex.E.VAR else None)
    assert tvm_expr.dtype_of(lowered) == "float16"
    assert "float32" in str(lowered)  # half math runs in f32
    i = ex.var("i", "i32")
    q = tvm_expr.lower_expr(i // 2, lambda n: tirx.Var("i", "int32") if n.op is ex.E.VAR else None)
    assert "truncdiv" in str(q) or "div" in type(q).__name__.lower() or "/" in str(q)


def test_f32_exp_is_accurate_and_keeps_special_values() -> None:
    import tvm
    from tvm import te

    from tilefuse.codegen import tvm_expr

    x = np.concatenate([np.linspace(-87.0, 88.0, 4091), [np.inf, -np.inf, np.nan, 0.0, -200.0]]).astype(np.float32)
    X = te.placeholder((x.size,), "float32")
    Y = te.compute((x.size,), lambda i: tvm_expr.lower_expr(ex.exp(ex.var("x", "f32")), lambda n: X(i)
                                                            if n.op is ex.E.VAR else None))
    f = tvm.compile(te.create_prim_func([X, Y]), target=tvm_runtime.host_target())
    y = tvm.runtime.empty((x.size,), "float32")
    f(tvm.runtime.tensor(x), y)
    got, want = y.numpy().astype(np.float64), np.exp(x.astype(np.float64))
    np.testing.assert_allclose(got[:-5], want[:-5], rtol=1e-6)
    assert got[-5] == np.inf and got[-4] == 0.0 and np.isnan(got[-3]) and got[-2] == 1.0 and got[-1] == 0.0


def test_unsupported_dtype_names_op_dtype_and_backend() -> None:
    from tvm import tirx

    from tilefuse.codegen import tvm_expr

    e = ex.cast(ex.var("x", "f32"), "f8e5m2")
    with pytest.raises(LoweringError, match=r"tvm.*f8e5m2"):
        tvm_expr.lower_expr(e, lambda n: tirx.Var("x", "float32") if n.op is ex.E.VAR else None)


def test_missing_rule_names_op_and_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from tvm import tirx

    from tilefuse.codegen import lowering, tvm_expr

    monkeypatch.delitem(lowering.RULES["tvm"], ex.E.ERF)
    with pytest.raises(LoweringError, match="tvm.*'erf'"):
        tvm_expr.lower_expr(ex.erf(ex.var("x", "f32")),
                            lambda n: tirx.Var("x", "float32") if n.op is ex.E.VAR else None)


def benchmark_gemm(n: int = 1024, config: Config | None = None, repeat: int = 5) -> dict[str, float]:
    """f32 n^3 GEMM: GFLOP/s of the TVM kernel (default CPU config) vs numpy. Not a test."""
    g = tf.GraphBuilder("gemm")
    g.output("c", g.input("a", (n, n), "f32") @ g.input("b", (n, n), "f32"))
    _, specs = specs_of(g)
    spec = specs[0]
    cfg = config or spec.default_config(CPU)
    t0 = time.perf_counter()
    kern = tvm_runtime.build(spec, cfg, None)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    tvm_s = min(kern.time([a, b], [c], number=3, repeat=repeat))
    np.testing.assert_allclose(c, a @ b, rtol=1e-3, atol=1e-3)
    a @ b
    samples = []
    for _ in range(repeat):
        t1 = time.perf_counter()
        for _ in range(3):
            a @ b
        samples.append((time.perf_counter() - t1) / 3)
    np_s = min(samples)
    flops = 2.0 * n**3
    return {"tvm_gflops": flops / tvm_s / 1e9, "numpy_gflops": flops / np_s / 1e9, "build_s": build_s}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(benchmark_gemm(int(sys.argv[1]) if len(sys.argv) > 1 else 1024), indent=1))


def test_aligned_arrays_are_passed_without_copies_and_others_are_copied():
    """Element-aligned C-contiguous arrays of the storage dtype go to the kernel in place (an output
    is written where it lies, so its poison is what the kernel overwrites), 64-byte aligned or not (the
    kernels assume element alignment only: numpy's large arrays start 16 bytes past a page); arrays not
    aligned to their element, strided, read-only or of another dtype are copied, with the same results."""
    g = tf.GraphBuilder("zc")
    g.output("c", g.input("a", (40, 24), "f32") @ g.input("b", (24, 16), "f32"))
    cg = tf.compile(g, target="cpu", db=None, cost_model=None)
    kern = cg.kernels[0].runner
    rng = np.random.default_rng(0)
    a = tvm_runtime.aligned_empty((40, 24), np.float32)
    a[...] = rng.standard_normal((40, 24))
    b = rng.standard_normal((24, 16)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    out = tvm_runtime.aligned_empty((1, 40, 16), np.float32)
    out.fill(np.nan)
    args = kern._args([a.reshape(-1), b.reshape(-1)], [out])
    assert args[0].data_ptr() == a.ctypes.data and args[2].data_ptr() == out.ctypes.data
    assert not kern._args([a.reshape(-1), b.reshape(-1)], [out], alias_outputs=False)[2].data_ptr() == \
        out.ctypes.data
    kern([a.reshape(-1), b.reshape(-1)], [out])
    np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-5)
    off16 = np.empty(40 * 24 + 16, np.float32)
    off16 = off16[(-off16.ctypes.data % 64) // 4 + 1:][:40 * 24]  # 4 bytes past a 64-byte boundary
    off16[...] = a.reshape(-1)
    assert kern._args([off16, b.reshape(-1)], [out])[0].data_ptr() == off16.ctypes.data
    kern([off16, b.reshape(-1)], [out])
    np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-5)
    unaligned = np.empty(40 * 24 * 4 + 1, np.uint8)[1:].view(np.float32)  # not even 4-byte aligned
    unaligned[...] = a.reshape(-1)
    assert kern._args([unaligned, b.reshape(-1)], [out])[0].data_ptr() != unaligned.ctypes.data
    strided = np.repeat(b, 2, axis=1)[:, ::2]
    readonly = np.broadcast_to(b, b.shape)
    for x, y in ((unaligned, b), (a, strided), (a, readonly), (a.astype(np.float64), b)):
        got = np.full((40, 16), np.nan, np.float32)[:, :]  # numpy-allocated: usually not 64-aligned
        kern([np.asarray(x).reshape(-1) if x.ndim == 1 else x, y], [got])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cg(a, b), want, rtol=1e-5, atol=1e-5)


def test_every_template_declares_element_aligned_buffers():
    """The runner hands element-aligned arrays over in place, so no template may assume TVM's default 64-byte
    alignment: the sparse and attention templates build their PrimFuncs with the TVMScript IRBuilder, not
    prim_module, and a CSR kernel given an array 16 bytes past a page boundary crashed (SIGSEGV) until the
    alignment was set for every module in scheduled_module."""
    g = tf.GraphBuilder("csr_align")
    w = tf.sparse_csr(g.input("p", (9,), "i32"), g.input("i", (20,), "i32"), g.input("v", (20,), "f32"), (8, 32))
    g.output("y", tf.spmm(w, g.input("x", (32, 24), "f32")))
    cg = tf.compile(g.build(), target="cpu", db=None, cost_model=None)
    spec = cg.kernels[0].spec
    func = next(iter(tvm_runtime.scheduled_module(spec, cg.kernels[0].config).functions.values()))
    head = func.script().split("):", 1)[0]  # the signature: in0: T.Buffer((9,), "int32", align=4), ...
    assert head.count("T.Buffer(") == 5 and head.count("align=4") == 5, head
