"""The attention forward on the cpu target (TVM template): every mask kind, GQA, D != Dv, scale, score_mods and
masks reading operands, post_mod, f16/bf16, odd sizes and fully masked rows, against the float64 reference with
poisoned outputs; a causal graph with a dynamic batch and length compiled once; the cpu knob space and (slow)
real tuning."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse import compiler
from tilefuse.ir import expr as ex
from tilefuse.ir.reference import evaluate
from tilefuse.ir.sampling import random_inputs
from tilefuse.kernels.lowering import LoweringError
from tilefuse.schedule.config import Config
from tilefuse.schedule.target import get_target

pytest.importorskip("tvm")

CPU = get_target("cpu")
SQ, SK, D = 37, 75, 64  # neither a multiple of the blocks: ragged query and key blocks
ATOL = {"f32": 2e-5, "f16": 1e-3, "bf16": 8e-3}  # f32 arithmetic, outputs rounded to the dtype
causal = tf.causal_mask
P = ex.var("p", "f32")


def graph(dtype, b, hq, hkv, sq, sk, d, dv=None, mask=None, score_mod=None, extras=(), scale=None, post_mod=None):
    """attention(q, k, v) with out and lse outputs; `mask(*extra_tensors)` builds the mask_mod."""
    g = tf.GraphBuilder("attn")
    q, k = g.input("q", (b, hq, sq, d), dtype), g.input("k", (b, hkv, sk, d), dtype)
    v = g.input("v", (b, hkv, sk, dv or d), dtype)
    ext = [g.input(name, arr.shape, edt) for name, arr, edt in extras]
    out, lse = tf.attention(q, k, v, scale=scale, mask_mod=mask(*ext) if mask else None, score_mod=score_mod,
                            extra=ext, return_lse=True, post_mod=post_mod)
    g.output("out", out)
    g.output("lse", lse)
    return g.build()


def compile_cpu(g, block=(16, 32)):
    """`g` on cpu at BLOCK_M x BLOCK_N = `block` (None: the cpu default config)."""
    if block is None:
        return tf.compile(g, target="cpu")
    name = tf.compile(g, target="interp").kernels[0].spec.name  # renders only: names the kernel
    return tf.compile(g, target="cpu", configs={name: Config(BLOCK_M=block[0], BLOCK_N=block[1])})


def check(g, dtype, extras=(), block=(16, 32), seed=0, cg=None):
    """Run `g` on cpu (poisoned outputs) on fresh random inputs; out and lse against the float64 reference,
    -inf rows included. Returns the compiled graph and the outputs."""
    ins = random_inputs(g, seed)
    for name, arr, _ in extras:
        ins[name] = arr
    cg = cg or compile_cpu(g, block)
    got = cg.run(ins, poison=True)
    ref = evaluate(g, ins)
    for name in ("out", "lse"):
        a, r = np.asarray(got[name], dtype=np.float64), ref[name]
        assert not np.isnan(a).any(), f"{name}: unwritten (poisoned) elements"
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(r))
        fin = np.isfinite(r)
        err = float(np.max(np.abs(a[fin] - r[fin]), initial=0.0))
        tol = ATOL[dtype] * max(1.0, float(np.max(np.abs(r[fin]), initial=0.0))) if name == "out" else 2e-5
        assert err <= tol, f"{name} ({dtype}): max |err| {err:.3g} > {tol:.3g}"
    return cg, got


def strided():
    return tf.strided_mask(4, ex.var("h") % 4, SQ, SK, local=8)


def lserve():
    return tf.per_head_mask([causal(SQ, SK)] * 2 + [tf.streaming_mask(4, 16, SQ, SK)] * 2)


MASKS = {
    "dense": None, "causal": lambda: causal(SQ, SK), "sliding": lambda: tf.sliding_window_mask(19, SQ, SK),
    "streaming": lambda: tf.streaming_mask(8, 24, SQ, SK), "strided": strided, "per_head": lserve,
}


@pytest.mark.parametrize("name", list(MASKS))
def test_masks_gqa_d_ne_dv(name):
    # 4 q heads over 2 kv heads, D = 64, Dv = 32, f32; 16 x 32 blocks: empty, partial and full pairs mixed
    check(graph("f32", 1, 4, 2, SQ, SK, D, dv=32, mask=MASKS[name], scale=0.07), "f32", seed=len(name))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_precision_inputs_default_config(dtype):
    cg, _ = check(graph(dtype, 2, 2, 1, SQ, SK, D, mask=lambda: causal(SQ, SK)), dtype, block=None)
    assert cg.kernels[0].config == cg.kernels[0].spec.default_config(CPU)


def test_empty_key_blocks_are_never_read():
    # a window of 20 over the last 16 of 128 keys: keys 0..63 (two 32-key blocks) are no query's; NaN there would
    # reach the output (0 * NaN) if the kernel visited those blocks, even masked
    g = graph("f32", 1, 2, 1, 16, 128, 32, mask=lambda: tf.sliding_window_mask(20, 16, 128))
    ins = random_inputs(g, 0)
    ref = evaluate(g, ins)
    for n in "kv":
        ins[n][:, :, :64] = np.nan
    got = compile_cpu(g, (16, 32)).run(ins, poison=True)
    np.testing.assert_allclose(got["out"], ref["out"], atol=2e-5, rtol=0)


def test_rows_without_a_key_output_zero_and_minus_inf():
    # Sq > Sk under a causal mask: the first Sq - Sk rows see no key
    _, got = check(graph("f32", 2, 2, 2, 75, 37, D, mask=lambda: causal(75, 37)), "f32", block=(16, 16))
    assert np.all(got["out"][:, :, :38] == 0) and np.all(np.isneginf(got["lse"][:, :, :38]))


def test_score_mod_reading_an_operand_and_softcap():
    slopes = np.linspace(0.1, 0.5, 4).astype(np.float32)
    s = ex.var("score", "f32")
    alibi = s - (ex.var("q_idx") + (SK - SQ) - ex.var("kv_idx")).cast("f32") * ex.load(3, "f32", ex.var("h"))
    extras = [("slopes", slopes, "f32")]
    check(graph("f16", 1, 4, 2, SQ, SK, D, mask=lambda t: causal(SQ, SK), score_mod=alibi, extras=extras), "f16",
          extras)
    check(graph("f16", 1, 2, 1, SQ, SK, D, mask=lambda: causal(SQ, SK), score_mod=tf.softcap_score(5.0)), "f16")


def test_document_mask_reads_operands_per_element():
    doc = np.repeat(np.arange(4), 13)[:50].astype(np.int32)
    extras = [("doc", doc, "i32")]
    g = graph("f16", 1, 2, 1, 50, 50, D, mask=lambda t: tf.document_mask(3, t) & causal(50, 50), extras=extras)
    check(g, "f16", extras, block=(16, 16))


def test_block_mask_lists_are_made_from_each_calls_operand():
    # a block mask at BLOCK_M x BLOCK_N: the block lists come from the tensor of each call (empty blocks skipped,
    # full ones unmasked): two different masks through one compiled graph both match
    rng = np.random.default_rng(3)
    masks = [rng.random((1, 4, 2, 3)) < 0.5 for _ in range(2)]
    g = graph("f16", 2, 4, 2, SQ, SK, D, mask=lambda t: tf.block_mask(3, t, 32, 32) & causal(SQ, SK),
              extras=[("bm", masks[0], "bool")])
    cg = compile_cpu(g, (32, 32))
    assert cg.kernels[0].spec.runtime_lists(32, 32)
    for m in masks:
        check(g, "f16", [("bm", m, "bool")], cg=cg)


def test_post_mod_threshold_and_constant():
    check(graph("f16", 1, 4, 2, SQ, SK, D, mask=lambda: causal(SQ, SK), post_mod=ex.where(P.ge(0.05), P, 0.0)),
          "f16")
    # post_mod(0) != 0: masked and ragged keys must still contribute nothing
    check(graph("f32", 2, 2, 1, SQ, SK, D, mask=lambda: tf.streaming_mask(8, 24, SQ, SK), post_mod=P * 0.5 + 0.01),
          "f32")


def test_dynamic_batch_and_length_causal_compiles_once(count_calls):
    b = tf.GraphBuilder("causal")
    s, n = b.dyn("S", 1, 4096, hint=64), b.dyn("B", 1, 4)
    q = b.input("q", (n, 4, s, 32), "f16")
    k, v = (b.input(x, (n, 2, s, 32), "f16") for x in "kv")
    b.output("out", tf.attention(q, k, v, mask_mod=causal(s, s)))
    g = b.build()
    builds = count_calls(compiler, "_build")
    cg = tf.compile(g, target="cpu", buckets=[64])
    at_compile = len(builds)
    assert at_compile == len(cg.distinct_kernels())
    for bsz, t in ((1, 1), (2, 5), (1, 64), (3, 130)):
        gs = g.at({"S": t, "B": bsz})
        ins = random_inputs(gs, t)
        got = np.asarray(cg.run(ins, poison=True)["out"], dtype=np.float64)
        want = evaluate(gs, ins)["out"]
        assert got.shape == (bsz, 4, t, 32) and np.max(np.abs(got - want)) <= 1e-3, (bsz, t)
    assert len(builds) == at_compile  # no call built anything
    assert "falls back to run time" in cg.report()


def test_knob_space_default_and_constraints():
    g = graph("f32", 1, 2, 2, 40, 40, 32, mask=lambda: causal(40, 40))
    spec = tf.compile(g, target="cpu").kernels[0].spec
    space = spec.knob_space(CPU)
    cfg = spec.default_config(CPU)
    assert set(cfg) == set(space) and all(cfg[k] in space[k] for k in space)
    assert spec.check(cfg, CPU) == cfg
    assert spec.constraints(Config(BLOCK_M=128, BLOCK_N=16), CPU)  # larger than the 40 x 40 score matrix
    assert spec.shared_bytes(cfg) == 0.0 and spec.registers_per_thread(cfg, CPU) == 0.0


@pytest.mark.slow  # about 14 s: a runner worker process, its imports and a build per candidate
def test_real_tuning_measures_and_verifies_candidates(tmp_path):
    # the cpu runner builds each candidate, passes its block lists, checks it against the reference and times it
    from tilefuse.autotune.database import TuningDB
    from tilefuse.autotune.tune import tune_graph

    g = graph("f32", 1, 2, 1, 48, 48, 32, mask=lambda: tf.sliding_window_mask(20, 48, 48))
    with TuningDB(f"sqlite:///{tmp_path / 't.db'}") as db:
        res = tune_graph(g, "cpu", budget=2, strategy="random", db=db, patience=None)
        assert [r.statuses for r in res.rows] == [{"ok": 2}]
        cg = tf.compile(g, target="cpu", db=db, cost_model=None)
        assert cg.kernels[0].config_source.startswith("database: this device")
    check(g, "f32", cg=cg)


def test_backward_is_refused_on_cpu_by_name():
    g = tf.GraphBuilder("bwd")
    q, k, v, o, do = (g.input(n, (1, 2, 16, 32), "f32") for n in ("q", "k", "v", "o", "do"))
    lse = g.input("lse", (1, 2, 16), "f32")
    dq, dk, dv = tf.attention_backward(q, k, v, o, do, lse)
    for n, t in (("dq", dq), ("dk", dk), ("dv", dv)):
        g.output(n, t)
    with pytest.raises(LoweringError, match="family .attention_bwd. has templates for triton .* only"):
        tf.compile(g.build(), target="cpu")
