"""Pattern-aware compilation of constant sparse operands (sparse_plan.py, kernels/sparse/pattern.py):
the analysis (density, row-length quantiles, block fill, 2:4 conformance), the format ranked per pattern
(a very sparse matrix stays CSR, a block-clustered one runs as BSR, a nearly dense one as a dense matmul),
results against the reference with the constants bound at run time, the report, the pattern's
statistics in the cost features and the workload key, and bad constants refused at compile time."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.ir.reference import evaluate
from tilefuse.ir.sparse_op import SparseStructureError, csr_from_dense
from tilefuse.kernels.sparse.pattern import analyze
from tilefuse.sparse_plan import ConstantInputError

RNG = np.random.default_rng(13)
M, K, T = 128, 256, 6


def linear(nnz):
    g = tf.GraphBuilder("pruned")
    w = tf.sparse_csr(g.input("ip", (M + 1,), "i32"), g.input("ix", (nnz,), "i32"), g.input("wv", (nnz,), "f32"),
                      (M, K))
    g.output("y", tf.relu(tf.sparse_linear(g.input("x", (T, K), "f32"), w) + g.input("bias", (M,), "f32")))
    return g.build()


def matrix(kind):
    a = RNG.standard_normal((M, K)).astype(np.float32)
    if kind == "sparse":
        a[RNG.random((M, K)) < 0.98] = 0.0
        a[3] = 0.0
    elif kind == "dense":
        a[RNG.random((M, K)) < 0.02] = 0.0
    else:  # 32x32 blocks, a sixth of them kept, each full
        keep = np.repeat(np.repeat(RNG.random((M // 32, K // 32)) < 0.17, 32, 0), 32, 1)
        a = np.where(keep, a, 0.0).astype(np.float32)
    return a


def test_analysis_of_a_known_pattern():
    a = np.zeros((64, 64))
    a[0:16, 0:16] = 1.0  # one full 16-block: 256 nonzeros, every other row empty
    a[40, ::4] = 2.0  # one row of 16, one nonzero per group of four
    s = analyze(a)
    assert (s.nnz, s.empty_rows, s.row_quantiles[3]) == (272, 47, 16.0)
    # the row of 16 touches four 16-blocks and two 32-blocks; 64 is the whole matrix: no blocks
    assert dict(s.block_fill) == {16: 272 / (5 * 256), 32: 272 / (3 * 1024)}
    assert s.conform_24 == pytest.approx(1 - 16 * 4 / (64 * 16))  # the full block's 16 x 4 groups hold four
    assert s.formats() == ["csr", "bsr16", "bsr32", "dense"]
    assert "density 6.6%" in s.summary() and "2:4 conformance 94%" in s.summary()


@pytest.mark.parametrize(("kind", "family", "fmt"), [("sparse", "spmm", "csr"), ("block", "spmm", "bsr32"),
                                                      ("dense", "matmul", "dense")])
def test_format_chosen_from_the_pattern_and_results_match(kind, family, fmt):
    pytest.importorskip("tvm")
    a = matrix(kind)
    ip, ix, v = csr_from_dense(a)
    g = linear(len(ix))
    consts = {"ip": ip, "ix": ix, "wv": v}
    cg = tf.compile(g, target="cpu", db=None, cost_model=None, constants=consts)
    assert [k.spec.family for k in cg.kernels] == [family]
    (decision,) = cg.patterns
    assert decision.scores[0][0] == fmt and decision.ranked_by == "roofline"
    x = {"x": RNG.standard_normal((T, K)).astype(np.float32), "bias": RNG.standard_normal(M).astype(np.float32)}
    got = cg.run(x, poison=True)["y"]  # the constants are bound by the compiled graph
    want = evaluate(g, {**consts, **x})["y"]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    np.testing.assert_allclose(cg(x["x"], x["bias"]), want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    report = cg.report()
    assert "constant sparse wv:" in report and f"format {fmt} (ranked by roofline" in report


@pytest.mark.interp
def test_constant_pattern_on_the_interpreter():
    a = matrix("block")
    ip, ix, v = csr_from_dense(a)
    g = linear(len(ix))
    consts = {"ip": ip, "ix": ix, "wv": v}
    cg = tf.compile(g, target="interp", db=None, cost_model=None, constants=consts)
    x = {"x": RNG.standard_normal((T, K)).astype(np.float32), "bias": RNG.standard_normal(M).astype(np.float32)}
    got = cg.run(x, poison=True)["y"].numpy()
    np.testing.assert_allclose(got, evaluate(g, {**consts, **x})["y"], rtol=1e-5, atol=1e-4)


def test_pattern_statistics_are_cost_features_and_part_of_the_key():
    pytest.importorskip("tvm")
    a = matrix("sparse")
    ip, ix, v = csr_from_dense(a)
    g = linear(len(ix))
    planned = tf.compile(g, target="cpu", db=None, cost_model=None, constants={"ip": ip, "ix": ix, "wv": v})
    plain = tf.compile(g, target="cpu", db=None, cost_model=None)
    spec, config = planned.kernels[0].spec, planned.kernels[0].config
    feats = spec.family_features(config)
    assert feats["pattern_known"] == 1.0 and feats["pattern_row_max"] == float((a != 0).sum(axis=1).max())
    assert feats["pattern_empty_rows"] >= 1 and plain.kernels[0].spec.family_features(config)["pattern_known"] == 0
    assert spec.key != plain.kernels[0].spec.key


def test_bad_constants_are_refused_at_compile_time():
    a = matrix("sparse")
    ip, ix, v = csr_from_dense(a)
    g = linear(len(ix))
    with pytest.raises(ConstantInputError, match=r"constant 'w' names no input of graph pruned"):
        tf.compile(g, target="interp", constants={"w": v})
    with pytest.raises(ConstantInputError, match=r"constant 'wv' has shape \[3\], input wv is f32\["):
        tf.compile(g, target="interp", constants={"ip": ip, "ix": ix, "wv": v[:3]})
    bad = ix.copy()
    bad[5] = K + 3
    with pytest.raises(SparseStructureError, match=r"constant sparse wv: column indices span .*outside 0..255"):
        tf.compile(g, target="interp", constants={"ip": ip, "ix": bad, "wv": v})
