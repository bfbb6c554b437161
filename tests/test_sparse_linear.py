"""The transposed use in LLM layers, y = x @ W^T with x dense [tokens, in] and W sparse [out, in]: one
spmm kernel (attr transposed) whether written with tf.sparse_linear or as permute(spmm(W, permute(x))),
for CSR, BSR and 2:4 on interp and cpu against the float64 reference (poisoned outputs, odd sizes, a
bias epilogue along the output features), its text form and its verifier."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import to_np

import tilefuse as tf
from tilefuse.ir import VerifyError, parse_graph
from tilefuse.ir.reference import evaluate
from tilefuse.ir.sparse_op import bsr_from_dense, csr_from_dense, prune_2to4
from tilefuse.passes import canonicalize

RNG = np.random.default_rng(8)


def weight(fmt, out, d_in):
    """(sparse builder over graph inputs, their arrays, W dense) of a random W [out, in] in `fmt`; W's
    row 1 is empty (CSR/BSR) and row 0 full."""
    w = RNG.standard_normal((out, d_in)).astype(np.float32)
    if fmt == "2:4":
        dense, vals, meta = prune_2to4(w)
        return (lambda g: tf.sparse_24(g.input("wv", vals.shape, "f32"), g.input("wm", meta.shape, "u8"))), \
            {"wv": vals, "wm": meta}, dense
    w[RNG.random(w.shape) < 0.6] = 0.0
    w[1] = 0.0
    if fmt == "csr":
        w[0] = RNG.standard_normal(d_in)
        arrays = csr_from_dense(w)
    else:
        w[4:8] = 0.0  # an empty block row
        arrays = bsr_from_dense(w, (4, 8))
    ip, ix, v = arrays
    names = {"wp": ip, "wi": ix, "wv": v}

    def build(g):
        a = [g.input(k, x.shape, str(x.dtype).replace("int", "i").replace("float", "f")) for k, x in names.items()]
        return tf.sparse_csr(*a, (out, d_in)) if fmt == "csr" else tf.sparse_bsr(*a, (out, d_in), (4, 8))

    return build, names, w


def linear_graph(build, tokens, d_in, out, form):
    g = tf.GraphBuilder("linear")
    x = g.input("x", (tokens, d_in), "f32")
    w = build(g)
    y = tf.sparse_linear(x, w) if form == "builder" else tf.permute(tf.spmm(w, tf.permute(x, (1, 0))), (1, 0))
    g.output("y", tf.relu(y + g.input("bias", (out,), "f32")))
    return g.build()


@pytest.mark.parametrize("fmt", ["csr", "bsr", "2:4"])
@pytest.mark.parametrize("target", [pytest.param("interp", marks=pytest.mark.interp), "cpu"])
def test_x_times_sparse_w_transposed_is_one_kernel(fmt, target):
    if target == "cpu":
        pytest.importorskip("tvm")
    tokens, d_in, out = 5, 32, 20
    build, arrays, dense = weight(fmt, out, d_in)
    ins = {**arrays, "x": RNG.standard_normal((tokens, d_in)).astype(np.float32),
           "bias": RNG.standard_normal(out).astype(np.float32)}
    for form in ("builder", "permute"):
        g = linear_graph(build, tokens, d_in, out, form)
        cg = tf.compile(g, target=target, db=None, cost_model=None)
        assert [k.spec.family for k in cg.kernels] == ["spmm"] and cg.kernels[0].spec.transposed
        got = to_np(cg.run(ins, poison=True)["y"])
        want = evaluate(g, ins)["y"]
        assert got.shape == (tokens, out) and np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
        np.testing.assert_allclose(want, np.maximum(ins["x"].astype(np.float64) @ dense.T + ins["bias"], 0),
                                   rtol=1e-6, atol=1e-6)  # the reference rounds x @ W^T to f32


def test_the_permute_form_canonicalizes_to_the_transposed_spmm_and_round_trips():
    build, _, _ = weight("csr", 12, 16)
    g = canonicalize(linear_graph(build, 3, 16, 12, "permute"))
    assert "transposed=true" in g.text and "permute" not in g.text
    assert parse_graph(g.text).key == g.key
    plain = tf.GraphBuilder("p")
    sp = tf.sparse_csr(plain.input("a", (5,), "i32"), plain.input("b", (3,), "i32"), plain.input("c", (3,), "f32"),
                       (4, 6))
    plain.output("y", tf.spmm(sp, plain.input("x", (6, 2), "f32")))
    assert "transposed" not in plain.build().text  # the plain form's text (and keys) are unchanged
    with pytest.raises(VerifyError, match=r"the dense operand must be \[T, 6\] \(transposed\)"):
        tf.sparse_linear(plain.input("z", (2, 5), "f32"), sp)
