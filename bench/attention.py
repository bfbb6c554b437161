"""GPU: attention forward vs torch SDPA (flash backend), and block-sparse / streaming speedups.

Run on a machine with a CUDA GPU (it has not run in the CPU-only sessions that wrote it):

    python bench/attention.py --json bench/results/attention-<device>.json [--quick | --dry-run]

1. Dense forward on the FlashAttention benchmark shapes: hidden 2048 (32 heads x 64, 16 x 128),
   (batch, seqlen) in (32,512) (16,1k) (8,2k) (4,4k) (2,8k) (1,16k), causal and not; TFLOP/s with
   FLOPs = 4 B S^2 H D (half when causal) and the ratio to SDPA. Target on H100: >= 1.0x at hdim 128,
   S >= 2k.
2. Block-sparse at densities 0.5 / 0.25 / 0.1 (random 128 x 128 block masks, a block-mask tensor
   read at run time) and streaming heads (64 sink + 256 local tokens) at 32k and 64k tokens: speedup
   over our dense kernel (target >= 0.8 / density); LServe-style layer with half the heads streaming.
3. Dense backward (attention_bwd: dq, dk, dv from q, k, v, out, dout, lse) on the same shapes vs the SDPA
   flash backward (torch.autograd.grad of the flash forward's output), TFLOP/s with FLOPs = 2.5 x the
   forward's, and the ratio. Our out / lse come from our forward kernel (return_lse); gradients are
   checked against SDPA's first.

--quick: one shape (4, 2048) per head dim, 16k tokens and one density in section 2 (gpu-check runs
this, about a minute on an H100). --dry-run: no GPU needed; every section under the Triton interpreter
on CPU tensors at toy sizes, against SDPA's math backend in f32, wall-clock timed (the numbers say
nothing about speed; the run proves the script works before GPU time is spent on it).

Timing: triton.testing.do_bench (CUDA events, median). Every output is checked first: dense against
SDPA, sparse ones on sampled query rows against a masked softmax computed in f32. Kernels use the
family defaults (no tuning database or cost model is opened).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from typing import Any

import gpu_env  # bench/gpu_env.py: the scripts run by path, so their folder is on sys.path

FA_SHAPES = [(32, 512), (16, 1024), (8, 2048), (4, 4096), (2, 8192), (1, 16384)]
# shapes (batch, seqlen); hidden = heads x hdim; section 2: seqlens, heads, hdim, block, densities, sink, local
PLANS: dict[str, dict[str, Any]] = {
    "full": {"shapes": FA_SHAPES, "hdims": (64, 128), "hidden": 2048, "long": (32768, 65536), "heads": 32,
             "hdim": 128, "blk": 128, "densities": (0.5, 0.25, 0.1), "sink": 64, "local": 256},
    "quick": {"shapes": [(4, 2048)], "hdims": (64, 128), "hidden": 2048, "long": (16384,), "heads": 32,
              "hdim": 128, "blk": 128, "densities": (0.25,), "sink": 64, "local": 256},
    "dry": {"shapes": [(1, 96)], "hdims": (32,), "hidden": 64, "long": (128,), "heads": 2, "hdim": 32,
            "blk": 32, "densities": (0.5,), "sink": 16, "local": 32},
}


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Device, target, timer and plan for this run."""
    env = gpu_env.setup(args, "bench/attention.py")
    env["plan"] = PLANS["dry" if args.dry_run else "quick" if args.quick else "full"]
    return env


def compile_(env: dict[str, Any], g: Any) -> Any:
    import tilefuse as tf

    return tf.compile(g, target=env["target"], db=None, cost_model=None)


def sdpa(env: dict[str, Any], q: Any, k: Any, v: Any, causal: bool) -> Any:
    """SDPA's flash kernel on the GPU; its math backend in f32 on CPU (the dry run's reference)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fn = torch.nn.functional.scaled_dot_product_attention
    if env["device"] == "cuda":
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return fn(q, k, v, is_causal=causal)
    with sdpa_kernel(SDPBackend.MATH):
        return fn(q.float(), k.float(), v.float(), is_causal=causal)


def attn_graph(b: int, h: int, s: int, d: int, mask: Any = None, extra: tuple[Any, ...] = ()) -> Any:
    """attention over [b, h, s, d] f16; `mask(*extra_tensors)` gives the mask_mod."""
    import tilefuse as tf

    g = tf.GraphBuilder("attn")
    q, k, v = (g.input(n, (b, h, s, d), "f16") for n in "qkv")
    ext = [g.input(name, shape, dtype) for name, shape, dtype in extra]
    g.output("out", tf.attention(q, k, v, mask_mod=mask(*ext) if mask else None, extra=ext))
    return g.build()


def rows_reference(q: Any, k: Any, v: Any, rows: Any, keep: Any) -> Any:
    """out[:, :, rows] by a masked softmax in f32; keep [B|1, H|1, len(rows), S] bool."""
    import torch

    s = (q[:, :, rows].float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ v.float()


def bwd_graph(b: int, h: int, s: int, d: int, causal: bool) -> Any:
    """attention_bwd over [b, h, s, d] f16 with inputs q, k, v, out, dout, lse (lse f32)."""
    import tilefuse as tf

    g = tf.GraphBuilder("attn_bwd")
    q, k, v, o, do = (g.input(n, (b, h, s, d), "f16") for n in ("q", "k", "v", "out", "dout"))
    lse = g.input("lse", (b, h, s), "f32")
    mask = tf.causal_mask(s, s) if causal else None
    for name, t in zip(("dq", "dk", "dv"), tf.attention_backward(q, k, v, o, do, lse, mask_mod=mask)):
        g.output(name, t)
    return g.build()


def forward_rows(env: dict[str, Any]) -> list[dict[str, Any]]:
    """Section 1: dense forward vs SDPA (flash)."""
    import torch

    import tilefuse as tf

    plan, rows = env["plan"], []
    for d in plan["hdims"]:
        h = plan["hidden"] // d
        for b, s in plan["shapes"]:
            for causal in (False, True):
                g = attn_graph(b, h, s, d, (lambda s=s: tf.causal_mask(s, s)) if causal else None)
                cg = compile_(env, g)
                q, k, v = (torch.randn(b, h, s, d, device=env["device"], dtype=torch.float16) for _ in range(3))
                ref = sdpa(env, q, k, v, causal)
                t_sdpa = env["bench"](lambda: sdpa(env, q, k, v, causal))
                out = cg(q, k, v)
                err = float((out.float() - ref.float()).abs().max())
                assert err < 2e-2, f"dense d={d} b={b} s={s} causal={causal}: max error {err} vs SDPA"
                t_tf = env["bench"](lambda: cg(q, k, v))
                fl = 4.0 * b * s * s * h * d / (2 if causal else 1)
                rows.append({"case": "dense", "hdim": d, "batch": b, "seqlen": s, "causal": causal,
                             "tilefuse_tflops": fl / t_tf / 1e9, "sdpa_tflops": fl / t_sdpa / 1e9,
                             "ratio": t_sdpa / t_tf, "max_err": err, "config": cg.kernels[0].config.to_json()})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _forward_with_lse(env: dict[str, Any], b: int, h: int, s: int, d: int, causal: bool) -> Any:
    import tilefuse as tf

    g = tf.GraphBuilder("attn")
    qi, ki, vi = (g.input(n, (b, h, s, d), "f16") for n in "qkv")
    out, lse = tf.attention(qi, ki, vi, mask_mod=tf.causal_mask(s, s) if causal else None, return_lse=True)
    g.output("out", out)
    g.output("lse", lse)
    return compile_(env, g.build())


def backward_rows(env: dict[str, Any]) -> list[dict[str, Any]]:
    """Section 3: dense backward vs the SDPA flash backward."""
    import torch

    plan, rows = env["plan"], []
    for d in plan["hdims"]:
        h = plan["hidden"] // d
        for b, s in plan["shapes"]:
            for causal in (False, True):
                q, k, v, do = (torch.randn(b, h, s, d, device=env["device"], dtype=torch.float16) for _ in range(4))
                o, lse_t = _forward_with_lse(env, b, h, s, d, causal)(q, k, v)
                cg = compile_(env, bwd_graph(b, h, s, d, causal))
                qg, kg, vg = (t.detach().requires_grad_() if env["device"] == "cuda" else
                              t.float().requires_grad_() for t in (q, k, v))
                ref_out = sdpa(env, qg, kg, vg, causal)
                dout = do if env["device"] == "cuda" else do.float()
                ref = torch.autograd.grad(ref_out, (qg, kg, vg), dout, retain_graph=True)
                t_sdpa = env["bench"](lambda: torch.autograd.grad(ref_out, (qg, kg, vg), dout, retain_graph=True))
                got = cg(q, k, v, o, do, lse_t)
                err = max(float((x.float() - y.float()).abs().max()) / max(1.0, float(y.float().abs().max()))
                          for x, y in zip(got, ref))
                assert err < 5e-2, f"backward d={d} b={b} s={s} causal={causal}: relative error {err} vs SDPA"
                t_tf = env["bench"](lambda: cg(q, k, v, o, do, lse_t))
                fl = 2.5 * 4.0 * b * s * s * h * d / (2 if causal else 1)
                rows.append({"case": "dense backward", "hdim": d, "batch": b, "seqlen": s, "causal": causal,
                             "tilefuse_tflops": fl / t_tf / 1e9, "sdpa_tflops": fl / t_sdpa / 1e9,
                             "ratio": t_sdpa / t_tf, "max_rel_err": err, "config": cg.kernels[0].config.to_json()})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def long_context_rows(env: dict[str, Any], s: int) -> list[dict[str, Any]]:
    """Section 2 at `s` tokens: dense, causal, block-sparse, streaming and LServe-style layers."""
    import torch

    import tilefuse as tf

    plan, dev, rows = env["plan"], env["device"], []
    h, d, blk, sink, local = plan["heads"], plan["hdim"], plan["blk"], plan["sink"], plan["local"]
    q, k, v = (torch.randn(1, h, s, d, device=dev, dtype=torch.float16) for _ in range(3))
    check_rows = torch.cat([torch.arange(0, 128), torch.arange(s // 2, s // 2 + 64), torch.arange(s - 128, s)])
    check_rows = check_rows.clamp(0, s - 1).unique().to(dev)
    qi, kj = check_rows[:, None], torch.arange(s, device=dev)[None, :]

    def run(name: str, g: Any, inputs: tuple[Any, ...], keep: Any, base_ms: float | None) -> float:
        cg = compile_(env, g)
        out = cg(*inputs)
        err = float((out[:, :, check_rows].float() - rows_reference(q, k, v, check_rows, keep)).abs().max())
        assert err < 2e-2, f"{name} s={s}: max error {err} on sampled rows"
        ms = env["bench"](lambda: cg(*inputs))
        ck = cg.kernels[0]
        density = ck.spec.sparsity(ck.config.int("BLOCK_M"), ck.config.int("BLOCK_N")).density()
        row = {"case": name, "seqlen": s, "heads": h, "hdim": d, "ms": ms, "block_density": density,
               "config": ck.config.to_json()}
        if base_ms is not None:
            row["speedup_vs_dense"] = base_ms / ms
        rows.append(row)
        print(json.dumps(row), flush=True)
        return ms

    dense_ms = run("dense (non-causal)", attn_graph(1, h, s, d), (q, k, v), torch.ones_like(kj, dtype=torch.bool), None)
    causal = kj <= qi
    causal_ms = run("dense causal", attn_graph(1, h, s, d, lambda: tf.causal_mask(s, s)), (q, k, v), causal, None)
    nb = -(-s // blk)
    gen = torch.Generator(device=dev).manual_seed(s)
    for density in plan["densities"]:
        bm = torch.rand(1, h, nb, nb, device=dev, generator=gen) < density
        bm[..., torch.arange(nb), torch.arange(nb)] = True  # every query block sees its own block
        g = attn_graph(1, h, s, d, lambda t: tf.block_mask(3, t, blk, blk), (("bm", tuple(bm.shape), "bool"),))
        keep = bm[:, :, check_rows // blk][..., kj[0] // blk]
        run(f"block-sparse {density}", g, (q, k, v, bm), keep, dense_ms)
    stream = (kj <= qi) & ((kj < sink) | (kj > qi - local))
    streaming = attn_graph(1, h, s, d, lambda: tf.streaming_mask(sink, local, s, s))
    run(f"streaming ({sink} sink + {local} local)", streaming, (q, k, v), stream, causal_ms)
    lserve = tf.per_head_mask([tf.causal_mask(s, s)] * (h // 2) + [tf.streaming_mask(sink, local, s, s)] * (h // 2))
    keep = torch.stack([causal] * (h // 2) + [stream] * (h // 2))[None]
    run("LServe half streaming heads", attn_graph(1, h, s, d, lambda: lserve), (q, k, v), keep, causal_ms)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--target", help="sm_80 or sm_90 (default: the device's)")
    ap.add_argument("--quick", action="store_true", help="one shape per head dim, 16k tokens, one density")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: the interpreter on CPU tensors at toy sizes")
    args = ap.parse_args()
    env = setup(args)
    rows = forward_rows(env)
    rows += backward_rows(env)  # before the long-context section
    for s in env["plan"]["long"]:
        rows += long_context_rows(env, s)
    if args.json:
        import torch
        import triton

        meta = {"device": env["name"], "target": env["target"], "torch": torch.__version__,
                "triton": triton.__version__, "date": datetime.date.today().isoformat(), "host": platform.node(),
                "size": "dry-run" if args.dry_run else "quick" if args.quick else "full"}
        with open(args.json, "w") as f:
            json.dump({"benchmark": "attention", "meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
