"""paged_attention: the op's reference against gather-then-dense attention, and the decode kernel
under the Triton interpreter (page boundaries, ragged batches, GQA, Sq > 1, split-KV, int8/int4 KV
with an f16 recent window, page selection) with poisoned outputs; AOT builds for sm_80 / sm_90."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.schedule.config import Config
from tilefuse.ir import VerifyError, parse_graph
from tilefuse.ir import dtypes as dt
from tilefuse.ir.paged_attention_op import dequantize_pages, select_pages, seq_lengths
from tilefuse.ir.reference import evaluate
from tilefuse.kernels import LoweringError

from helpers import to_np

NP_DT = {"float32": None, "int32": "i32", "int8": "i8", "uint8": "u8", "float16": "f16"}


def make_case(seed, b=3, hq=8, hkv=2, sq=1, d=32, ps=4, lens=(9, 4, 1), dtype="f16", bits=16, group=16,
              recent=0, budget=None, sink=1, local=1, dup=False, lse=True, selection=False):
    """A graph and inputs: dense random K/V paginated with shuffled page ids (NaN in unused slots)."""
    rng = np.random.default_rng(seed)
    s = max(lens)
    f = np.float16 if dtype == "f16" else np.float32

    def rand(*shape):
        x = rng.standard_normal(shape).astype(np.float32)
        return x.astype(f).astype(np.float32) if dtype == "f16" else dt.round_to(x, dt.bf16).astype(np.float32)

    q, k, v = rand(b, hq, sq, d), rand(b, hkv, s, d), rand(b, hkv, s, d)
    if dup:  # pages 1 and 2 of sequence 0 repeat page 0's keys: equal scores, ties by page index
        for j in (1, 2):
            k[0, :, j * ps:(j + 1) * ps] = k[0, :, :ps]
    kp, vp, ip, ix, ll = tf.paginate(k, v, ps, rng, lens)
    ins = {"q": q, "kp": kp, "vp": vp, "ip": ip, "ix": ix, "ll": ll}
    kw = {"return_lse": lse}
    if bits != 16:
        (ins["kp"], ins["ks"]), (ins["vp"], ins["vs"]) = (tf.quantize_kv(x, bits, group) for x in (kp, vp))
        kw.update(kv_bits=bits, group_size=group)
        if recent:
            ins["kr"], ins["vr"] = (tf.recent_cache(x, lens, recent).astype(np.float32) for x in (k, v))
            # the quantized pages under the recent window must not be read: corrupt them
            for bi, n in enumerate(lens):
                for t in range(max(0, n - recent), n):
                    page, off = ix[ip[bi] + t // ps], t % ps
                    ins["kp"][page, off] = rng.integers(0, 127, ins["kp"][page, off].shape)
                    ins["ks"][page, off] = np.nan
    if budget is not None:
        ins["kmin"], ins["kmax"] = tf.page_summaries(kp, ip, ix, ll)
        kw.update(page_budget=budget, sink_pages=sink, local_pages=local, return_selection=selection)
    g = tf.GraphBuilder("decode")
    dtypes = {n: NP_DT[str(a.dtype)] or ("f32" if n in ("kmin", "kmax") else dtype) for n, a in ins.items()}
    dtypes.update({n: dtype for n in ("kr", "vr") if n in ins})
    t = {n: g.input(n, a.shape, dtypes[n]) for n, a in ins.items()}
    res = tf.paged_attention(t["q"], t["kp"], t["vp"], t["ip"], t["ix"], t["ll"],
                             scales=(t["ks"], t["vs"]) if "ks" in t else None,
                             recent=(t["kr"], t["vr"]) if "kr" in t else None,
                             summaries=(t["kmin"], t["kmax"]) if "kmin" in t else None, **kw)
    res = res if isinstance(res, tuple) else (res,)
    for name, r in zip(["out"] + (["lse"] if lse else []) + (["sel"] if selection else []), res):
        g.output(name, r)
    return g.build(), ins, (q, k, v)


def dense_reference(g, ins, lens, bits=16, group=16, recent=0, keep=None):
    """Gather each sequence's pages into dense K/V (dequantized, recent window applied), then run the
    dense `attention` op's reference with bottom-right causal masking."""
    kp, vp = ins["kp"], ins["vp"]
    if bits != 16:
        kp, vp = dequantize_pages(kp, ins["ks"], bits, group), dequantize_pages(vp, ins["vs"], bits, group)
    q = ins["q"]
    b, hq, sq, d = q.shape
    ps = kp.shape[1]
    out = np.zeros(q.shape)
    for bi, n in enumerate(lens):
        t = np.arange(n)
        pages = ins["ix"][ins["ip"][bi]:ins["ip"][bi + 1]]
        k, v = kp[pages[t // ps], t % ps].astype(np.float64), vp[pages[t // ps], t % ps].astype(np.float64)
        if recent:
            rec = t >= n - recent
            k[rec], v[rec] = ins["kr"][bi, t[rec] % recent], ins["vr"][bi, t[rec] % recent]
        if keep is not None:  # page selection (Sq == 1: no causal shift): drop unselected tokens
            sel = keep[bi][:, t // ps]
            assert (sel == sel[:1]).all(), "dense check needs one selection for every kv head"
            k, v, n = k[sel[0]], v[sel[0]], int(sel[0].sum())
        gd = tf.GraphBuilder("dense")
        dq, dk, dv = (gd.input(nm, shp, "f32") for nm, shp in (("q", (1, hq, sq, d)),
                                                                 ("k", (1, k.shape[1], n, d)),
                                                                 ("v", (1, k.shape[1], n, d))))
        gd.output("o", tf.attention(dq, dk, dv, mask_mod=tf.causal_mask(sq, n)))
        arrays = {"q": q[bi:bi + 1], "k": k.transpose(1, 0, 2)[None], "v": v.transpose(1, 0, 2)[None]}
        out[bi] = evaluate(gd.build(), arrays)["o"][0]
    return out


def run_kernel(g, ins, splits=1, block_n=16):
    cg = tf.compile(g, target="interp")
    (ck,) = cg.kernels
    assert ck.spec.family == "decode"
    cfg = Config(BLOCK_N=block_n, KV_SPLITS=splits, num_warps=4, num_stages=2)
    cg = tf.compile(g, target="interp", configs={ck.spec.name: cfg})
    outs = cg.run(ins, poison=True)
    return {name: to_np(x) for name, x in outs.items()}


def assert_close(got, want, dtype, what):
    rtol, atol = dt.tolerance(dt.dtype(dtype))
    assert got.shape == want.shape, (what, got.shape, want.shape)
    fin = np.isfinite(want)
    assert (np.isfinite(got) == fin).all() and (got[~fin] == want[~fin]).all(), f"{what}: unwritten or wrong inf"
    err = float(np.max(np.abs(got[fin] - want[fin]), initial=0.0))
    scale = max(1.0, float(np.max(np.abs(want[fin]), initial=0.0)))
    assert err <= (atol + rtol) * scale, f"{what}: max error {err} (scale {scale}, {dtype})"


def check(g, ins, dtype, splits, lens, block_n=16, **dense_kw):
    got = run_kernel(g, ins, splits, block_n)
    ref = evaluate(g, ins)
    for name in ref:
        assert_close(got[name].astype(np.float64), ref[name].astype(np.float64), dtype, name)
    assert_close(got["out"], dense_reference(g, ins, lens, **dense_kw), dtype, "out vs gather+dense")
    return got, ref


# ---- the op and its reference ---------------------------------------------------------------------
def test_reference_matches_gather_then_dense():
    lens = (9, 4, 1, 6)
    for sq, bits, recent in ((1, 16, 0), (4, 16, 0), (3, 8, 2), (2, 4, 5)):
        g, ins, _ = make_case(7 + sq, b=4, sq=sq, lens=lens, bits=bits, recent=recent, lse=False)
        ref = evaluate(g, ins)["out"]
        dense = dense_reference(g, ins, lens, bits=bits, recent=recent)
        assert np.abs(ref - dense).max() < 2e-3, (sq, bits)


def test_text_round_trip_and_cpu_unsupported():
    g, _, _ = make_case(0, bits=4, recent=3, budget=3, selection=True)
    assert parse_graph(g.text).key == g.key
    with pytest.raises(LoweringError, match="paged_attention"):
        tf.compile(g, target="cpu")


def test_verify_errors():
    g = tf.GraphBuilder("bad")
    q = g.input("q", (2, 8, 1, 32), "f16")
    kp = g.input("kp", (6, 4, 3, 32), "f16")
    ip, ix, ll = g.input("ip", (3,), "i32"), g.input("ix", (5,), "i32"), g.input("ll", (2,), "i32")
    with pytest.raises(VerifyError, match="multiple of kv heads"):
        tf.paged_attention(q, kp, kp, ip, ix, ll)
    kp2 = g.input("kp2", (6, 4, 2, 32), "f16")
    with pytest.raises(VerifyError, match="kv_bits=8 needs"):
        tf.paged_attention(q, kp2, kp2, ip, ix, ll, kv_bits=8, scales=(kp2, kp2))
    with pytest.raises(VerifyError, match="exceed page_budget"):
        tf.paged_attention(q, kp2, kp2, ip, ix, ll, page_budget=2, sink_pages=2, local_pages=1,
                           summaries=(kp2, kp2))


def test_select_pages_ties_and_forced():
    q = np.ones((2, 1, 4))
    kmin = np.zeros((8, 1, 4))
    kmax = np.array([0, 5, 5, 1, 5, 2, 0, 0], float)[:, None, None] * np.ones((8, 1, 4))
    sel = select_pages(q, kmin, kmax, budget=4, sink=1, local=1)
    assert sel[0].nonzero()[0].tolist() == [0, 1, 2, 7]  # sink 0, local 7, then 1 and 2 (tie with 4)
    assert select_pages(q, kmin, kmax, budget=8, sink=0, local=0).all()


# ---- the kernel (interpreter) ---------------------------------------------------------------------
# lens with page_size 4: last pages of length 1 (9, 1) and of length page_size (4, 8)
KERNEL_CASES = [
    ("f16", 1, 8, 2, 1, (9, 4, 1, 8)),
    ("bf16", 1, 8, 2, 3, (9, 4, 1, 8)),
    ("f16", 4, 8, 2, 2, (9, 4, 1, 8)),
    ("bf16", 4, 2, 2, 4, (13, 3, 8, 5)),
]


@pytest.mark.interp
@pytest.mark.parametrize("dtype,sq,hq,hkv,splits,lens", KERNEL_CASES)
def test_decode_kernel(dtype, sq, hq, hkv, splits, lens):
    g, ins, _ = make_case(11 * sq + splits, b=len(lens), hq=hq, hkv=hkv, sq=sq, lens=lens, dtype=dtype)
    check(g, ins, dtype, splits, lens)


@pytest.mark.interp
def test_decode_empty_sequence_and_wide_blocks():
    lens = (0, 7, 16)
    g, ins, _ = make_case(3, b=3, sq=2, ps=8, d=64, lens=lens)
    got = run_kernel(g, ins, splits=2, block_n=32)
    ref = evaluate(g, ins)
    assert_close(got["out"], ref["out"], "f16", "out")
    assert_close(got["lse"], ref["lse"], "f32", "lse")
    assert (got["out"][0] == 0).all() and np.isneginf(got["lse"][0]).all()


@pytest.mark.interp
@pytest.mark.parametrize("dtype,bits,recent,splits", [("f16", 8, 3, 1), ("bf16", 4, 5, 2), ("f16", 4, 0, 3)])
def test_decode_quantized_kv(dtype, bits, recent, splits):
    lens = (9, 4, 1, 8)
    g, ins, _ = make_case(bits + recent, b=4, lens=lens, dtype=dtype, bits=bits, recent=recent)
    check(g, ins, dtype, splits, lens, bits=bits, group=16, recent=recent)


@pytest.mark.interp
@pytest.mark.parametrize("splits,sq,d,lens", [(1, 1, 32, (29, 6, 17)), (2, 1, 32, (29, 6, 17)),
                                               (3, 2, 32, (29, 6, 17)), (2, 1, 128, (70, 9, 17))])
def test_decode_page_selection(splits, sq, d, lens):
    # 8, 2 and 5 pages of 4 tokens; with d=128 the 18 pages of sequence 0 take two scoring blocks
    g, ins, _ = make_case(5 + splits, b=3, hq=4, hkv=2, sq=sq, d=d, lens=lens, budget=4, sink=1, local=1,
                          dup=True, selection=True)
    got = run_kernel(g, ins, splits)
    ref = evaluate(g, ins)
    assert (got["sel"] == ref["sel"]).all(), (got["sel"], ref["sel"])
    assert_close(got["out"], ref["out"], "f16", "out")
    assert_close(got["lse"], ref["lse"], "f32", "lse")
    # per sequence: budget pages (or all), sink and local pages always in
    ip = ins["ip"]
    for bi in range(3):
        sel = got["sel"][:, ip[bi]:ip[bi + 1]]
        assert (sel.sum(axis=1) == min(4, ip[bi + 1] - ip[bi])).all()
        assert (sel[:, 0] == 1).all() and (sel[:, -1] == 1).all()
    # the duplicated pages 0..2 of sequence 0 tie: the lower index wins (page 0 is the sink anyway)
    assert seq_lengths(ip, ins["ll"], 4).tolist() == list(lens)


@pytest.mark.interp
def test_decode_page_selection_vs_dense():
    lens = (29, 21)
    g, ins, (q, _, _) = make_case(4, b=2, hq=2, hkv=1, sq=1, lens=lens, budget=3, sink=1, local=1,
                                  lse=False, selection=True)
    ref = evaluate(g, ins)
    keep = [ref["sel"][:, ins["ip"][bi]:ins["ip"][bi + 1]].astype(bool) for bi in range(2)]
    check(g, ins, "f16", 2, lens, keep=keep)


# ---- AOT ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_decode_aot_no_spills(arch):
    g, _, _ = make_case(0, b=2, hq=32, hkv=8, sq=1, d=128, ps=16, lens=(4000, 2100), bits=4, group=32,
                        recent=16, budget=16, sink=1, local=2)
    cg = tf.compile(g, target=arch)
    (ck,) = cg.kernels
    assert ck.config.int("KV_SPLITS") > 1, ck.config  # long contexts, few programs: split-KV by default
    bins = ck.binaries[arch]
    assert set(bins) == {ck.spec.name, f"{ck.spec.name}_finish"}
    for b in bins.values():
        assert b.cubin and b.resources.registers > 0
        assert not b.resources.spills, f"{b.fn_name} spills on {arch}: {b.resources}"
    main = bins[ck.spec.name]
    assert main.resources.hmma > 0 or main.resources.hgmma > 0, "the score / PV products use tensor cores"
