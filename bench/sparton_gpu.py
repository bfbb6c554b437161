"""GPU: the SPLADE/Sparton head max_s log1p(relu(h @ W + b)) as one tilefuse kernel vs torch
(matmul + bias + relu + log1p + amax, which writes the [B, S, V] logits), time and peak memory.

Run on a machine with a CUDA GPU: python bench/sparton_gpu.py --json bench/results/sparton_gpu-<device>.json
Targets (issue 14): >= 2x torch with >= 5x less peak memory at B=32, S=512, D=768, V=30522 (BERT's
vocabulary) in f16. Peak memory is torch.cuda.max_memory_allocated during one call, above what the inputs
already hold (so it counts outputs, intermediates and workspaces). Timing: triton.testing.do_bench (CUDA
events, median), fresh random inputs, outputs checked against an f32 torch computation first.

--quick: B=8, S=256 only. --dry-run: no GPU needed; the same code path under the Triton interpreter on CPU
tensors at B=2, S=37, D=64, V=100 (wall-clock times and no memory figures: the run only proves the script
works before GPU time is spent on it). Kernels use the family defaults (no tuning database, no cost model).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from typing import Any

import gpu_env  # bench/gpu_env.py: the scripts run by path, so their folder is on sys.path
import numpy as np

SIZES = {  # (B, S, D, V)
    "full": [(32, 512, 768, 30522), (8, 256, 768, 30522)],
    "quick": [(8, 256, 768, 30522)],
    "dry": [(2, 37, 64, 100)],
}


def head_graph(b: int, s: int, d: int, v: int) -> Any:
    """The Sparton head in f16 (examples/sparton_head.tf at these sizes)."""
    from tilefuse.ir.text import load_graph

    return load_graph("examples/sparton_head.tf", {"B": b, "S": s, "D": d, "V": v})


def peak_bytes(env: dict[str, Any], fn: Any) -> int | None:
    """Bytes allocated at the peak of one call of `fn` above what was allocated before it (GPU only)."""
    if env["device"] != "cuda":
        return None
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return int(peak)


def head_row(env: dict[str, Any], b: int, s: int, d: int, v: int) -> dict[str, Any]:
    """One size: correctness vs f32 torch, then time and peak memory of tilefuse and torch."""
    import torch

    import tilefuse

    cg = tilefuse.compile(head_graph(b, s, d, v), target=env["target"], db=None, cost_model=None)
    assert len(cg.kernels) == 1, f"the head compiled to {len(cg.kernels)} kernels"
    gen = torch.Generator().manual_seed(0)
    h = (torch.randn(b, s, d, generator=gen) * 0.5).to(env["device"], torch.float16)
    w = (torch.randn(d, v, generator=gen) / d**0.5).to(env["device"], torch.float16)
    bias = (torch.randn(v, generator=gen) * 0.1).to(env["device"], torch.float16)
    # torch's CPU matmuls are float32 (the dry run); on the GPU the baseline runs in f16 as a user would
    dt = torch.float16 if env["device"] == "cuda" else torch.float32

    def torch_head() -> Any:
        return torch.log1p(torch.relu(h.to(dt) @ w.to(dt) + bias.to(dt))).amax(dim=1)

    want = torch.log1p(torch.relu(h.float() @ w.float() + bias.float())).amax(dim=1)
    got = cg(h, w, bias).float()
    err = float((got - want).abs().max())
    assert err < 2e-2 * max(1.0, float(want.abs().max())), f"B={b} S={s} D={d} V={v}: max error {err} vs torch f32"
    del want
    t_tf = env["bench"](lambda: cg(h, w, bias))
    t_torch = env["bench"](torch_head)
    m_tf, m_torch = peak_bytes(env, lambda: cg(h, w, bias)), peak_bytes(env, torch_head)
    ck = cg.kernels[0]
    row = {"case": f"sparton head B={b} S={s} D={d} V={v} f16", "tilefuse_ms": t_tf, "torch_ms": t_torch,
           "speedup": t_torch / t_tf, "tilefuse_peak_bytes": m_tf, "torch_peak_bytes": m_torch,
           "memory_ratio": (m_torch / m_tf) if m_tf and m_torch else None, "max_err": err,
           "logits_bytes": b * s * v * 2, "workspace_bytes": ck.spec.launch_plan(ck.config).scratch_bytes(),
           "launches": len(ck.spec.launch_plan(ck.config).launches), "config": ck.config.to_json()}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--target", help="sm_80 or sm_90 (default: the device's)")
    ap.add_argument("--quick", action="store_true", help="B=8, S=256 only")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: the interpreter on CPU tensors at toy sizes")
    args = ap.parse_args()
    env = gpu_env.setup(args, "bench/sparton_gpu.py")
    size = "dry" if args.dry_run else "quick" if args.quick else "full"
    rows = [head_row(env, *shape) for shape in SIZES[size]]
    if args.json:
        import torch
        import triton

        meta = {"device": env["name"], "target": env["target"], "torch": torch.__version__,
                "triton": triton.__version__, "numpy": np.__version__, "date": datetime.date.today().isoformat(),
                "host": platform.node(), "size": "dry-run" if args.dry_run else size}
        with open(args.json, "w") as f:
            json.dump({"benchmark": "sparton_gpu", "meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
