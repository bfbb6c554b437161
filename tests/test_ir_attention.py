"""The attention op: inference/verification, text round trip, reference vs independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.ir import Op, VerifyError, make, parse_graph
from tilefuse.ir import expr as ex
from tilefuse.ir.attention_op import eval_mask
from tilefuse.ir.reference import evaluate

RNG = np.random.default_rng(1234)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32).astype(np.float64)


def naive(q, k, v, scale, mask=None, score_fn=None, post_fn=None):
    """Per-(b, h, row) loop: softmax of the masked scores times v; fully masked rows give 0 / -inf.
    `post_fn(p, b, h, i, j)` replaces each kept probability before the (unrenormalised) product with v."""
    b, hq, sq, _ = q.shape
    hkv, sk, dv = k.shape[1], k.shape[2], v.shape[3]
    out = np.zeros((b, hq, sq, dv))
    lse = np.full((b, hq, sq), -np.inf)
    for bi in range(b):
        for h in range(hq):
            kh = h // (hq // hkv)
            for i in range(sq):
                s = np.array([scale * float(q[bi, h, i] @ k[bi, kh, j]) for j in range(sk)])
                if score_fn is not None:
                    s = np.array([score_fn(x, bi, h, i, j) for j, x in enumerate(s)])
                keep = mask[bi, h, i] if mask is not None else np.ones(sk, bool)
                if not keep.any():
                    continue
                m = s[keep].max()
                p = np.where(keep, np.exp(s - m), 0.0)
                if post_fn is None:
                    out[bi, h, i] = p @ v[bi, kh] / p.sum()
                else:
                    pp = [post_fn(x / p.sum(), bi, h, i, j) if keep[j] else 0.0 for j, x in enumerate(p)]
                    out[bi, h, i] = np.array(pp) @ v[bi, kh]
                lse[bi, h, i] = m + math.log(p.sum())
    return out, lse


def build(b, hq, hkv, sq, sk, d, dv=None, dtype="f32", extra_specs=(), **kw):
    g = tf.GraphBuilder("attn")
    q = g.input("q", (b, hq, sq, d), dtype)
    k = g.input("k", (b, hkv, sk, d), dtype)
    v = g.input("v", (b, hkv, sk, dv or d), dtype)
    extra = [g.input(name, shape, edt) for name, shape, edt in extra_specs]
    mask_fn = kw.pop("mask_fn", None)
    if mask_fn is not None:
        kw["mask_mod"] = mask_fn(*extra)
    res = tf.attention(q, k, v, extra=extra, **kw)
    if kw.get("return_lse"):
        g.output("out", res[0])
        g.output("lse", res[1])
    else:
        g.output("out", res)
    return g.build()


def run(g, **arrays):
    return evaluate(g, arrays)


def roundtrip(g):
    g2 = parse_graph(g.text)
    assert g2.key == g.key
    assert g2.text == g.text


# ---- inference / verification ---------------------------------------------------------------------
def test_infer_shapes_gqa_lse():
    g = build(2, 8, 2, 5, 7, 16, dv=12, dtype="bf16", return_lse=True)
    out, lse = g.output("out"), g.output("lse")
    assert (out.dtype.name, out.shape) == ("bf16", (2, 8, 5, 12))
    assert (lse.dtype.name, lse.shape) == ("f32", (2, 8, 5))
    node = out.src[0]
    assert node.op is Op.ATTENTION and node.attr("scale") == pytest.approx(1 / 4)
    roundtrip(g)


def test_verify_errors():
    g = tf.GraphBuilder("bad")
    q = g.input("q", (1, 6, 4, 8), "f16")
    k = g.input("k", (1, 4, 4, 8), "f16")
    with pytest.raises(VerifyError, match=r"q heads 6 must be a multiple of kv heads 4"):
        tf.attention(q, k, k)
    k2 = g.input("k2", (1, 2, 4, 8), "f32")
    with pytest.raises(VerifyError, match=r"attention of q f16\[1, 6, 4, 8\].*one dtype"):
        tf.attention(q, k2, k2)
    k3 = g.input("k3", (1, 2, 4, 8), "f16")
    with pytest.raises(VerifyError, match=r"mask_mod loads operand 1 but the extra operands"):
        tf.attention(q, k3, k3, mask_mod=ex.load(1, "f16", 0, 0, 0, 0).gt(0.0))
    with pytest.raises(VerifyError, match=r"mask_mod uses variable 'i'"):
        tf.attention(q, k3, k3, mask_mod=ex.var("i").lt(3))
    with pytest.raises(VerifyError, match=r"mask_mod must produce bool"):
        tf.attention(q, k3, k3, mask_mod=ex.var("q_idx") - ex.var("kv_idx"))
    dm = g.input("dm", (4,), "i32")
    with pytest.raises(VerifyError, match=r"extra operands \[3\] are not read"):
        tf.attention(q, k3, k3, extra=[dm])
    with pytest.raises(VerifyError, match=r"attention: expected 3..64 operands, got 2"):
        make(Op.ATTENTION, [q.node, k3.node])


# ---- reference semantics ------------------------------------------------------------------------------
def test_dense_and_causal_vs_torch_sdpa():
    torch = pytest.importorskip("torch")
    q, k, v = rand(2, 4, 6, 8), rand(2, 4, 6, 8), rand(2, 4, 6, 8)
    for causal in (False, True):
        mask_fn = (lambda: tf.causal_mask(6, 6)) if causal else None
        g = build(2, 4, 4, 6, 6, 8, mask_fn=mask_fn)
        got = run(g, q=q, k=k, v=v)["out"]
        want = torch.nn.functional.scaled_dot_product_attention(
            *(torch.from_numpy(x) for x in (q, k, v)), is_causal=causal).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_gqa_scale_lse_vs_loop():
    q, k, v = rand(1, 6, 5, 8), rand(1, 2, 9, 8), rand(1, 2, 9, 4)
    g = build(1, 6, 2, 5, 9, 8, dv=4, scale=0.3, return_lse=True)
    res = run(g, q=q, k=k, v=v)
    out, lse = naive(q, k, v, 0.3)
    np.testing.assert_allclose(res["out"], out, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res["lse"], lse, rtol=1e-6, atol=1e-6)
    roundtrip(g)


def test_bottom_right_causal_and_fully_masked_rows():
    # Sq < Sk: query i sees keys <= i + 3.
    q, k, v = rand(1, 2, 4, 8), rand(1, 2, 7, 8), rand(1, 2, 7, 8)
    g = build(1, 2, 2, 4, 7, 8, mask_fn=lambda: tf.causal_mask(4, 7), return_lse=True)
    hand = np.arange(7)[None, :] <= np.arange(4)[:, None] + 3
    res = run(g, q=q, k=k, v=v)
    out, lse = naive(q, k, v, 1 / math.sqrt(8), np.broadcast_to(hand, (1, 2, 4, 7)))
    np.testing.assert_allclose(res["out"], out, rtol=1e-6, atol=1e-6)
    roundtrip(g)
    # Sq > Sk: the first Sq - Sk rows see nothing -> output 0, lse -inf.
    q2, k2, v2 = rand(1, 1, 6, 8), rand(1, 1, 3, 8), rand(1, 1, 3, 8)
    g2 = build(1, 1, 1, 6, 3, 8, mask_fn=lambda: tf.causal_mask(6, 3), return_lse=True)
    res2 = run(g2, q=q2, k=k2, v=v2)
    assert np.all(res2["out"][0, 0, :3] == 0) and np.all(np.isneginf(res2["lse"][0, 0, :3]))
    hand2 = np.arange(3)[None, :] <= np.arange(6)[:, None] - 3
    out2, lse2 = naive(q2, k2, v2, 1 / math.sqrt(8), hand2[None, None])
    np.testing.assert_allclose(res2["out"], out2, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.isneginf(res2["lse"]), np.isneginf(lse2))


def _hand_masks(b, h, sq, sk):
    """name -> (expr builder, hand-written numpy mask [B, H, Sq, Sk])."""
    qi = np.arange(sq)[:, None] + (sk - sq)
    kj = np.arange(sk)[None, :]
    causal = kj <= qi
    full = (b, h, sq, sk)
    stream = causal & ((kj < 2) | (kj > qi - 3))
    per_head = np.stack([causal if hh < 2 else stream for hh in range(h)])
    strided = np.zeros(full, bool)
    for hh in range(h):
        strided[:, hh] = causal & (kj % 3 == hh % 3)
    return {
        "causal": (tf.causal_mask(sq, sk), np.broadcast_to(causal, full)),
        "sliding": (tf.sliding_window_mask(3, sq, sk), np.broadcast_to(causal & (kj > qi - 3), full)),
        "streaming": (tf.streaming_mask(2, 3, sq, sk), np.broadcast_to(stream, full)),
        "strided": (tf.strided_mask(3, ex.var("h") % 3, sq, sk), strided),
        "strided_local": (tf.strided_mask(4, 1, sq, sk, local=2),
                          np.broadcast_to(causal & ((kj % 4 == 1) | (kj > qi - 2)), full)),
        "per_head": (tf.per_head_mask([tf.causal_mask(sq, sk)] * 2 + [tf.streaming_mask(2, 3, sq, sk)] * (h - 2)),
                     np.broadcast_to(per_head, full)),
    }


@pytest.mark.parametrize("name", ["causal", "sliding", "streaming", "strided", "strided_local", "per_head"])
def test_builtin_masks_vs_numpy(name):
    b, h, sq, sk = 2, 4, 9, 11
    expr, hand = _hand_masks(b, h, sq, sk)[name]
    np.testing.assert_array_equal(eval_mask(expr, [], (b, h, sq, sk)), hand)
    q, k, v = rand(b, h, sq, 8), rand(b, 2, sk, 8), rand(b, 2, sk, 8)
    g = build(b, h, 2, sq, sk, 8, mask_fn=lambda: expr)
    roundtrip(g)
    out, _ = naive(q, k, v, 1 / math.sqrt(8), hand)
    np.testing.assert_allclose(run(g, q=q, k=k, v=v)["out"], out, rtol=1e-6, atol=1e-6)


def test_block_mask_operand():
    b, h, sq, sk, bq, bk = 2, 2, 10, 12, 4, 4
    blocks = RNG.random((b, h, 3, 3)) < 0.5
    spec = [("bm", (b, h, 3, 3), "bool")]
    g = build(b, h, h, sq, sk, 8, extra_specs=spec,
              mask_fn=lambda t: tf.block_mask(3, t, bq, bk) & tf.causal_mask(sq, sk))
    roundtrip(g)
    hand = np.zeros((b, h, sq, sk), bool)
    for bi in range(b):
        for hh in range(h):
            for i in range(sq):
                for j in range(sk):
                    hand[bi, hh, i, j] = blocks[bi, hh, i // bq, j // bk] and j <= i + 2
    q, k, v = rand(b, h, sq, 8), rand(b, h, sk, 8), rand(b, h, sk, 8)
    out, _ = naive(q, k, v, 1 / math.sqrt(8), hand)
    np.testing.assert_allclose(run(g, q=q, k=k, v=v, bm=blocks)["out"], out, rtol=1e-6, atol=1e-6)
    # u8 block mask broadcast over the batch.
    g2 = build(b, h, h, sq, sk, 8, extra_specs=[("bm", (1, h, 3, 3), "u8")],
               mask_fn=lambda t: tf.block_mask(3, t, bq, bk))
    u8 = (RNG.random((1, h, 3, 3)) < 0.5).astype(np.uint8) * 7
    hand2 = np.broadcast_to(np.repeat(np.repeat(u8 != 0, bq, 2), bk, 3)[:, :, :sq, :sk], (b, h, sq, sk))
    out2, _ = naive(q, k, v, 1 / math.sqrt(8), hand2)
    np.testing.assert_allclose(run(g2, q=q, k=k, v=v, bm=u8)["out"], out2, rtol=1e-6, atol=1e-6)


def test_topk_block_index_lists():
    b, h, sq, sk, bq, bk, topk = 1, 2, 8, 16, 4, 4, 2
    idx = RNG.integers(-1, 4, size=(b, h, 2, topk)).astype(np.int32)
    g = build(b, h, h, sq, sk, 8, extra_specs=[("idx", (b, h, 2, topk), "i32")],
              mask_fn=lambda t: tf.topk_block_mask(3, t, bq, bk))
    roundtrip(g)
    hand = np.zeros((b, h, sq, sk), bool)
    for hh in range(h):
        for i in range(sq):
            for j in range(sk):
                hand[0, hh, i, j] = (j // bk) in set(idx[0, hh, i // bq].tolist())
    q, k, v = rand(b, h, sq, 8), rand(b, h, sk, 8), rand(b, h, sk, 8)
    out, _ = naive(q, k, v, 1 / math.sqrt(8), hand)
    np.testing.assert_allclose(run(g, q=q, k=k, v=v, idx=idx)["out"], out, rtol=1e-6, atol=1e-6)


def test_document_mask_and_softcap_score_mod():
    b, h, s = 1, 2, 10
    doc = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3], dtype=np.int32)
    g = build(b, h, h, s, s, 8, extra_specs=[("doc", (s,), "i32")],
              mask_fn=lambda t: tf.document_mask(3, t) & tf.causal_mask(s, s), score_mod=tf.softcap_score(2.0))
    roundtrip(g)
    hand = (doc[:, None] == doc[None, :]) & (np.arange(s)[None, :] <= np.arange(s)[:, None])
    q, k, v = rand(b, h, s, 8), rand(b, h, s, 8), rand(b, h, s, 8)
    cap = lambda x, *_: float(np.float32(2.0 * np.tanh(np.float32(x * 0.5))))  # noqa: E731
    out, _ = naive(q, k, v, 1 / math.sqrt(8), np.broadcast_to(hand, (b, h, s, s)), cap)
    np.testing.assert_allclose(run(g, q=q, k=k, v=v, doc=doc)["out"], out, rtol=1e-5, atol=1e-6)


def test_score_mod_with_index_vars():
    # ALiBi-like bias: score - 0.5 * (q_idx - kv_idx) * (h + 1)
    s = ex.var("score", "f32")
    dist = (ex.var("q_idx") - ex.var("kv_idx")).cast("f32")
    mod = s - dist * (ex.var("h").cast("f32") + 1.0) * 0.5
    g = build(1, 2, 2, 5, 5, 4, score_mod=mod, mask_fn=lambda: tf.causal_mask(5, 5))
    roundtrip(g)
    q, k, v = rand(1, 2, 5, 4), rand(1, 2, 5, 4), rand(1, 2, 5, 4)
    hand = np.broadcast_to(np.arange(5)[None, :] <= np.arange(5)[:, None], (1, 2, 5, 5))
    out, _ = naive(q, k, v, 0.5, hand, lambda x, b, h, i, j: x - (i - j) * (h + 1) * 0.5)
    np.testing.assert_allclose(run(g, q=q, k=k, v=v)["out"], out, rtol=1e-5, atol=1e-6)
