"""Sparse tensors: sparse/spmm/sddmm inference, round trip, reference vs dense computations."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.ir import Op, VerifyError, make, parse_graph
from tilefuse.ir.reference import ReferenceEvalError, evaluate
from tilefuse.ir.sparse_op import bsr_from_dense, csr_from_dense, prune_2to4

_RNG = np.random.default_rng(77)


class _F32Data:
    """Random data exactly representable in f32 (the inputs' dtype: the reference rounds inputs
    to it), so comparisons with float64 numpy stay exact."""

    def __init__(self, rng):
        self.rng = rng

    def standard_normal(self, shape):
        return self.rng.standard_normal(shape).astype(np.float32).astype(np.float64)

    def __getattr__(self, name):
        return getattr(self.rng, name)


RNG = _F32Data(_RNG)


def sparse_dense(m, k, density):
    x = RNG.standard_normal((m, k)).astype(np.float32).astype(np.float64)
    return np.where(RNG.random((m, k)) < density, x, 0.0)


def roundtrip(g):
    assert parse_graph(g.text).key == g.key


def csr_graph(m, k, n, nnz, fmt="csr", block=None, out_dtype=None):
    g = tf.GraphBuilder("sp")
    if fmt == "2:4":
        vals = g.input("values", (m, k // 2), "f32")
        meta = g.input("meta", (m, k // 2), "u8")
        a = tf.sparse_24(vals, meta)
    else:
        rows = m if fmt == "csr" else m // block[0]
        indptr = g.input("indptr", (rows + 1,), "i32")
        indices = g.input("indices", (nnz,), "i32")
        vshape = (nnz,) if fmt == "csr" else (nnz, *block)
        vals = g.input("values", vshape, "f32")
        if fmt == "csr":
            a = tf.sparse_csr(indptr, indices, vals, (m, k))
        else:
            a = tf.sparse_bsr(indptr, indices, vals, (m, k), block)
    b = g.input("b", (k, n), "f32")
    g.output("c", tf.spmm(a, b, out_dtype=out_dtype))
    return g.build()


def test_csr_spmm_vs_dense():
    m, k, n = 13, 17, 5
    a = sparse_dense(m, k, 0.3)
    b = RNG.standard_normal((k, n)).astype(np.float32).astype(np.float64)
    indptr, indices, values = csr_from_dense(a)
    g = csr_graph(m, k, n, len(indices))
    c = g.output("c")
    assert (c.dtype.name, c.shape) == ("f32", (m, n))
    sp = c.src[0]
    assert (sp.op, sp.dtype.name, sp.shape) == (Op.SPARSE, "f32", (m, k))
    roundtrip(g)
    got = evaluate(g, {"indptr": indptr, "indices": indices, "values": values, "b": b})["c"]
    np.testing.assert_allclose(got, a @ b, rtol=1e-6, atol=1e-6)
    scipy_sparse = pytest.importorskip("scipy.sparse")
    ref = scipy_sparse.csr_matrix((values, indices, indptr), shape=(m, k)) @ b
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_csr_unsorted_duplicates_and_empty_rows():
    # Row 0 empty; row 1 has a duplicate column (summed, as scipy does); row 2 unsorted.
    indptr = np.array([0, 0, 3, 5], dtype=np.int32)
    indices = np.array([2, 0, 2, 3, 1], dtype=np.int32)
    values = RNG.standard_normal(5)
    b = RNG.standard_normal((4, 3))
    dense = np.zeros((3, 4))
    for r in range(3):
        for p in range(indptr[r], indptr[r + 1]):
            dense[r, indices[p]] += values[p]
    g = csr_graph(3, 4, 3, 5, out_dtype="f64")
    got = evaluate(g, {"indptr": indptr, "indices": indices, "values": values, "b": b})["c"]
    np.testing.assert_allclose(got, dense @ b, rtol=1e-12)


def test_csr_reference_validation():
    g = csr_graph(3, 4, 2, 3)
    b = RNG.standard_normal((4, 2))
    vals = RNG.standard_normal(3)
    with pytest.raises(ReferenceEvalError, match=r"indptr decreases at row 1"):
        evaluate(g, {"indptr": np.array([0, 2, 1, 3]), "indices": np.array([0, 1, 2]), "values": vals, "b": b})
    with pytest.raises(ReferenceEvalError, match=r"column indices span 0..4, outside 0..3"):
        evaluate(g, {"indptr": np.array([0, 1, 2, 3]), "indices": np.array([0, 4, 2]), "values": vals, "b": b})
    with pytest.raises(ReferenceEvalError, match=r"indptr must run from 0 to nnz=3"):
        evaluate(g, {"indptr": np.array([0, 1, 2, 2]), "indices": np.array([0, 1, 2]), "values": vals, "b": b})


def test_bsr_spmm_vs_dense():
    m, k, n, block = 16, 24, 6, (4, 8)
    mask = np.repeat(np.repeat(RNG.random((4, 3)) < 0.5, 4, 0), 8, 1)
    a = np.where(mask, RNG.standard_normal((m, k)), 0.0)
    indptr, indices, values = bsr_from_dense(a, block)
    b = RNG.standard_normal((k, n))
    g = csr_graph(m, k, n, len(indices), fmt="bsr", block=block, out_dtype="f64")
    roundtrip(g)
    got = evaluate(g, {"indptr": indptr, "indices": indices, "values": values, "b": b})["c"]
    np.testing.assert_allclose(got, a @ b, rtol=1e-12, atol=1e-12)


def test_24_spmm_vs_dense():
    m, k, n = 8, 16, 4
    x = RNG.standard_normal((m, k)).astype(np.float32).astype(np.float64)
    pruned, vals, meta = prune_2to4(x)
    assert np.all((pruned.reshape(m, k // 4, 4) != 0).sum(-1) == 2)
    b = RNG.standard_normal((k, n))
    g = csr_graph(m, k, n, 0, fmt="2:4", out_dtype="f64")
    roundtrip(g)
    got = evaluate(g, {"values": vals, "meta": meta, "b": b})["c"]
    np.testing.assert_allclose(got, pruned @ b, rtol=1e-12, atol=1e-12)
    bad = meta.copy()
    bad[1, 2] = bad[1, 3]
    with pytest.raises(ReferenceEvalError, match=r"row 1 group 1 names column"):
        evaluate(g, {"values": vals, "meta": bad, "b": b})


@pytest.mark.parametrize("fmt", ["csr", "bsr"])
def test_sddmm_vs_masked_dense(fmt):
    m, n, k = 12, 16, 5
    pattern = np.repeat(np.repeat(RNG.random((3, 4)) < 0.5, 4, 0), 4, 1) if fmt == "bsr" else RNG.random((m, n)) < 0.3
    a, b = RNG.standard_normal((m, k)), RNG.standard_normal((n, k))
    arrays = csr_from_dense(pattern.astype(float)) if fmt == "csr" else bsr_from_dense(pattern.astype(float), (4, 4))
    g = tf.GraphBuilder("sd")
    ta, tb = g.input("a", (m, k), "f64"), g.input("b", (n, k), "f64")
    ip, ix = g.input("indptr", arrays[0].shape, "i32"), g.input("indices", arrays[1].shape, "i32")
    pv = g.input("pv", arrays[2].shape, "f64")
    pat = tf.sparse_csr(ip, ix, pv, (m, n)) if fmt == "csr" else tf.sparse_bsr(ip, ix, pv, (m, n), (4, 4))
    vals = tf.sddmm(ta, tb, pat)
    assert vals.shape == arrays[2].shape and vals.dtype.name == "f64"
    sp = tf.sddmm(ta, tb, pat, as_sparse=True)
    g.output("vals", vals)
    g.output("dense", tf.spmm(sp, g.input("eye", (n, n), "f64")))
    gr = g.build()
    roundtrip(gr)
    out = evaluate(gr, {"a": a, "b": b, "indptr": arrays[0], "indices": arrays[1], "pv": arrays[2],
                        "eye": np.eye(n)})
    want = np.where(pattern, a @ b.T, 0.0)
    np.testing.assert_allclose(out["dense"], want, rtol=1e-12, atol=1e-12)
    if fmt == "csr":
        np.testing.assert_allclose(out["vals"], (a @ b.T)[pattern], rtol=1e-12)


def test_verify_errors():
    g = tf.GraphBuilder("bad")
    ip, ix, v = g.input("ip", (5,), "i32"), g.input("ix", (7,), "i32"), g.input("v", (7,), "f16")
    with pytest.raises(VerifyError, match=r"sparse csr of \(i32\[5\], i32\[7\], f16\[7\]\): indptr must be \[4\]"):
        tf.sparse_csr(ip, ix, v, (3, 8))
    with pytest.raises(VerifyError, match=r"format 'coo' not in"):
        make(Op.SPARSE, [ip.node, ix.node, v.node], format="coo", shape=(4, 8))
    a = tf.sparse_csr(ip, ix, v, (4, 8))
    with pytest.raises(VerifyError, match=r"spmm of f16\[4, 8\] and f32\[6, 2\]: the dense operand must be \[8, N\]"):
        tf.spmm(a, g.input("b", (6, 2), "f32"))
    with pytest.raises(VerifyError, match=r"operand 0 must be a sparse tensor"):
        make(Op.SPMM, [v.node, v.node])
    with pytest.raises(VerifyError, match=r"the pattern must be \[3, 8\]"):
        tf.sddmm(g.input("x", (3, 2), "f32"), g.input("y", (8, 2), "f32"), a)
