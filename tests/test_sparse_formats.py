"""BSR (one tl.dot per stored block) and 2:4 (decompressed in registers, then tl.dot) SpMM under the
Triton interpreter against the float64 reference: poisoned outputs, empty block rows, blocks 16/32/64
and a block padded to tl.dot's tile, odd M and N, K not a multiple of BLOCK_K, f16 and f32, fused
epilogues, and the transposed LLM use x @ W^T."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import to_np

import tilefuse as tf
from tilefuse.ir.reference import evaluate
from tilefuse.ir.sparse_op import bsr_from_dense, prune_2to4
from tilefuse.schedule.config import Config

RNG = np.random.default_rng(11)


def bsr_graph(m, k, n, nnzb, block, dtype="f32"):
    g = tf.GraphBuilder("bsr")
    ip = g.input("indptr", (m // block[0] + 1,), "i32")
    ix = g.input("indices", (nnzb,), "i32")
    v = g.input("values", (nnzb, *block), dtype)
    c = tf.spmm(tf.sparse_bsr(ip, ix, v, (m, k), block), g.input("b", (k, n), dtype))
    g.output("c", tf.relu(c + g.input("bias", (n,), dtype)))
    return g.build()


def s24_graph(m, k, n, dtype="f32", meta="u8"):
    g = tf.GraphBuilder("s24")
    sp = tf.sparse_24(g.input("values", (m, k // 2), dtype), g.input("meta", (m, k // 2), meta))
    g.output("c", tf.spmm(sp, g.input("b", (k, n), dtype)) + g.input("res", (m, n), dtype))
    return g.build()


def check(g, ins, config=None, tol=1e-5):
    # the one spmm kernel's name depends on its epilogue (bsr: add+max, 2:4: add)
    cfgs = {"k0_sparse_spmm_add_max" if g.name == "bsr" else "k0_sparse_spmm_add": config} if config else None
    cg = tf.compile(g, target="interp", configs=cfgs, db=None, cost_model=None)
    got = to_np(cg.run(ins, poison=True)["c"])
    want = evaluate(g, ins)["c"]
    assert np.all(np.isfinite(got)), "unwritten (poisoned) output elements"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max())))
    return cg


def bsr_inputs(m, k, n, block, empty_rows, dtype=np.float32):
    bm, bn = block
    keep = RNG.random((m // bm, k // bn)) < 0.5
    keep[list(empty_rows)] = False
    a = np.where(np.repeat(np.repeat(keep, bm, 0), bn, 1), RNG.standard_normal((m, k)), 0.0).astype(dtype)
    ip, ix, vals = bsr_from_dense(a, block)
    return {"indptr": ip, "indices": ix, "values": vals, "b": RNG.standard_normal((k, n)).astype(dtype),
            "bias": RNG.standard_normal(n).astype(dtype)}


@pytest.mark.interp
@pytest.mark.parametrize(("block", "n"), [((16, 16), 45), ((32, 32), 33), ((64, 64), 20), ((16, 64), 17),
                                          ((4, 8), 19)])
def test_bsr_spmm_matches_reference(block, n):
    m, k = block[0] * 5, block[1] * 3
    ins = bsr_inputs(m, k, n, block, empty_rows=(0, 3))
    g = bsr_graph(m, k, n, len(ins["indices"]), block)
    cg = check(g, ins)
    src = cg.kernels[0].source
    assert src.count("tl.dot(") == 1 and 'input_precision="ieee"' in src


@pytest.mark.interp
def test_bsr_spmm_f16_on_tensor_cores_and_a_tuned_config():
    block, m, k, n = (32, 16), 96, 64, 40
    ins = bsr_inputs(m, k, n, block, empty_rows=(1,), dtype=np.float16)
    g = bsr_graph(m, k, n, len(ins["indices"]), block, "f16")
    cg = check(g, ins, Config(BLOCK_N=16, num_warps=2, num_stages=1), tol=2e-2)
    assert "input_precision" not in cg.kernels[0].source  # f16 x f16 goes to the tensor cores as is
    spec = cg.kernels[0].spec
    assert spec.grid(Config(BLOCK_N=16, num_warps=2, num_stages=1)) == (3, 3, 1)
    assert spec.flops() == 2 * len(ins["indices"]) * 32 * 16 * n


def s24_inputs(m, k, n, dtype=np.float32, swap=False):
    x = RNG.standard_normal((m, k)).astype(dtype)
    _, vals, meta = prune_2to4(x)
    if swap:  # positions in decreasing order within a group are as valid as increasing ones
        vals = vals.reshape(m, -1, 2)[..., ::-1].reshape(m, k // 2).copy()
        meta = meta.reshape(m, -1, 2)[..., ::-1].reshape(m, k // 2).copy()
    return {"values": vals, "meta": meta, "b": RNG.standard_normal((k, n)).astype(dtype),
            "res": RNG.standard_normal((m, n)).astype(dtype)}


@pytest.mark.interp
@pytest.mark.parametrize(("m", "k", "n", "swap", "cfg"), [
    (37, 100, 45, False, None),  # K=100: the last BLOCK_K step is partial
    (1, 64, 33, True, None),  # decode-sized M
    (50, 40, 17, False, Config(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, num_warps=1, num_stages=1)),
])
def test_24_spmm_matches_reference(m, k, n, swap, cfg):
    check(s24_graph(m, k, n), s24_inputs(m, k, n, swap=swap), cfg)


@pytest.mark.interp
def test_24_spmm_f16_with_i8_meta():
    m, k, n = 20, 48, 24
    ins = s24_inputs(m, k, n, np.float16)
    ins["meta"] = ins["meta"].astype(np.int8)
    cg = check(s24_graph(m, k, n, "f16", meta="i8"), ins, tol=2e-2)
    src = cg.kernels[0].source
    assert "tl.where(" in src and src.count("tl.dot(") == 1


@pytest.mark.interp
def test_transposed_llm_use_x_times_sparse_w_transposed():
    """y = x @ W^T with W [out, in] 2:4-sparse, x [tokens, in]: spmm(W, x^T)^T in the IR."""
    tokens, d_in, d_out = 5, 64, 48
    g = tf.GraphBuilder("linear24")
    x = g.input("x", (tokens, d_in), "f32")
    w = tf.sparse_24(g.input("values", (d_out, d_in // 2), "f32"), g.input("meta", (d_out, d_in // 2), "u8"))
    g.output("y", tf.permute(tf.spmm(w, tf.permute(x, (1, 0))), (1, 0)))
    graph = g.build()
    ins = s24_inputs(d_out, d_in, 1)
    ins = {"values": ins["values"], "meta": ins["meta"], "x": RNG.standard_normal((tokens, d_in)).astype(np.float32)}
    cg = tf.compile(graph, target="interp", db=None, cost_model=None)
    got = to_np(cg.run(ins, poison=True)["y"])
    np.testing.assert_allclose(got, evaluate(graph, ins)["y"], rtol=1e-5, atol=1e-5)
    assert got.shape == (tokens, d_out)
