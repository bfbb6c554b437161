"""GPU: f16/bf16 GEMM 4096^3 and the decoder MLP (T=16..4096) vs torch in the same run.

Run on a machine with a CUDA GPU: python bench/gpu_matmul.py --json bench/results/gpu_matmul-<device>.json
Target: >= 0.8x torch.matmul with the default config on H100. Timing: triton.testing.do_bench
(CUDA events, median), fresh random inputs, outputs checked against torch before timing.

--quick: GEMM 2048^3 and the MLP at T=16 only (gpu-check runs this). --dry-run: no GPU needed; the
same code path under the Triton interpreter on CPU tensors at toy sizes, wall-clock timed (the
numbers say nothing about speed; the run proves the script works before GPU time is spent on it).
Kernels use the family defaults (no tuning database or cost model is opened).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from typing import Any

import gpu_env  # bench/gpu_env.py: the scripts run by path, so their folder is on sys.path
import numpy as np

SIZES = {  # gemm n, MLP token counts, MLP (H, I) or None for the example's own sizes
    "full": {"gemm": 4096, "tokens": (16, 4096), "mlp": None},
    "quick": {"gemm": 2048, "tokens": (16,), "mlp": None},
    "dry": {"gemm": 64, "tokens": (4,), "mlp": (64, 96)},
}


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Device, target, timer and sizes for this run."""
    env = gpu_env.setup(args, "bench/gpu_matmul.py")
    env["sizes"] = SIZES["dry" if args.dry_run else "quick" if args.quick else "full"]
    return env


def gemm_rows(env: dict[str, Any]) -> list[dict[str, Any]]:
    """f16 and bf16 GEMM n^3 vs torch.matmul."""
    import torch

    import tilefuse

    rows = []
    n = env["sizes"]["gemm"]
    for dtype in ("f16", "bf16"):
        g = tilefuse.GraphBuilder("gemm")
        g.output("c", g.input("a", (n, n), dtype) @ g.input("b", (n, n), dtype))
        cg = tilefuse.compile(g, target=env["target"], db=None, cost_model=None)
        td = getattr(torch, {"f16": "float16", "bf16": "bfloat16"}[dtype])
        a = torch.randn(n, n, device=env["device"], dtype=td)
        b = torch.randn(n, n, device=env["device"], dtype=td)
        ref = (a.float() @ b.float())
        out = cg(a, b)
        rel = float((out.float() - ref).norm() / ref.norm())
        assert rel < 1e-2, f"gemm {dtype} {n}^3: relative error {rel} vs torch"
        t_tf = env["bench"](lambda: cg(a, b))
        t_torch = env["bench"](lambda: a @ b if env["device"] == "cuda" else a.float() @ b.float())
        fl = 2 * n**3
        rows.append({"case": f"gemm {dtype} {n}^3", "tilefuse_tflops": fl / t_tf / 1e9,
                     "torch_tflops": fl / t_torch / 1e9, "ratio": t_torch / t_tf, "rel_err": rel,
                     "tilefuse_ms": t_tf, "torch_ms": t_torch, "config": cg.kernels[0].config.to_json()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def mlp_rows(env: dict[str, Any]) -> list[dict[str, Any]]:
    """The decoder MLP example at each token count vs the same computation in torch."""
    import torch

    import tilefuse
    from tilefuse.ir.sampling import random_inputs
    from tilefuse.ir.text import load_graph

    rows = []
    hi = env["sizes"]["mlp"]
    for t in env["sizes"]["tokens"]:
        gr = load_graph("examples/decoder_mlp.tf", {"T": t, **({"H": hi[0], "I": hi[1]} if hi else {})})
        cg = tilefuse.compile(gr, target=env["target"], db=None, cost_model=None)
        ins = {k: torch.from_numpy(v).to(env["device"], torch.float16) for k, v in random_inputs(gr, 0).items()}
        # torch's CPU matmuls are float32 (the dry run's reference); on the GPU the baseline runs in f16
        dt = torch.float16 if env["device"] == "cuda" else torch.float32
        x, nw, wg, bg, wu, bu, wd = (ins[k].to(dt) for k in ("x", "norm_w", "w_gate", "b_gate", "w_up", "b_up",
                                                              "w_down"))

        def torch_mlp() -> Any:
            xf = x.float()
            h = (xf * torch.rsqrt((xf * xf).mean(-1, keepdim=True) + 1e-6) * nw.float()).to(dt)
            return (torch.nn.functional.silu(h @ wg + bg) * (h @ wu + bu)) @ wd + x

        out, want = cg(**ins).float(), torch_mlp().float()
        rel = float((out - want).norm() / want.norm())
        assert rel < 2e-2, f"decoder_mlp T={t}: relative error {rel} vs torch"
        t_tf = env["bench"](lambda: cg(**ins))
        t_torch = env["bench"](torch_mlp)
        rows.append({"case": f"decoder_mlp T={t}", "tilefuse_ms": t_tf, "torch_ms": t_torch, "ratio": t_torch / t_tf,
                     "rel_err": rel})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--target", help="sm_80 or sm_90 (default: the device's)")
    ap.add_argument("--quick", action="store_true", help="GEMM 2048^3 and the MLP at T=16 only")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: the interpreter on CPU tensors at toy sizes")
    args = ap.parse_args()
    env = setup(args)
    rows = gemm_rows(env) + mlp_rows(env)
    if args.json:
        import torch
        import triton

        meta = {"device": env["name"], "target": env["target"], "torch": torch.__version__,
                "triton": triton.__version__, "numpy": np.__version__, "date": datetime.date.today().isoformat(),
                "host": platform.node(), "size": "dry-run" if args.dry_run else "quick" if args.quick else "full"}
        with open(args.json, "w") as f:
            json.dump({"benchmark": "gpu_matmul", "meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
