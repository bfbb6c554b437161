"""Attention backward under the Triton interpreter: dq, dk, dv of forward + backward kernels against float64
autograd (torch on CPU, masks built from the same expressions via numpy) and against the IR reference;
causal (Sq == Sk, Sq < Sk and Sq > Sk with fully masked rows), sliding window, sink + local, per-head
patterns, block mask tensors, an additive score_mod, non-additive score_mods (softcap, a per-head scale
loaded from an extra, where()) differentiated by ir/autodiff.py, GQA and MHA, f16 and bf16, sizes that are
not multiples of the blocks; outputs poisoned. Tolerance as FlashAttention tests it: the kernel's max error
is at most twice that of a same-precision torch computation (both against float64) plus a small floor.
Plus the transposed block lists and AOT builds (sm_80 / sm_90, no spills, HGMMA on sm_90)."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.schedule.config import Config
from tilefuse.schedule.target import get_target
from tilefuse.ir import expr as ex
from tilefuse.ir.attention_op import eval_mask, index_grid
from tilefuse.ir.ops import VerifyError
from tilefuse.ir.reference import eval_expr, evaluate
from tilefuse.kernels.attention.block_sparsity import EMPTY

torch = pytest.importorskip("torch")
TORCH_DT = {"f16": torch.float16, "bf16": torch.bfloat16}
# Floors relative to the largest reference gradient. bf16 kernels land nearer the bound than f16 ones: delta
# comes from the bf16-rounded forward output, as in FlashAttention-2, while autograd uses exact row sums.
FLOOR = {"f16": 5e-4, "bf16": 4e-3}
GRADS = ("dq", "dk", "dv")


def graph(dtype, b, hq, hkv, sq, sk, d, dv=None, mask=None, extras=(), score_mod=None, outputs=GRADS):
    """attention(q, k, v) -> (out, lse) -> attention_backward with do; `mask(*extra_tensors)` gives mask_mod."""
    g = tf.GraphBuilder("attn_bwd")
    q, k = g.input("q", (b, hq, sq, d), dtype), g.input("k", (b, hkv, sk, d), dtype)
    v, do = g.input("v", (b, hkv, sk, dv or d), dtype), g.input("do", (b, hq, sq, dv or d), dtype)
    ext = [g.input(name, arr.shape, edt) for name, arr, edt in extras]
    kw = {"mask_mod": mask(*ext) if mask else None, "score_mod": score_mod, "extra": ext}
    out, lse = tf.attention(q, k, v, return_lse=True, **kw)
    grads = dict(zip(GRADS, tf.attention_backward(q, k, v, out, do, lse, **kw)))
    for name in outputs:
        g.output(name, grads[name])
    return g.build()


def torch_grads(ins, keep, bias, scale, tdt, tmod=None):
    """Autograd of a masked softmax attention in `tdt` (f64: the reference; f16/bf16: FlashAttention's
    same-precision baseline, scores rounded to the input dtype, softmax in f32, P rounded); `tmod(s)`
    is a non-additive score_mod written in torch."""
    q, k, v = (ins[n].to(tdt).requires_grad_() for n in "qkv")
    group = q.shape[1] // k.shape[1]
    s = (q @ k.repeat_interleave(group, 1).transpose(-1, -2)) * scale
    s = s.double() if tdt == torch.float64 else s.float()
    s = s + torch.from_numpy(bias).to(s.dtype)
    if tmod is not None:
        s = tmod(s)
    s = s.masked_fill(~keep, float("-inf"))
    m = s.amax(-1, keepdim=True).detach()
    live = torch.isfinite(m)
    p = torch.exp(s - torch.where(live, m, torch.zeros_like(m)))
    p = p / torch.where(live, p.sum(-1, keepdim=True), torch.ones_like(m))
    out = p.to(tdt) @ v.repeat_interleave(group, 1)
    out.backward(ins["do"].to(tdt))
    return {name: t.grad.double().numpy() for name, t in zip(GRADS, (q, k, v))}


def names(g):
    return [ck.spec.name for ck in tf.compile(g, target="interp").kernels]


def block_cfg(g, bm, bn):
    return {names(g)[1]: Config(BLOCK_M=bm, BLOCK_N=bn, num_warps=4, num_stages=1)}


def check(g, dtype, extras=(), configs=None, seed=0, tmod=None):
    """Run `g` (interp) on fresh random inputs with poisoned outputs; FlashAttention-style tolerance.
    A non-additive score_mod needs `tmod`, the same function in torch, for the autograd references."""
    gen = torch.Generator().manual_seed(seed)
    ins = {n.attr("name"): torch.randn(n.shape, generator=gen).to(TORCH_DT[dtype]) for n in g.inputs[:4]}
    for name, arr, _ in extras:
        ins[name] = torch.from_numpy(arr)
    cg = tf.compile(g, target="interp", configs=configs)
    outs = cg.run(ins, poison=True)
    fwd = next(n for n in g.nodes if n.op.value == "attention")
    b, hq, sq, _ = fwd.src[0].shape
    sk = fwd.src[1].shape[2]
    xs = [None, None, None] + [np.asarray(ins[name]) for name, _, _ in extras]
    keep = torch.from_numpy(np.ascontiguousarray(eval_mask(fwd.attr("mask_mod"), xs, (b, hq, sq, sk))))
    bias = np.zeros((b, hq, sq, sk))
    if tmod is None and fwd.attr("score_mod") is not None:  # additive: score_mod(0) is the bias
        bias = np.broadcast_to(eval_expr(fwd.attr("score_mod"), variables={**index_grid(b, hq, sq, sk), "score": 0.0},
                                         loads=lambda i, idx: xs[i][tuple(idx)]), bias.shape)
    ref = torch_grads(ins, keep, bias, fwd.attr("scale"), torch.float64, tmod)
    base = torch_grads(ins, keep, bias, fwd.attr("scale"), TORCH_DT[dtype], tmod)
    g32 = tf.parse_graph(g.text.replace(f"{dtype}[", "f32["))
    ir_ref = evaluate(g32, {n: (x.float() if n in ("q", "k", "v", "do") else x) for n, x in ins.items()})
    for name, _ in g.outputs:
        got = outs[name].float().numpy().astype(np.float64)
        assert not np.isnan(got).any(), f"{name}: unwritten (poisoned) elements"
        scale = max(1.0, float(np.abs(ref[name]).max()))
        assert np.abs(ir_ref[name] - ref[name]).max() <= 1e-5 * scale, f"{name}: IR reference disagrees with autograd"
        e_kernel = float(np.abs(got - ref[name]).max())
        e_base = float(np.abs(base[name] - ref[name]).max())
        bound = 2 * e_base + FLOOR[dtype] * scale
        assert e_kernel <= bound, f"{name} ({dtype}): kernel error {e_kernel:.3g} > 2 x baseline {e_base:.3g} + floor"
    return cg


SQ, SK, D = 37, 45, 64
causal = tf.causal_mask


def per_head():
    return tf.per_head_mask([causal(SQ, SK), tf.streaming_mask(4, 16, SQ, SK)] * 2)


MASKS = {
    "dense": None, "causal": lambda: causal(SQ, SK), "sliding": lambda: tf.sliding_window_mask(19, SQ, SK),
    "streaming": lambda: tf.streaming_mask(8, 16, SQ, SK), "per_head": per_head,
}


@pytest.mark.interp
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("name", list(MASKS))
def test_static_masks_gqa(name, dtype):
    # GQA 4:2; per_head gives the two query heads of each kv head different block lists. f16 runs
    # 16 x 16 blocks (3 x 3 block pairs, empty / partial / full mixed), bf16 the interpreter default.
    g = graph(dtype, 1, 4, 2, SQ, SK, D, mask=MASKS[name])
    check(g, dtype, seed=len(name), configs=block_cfg(g, 16, 16) if dtype == "f16" else None)


@pytest.mark.interp
@pytest.mark.parametrize("sq,sk", [(45, 37), (37, 45), (40, 40)])
def test_causal_mha_sq_ne_sk(sq, sk):
    # Sq > Sk: the first Sq - Sk rows see no key (lse -inf): they contribute nothing; 16 x 32 blocks.
    g = graph("f16", 2, 2, 2, sq, sk, D, mask=lambda: causal(sq, sk))
    check(g, "f16", configs=block_cfg(g, 16, 32), seed=sq)


@pytest.mark.interp
@pytest.mark.parametrize("bq", [16, 8])
def test_block_mask_tensor(bq):
    # bq = 16 matches BLOCK_M (lists rebuilt from the tensor at run time); 8 does not (per element).
    rng = np.random.default_rng(bq)
    bmask = rng.random((1, 4, -(-SQ // bq), -(-SK // 16))) < 0.5
    extras = [("bm", bmask, "bool")]
    g = graph("f16", 1, 4, 2, SQ, SK, D, mask=lambda t: tf.block_mask(3, t, bq, 16) & causal(SQ, SK), extras=extras)
    cg = check(g, "f16", extras, configs=block_cfg(g, 16, 16))
    assert cg.kernels[1].spec.runtime_lists(16, 16) == (bq == 16)
    assert "dK/dV programs (transposed lists)" in cg.report()


@pytest.mark.interp
def test_additive_score_mod_bf16_and_hdims():
    s = ex.var("score", "f32")
    alibi = s - (ex.var("q_idx") + (SK - SQ) - ex.var("kv_idx")).cast("f32") * (ex.var("h").cast("f32") + 1.0) * 0.125
    check(graph("bf16", 1, 2, 1, SQ, SK, D, mask=lambda: causal(SQ, SK), score_mod=alibi), "bf16", seed=3)
    g = graph("f16", 1, 2, 1, 20, 33, 48, dv=64, mask=lambda: tf.sliding_window_mask(9, 20, 33))
    check(g, "f16", configs=block_cfg(g, 16, 16), seed=4)


@pytest.mark.interp
@pytest.mark.parametrize("outputs", [("dq",), ("dk", "dv")])
def test_subset_of_gradients(outputs):
    g = graph("f16", 1, 4, 2, SQ, SK, D, mask=lambda: causal(SQ, SK), outputs=outputs)
    cg = check(g, "f16", configs=block_cfg(g, 16, 16), seed=5)
    nkv, nq = cg.kernels[1].spec.programs(cg.kernels[1].config)
    assert (nkv > 0, nq > 0) == ("dk" in outputs, "dq" in outputs)


def test_verify_errors():
    g = tf.GraphBuilder("bad")
    q, k, v = (g.input(n, (1, 2, 8, 16), "f16") for n in "qkv")
    out, lse = tf.attention(q, k, v, return_lse=True)
    tf.attention_backward(q, k, v, out, out, lse, score_mod=tf.softcap_score(5.0))  # differentiable: accepted
    with pytest.raises(VerifyError, match=r"no derivative in the score.*floor is not differentiable in 'score'"):
        tf.attention_backward(q, k, v, out, out, lse, score_mod=ex.floor(ex.var("score", "f32")))
    with pytest.raises(VerifyError, match="no derivative in the score.*cast to i32"):
        tf.attention_backward(q, k, v, out, out, lse, score_mod=ex.var("score", "f32").cast("i32").cast("f32"))
    with pytest.raises(VerifyError, match="lse is f16"):
        tf.attention_backward(q, k, v, out, out, q)


def test_transposed_lists_match_classes():
    s = 300
    mask = tf.per_head_mask([causal(s, s), tf.streaming_mask(64, 64, s, s)])
    cg = tf.compile(graph("f16", 1, 2, 1, s, s, 64, mask=lambda: mask), target="sm_80", aot=False)
    spec = cg.kernels[1].spec
    cfg = Config(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=1)
    lists, sp = spec.block_lists(cfg), spec.sparsity(64, 32)
    nkb = sp.classes.shape[2]
    assert lists.q_ptr[-1] == lists.kv_ptr[-1] == int((sp.classes != EMPTY).sum())
    for p in range(sp.num_patterns):
        for n in range(nkb):
            r = p * nkb + n
            got = lists.q_idx[lists.q_ptr[r]:lists.q_ptr[r + 1]]
            assert sorted(got) == list(np.nonzero(sp.classes[p, :, n] != EMPTY)[0])
            full = got[:lists.q_nfull[r]]
            assert all(sp.classes[p, m, n] == 2 and (m + 1) * 64 <= s for m in full)  # ragged q block masked


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("d", [64, 128])
def test_aot_default_config_no_spills(arch, d):
    s = 1024
    cg = tf.compile(graph("f16", 1, 16, 16, s, s, d, mask=lambda: causal(s, s)), target=arch)
    ck = cg.kernels[1]
    assert set(ck.binaries[arch]) == {ck.spec.name, f"{ck.spec.name}_finish"}
    for fn, b in ck.binaries[arch].items():
        r = b.resources
        assert b.cubin and r.registers > 0
        assert not r.spills, f"{fn} hdim {d} spills on {arch} with {ck.config.to_json()}: {r}"
    r = ck.binaries[arch][f"{ck.spec.name}_finish"].resources
    if arch == "sm_90":
        assert r.hgmma > 0, f"hdim {d} sm_90 backward has no HGMMA"
    else:
        assert r.hmma > 0


# ---- non-additive score_mods: dS is multiplied by score_mod' (ir/autodiff.py) at the raw score ----------
HEAD_SCALE = np.array([0.5, 1.5, 2.0, 0.75], dtype=np.float32)  # per query head (Hq = 4)
SCORE = ex.var("score", "f32")


def leaky_where():
    """where() on an index condition and on the score itself (a kink at 0, measure zero)."""
    far = (ex.var("q_idx") + (SK - SQ) - ex.var("kv_idx")).gt(8)
    return ex.where(far, SCORE * 0.5, ex.where(SCORE.gt(0.0), SCORE, SCORE * 0.25))


def torch_leaky_where(s):
    q_idx = torch.arange(SQ)[:, None] + (SK - SQ)
    far = (q_idx - torch.arange(SK)[None, :]) > 8
    return torch.where(far, s * 0.5, torch.where(s > 0, s, s * 0.25))


NONLINEAR = {  # name: (score_mod over the forward's operands, the same in torch, extras)
    "softcap": (lambda: tf.softcap_score(2.0), lambda s: 2.0 * torch.tanh(s / 2.0), ()),
    "head_scale": (lambda: SCORE * ex.load(3, "f32", ex.var("h")),
                   lambda s: s * torch.from_numpy(HEAD_SCALE).to(s.dtype)[None, :, None, None],
                   (("hs", HEAD_SCALE, "f32"),)),
    "where": (leaky_where, torch_leaky_where, ()),
}


@pytest.mark.interp
@pytest.mark.parametrize("name,dtype,mask", [
    ("softcap", "f16", "causal"), ("softcap", "bf16", "sliding"), ("head_scale", "f16", "sliding"),
    ("head_scale", "bf16", "causal"), ("where", "f16", "causal"), ("where", "bf16", "sliding"),
])
def test_nonlinear_score_mod_gqa(name, dtype, mask):
    # GQA 4:2; f16 runs 16 x 16 blocks (full, partial and ragged blocks), bf16 the interpreter default.
    mod, tmod, extras = NONLINEAR[name]
    g = graph(dtype, 1, 4, 2, SQ, SK, D, mask=lambda *_: MASKS[mask](), extras=extras, score_mod=mod())
    cg = check(g, dtype, extras, configs=block_cfg(g, 16, 16) if dtype == "f16" else None, seed=7, tmod=tmod)
    spec = cg.kernels[1].spec
    assert spec.dscore is not None
    src = spec.render_triton(cg.kernels[1].config)
    assert src.count("dmod = ") == src.count("ds = tl.where(p > 0.0, p * (dp - delta") == 4  # 2 roles x 2 loops


def test_additive_score_mod_keeps_fast_path():
    alibi = SCORE + (ex.var("kv_idx") - ex.var("q_idx")).cast("f32") * 0.25
    cg = tf.compile(graph("f16", 1, 2, 1, SQ, SK, D, score_mod=alibi), target="interp")
    spec = cg.kernels[1].spec
    assert spec.dscore is None
    src = spec.render_triton(cg.kernels[1].config)
    assert "dmod" not in src and src.count("ds = p * (dp - delta") == 4


def test_score_mod_changes_workload_key():
    keys = {tf.compile(graph("f16", 1, 2, 1, SQ, SK, D, score_mod=mod), target="interp").kernels[1].spec.key
            for mod in (None, tf.softcap_score(2.0), tf.softcap_score(3.0), SCORE * 2.0)}
    assert len(keys) == 4


def test_backward_rejects_forward_post_mod():
    g = tf.GraphBuilder("post")
    q, k, v = (g.input(n, (1, 2, 8, 16), "f16") for n in "qkv")
    out, lse = tf.attention(q, k, v, return_lse=True, post_mod=tf.softmax_threshold(0.1))
    with pytest.raises(VerifyError, match="attention backward does not support post-softmax expressions"):
        tf.attention_backward(q, k, v, out, out, lse)


@pytest.mark.parametrize("name,d", [("softcap", 64), ("head_scale", 128)])
def test_aot_nonlinear_score_mod_sm90_no_spills(name, d):
    s, hq, hkv = 1024, 16, 8
    mod, _, extras = NONLINEAR[name]
    extras = tuple((n, np.ones(hq, np.float32), edt) for n, _, edt in extras)
    cg = tf.compile(graph("f16", 1, hq, hkv, s, s, d, mask=lambda *_: causal(s, s), score_mod=mod(), extras=extras),
                    target="sm_90")
    ck = cg.kernels[1]
    for fn, b in ck.binaries["sm_90"].items():
        r = b.resources
        assert b.cubin and r.registers > 0
        assert not r.spills, f"{fn} {name} hdim {d} spills on sm_90 with {ck.config.to_json()}: {r}"
    assert ck.binaries["sm_90"][f"{ck.spec.name}_finish"].resources.hgmma > 0



# ---- score_mods reading operands, on non-square tiles ---------------------------------------------------
# A mod's operand load takes the shape of its indices: one value per program (h: a scalar load), a row or
# column vector (kv_idx or q_idx) or a whole tile (both), widened by an int32 zero tile of the role's own
# orientation: dK/dV programs work on [BLOCK_N, BLOCK_M] tiles (z2t), dQ programs on [BLOCK_M, BLOCK_N] ones
# (z2). Both roles sit in one if/else of `_finish`, where Triton requires a name assigned in both branches to
# have one type: one shared name failed the sm_80 / sm_90 build whenever BLOCK_M != BLOCK_N ("Mismatched type
# for z2"), then for every load, since per-head values were widened to the tile too.
RNG = np.random.default_rng(11)
LOADED = {  # name: (score_mod, the same in torch or None if additive, extras)
    "head_scale": NONLINEAR["head_scale"],
    "key_bias": (lambda: SCORE + ex.load(3, "f32", ex.var("h"), ex.var("kv_idx")), None,
                 (("kb", RNG.standard_normal((4, SK)).astype(np.float32), "f32"),)),
    "qk_bias": (lambda: SCORE + ex.load(3, "f32", ex.var("q_idx"), ex.var("kv_idx")), None,
                (("qb", RNG.standard_normal((SQ, SK)).astype(np.float32), "f32"),)),
}


@pytest.mark.interp
@pytest.mark.parametrize("bm,bn", [(16, 32), (32, 16)])
@pytest.mark.parametrize("name", list(LOADED))
def test_loaded_score_mod_non_square_blocks(name, bm, bn):
    mod, tmod, extras = LOADED[name]
    g = graph("f16", 1, 4, 2, SQ, SK, D, mask=lambda *_: causal(SQ, SK), extras=extras, score_mod=mod())
    cg = check(g, "f16", extras, configs=block_cfg(g, bm, bn), seed=bm, tmod=tmod)
    src = cg.kernels[1].spec.render_triton(cg.kernels[1].config)
    tile = "z2t = tl.zeros([BLOCK_N, BLOCK_M]" in src and "z2 = tl.zeros([BLOCK_M, BLOCK_N]" in src
    assert tile == (name == "qk_bias") and (src.count("mask=valid") == 4) == tile  # 2 roles x 2 loops
    if name == "head_scale":
        assert src.count("ld0 = tl.load(in6 + (0 + (h)))") == 4
    if name == "key_bias":
        assert src.count(f"mask=rn[:, None] < {SK}, other=0)") == src.count(f"mask=rn[None, :] < {SK}, other=0)") == 2


def loaded_graph(name, d=64, s=1024, hq=16, hkv=8):
    """A causal backward whose score_mod reads operands (zeros and ones: the values do not change the kernel)."""
    h, kv = ex.var("h"), ex.var("kv_idx")
    if name == "qk_bias":
        mod, extras = SCORE + ex.load(3, "f32", ex.var("q_idx"), kv), (("qb", np.zeros((s, s), np.float32), "f32"),)
    else:  # a per-head scale (a scalar load) and a per-(head, key) bias (a vector load)
        mod = SCORE * ex.load(3, "f32", h) + ex.load(4, "f32", h, kv)
        extras = (("hs", np.ones(hq, np.float32), "f32"), ("kb", np.zeros((hq, s), np.float32), "f32"))
    return graph("f16", 1, hq, hkv, s, s, d, mask=lambda *_: causal(s, s), score_mod=mod, extras=extras)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("bm,bn", [(32, 64), (64, 32)])
def test_aot_tile_loaded_score_mod_non_square_tiles(arch, bm, bn):
    g = loaded_graph("qk_bias")
    cfg = Config(BLOCK_M=bm, BLOCK_N=bn, num_warps=8, num_stages=2)
    ck = tf.compile(g, target=arch, configs={names(g)[1]: cfg}).kernels[1]
    fin = ck.binaries[arch][f"{ck.spec.name}_finish"]
    assert fin.cubin and fin.resources.registers > 0 and fin.resources.uses_tensor_cores


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_aot_loaded_score_mod_default_config_no_spills(arch):
    # hdim 64: the defaults are non-square (64 x 32 on sm_80, 64 x 128 on sm_90).
    ck = tf.compile(loaded_graph("head_key"), target=arch).kernels[1]
    assert ck.config.int("BLOCK_M") != ck.config.int("BLOCK_N")
    limit = get_target(arch).max_shared_bytes
    for fn, b in ck.binaries[arch].items():
        assert b.cubin and not b.resources.spills, f"{fn} spills on {arch} with {ck.config.to_json()}: {b.resources}"
        assert b.shared_mem_bytes <= limit, f"{fn}: {b.shared_mem_bytes} B of shared memory on {arch} (limit {limit})"
