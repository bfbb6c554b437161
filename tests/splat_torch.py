"""Dense float64 torch implementations of the splatting reference (ir/splat_op.py), written again with
torch ops so that autograd differentiates them: the independent check of the backward references
(ir/splat_bwd_op.py) and of the kernels. The compositing's discrete decisions (skip, stop) are taken
without gradient, as the reference takes them; everything else is differentiable."""

from __future__ import annotations

import math

import numpy as np
import torch

F64 = torch.float64


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=F64)


def rotmat(q: torch.Tensor) -> torch.Tensor:
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], -2)


def camera(p: torch.Tensor, k: torch.Tensor, cam: str, width: int, height: int):
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    x, y, z = p.unbind(-1)
    zero = torch.zeros_like(z)
    if cam == "pinhole":
        limx, limy = 1.3 * 0.5 * width / fx, 1.3 * 0.5 * height / fy
        tx = z * torch.clamp(x / z, -limx, limx)
        ty = z * torch.clamp(y / z, -limy, limy)
        jac = torch.stack([torch.stack([fx / z, zero, -fx * tx / (z * z)], -1),
                           torch.stack([zero, fy / z, -fy * ty / (z * z)], -1)], -2)
        return torch.stack([fx * x / z + cx, fy * y / z + cy], -1), jac
    r2 = x * x + y * y
    r = torch.sqrt(r2)
    rho2 = r2 + z * z
    theta = torch.atan2(r, z)
    f = theta / r
    g = (z * r / rho2 - theta) / r**3
    dfdz = -1.0 / rho2
    jac = torch.stack([torch.stack([fx * (f + x * x * g), fx * x * y * g, fx * x * dfdz], -1),
                       torch.stack([fy * x * y * g, fy * (f + y * y * g), fy * y * dfdz], -1)], -2)
    return torch.stack([fx * x * f + cx, fy * y * f + cy], -1), jac


def project(means, scales, quats, view, k, cam: str, width: int, height: int, eps2d: float = 0.3):
    """(means2d, conics) before culling."""
    rw = view[:3, :3]
    p = means @ rw.T + view[:3, 3]
    m = rotmat(quats) * scales[:, None, :]
    cov = rw[None] @ (m @ m.transpose(1, 2)) @ rw.T[None]
    mean2d, jac = camera(p, k, cam, width, height)
    cov2d = jac @ cov @ jac.transpose(1, 2)
    a, b, c = cov2d[:, 0, 0] + eps2d, cov2d[:, 0, 1], cov2d[:, 1, 1] + eps2d
    det = a * c - b * b
    return mean2d, torch.stack([c / det, -b / det, a / det], -1)


def rect(x: float, y: float, r: float, tile: int, gx: int, gy: int):
    def clamp(v: float, hi: int) -> int:
        return min(hi, max(0, math.trunc(v)))

    return (clamp((x - r) / tile, gx), clamp((y - r) / tile, gy), clamp((x + r + tile - 1) / tile, gx),
            clamp((y + r + tile - 1) / tile, gy))


def rasterize(m2d, con, col, opac, dep, rad, width: int, height: int, tile: int = 16, background=None,
              pc: float = 0.5):
    """(image [H, W, C], final_T [H, W]) of the reference rules, differentiable in m2d, con, col, opac."""
    nc = col.shape[1]
    gx, gy = -(-width // tile), -(-height // tile)
    img = torch.zeros((height, width, nc), dtype=F64)
    trans = torch.ones((height, width), dtype=F64)
    done = torch.zeros((height, width), dtype=torch.bool)
    for g in np.argsort(dep.detach().numpy(), kind="stable"):
        if int(rad[g]) <= 0:
            continue
        x0, y0, x1, y1 = rect(float(m2d[g, 0].detach()), float(m2d[g, 1].detach()), float(rad[g]), tile, gx, gy)
        if x0 >= x1 or y0 >= y1:
            continue
        sl = (slice(y0 * tile, min(height, y1 * tile)), slice(x0 * tile, min(width, x1 * tile)))
        dx = m2d[g, 0] - (torch.arange(sl[1].start, sl[1].stop, dtype=F64) + pc)[None, :]
        dy = m2d[g, 1] - (torch.arange(sl[0].start, sl[0].stop, dtype=F64) + pc)[:, None]
        power = -0.5 * (con[g, 0] * dx * dx + con[g, 2] * dy * dy) - con[g, 1] * dx * dy
        alpha = torch.clamp(opac[g] * torch.exp(torch.clamp(power, max=0.0)), max=0.99)
        t = trans[sl].clone()
        with torch.no_grad():
            live = ~done[sl] & (power <= 0) & (alpha >= 1.0 / 255.0)
            stop = live & (t * (1.0 - alpha) < 1e-4)
            add = live & ~stop
        img[sl] = img[sl] + torch.where(add[..., None], col[g] * (alpha * t)[..., None], 0.0)
        trans[sl] = torch.where(add, t * (1.0 - alpha), t)
        done[sl] |= stop
    bg = torch.zeros(nc, dtype=F64) if background is None else t64(background)
    return img + trans[..., None] * bg, trans
