"""AOT builds of every sparse kernel's default (no GPU needed): spill-free on sm_80 and sm_90, and the
BSR and 2:4 f16 kernels issue tensor-core MMAs (one tl.dot per block; the 2:4 tile decompressed for
tl.dot). The quick test builds the fused graph-attention kernel for sm_90 so CI exercises the path;
`pytest -m slow` builds every case for both archs, including the CSR row-binning launches."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

import tilefuse as tf  # noqa: E402
from tilefuse.compiler import compile_graph  # noqa: E402


def csr(m, k, n, nnz, dt="f32"):
    g = tf.GraphBuilder("aot_csr")
    a = tf.sparse_csr(g.input("ip", (m + 1,), "i32"), g.input("ix", (nnz,), "i32"), g.input("v", (nnz,), dt), (m, k))
    g.output("y", tf.relu(tf.spmm(a, g.input("b", (k, n), dt)) + g.input("bias", (n,), dt)))
    return g.build()


def bsr(block, m=4096, k=4096, n=128):
    g = tf.GraphBuilder("aot_bsr")
    nnzb = (m // block) * 8
    a = tf.sparse_bsr(g.input("ip", (m // block + 1,), "i32"), g.input("ix", (nnzb,), "i32"),
                      g.input("v", (nnzb, block, block), "f16"), (m, k), (block, block))
    g.output("y", tf.spmm(a, g.input("b", (k, n), "f16")))
    return g.build()


def s24(tokens, d_in=4096, d_out=4096):
    g = tf.GraphBuilder("aot_24")
    w = tf.sparse_24(g.input("v", (d_out, d_in // 2), "f16"), g.input("meta", (d_out, d_in // 2), "u8"))
    g.output("y", tf.sparse_linear(g.input("x", (tokens, d_in), "f16"), w) + g.input("bias", (d_out,), "f16"))
    return g.build()


def attention(probs=False, m=16384, d=64, nnz=400000):
    g = tf.GraphBuilder("aot_gat")
    ip, ix = g.input("ip", (m + 1,), "i32"), g.input("ix", (nnz,), "i32")
    pat = tf.sparse_csr(ip, ix, g.input("v", (nnz,), "f32"), (m, m))
    s = tf.sparse_csr(ip, ix, tf.sddmm(g.input("q", (m, d), "f32"), g.input("k", (m, d), "f32"), pat) * 0.125, (m, m))
    p = tf.sparse_softmax(s)
    if probs:
        g.output("p", p)
    g.output("y", tf.spmm(tf.sparse_csr(ip, ix, p, (m, m)), g.input("x", (m, d), "f32")))
    return g.build()


def sddmm(m=8192, d=64, nnz=200000):
    g = tf.GraphBuilder("aot_sddmm")
    pat = tf.sparse_csr(g.input("ip", (m + 1,), "i32"), g.input("ix", (nnz,), "i32"), g.input("v", (nnz,), "f32"),
                        (m, m))
    g.output("s", tf.sddmm(g.input("a", (m, d), "f32"), g.input("b", (m, d), "f32"), pat))
    return g.build()


CASES = {
    "csr_f32_n128": lambda: csr(20000, 4096, 128, 400000),
    "csr_f16_n512": lambda: csr(8192, 8192, 512, 200000, "f16"),
    "csr_f32_n16": lambda: csr(8192, 8192, 16, 200000),
    "bsr16": lambda: bsr(16), "bsr32": lambda: bsr(32), "bsr64": lambda: bsr(64),
    "24_decode": lambda: s24(1), "24_m16": lambda: s24(16), "24_prefill": lambda: s24(4096),
    "sddmm": sddmm, "sparse_softmax": lambda: attention(probs=True), "sparse_attention": attention,
}
MMA = ("bsr16", "bsr32", "bsr64", "24_m16", "24_prefill")  # f16 tiles of at least 16 rows: tensor cores


def assert_default_builds(name: str, arch: str) -> list[str]:
    """Every binary of the case's kernels builds for `arch` without spills; the MMA cases issue HMMA/HGMMA.
    Returns the kernels' families."""
    cg = compile_graph(CASES[name](), arch, db=None, cost_model=None)
    for ck in cg.kernels:
        for fn, b in ck.binaries[arch].items():
            r = b.resources
            assert not r.spills, f"{name}: {fn} spills on {arch} under {ck.config}: {r}"
            if name in MMA and fn == ck.spec.name:
                assert r.hmma + r.hgmma > 0, f"{name} on {arch} under {ck.config}: no tensor-core MMA ({r})"
    return [ck.spec.family for ck in cg.kernels]


def test_fused_graph_attention_default_builds_for_sm_90_without_spills() -> None:
    assert assert_default_builds("sparse_attention", "sm_90") == ["sparse_attention"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_sparse_default_builds_without_spills(name: str, arch: str) -> None:
    assert_default_builds(name, arch)
