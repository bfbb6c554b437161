"""Sizes the backends cannot take (ir/limits.py): each is refused where it enters, before anything is
allocated or built, with an error that states the limit. Dims and integer constants by the verifier,
CUDA grids at compile, in the manifest and at launch, and the work of the attention block analysis,
which costs O(B x H) vectorised work plus O(distinct patterns) analyses."""

from __future__ import annotations

import re
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.cli import main
from tilefuse.ir import expr as ex
from tilefuse.ir.attention_op import eval_mask, make_loader
from tilefuse.ir.expr import E
from tilefuse.ir.limits import LimitError, check_grid
from tilefuse.ir.ops import Op, make
from tilefuse.ir.verify_limits import VerifyLimitError, check_node
from tilefuse.kernels import fusion_rules, spec_for
from tilefuse.kernels.attention import block_sparsity as bsm
from tilefuse.kernels.attention.block_sparsity import EMPTY, FULL, PARTIAL, analyze, analyze_runtime, fold
from tilefuse.passes import run_pipeline

DIM = "2147483647 (2^31 - 1)"
DIM_RE = re.escape(DIM)


def inp(shape: tuple[int, ...], dtype: str = "f32", name: str = "x"):
    return make(Op.INPUT, name=name, dtype=dtype, shape=shape)


def pointwise(e: ex.Expr, dtype: str):
    return make(Op.POINTWISE, [inp((4,), dtype)], expr=e)


# ---- the verifier --------------------------------------------------------------------------------
def test_dims_and_element_counts():
    assert inp((2**31 - 1,)).shape == (2**31 - 1,)
    with pytest.raises(VerifyLimitError, match=rf"dim 0 of \[2147483648\] is 2147483648; dims are at most {DIM_RE}"):
        inp((2**31,))
    with pytest.raises(VerifyLimitError, match=r"has 1152921504606846976 elements; .* at most 576460752303423488 \(2"):
        inp((2**30, 2**30))
    with pytest.raises(VerifyLimitError, match="dims are at most"):  # a view's result is checked too
        make(Op.EXPAND, [inp((1, 4))], shape=(2**31, 4))


@pytest.mark.parametrize("dtype, ok, bad", [("i64", [2**63 - 1, -(2**63)], [2**63, -(2**63) - 1, 10**23]),
                                            ("i32", [2**31 - 1, -(2**31)], [2**31, -(2**31) - 1]),
                                            ("u8", [0, 255], [256, -1])])
def test_integer_constants_fit_their_dtype(dtype, ok, bad):
    for v in ok:
        pointwise(ex.binary(E.ADD, ex.arg(0, dtype), ex.const(v, dtype)), dtype)
    for v in bad:
        with pytest.raises(VerifyLimitError, match=f"of dtype {dtype}, outside its range"):
            pointwise(ex.binary(E.ADD, ex.arg(0, dtype), ex.const(v, dtype)), dtype)
    with pytest.raises(VerifyLimitError, match=f"outside the range of {dtype}"):
        make(Op.CONST, dtype=dtype, value=bad[0], shape=(2,))


def test_a_10000_digit_constant_is_named_by_its_width():
    with pytest.raises(VerifyLimitError, match="a 33220-bit integer"):
        pointwise(ex.binary(E.ADD, ex.arg(0, "i64"), ex.const(10**10000, "i64")), "i64")


@pytest.mark.parametrize("op, dtype", [(E.IDIV, "i32"), (E.MOD, "i32"), (E.DIV, "f32"), (E.MOD, "f32")])
def test_division_by_a_zero_constant(op, dtype):
    pointwise(ex.binary(op, ex.arg(0, dtype), ex.const(3, dtype)), dtype)
    with pytest.raises(VerifyLimitError, match=f"divides by the constant 0 \\({op.value} of {dtype}\\)"):
        pointwise(ex.binary(op, ex.arg(0, dtype), ex.const(0, dtype)), dtype)
    with pytest.raises(VerifyLimitError, match="divides by the constant 0"):  # deep inside an expression too
        pointwise(ex.exp(ex.binary(op, ex.arg(0, dtype), ex.const(0, dtype)).cast("f32")) + 1.0, dtype)


def test_recip_of_zero_and_a_mask_dividing_by_zero():
    with pytest.raises(VerifyLimitError, match=r"divides by the constant 0 \(recip"):
        pointwise(ex.arg(0, "f32") + ex.recip(ex.const(0.0, "f32")), "f32")
    q = make(Op.INPUT, name="q", dtype="f16", shape=(1, 2, 16, 16))
    bad = ex.var("kv_idx").le(ex.var("q_idx") // 0)
    with pytest.raises(VerifyLimitError, match="mask_mod divides by the constant 0"):
        make(Op.ATTENTION, [q, q, q], mask_mod=bad, scale=0.25)


def test_slice_steps_and_64_bit_attributes():
    x = inp((16,))
    assert make(Op.SLICE, [x], starts=(0,), stops=(16,), steps=(2**31 - 1,)).shape == (1,)
    with pytest.raises(VerifyLimitError, match=f"step 2147483648 exceeds {DIM_RE}"):
        make(Op.SLICE, [x], starts=(0,), stops=(16,), steps=(2**31,))
    with pytest.raises(VerifyLimitError, match=r"attribute group holds 18446744073709551616, beyond 64 bits"):
        check_node(Op.PERMUTE, x.dtype, (16,), {"group": (1, 2**64)})


def test_the_parser_places_limit_errors_and_the_cli_says_one_line(tmp_path: Path, capsys):
    cases = {
        "dim": ("%x = input f32[2147483648]\n  %y = pointwise(%x) {expr=(add $0:f32 1.0:f32)}", DIM),
        "const": ("%x = input i64[4]\n  %y = pointwise(%x) {expr=(add $0:i64 99999999999999999999999:i64)}",
                  "outside its range -9223372036854775808 .. 9223372036854775807"),
        "div0": ("%x = input i32[4]\n  %y = pointwise(%x) {expr=(idiv $0:i32 0:i32)}", "divides by the constant 0"),
        "step": ("%x = input f32[16]\n  %y = slice(%x) {starts=[0], stops=[16], steps=[99999999999999999999999]}",
                 f"exceeds {DIM}"),
    }
    for name, (body, words) in cases.items():
        path = tmp_path / f"{name}.tf"
        path.write_text(f"graph g() {{\n  {body}\n  output y = %y\n}}\n")
        with pytest.raises(tf.ParseError, match=":3:" if name != "dim" else ":2:"):
            tf.load_graph(str(path))
        assert main(["show", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and "Traceback" not in err, err
    example = str(Path(__file__).resolve().parents[1] / "examples" / "streaming_attention.tf")
    assert main(["show", example, "--set", "B=2147483648"]) == 2
    assert DIM in capsys.readouterr().err


# ---- CUDA grids ------------------------------------------------------------------------------------
def test_check_grid_states_the_limit():
    assert check_grid([2**31 - 1, 65535, 65535], "k") == (2**31 - 1, 65535, 65535)
    with pytest.raises(LimitError, match=r"kernel k: launch grid \[2147483648, 1, 1\] .* x=2147483648 \(limit 2147"):
        check_grid((2**31, 1, 1), "k")
    with pytest.raises(LimitError, match=r"y=65536 \(limit 65535 \(2\^16 - 1\)\), z=70000"):
        check_grid((1, 65536, 70000), "k")
    with pytest.raises(LimitError, match="must be >= 1"):
        check_grid((0, 1, 1), "k")


def batched_matmul(batch: int) -> tf.Graph:
    g = tf.GraphBuilder("bmm")
    a, b = g.input("a", (batch, 16, 16), "f16"), g.input("b", (batch, 16, 16), "f16")
    g.output("c", a @ b)
    return g.build()


def unchecked_build(graph: tf.Graph):
    """What compile builds for 'interp', without compile's grid check: reaches the manifest and the launch."""
    from tilefuse.compiler import CompiledGraph, CompiledKernel
    from tilefuse.schedule.target import get_target

    tgt = get_target("interp")
    pipe = run_pipeline(graph, fusion_rules())
    kernels = []
    for kernel in pipe.kernels.kernels:
        spec = spec_for(pipe.kernels, kernel, "triton")
        cfg = spec.default_config(tgt)
        kernels.append(CompiledKernel(spec, cfg, "default", spec.render_triton(cfg, interpret=True)))
    return CompiledGraph(graph, tgt, pipe, kernels)


def test_grids_beyond_cuda_are_refused_at_compile_manifest_and_launch(tmp_path: Path, capsys):
    torch = pytest.importorskip("torch")
    from tilefuse.cli.main import write_bundle

    g = batched_matmul(65536)
    with pytest.raises(LimitError, match=r"kernel k0_matmul: launch grid \[1, 1, 65536\] .* z=65536 \(limit 65535"):
        tf.compile(g, target="interp", db=None, cost_model=None)
    cg = unchecked_build(g)
    with pytest.raises(LimitError, match="z=65536"):
        write_bundle(cg, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    x = torch.ones((65536, 16, 16), dtype=torch.float16)
    with pytest.raises(LimitError, match="z=65536"):
        cg(x, x)
    path = tmp_path / "bmm.tf"
    path.write_text(g.text)
    code = main(["compile", str(path), "--target", "interp", "--db", "none", "--costmodel", "none",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "limit 65535" in err, err
    assert not (tmp_path / "o").exists()
    assert tf.compile(batched_matmul(65535), target="interp", db=None, cost_model=None).kernels


# ---- the attention block analysis -----------------------------------------------------------------
def per_pair(mask: ex.Expr, b: int, h: int, sq: int, sk: int, bm: int, bn: int) -> np.ndarray:
    """The classes of every (b, h) from its own folded mask: the definition head classes must meet."""
    out = np.empty((b, h, -(-sq // bm), -(-sk // bn)), dtype=np.int8)
    for bi in range(b):
        for hi in range(h):
            out[bi, hi] = analyze(fold(mask, {"b": bi, "h": hi}), 1, 1, sq, sk, bm, bn).classes[0]
    return out


def head_masks(s: int) -> dict[str, ex.Expr]:
    q, kv, h, b = ex.var("q_idx"), ex.var("kv_idx"), ex.var("h"), ex.var("b")
    causal = tf.causal_mask(s, s)
    return {
        "two_classes": tf.per_head_mask([causal] * 3 + [tf.streaming_mask(8, 16, s, s)] * 4),
        "head_mod": kv.le(q + (h % 3) * 8) & kv.ge(q - 24),
        "batch_and_head": ex.where(b.eq(1), causal, kv.le(q - (h // 2) * 16)),
        "every_head": kv.le(q + h) & kv.ge(q - 16),
        "shared_h": ex.where(h.lt(2), causal, kv.le(q + h)),
    }


@pytest.mark.parametrize("name", ["two_classes", "head_mod", "batch_and_head", "every_head", "shared_h"])
def test_head_classes_agree_with_folding_every_head(name):
    b, h, s = 2, 7, 96
    mask = head_masks(s)[name]
    sp = analyze(mask, b, h, s, s, 16, 16)
    want = per_pair(mask, b, h, s, s, 16, 16)
    np.testing.assert_array_equal(sp.classes[sp.pattern_of], want)
    np.testing.assert_array_equal(want, _brute(mask, b, h, s))  # and the element mask
    firsts = [int(np.flatnonzero(sp.pattern_of.reshape(-1) == p)[0]) for p in range(sp.num_patterns)]
    assert firsts == sorted(firsts)  # patterns numbered by first appearance, as the workload keys expect
    assert sp.num_patterns == len({c.tobytes() for c in want.reshape((b * h,) + want.shape[2:])})


def _brute(mask: ex.Expr, b: int, h: int, s: int) -> np.ndarray:
    m = eval_mask(mask, [], (b, h, s, s)).reshape(b, h, s // 16, 16, s // 16, 16)
    return np.where(m.all(axis=(3, 5)), FULL, np.where(m.any(axis=(3, 5)), PARTIAL, EMPTY))


def attention_spec(b: int, h: int, s: int, mask: ex.Expr | None):
    g = tf.GraphBuilder("attn")
    q = g.input("q", (b, h, s, 16), "f16")
    g.output("out", tf.attention(q, q, q, mask_mod=mask))
    pipe = run_pipeline(g.build(), fusion_rules())
    return spec_for(pipe.kernels, pipe.kernels.kernels[0], "triton")


def test_8m_heads_build_their_block_structure_in_well_under_a_second():
    h, s = 2**23, 4096
    spec = attention_spec(1, h, s, tf.causal_mask(s, s))
    t0 = time.process_time()  # CPU time: the machines running the suite are shared
    sp = spec.sparsity(128, 64)
    independent = time.process_time() - t0
    assert sp.num_patterns == 1 and sp.pattern_of.shape == (1, h) and independent < 0.5, independent
    streaming = tf.per_head_mask([tf.causal_mask(s, s)] * 16 + [tf.streaming_mask(64, 256, s, s)] * 16)
    spec = attention_spec(1, h, s, ex.where(ex.var("h").lt(16), tf.causal_mask(s, s), streaming))
    t0 = time.process_time()
    sp = spec.sparsity(128, 64)
    dependent = time.process_time() - t0  # one fold per head took 33 s per 65536 heads: 70 minutes here
    assert sp.num_patterns == 2 and dependent < 1.0, dependent
    assert "heads 16-8388607: full 92, partial 123, empty 1833 of 2048" in "\n".join(sp.summary())


def test_a_mask_needing_every_one_of_8m_heads_is_refused_fast():
    s = 1024
    mask = ex.var("kv_idx").le(ex.var("q_idx") + ex.var("h"))
    t0 = time.process_time()
    with pytest.raises(LimitError, match="takes 8388608 distinct forms over .* folds at most 4096"):
        analyze(mask, 1, 2**23, s, s, 128, 64)
    assert time.process_time() - t0 < 2.0


@pytest.mark.parametrize("mask", [None, "causal"])
def test_batch_2_31_fails_fast_without_allocating(mask):
    m = tf.causal_mask(64, 64) if mask else None
    tracemalloc.start()
    t0 = time.process_time()
    try:
        with pytest.raises(LimitError, match=r"B x H = 2147483648 x 1 .* limit of 16777216 \(2\^24\)"):
            analyze(m, 2**31, 1, 64, 64, 16, 16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.process_time() - t0 < 0.5 and peak < 1 << 20, peak


def test_block_grid_and_runtime_work_limits():
    with pytest.raises(LimitError, match=r"65536 x 65536 .* limit of 134217728 \(2\^27\) pairs; use larger blocks"):
        analyze(tf.causal_mask(2**20, 2**20), 1, 1, 2**20, 2**20, 16, 16)
    s = 4096  # one static pattern, but the run-time analysis is one pattern per (b, h): 4096 x 256 x 256 pairs
    mask = ex.load(3, "bool", ex.var("q_idx") // 16, ex.var("kv_idx") // 16)
    static = analyze(mask, 1, 4096, s, s, 16, 16)
    with pytest.raises(LimitError, match=r"run-time block analysis .* 4096 pattern\(s\) x 256 x 256"):
        analyze_runtime(mask, static, 1, 4096, make_loader([None] * 4, "test"))


@pytest.mark.parametrize("chunk", [5, 80])  # bands of one query block; all blocks of two (b, h) pairs at a time
def test_chunked_interval_evaluation_matches_the_element_mask(monkeypatch, chunk):
    monkeypatch.setattr(bsm, "_CHUNK_CELLS", chunk)
    b, h, s = 2, 3, 96
    mask = head_masks(s)["head_mod"]
    sp = analyze(mask, b, h, s, s, 16, 16)
    np.testing.assert_array_equal(sp.classes[sp.pattern_of], _brute(mask, b, h, s))
    blocks = np.random.default_rng(3).random((b, h, s // 16, s // 16)) < 0.5
    dyn = ex.load(3, "bool", ex.var("b"), ex.var("h"), ex.var("q_idx") // 16, ex.var("kv_idx") // 16) & mask
    rt = analyze_runtime(dyn, analyze(dyn, b, h, s, s, 16, 16), b, h, make_loader([None] * 3 + [blocks], "t"))
    got = rt.classes[rt.pattern_of]
    want = _brute(mask, b, h, s)
    np.testing.assert_array_equal(got, np.where(blocks, want, EMPTY))


def test_tiles_the_block_analysis_would_refuse_are_not_candidates():
    from tilefuse.schedule.config import Config
    from tilefuse.schedule.target import get_target

    s = 3 * 2**16  # 12288 x 12288 blocks of 16 x 16
    spec = attention_spec(1, 1, s, tf.causal_mask(s, s))
    sm90 = get_target("sm_90")
    small = Config(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)
    assert "16x16 tiles make 150994944 block pairs, over the block analysis' 134217728" in spec.constraints(small, sm90)
    assert not any("block analysis" in c for c in spec.constraints(small.replace(BLOCK_N=32), sm90))


def test_a_per_head_block_mask_is_one_compile_time_analysis_for_any_number_of_heads():
    s, h = 256, 8192  # loads are unknown at compile time whatever they index: was one fold per head
    mask = ex.load(3, "bool", ex.var("b"), ex.var("h"), ex.var("q_idx") // 64, ex.var("kv_idx") // 64)
    sp = analyze(mask & tf.causal_mask(s, s), 2, h, s, s, 64, 64)
    assert sp.num_patterns == 1 and not sp.exact and sp.counts() == [{"full": 0, "partial": 10, "empty": 6}]
