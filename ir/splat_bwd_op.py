"""Backward of 3D Gaussian splatting: `rasterize_gaussians_bwd` and `project_gaussians_bwd`.

rasterize_gaussians_bwd(means2d, conics, colors, opacities, depths, radii, final_T, last, d_image
  [, d_final_T]) {width, height, tile, background, pixel_center}
    -> (d_means2d f32 [N,2], d_conics f32 [N,3], d_colors f32 [N,C], d_opacities f32 [N])

  The first six operands and the attributes are those of the forward rasterize_gaussians; final_T
  [H,W] and last i32 [H,W] are its results with last_contributor; d_image [H,W,C] (and d_final_T
  [H,W], zero when absent) the gradients of a loss with respect to its image (and final_T). The
  result is the gradient of that loss through the compositing with the forward's discrete decisions
  held fixed (which Gaussians a pixel visits, skips and stops before: the derivative of the forward
  wherever it is differentiable): pixel p composites, in depth order, every Gaussian covering its
  tile up to and including last[p] that passes the alpha rules. With T_k the transmittance after
  the k-th, g = d_image[p], S_k = sum_{j>k} a_j T_{j-1} (c_j . g):
      d c_k = a_k T_{k-1} g
      d a_k = T_{k-1} (c_k . g) - (S_k + T_K (background . g + d_final_T[p])) / (1 - a_k)
      a = min(0.99, o G), G = exp(power): d o = d a G and d power = d a a where o G <= 0.99, else 0
      power = -0.5 (A dx^2 + C dy^2) - B dx dy, dx = mean_x - pixel_x: its derivatives go to
      means2d and conics (A, B, C).
  The reference recomputes the transmittances in float64 (final_T is the kernels' starting point).

project_gaussians_bwd(means3d, scales, quats, viewmat, K, radii, d_means2d, d_conics)
  {width, height, camera, eps2d}
    -> (d_means3d f32 [N,3], d_scales f32 [N,3], d_quats f32 [N,4])

  The gradient through project_gaussians (same attributes) of a loss whose gradients with respect to
  means2d and conics are given; zero for Gaussians with radius 0 (culled: their outputs are constant
  zeros), as gsplat does. The pinhole clamp of the Jacobian passes gradient where it does not clamp
  (torch.clamp's rule). The reference differentiates the forward's formulas by the complex step
  (Im f(x + ih) / h, h = 1e-30: exact to rounding, no cancellation), one column at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from . import dtypes as dt
from .ops import Node, Op, VerifyError, fmt_shape, register
from .reference import evaluator, rnd
from .splat_op import CAMERAS, _check, _infer_rasterize, _num, _size, quat_to_rotmat, tile_rect

STEP = 1e-30  # the complex step
# Series of h(u) = (u / (1 + u^2) - atan(u)) / u^3 (the fisheye's (df/dr) / r times z^3) below u = 0.25,
# to float64 accuracy: c_k = (-1)^(k+1) (2k + 2) / (2k + 3).
H_SERIES = tuple((-1) ** (k + 1) * (2 * k + 2) / (2 * k + 3) for k in range(14))


def _check_int(x: Node, name: str, shape: tuple[int, ...], what: str) -> None:
    if x.shape != shape or not x.dtype.is_int:
        raise VerifyError(f"{what}: {name} is {x.dtype}{fmt_shape(x.shape)}; want an integer {fmt_shape(shape)}")


@register(Op.RASTERIZE_GAUSSIANS_BWD, (9, 10))
def _infer_raster_bwd(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    _, _, fwd = _infer_rasterize(srcs[:6], a)
    n, c = srcs[2].shape
    h, w = fwd["height"], fwd["width"]
    what = f"rasterize_gaussians_bwd of means2d {srcs[0].dtype}{fmt_shape(srcs[0].shape)}"
    _check(srcs[6], "final_T", (h, w), what)
    _check_int(srcs[7], "last", (h, w), what)
    _check(srcs[8], "d_image", (h, w, c), what)
    if len(srcs) == 10:
        _check(srcs[9], "d_final_T", (h, w), what)
    fwd["results"] = ((dt.f32, (n, 2)), (dt.f32, (n, 3)), (dt.f32, (n, c)), (dt.f32, (n,)))
    return dt.f32, (n, 2), fwd


@register(Op.PROJECT_GAUSSIANS_BWD, (8, 8))
def _infer_project_bwd(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    means, scales, quats, view, k, rad, dm, dc = srcs
    what = f"project_gaussians_bwd of means3d {means.dtype}{fmt_shape(means.shape)}"
    if means.ndim != 2 or means.shape[1] != 3:
        raise VerifyError(f"{what}: means3d must be [N, 3]")
    n = means.shape[0]
    for x, name, shape in ((means, "means3d", (n, 3)), (scales, "scales", (n, 3)), (quats, "quats", (n, 4)),
                           (view, "viewmat", (4, 4)), (k, "K", (3, 3)), (dm, "d_means2d", (n, 2)),
                           (dc, "d_conics", (n, 3))):
        _check(x, name, shape, what)
    _check_int(rad, "radii", (n,), what)
    cam = a.get("camera", "pinhole")
    if cam not in CAMERAS:
        raise VerifyError(f"{what}: camera {cam!r} not in {CAMERAS}")
    norm = {"width": _size(a, "width", what), "height": _size(a, "height", what), "camera": cam,
            "eps2d": _num(a, "eps2d", 0.3, what),
            "results": ((dt.f32, (n, 3)), (dt.f32, (n, 3)), (dt.f32, (n, 4)))}
    return dt.f32, (n, 3), norm


# ---- reference: projection backward (complex step) ------------------------------------------------
def _camera_c(p: np.ndarray, k: np.ndarray, camera: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """mean2d [N,2] and the Jacobian [N,2,3] of ir/splat_op.py's cameras, in complex-step-safe operations
    (decisions on real parts, atan(r/z) for atan2(r, z) with z > 0, a series where the closed form cancels)."""
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    zero = np.zeros_like(z)
    if camera == "pinhole":
        lims = (1.3 * 0.5 * width / fx, 1.3 * 0.5 * height / fy)
        tx, ty = (np.where(np.abs((v / z).real) <= lim, v, z * np.sign((v / z).real) * lim)
                  for v, lim in zip((x, y), lims))
        jac = np.stack([np.stack([fx / z, zero, -fx * tx / (z * z)], -1),
                        np.stack([zero, fy / z, -fy * ty / (z * z)], -1)], -2)
        return np.stack([fx * x / z + cx, fy * y / z + cy], -1), jac
    r2 = x * x + y * y
    rho2 = r2 + z * z
    small = np.abs(np.sqrt(r2.real)) < 1e-6 * np.abs(z.real)
    r = np.sqrt(np.where(small, 1.0, r2))
    u = r / z
    theta = np.arctan(u)
    series = sum(c * u ** (2 * i) for i, c in enumerate(H_SERIES)) / z**3
    f = np.where(small, 1.0 / z, theta / r)
    g = np.where(small, -2.0 / (3.0 * z**3), np.where(u.real < 0.25, series, (z * r / rho2 - theta) / r**3))
    dfdz = -1.0 / rho2
    jac = np.stack([np.stack([fx * (f + x * x * g), fx * x * y * g, fx * x * dfdz], -1),
                    np.stack([fy * x * y * g, fy * (f + y * y * g), fy * y * dfdz], -1)], -2)
    return np.stack([fx * x * f + cx, fy * y * f + cy], -1), jac


def project_c(means: np.ndarray, scales: np.ndarray, quats: np.ndarray, view: np.ndarray, k: np.ndarray,
              attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(means2d, conics) of project_gaussians before culling, for complex inputs (the complex step)."""
    rot_w = view[:3, :3]
    p = means @ rot_w.T + view[:3, 3]
    m = quat_to_rotmat(quats) * scales[:, None, :]
    cov = rot_w[None] @ (m @ np.swapaxes(m, 1, 2)) @ rot_w.T[None]
    mean2d, jac = _camera_c(p, k, attrs["camera"], attrs["width"], attrs["height"])
    cov2d = jac @ cov @ np.swapaxes(jac, 1, 2)
    a, b, c = cov2d[:, 0, 0] + attrs["eps2d"], cov2d[:, 0, 1], cov2d[:, 1, 1] + attrs["eps2d"]
    det = a * c - b * b
    return mean2d, np.stack([c / det, -b / det, a / det], -1)


@evaluator(Op.PROJECT_GAUSSIANS_BWD)
def _eval_project_bwd(n: Node, xs: list[Any]) -> tuple[np.ndarray, ...]:
    means, scales, quats, view, k = (np.asarray(x, dtype=np.float64) for x in xs[:5])
    rad = np.asarray(xs[5], dtype=np.int64)
    dm, dc = (np.asarray(x, dtype=np.float64) for x in xs[6:])
    params = (means, scales, quats)
    keep = rad > 0
    grads = []
    with np.errstate(all="ignore"):
        for i, arr in enumerate(params):
            grad = np.zeros(arr.shape)
            for j in range(arr.shape[1]):
                pert = [q.astype(np.complex128) for q in params]
                pert[i][:, j] += 1j * STEP
                m2, con = project_c(pert[0], pert[1], pert[2], view, k, n.attrs)
                grad[:, j] = ((m2.imag * dm).sum(-1) + (con.imag * dc).sum(-1)) / STEP
            grads.append(rnd(np.where(keep[:, None], grad, 0.0), dt.f32))
    return tuple(grads)


# ---- reference: rasterization backward ---------------------------------------------------------------
def composite_walk(xs: list[np.ndarray], attrs: dict[str, Any], trans: np.ndarray) -> Iterator[tuple[Any, ...]]:
    """The compositing of rasterize_gaussians held to the forward's `last` contributors: per Gaussian in
    depth order, (g, pixel slice, dx, dy, G, alpha, added mask, T before it); `trans` ends as final T."""
    m2d, con, _, opac, dep, rad, last = xs[:7]
    w, h, tile, pc = attrs["width"], attrs["height"], attrs["tile"], attrs["pixel_center"]
    grid = (-(-w // tile), -(-h // tile))
    open_ = last >= 0
    for g in np.argsort(dep, kind="stable"):
        if rad[g] <= 0:
            continue
        x0, y0, x1, y1 = tile_rect(m2d[g, 0], m2d[g, 1], float(rad[g]), tile, grid)
        if x0 >= x1 or y0 >= y1:
            continue
        sl = (slice(y0 * tile, min(h, y1 * tile)), slice(x0 * tile, min(w, x1 * tile)))
        dx = m2d[g, 0] - (np.arange(sl[1].start, sl[1].stop) + pc)[None, :]
        dy = m2d[g, 1] - (np.arange(sl[0].start, sl[0].stop) + pc)[:, None]
        power = -0.5 * (con[g, 0] * dx * dx + con[g, 2] * dy * dy) - con[g, 1] * dx * dy
        big_g = np.exp(np.minimum(power, 0.0))
        alpha = np.minimum(0.99, opac[g] * big_g)
        add = open_[sl] & (power <= 0) & (alpha >= 1.0 / 255.0)
        t = trans[sl].copy()
        yield g, sl, dx, dy, big_g, alpha, add, t
        trans[sl] = np.where(add, t * (1.0 - alpha), t)
        open_[sl] &= last[sl] != g


@evaluator(Op.RASTERIZE_GAUSSIANS_BWD)
def _eval_raster_bwd(n: Node, xs: list[Any]) -> tuple[np.ndarray, ...]:
    m2d, con, col, opac, dep = (np.asarray(x, dtype=np.float64) for x in xs[:5])
    rad, last = np.asarray(xs[5], dtype=np.int64), np.asarray(xs[7], dtype=np.int64)
    gimg = np.asarray(xs[8], dtype=np.float64)
    d_t = np.asarray(xs[9], dtype=np.float64) if len(xs) > 9 else np.zeros(last.shape)
    ops = [m2d, con, col, opac, dep, rad, last]
    # pass 1: final transmittance and the total sum of a T (c . g) per pixel
    trans, s_total = np.ones(last.shape), np.zeros(last.shape)
    for g, sl, _, _, _, alpha, add, t in composite_walk(ops, n.attrs, trans):
        s_total[sl] += np.where(add, alpha * t * (gimg[sl] @ col[g]), 0.0)
    k_end = trans * (gimg @ np.asarray(n.attr("background")) + d_t)
    # pass 2: front to back again, S_k = s_total - the running sum up to and including k
    n_g = len(m2d)
    d_m2d, d_con, d_col, d_op = np.zeros((n_g, 2)), np.zeros((n_g, 3)), np.zeros(col.shape), np.zeros(n_g)
    run = np.zeros(last.shape)
    for g, sl, dx, dy, big_g, alpha, add, t in composite_walk(ops, n.attrs, np.ones(last.shape)):
        cg = gimg[sl] @ col[g]
        run[sl] += np.where(add, alpha * t * cg, 0.0)
        d_a = t * cg - (s_total[sl] - run[sl] + k_end[sl]) / (1.0 - alpha)
        live = add & (opac[g] * big_g <= 0.99)
        d_pow = np.where(live, d_a * alpha, 0.0)
        d_op[g] = np.where(live, d_a * big_g, 0.0).sum()
        d_m2d[g] = (-(d_pow * (con[g, 0] * dx + con[g, 1] * dy)).sum(),
                    -(d_pow * (con[g, 2] * dy + con[g, 1] * dx)).sum())
        d_con[g] = (-0.5 * (d_pow * dx * dx).sum(), -(d_pow * dx * dy).sum(), -0.5 * (d_pow * dy * dy).sum())
        d_col[g] = (np.where(add, alpha * t, 0.0)[..., None] * gimg[sl]).sum((0, 1))
    return tuple(rnd(x, dt.f32) for x in (d_m2d, d_con, d_col, d_op))
