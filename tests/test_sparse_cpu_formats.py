"""BSR and 2:4 SpMM and CSR SDDMM on target "cpu" (kernels/sparse/tvm_bsr.py, tvm_24.py, tvm_sddmm.py)
against the float64 reference with poisoned outputs: empty (block) rows, a full (block) row, odd sizes,
blocks below and above the vector width, a row tile that does not divide M, f16, a bad structure
refused before the call."""

from __future__ import annotations

import numpy as np
import pytest
from sparse_cases import csr_case
from test_sparse_formats import bsr_graph, s24_graph
from test_sparse_sddmm import sddmm_graph

import tilefuse as tf
from tilefuse.ir.reference import evaluate
from tilefuse.ir.sampling import random_inputs
from tilefuse.ir.sparse_op import SparseStructureError, bsr_from_dense, prune_2to4
from tilefuse.schedule.config import Config

pytest.importorskip("tvm")
RNG = np.random.default_rng(5)


def check(g, ins, configs=None, tol=1e-5, out="c"):
    cg = tf.compile(g, target="cpu", configs=configs, db=None, cost_model=None)
    got = np.asarray(cg.run(ins, poison=True)[out], dtype=np.float64)
    want = evaluate(g, ins)[out]
    assert np.all(np.isfinite(got)), "unwritten (poisoned) output elements"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max())))
    return cg


def bsr_case(m, k, n, block):
    """Block rows 0 and 2 empty, block row 1 full, the rest half kept."""
    bm, bn = block
    keep = RNG.random((m // bm, k // bn)) < 0.5
    keep[[0, 2]] = False
    keep[1] = True
    a = np.where(np.repeat(np.repeat(keep, bm, 0), bn, 1), RNG.standard_normal((m, k)), 0.0).astype(np.float32)
    ip, ix, vals = bsr_from_dense(a, block)
    return {"indptr": ip, "indices": ix, "values": vals, "b": RNG.standard_normal((k, n)).astype(np.float32),
            "bias": RNG.standard_normal(n).astype(np.float32)}


@pytest.mark.parametrize(("block", "n", "cfg"), [((16, 16), 45, None), ((4, 8), 19, Config(tile_n=16)),
                                                 ((32, 64), 70, Config(tile_n=32)), ((1, 1), 5, None)])
def test_cpu_bsr_spmm_matches_reference(block, n, cfg):
    m, k = block[0] * 5, block[1] * 3
    ins = bsr_case(m, k, n, block)
    g = bsr_graph(m, k, n, len(ins["indices"]), block)
    cg = check(g, ins, {"k0_sparse_spmm_add_max": cfg} if cfg else None)
    assert [k.spec.family for k in cg.kernels] == ["spmm"]


def s24_inputs(m, k, n, dtype=np.float32, swap=False):
    """A 2:4-pruned A (positions in decreasing order within each group when `swap`), B and a residual."""
    _, vals, meta = prune_2to4(RNG.standard_normal((m, k)).astype(dtype))
    if swap:
        vals = vals.reshape(m, -1, 2)[..., ::-1].reshape(m, k // 2).copy()
        meta = meta.reshape(m, -1, 2)[..., ::-1].reshape(m, k // 2).copy()
    return {"values": vals, "meta": meta, "b": RNG.standard_normal((k, n)).astype(dtype),
            "res": RNG.standard_normal((m, n)).astype(dtype)}


@pytest.mark.parametrize(("m", "k", "n", "cfg"), [
    (37, 100, 45, None),  # odd M and N
    (1, 64, 33, Config(tile_m=1, tile_n=16)),  # decode-sized M
    (13, 40, 17, Config(tile_m=8, tile_n=32)),  # tile_m does not divide M, tile_n above N
])
def test_cpu_24_spmm_matches_reference(m, k, n, cfg):
    ins = s24_inputs(m, k, n, swap=m % 2 == 1)
    check(s24_graph(m, k, n), ins, {"k0_sparse_spmm_add": cfg} if cfg else None)


def test_cpu_24_f16_with_i8_meta():
    m, k, n = 20, 48, 24
    ins = s24_inputs(m, k, n, np.float16)
    ins["meta"] = ins["meta"].astype(np.int8)
    check(s24_graph(m, k, n, "f16", meta="i8"), ins, tol=2e-2)


def test_cpu_sddmm_with_epilogue_matches_reference():
    m, n, k = 37, 29, 45
    _, ip, ix, _ = csr_case(m, n, 0.3, seed=2)  # empty rows 0 and m // 2, a full row 1
    ins = {"a": RNG.standard_normal((m, k)).astype(np.float32), "b": RNG.standard_normal((n, k)).astype(np.float32),
           "indptr": ip, "indices": ix, "pv": RNG.standard_normal(len(ix)).astype(np.float32)}
    g = sddmm_graph(m, n, k, len(ix))
    for cfg in (None, Config(tile_k=16, tasks=64)):  # K=45: a partial last K step; more tasks than rows
        check(g, ins, {"k0_sparse_sddmm_mul_exp": cfg} if cfg else None)


def test_cpu_sddmm_power_law_f16_and_the_chain_into_spmm():
    g = sddmm_graph(40, 12, 20, 400, dtype="f16")
    ins = random_inputs(g, 4)
    assert np.diff(ins["indptr"]).max() > 12  # a row longer than N repeats columns
    check(g, ins, tol=2e-2)
    chain = sddmm_graph(30, 24, 16, 150, chain=True)
    cg = check(chain, random_inputs(chain, 1))
    assert [k.spec.family for k in cg.kernels] == ["sddmm", "spmm"]


def test_cpu_bad_structures_refused_before_the_call():
    g = s24_graph(4, 16, 8)
    ins = s24_inputs(4, 16, 8)
    ins["meta"][2, 3] = ins["meta"][2, 2]
    cg = tf.compile(g, target="cpu", db=None, cost_model=None)
    with pytest.raises(SparseStructureError, match=r"row 2 group 1 names column \d twice"):
        cg.run(ins)
    g = sddmm_graph(6, 5, 16, 4)
    ins = random_inputs(g, 0)
    ins["indptr"] = np.array([0, 1, 3, 2, 4, 4, 4], dtype=np.int32)
    with pytest.raises(SparseStructureError, match=r"indptr decreases at row 2"):
        tf.compile(g, target="cpu", db=None, cost_model=None).run(ins)
