"""GPU: attention forward vs torch SDPA (flash backend), and block-sparse / streaming speedups.

Run on a machine with a CUDA GPU (it has not run in the CPU-only sessions that wrote it):

    python bench/attention.py --json bench/results/attention-<device>.json [--quick]

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

Timing: triton.testing.do_bench (CUDA events, median). Every output is checked first: dense against
SDPA, sparse ones on sampled query rows against a masked softmax computed in f32.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from typing import Any

FA_SHAPES = [(32, 512), (16, 1024), (8, 2048), (4, 4096), (2, 8192), (1, 16384)]


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


def backward_rows(target: str, shapes: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Section 3: dense backward vs the SDPA flash backward."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    import tilefuse as tf

    rows: list[dict[str, Any]] = []
    for d in (64, 128):
        h = 2048 // d
        for b, s in shapes:
            for causal in (False, True):
                q, k, v, do = (torch.randn(b, h, s, d, device="cuda", dtype=torch.float16) for _ in range(4))
                g = tf.GraphBuilder("attn")
                qi, ki, vi = (g.input(n, (b, h, s, d), "f16") for n in "qkv")
                out, lse = tf.attention(qi, ki, vi, mask_mod=tf.causal_mask(s, s) if causal else None,
                                        return_lse=True)
                g.output("out", out)
                g.output("lse", lse)
                o, lse_t = tf.compile(g.build(), target=target)(q, k, v)
                cg = tf.compile(bwd_graph(b, h, s, d, causal), target=target)
                qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    ref_out = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                ref = torch.autograd.grad(ref_out, (qg, kg, vg), do, retain_graph=True)
                t_sdpa = do_bench(lambda: torch.autograd.grad(ref_out, (qg, kg, vg), do, retain_graph=True),
                                  return_mode="median")
                got = cg(q, k, v, o, do, lse_t)
                err = max(float((x.float() - y.float()).abs().max()) / max(1.0, float(y.float().abs().max()))
                          for x, y in zip(got, ref))
                assert err < 5e-2, f"backward d={d} b={b} s={s} causal={causal}: relative error {err} vs SDPA"
                t_tf = do_bench(lambda: cg(q, k, v, o, do, lse_t), return_mode="median")
                fl = 2.5 * 4.0 * b * s * s * h * d / (2 if causal else 1)
                rows.append({"case": "dense backward", "hdim": d, "batch": b, "seqlen": s, "causal": causal,
                             "tilefuse_tflops": fl / t_tf / 1e9, "sdpa_tflops": fl / t_sdpa / 1e9,
                             "ratio": t_sdpa / t_tf, "max_rel_err": err, "config": cg.kernels[0].config.to_json()})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:  # noqa: PLR0915 - one linear script
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--target", help="sm_80 or sm_90 (default: the device's)")
    ap.add_argument("--quick", action="store_true", help="fewer shapes (smoke run)")
    args = ap.parse_args()
    import torch
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    import tilefuse as tf

    assert torch.cuda.is_available(), "bench/attention.py needs a CUDA GPU"
    major, minor = torch.cuda.get_device_capability()
    target = args.target or ("sm_90" if major >= 9 else "sm_80")
    dev = torch.cuda.get_device_name()
    rows: list[dict[str, Any]] = []

    def randn(*shape: int) -> Any:
        return torch.randn(*shape, device="cuda", dtype=torch.float16)

    # ---- 1. dense forward vs SDPA (flash) -------------------------------------------------------
    shapes = FA_SHAPES[2:4] if args.quick else FA_SHAPES
    for d in (64, 128):
        h = 2048 // d
        for b, s in shapes:
            for causal in (False, True):
                g = attn_graph(b, h, s, d, (lambda s=s: tf.causal_mask(s, s)) if causal else None)
                cg = tf.compile(g, target=target)
                q, k, v = randn(b, h, s, d), randn(b, h, s, d), randn(b, h, s, d)
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    t_sdpa = do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(
                        q, k, v, is_causal=causal), return_mode="median")
                out = cg(q, k, v)
                err = float((out.float() - ref.float()).abs().max())
                assert err < 2e-2, f"dense d={d} b={b} s={s} causal={causal}: max error {err} vs SDPA"
                t_tf = do_bench(lambda: cg(q, k, v), return_mode="median")
                fl = 4.0 * b * s * s * h * d / (2 if causal else 1)
                rows.append({"case": "dense", "hdim": d, "batch": b, "seqlen": s, "causal": causal,
                             "tilefuse_tflops": fl / t_tf / 1e9, "sdpa_tflops": fl / t_sdpa / 1e9,
                             "ratio": t_sdpa / t_tf, "max_err": err, "config": cg.kernels[0].config.to_json()})
                print(json.dumps(rows[-1]), flush=True)

    # ---- 3. dense backward vs SDPA (flash) backward (run before the long-context section) ------------
    rows += backward_rows(target, shapes)

    # ---- 2. block-sparse and streaming at long context --------------------------------------------
    h, d, blk = 32, 128, 128
    for s in ((32768,) if args.quick else (32768, 65536)):
        q, k, v = randn(1, h, s, d), randn(1, h, s, d), randn(1, h, s, d)
        check_rows = torch.cat([torch.arange(0, 128), torch.arange(s // 2, s // 2 + 64), torch.arange(s - 128, s)])
        check_rows = check_rows.cuda()
        qi = check_rows[:, None]
        kj = torch.arange(s, device="cuda")[None, :]

        def run(name: str, g: Any, inputs: tuple[Any, ...], keep: Any, base_ms: float | None) -> float:
            cg = tf.compile(g, target=target)
            out = cg(*inputs)
            want = rows_reference(q, k, v, check_rows, keep)
            err = float((out[:, :, check_rows].float() - want).abs().max())
            assert err < 2e-2, f"{name} s={s}: max error {err} on sampled rows"
            ms = do_bench(lambda: cg(*inputs), return_mode="median")
            ck = cg.kernels[0]
            density = ck.spec.sparsity(ck.config.int("BLOCK_M"), ck.config.int("BLOCK_N")).density()
            row = {"case": name, "seqlen": s, "heads": h, "hdim": d, "ms": ms, "block_density": density,
                   "config": ck.config.to_json()}
            if base_ms is not None:
                row["speedup_vs_dense"] = base_ms / ms
            rows.append(row)
            print(json.dumps(row), flush=True)
            return ms

        dense_ms = run("dense (non-causal)", attn_graph(1, h, s, d), (q, k, v), torch.ones_like(kj, dtype=torch.bool),
                       None)
        causal = kj <= qi
        causal_ms = run("dense causal", attn_graph(1, h, s, d, lambda s=s: tf.causal_mask(s, s)), (q, k, v), causal,
                        None)
        nb = -(-s // blk)
        gen = torch.Generator(device="cuda").manual_seed(s)
        for density in (0.5, 0.25, 0.1):
            bm = torch.rand(1, h, nb, nb, device="cuda", generator=gen) < density
            bm[..., torch.arange(nb), torch.arange(nb)] = True  # every query block sees its own block
            g = attn_graph(1, h, s, d, lambda t: tf.block_mask(3, t, blk, blk), (("bm", tuple(bm.shape), "bool"),))
            keep = bm[:, :, check_rows // blk][..., kj[0] // blk]
            run(f"block-sparse {density}", g, (q, k, v, bm), keep, dense_ms)
        stream = (kj <= qi) & ((kj < 64) | (kj > qi - 256))
        run("streaming (64 sink + 256 local)", attn_graph(1, h, s, d, lambda s=s: tf.streaming_mask(64, 256, s, s)),
            (q, k, v), stream, causal_ms)
        lserve = tf.per_head_mask([tf.causal_mask(s, s)] * (h // 2) + [tf.streaming_mask(64, 256, s, s)] * (h // 2))
        keep = torch.stack([causal] * (h // 2) + [stream] * (h // 2))[None]
        run("LServe half streaming heads", attn_graph(1, h, s, d, lambda m=lserve: m), (q, k, v), keep, causal_ms)

    if args.json:
        meta = {"device": dev, "target": target, "torch": torch.__version__, "triton": triton.__version__,
                "date": datetime.date.today().isoformat(), "host": platform.node()}
        with open(args.json, "w") as f:
            json.dump({"benchmark": "attention", "meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
