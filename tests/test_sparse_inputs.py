"""Bad sparse structures are refused before any launch (KernelSpec.check_inputs, called by both
executors) with one SparseStructureError naming the kernel and the arrays; random inputs of sparse
graphs are valid structures, so `tilefuse run` and the tuner's kernel inputs work on them."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sparse_cases import csr_case, spmm_graph, spmm_inputs

import tilefuse as tf
from tilefuse.autotune.measure import kernel_inputs
from tilefuse.cli import main
from tilefuse.errors import TilefuseError
from tilefuse.ir.sampling import random_inputs
from tilefuse.ir.sparse_op import SparseStructureError, validate_arrays

M, K, N = 6, 5, 16


def _csr_inputs():
    a = np.zeros((M, K))
    a[1, [0, 3]] = [1.0, 2.0]
    a[4, [1, 2, 4]] = [3.0, -1.0, 0.5]
    from tilefuse.ir.sparse_op import csr_from_dense
    ip, ix, v = csr_from_dense(a)
    return spmm_inputs((a, ip, ix, v.astype(np.float32)), K, N, 0)


BAD_CSR = [  # (what changes, expected message)
    ({"indptr": [1, 1, 3, 3, 3, 5, 5]}, r"indptr must run from 0 to nnz=5, got 1..5"),
    ({"indptr": [0, 0, 2, 2, 2, 5, 4]}, r"indptr must run from 0 to nnz=5, got 0..4"),
    ({"indptr": [0, 3, 2, 2, 2, 5, 5]}, r"indptr decreases at row 1; it must be non-decreasing"),
    ({"indices": [0, 3, 1, 2, 5]}, r"column indices span 0..5, outside 0..4"),
    ({"indices": [0, -1, 1, 2, 4]}, r"column indices span -1..4, outside 0..4"),
]


class _NoLaunch:
    """A kernel runner that fails the test if anything reaches it."""

    def __call__(self, *a, **k):
        raise AssertionError("a kernel ran on a bad sparse structure")

    def __getattr__(self, name):
        raise AssertionError("a kernel ran on a bad sparse structure")


@pytest.mark.interp
@pytest.mark.parametrize(("change", "msg"), BAD_CSR)
def test_bad_csr_refused_before_any_launch_interp(change, msg):
    g = spmm_graph(M, K, N, 5)
    cg = tf.compile(g, target="interp", db=None, cost_model=None)
    cg.kernels[0].runner = _NoLaunch()
    ins = _csr_inputs()
    ins.update({k: np.array(v, dtype=np.int32) for k, v in change.items()})
    with pytest.raises(SparseStructureError, match=msg) as err:
        cg.run(ins, poison=True)
    assert isinstance(err.value, TilefuseError)
    assert re.match(r"k0_sparse_spmm\w*: sparse csr \(indptr, indices, values\): ", str(err.value))


def test_bad_csr_refused_before_the_cpu_kernel():
    pytest.importorskip("tvm")
    g = spmm_graph(M, K, N, 5, index="i64")
    cg = tf.compile(g, target="cpu", db=None, cost_model=None)
    good = _csr_inputs()
    good = {k: (v.astype(np.int64) if k in ("indptr", "indices") else v) for k, v in good.items()}
    assert np.all(np.isfinite(cg.run(good, poison=True)["c"]))
    cg.kernels[0].runner = _NoLaunch()
    bad = dict(good, indices=np.array([0, 3, 1, 2, 99], dtype=np.int64))
    with pytest.raises(SparseStructureError, match=r"column indices span 0..99, outside 0..4"):
        cg.run(bad, poison=True)


def test_2to4_meta_checks():
    meta = np.array([[0, 1, 2, 3], [1, 3, 0, 2]], dtype=np.uint8)
    validate_arrays("2:4", (2, 8), (1, 1), (None, meta))
    with pytest.raises(SparseStructureError, match=r"meta values span 0..4; accepted 0..3"):
        validate_arrays("2:4", (2, 8), (1, 1), (None, np.where(meta == 3, 4, meta)))
    with pytest.raises(SparseStructureError, match=r"meta values span -1..3"):
        validate_arrays("2:4", (2, 8), (1, 1), (None, meta.astype(np.int8) - np.int8(meta == 0)))
    twice = meta.copy()
    twice[1, 3] = 0
    with pytest.raises(SparseStructureError, match=r"row 1 group 1 names column 0 twice"):
        validate_arrays("2:4", (2, 8), (1, 1), (None, twice))


def test_bsr_block_columns_and_nnz():
    ip, ix = np.array([0, 1, 2]), np.array([0, 2])
    validate_arrays("bsr", (8, 12), (4, 4), (ip, ix))
    with pytest.raises(SparseStructureError, match=r"column indices span 0..3, outside 0..2"):
        validate_arrays("bsr", (8, 12), (4, 4), (ip, np.array([0, 3])))
    with pytest.raises(SparseStructureError, match=r"3 values for nnz=2 indices"):
        validate_arrays("csr", (2, 12), (1, 1), (ip, ix, np.zeros(3)))


@pytest.mark.parametrize("fmt", ["csr", "bsr", "2:4"])
def test_random_inputs_are_valid_power_law_structures(fmt):
    m, k = 4000, 64
    g = tf.GraphBuilder("s")
    if fmt == "2:4":
        sp = tf.sparse_24(g.input("values", (m, k // 2), "f32"), g.input("meta", (m, k // 2), "u8"))
    else:
        block, rows, nnz = ((4, 4), m // 4, 3000) if fmt == "bsr" else ((1, 1), m, 12000)
        ip, ix = g.input("indptr", (rows + 1,), "i32"), g.input("indices", (nnz,), "i32")
        vals = g.input("values", (nnz, *block) if fmt == "bsr" else (nnz,), "f32")
        sp = tf.sparse_bsr(ip, ix, vals, (m, k), block) if fmt == "bsr" else tf.sparse_csr(ip, ix, vals, (m, k))
    g.output("c", tf.spmm(sp, g.input("b", (k, 8), "f32")))
    graph = g.build()
    ins = random_inputs(graph, 7)
    from tilefuse.ir.reference import evaluate
    evaluate(graph, ins)  # validates the structure
    if fmt != "2:4":
        lengths = np.diff(ins["indptr"])
        assert (lengths == 0).sum() > 0 and lengths.max() > 10 * max(1.0, np.median(lengths))  # heavy tail


def test_kernel_inputs_for_tuning_are_valid_structures():
    from tilefuse.kernels import fusion_rules, spec_for
    from tilefuse.passes import run_pipeline

    g = spmm_graph(300, 40, 16, 900)
    kg = run_pipeline(g, fusion_rules()).kernels
    spec = spec_for(kg, kg.kernels[0], "triton")
    spec.check_inputs(kernel_inputs(spec, 3))
    bad = kernel_inputs(spec, 3)
    bad[1][0] = 40
    with pytest.raises(SparseStructureError):
        spec.check_inputs(bad)


SPARSE_TF = """graph sp(N=20, NNZ=200) {
  %indptr = input i32[51]
  %indices = input i32[NNZ]
  %values = input f32[NNZ]
  %b = input f32[30, N]
  %a = sparse(%indptr, %indices, %values) {format="csr", shape=[50, 30]}
  %c = spmm(%a, %b)
  output c = %c
}
"""


@pytest.mark.interp
def test_cli_run_on_a_sparse_graph(tmp_path, capsys):
    path = tmp_path / "sp.tf"
    path.write_text(SPARSE_TF)
    assert main(["run", str(path), "--target", "interp"]) == 0
    assert "c: max |err| vs reference" in capsys.readouterr().out


def test_csr_case_inputs_still_pass_the_check():
    case = csr_case(40, 30, 0.2, seed=1)
    g = spmm_graph(40, 30, 16, len(case[2]))
    from tilefuse.kernels import fusion_rules, spec_for
    from tilefuse.passes import run_pipeline
    kg = run_pipeline(g, fusion_rules()).kernels
    spec = spec_for(kg, kg.kernels[0], "triton")
    ins = spmm_inputs(case, 30, 16, 1)
    spec.check_inputs([ins[b.name] for b in spec.inputs])


@pytest.mark.interp
def test_gcn_example_runs_on_interp(capsys):
    assert main(["run", "examples/gcn_layer.tf", "--target", "interp", "--set", "E=1500", "--set", "F=16",
                 "--set", "H=16"]) == 0
    assert "y: max |err| vs reference" in capsys.readouterr().out


def test_gcn_example_runs_on_cpu(capsys):
    pytest.importorskip("tvm")
    assert main(["run", "examples/gcn_layer.tf", "--target", "cpu", "--set", "E=1500", "--set", "F=16",
                 "--set", "H=16"]) == 0
    out = capsys.readouterr().out
    assert "y: max |err| vs reference" in out
