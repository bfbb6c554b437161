"""SDDMM (kernels/sparse/sddmm.py) under the interpreter against the float64 reference with poisoned
outputs: the pattern's constructor and a pointwise epilogue in one kernel, empty rows, rows longer than
BLOCK_NZ, repeated columns, K not a multiple of BLOCK_K, f16; a bad pattern refused before the launch;
SDDMM feeding an SpMM (the graph-attention chain, two kernels)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import to_np
from sparse_cases import csr_case

import tilefuse as tf
from tilefuse.ir.reference import evaluate
from tilefuse.ir.sampling import random_inputs
from tilefuse.ir.sparse_op import SparseStructureError
from tilefuse.schedule.config import Config


def sddmm_graph(m, n, k, nnz, dtype="f32", chain=False):
    g = tf.GraphBuilder("sddmm")
    a, b = g.input("a", (m, k), dtype), g.input("b", (n, k), dtype)
    pattern = tf.sparse_csr(g.input("indptr", (m + 1,), "i32"), g.input("indices", (nnz,), "i32"),
                            g.input("pv", (nnz,), dtype), (m, n))
    if chain:  # scores at the edges, then aggregate the neighbours' features with them
        scores = tf.sddmm(a, b, pattern, as_sparse=True)
        g.output("c", tf.spmm(scores, g.input("x", (n, 8), dtype)))
    else:
        g.output("c", tf.exp(tf.sddmm(a, b, pattern) * 0.125))
    return g.build()


def run(g, ins, config=None, tol=1e-5):
    cg = tf.compile(g, target="interp", configs=config, db=None, cost_model=None)
    got = to_np(cg.run(ins, poison=True)["c"])
    want = evaluate(g, ins)["c"]
    assert np.all(np.isfinite(got)), "unwritten (poisoned) output elements"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max())))
    return cg


@pytest.mark.interp
def test_sddmm_with_epilogue_is_one_kernel_and_matches():
    m, n, k = 37, 29, 45
    _, ip, ix, _ = csr_case(m, n, 0.3, seed=2)  # empty rows 0 and m // 2, a full row 1
    rng = np.random.default_rng(2)
    ins = {"a": rng.standard_normal((m, k)).astype(np.float32), "b": rng.standard_normal((n, k)).astype(np.float32),
           "indptr": ip, "indices": ix, "pv": rng.standard_normal(len(ix)).astype(np.float32)}
    g = sddmm_graph(m, n, k, len(ix))
    cg = run(g, ins, {"k0_sparse_sddmm_mul_exp": Config(BLOCK_NZ=4, BLOCK_K=16, num_warps=1, num_stages=1)})
    (kernel,) = cg.kernels
    assert kernel.spec.family == "sddmm" and [n.op.value for n in kernel.spec.kernel.group.prologue] == ["sparse"]
    assert kernel.config["BLOCK_NZ"] == 4  # the tuned config was used: row 1 takes several BLOCK_NZ steps


@pytest.mark.interp
def test_sddmm_power_law_pattern_with_repeated_columns_f16():
    g = sddmm_graph(40, 12, 20, 400, dtype="f16")
    ins = random_inputs(g, 4)
    assert np.diff(ins["indptr"]).max() > 12  # a row longer than N repeats columns
    run(g, ins, tol=2e-2)


@pytest.mark.interp
def test_sddmm_bad_pattern_refused_before_the_launch():
    g = sddmm_graph(6, 5, 16, 4)
    cg = tf.compile(g, target="interp", db=None, cost_model=None)
    ins = random_inputs(g, 0)
    ins["indices"] = np.array([0, 1, 5, 2], dtype=np.int32)
    cg.kernels[0].runner = None
    with pytest.raises(SparseStructureError, match=r"k0_sparse_sddmm\w*: sparse csr .* span 0..5, outside 0..4"):
        cg.run(ins, poison=True)


@pytest.mark.interp
def test_sddmm_feeding_spmm():
    g = sddmm_graph(30, 24, 16, 150, chain=True)
    cg = run(g, random_inputs(g, 1))
    assert [k.spec.family for k in cg.kernels] == ["sddmm", "spmm"]
