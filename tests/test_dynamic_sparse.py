"""The sparse family with a dynamic token count T: CSR, BSR and 2:4 SpMM in both orientations (A_sparse @ X
with X [K, T], and sparse_linear x @ W^T with x [T, K]), SDDMM and the fused SDDMM -> softmax -> SpMM with
a dynamic dot length, and structures whose rows and nnz follow T, compiled once for cpu (TVM: T an int32
argument) and interp (Triton: an int) and run at T in three buckets against the reference without a build;
sparse attention's D refused on cpu naming it, and run-time structure checks at the call's sizes."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse import compiler
from tilefuse.compiler import check_against_reference
from tilefuse.ir.dims import DynamicSizeError
from tilefuse.ir.sampling import random_inputs
from tilefuse.ir.sparse_op import SparseStructureError
from tilefuse.kernels.base import StaticSizeRequired
from tilefuse.schedule.config import Config

BUCKETS = [8, 64]  # T=1..8, 9..64, 65..128
TS = (1, 37, 100)  # one value in each bucket, none at a bucket's upper end
TARGETS = [pytest.param("interp", marks=pytest.mark.interp), "cpu"]


def _weights(g, m, k, p=""):
    """A [m, k] sparse weight in each format, each over its own inputs (names prefixed by p)."""
    csr = tf.sparse_csr(g.input(p + "cp", (m + 1,), "i32"), g.input(p + "ci", (150,), "i32"),
                        g.input(p + "cv", (150,), "f32"), (m, k))
    bsr = tf.sparse_bsr(g.input(p + "bp", (m // 4 + 1,), "i32"), g.input(p + "bi", (10,), "i32"),
                        g.input(p + "bv", (10, 4, 8), "f32"), (m, k), (4, 8))
    s24 = tf.sparse_24(g.input(p + "sv", (m, k // 2), "f32"), g.input(p + "sm", (m, k // 2), "u8"))
    return {"csr": csr, "bsr": bsr, "24": s24}


def linear_graph():
    """y_f = relu(x @ W_f^T + bias) for each format f: the serving engine's sparse linear layer."""
    g = tf.GraphBuilder("sparse_linear_dyn")
    t = g.dyn("T", 1, 128, hint=16)
    x, bias = g.input("x", (t, 32), "f32"), g.input("bias", (24,), "f32")
    for f, w in _weights(g, 24, 32).items():
        g.output(f"y_{f}", tf.relu(tf.sparse_linear(x, w) + bias))
    return g.build()


def spmm_graph():
    """y_f = W_f @ X for each format (X [32, T]); an SDDMM and a graph attention whose dot length is T."""
    g = tf.GraphBuilder("spmm_dyn")
    t = g.dyn("T", 1, 128, hint=16)
    x = g.input("x", (32, t), "f32")
    for f, w in _weights(g, 24, 32).items():
        g.output(f"y_{f}", tf.spmm(w, x))
    pattern = tf.sparse_csr(g.input("pp", (17,), "i32"), g.input("pi", (60,), "i32"), g.input("pv", (60,), "f32"),
                            (16, 12))
    a, b = g.input("a", (16, t), "f32"), g.input("b", (12, t), "f32")
    g.output("s", tf.sddmm(a, b, pattern) * 0.5)
    ip, ix = g.input("gp", (17,), "i32"), g.input("gi", (50,), "i32")
    scores = tf.sparse_csr(ip, ix, tf.sddmm(a, b, tf.sparse_csr(ip, ix, g.input("gv", (50,), "f32"), (16, 12))),
                           (16, 12))
    probs = tf.sparse_csr(ip, ix, tf.sparse_softmax(scores), (16, 12))
    g.output("att", tf.spmm(probs, g.input("feat", (12, 8), "f32")))
    return g.build()


def _ok(cg, g, t):
    rows = check_against_reference(cg, inputs=random_inputs(g.at({"T": t}), t))
    assert all(ok for *_, ok in rows), (t, rows)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("make", [linear_graph, spmm_graph], ids=["linear", "spmm"])
def test_sparse_kernels_compile_once_and_serve_every_t(make, target, count_calls):
    if target == "cpu":
        pytest.importorskip("tvm")
    g = make()
    builds = count_calls(compiler, "_build")
    cg = tf.compile(g, target=target, buckets=BUCKETS, db=None, cost_model=None)
    families = sorted(k.spec.family for k in cg.kernels)
    assert families.count("spmm") == 3 and len(cg.buckets) == 3
    if make is spmm_graph:
        assert {"sddmm", "sparse_attention"} <= set(families)
    assert all(k.spec.size_params() == ["T"] for k in cg.kernels if k.spec.family != "sparse_attention")
    at_compile = len(builds)
    assert 0 < at_compile == len(cg.distinct_kernels())
    for t in TS:
        _ok(cg, g, t)
    assert len(builds) == at_compile  # no call built anything


def _dyn_nnz_graph():
    """A CSR SpMM whose nnz is the dynamic parameter (indices and values [T])."""
    g = tf.GraphBuilder("nnz_dyn")
    t = g.dyn("T", 1, 128)
    w = tf.sparse_csr(g.input("wp", (17,), "i32"), g.input("wi", (t,), "i32"), g.input("wv", (t,), "f32"), (16, 32))
    g.output("y", tf.spmm(w, g.input("x", (32, 24), "f32")))
    return g.build()


def structure_graph():
    """Sizes of the sparse structure that follow T: a CSR weight's nnz, a CSR's rows (its indptr [T + 1]), a
    2:4 weight's rows, a CSR's columns, and graph attention over T tokens (pattern [T, T] with T stored
    entries; q, k, x with T rows)."""
    g = tf.GraphBuilder("structure_dyn")
    t = g.dyn("T", 1, 128, hint=16)
    x = g.input("x", (32, 8), "f32")
    nnz = tf.sparse_csr(g.input("np", (17,), "i32"), g.input("ni", (t,), "i32"), g.input("nv", (t,), "f32"), (16, 32))
    g.output("y_nnz", tf.spmm(nnz, x))
    rows = tf.sparse_csr(g.input("rp", (t + 1,), "i32"), g.input("ri", (40,), "i32"), g.input("rv", (40,), "f32"),
                         (t, 32))
    g.output("y_rows", tf.spmm(rows, x) + g.input("r", (t, 8), "f32"))
    g.output("y_24", tf.spmm(tf.sparse_24(g.input("sv", (t, 16), "f32"), g.input("sm", (t, 16), "u8")), x))
    cols = tf.sparse_csr(g.input("kp", (9,), "i32"), g.input("ki", (20,), "i32"), g.input("kv", (20,), "f32"), (8, t))
    g.output("y_cols", tf.spmm(cols, g.input("xk", (t, 8), "f32")))
    ip, ix = g.input("gp", (t + 1,), "i32"), g.input("gi", (t,), "i32")
    q, k = g.input("q", (t, 16), "f32"), g.input("k", (t, 16), "f32")
    scores = tf.sparse_csr(ip, ix, tf.sddmm(q, k, tf.sparse_csr(ip, ix, g.input("gv", (t,), "f32"), (t, t))), (t, t))
    probs = tf.sparse_csr(ip, ix, tf.sparse_softmax(scores), (t, t))
    g.output("att", tf.spmm(probs, g.input("feat", (t, 8), "f32")))
    return g.build()


@pytest.mark.parametrize("target", TARGETS)
def test_sizes_of_the_structure_may_be_dynamic(target, count_calls):
    if target == "cpu":
        pytest.importorskip("tvm")
    g = structure_graph()
    builds = count_calls(compiler, "_build")
    cg = tf.compile(g, target=target, buckets=BUCKETS, db=None, cost_model=None)
    assert sorted(k.spec.family for k in cg.kernels) == ["sparse_attention"] + ["spmm"] * 4
    at_compile = len(builds)
    for t in TS:
        _ok(cg, g, t)
    assert len(builds) == at_compile


def test_sparse_attention_needs_a_static_feature_count_on_cpu():
    """The CPU attention template holds a row's D features in one vector buffer: D must be static."""
    pytest.importorskip("tvm")
    b = tf.GraphBuilder("att_d")
    t = b.dyn("T", 1, 64)
    ip, ix = b.input("ip", (9,), "i32"), b.input("ix", (20,), "i32")
    probs = tf.sparse_softmax(tf.sparse_csr(ip, ix, b.input("v", (20,), "f32"), (8, 8)))
    b.output("y", tf.spmm(tf.sparse_csr(ip, ix, probs, (8, 8)), b.input("x", (8, t), "f32")))
    with pytest.raises(StaticSizeRequired, match=r"k0_\w+ \(sparse_attention, tvm\): D \(x's feature count: the "
                       r"length of a task's accumulator row\) is T, which depends on the dynamic parameter T"):
        tf.compile(b.build(), target="cpu", buckets=BUCKETS, db=None, cost_model=None)


@pytest.mark.interp
@pytest.mark.parametrize("mode", ["device", "host"])
def test_dynamic_nnz_on_interp_checks_the_structure_at_the_call_sizes(mode, sparse_check_mode):
    """Triton takes every size at run time, nnz and the row binning's grid included; the structure check
    reads the arrays at the call's T (5), not at its bucket's upper end (8): a valid structure passes, one
    whose indptr ends past nnz is refused."""
    sparse_check_mode(mode)
    g = _dyn_nnz_graph()
    cg = tf.compile(g, target="interp", buckets=BUCKETS, db=None, cost_model=None)
    assert cg.kernels[0].config["SWIZZLE"] == 1  # the row binning launches
    for t in (5, 40, 100):
        _ok(cg, g, t)
    ins = random_inputs(g.at({"T": 5}), 0)
    ins["wp"] = np.minimum(np.arange(17, dtype=np.int32), 6)  # ends at 6, past nnz=5
    ins["wi"] = np.zeros(5, np.int32)
    with pytest.raises(SparseStructureError, match="indptr"):
        cg.run(ins)


@pytest.mark.interp
def test_a_structure_size_no_input_dim_gives_is_named():
    """The structure check solves the call's sizes from the kernel's input dims of the form c + a * T;
    indices [T * T] (T itself read by another kernel's input) give none, and the check says so."""
    g = tf.GraphBuilder("tt")
    t = g.dyn("T", 1, 8)
    w = tf.sparse_csr(g.input("wp", (17,), "i32"), g.input("wi", (t * t,), "i32"), g.input("wv", (t * t,), "f32"),
                      (16, 32))
    g.output("y", tf.spmm(w, g.input("x", (32, 8), "f32")))
    g.output("z", tf.exp(g.input("s", (t,), "f32")))
    g = g.build()
    cg = tf.compile(g, target="interp", buckets=[], db=None, cost_model=None)
    with pytest.raises(DynamicSizeError, match=r"k0_sparse_spmm: the sparse structure check cannot read the "
                       r"dynamic size T from the kernel's input shapes \(no input dim is c \+ a \* T\)"):
        cg.run(random_inputs(g.at({"T": 3}), 0))


def test_every_ragged_tail_on_cpu():
    """The CPU templates split the last column tile's rem = T mod tile_n columns into power-of-two chunks
    (rem = 7: 4, 2, 1): every rem of tile_n = 16, each format in both orientations, one binary each."""
    pytest.importorskip("tvm")
    g = tf.GraphBuilder("tails")
    t = g.dyn("T", 1, 40)
    x, xt = g.input("x", (t, 32), "f32"), g.input("xt", (32, t), "f32")
    for f, w in _weights(g, 24, 32).items():
        g.output(f"lin_{f}", tf.sparse_linear(x, w))
    for f, w in _weights(g, 24, 32, "t").items():
        g.output(f"mm_{f}", tf.spmm(w, xt))
    g = g.build()
    cfg = {k.spec.name: Config(tile_n=16, **({"tile_m": 4} if k.spec.format == "2:4" else {}),
                               **({"tasks": 4} if k.spec.format == "csr" else {}))
           for k in tf.compile(g, target="interp", buckets=[], db=None, cost_model=None).kernels}
    cg = tf.compile(g, target="cpu", buckets=[], configs=cfg, db=None, cost_model=None)
    assert len(cg.kernels) == 6 and all(k.config["tile_n"] == 16 for k in cg.kernels)
    for n in [*range(1, 18), 31, 40]:
        _ok(cg, g, n)
