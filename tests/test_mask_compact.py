"""The generated block-list kernel (kernels/mask_compact.py) against the numpy reference of
kernels/block_sparsity.py: dense block masks, block classes (plain and transposed) and top-k lists,
element for element, under the Triton interpreter; poisoned output buffers; explicit host path and
errors; rendering; an sm_90 AOT build; attention reading the kernel's lists end to end."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.schedule.config import Config
from tilefuse.ir.attention_op import make_loader
from tilefuse.ir.reference import evaluate
from tilefuse.kernels.attention import mask_compact
from tilefuse.kernels.attention.block_sparsity import (EMPTY, FULL, PARTIAL, BlockSparsity, analyze,
                                                       analyze_runtime, compact, lists_from_block_mask,
                                                       lists_from_topk)
from tilefuse.kernels.attention.mask_compact import (FNS, MaskCompactError, build_aot, compact_rows, default_config,
                                                     render, workload_key)

torch = pytest.importorskip("torch")
SENTINEL = -0x5A5A5A5A


def random_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float = 0.4) -> np.ndarray:
    """A random bool block mask with an all-empty and an all-full row among its rows."""
    m = rng.random(shape) < p
    flat = m.reshape(-1, shape[-1])
    flat[0] = False
    flat[-1] = True
    if flat.shape[0] > 3:
        flat[flat.shape[0] // 2] = False
    return m


def assert_same(got, want) -> None:
    """Every array of two BlockLists equal element for element (and in length)."""
    for name, a, b in zip(("kv_ptr", "kv_nfull", "kv_idx", "head_pat"), got.as_list(), want.as_list()):
        assert isinstance(a, torch.Tensor) and a.dtype == torch.int32, name
        np.testing.assert_array_equal(a.numpy(), np.asarray(b), err_msg=name)


def rows_by_head(lists, nqb: int) -> dict[tuple[int, int], tuple[list[int], list[int]]]:
    """(b * H + h, q block) -> (full key blocks, masked key blocks), through head_pat."""
    ptr, nfull, idx, pat = (np.asarray(x) for x in lists.as_list())
    out = {}
    for bh, p in enumerate(pat):
        for m in range(nqb):
            r = int(p) * nqb + m
            out[bh, m] = (idx[ptr[r]:ptr[r] + nfull[r]].tolist(), idx[ptr[r] + nfull[r]:ptr[r + 1]].tolist())
    return out


# ---- dense block masks ---------------------------------------------------------------------------
@pytest.mark.interp
@pytest.mark.parametrize("b,h,mb,mh,nqb,sk,bn", [
    (2, 3, 2, 3, 4, 37 * 16, 16),        # KB = 37: not a power of two, three 16-column chunks
    (2, 2, 1, 2, 3, 37 * 16 - 5, 16),    # broadcast over B, ragged last key block
    (1, 2, 1, 1, 2, 300 * 8 - 1, 8),     # KB = 300 > the default 256-column chunk, broadcast over both
    (3, 1, 3, 1, 5, 16, 16),             # one key block
])
def test_block_mask_matches_numpy(b, h, mb, mh, nqb, sk, bn):
    rng = np.random.default_rng(sk + nqb)
    nkb = -(-sk // bn)
    bmask = random_mask(rng, (mb, mh, nqb, nkb))
    want = lists_from_block_mask(bmask, b, h, sk, bn)
    assert_same(lists_from_block_mask(torch.from_numpy(bmask), b, h, sk, bn), want)
    # small chunks: KB spans several CHUNK-column steps (slots carried across chunks)
    x = torch.from_numpy(bmask).expand(b, h, nqb, nkb)
    got = compact_rows(x, "mask", nkb, nkb - 1 if sk % bn else -1, config=default_config("mask", 16))
    for a, w in zip(got, want.as_list()):
        np.testing.assert_array_equal(a.numpy(), w)


@pytest.mark.interp
def test_u8_and_strided_block_mask():
    rng = np.random.default_rng(3)
    bmask = random_mask(rng, (2, 2, 3, 21))
    want = lists_from_block_mask(bmask, 2, 2, 21 * 16, 16)
    assert_same(lists_from_block_mask(torch.from_numpy(bmask.astype(np.uint8)), 2, 2, 21 * 16, 16), want)
    # a non-contiguous view: the mask stored key-block-major and transposed back
    t = torch.from_numpy(np.ascontiguousarray(bmask.transpose(0, 1, 3, 2))).transpose(2, 3)
    assert not t.is_contiguous()
    assert_same(lists_from_block_mask(t, 2, 2, 21 * 16, 16), want)


@pytest.mark.interp
def test_empty_and_degenerate_shapes():
    empty = np.zeros((1, 1, 3, 5), dtype=bool)
    assert_same(lists_from_block_mask(torch.from_numpy(empty), 1, 1, 80, 16),
                lists_from_block_mask(empty, 1, 1, 80, 16))
    none = np.zeros((1, 1, 0, 5), dtype=bool)  # no query blocks: kv_ptr == [0]
    got = lists_from_block_mask(torch.from_numpy(none), 1, 1, 80, 16)
    assert got.kv_ptr.tolist() == [0] and got.kv_nfull.numel() == 0 and got.kv_idx.numel() == 0


# ---- block classes (forward and transposed lists) ----------------------------------------------
@pytest.mark.interp
@pytest.mark.parametrize("sq,sk", [(5 * 32, 19 * 16), (5 * 32 - 7, 19 * 16 - 3)])
def test_classes_and_transposed_lists_match_numpy(sq, sk):
    rng = np.random.default_rng(sk)
    nqb, nkb = -(-sq // 32), -(-sk // 16)
    classes = rng.integers(0, 3, size=(3, nqb, nkb)).astype(np.int8)
    classes[0, 0] = EMPTY
    classes[1, 1] = FULL
    classes[2, 2] = PARTIAL
    pattern_of = np.array([[0, 1], [2, 1]])
    sp = BlockSparsity(32, 16, sq, sk, classes, pattern_of, True, True)
    for transposed in (False, True):
        assert_same(sp.lists("cpu", transposed=transposed), sp.lists(None, transposed=transposed))
    # torch input to compact(): the kernel; host=True: the numpy reference on torch tensors
    t = torch.from_numpy(classes)
    assert_same(compact(t, torch.from_numpy(pattern_of), sk, 16), compact(classes, pattern_of, sk, 16))
    assert_same(compact(t, torch.from_numpy(pattern_of), sk, 16, host=True), compact(classes, pattern_of, sk, 16))


# ---- top-k lists ----------------------------------------------------------------------------------
@pytest.mark.interp
@pytest.mark.parametrize("k,mb,dtype", [(5, 2, np.int32), (1, 1, np.int64), (12, 1, np.int32)])
def test_topk_matches_numpy_and_runtime_analysis(k, mb, dtype):
    b, h, sq, sk, bm, bn = 2, 2, 70, 150, 16, 16   # NQB 5, NKB 10 (ragged)
    nqb, nkb = -(-sq // bm), -(-sk // bn)
    rng = np.random.default_rng(k)
    idx = rng.integers(-1, nkb + 3, size=(mb, h, nqb, k)).astype(dtype)  # -1 padding and out-of-range ids
    idx[..., 0, :] = -1                                                    # a row of padding only
    if k > 1:
        idx[..., 1, 1] = idx[..., 1, 0] = nkb - 1                          # a duplicate of the ragged block
    want = lists_from_topk(idx, b, h, sk, bn)
    got = lists_from_topk(torch.from_numpy(idx), b, h, sk, bn)
    assert_same(got, want)
    for (bh, m), (full, part) in rows_by_head(want, nqb).items():
        ids = sorted({int(i) for i in idx[bh // h % mb, bh % h, m] if 0 <= i < nkb})
        assert full + part == ids
    # the same rows as the run-time block analysis of topk_block_mask (the attention's path)
    g = tf.GraphBuilder("m")
    mask = tf.topk_block_mask(3, g.input("idx", idx.shape, "i64" if dtype is np.int64 else "i32"), bm, bn)
    rt = analyze_runtime(mask, analyze(mask, b, h, sq, sk, bm, bn), b, h, make_loader([None] * 3 + [idx], "t"))
    assert rows_by_head(got, nqb) == rows_by_head(compact(rt.classes, rt.pattern_of, sk, bn), nqb)


# ---- output buffers ----------------------------------------------------------------------------
@pytest.mark.interp
@pytest.mark.parametrize("capacity", ["rows_x_cols", "nnz_plus_3"])
def test_poisoned_output_buffers(capacity):
    rng = np.random.default_rng(11)
    bmask = random_mask(rng, (2, 2, 3, 23))
    want = lists_from_block_mask(bmask, 2, 2, 23 * 16 - 1, 16)
    rows, nnz = 12, int(want.kv_ptr[-1])
    cap = rows * 23 if capacity == "rows_x_cols" else nnz + 3
    out = tuple(torch.full((n,), SENTINEL, dtype=torch.int32) for n in (rows + 1, rows, cap))
    got = compact_rows(torch.from_numpy(bmask), "mask", 23, 22, out=out)
    assert all(g is o for g, o in zip(got, out))
    np.testing.assert_array_equal(out[0].numpy(), want.kv_ptr)   # every row start written
    np.testing.assert_array_equal(out[1].numpy(), want.kv_nfull)
    np.testing.assert_array_equal(out[2][:nnz].numpy(), want.kv_idx)
    assert (out[2][nnz:] == SENTINEL).all()                        # documented: kv_idx past kv_ptr[R] untouched


@pytest.mark.interp
def test_bad_output_buffers_raise():
    bmask = torch.ones((1, 1, 2, 8), dtype=torch.bool)
    ok = (torch.empty(3, dtype=torch.int32), torch.empty(2, dtype=torch.int32))
    with pytest.raises(MaskCompactError, match="kv_idx holds 15 elements, the lists need 16"):
        compact_rows(bmask, "mask", 8, out=ok + (torch.empty(15, dtype=torch.int32),))
    with pytest.raises(MaskCompactError, match="out kv_nfull must be a contiguous 1-d int32"):
        compact_rows(bmask, "mask", 8, out=(ok[0], ok[1].long(), torch.empty(16, dtype=torch.int32)))
    with pytest.raises(MaskCompactError, match="out kv_ptr needs 3 elements for 2 rows"):
        compact_rows(bmask, "mask", 8, out=(ok[1], ok[1], torch.empty(16, dtype=torch.int32)))


# ---- host path and errors ----------------------------------------------------------------------------
def test_host_path_is_explicit(monkeypatch):
    def no_kernel(*args, **kw):
        raise AssertionError("the host path must not launch the kernel")

    monkeypatch.setattr(mask_compact, "compact_rows", no_kernel)
    bmask = np.random.default_rng(5).random((1, 2, 3, 7)) < 0.5
    idx = np.array([[[[3, -1, 3], [0, 9, 6]]]], dtype=np.int32)
    assert_same(lists_from_block_mask(torch.from_numpy(bmask), 2, 2, 100, 16, host=True),
                lists_from_block_mask(bmask, 2, 2, 100, 16))
    assert_same(lists_from_topk(torch.from_numpy(idx), 1, 1, 100, 16, host=True), lists_from_topk(idx, 1, 1, 100, 16))
    with pytest.raises(AssertionError, match="must not launch"):
        lists_from_block_mask(torch.from_numpy(bmask), 2, 2, 100, 16)


def test_errors_name_the_problem():
    meta = torch.zeros((1, 1, 2, 7), dtype=torch.bool, device="meta")
    with pytest.raises(MaskCompactError, match="cannot run on device meta.*host=True"):
        lists_from_block_mask(meta, 1, 1, 100, 16)
    with pytest.raises(MaskCompactError, match="must be bool or integer, got torch.float32"):
        compact_rows(torch.zeros((1, 1, 2, 7)), "mask", 7)
    with pytest.raises(MaskCompactError, match="unknown mode 'dense'"):
        compact_rows(torch.zeros((1, 1, 2, 7), dtype=torch.bool), "dense", 7)
    with pytest.raises(ValueError, match=r"lists_from_block_mask: shape \[1, 3, 2, 7\] is not \[2\|1, 2\|1, NQB, 7\]"):
        lists_from_block_mask(np.zeros((1, 3, 2, 7), dtype=bool), 2, 2, 100, 16)
    with pytest.raises(ValueError, match="lists_from_topk: shape"):
        lists_from_topk(torch.zeros((2, 2, 3), dtype=torch.int32), 2, 2, 100, 16)


# ---- rendering and AOT -----------------------------------------------------------------------------
def test_rendered_source():
    cfg = default_config("topk", 37, 5)
    assert (cfg["CHUNK"], cfg["BLOCK_K"]) == (64, 8)
    src = render("topk", cfg)
    assert src == render("topk", Config(dict(cfg)))
    assert src.startswith("# tilefuse generated triton kernel: mask_compact_topk\n"
                          f"# family: mask_compact   workload: {workload_key('topk')[:16]}\n"
                          f"# config: {cfg.to_json()}\n")
    assert src.count("@triton.jit") == 3
    for fn in FNS:
        assert f"def mask_compact_topk_{fn}(" in src
    assert src.count("tl.cumsum(") == 3 and "ids[:, None] == cols[None, :]" in src
    assert "full = v == 2" in render("classes", cfg) and "full = v == 2" not in render("mask", cfg)
    assert render("mask", cfg.replace(CHUNK=16)) != render("mask", cfg)
    assert len({workload_key(m) for m in mask_compact.MODES}) == 3


def test_render_is_deterministic_across_processes():
    code = ("import hashlib; from tilefuse.kernels.attention.mask_compact import render, default_config; "
            "print(hashlib.sha256(render('topk', default_config('topk', 37, 5)).encode()).hexdigest())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == hashlib.sha256(render("topk", default_config("topk", 37, 5)).encode()).hexdigest()


def _aot(mode: str, x_type: str, arch: int, cache) -> dict:
    bins = build_aot(mode, default_config(mode, 300, 6), x_type, arch, cache=cache)
    assert set(bins) == {f"mask_compact_{mode}_{fn}" for fn in FNS}
    for binary in bins.values():
        assert binary.arch == arch and binary.cubin and f".target sm_{arch}" in binary.ptx
    return bins


def test_aot_build_sm90(tmp_path):
    from tilefuse.codegen.cache import BuildCache

    cache = BuildCache(tmp_path / "builds")
    first = _aot("mask", "*u8", 90, cache)
    assert not any(b.from_cache for b in first.values())
    assert all(b.from_cache for b in _aot("mask", "*u8", 90, cache).values())


def test_aot_build_topk_i64_sm80():
    _aot("topk", "*i64", 80, None)


# ---- attention reading the kernel's lists ------------------------------------------------------------
B, H, SQ, SK, D = 2, 2, 40, 75, 32


def _attention_with_block_mask(bmask: np.ndarray):
    g = tf.GraphBuilder("attn")
    q, k, v = (g.input(n, (B, H, s, D), "f32") for n, s in (("q", SQ), ("k", SK), ("v", SK)))
    t = g.input("bm", bmask.shape, "bool")
    g.output("out", tf.attention(q, k, v, mask_mod=tf.block_mask(3, t, 16, 16), extra=[t]))
    graph = g.build()
    name = tf.compile(graph, target="interp").kernels[0].spec.name
    cg = tf.compile(graph, target="interp", configs={name: Config(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)})
    gen = torch.Generator().manual_seed(0)
    ins = {n: torch.randn(s, generator=gen) for n, s in (("q", (B, H, SQ, D)), ("k", (B, H, SK, D)),
                                                         ("v", (B, H, SK, D)))}
    ins["bm"] = torch.from_numpy(bmask)
    return cg, ins, evaluate(cg.graph, ins)["out"]


@pytest.mark.interp
def test_attention_reads_the_kernels_block_lists(monkeypatch):
    bmask = random_mask(np.random.default_rng(2), (1, H, -(-SQ // 16), -(-SK // 16)), p=0.5)
    cg, ins, want = _attention_with_block_mask(bmask)
    assert cg.kernels[0].spec.runtime_lists(16, 16)
    got = cg.run(ins, poison=True)["out"].numpy()
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
    # the launch fed the kernel-built lists (one pattern per (b, h)) instead of the spec's own
    spec = cg.kernels[0].spec
    lists = lists_from_block_mask(ins["bm"], B, H, SK, 16)
    nqb = -(-SQ // 16)
    spec_lists = spec.block_lists(cg.kernels[0].config, {3: bmask})  # host analysis, deduplicated patterns
    assert rows_by_head(lists, nqb) == rows_by_head(spec_lists, nqb)
    monkeypatch.setattr(spec, "aux_args", lambda config, inputs, device: lists.as_list())
    got = cg.run(ins, poison=True)["out"].numpy()
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)


@pytest.mark.interp
def test_attention_launch_builds_lists_with_the_kernel(monkeypatch):
    calls = []
    real = mask_compact.compact_rows

    def spy(x, mode, *args, **kw):
        calls.append((mode, tuple(x.shape)))
        return real(x, mode, *args, **kw)

    monkeypatch.setattr(mask_compact, "compact_rows", spy)
    bmask = random_mask(np.random.default_rng(4), (1, H, -(-SQ // 16), -(-SK // 16)), p=0.5)
    cg, ins, want = _attention_with_block_mask(bmask)
    got = cg.run(ins, poison=True)["out"].numpy()
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
    assert calls and all(mode == "classes" for mode, _ in calls)
