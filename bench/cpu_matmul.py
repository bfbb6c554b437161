"""f32 GEMM at 512, 1024, 2048 through the TVM/LLVM path with the default config vs numpy (same run).

Prints GFLOP/s and the ratio to numpy (target before tuning: >= 0.5x), and compile time per
kernel cold and on a cache hit. Usage: python bench/cpu_matmul.py [--sizes 512 1024 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def gemm_graph(n: int):  # noqa: ANN201
    import tilefuse as tf

    g = tf.GraphBuilder(f"gemm{n}")
    g.output("c", g.input("a", (n, n), "f32") @ g.input("b", (n, n), "f32"))
    return g.build()


def scheduler() -> str:
    """The process's scheduling policy: run under `chrt -f 50` to keep other processes off the cores."""
    pol = os.sched_getscheduler(0)
    return {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}.get(pol, str(pol))


def median_time(fn, reps: int) -> float:  # noqa: ANN001
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--json", help="write results to this file")
    args = ap.parse_args()
    os.environ.setdefault("TILEFUSE_CACHE_DIR", tempfile.mkdtemp(prefix="tilefuse-bench-"))
    import tilefuse
    from tilefuse.codegen.tvm_runtime import configure_threads

    rows = []
    for n in args.sizes:
        g = gemm_graph(n)
        t0 = time.perf_counter()
        cg = tilefuse.compile(g, target="cpu", db=None, cost_model=None)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        tilefuse.compile(g, target="cpu", db=None, cost_model=None)
        hit = time.perf_counter() - t0
        rng = np.random.default_rng(n)
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        c = cg(a, b)
        err = float(np.max(np.abs(c - ref)) / np.max(np.abs(ref)))
        reps = 10 if n >= 2048 else 30
        # numpy first: TVM's pool threads spin for a while after a kernel and would slow OpenBLAS's
        t_np = median_time(lambda: a @ b, reps)
        t_tf = median_time(lambda: cg(a, b), reps)
        flops = 2.0 * n**3
        row = {"n": n, "tilefuse_gflops": flops / t_tf / 1e9, "numpy_gflops": flops / t_np / 1e9,
               "ratio": t_np / t_tf, "rel_err": err, "compile_cold_s": cold, "compile_cache_hit_s": hit,
               "config": cg.kernels[0].config.to_json()}
        rows.append(row)
        print(f"n={n:5d}  tilefuse {row['tilefuse_gflops']:7.1f} GFLOP/s  numpy {row['numpy_gflops']:7.1f} GFLOP/s  "
              f"ratio {row['ratio']:.2f}x  rel err {err:.1e}  compile cold {cold:.2f} s / hit {hit:.3f} s")
    if args.json:
        import datetime
        import platform

        import tvm

        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                   platform.processor())
        meta = {"cpu": cpu, "cores": os.cpu_count(), "numpy": np.__version__, "tvm": tvm.__version__,
                "date": datetime.date.today().isoformat(), "config_source": "family default (untuned)",
                "tvm_threads": configure_threads(), "scheduler": scheduler()}
        with open(args.json, "w") as f:
            json.dump({"benchmark": "cpu_matmul", "meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
