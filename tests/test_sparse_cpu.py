"""CSR SpMM on target "cpu" (kernels/sparse/tvm_csr.py) against the float64 reference: nnz-balanced
parallel tasks, int32/int64 indices, empty rows, a dense row, power-law rows, odd widths."""

from __future__ import annotations

import numpy as np
import pytest
from sparse_cases import csr_case, spmm_graph, spmm_inputs

import tilefuse as tf
from tilefuse.ir.reference import evaluate
from tilefuse.schedule.config import Config

pytest.importorskip("tvm")


@pytest.mark.parametrize(("index", "kind", "n", "cfg"), [
    ("i32", "uniform", 45, None),
    ("i64", "uniform", 45, Config(tile_n=16, tasks=4)),
    ("i32", "power", 33, Config(tile_n=32, tasks=16)),
])
def test_cpu_csr_spmm_matches_reference(index, kind, n, cfg):
    m, k = 61, 47
    case = csr_case(m, k, 0.15, seed=n, kind=kind)
    g = spmm_graph(m, k, n, len(case[2]), index=index)
    configs = {"k0_sparse_spmm_add_max": cfg} if cfg else None
    cg = tf.compile(g, target="cpu", configs=configs, db=None, cost_model=None)
    ins = spmm_inputs(case, k, n, n, index)
    got = cg.run(ins, poison=True)["c"]
    want = evaluate(g, ins)["c"]
    assert np.all(np.isfinite(got)), "unwritten (poisoned) output elements"
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_cpu_more_tasks_than_rows_with_nonzeros():
    """Most tasks own no rows (nnz sits in one dense row); every row is still written once."""
    m, k, n = 9, 20, 16
    a = np.zeros((m, k))
    a[4] = np.arange(1, k + 1)
    from tilefuse.ir.sparse_op import csr_from_dense
    ip, ix, v = csr_from_dense(a)
    g = spmm_graph(m, k, n, len(ix))
    cg = tf.compile(g, target="cpu", configs={"k0_sparse_spmm_add_max": Config(tile_n=16, tasks=64)},
                    db=None, cost_model=None)
    ins = spmm_inputs((a, ip, ix, v.astype(np.float32)), k, n, 0)
    np.testing.assert_allclose(cg.run(ins, poison=True)["c"], evaluate(g, ins)["c"], rtol=1e-5, atol=1e-4)
