"""Post-softmax expressions (attention `post_mod`): SATA's probability threshold and general post_mods
over p, the index variables and extra operands. IR verification and text round trip, the float64
reference against a per-row loop, the two-pass forward kernel under the Triton interpreter (with
the forward tests' FlashAttention-style tolerance and poisoned outputs) and AOT builds for sm_90
(and sm_80).

A threshold is discontinuous: a p within rounding of tau may land on either side. The taus used on
kernels are therefore chosen in gaps of the actual probabilities (`safe_tau`): no probability of the
test inputs, in float64 or as the same-precision baseline computes it, lies within 0.2% of tau (the
interpreted kernel's probabilities are within about 1e-6 of float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_attention_fwd import TORCH_DT, assert_default_builds_clean, block_cfg, check, graph, inputs
from test_ir_attention import naive

import tilefuse as tf
from tilefuse.builders import softmax_threshold
from tilefuse.ir import Op, VerifyError, make, parse_graph
from tilefuse.ir import expr as ex
from tilefuse.ir.attention_op import eval_mask, index_grid
from tilefuse.ir.reference import eval_expr, evaluate

torch = pytest.importorskip("torch")
SQ, SK, D = 37, 75, 64
P = ex.var("p", "f32")
causal = tf.causal_mask


# ---- helpers ------------------------------------------------------------------------------------------
def probs(g, ins, round_to=None):
    """The softmax probabilities [B, Hq, Sq, Sk] of `g`'s attention on `ins` in float64 (scores rounded to
    `round_to` first, as the same-precision baseline does) and where they are live (unmasked, lse finite)."""
    node = g.output("out").src[0]
    q, k, v = (ins[n].double().numpy() for n in "qkv")
    b, hq, sq, _ = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    k = np.repeat(k, hq // hkv, axis=1)
    s = np.einsum("bhqd,bhkd->bhqk", q, k)
    if round_to is not None:
        s = torch.from_numpy(s).to(TORCH_DT[round_to]).double().numpy()
    s = s * node.attr("scale")
    xs = [None, None, None] + [np.asarray(ins[n]) for n in ins if n not in "qkv"]
    if node.attr("score_mod") is not None:
        s = eval_expr(node.attr("score_mod"), variables={**index_grid(b, hq, sq, sk), "score": s},
                      loads=lambda i, idx: xs[i][tuple(idx)])
        s = np.broadcast_to(np.asarray(s, dtype=np.float64), (b, hq, sq, sk))
    keep = eval_mask(node.attr("mask_mod"), xs, (b, hq, sq, sk))
    s = np.where(keep, s, -np.inf)
    m = s.max(-1, keepdims=True)
    live = np.isfinite(m)
    e = np.exp(s - np.where(live, m, 0.0))
    p = e / np.where(live, e.sum(-1, keepdims=True), 1.0)
    return p, keep & live


def safe_tau(target, arrays, live, margin=0.002):
    """The tau nearest `target` (in log scale) such that no live probability of any of `arrays` lies
    within `margin` (relative) of it, and every position's probabilities sit on one side of it."""
    lo = np.minimum.reduce([a[live] for a in arrays]) * (1 - margin)
    hi = np.maximum.reduce([a[live] for a in arrays]) * (1 + margin)
    order = np.argsort(lo)
    lo, hi = lo[order], np.maximum.accumulate(hi[order])
    gaps = [(hi[i], lo[i + 1]) for i in range(len(lo) - 1) if hi[i] < lo[i + 1] and hi[i] > 0]
    assert gaps, "no gap in the probabilities"
    a, b = min(gaps, key=lambda g: abs(math.log(math.sqrt(g[0] * g[1]) / target)))
    return math.sqrt(a * b)


def threshold_graph(dtype, target, seed=0, b=1, hq=4, hkv=2, sq=SQ, sk=SK, **kw):
    """(graph with softmax_threshold(tau), q/k/v, tau) with tau in a gap of the probabilities near `target`
    (within 25%), keeping between 1% and 99% of the live probabilities."""
    g0 = graph(dtype, b, hq, hkv, sq, sk, D, **kw)
    ins = inputs(g0, dtype, seed)
    for name, arr, _ in kw.get("extras", ()):
        ins[name] = torch.from_numpy(arr)
    p64, live = probs(g0, ins)
    pb, _ = probs(g0, ins, round_to=dtype)
    tau = safe_tau(target, [p64, pb], live)
    assert abs(math.log(tau / target)) < math.log(1.25), f"no gap near {target}: tau {tau}"
    assert 0.01 < np.mean(p64[live] >= tau) < 0.99, f"tau {tau} keeps all or nothing"
    return graph(dtype, b, hq, hkv, sq, sk, D, post_mod=softmax_threshold(tau), **kw), ins, tau


def run_kernel(g, ins, configs=None):
    cg = tf.compile(g, target="interp", configs=configs)
    return {k: x.float().numpy().astype(np.float64) for k, x in cg.run(ins, poison=True).items()}


# ---- IR: verification, text, reference ------------------------------------------------------------------
def _qkv():
    g = tf.GraphBuilder("bad")
    return g, g.input("q", (1, 2, 4, 8), "f16"), g.input("k", (1, 2, 4, 8), "f16")


def test_verify_errors():
    g, q, k = _qkv()
    with pytest.raises(VerifyError, match=r"post_mod must produce f32, got bool"):
        tf.attention(q, k, k, post_mod=P.ge(0.1))
    with pytest.raises(VerifyError, match=r"post_mod must produce f32, got i32"):
        tf.attention(q, k, k, post_mod=ex.var("kv_idx") * 2)
    accepted = r"accepted: \['b', 'h', 'kv_idx', 'p', 'q_idx'\]"
    with pytest.raises(VerifyError, match=r"post_mod uses variable 'score'; " + accepted):
        tf.attention(q, k, k, post_mod=ex.var("score", "f32") * P)
    with pytest.raises(VerifyError, match=r"post_mod variable 'p' must be f32, got i32"):
        tf.attention(q, k, k, post_mod=ex.var("p", "i32").cast("f32"))
    with pytest.raises(VerifyError, match=r"post_mod loads operand 2 but the extra operands are 3..2"):
        tf.attention(q, k, k, post_mod=P * ex.load(2, "f16", 0, 0, 0, 0).cast("f32"))
    with pytest.raises(VerifyError, match=r"post_mod may not use \$i operands"):
        tf.attention(q, k, k, post_mod=P * ex.arg(0, "f32"))
    w = g.input("w", (2, 4), "f16")
    with pytest.raises(VerifyError, match=r"post_mod loads operand 3 as f32 but it is f16"):
        tf.attention(q, k, k, extra=[w], post_mod=P * ex.load(3, "f32", ex.var("h"), ex.var("kv_idx")))
    with pytest.raises(VerifyError, match=r"extra operands \[3\] are not read by mask_mod, score_mod or "
                                          r"post_mod"):
        tf.attention(q, k, k, extra=[w], post_mod=P)
    with pytest.raises(VerifyError, match=r"post_mod must be a scalar expression or none, got 0.5"):
        make(Op.ATTENTION, [q.node, k.node, k.node], post_mod=0.5)
    # score_mod may not read p (it exists only after the softmax)
    with pytest.raises(VerifyError, match=r"score_mod uses variable 'p'"):
        tf.attention(q, k, k, score_mod=P)


def test_text_round_trip_and_node_identity():
    w = np.ones((4, SK), np.float32)
    pm = softmax_threshold(0.05) * ex.load(3, "f32", ex.var("h"), ex.var("kv_idx"))
    g = graph("f16", 1, 4, 2, SQ, SK, D, mask=lambda t: causal(SQ, SK), extras=[("w", w, "f32")], post_mod=pm)
    assert "post_mod=(mul (where (ge p:f32 0.05:f32) p:f32 0.0:f32) (load 3 f32 h:i32 kv_idx:i32))" in g.text
    g2 = parse_graph(g.text)
    assert g2.key == g.key and g2.text == g.text
    assert g2.output("out").src[0].attr("post_mod") is pm  # hash-consed expressions
    other = graph("f16", 1, 4, 2, SQ, SK, D, mask=lambda t: causal(SQ, SK), extras=[("w", w, "f32")],
                  post_mod=softmax_threshold(0.06) * ex.load(3, "f32", ex.var("h"), ex.var("kv_idx")))
    plain = graph("f16", 1, 4, 2, SQ, SK, D, mask=lambda: causal(SQ, SK))
    assert len({g.key, other.key, plain.key}) == 3


def test_reference_vs_loop():
    rng = np.random.default_rng(7)
    b, hq, hkv, sq, sk, d = 2, 4, 2, 9, 6, 8  # Sq > Sk: bottom-right causal leaves 3 rows fully masked
    q, k, v = (rng.standard_normal(s) for s in ((b, hq, sq, d), (b, hkv, sk, d), (b, hkv, sk, d)))
    w = rng.random((hq, sk))
    pm = softmax_threshold(0.2) * ex.load(3, "f32", ex.var("h"), ex.var("kv_idx")) + 0.01
    gb = tf.GraphBuilder("ref")
    tq, tk, tv = (gb.input(n, x.shape, "f32") for n, x in (("q", q), ("k", k), ("v", v)))
    tw = gb.input("w", w.shape, "f32")
    out, lse = tf.attention(tq, tk, tv, mask_mod=causal(sq, sk), post_mod=pm, extra=[tw], return_lse=True)
    gb.output("out", out)
    gb.output("lse", lse)
    g = gb.build()
    res = evaluate(g, {"q": q, "k": k, "v": v, "w": w})
    keep = np.broadcast_to(np.arange(sk)[None, :] <= np.arange(sq)[:, None] - 3, (b, hq, sq, sk))
    want, want_lse = naive(q, k, v, 1 / math.sqrt(d), keep,
                           post_fn=lambda p, bi, h, i, j: (p if p >= 0.2 else 0.0) * w[h, j] + 0.01)
    assert np.all(res["out"][:, :, :3] == 0) and np.all(np.isneginf(res["lse"][:, :, :3]))
    np.testing.assert_allclose(res["out"], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res["lse"], want_lse, rtol=1e-6, atol=1e-6)
    # not renormalised: with a threshold the kept weights of a row sum to less than 1
    p, live = probs(g, {n: torch.from_numpy(x) for n, x in (("q", q), ("k", k), ("v", v))})
    kept = np.where(live & (p >= 0.2), p, 0.0).sum(-1)
    assert np.any((kept > 0) & (kept < 0.99))


def test_reference_tau_zero_is_plain_attention():
    rng = np.random.default_rng(3)
    ins = {n: rng.standard_normal((1, 2, 7, 8)) for n in "qkv"}
    g0 = graph("f32", 1, 2, 2, 7, 7, 8, mask=lambda: causal(7, 7))
    g1 = graph("f32", 1, 2, 2, 7, 7, 8, mask=lambda: causal(7, 7), post_mod=softmax_threshold(0.0))
    r0, r1 = evaluate(g0, ins), evaluate(g1, ins)
    np.testing.assert_allclose(r1["out"], r0["out"], rtol=1e-6, atol=1e-7)  # both rounded to f32
    np.testing.assert_array_equal(r1["lse"], r0["lse"])


# ---- kernel (interpreter) ---------------------------------------------------------------------------------
@pytest.mark.interp
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_tau_zero_matches_plain_kernel(dtype):
    g0 = graph(dtype, 1, 4, 2, SQ, SK, D, mask=lambda: causal(SQ, SK))
    g1 = graph(dtype, 1, 4, 2, SQ, SK, D, mask=lambda: causal(SQ, SK), post_mod=softmax_threshold(0.0))
    ins = inputs(g0, dtype, seed=5)
    check(g1, dtype, ins=ins)
    a, b = run_kernel(g0, ins), run_kernel(g1, ins)
    np.testing.assert_array_equal(a["lse"], b["lse"])  # pass 1 is the plain kernel's softmax statistics
    assert np.max(np.abs(a["out"] - b["out"])) < {"f16": 2e-3, "bf16": 1.6e-2}[dtype]


@pytest.mark.interp
@pytest.mark.parametrize("dtype,target",
                         [("f16", 0.01), ("f16", 0.03), ("f16", 0.1), ("bf16", 0.01), ("bf16", 0.1)])
def test_threshold_causal_gqa(dtype, target):
    sq, sk = 20, 45
    g, ins, tau = threshold_graph(dtype, target, seed=11, hq=2, hkv=1, sq=sq, sk=sk,
                                  mask=lambda: causal(sq, sk))
    ref = evaluate(g, {n: x.float() for n, x in ins.items()})["out"]
    plain = evaluate(graph(dtype, 1, 2, 1, sq, sk, D, mask=lambda: causal(sq, sk)),
                     {n: x.float() for n, x in ins.items()})["out"]
    assert np.max(np.abs(ref - plain)) > 1e-2, f"tau {tau:.4g} leaves the output as it was: no test"
    # 16 x 32 blocks: full, partial and empty block pairs, ragged in both directions
    check(g, dtype, configs=block_cfg(g, 16, 32), ins=ins)


@pytest.mark.interp
def test_threshold_default_blocks():
    g, ins, _ = threshold_graph("f16", 0.05, seed=11, mask=lambda: causal(SQ, SK))
    check(g, "f16", ins=ins)


@pytest.mark.interp
def test_threshold_zeroes_whole_rows():
    mask = lambda: tf.sliding_window_mask(19, SQ, SK)  # noqa: E731
    g0 = graph("f16", 1, 4, 2, SQ, SK, D, mask=mask)
    ins = inputs(g0, "f16", seed=2)
    p64, live = probs(g0, ins)
    row_max = p64.max(-1)
    g, _, tau = threshold_graph("f16", float(np.median(row_max)), seed=2, mask=mask)
    dead = row_max < tau
    assert 0 < dead.sum() < dead.size, "tau must zero some rows, not all"
    check(g, "f16", configs=block_cfg(g, 16, 32), ins=ins)
    got = run_kernel(g, ins, configs=block_cfg(g, 16, 32))
    assert np.all(got["out"][dead] == 0.0)
    assert np.all(np.abs(got["out"][~dead]).max(-1) > 0)
    np.testing.assert_array_equal(got["lse"], run_kernel(g0, ins, configs=block_cfg(g0, 16, 32))["lse"])


@pytest.mark.interp
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_threshold_with_score_mod_and_sliding_window(dtype):
    g, ins, _ = threshold_graph(dtype, 0.04, seed=4, mask=lambda: tf.sliding_window_mask(23, SQ, SK),
                                score_mod=tf.softcap_score(5.0))
    check(g, dtype, ins=ins)


@pytest.mark.interp
def test_threshold_with_runtime_block_lists():
    # a block mask at BLOCK_M x BLOCK_N: block lists rebuilt from the tensor at run time, visited twice
    bmask = np.random.default_rng(5).random((1, 4, 2, 3)) < 0.6
    extras = [("bm", bmask, "bool")]
    g, ins, _ = threshold_graph("f16", 0.05, seed=3, extras=extras,
                                mask=lambda t: tf.block_mask(3, t, 32, 32) & causal(SQ, SK))
    cg = check(g, "f16", extras, configs=block_cfg(g, 32, 32), ins=ins)
    assert cg.kernels[0].spec.runtime_lists(32, 32)


@pytest.mark.interp
@pytest.mark.parametrize("sq,sk", [(75, 37), (37, 75)])
def test_threshold_mha_sq_ne_sk_small_blocks(sq, sk):
    # Sq > Sk: the first Sq - Sk rows see no key (out 0, lse -inf); 16 x 16 blocks, ragged both ways.
    g, ins, _ = threshold_graph("f16", 0.05, seed=1, b=2, hq=2, hkv=2, sq=sq, sk=sk,
                                mask=lambda: causal(sq, sk))
    check(g, "f16", configs=block_cfg(g, 16, 16), ins=ins)


@pytest.mark.interp
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_post_mod_reads_operand_and_index_vars(dtype):
    # a per-(head, key) weight from an extra operand, doubled on every third key, with an ALiBi score_mod
    rng = np.random.default_rng(9)
    w = rng.uniform(0.5, 2.0, (4, SK)).astype(np.float32)
    kv = ex.var("kv_idx")
    pm = ex.where((kv % 3).eq(0), P * 2.0, P) * ex.load(3, "f32", ex.var("h"), kv)
    s = ex.var("score", "f32")
    alibi = s - (ex.var("q_idx") + (SK - SQ) - kv).cast("f32") * (ex.var("h").cast("f32") + 1.0) * 0.125
    extras = [("w", w, "f32")]
    g = graph(dtype, 1, 4, 2, SQ, SK, D, mask=lambda t: causal(SQ, SK), score_mod=alibi, post_mod=pm,
              extras=extras)
    cg = check(g, dtype, extras, configs=block_cfg(g, 16, 32), seed=8)
    assert "post-softmax pass" in cg.report()


@pytest.mark.interp
def test_masked_positions_contribute_zero():
    # post_mod(0) != 0: masked and out-of-range keys must still contribute nothing
    g = graph("f16", 2, 2, 1, SQ, SK, D, mask=lambda: tf.streaming_mask(8, 24, SQ, SK),
              post_mod=P * 0.5 + 0.01)
    check(g, "f16", configs=block_cfg(g, 16, 32), seed=6)
    check(g, "f16", seed=6)  # default (64 x 64 under the interpreter): one ragged partial block


@pytest.mark.interp
def test_rows_without_a_live_score_output_zero():
    # score_mod sends rows 3 and 20 to -inf: lse -inf and out 0 there, although post_mod(0) = 0.01
    s = ex.var("score", "f32")
    dead = ex.var("q_idx").eq(3) | ex.var("q_idx").eq(20)
    g = graph("f16", 1, 2, 2, SQ, SK, D, mask=lambda: causal(SQ, SK),
              score_mod=ex.where(dead, float("-inf"), s), post_mod=P + 0.01)
    check(g, "f16", configs=block_cfg(g, 16, 32), seed=4)
    got = run_kernel(g, inputs(g, "f16", seed=4), configs=block_cfg(g, 16, 32))
    assert np.all(got["out"][:, :, [3, 20]] == 0) and np.all(np.isneginf(got["lse"][:, :, [3, 20]]))


@pytest.mark.interp
def test_post_mod_without_p_is_widened_to_the_tile():
    # uniform attention over the causal window: 1 / (number of visible keys), ignoring p
    pm = 1.0 / (ex.var("q_idx") + (SK - SQ + 1)).cast("f32")
    g = graph("f16", 1, 2, 2, SQ, SK, D, mask=lambda: causal(SQ, SK), post_mod=pm)
    cg = check(g, "f16", configs=block_cfg(g, 16, 32), seed=3)
    ck = cg.kernels[0]
    assert "pw = " in ck.spec.render_triton(ck.config, interpret=True)


def test_render_two_passes_key_features_report():
    mask = lambda: causal(2048, 2048)  # noqa: E731
    plain = tf.compile(graph("f16", 1, 8, 8, 2048, 2048, 128, mask=mask), target="sm_90", aot=False)
    post = [tf.compile(graph("f16", 1, 8, 8, 2048, 2048, 128, mask=mask, post_mod=softmax_threshold(t)),
                       target="sm_90", aot=False) for t in (0.01, 0.02)]
    sp, s1, s2 = plain.kernels[0].spec, post[0].kernels[0].spec, post[1].kernels[0].spec
    assert len({sp.key, s1.key, s2.key}) == 3
    assert "post_mod" not in sp.program_description()  # kernels without one keep their keys
    cfg = plain.kernels[0].config
    assert sp.features(cfg)["post_mod"] == 0.0 and s1.features(cfg)["post_mod"] == 1.0
    assert s1.flops() == pytest.approx(sp.flops() * 3 / 2)  # q k^T twice, P V once (D == Dv)
    src_plain, src = sp.render_triton(cfg), s1.render_triton(cfg)
    assert src_plain.count("for j in range(") == 2 and src.count("for j in range(") == 4
    assert src.count("tl.dot(") == 6 and src_plain.count("tl.dot(") == 4  # pass 1 has no P V
    assert "inv_l = 1.0 / l_safe" in src and "acc / l_safe" not in src and "acc * alpha" not in src
    assert "(p >= 0.01)" in src
    rep = post[0].report()
    assert "post_mod: (where (ge p:f32 0.01:f32) p:f32 0.0:f32)" in rep
    assert "post-softmax pass" in rep and "2 passes over KV" in rep
    assert "post-softmax" not in plain.report()


@pytest.mark.parametrize("arch,d", [("sm_90", 64), ("sm_90", 128), ("sm_80", 64)])
def test_aot_default_config_no_spills(arch, d):
    s = 2048
    pm = softmax_threshold(0.01)
    g = graph("f16", 1, 32, 32, s, s, d, mask=lambda: causal(s, s), post_mod=pm)
    assert_default_builds_clean(g, arch, f"hdim {d} post_mod kernel")
