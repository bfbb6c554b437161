"""GPU: Gaussian splatting forward (projection + degree-3 SH + tile binning + sort + rasterization) per
frame at 1080p, vs a torch implementation of the same pipeline in the same run, and vs gsplat when it
imports; feature splatting (C = 64 dense and LangSplatV2 sparse coefficients) against the same torch
rasterizer.

Run on a machine with a CUDA GPU (it has not run in the CPU-only session that wrote it):

    python bench/splat.py --json bench/results/splat-<device>.json [--quick | --dry-run]

Cases: N = 100k, 1M, 3M Gaussians of a synthetic scene (a cube seen by a 60-degree pinhole camera) at
1920x1080, SH degree 3. Per case: milliseconds per frame (triton.testing.do_bench, CUDA events, median),
the peak memory one frame allocates (torch.cuda.max_memory_allocated above what the inputs hold), and
the image's error against the torch pipeline (checked before timing). Targets (issue 15): >= 10x the
torch pipeline, and forward + backward >= 1.0x gsplat.

The rasterizer's intersection workspaces (keys, ids, sorted ids: 16 B per (tile, Gaussian) pair) are sized
from the scan's total, read back after the scan launch (kernels/splat/raster_spec.py), not for the worst
case N x tiles. Each row prints a memory estimate first: inputs, outputs and fixed workspaces plus 16 B per
intersection by the rectangle rule (counted with the torch projection; the ellipse test keeps fewer), next to
the old worst case; a case whose estimate would not fit in 80% of the device's free memory is skipped.

Backward ("train" rows): project + SH + rasterize + splat_backward (d_means3d with the SH view direction's
share, d_scales, d_quats, d_opacities, d_sh_coeffs) for a random image gradient, forward + backward per
frame, vs torch autograd of the torch pipeline and gsplat's rasterization() + backward when it imports
(--dry-run: checked against the float64 reference). The sort is torch.sort on the device (radix sort).

The torch pipeline: the projection, SH and rectangle binning vectorised; the per-pixel compositing as
(pixel, Gaussian) pairs of groups of tiles, ordered by pixel then depth, transmittance by a segmented
cumulative sum of log(1 - alpha), early termination by a segmented running count, colours by index_add.

--quick: the render at N = 100k only (gpu-check runs this: its builds and runs fit the 150 s a bench gets).
--dry-run: no GPU; every
stage under the Triton interpreter on CPU tensors at N = 200, 64x48, checked against the float64
reference (ir/reference.py) as well as the torch pipeline; wall-clock timed (the numbers say nothing
about speed; the run proves the script works before GPU time is spent on it), plus the full run's memory
plan: each 100k/1M/3M case's estimate at 1080p, computed on CPU tensors.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from typing import Any

import gpu_env  # bench/gpu_env.py: the scripts run by path, so their folder is on sys.path
import numpy as np

SIZES = {"full": {"n": (100_000, 1_000_000, 3_000_000), "wh": (1920, 1080), "feat_n": 100_000},
         "quick": {"n": (100_000,), "wh": (1920, 1080), "feat_n": 0},
         "dry": {"n": (200,), "wh": (64, 48), "feat_n": 200}}
TILE = 16


# ------------------------------------------------------------------------------------------ torch pipeline
def torch_project(means, scales, quats, view, k, w, h, near=0.01, eps2d=0.3):  # noqa: ANN001, ANN201
    """means2d, conics, depths, radii as project_gaussians (pinhole), vectorised."""
    import torch

    p = means @ view[:3, :3].T + view[:3, 3]
    z = p[:, 2]
    q = torch.nn.functional.normalize(quats, dim=-1)
    qw, qx, qy, qz = q.unbind(-1)
    rot = torch.stack([1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy),
                       2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx),
                       2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)], -1)
    rot = rot.view(-1, 3, 3)
    m = rot * scales[:, None, :]
    cov = view[:3, :3] @ (m @ m.transpose(1, 2)) @ view[:3, :3].T
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    tx = z * torch.clamp(p[:, 0] / z, -1.3 * 0.5 * w / fx, 1.3 * 0.5 * w / fx)
    ty = z * torch.clamp(p[:, 1] / z, -1.3 * 0.5 * h / fy, 1.3 * 0.5 * h / fy)
    zero = torch.zeros_like(z)
    jac = torch.stack([fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], -1).view(-1, 2, 3)
    c2 = jac @ cov @ jac.transpose(1, 2)
    a, b, c = c2[:, 0, 0] + eps2d, c2[:, 0, 1], c2[:, 1, 1] + eps2d
    det = a * c - b * b
    mid = 0.5 * (a + c)
    rad = torch.ceil(3 * torch.sqrt(mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))))
    u, v = fx * p[:, 0] / z + cx, fy * p[:, 1] / z + cy
    ok = (z >= near) & (det > 0) & torch.isfinite(rad) & (u + rad > 0) & (u - rad < w) & (v + rad > 0) & (v - rad < h)
    rad = torch.where(ok, rad, 0).int()
    conic = torch.stack([c / det, -b / det, a / det], -1) * ok[:, None]
    return torch.stack([u, v], -1) * ok[:, None], conic, z, rad


def torch_sh(sh, means, view):  # noqa: ANN001, ANN201
    """sh_to_color: degree from sh's K (1, 4, 9, 16), gsplat's basis, + 0.5 clamped at 0."""
    import torch

    d = torch.nn.functional.normalize(means + torch.linalg.solve(view[:3, :3], view[:3, 3]), dim=-1)
    x, y, z = d.unbind(-1)
    one = torch.ones_like(x)
    z2, c1, s1 = z * z, x * x - y * y, 2 * x * y
    tc, tb = -2.285228997322329 * z2 + 0.4570457994644658, 1.445305721320277 * z
    c2, s2 = x * c1 - y * s1, x * s1 + y * c1
    basis = [0.2820947917738781 * one, -0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x,
             0.5462742152960395 * s1, -1.092548430592079 * z * y, 0.9461746957575601 * z2 - 0.3153915652525201,
             -1.092548430592079 * z * x, 0.5462742152960395 * c1, -0.5900435899266435 * s2, tb * s1, tc * y,
             z * (1.865881662950577 * z2 - 1.119528997770346), tc * x, tb * c1, -0.5900435899266435 * c2]
    return torch.clamp((torch.stack(basis[:sh.shape[1]], -1)[:, :, None] * sh).sum(1) + 0.5, min=0.0)


def torch_rasterize(m2d, con, col, opac, dep, rad, w, h, bg, tile_group=256):  # noqa: ANN001, ANN201
    """image [H, W, C] by the reference's rules, tiles taken tile_group at a time to bound memory."""
    import torch

    gx, gy = -(-w // TILE), -(-h // TILE)
    r = rad.float()
    x0 = torch.clamp((m2d[:, 0] - r) / TILE, 0, gx).int()
    y0 = torch.clamp((m2d[:, 1] - r) / TILE, 0, gy).int()
    x1 = torch.clamp((m2d[:, 0] + r + TILE - 1) / TILE, 0, gx).int()
    y1 = torch.clamp((m2d[:, 1] + r + TILE - 1) / TILE, 0, gy).int()
    cnt = torch.where(rad > 0, (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0), 0)
    gid = torch.repeat_interleave(torch.arange(len(cnt), device=m2d.device), cnt)
    j = torch.arange(len(gid), device=m2d.device) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
    ws = (x1 - x0).clamp(min=1)[gid]
    tid = (y0[gid] + j // ws) * gx + x0[gid] + j % ws
    order = torch.argsort(tid.long() * (len(cnt) + 1) + torch.argsort(torch.argsort(dep, stable=True))[gid])
    tid, gid = tid[order], gid[order]
    img = torch.zeros(h * w, col.shape[1], device=m2d.device)
    trans = torch.ones(h * w, device=m2d.device)
    pix = torch.arange(TILE * TILE, device=m2d.device)
    for t0 in range(0, gx * gy, tile_group):
        sel = (tid >= t0) & (tid < t0 + tile_group)
        tg, gg = tid[sel], gid[sel]
        px = ((tg % gx) * TILE)[:, None] + pix % TILE
        py = ((tg // gx) * TILE)[:, None] + pix // TILE
        inside = (px < w) & (py < h)
        dx, dy = m2d[gg, 0, None] - (px + 0.5), m2d[gg, 1, None] - (py + 0.5)
        power = -0.5 * (con[gg, 0, None] * dx * dx + con[gg, 2, None] * dy * dy) - con[gg, 1, None] * dx * dy
        alpha = torch.clamp(opac[gg, None] * torch.exp(power), max=0.99)
        live = inside & (power <= 0) & (alpha >= 1 / 255)
        pid = (py * w + px)[live]
        a, g2 = alpha[live], gg[:, None].expand_as(live)[live]
        # pairs in (pixel, depth) order: a stable sort by pixel keeps the depth order within each pixel
        o = torch.argsort(pid, stable=True)
        pid, a, g2 = pid[o], a[o], g2[o]
        start = torch.ones_like(pid, dtype=torch.bool)
        start[1:] = pid[1:] != pid[:-1]
        seg = torch.cumsum(start, 0) - 1
        # segmented prefix sums of log(1 - alpha) in float64 (a float32 running sum over a whole group loses
        # the digits each pixel needs); T only falls, so the pairs kept are those with T after them >= 1e-4
        lg = torch.log1p(-a.double())
        cs = torch.cumsum(lg, 0)
        base = (cs - lg)[start][seg]
        t_incl = torch.exp(cs - base).float()
        keep = t_incl >= 1e-4
        wgt = torch.where(keep, a * torch.exp(cs - lg - base).float(), 0.0)
        img.index_add_(0, pid, wgt[:, None] * col[g2])
        trans.scatter_reduce_(0, pid, torch.where(keep, t_incl, 2.0), reduce="amin")
    return (img + trans[:, None] * bg).view(h, w, -1), trans.view(h, w)


def torch_pipeline(ins: dict[str, Any], w: int, h: int) -> Any:
    m2d, con, dep, rad = torch_project(ins["means"], ins["scales"], ins["quats"], ins["viewmat"], ins["K"], w, h)
    col = torch_sh(ins["sh"], ins["means"], ins["viewmat"])
    import torch

    return torch_rasterize(m2d, con, col, ins["opacities"], dep, rad, w, h, torch.zeros(3, device=m2d.device))[0]


# ------------------------------------------------------------------------------------------------ cases
def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Device, target, timer and sizes for this run."""
    env = gpu_env.setup(args, "bench/splat.py")
    env["sizes"] = SIZES["dry" if args.dry_run else "quick" if args.quick else "full"]
    return env


def scene_tensors(env: dict[str, Any], n: int, w: int, h: int, sh_values: bool = True) -> dict[str, Any]:
    """A synthetic scene with degree-3 SH as device tensors (render_graph's inputs). Gaussians shrink as
    n grows (scales x 0.2 (1e5 / n)^(1/3)), so that a frame's coverage stays like a real scene's. Without
    `sh_values` the SH tensor is left uninitialised (a memory plan needs only its size)."""
    import torch

    from tilefuse.builders.splat_scene import Scene, scene_inputs, synthetic_scene

    s, cam = synthetic_scene(n, seed=0, width=w, height=h)
    rest = np.random.default_rng(1).standard_normal((n, 15, 3)).astype(np.float32) * 0.2 if sh_values else None
    shrink = 0.2 * (1e5 / n) ** (1 / 3) if n > 1000 else 1.0
    s = Scene(s.means, (s.scales * shrink).astype(np.float32), s.quats, s.opacities, s.colors, rest)
    if not sh_values:
        arrays = scene_inputs(s, cam, sh=False)
        del arrays["colors"]
        return {**{k: torch.from_numpy(v) for k, v in arrays.items()}, "sh": torch.empty((n, 16, 3))}
    return {k: torch.from_numpy(v).to(env["device"]) for k, v in scene_inputs(s, cam, sh=True).items()}


def workspace_bytes(n: int, w: int, h: int) -> int:
    """The rasterizer's intersection workspaces at their worst-case size (keys, ids, sorted ids)."""
    tiles = -(-w // TILE) * -(-h // TILE)
    return n * tiles * (8 + 4 + 4) + n * 8 + tiles * 8


def memory_estimate(ins: dict[str, Any], w: int, h: int, backward: bool = False) -> dict[str, Any]:
    """Bytes one frame needs: inputs, the projection's outputs, the image, the fixed workspaces and 16 B per
    intersection by the rectangle rule (the scan's total is at most this: the ellipse test keeps fewer);
    the backward bins again and adds gradient buffers of the inputs' size."""
    import torch

    n = ins["means"].shape[0]
    m2d, _, _, rad = torch_project(ins["means"], ins["scales"], ins["quats"], ins["viewmat"], ins["K"], w, h)
    gx, gy = -(-w // TILE), -(-h // TILE)
    r = rad.float()
    span = [torch.clamp((m2d[:, i] + r + TILE - 1) / TILE, 0, g).int() - torch.clamp((m2d[:, i] - r) / TILE, 0, g).int()
            for i, g in ((0, gx), (1, gy))]
    pairs = int(torch.where(rad > 0, span[0].clamp(min=0) * span[1].clamp(min=0), 0).sum())
    inputs = sum(t.numel() * t.element_size() for t in ins.values())
    # counts and offsets, the projection's outputs, the image and T
    fixed = n * (8 + 12 + 4 + 4 + 12) + gx * gy * 8 + h * w * 16
    total = inputs + fixed + 16 * pairs + (inputs + h * w * 20 if backward else 0)
    return {"intersections_rect": pairs, "estimate_bytes": total,
            "worst_case_workspace_bytes": workspace_bytes(n, w, h)}


def fits(env: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether the row's memory estimate fits in 80% of the free device memory (always on CPU); prints it."""
    print(json.dumps({"case": row["case"], **row["memory"]}), flush=True)
    if env["device"] != "cuda":
        return True
    import torch

    free = torch.cuda.mem_get_info()[0]
    if row["memory"]["estimate_bytes"] <= 0.8 * free:
        return True
    row["skipped"] = f"estimated {row['memory']['estimate_bytes'] / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    print(json.dumps(row), flush=True)
    return False


def peak_bytes(env: dict[str, Any], fn: Any) -> int | None:
    """Bytes one call of `fn` allocates at its peak beyond what is allocated before (None on CPU)."""
    if env["device"] != "cuda":
        return None
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - before)


def gsplat_row(env: dict[str, Any], ins: dict[str, Any], w: int, h: int, image: Any) -> dict[str, Any]:
    """gsplat's rasterization() on the same scene: ms per frame and the mean |difference| to our image."""
    try:
        import gsplat
    except ImportError:
        return {"gsplat": "not importable"}
    if env["device"] != "cuda":
        return {"gsplat": "needs CUDA"}

    def run() -> Any:
        return gsplat.rasterization(ins["means"], ins["quats"], ins["scales"], ins["opacities"], ins["sh"],
                                    ins["viewmat"][None], ins["K"][None], w, h, sh_degree=3, packed=False)[0][0]

    diff = float((run() - image).abs().mean())
    return {"gsplat_ms": env["bench"](run), "gsplat_peak_bytes": peak_bytes(env, run), "gsplat_mean_abs_diff": diff}


def render_row(env: dict[str, Any], n: int) -> dict[str, Any]:
    """One frame of the render pipeline at n Gaussians: tilefuse vs torch (and gsplat)."""
    import tilefuse as tf
    from tilefuse.builders.splat_scene import render_graph

    w, h = env["sizes"]["wh"]
    row: dict[str, Any] = {"case": f"render N={n} {w}x{h} sh3"}
    ins = scene_tensors(env, n, w, h)
    row["memory"] = memory_estimate(ins, w, h)
    if not fits(env, row):
        return row
    graph = render_graph(n, w, h, sh_degree=3)
    cg = tf.compile(graph, target=env["target"], db=None, cost_model=None)
    ours = cg(**ins)[0]
    want = torch_pipeline(ins, w, h)
    err = float((ours - want).abs().max())
    assert err < (2e-3 if env["device"] == "cpu" else 2e-2), f"{row['case']}: max |ours - torch| = {err}"
    if env["device"] == "cpu":  # the dry run checks the float64 reference too
        from tilefuse.ir.reference import evaluate

        ref = evaluate(graph, {k: v.numpy() for k, v in ins.items()})["image"]
        row["ref_max_err"] = float(np.abs(ours.numpy() - ref).max())
        assert row["ref_max_err"] < 1e-3, row
    row.update({"tilefuse_ms": env["bench"](lambda: cg(**ins)),
                "torch_ms": env["bench"](lambda: torch_pipeline(ins, w, h)),
                "tilefuse_peak_bytes": peak_bytes(env, lambda: cg(**ins)),
                "torch_peak_bytes": peak_bytes(env, lambda: torch_pipeline(ins, w, h)), "max_abs_err_vs_torch": err,
                "configs": {k.spec.name: k.config.to_json() for k in cg.kernels}})
    row["speedup_vs_torch"] = row["torch_ms"] / row["tilefuse_ms"]
    row.update(gsplat_row(env, ins, w, h, ours))
    print(json.dumps(row), flush=True)
    return row


GRADS = ("means3d", "scales", "quats", "opacities", "sh_coeffs")
TORCH_NAMES = {"means3d": "means", "scales": "scales", "quats": "quats", "opacities": "opacities", "sh_coeffs": "sh"}


def train_graph(n: int, w: int, h: int) -> Any:
    """project + degree-3 SH + rasterize + splat_backward for an input image gradient `gimg`."""
    import tilefuse as tf

    g = tf.GraphBuilder("splat_train_sh3")
    t = {k: g.input(k, s, "f32") for k, s in (("means", (n, 3)), ("scales", (n, 3)), ("quats", (n, 4)),
                                                ("opacities", (n,)), ("sh", (n, 16, 3)), ("viewmat", (4, 4)),
                                                ("K", (3, 3)), ("gimg", (h, w, 3)))}
    m2d, con, dep, rad = tf.project_gaussians(t["means"], t["scales"], t["quats"], t["opacities"], t["viewmat"],
                                              t["K"], width=w, height=h)
    col = tf.sh_to_color(t["sh"], t["means"], t["viewmat"])
    raster = tf.rasterize_gaussians(m2d, con, col, t["opacities"], dep, rad, width=w, height=h, last_contributor=True)
    grads = tf.splat_backward(raster, t["gimg"])
    g.output("image", raster[0])
    for name in GRADS:
        g.output(f"d_{name}", grads[name])
    return g.build()


def torch_train(ins: dict[str, Any], w: int, h: int) -> dict[str, Any]:
    """Gradients of sum(image * gimg) by torch autograd through the torch pipeline."""
    import torch

    x = {k: v.detach().clone().requires_grad_(k in TORCH_NAMES.values()) for k, v in ins.items() if k != "gimg"}
    img = torch_pipeline(x, w, h)
    grads = torch.autograd.grad((img * ins["gimg"]).sum(), [x[TORCH_NAMES[k]] for k in GRADS])
    return {f"d_{k}": g for k, g in zip(GRADS, grads)}


def gsplat_train(env: dict[str, Any], ins: dict[str, Any], w: int, h: int) -> dict[str, Any]:
    """gsplat's rasterization() forward + backward of the same loss: ms per frame."""
    try:
        import gsplat
    except ImportError:
        return {"gsplat": "not importable"}
    if env["device"] != "cuda":
        return {"gsplat": "needs CUDA"}
    x = {k: ins[k].detach().clone().requires_grad_(True) for k in ("means", "quats", "scales", "opacities", "sh")}

    def run() -> Any:
        img = gsplat.rasterization(x["means"], x["quats"], x["scales"], x["opacities"], x["sh"], ins["viewmat"][None],
                                   ins["K"][None], w, h, sh_degree=3, packed=False)[0][0]
        (img * ins["gimg"]).sum().backward()

    return {"gsplat_ms": env["bench"](run), "gsplat_peak_bytes": peak_bytes(env, run)}


def train_row(env: dict[str, Any], n: int) -> dict[str, Any]:
    """Forward + backward of one frame at n Gaussians: tilefuse vs torch autograd (and gsplat)."""
    import torch

    import tilefuse as tf

    w, h = env["sizes"]["wh"]
    row: dict[str, Any] = {"case": f"train N={n} {w}x{h} sh3"}
    ins = scene_tensors(env, n, w, h)
    ins["gimg"] = torch.randn(h, w, 3, generator=torch.Generator().manual_seed(2)).to(env["device"])
    row["memory"] = memory_estimate(ins, w, h, backward=True)
    if not fits(env, row):
        return row
    graph = train_graph(n, w, h)
    cg = tf.compile(graph, target=env["target"], db=None, cost_model=None)
    ours = cg.run(ins)
    theirs = torch_train(ins, w, h)
    row["rel_err_vs_torch"] = {k: float((ours[k] - v).abs().max() / v.abs().max().clamp(min=1e-30))
                               for k, v in theirs.items()}
    assert max(row["rel_err_vs_torch"].values()) < (1e-3 if env["device"] == "cpu" else 2e-2), row
    if env["device"] == "cpu":  # the dry run checks the float64 reference too
        from tilefuse.ir.reference import evaluate

        ref = evaluate(graph, {k: v.numpy() for k, v in ins.items()})
        row["ref_rel_err"] = {f"d_{k}": float(np.abs(ours[f"d_{k}"].numpy() - ref[f"d_{k}"]).max()
                                              / np.abs(ref[f"d_{k}"]).max()) for k in GRADS}
        assert max(row["ref_rel_err"].values()) < 1e-3, row
    row.update({"tilefuse_ms": env["bench"](lambda: cg.run(ins)),
                "torch_ms": env["bench"](lambda: torch_train(ins, w, h)),
                "tilefuse_peak_bytes": peak_bytes(env, lambda: cg.run(ins)),
                "torch_peak_bytes": peak_bytes(env, lambda: torch_train(ins, w, h))})
    row["speedup_vs_torch"] = row["torch_ms"] / row["tilefuse_ms"]
    row.update(gsplat_train(env, ins, w, h))
    if "gsplat_ms" in row:
        row["speedup_vs_gsplat"] = row["gsplat_ms"] / row["tilefuse_ms"]
    print(json.dumps(row), flush=True)
    return row


def plan_rows(env: dict[str, Any]) -> list[dict[str, Any]]:
    """--dry-run: the GPU run's memory plan, the estimate of each full-size case (1080p, the synthetic scene
    on CPU tensors) against the worst case the workspaces were sized for before, on an 80 GiB / 141 GiB card."""
    rows = []
    for n in SIZES["full"]["n"]:
        w, h = SIZES["full"]["wh"]
        ins = scene_tensors(env, n, w, h, sh_values=False)
        mem = memory_estimate(ins, w, h, backward=True)
        row = {"case": f"plan N={n} {w}x{h}", "memory": mem,
               "fits": {f"{gib} GiB": mem["estimate_bytes"] <= 0.8 * gib * 2**30 for gib in (80, 141)},
               "worst_case_fits": {f"{gib} GiB": mem["worst_case_workspace_bytes"] <= 0.8 * gib * 2**30
                                   for gib in (80, 141)}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def feature_rows(env: dict[str, Any]) -> list[dict[str, Any]]:
    """Feature splatting of the projected scene: C = 64 dense features, and 64-channel features from K = 4
    of L = 64 codebook rows (fused: no per-Gaussian vector), vs the torch rasterizer (which, for the
    sparse case, forms the per-Gaussian features first)."""
    import torch

    import tilefuse as tf

    n, (w, h) = env["sizes"]["feat_n"], env["sizes"]["wh"]
    if not n:
        return []
    scene = scene_tensors(env, n, w, h)
    m2d, con, dep, rad = torch_project(scene["means"], scene["scales"], scene["quats"], scene["viewmat"],
                                       scene["K"], w, h)
    gen = torch.Generator(device="cpu").manual_seed(0)
    base = {"m2d": m2d, "con": con, "opac": scene["opacities"], "dep": dep.clamp(min=0), "rad": rad}
    cases = {"dense": {"feat": torch.rand(n, 64, generator=gen)},
             "sparse": {"w": torch.rand(n, 4, generator=gen), "book": torch.randn(64, 64, generator=gen),
                        "idx": torch.argsort(torch.rand(n, 64, generator=gen), 1)[:, :4].int()}}
    rows = []
    for kind, extra in cases.items():
        ins = {**base, **{k: v.to(env["device"]) for k, v in extra.items()}}
        g = tf.GraphBuilder(f"feat_{kind}")
        t = {k: g.input(k, tuple(v.shape), "i32" if v.dtype == torch.int32 else "f32") for k, v in ins.items()}
        args = [t["m2d"], t["con"], t["feat" if kind == "dense" else "w"], t["opac"], t["dep"], t["rad"]]
        out = (tf.rasterize_gaussians(*args, width=w, height=h) if kind == "dense" else
               tf.rasterize_sparse_features(*args, t["idx"], t["book"], width=w, height=h))[0]
        g.output("img", out)
        cg = tf.compile(g.build(), target=env["target"], db=None, cost_model=None)

        def baseline() -> Any:
            col = (ins["feat"] if kind == "dense" else
                   torch.einsum("nk,nkc->nc", ins["w"], ins["book"][ins["idx"].long()]))
            zero = torch.zeros(64, device=m2d.device)
            return torch_rasterize(m2d, con, col, ins["opac"], ins["dep"], rad, w, h, zero)[0]

        err = float((cg(**ins) - baseline()).abs().max())
        assert err < (1e-3 if env["device"] == "cpu" else 2e-2), f"features {kind}: max |ours - torch| = {err}"
        row = {"case": f"features {kind} N={n} C=64 {w}x{h}", "tilefuse_ms": env["bench"](lambda: cg(**ins)),
               "torch_ms": env["bench"](baseline), "tilefuse_peak_bytes": peak_bytes(env, lambda: cg(**ins)),
               "torch_peak_bytes": peak_bytes(env, baseline), "max_abs_err_vs_torch": err,
               "config": cg.kernels[0].config.to_json()}
        row["speedup_vs_torch"] = row["torch_ms"] / row["tilefuse_ms"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--target", help="sm_80 or sm_90 (default: the device's)")
    ap.add_argument("--quick", action="store_true", help="the render at N = 100k only")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: the interpreter on CPU tensors at N = 200")
    args = ap.parse_args()
    env = setup(args)
    rows = [render_row(env, n) for n in env["sizes"]["n"]] + [train_row(env, n) for n in env["sizes"]["n"]]
    rows += feature_rows(env) + (plan_rows(env) if args.dry_run else [])
    if args.json:
        import torch
        import triton

        meta = {"device": env["name"], "target": env["target"], "torch": torch.__version__,
                "triton": triton.__version__, "numpy": np.__version__, "date": datetime.date.today().isoformat(),
                "host": platform.node(), "size": "dry-run" if args.dry_run else "quick" if args.quick else "full",
                "sort": "torch.sort on the device (radix sort), not a tilefuse kernel (the plan's host step)",
                "workspaces": "keys/ids/sids sized from the scan's total, read back after the scan"}
        with open(args.json, "w") as f:
            json.dump({"benchmark": "splat", "meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
