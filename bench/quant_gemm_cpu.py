"""Weight-only quantized GEMM on the CPU (TVM/LLVM, family default config): int4 (symmetric, G=128, packed
along N in i32) and int8 (per-channel) weights with f32 activations, against numpy's f32 matmul and torch's
own CPU int4 kernel (`torch.ops.aten._weight_int4pack_mm_for_cpu`, where the installed torch has it), in the
same run. Prints times and ratios. Usage:
    python bench/quant_gemm_cpu.py [--m 1 4 16] [--k 4096] [--n 4096 11008] [--reps 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

import numpy as np


def graph(kind: str, m: int, k: int, n: int):  # noqa: ANN201
    import tilefuse as tf

    g = tf.GraphBuilder(f"{kind}_m{m}")
    x = g.input("x", (m, k), "f32")
    if kind == "int4":
        w = tf.dequantize(g.input("qw", (k, n // 8), "i32"), g.input("s", (k // 128, n), "f32"), shape=(k, n),
                          bits=4, group_size=128, out_dtype="f32")
    else:
        w = tf.dequantize(g.input("qw", (k, n), "i8"), g.input("s", (n,), "f32"), shape=(k, n), bits=8,
                          group_size=-1, signed=True, out_dtype="f32")
    g.output("y", x @ w)
    return g.build()


def weights(kind: str, k: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(packed, scales, the dequantized f32 weight)."""
    if kind == "int4":
        q = rng.integers(0, 16, (k, n))
        words = (q.reshape(k, n // 8, 8) << (4 * np.arange(8))).sum(-1).astype(np.uint32).view(np.int32)
        s = rng.uniform(0.001, 0.01, (k // 128, n)).astype(np.float32)
        return words, s, ((q - 8) * np.repeat(s, 128, axis=0)).astype(np.float32)
    q8 = rng.integers(-128, 128, (k, n)).astype(np.int8)
    s = rng.uniform(0.001, 0.01, (n,)).astype(np.float32)
    return q8, s, (q8 * s).astype(np.float32)


# Seconds each timing waits first: OpenBLAS (numpy), OpenMP (torch) and TVM keep their worker threads
# spinning for a while after a call, and on 2 cores a contender timed right after another ran against those
# spinning threads (measured, M=1 N=4096 int4: tilefuse right after numpy's matmul 3.95 ms median, 0.72 ms
# after a pause; the 2026-12-05 results before this change timed tilefuse right after numpy).
SETTLE_S = 0.3


def median_time(fn: Any, reps: int) -> float:
    time.sleep(SETTLE_S)
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def torch_int4(x: np.ndarray, w: np.ndarray, k: int, n: int) -> Any:
    """torch's CPU int4 kernel on the same weight (requantized symmetric, G=128), or None without it."""
    try:
        import torch

        q = torch.randint(0, 16, (n, k), dtype=torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = torch.rand(k // 128, n, 2, dtype=torch.bfloat16)
        xt = torch.from_numpy(x).to(torch.bfloat16)

        def run() -> Any:
            return torch.ops.aten._weight_int4pack_mm_for_cpu(xt, packed, 128, sz)

        run()
        return run
    except (AttributeError, RuntimeError, ImportError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, nargs="+", default=[4096, 11008])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", help="write results to this file")
    args = ap.parse_args()
    os.environ.setdefault("TILEFUSE_CACHE_DIR", tempfile.mkdtemp(prefix="tilefuse-bench-"))
    import tilefuse

    rows = []
    rng = np.random.default_rng(0)
    for n in args.n:
        for kind in ("int4", "int8"):
            qw, s, wf = weights(kind, args.k, n, rng)
            for m in args.m:
                x = rng.standard_normal((m, args.k)).astype(np.float32)
                cg = tilefuse.compile(graph(kind, m, args.k, n), target="cpu", db=None, cost_model=None)
                y = cg(x, qw, s)
                err = float(np.max(np.abs(y - x @ wf)) / np.max(np.abs(x @ wf)))
                t_np = median_time(lambda: x @ wf, args.reps)
                t_tf = median_time(lambda: cg(x, qw, s), args.reps)
                th = torch_int4(x, wf, args.k, n) if kind == "int4" else None
                t_th = median_time(th, args.reps) if th is not None else None
                row = {"kind": kind, "M": m, "K": args.k, "N": n, "load_1min": os.getloadavg()[0],
                       "tilefuse_ms": t_tf * 1e3, "numpy_f32_ms": t_np * 1e3,
                       "torch_int4_ms": None if t_th is None else t_th * 1e3, "vs_numpy": t_np / t_tf,
                       "vs_torch_int4": None if t_th is None else t_th / t_tf, "rel_err": err,
                       "config": cg.kernels[0].config.to_json()}
                rows.append(row)
                torch_txt = "" if t_th is None else f"  torch int4 {t_th * 1e3:7.2f} ms ({t_th / t_tf:.2f}x)"
                print(f"{kind} M={m:3d} K={args.k} N={n:6d}  tilefuse {t_tf * 1e3:7.2f} ms  numpy f32 "
                      f"{t_np * 1e3:7.2f} ms ({t_np / t_tf:.2f}x){torch_txt}  rel err {err:.1e}  "
                      f"load {row['load_1min']:.1f}", flush=True)
    if args.json:
        import datetime
        import platform

        import tvm

        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                   platform.processor())
        try:
            import torch

            torch_v = torch.__version__
        except ImportError:
            torch_v = None
        import subprocess

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        meta = {"cpu": cpu, "cores": os.cpu_count(), "numpy": np.__version__, "tvm": tvm.__version__,
                "torch": torch_v, "python": platform.python_version(), "commit": commit,
                "reps": args.reps, "load_1min_end": os.getloadavg()[0], "date": datetime.date.today().isoformat(),
                "config_source": "family default (untuned)", "settle_s": SETTLE_S,
                "note": "shared machine; torch's int4 kernel takes bf16 activations (ours f32)"}
        with open(args.json, "w") as f:
            json.dump({"benchmark": "quant_gemm_cpu", "meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
