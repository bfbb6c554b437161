"""Edge softmax and graph attention: the `sparse_softmax` op (float64 reference against a dense masked
softmax, text form, verifier), and its kernels on interp and cpu against the reference with poisoned
outputs, empty rows, a full row, power-law rows and odd sizes:
- SDDMM -> softmax -> SpMM as one `sparse_attention` kernel (scores and probabilities never stored);
- SDDMM + softmax as one `sparse_softmax` kernel when the probabilities are an output too, the SpMM apart;
- softmax of given values, alone and fused into the SpMM; structures that differ are not fused."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import to_np
from sparse_cases import csr_case

import tilefuse as tf
from tilefuse.ir import VerifyError, parse_graph
from tilefuse.ir.reference import evaluate
from tilefuse.ir.sampling import random_inputs
from tilefuse.schedule.config import Config

RNG = np.random.default_rng(21)


def gat_graph(m, n, k, d, nnz, probs_out=False, scale=0.25, dtype="f32"):
    """out = relu(spmm(softmax_rows(scale * (q k^T) at the pattern), x) + bias), optionally also the probs."""
    g = tf.GraphBuilder("gat")
    q, kk = g.input("q", (m, k), dtype), g.input("k", (n, k), dtype)
    ip, ix = g.input("indptr", (m + 1,), "i32"), g.input("indices", (nnz,), "i32")
    pattern = tf.sparse_csr(ip, ix, g.input("pv", (nnz,), dtype), (m, n))
    scores = tf.sparse_csr(ip, ix, tf.sddmm(q, kk, pattern) * scale, (m, n))
    probs = tf.sparse_softmax(scores)
    if probs_out:
        g.output("p", probs)
    out = tf.spmm(tf.sparse_csr(ip, ix, probs, (m, n)), g.input("x", (n, d), dtype))
    g.output("c", tf.relu(out + g.input("bias", (d,), dtype)))
    return g.build()


def gat_inputs(m, n, k, d, case_seed=3, kind="uniform"):
    """A pattern with rows 0 and m // 2 empty and row 1 full (csr_case), random q, k, x, bias."""
    _, ip, ix, _ = csr_case(m, n, 0.3, seed=case_seed, kind=kind)
    f = np.float32
    return {"q": RNG.standard_normal((m, k)).astype(f), "k": RNG.standard_normal((n, k)).astype(f),
            "indptr": ip, "indices": ix, "pv": np.ones(len(ix), f), "x": RNG.standard_normal((n, d)).astype(f),
            "bias": RNG.standard_normal(d).astype(f)}


def run(g, ins, target, configs=None, outs=("c",), tol=1e-5):
    cg = tf.compile(g, target=target, configs=configs, db=None, cost_model=None)
    res = cg.run(ins, poison=True)
    want = evaluate(g, ins)
    for name in outs:
        got = np.asarray(to_np(res[name]), dtype=np.float64)
        assert np.all(np.isfinite(got)), f"unwritten (poisoned) elements in {name}"
        np.testing.assert_allclose(got, want[name], rtol=tol, atol=tol * max(1.0, float(np.abs(want[name]).max())))
    return cg


# ---- the op ------------------------------------------------------------------------------------
def test_sparse_softmax_reference_is_a_masked_dense_softmax_per_row():
    m, n = 9, 7
    dense, ip, ix, v = csr_case(m, n, 0.4, seed=1)
    g = tf.GraphBuilder("sm")
    sp = tf.sparse_csr(g.input("indptr", ip.shape, "i32"), g.input("indices", ix.shape, "i32"),
                       g.input("v", v.shape, "f32"), (m, n))
    g.output("p", tf.sparse_softmax(sp, out_dtype="f64"))
    graph = g.build()
    got = evaluate(graph, {"indptr": ip, "indices": ix, "v": v})["p"]
    keep = dense != 0
    e = np.where(keep, np.exp(dense - np.where(keep, dense, -np.inf).max(axis=1, keepdims=True, initial=-np.inf)), 0)
    with np.errstate(invalid="ignore"):
        want = (e / e.sum(axis=1, keepdims=True))[keep]  # row-major, as csr_from_dense orders the nonzeros
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(np.add.reduceat(got, ip[:-1][np.diff(ip) > 0]), 1.0)
    assert parse_graph(graph.text).key == graph.key
    assert "sparse_softmax(" in graph.text


def test_sparse_softmax_verifier():
    g = tf.GraphBuilder("bad")
    x = g.input("x", (4, 4), "f32")
    with pytest.raises(VerifyError, match="sparse_softmax: x must be a sparse tensor"):
        tf.sparse_softmax(x)
    sp = tf.sparse_csr(g.input("ip", (5,), "i32"), g.input("ix", (6,), "i32"), g.input("v", (6,), "f32"), (4, 4))
    with pytest.raises(VerifyError, match="out_dtype must be float"):
        tf.sparse_softmax(sp, out_dtype="i32")


# ---- the kernels -------------------------------------------------------------------------------
@pytest.mark.interp
@pytest.mark.parametrize(("m", "n", "k", "d", "cfg"), [
    (17, 29, 19, 45, None),
    (6, 20, 20, 17, Config(BLOCK_N=16, BLOCK_NZ=8, BLOCK_K=16, num_warps=1, num_stages=1)),  # full row > BLOCK_NZ
])
def test_graph_attention_is_one_kernel_interp(m, n, k, d, cfg):
    ins = gat_inputs(m, n, k, d)
    g = gat_graph(m, n, k, d, len(ins["indices"]))
    cg = run(g, ins, "interp", {"k0_sparse_sddmm_mul_sparse_softmax_spmm": cfg} if cfg else None)
    (kernel,) = cg.kernels
    assert kernel.spec.family == "sparse_attention"
    assert [k.name for k in kernel.spec.outputs] == ["c"]  # scores and probabilities never stored


@pytest.mark.parametrize("cfg", [None, Config(tasks=64, tile_k=4)])
def test_graph_attention_is_one_kernel_cpu(cfg):
    m, n, k, d = 41, 33, 13, 37
    ins = gat_inputs(m, n, k, d, kind="power")
    g = gat_graph(m, n, k, d, len(ins["indices"]))
    cg = run(g, ins, "cpu", {"k0_sparse_sddmm_mul_sparse_softmax_spmm": cfg} if cfg else None)
    assert [k.spec.family for k in cg.kernels] == ["sparse_attention"]


@pytest.mark.parametrize("target", [pytest.param("interp", marks=pytest.mark.interp), "cpu"])
def test_sddmm_and_softmax_one_kernel_when_the_probabilities_are_an_output(target):
    m, n, k, d = 23, 17, 9, 20
    ins = gat_inputs(m, n, k, d)
    g = gat_graph(m, n, k, d, len(ins["indices"]), probs_out=True)
    cg = run(g, ins, target, outs=("c", "p"))
    assert [k.spec.family for k in cg.kernels] == ["sparse_softmax", "spmm"]
    assert [n.op.value for n in cg.kernels[0].spec.kernel.group.nodes].count("sddmm") == 1


@pytest.mark.parametrize("target", [pytest.param("interp", marks=pytest.mark.interp), "cpu"])
def test_softmax_of_given_values_alone_and_fused_into_spmm(target):
    m, n, d = 19, 15, 11
    _, ip, ix, v = csr_case(m, n, 0.4, seed=5)
    g = tf.GraphBuilder("sm")
    ipn, ixn = g.input("indptr", ip.shape, "i32"), g.input("indices", ix.shape, "i32")
    sp = tf.sparse_csr(ipn, ixn, g.input("v", v.shape, "f32") * 2.0, (m, n))
    g.output("p", tf.exp(tf.sparse_softmax(sp)))
    sp2 = tf.sparse_csr(ipn, ixn, g.input("w", v.shape, "f32"), (m, n))
    g.output("c", tf.spmm(tf.sparse_softmax(sp2, as_sparse=True), g.input("x", (n, d), "f32")))
    graph = g.build()
    ins = {"indptr": ip, "indices": ix, "v": v, "w": RNG.standard_normal(len(v)).astype(np.float32),
           "x": RNG.standard_normal((n, d)).astype(np.float32)}
    cg = run(graph, ins, target, outs=("c", "p"))
    assert sorted(k.spec.family for k in cg.kernels) == ["sparse_attention", "sparse_softmax"]


def test_a_pattern_of_its_own_is_not_fused_into_the_softmax():
    """sddmm over pattern A, softmax over structure B: two kernels (a fused kernel walks one structure)."""
    m, n, k = 12, 10, 8
    g = tf.GraphBuilder("two")
    q, kk = g.input("q", (m, k), "f32"), g.input("k", (n, k), "f32")
    pa = tf.sparse_csr(g.input("ipa", (m + 1,), "i32"), g.input("ixa", (30,), "i32"), g.input("pv", (30,), "f32"),
                       (m, n))
    sb = tf.sparse_csr(g.input("ipb", (m + 1,), "i32"), g.input("ixb", (30,), "i32"), tf.sddmm(q, kk, pa), (m, n))
    g.output("p", tf.sparse_softmax(sb))
    graph = g.build()
    pytest.importorskip("tvm")
    cg = run(graph, random_inputs(graph, 2), "cpu", outs=("p",))
    assert [k.spec.family for k in cg.kernels] == ["sddmm", "sparse_softmax"]
