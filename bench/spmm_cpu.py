"""CSR SpMM on the CPU: tilefuse's TVM template vs scipy.sparse and torch.sparse (CSR), same run.

Matrices: uniform random at 90/95/99% sparsity, power-law rows (graph-like), block-clustered
(16x16 blocks); feature widths 32/128/512. Prints each time and tilefuse's ratio over the faster
baseline (target >= 1.5x on 2 cores) and writes JSON with the machine and versions.

    PYTHONPATH=... python bench/spmm_cpu.py [--rows 100000] [--cols 4096] [--reps 5] [--out FILE]

The issue asks for 10^5 power-law rows; --rows sets M for every matrix (K = --cols)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

import tilefuse as tf
from tilefuse.schedule.config import Config


def matrix(kind: str, m: int, k: int, rng: np.random.Generator):
    """scipy CSR matrix of the named kind, f32, indices sorted."""
    import scipy.sparse as sp

    if kind.startswith("uniform"):
        density = 1 - int(kind.split("-")[1]) / 100
        return sp.random(m, k, density=density, format="csr", dtype=np.float32, random_state=rng)
    if kind == "powerlaw":
        deg = np.minimum(k, 1 + (rng.pareto(1.1, m) * 4).astype(np.int64))
        rows = np.repeat(np.arange(m), deg)
        cols = rng.integers(0, k, len(rows))
        vals = rng.standard_normal(len(rows)).astype(np.float32)
        a = sp.csr_matrix((vals, (rows, cols)), shape=(m, k))
        a.sum_duplicates()
        return a
    blocks = sp.random(m // 16, k // 16, density=0.05, format="csr", random_state=rng)
    a = sp.kron(blocks, np.ones((16, 16), dtype=np.float32), format="csr").astype(np.float32)
    a.data = rng.standard_normal(a.nnz).astype(np.float32)
    return a


def best(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_case(a, n: int, reps: int, rng: np.random.Generator) -> dict:
    import torch

    m, k = a.shape
    b = rng.standard_normal((k, n)).astype(np.float32)
    g = tf.GraphBuilder("spmm_bench")
    ip, ix = g.input("indptr", (m + 1,), "i32"), g.input("indices", (a.nnz,), "i32")
    v, tb = g.input("values", (a.nnz,), "f32"), g.input("b", (k, n), "f32")
    g.output("c", tf.spmm(tf.sparse_csr(ip, ix, v, (m, k)), tb))
    threads = len(os.sched_getaffinity(0))
    cfg = Config(tile_n=min(64, n), tasks=8 * threads)
    cg = tf.compile(g.build(), target="cpu", configs={"k0_sparse_spmm": cfg}, db=None, cost_model=None)
    ins = {"indptr": a.indptr.astype(np.int32), "indices": a.indices.astype(np.int32), "values": a.data, "b": b}
    got = cg.run(ins)["c"]
    ref = a @ b
    assert np.allclose(got, ref, rtol=1e-4, atol=1e-3), "tilefuse result differs from scipy"
    crow = torch.from_numpy(a.indptr.astype(np.int64))
    ta = torch.sparse_csr_tensor(crow, torch.from_numpy(a.indices.astype(np.int64)), torch.from_numpy(a.data),
                                 size=(m, k))
    tbt = torch.from_numpy(b)
    t_tf = best(lambda: cg.run(ins), reps)
    t_sp = best(lambda: a @ b, reps)
    t_th = best(lambda: ta @ tbt, reps)
    return {"nnz": int(a.nnz), "n": n, "tilefuse_s": t_tf, "scipy_s": t_sp, "torch_s": t_th,
            "ratio_vs_faster": min(t_sp, t_th) / t_tf, "config": json.loads(cfg.to_json())}


def main() -> None:
    import scipy
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--widths", default="32,128,512")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    results = []
    for kind in ("uniform-90", "uniform-95", "uniform-99", "powerlaw", "blocks"):
        a = matrix(kind, args.rows, args.cols, rng)
        for n in (int(w) for w in args.widths.split(",")):
            r = {"matrix": kind, "rows": args.rows, "cols": args.cols, **run_case(a, n, args.reps, rng)}
            results.append(r)
            print(f"{kind:11s} nnz={r['nnz']:9d} N={n:4d}  tilefuse {r['tilefuse_s'] * 1e3:8.2f} ms  scipy "
                  f"{r['scipy_s'] * 1e3:8.2f} ms  torch {r['torch_s'] * 1e3:8.2f} ms  x{r['ratio_vs_faster']:.2f}",
                  flush=True)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "torch": torch.__version__, "tilefuse_threads": os.environ.get("TILEFUSE_THREADS", "default")}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
