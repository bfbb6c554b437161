"""Attention forward under the Triton interpreter: every mask kind, score_mod, GQA/MHA, Sq != Sk and
sizes that are not multiples of the blocks, f16/bf16, poisoned outputs. Tolerance as FlashAttention
tests it: the kernel's max error is at most twice that of a same-precision torch computation, both
measured against the reference evaluated in high precision. Plus AOT builds for sm_80 / sm_90."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.schedule.config import Config
from tilefuse.schedule.target import get_target
from tilefuse.ir import expr as ex
from tilefuse.ir.attention_op import eval_mask
from tilefuse.ir.reference import eval_expr, evaluate

torch = pytest.importorskip("torch")
TORCH_DT = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
FLOOR = {"f16": 2e-4, "bf16": 2e-3, "f32": 1e-5}


def graph(dtype, b, hq, hkv, sq, sk, d, dv=None, mask=None, score_mod=None, extras=(), scale=None, post_mod=None):
    """attention(q, k, v) with out and lse outputs; `mask(*extra_tensors)` builds the mask_mod."""
    g = tf.GraphBuilder("attn")
    q = g.input("q", (b, hq, sq, d), dtype)
    k = g.input("k", (b, hkv, sk, d), dtype)
    v = g.input("v", (b, hkv, sk, dv or d), dtype)
    ext = [g.input(name, arr.shape, edt) for name, arr, edt in extras]
    out, lse = tf.attention(q, k, v, scale=scale, mask_mod=mask(*ext) if mask else None, score_mod=score_mod,
                            extra=ext, return_lse=True, post_mod=post_mod)
    g.output("out", out)
    g.output("lse", lse)
    return g.build()


def same_precision(node, ins, dtype):
    """FlashAttention's test baseline: scores rounded to the input dtype, softmax in f32, probabilities
    rounded to the input dtype, P @ V accumulated in f32 and rounded (a post_mod applied in f32 first)."""
    q, k, v = (ins[n].float() for n in "qkv")
    b, hq, sq, _ = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    k = k.repeat_interleave(hq // hkv, 1)
    v = v.repeat_interleave(hq // hkv, 1)
    xs = [None, None, None] + [np.asarray(ins[n]) for n in ins if n not in "qkv"]
    s = (q @ k.transpose(-1, -2)).to(TORCH_DT[dtype]).float() * node.attr("scale")
    grid = {"b": np.arange(b).reshape(b, 1, 1, 1), "h": np.arange(hq).reshape(1, hq, 1, 1),
            "q_idx": np.arange(sq).reshape(1, 1, sq, 1), "kv_idx": np.arange(sk).reshape(1, 1, 1, sk)}
    if node.attr("score_mod") is not None:
        s = torch.from_numpy(np.broadcast_to(eval_expr(node.attr("score_mod"), variables={**grid, "score": s.numpy()},
                                                       loads=lambda i, idx: xs[i][tuple(idx)]), s.shape).copy()).float()
    keep = torch.from_numpy(np.ascontiguousarray(eval_mask(node.attr("mask_mod"), xs, (b, hq, sq, sk))))
    s = s.masked_fill(~keep, float("-inf"))
    m = s.amax(-1, keepdim=True)
    live = torch.isfinite(m)
    p = torch.exp(s - torch.where(live, m, torch.zeros_like(m)))
    denom = p.sum(-1, keepdim=True)
    lse = torch.where(live, m + torch.log(torch.where(live, denom, torch.ones_like(denom))), float("-inf"))[..., 0]
    p = p / torch.where(live, denom, torch.ones_like(denom))
    if node.attr("post_mod") is not None:
        pm = eval_expr(node.attr("post_mod"), variables={**grid, "p": p.numpy()},
                       loads=lambda i, idx: xs[i][tuple(idx)])
        pm = torch.from_numpy(np.broadcast_to(np.asarray(pm, dtype=np.float32), p.shape).copy())
        p = torch.where(keep & live, pm, torch.zeros_like(pm))
    p = p.to(TORCH_DT[dtype]).float()
    return (p @ v).to(TORCH_DT[dtype]).float().numpy(), lse.numpy()


def err(got, want):
    same_inf = np.array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    return float(np.max(np.abs(got[fin] - want[fin]), initial=0.0)) if same_inf else float("inf")


def _name(g):
    return tf.compile(g, target="interp").kernels[0].spec.name


def block_cfg(g, bm, bn):
    return {_name(g): Config(BLOCK_M=bm, BLOCK_N=bn, num_warps=4, num_stages=1)}


def inputs(g, dtype, seed=0):
    """Fresh random q, k, v (standard normal, rounded to `dtype`) for `g`."""
    gen = torch.Generator().manual_seed(seed)
    return {n.attr("name"): torch.randn(n.shape, generator=gen).to(TORCH_DT[dtype]) for n in g.inputs[:3]}


def check(g, dtype, extras=(), configs=None, seed=0, ins=None):
    """Run `g` (interp) on fresh random inputs (or the given q, k, v), poisoned outputs; FlashAttention-style
    tolerance."""
    ins = dict(ins) if ins is not None else inputs(g, dtype, seed)
    for name, arr, _ in extras:
        ins[name] = torch.from_numpy(arr)
    cg = tf.compile(g, target="interp", configs=configs)
    outs = cg.run(ins, poison=True)
    # high-precision reference: the same graph in f32 (f64 arithmetic) on the dtype-rounded inputs
    g32 = tf.parse_graph(g.text.replace(f"{dtype}[", "f32["))
    ref = evaluate(g32, {n: (x.float() if n in "qkv" else x) for n, x in ins.items()})
    node = g.output("out").src[0]
    base = same_precision(node, ins, dtype)
    for name, b in zip(("out", "lse"), base):
        got = outs[name].float().numpy().astype(np.float64)
        assert not np.isnan(got).any(), f"{name}: unwritten (poisoned) elements"
        e_kernel, e_base = err(got, ref[name]), err(b.astype(np.float64), ref[name])
        bound = 2 * e_base + FLOOR[dtype]
        assert e_kernel <= bound, f"{name} ({dtype}): kernel error {e_kernel:.3g} > 2 x baseline {e_base:.3g} + floor"
    return cg


SQ, SK, D = 37, 75, 64
causal = tf.causal_mask


def strided():
    return tf.strided_mask(4, ex.var("h") % 4, SQ, SK, local=8)


def lserve():
    return tf.per_head_mask([causal(SQ, SK)] * 2 + [tf.streaming_mask(4, 16, SQ, SK)] * 2)


def custom():
    q, kv = ex.var("q_idx"), ex.var("kv_idx")
    return (((q + kv) % 5).ne(2) | (kv // 16).eq(q // 16)) & kv.le(q + 50)


MASKS = {
    "dense": None, "causal": lambda: causal(SQ, SK), "sliding": lambda: tf.sliding_window_mask(19, SQ, SK),
    "streaming": lambda: tf.streaming_mask(8, 24, SQ, SK), "strided": strided, "per_head": lserve, "custom": custom,
}


@pytest.mark.interp
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("name", list(MASKS))
def test_static_masks_gqa(name, dtype):
    g = graph(dtype, 1, 4, 2, SQ, SK, D, mask=MASKS[name])
    # f16 runs 16 x 32 blocks (3 x 3 block pairs, empty / partial / full mixed), bf16 the default
    configs = {_name(g): Config(BLOCK_M=16, BLOCK_N=32, num_warps=2, num_stages=1)} if dtype == "f16" else None
    check(g, dtype, seed=len(name), configs=configs)


@pytest.mark.interp
@pytest.mark.parametrize("sq,sk", [(75, 37), (37, 75), (50, 50)])
def test_causal_mha_sq_ne_sk_and_small_blocks(sq, sk):
    # Sq > Sk: the first Sq - Sk rows see no key (out 0, lse -inf); 16 x 16 blocks, ragged both ways.
    g = graph("f16", 2, 2, 2, sq, sk, D, mask=lambda: causal(sq, sk))
    check(g, "f16", configs=block_cfg(g, 16, 16))


@pytest.mark.interp
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_score_mods(dtype):
    check(graph(dtype, 1, 2, 1, SQ, SK, D, mask=lambda: causal(SQ, SK), score_mod=tf.softcap_score(5.0)), dtype)
    s = ex.var("score", "f32")
    alibi = s - (ex.var("q_idx") + (SK - SQ) - ex.var("kv_idx")).cast("f32") * (ex.var("h").cast("f32") + 1.0) * 0.125
    check(graph(dtype, 1, 2, 2, SQ, SK, D, mask=lambda: causal(SQ, SK), score_mod=alibi, scale=0.1), dtype, seed=3)


@pytest.mark.interp
@pytest.mark.parametrize("bq", [32, 8])
def test_block_mask_tensor(bq):
    # bq = 32 matches BLOCK_M (lists rebuilt from the tensor at run time); 8 does not (per element).
    rng = np.random.default_rng(bq)
    bmask = rng.random((1, 4, -(-SQ // bq), -(-SK // 32))) < 0.5
    extras = [("bm", bmask, "bool")]
    g = graph("f16", 2, 4, 2, SQ, SK, D, mask=lambda t: tf.block_mask(3, t, bq, 32) & causal(SQ, SK), extras=extras)
    cg = check(g, "f16", extras, configs=block_cfg(g, 32, 32))
    spec = cg.kernels[0].spec
    assert spec.runtime_lists(32, 32) == (bq == 32)
    assert "data-dependent mask" in cg.report()


@pytest.mark.interp
def test_topk_block_lists_bf16():
    rng = np.random.default_rng(1)
    idx = rng.integers(-1, 3, size=(1, 2, 2, 2)).astype(np.int32)
    extras = [("idx", idx, "i32")]
    g = graph("bf16", 1, 2, 2, SQ, SK, D, mask=lambda t: tf.topk_block_mask(3, t, 32, 32), extras=extras)
    cg = check(g, "bf16", extras, configs=block_cfg(g, 32, 32))
    assert cg.kernels[0].spec.runtime_lists(32, 32)


@pytest.mark.interp
def test_document_mask():
    doc = np.repeat(np.arange(4), 13)[:50].astype(np.int32)
    extras = [("doc", doc, "i32")]
    g = graph("f16", 1, 2, 1, 50, 50, D, mask=lambda t: tf.document_mask(3, t) & causal(50, 50), extras=extras)
    check(g, "f16", extras, configs=block_cfg(g, 16, 16))


@pytest.mark.interp
def test_head_dim_128_dv_64_f32_and_strided_q():
    check(graph("f16", 1, 2, 1, 20, 33, 128, dv=64, mask=lambda: causal(20, 33)), "f16")
    check(graph("f32", 1, 2, 2, 20, 33, 48, mask=lambda: tf.sliding_window_mask(7, 20, 33)), "f32")
    # q read through a permuted view of [B, S, H, D]
    g = tf.GraphBuilder("attn")
    x = g.input("q", (1, 20, 2, 64), "f16")
    k, v = g.input("k", (1, 2, 33, 64), "f16"), g.input("v", (1, 2, 33, 64), "f16")
    g.output("out", tf.attention(tf.permute(x, (0, 2, 1, 3)), k, v, mask_mod=causal(20, 33)))
    cg = tf.compile(g.build(), target="interp")
    ins = {n: torch.randn(s).half() for n, s in (("q", (1, 20, 2, 64)), ("k", (1, 2, 33, 64)), ("v", (1, 2, 33, 64)))}
    got = cg.run(ins, poison=True)["out"].float().numpy()
    want = evaluate(cg.graph, ins)["out"]
    assert np.max(np.abs(got - want)) < 2e-3


def test_streaming_example_block_structure():
    from tilefuse.ir.text import load_graph

    cg = tf.compile(load_graph("examples/streaming_attention.tf", {"S": 2048, "D": 64}), target="sm_80", aot=False)
    rep = cg.report()
    assert "(2 head pattern(s)" in rep and "heads 0-15: full 240, partial 32, empty 240" in rep
    assert "heads 16-31:" in rep


def test_report_key_and_constraints():
    s = 2048
    mask = tf.per_head_mask([causal(s, s)] * 16 + [tf.streaming_mask(64, 256, s, s)] * 16)
    g = graph("f16", 1, 32, 32, s, s, 128, mask=lambda: mask)
    cg = tf.compile(g, target="sm_90", aot=False)
    spec, cfg = cg.kernels[0].spec, cg.kernels[0].config
    assert cfg == Config(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)  # hdim 128
    rep = cg.report()
    assert "block sparsity at 128x64 (2 head pattern(s)" in rep and "heads 0-15: full 240, partial 32" in rep
    other = tf.compile(graph("f16", 1, 32, 32, s, s, 128, mask=lambda: causal(s, s)), target="sm_90", aot=False)
    assert other.kernels[0].spec.key != spec.key
    assert spec.constraints(Config(BLOCK_M=256, BLOCK_N=128, num_warps=4, num_stages=4), get_target("sm_80"))
    cpu = get_target("cpu")  # the TVM template (tests/test_attention_cpu.py): block sizes only
    assert spec.check(spec.default_config(cpu), cpu) == Config(BLOCK_M=32, BLOCK_N=64)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_aot_default_config_no_spills(arch, d):
    s = 2048
    assert_default_builds_clean(graph("f16", 1, 32, 32, s, s, d, mask=lambda: causal(s, s)), arch, f"hdim {d}")


def assert_default_builds_clean(g, arch: str, what: str) -> None:
    """Every binary of the graph's first kernel at its default config builds for `arch` without
    spills and uses the tensor cores (HGMMA on sm_90, HMMA before)."""
    ck = tf.compile(g, target=arch).kernels[0]
    for b in ck.binaries[arch].values():
        r = b.resources
        assert b.cubin and r.registers > 0
        assert not r.spills, f"{what} spills on {arch}: {r}"
        if arch == "sm_90":
            assert r.hgmma > 0, f"{what} sm_90 build has no HGMMA"
        else:
            assert r.hmma > 0


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_aot_loaded_score_mod(arch):
    # A per-head scale (one value per program: a scalar load) and a per-(head, key) bias (a row vector masked
    # to the key range). Both used to be widened to [BLOCK_M, BLOCK_N] tiles of loads, which Triton pipelined
    # through shared memory as whole f32 tiles: a per-head scale and bias needed 180 KB on sm_80 and 368 KB on
    # sm_90 at the defaults, over the limits, and spilled on sm_80. (Whole-tile loads: test_attention_bwd.py.)
    s, hq = 2048, 32
    h, kv = ex.var("h"), ex.var("kv_idx")
    mod = ex.var("score", "f32") * ex.load(3, "f32", h) + ex.load(4, "f32", h, kv)
    extras = (("hs", np.ones(hq, np.float32), "f32"), ("kb", np.zeros((hq, s), np.float32), "f32"))
    g = graph("f16", 1, hq, hq, s, s, 64, mask=lambda *_: causal(s, s), score_mod=mod, extras=extras)
    default = tf.compile(g, target=arch).kernels[0]
    limit = get_target(arch).max_shared_bytes
    for b in default.binaries[arch].values():
        assert b.cubin and not b.resources.spills, f"spills on {arch} with {default.config.to_json()}: {b.resources}"
        assert b.shared_mem_bytes <= limit, f"{b.shared_mem_bytes} B of shared memory on {arch} (limit {limit})"
    for bm, bn in ((32, 64), (64, 32)):
        cfg = Config(BLOCK_M=bm, BLOCK_N=bn, num_warps=4, num_stages=2)
        ck = tf.compile(g, target=arch, configs={_name(g): cfg}).kernels[0]
        src = ck.spec.render_triton(cfg)
        assert "mask=valid" not in src and src.count(" + (0 + (h)))") == 2  # 2 loops
        assert src.count(f"mask=rn[None, :] < {s}, other=0)") == 2
        for b in ck.binaries[arch].values():
            assert b.cubin and b.resources.uses_tensor_cores
