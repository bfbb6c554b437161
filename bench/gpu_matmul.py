"""GPU: f16/bf16 GEMM 4096^3 and the decoder MLP (T=16..4096) vs torch in the same run.

Run on a machine with a CUDA GPU: python bench/gpu_matmul.py --json bench/results/gpu_matmul-<device>.json
Target: >= 0.8x torch.matmul with the default config on H100. Timing: triton.testing.do_bench
(CUDA events, median), fresh random inputs, outputs checked against torch before timing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--target", default="sm_90")
    args = ap.parse_args()
    import torch
    import triton
    from triton.testing import do_bench

    import tilefuse
    from tilefuse.ir.text import load_graph

    assert torch.cuda.is_available(), "bench/gpu_matmul.py needs a CUDA GPU"
    dev = torch.cuda.get_device_name()
    rows = []
    for dtype in ("f16", "bf16"):
        n = 4096
        g = tilefuse.GraphBuilder("gemm")
        g.output("c", g.input("a", (n, n), dtype) @ g.input("b", (n, n), dtype))
        cg = tilefuse.compile(g, target=args.target)
        td = getattr(torch, {"f16": "float16", "bf16": "bfloat16"}[dtype])
        a = torch.randn(n, n, device="cuda", dtype=td)
        b = torch.randn(n, n, device="cuda", dtype=td)
        ref = (a.float() @ b.float())
        out = cg(a, b)
        rel = float((out.float() - ref).norm() / ref.norm())
        t_tf = do_bench(lambda: cg(a, b), return_mode="median")
        t_torch = do_bench(lambda: a @ b, return_mode="median")
        fl = 2 * n**3
        rows.append({"case": f"gemm {dtype} {n}^3", "tilefuse_tflops": fl / t_tf / 1e9,
                     "torch_tflops": fl / t_torch / 1e9, "ratio": t_torch / t_tf, "rel_err": rel,
                     "config": cg.kernels[0].config.to_json()})
    for t in (16, 4096):
        gr = load_graph("examples/decoder_mlp.tf", {"T": t})
        cg = tilefuse.compile(gr, target=args.target)
        from tilefuse.cli import random_inputs

        ins = {k: torch.from_numpy(v).to("cuda", torch.float16) for k, v in random_inputs(gr, 0).items()}
        x, nw, wg, bg, wu, bu, wd = (ins[k] for k in ("x", "norm_w", "w_gate", "b_gate", "w_up", "b_up", "w_down"))

        def torch_mlp():
            xf = x.float()
            h = (xf * torch.rsqrt((xf * xf).mean(-1, keepdim=True) + 1e-6) * nw.float()).half()
            return (torch.nn.functional.silu(h @ wg + bg) * (h @ wu + bu)) @ wd + x

        out = cg(**ins)
        rel = float((out.float() - torch_mlp().float()).norm() / torch_mlp().float().norm())
        t_tf = do_bench(lambda: cg(**ins), return_mode="median")
        t_torch = do_bench(torch_mlp, return_mode="median")
        rows.append({"case": f"decoder_mlp T={t}", "tilefuse_ms": t_tf, "torch_ms": t_torch, "ratio": t_torch / t_tf,
                     "rel_err": rel})
    for r in rows:
        print(json.dumps(r))
    if args.json:
        meta = {"device": dev, "torch": torch.__version__, "triton": triton.__version__, "numpy": np.__version__,
                "date": datetime.date.today().isoformat(), "host": platform.node()}
        with open(args.json, "w") as f:
            json.dump({"benchmark": "gpu_matmul", "meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
