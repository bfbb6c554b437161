"""Block-sparsity analysis: exact full/partial/empty counts against a brute-force count of the
element mask, head-pattern sharing, run-time refinement of data-dependent masks, and the CSR lists."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.ir import expr as ex
from tilefuse.ir.attention_op import eval_mask, make_loader
from tilefuse.kernels.attention.block_sparsity import (EMPTY, FULL, PARTIAL, BlockSparsity, analyze, analyze_runtime,
                                             block_aligned_loads, compact, lists_from_block_mask)

RNG = np.random.default_rng(7)


def brute(mask: np.ndarray, bm: int, bn: int) -> np.ndarray:
    """Block classes [B, H, NQB, NKB] from a dense element mask (padding counts as neither)."""
    b, h, sq, sk = mask.shape
    nqb, nkb = -(-sq // bm), -(-sk // bn)
    pad = ((0, 0), (0, 0), (0, nqb * bm - sq), (0, nkb * bn - sk))
    all_true = np.pad(mask, pad, constant_values=True).reshape(b, h, nqb, bm, nkb, bn).all(axis=(3, 5))
    any_true = np.pad(mask, pad, constant_values=False).reshape(b, h, nqb, bm, nkb, bn).any(axis=(3, 5))
    return np.where(all_true, FULL, np.where(any_true, PARTIAL, EMPTY))


def counts(cls: np.ndarray) -> tuple[int, int, int]:
    return int((cls == FULL).sum()), int((cls == PARTIAL).sum()), int((cls == EMPTY).sum())


def masks(sq: int, sk: int, h: int) -> dict[str, ex.Expr]:
    q, kv = ex.var("q_idx"), ex.var("kv_idx")
    half = h // 2
    return {
        "causal": tf.causal_mask(sq, sk),
        "sliding": tf.sliding_window_mask(40, sq, sk),
        "streaming": tf.streaming_mask(16, 48, sq, sk),
        "strided": tf.strided_mask(4, ex.var("h") % 4, sq, sk),
        "strided_local": tf.strided_mask(64, 3, sq, sk, local=32),
        "per_head": tf.per_head_mask([tf.causal_mask(sq, sk)] * half + [tf.streaming_mask(16, 48, sq, sk)] * half),
        "custom": ((q // 8 + kv // 8) % 3).ne(1) & kv.lt(q + 50),
    }


@pytest.mark.parametrize("name", ["causal", "sliding", "streaming", "strided", "strided_local", "per_head", "custom"])
@pytest.mark.parametrize("blocks", [(16, 16), (32, 16), (64, 32), (128, 64)])
@pytest.mark.parametrize("sizes", [(200, 200), (77, 203)])
def test_exact_counts_vs_brute_force(name, blocks, sizes):
    b, h = 1, 4
    sq, sk = sizes
    bm, bn = blocks
    mask = masks(sq, sk, h)[name]
    sp = analyze(mask, b, h, sq, sk, bm, bn)
    want = brute(eval_mask(mask, [], (b, h, sq, sk)), bm, bn)
    got = sp.classes[sp.pattern_of]
    assert sp.exact
    np.testing.assert_array_equal(got, want)
    for p, c in enumerate(sp.counts()):
        heads = np.nonzero(sp.pattern_of[0] == p)[0]
        assert (c["full"], c["partial"], c["empty"]) == counts(want[0, heads[0]])


def test_causal_counts_closed_form():
    # Sq = Sk = 1024 at 128 x 128: 8 diagonal partial blocks, 28 full, 28 empty.
    sp = analyze(tf.causal_mask(1024, 1024), 1, 32, 1024, 1024, 128, 128)
    assert sp.num_patterns == 1 and sp.counts() == [{"full": 28, "partial": 8, "empty": 28}]
    assert "pattern 0 heads 0-31: full 28, partial 8, empty 28 of 64" in "\n".join(sp.summary())


def test_lserve_heads_share_two_patterns():
    s, h = 2048, 32
    mask = tf.per_head_mask([tf.causal_mask(s, s)] * 16 + [tf.streaming_mask(64, 256, s, s)] * 16)
    sp = analyze(mask, 1, h, s, s, 128, 64)
    assert sp.num_patterns == 2
    assert sp.heads_of(int(sp.pattern_of[0, 0])) == "0-15" and sp.heads_of(int(sp.pattern_of[0, 31])) == "16-31"
    assert sp.counts()[int(sp.pattern_of[0, 0])] == {"full": 240, "partial": 32, "empty": 240}
    want = brute(eval_mask(tf.streaming_mask(64, 256, s, s), [], (1, 1, s, s)), 128, 64)[0, 0]
    assert sp.counts()[int(sp.pattern_of[0, 16])] == dict(zip(("full", "partial", "empty"), counts(want)))


def test_batch_dependent_static_mask_and_dense():
    mask = ex.var("kv_idx").lt(ex.var("b") * 30 + 10)
    sp = analyze(mask, 3, 2, 50, 90, 16, 16)
    want = brute(eval_mask(mask, [], (3, 2, 50, 90)), 16, 16)
    np.testing.assert_array_equal(sp.classes[sp.pattern_of], want)
    assert sp.num_patterns == 3
    dense = analyze(None, 2, 2, 40, 40, 16, 16)
    assert dense.counts() == [{"full": 9, "partial": 0, "empty": 0}]


def test_budget_falls_back_to_partial():
    sp = analyze(tf.strided_mask(3, 1, 300, 300), 1, 1, 300, 300, 32, 32, budget=2048)
    assert not sp.exact
    want = brute(eval_mask(tf.strided_mask(3, 1, 300, 300), [], (1, 1, 300, 300)), 32, 32)[0, 0]
    got = sp.classes[0]
    # sound: an empty block is truly empty, a full one truly full
    assert np.all(want[got == EMPTY] == EMPTY) and np.all(want[got == FULL] == FULL)


def _dynamic(kind: str, b: int, h: int, sq: int, sk: int, bq: int, bk: int):
    g = tf.GraphBuilder("m")
    if kind == "block":
        arr = RNG.random((1, h, -(-sq // bq), -(-sk // bk))) < 0.4
        t = g.input("bm", arr.shape, "bool")
        mask = tf.block_mask(3, t, bq, bk) & tf.causal_mask(sq, sk)
    elif kind == "topk":
        arr = RNG.integers(-1, -(-sk // bk), size=(b, h, -(-sq // bq), 3)).astype(np.int64)
        t = g.input("idx", arr.shape, "i32")
        mask = tf.topk_block_mask(3, t, bq, bk)
    else:
        arr = np.repeat(np.arange(5), -(-sq // 5))[:sq].astype(np.int64)
        t = g.input("doc", arr.shape, "i32")
        mask = tf.document_mask(3, t) & tf.causal_mask(sq, sk)
    return mask, arr


@pytest.mark.parametrize("kind", ["block", "topk", "doc"])
def test_data_dependent_masks(kind):
    b, h, sq, sk, bm, bn = 2, 3, 70, 70, 16, 16
    mask, arr = _dynamic(kind, b, h, sq, sk, 32, 16)
    xs = [None, None, None, arr]
    want = brute(eval_mask(mask, xs, (b, h, sq, sk)), bm, bn)
    static = analyze(mask, b, h, sq, sk, bm, bn)
    st = static.classes[static.pattern_of]
    assert not static.exact and static.data_dependent
    # compile time: sound (the static part prunes: causal empties are empty)
    assert np.all(want[st == EMPTY] == EMPTY) and np.all(want[st == FULL] == FULL)
    aligned = block_aligned_loads(mask, sq, sk, bm, bn)
    assert aligned == (kind != "doc")
    if aligned:
        rt = analyze_runtime(mask, static, b, h, make_loader(xs, "test"))
        np.testing.assert_array_equal(rt.classes[rt.pattern_of], want)


def _expand(lists, nrows: int) -> dict[int, tuple[list[int], list[int]]]:
    ptr, nfull, idx = (np.asarray(x) for x in lists.as_list()[:3])
    return {r: (idx[ptr[r]:ptr[r] + nfull[r]].tolist(), idx[ptr[r] + nfull[r]:ptr[r + 1]].tolist())
            for r in range(nrows)}


@pytest.mark.interp  # torch tensors: the generated mask_compact kernel
def test_compact_lists_numpy_and_torch():
    torch = pytest.importorskip("torch")
    cls = RNG.integers(0, 3, size=(2, 5, 7)).astype(np.int8)
    pat = np.array([[0, 1, 1], [1, 0, 0]])
    lists = compact(cls, pat, sk=7 * 16 - 3, bn=16)  # ragged: the last kv block is always masked
    rows = _expand(lists, 10)
    for p in range(2):
        for m in range(5):
            full, part = rows[p * 5 + m]
            assert full == [n for n in range(7) if cls[p, m, n] == FULL and n != 6]
            assert part == [n for n in range(7) if cls[p, m, n] == PARTIAL or (n == 6 and cls[p, m, n] == FULL)]
    assert lists.head_pat.tolist() == [0, 1, 1, 1, 0, 0]
    tl_ = compact(torch.from_numpy(cls), torch.from_numpy(pat), sk=7 * 16 - 3, bn=16)
    for a, b in zip(lists.as_list(), tl_.as_list()):
        assert a.tolist() == b.tolist()


@pytest.mark.interp
def test_lists_from_dense_block_mask():
    torch = pytest.importorskip("torch")
    bmask = RNG.random((1, 2, 4, 6)) < 0.5
    a = lists_from_block_mask(bmask, 2, 2, 96, 16)
    t = lists_from_block_mask(torch.from_numpy(bmask), 2, 2, 96, 16)
    for x, y in zip(a.as_list(), t.as_list()):
        assert np.asarray(x).tolist() == y.tolist()
    rows = _expand(a, 16)
    for bh in range(4):
        for m in range(4):
            assert rows[bh * 4 + m] == ([n for n in range(6) if bmask[0, bh % 2, m, n]], [])


def test_sparsity_lists_forward_and_transposed():
    # BlockSparsity.lists: the forward's compact() call and the backward's transposed one, on numpy
    cls = RNG.integers(0, 3, size=(2, 5, 7)).astype(np.int8)
    pat = np.array([[0, 1, 1], [1, 0, 0]])
    sp = BlockSparsity(32, 16, 5 * 32 - 9, 7 * 16 - 3, cls, pat, True, False)
    for a, b in zip(sp.lists().as_list(), compact(cls, pat, 7 * 16 - 3, 16).as_list()):
        np.testing.assert_array_equal(a, b)
    want = compact(np.ascontiguousarray(cls.transpose(0, 2, 1)), pat, 5 * 32 - 9, 32)
    for a, b in zip(sp.lists(transposed=True).as_list(), want.as_list()):
        np.testing.assert_array_equal(a, b)
    rows = _expand(want, 14)
    for p in range(2):
        for n in range(7):
            full, part = rows[p * 7 + n]
            assert full == [m for m in range(5) if cls[p, m, n] == FULL and m != 4]  # ragged last q block
            assert sorted(full + part) == [m for m in range(5) if cls[p, m, n] != EMPTY]
