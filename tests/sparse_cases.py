"""Sparse test inputs: CSR matrices with empty rows, a dense row, power-law rows; graph builders."""

from __future__ import annotations

import numpy as np

import tilefuse as tf
from tilefuse.ir.sparse_op import csr_from_dense


def csr_case(m: int, k: int, density: float, seed: int, kind: str = "uniform"):
    """(dense f32-exact matrix, indptr, indices, values) with rows 0 and m//2 empty and row 1 dense;
    `power` draws power-law row lengths (a graph's degree distribution)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32).astype(np.float64)
    if kind == "power":
        lengths = np.minimum(k, (rng.pareto(1.2, m) * 2).astype(int))
        keep = np.zeros((m, k), dtype=bool)
        for r, n in enumerate(lengths):
            keep[r, rng.choice(k, n, replace=False)] = True
    else:
        keep = rng.random((m, k)) < density
    a = np.where(keep, x, 0.0)
    a[0] = 0.0
    a[m // 2] = 0.0
    if m > 2:
        a[1] = x[1]
    ip, ix, v = csr_from_dense(a)
    return a, ip, ix, v.astype(np.float32)


def spmm_graph(m: int, k: int, n: int, nnz: int, index: str = "i32", dtype: str = "f32", epilogue: bool = True,
               out_dtype: str | None = None):
    """C = spmm(csr, B) (+ bias, relu, + residual, cast to out_dtype when epilogue)."""
    g = tf.GraphBuilder("spmm")
    ip = g.input("indptr", (m + 1,), index)
    ix = g.input("indices", (nnz,), index)
    v = g.input("values", (nnz,), dtype)
    b = g.input("b", (k, n), dtype)
    c = tf.spmm(tf.sparse_csr(ip, ix, v, (m, k)), b)
    if epilogue:
        c = tf.relu(c + g.input("bias", (n,), dtype)) + g.input("res", (m, n), dtype)
    if out_dtype:
        c = tf.cast(c, out_dtype)
    g.output("c", c)
    return g.build()


def spmm_inputs(case, k: int, n: int, seed: int, index: str = "i32"):
    """Inputs by name for spmm_graph from csr_case's arrays."""
    a, ip, ix, v = case
    rng = np.random.default_rng(seed + 100)
    idt = np.int64 if index == "i64" else np.int32
    m = a.shape[0]
    return {"indptr": ip.astype(idt), "indices": ix.astype(idt), "values": v,
            "b": rng.standard_normal((k, n)).astype(np.float32), "bias": rng.standard_normal(n).astype(np.float32),
            "res": rng.standard_normal((m, n)).astype(np.float32)}
