"""GPU: quantized GEMMs on Llama weight shapes vs torch in the same run (issue 13's GPU benchmark).

Run on an H100/H200 (it has not run in the CPU-only session that wrote it):

    python bench/quant_gemm.py [--quick | --dry-run] [--json FILE]

Formats, each y = x @ W for W [K, N] from REFERENCES.md (Llama-2-7b QKV, O, gate+up, down; Llama-3-8b QKV,
gate+up, down) at M in {1, 4, 16, 64, 512, 4096}:
- w4a16: AWQ int4 (G=128, packed zeros), f16 activations, vs torch f16 `x @ w`. Target >= 3.5x at M <= 16.
- fp8: block-scaled e4m3 (DeepSeek-V3 / DeepGEMM style: activations with a scale per token and 128 K, the
  weight as a checkpoint's [N, K] with a scale per 128 x 128 block), bf16 out, vs torch f16 and
  `torch._scaled_mm` (the blockwise recipe when the installed torch has it, else rowwise or tensorwise
  scales on the same fp8 data: timing only, the row says which). Target >= 1.0x _scaled_mm at M >= 512.
- w8a8: int8 weights per channel, activations quantized per token in the graph (tf.w8a8_linear: the
  `quantize` row kernel, then one i8 GEMM with both scales in its epilogue), vs torch f16. Target >= 1.6x at
  M >= 512. Skipped with a message where this tree has no `quantize` op.

Every output is checked before timing: against torch's f32 matmul of the dequantized operands (and, in the
dry run, the float64 reference evaluator). Timing: triton.testing.do_bench_cudagraph (the launch overhead of
either side left out; do_bench where a graph capture fails, the row says which), median. Peak memory: the
most bytes torch's allocator held during one call beyond the inputs. Kernels use the family defaults (no
tuning database or cost model is opened). Results: bench/results/quant_gemm-<device>.json unless --json.

--quick: Llama-2-7b gate+up at M in {1, 16, 512} (gpu-check runs this). --dry-run: no GPU needed; every
format under the Triton interpreter on CPU tensors at a toy size (K=256, N=384) and M in {1, 5, 64}, timed by
the wall clock (the numbers say nothing about speed; the run proves the script works before GPU time is
spent on it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
from pathlib import Path
from typing import Any

import gpu_env  # bench/gpu_env.py: the scripts run by path, so their folder is on sys.path
import numpy as np

SHAPES = {  # [K, N] per layer
    "llama2_7b": {"qkv": (4096, 12288), "o": (4096, 4096), "gate_up": (4096, 22016), "down": (11008, 4096)},
    "llama3_8b": {"qkv": (4096, 6144), "gate_up": (4096, 28672), "down": (14336, 4096)},
}
SIZES = {
    "full": {"shapes": [(model, layer, kn) for model, layers in SHAPES.items() for layer, kn in layers.items()],
             "m": (1, 4, 16, 64, 512, 4096)},
    "quick": {"shapes": [("llama2_7b", "gate_up", (4096, 22016))], "m": (1, 16, 512)},
    "dry": {"shapes": [("toy", "wide", (256, 384))], "m": (1, 5, 64)},
}
FORMATS = ("w4a16", "fp8", "w8a8")
TARGETS = {"w4a16": ("vs_f16", lambda m: m <= 16, 3.5), "fp8": ("vs_scaled_mm", lambda m: m >= 512, 1.0),
           "w8a8": ("vs_f16", lambda m: m >= 512, 1.6)}


def awq_case(tf: Any, torch: Any, m: int, k: int, n: int, dev: str) -> tuple[Any, dict[str, Any], Any, dict[str, Any]]:
    """(graph, inputs by name, f32 reference of y, baselines by name) for AWQ int4 G=128."""
    g = tf.GraphBuilder(f"w4a16_{m}x{k}x{n}")
    w = tf.dequantize_awq(g.input("qw", (k, n // 8), "i32"), g.input("qz", (k // 128, n // 8), "i32"),
                          g.input("s", (k // 128, n), "f16"))
    g.output("y", g.input("x", (m, k), "f16") @ w)
    rng = np.random.default_rng(m * 7 + k + n)
    q, z = rng.integers(0, 16, (k, n)), rng.integers(0, 16, (k // 128, n))
    s = rng.uniform(0.5, 1.5, (k // 128, n)) / (8 * np.sqrt(k))
    pack = np.asarray(tf.AWQ_PACK_ORDER) * 4

    def words(codes: np.ndarray) -> Any:
        packed = (codes.reshape(codes.shape[0], -1, 8) << pack).sum(-1).astype(np.uint32).view(np.int32)
        return torch.from_numpy(packed).to(dev)

    ws = torch.from_numpy((q - np.repeat(z, 128, 0)) * np.repeat(s.astype(np.float16).astype(np.float64), 128, 0))
    x = torch.randn(m, k, device=dev).half()
    w32 = ws.to(dev).float()
    w16 = w32.half()
    ins = {"qw": words(q), "qz": words(z), "s": torch.from_numpy(s).to(dev).half(), "x": x}
    return g.build(), ins, x.float() @ w32, {"f16": lambda: x @ w16}


def fp8_case(tf: Any, torch: Any, m: int, k: int, n: int, dev: str) -> tuple[Any, dict[str, Any], Any, dict[str, Any]]:
    """Block-scaled e4m3: xq [M, K] with sx [M, K/128]; a checkpoint's wq [N, K] with sw [N/128, K/128]."""
    g = tf.GraphBuilder(f"fp8_{m}x{k}x{n}")
    x = tf.dequantize_fp8_act(g.input("xq", (m, k), "f8e4m3"), g.input("sx", (m, k // 128), "f32"))
    w = tf.dequantize_fp8_block(g.input("wq", (n, k), "f8e4m3"), g.input("sw", (n // 128, k // 128), "f32"),
                                out_dtype="f32", layout="nk")
    g.output("y", tf.matmul(x, w, out_dtype="bf16"))
    xq = (torch.randn(m, k, device=dev) * 64).to(torch.float8_e4m3fn)
    wq = (torch.randn(n, k, device=dev) * 64).to(torch.float8_e4m3fn)
    sx = torch.rand(m, k // 128, device=dev) / (64 * k ** 0.25) + 1e-4
    sw = torch.rand(n // 128, k // 128, device=dev) / (64 * k ** 0.25) + 1e-4
    xf = xq.float() * sx.repeat_interleave(128, 1)
    wf = wq.float() * sw.repeat_interleave(128, 0).repeat_interleave(128, 1)
    a16, b16 = xf.half(), wf.half().t()
    base: dict[str, Any] = {"f16": lambda: a16 @ b16}
    want = xf @ wf.t()
    mm = scaled_mm(torch, xq, sx, wq, sw, want)
    if mm is not None:
        base["scaled_mm"], base["scaled_mm_recipe"] = mm
    return g.build(), {"xq": xq, "sx": sx, "wq": wq, "sw": sw}, want, base


def scaled_mm(torch: Any, xq: Any, sx: Any, wq: Any, sw: Any, want: Any) -> tuple[Any, str] | None:
    """torch._scaled_mm on the same fp8 data: blockwise 1x128 / 128x128 scales when this torch computes the
    same product with them, else rowwise, else tensorwise scales (timing only); None when none runs."""
    m, k = xq.shape
    n = wq.shape[0]
    sx_col = sx.t().contiguous().t()  # the blockwise recipe wants the activation scales M-major
    tries = [("blockwise", sx_col, sw.t().contiguous().t()), ("blockwise", sx, sw),
             ("rowwise (timing only)", sx[:, :1].contiguous(), sw[:, :1].repeat_interleave(128, 0).t().contiguous()),
             ("tensorwise (timing only)", sx.max().reshape(()), sw.max().reshape(()))]
    for recipe, a_s, b_s in tries:
        def call(a_s: Any = a_s, b_s: Any = b_s) -> Any:
            return torch._scaled_mm(xq, wq.t(), scale_a=a_s, scale_b=b_s, out_dtype=torch.bfloat16)
        try:
            out = call()
        except Exception:  # noqa: BLE001 - a recipe this torch or this shape does not take: try the next
            continue
        if tuple(out.shape) != (m, n):
            continue
        if recipe == "blockwise" and float((out.float() - want).norm() / want.norm()) > 2e-2:
            continue  # it ran but read the scales some other way
        return call, recipe
    return None


def w8a8_case(tf: Any, torch: Any, m: int, k: int, n: int, dev: str) -> tuple[Any, dict[str, Any], Any, dict[str, Any]]:
    """tf.w8a8_linear: x f16 quantized per token in the graph, q_w i8 [K, N] with s_w f32 [N]."""
    g = tf.GraphBuilder(f"w8a8_{m}x{k}x{n}")
    g.output("y", tf.w8a8_linear(g.input("x", (m, k), "f16"), g.input("q_w", (k, n), "i8"),
                                 g.input("s_w", (n,), "f32")))
    x = torch.randn(m, k, device=dev).half()
    qw = torch.randint(-127, 128, (k, n), device=dev, dtype=torch.int8)
    sw = torch.rand(n, device=dev) / (64 * k ** 0.5) + 1e-5
    wf = qw.float() * sw
    w16 = wf.half()
    return g.build(), {"x": x, "q_w": qw, "s_w": sw}, x.float() @ wf, {"f16": lambda: x @ w16}


def has_quantize() -> bool:
    """Whether this tree has the `quantize` op (the W8A8 branch)."""
    from tilefuse.ir.ops import Op

    return hasattr(Op, "QUANTIZE")


CASES = {"w4a16": awq_case, "fp8": fp8_case, "w8a8": w8a8_case}
TOLERANCE = {"w4a16": 1e-2, "fp8": 1e-2, "w8a8": 3e-2}  # relative Frobenius error vs the f32 reference


def timer(env: dict[str, Any], fn: Any) -> tuple[float, str]:
    """(milliseconds, how): a CUDA-graph replay where the capture works, else do_bench; the dry run's clock."""
    if env["device"] != "cuda":
        return env["bench"](fn), "wall clock"
    from triton.testing import do_bench, do_bench_cudagraph

    try:
        return float(do_bench_cudagraph(fn, return_mode="median")), "cuda graph"
    except Exception:  # noqa: BLE001 - a capture the call does not survive: time the launches
        return float(do_bench(fn, return_mode="median")), "do_bench"


def peak_mb(env: dict[str, Any], fn: Any) -> float | None:
    """MiB torch's allocator held at most during one call of `fn`, beyond what was allocated before it."""
    if env["device"] != "cuda":
        return None
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def check(fmt: str, cg: Any, ins: dict[str, Any], got: Any, want: Any, dry: bool) -> float:
    """Relative error of our output vs the f32 reference (and, in the dry run, the float64 evaluator)."""
    rel = float((got.float() - want).norm() / want.norm())
    assert rel < TOLERANCE[fmt], f"{cg.graph.name}: relative error {rel} vs torch's f32 reference"
    if dry:
        from tilefuse.ir.reference import evaluate

        ref = evaluate(cg.graph, ins)["y"]
        err = float(np.linalg.norm(got.float().cpu().numpy() - ref) / np.linalg.norm(ref))
        assert err < TOLERANCE[fmt], f"{cg.graph.name}: relative error {err} vs the float64 reference"
    return rel


def run_case(env: dict[str, Any], fmt: str, model: str, layer: str, k: int, n: int, m: int) -> dict[str, Any]:
    """One format x shape x M: check, then time ours and each baseline, in the same run."""
    import torch

    import tilefuse as tf

    g, ins, want, base = CASES[fmt](tf, torch, m, k, n, env["device"])
    cg = tf.compile(g, target=env["target"], db=None, cost_model=None)
    rel = check(fmt, cg, ins, cg(**ins), want, env["target"] == "interp")
    row: dict[str, Any] = {"case": f"{fmt} {model}/{layer} M={m} K={k} N={n}", "format": fmt, "model": model,
                           "layer": layer, "M": m, "K": k, "N": n, "rel_err": rel,
                           "kernels": [f"{c.spec.family} {c.config.to_json()}" for c in cg.kernels]}
    row["tilefuse_ms"], row["timer"] = timer(env, lambda: cg(**ins))
    row["tilefuse_peak_mb"] = peak_mb(env, lambda: cg(**ins))
    for name in ("f16", "scaled_mm"):
        if name in base:
            row[f"{name}_ms"], _ = timer(env, base[name])
            row[f"vs_{name}"] = row[f"{name}_ms"] / row["tilefuse_ms"]
            row[f"{name}_peak_mb"] = peak_mb(env, base[name])
    if fmt == "fp8":
        row["scaled_mm_recipe"] = base.get("scaled_mm_recipe", "none ran on this torch/device")
    row["tflops"] = 2.0 * m * k * n / row["tilefuse_ms"] / 1e9
    return row


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 13's targets: the worst ratio among the rows each applies to."""
    out = []
    for fmt, (ratio, applies, goal) in TARGETS.items():
        seen = [r[ratio] for r in rows if r["format"] == fmt and applies(r["M"]) and ratio in r]
        worst = min(seen) if seen else None
        out.append({"format": fmt, "ratio": ratio, "goal": goal, "worst": worst,
                    "met": None if worst is None else worst >= goal})
    return out


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="result file (default: bench/results/quant_gemm-<device>.json on a GPU)")
    ap.add_argument("--target", help="sm_80 or sm_90 (default: the device's)")
    ap.add_argument("--quick", action="store_true", help="Llama-2-7b gate+up at M in {1, 16, 512}")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: the interpreter on CPU tensors at toy sizes")
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    args = ap.parse_args()
    env = gpu_env.setup(args, "bench/quant_gemm.py")
    size = "dry" if args.dry_run else "quick" if args.quick else "full"
    formats = list(args.formats)
    if "w8a8" in formats and not has_quantize():
        print("w8a8: skipped: this tree has no `quantize` op yet (the W8A8 branch adds it)", flush=True)
        formats.remove("w8a8")
    rows = []
    for model, layer, (k, n) in SIZES[size]["shapes"]:
        for m in SIZES[size]["m"]:
            for fmt in formats:
                rows.append(run_case(env, fmt, model, layer, k, n, m))
                print(json.dumps(rows[-1]), flush=True)
    goals = targets(rows)
    for t in goals:
        print(f"target {t['format']} {t['ratio']} >= {t['goal']}: worst {t['worst']} -> "
              f"{'met' if t['met'] else 'not met' if t['met'] is False else 'no rows'}", flush=True)
    path = args.json or (None if args.dry_run else f"bench/results/quant_gemm-{device_slug(env['name'])}.json")
    if path:
        write(path, env, size, rows, goals, formats)


def write(path: str, env: dict[str, Any], size: str, rows: list[dict[str, Any]], goals: list[dict[str, Any]],
          formats: list[str]) -> None:
    import torch
    import triton

    import tilefuse

    meta = {"device": env["name"], "target": env["target"], "torch": torch.__version__, "triton": triton.__version__,
            "numpy": np.__version__, "tilefuse": tilefuse.__version__, "date": datetime.date.today().isoformat(),
            "host": platform.node(), "size": "dry-run" if size == "dry" else size, "formats": formats,
            "cuda": getattr(torch.version, "cuda", None)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"benchmark": "quant_gemm", "meta": meta, "targets": goals, "rows": rows},
                                     indent=2))


if __name__ == "__main__":
    main()
