"""3D Gaussian splatting: `project_gaussians` and `rasterize_gaussians` (forward).

project_gaussians(means3d [N,3], scales [N,3], quats [N,4] (w,x,y,z), opacities [N], viewmat [4,4],
K [3,3]) {width, height, camera, near, far, eps2d}
    -> (means2d f32 [N,2], conics f32 [N,3], depths f32 [N], radii i32 [N])

  p = viewmat[:3,:3] @ mean + viewmat[:3,3] (world -> camera, camera looks down +z); depth = p.z.
  Sigma = R S S^T R^T (the 3DGS paper; the Inria code's M = S R, Sigma = M^T M in glm order), R
  from the normalised quaternion, S = diag(scales); camera covariance W Sigma W^T.
  pinhole: mean2d = (fx x/z + cx, fy y/z + cy); EWA Jacobian at (tx, ty, z) with
      tx/z, ty/z clamped to +-1.3 tan(fov/2), tan_fovx = 0.5 width / fx (the Inria rule).
  fisheye: equidistant model, theta = atan2(r, z), r = |(x, y)|:
      mean2d = (fx theta x / r + cx, fy theta y / r + cy), Jacobian of that map (no clamp).
  cov2d = J C J^T + eps2d I; conic = inverse(cov2d) stored as (a, b, c) = (C11, C12, C22) of the inverse.
  radius = ceil(3 sqrt(lambda_max)), lambda_max = mid + sqrt(max(0.1, mid^2 - det)), mid = (a+c)/2 of cov2d.
  Culled (radius 0, means2d and conics 0): depth outside [near, far], det(cov2d) <= 0, or the radius
  box [x +- r] x [y +- r] not overlapping the image (x + r <= 0, x - r >= width, same in y).
  Coordinates are gsplat's: K maps to continuous pixel coordinates where pixel (i, j) spans
  [i, i+1) x [j, j+1); the rasterizer samples pixel centres at +pixel_center (0.5).
  `opacities` is carried for opacity-aware culling by later kernels; this version does not read it.

rasterize_gaussians(means2d [N,2], conics [N,3], colors [N,C], opacities [N], depths [N], radii [N])
  {width, height, tile=16, background=(C floats), pixel_center=0.5, last_contributor=false}
    -> (image f32 [H, W, C], final_T f32 [H, W]) and, with last_contributor, last i32 [H, W]: the index
    of the last Gaussian each pixel added (-1 for none), where a backward pass starts walking back.

  Tile binning (the Inria getRect): a Gaussian with radius r > 0 covers the tiles
  [clamp(trunc((x - r)/tile)), clamp(trunc((x + r + tile - 1)/tile))) in x (same in y), clamped
  to the tile grid. Each pixel visits the Gaussians covering its tile front to back (depth
  ascending, ties by index). With d = mean2d - (px + pixel_center, py + pixel_center):
      power = -0.5 (a dx^2 + c dy^2) - b dx dy;  skip if power > 0
      alpha = min(0.99, o exp(power));            skip if alpha < 1/255
      if T (1 - alpha) < 1e-4: stop, without adding this Gaussian (the Inria rule)
      C += color alpha T;  T *= 1 - alpha
  image = C + T background; final_T = T (the pixel's alpha is 1 - final_T).

rasterize_gaussians(means2d, conics, weights [N,K], opacities, depths, radii, indices [N,K] int,
  codebook [L,C]) {...}: sparse-coefficient feature splatting (LangSplatV2): Gaussian g's feature is
  sum_k weights[g,k] codebook[indices[g,k]], composited as above (background has C entries). The kernel
  splats the weights into an L-channel accumulator per pixel and multiplies it by the codebook once, so
  no per-Gaussian C-vector exists; by linearity the image is the same.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import dtypes as dt
from .ops import Node, Op, VerifyError, fmt_shape, register
from .reference import ReferenceEvalError, evaluator, rnd

CAMERAS = ("pinhole", "fisheye")


def _check(x: Node, name: str, shape: tuple[int, ...], what: str) -> None:
    if x.shape != shape:
        raise VerifyError(f"{what}: {name} is {x.dtype}{fmt_shape(x.shape)}; want {fmt_shape(shape)}")
    if not x.dtype.is_float:
        raise VerifyError(f"{what}: {name} must be float, got {x.dtype}")


def _size(a: dict[str, Any], key: str, what: str, default: int | None = None) -> int:
    v = a.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise VerifyError(f"{what}: {key} must be a positive int, got {v!r}")
    return v


def _finite(v: Any) -> float | None:
    """`v` as a finite float, or None when it is no number, not finite or beyond float64."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _num(a: dict[str, Any], key: str, default: float, what: str) -> float:
    v = a.get(key, default)
    f = _finite(v)
    if f is None:
        raise VerifyError(f"{what}: {key} must be a finite number, got {v!r}")
    return f


@register(Op.PROJECT_GAUSSIANS, (6, 6))
def _infer_project(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    means, scales, quats, opac, view, k = srcs
    what = f"project_gaussians of means3d {means.dtype}{fmt_shape(means.shape)}"
    if means.ndim != 2 or means.shape[1] != 3:
        raise VerifyError(f"{what}: means3d must be [N, 3]")
    n = means.shape[0]
    for x, name, shape in ((means, "means3d", (n, 3)), (scales, "scales", (n, 3)), (quats, "quats", (n, 4)),
                           (opac, "opacities", (n,)), (view, "viewmat", (4, 4)), (k, "K", (3, 3))):
        _check(x, name, shape, what)
    cam = a.get("camera", "pinhole")
    if cam not in CAMERAS:
        raise VerifyError(f"{what}: camera {cam!r} not in {CAMERAS}")
    norm = {"width": _size(a, "width", what), "height": _size(a, "height", what), "camera": cam,
            "near": _num(a, "near", 0.01, what), "far": _num(a, "far", 1e10, what),
            "eps2d": _num(a, "eps2d", 0.3, what)}
    if not 0 < norm["near"] < norm["far"]:
        raise VerifyError(f"{what}: need 0 < near < far, got near={norm['near']}, far={norm['far']}")
    res = ((dt.f32, (n, 2)), (dt.f32, (n, 3)), (dt.f32, (n,)), (dt.i32, (n,)))
    norm["results"] = res
    return dt.f32, (n, 2), norm


def _sparse_features(srcs: tuple[Node, ...], what: str) -> int:
    """The channel count C of the sparse-coefficient variant's codebook [L, C], after checking that
    indices [N, K] is integer and codebook float."""
    weights, idx, book = srcs[2], srcs[6], srcs[7]
    if idx.shape != weights.shape or not idx.dtype.is_int:
        raise VerifyError(f"{what}: indices must be an integer {fmt_shape(weights.shape)} like the weights (K "
                          f"codebook rows per Gaussian), got {idx.dtype}{fmt_shape(idx.shape)}")
    if book.ndim != 2 or not book.dtype.is_float:
        raise VerifyError(f"{what}: codebook must be a float [L, C], got {book.dtype}{fmt_shape(book.shape)}")
    return book.shape[1]


@register(Op.RASTERIZE_GAUSSIANS, (6, 8))
def _infer_rasterize(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    m2d, con, col, opac, dep, rad = srcs[:6]
    what = f"rasterize_gaussians of means2d {m2d.dtype}{fmt_shape(m2d.shape)}, colors {col.dtype}{fmt_shape(col.shape)}"
    if m2d.ndim != 2 or m2d.shape[1] != 2 or col.ndim != 2:
        raise VerifyError(f"{what}: means2d must be [N, 2] and colors [N, C]")
    if len(srcs) == 7:
        raise VerifyError(f"{what}: 6 operands, or 8 for sparse-coefficient features (then indices [N, K] and "
                          "codebook [L, C] follow, and colors holds the K weights); got 7")
    n, c = m2d.shape[0], (col.shape[1] if len(srcs) == 6 else _sparse_features(srcs, what))
    for x, name, shape in ((m2d, "means2d", (n, 2)), (con, "conics", (n, 3)), (col, "colors", (n, col.shape[1])),
                           (opac, "opacities", (n,)), (dep, "depths", (n,))):
        _check(x, name, shape, what)
    if rad.shape != (n,) or not rad.dtype.is_int:
        raise VerifyError(f"{what}: radii must be an integer [{n}], got {rad.dtype}{fmt_shape(rad.shape)}")
    w, h = _size(a, "width", what), _size(a, "height", what)
    bg = tuple(a.get("background", (0.0,) * c))
    if len(bg) != c or any(_finite(x) is None for x in bg):
        raise VerifyError(f"{what}: background needs {c} finite numbers (one per colour channel), got {bg}")
    results: tuple[Any, ...] = ((dt.f32, (h, w, c)), (dt.f32, (h, w)))
    norm: dict[str, Any] = {"width": w, "height": h, "tile": _size(a, "tile", what, 16),
                            "background": tuple(float(x) for x in bg),
                            "pixel_center": _num(a, "pixel_center", 0.5, what), "results": results}
    last = a.get("last_contributor", False)
    if not isinstance(last, bool):
        raise VerifyError(f"{what}: last_contributor must be true or false, got {last!r}")
    if last:  # only when asked, so graphs without it keep their text and keys
        norm["last_contributor"] = True
        norm["results"] = results + ((dt.i32, (h, w)),)
    return dt.f32, (h, w, c), norm


# ---- reference: projection ------------------------------------------------------------------------
def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """[N, 3, 3] rotation matrices of (w, x, y, z) quaternions (normalised first)."""
    q = q / np.sqrt((q * q).sum(-1, keepdims=True))  # not np.linalg.norm: complex-step safe (splat_bwd_op)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _pinhole(p: np.ndarray, k: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    mean2d = np.stack([fx * x / z + cx, fy * y / z + cy], -1)
    limx, limy = 1.3 * 0.5 * width / fx, 1.3 * 0.5 * height / fy
    tx = z * np.clip(x / z, -limx, limx)
    ty = z * np.clip(y / z, -limy, limy)
    zero = np.zeros_like(z)
    jac = np.stack([np.stack([fx / z, zero, -fx * tx / (z * z)], -1),
                    np.stack([zero, fy / z, -fy * ty / (z * z)], -1)], -2)
    return mean2d, jac


def _fisheye(p: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    r2 = x * x + y * y
    r = np.sqrt(r2)
    rho2 = r2 + z * z
    theta = np.arctan2(r, z)
    small = r < 1e-6 * np.abs(z)
    rs = np.where(small, 1.0, r)
    f = np.where(small, 1.0 / z, theta / rs)  # theta / r, its limit 1/z on the axis
    # g = (df/dr) / r, with the series limit -2 / (3 z^3) on the axis.
    g = np.where(small, -2.0 / (3.0 * z**3), (z * rs / rho2 - theta) / rs**3)
    dfdz = -1.0 / rho2
    mean2d = np.stack([fx * x * f + cx, fy * y * f + cy], -1)
    jac = np.stack([np.stack([fx * (f + x * x * g), fx * x * y * g, fx * x * dfdz], -1),
                    np.stack([fy * x * y * g, fy * (f + y * y * g), fy * y * dfdz], -1)], -2)
    return mean2d, jac


@evaluator(Op.PROJECT_GAUSSIANS)
def _eval_project(n: Node, xs: list[Any]) -> tuple[np.ndarray, ...]:
    means, scales, quats, _, view, k = (np.asarray(x, dtype=np.float64) for x in xs)
    width, height = n.attr("width"), n.attr("height")
    rot_w, t_w = view[:3, :3], view[:3, 3]
    p = means @ rot_w.T + t_w
    z = p[:, 2]
    rot = quat_to_rotmat(quats)
    m = rot * scales[:, None, :]  # R S
    sigma = m @ np.swapaxes(m, 1, 2)
    cov_c = rot_w[None] @ sigma @ rot_w.T[None]
    with np.errstate(all="ignore"):
        if n.attr("camera") == "pinhole":
            mean2d, jac = _pinhole(p, k, width, height)
        else:
            mean2d, jac = _fisheye(p, k)
        cov2d = jac @ cov_c @ np.swapaxes(jac, 1, 2)
        a = cov2d[:, 0, 0] + n.attr("eps2d")
        b = cov2d[:, 0, 1]
        c = cov2d[:, 1, 1] + n.attr("eps2d")
        det = a * c - b * b
        mid = 0.5 * (a + c)
        lam = mid + np.sqrt(np.maximum(0.1, mid * mid - det))
        radius = np.ceil(3.0 * np.sqrt(lam))
        conic = np.stack([c / det, -b / det, a / det], -1)
    ok = (z >= n.attr("near")) & (z <= n.attr("far")) & (det > 0)
    ok &= np.isfinite(mean2d).all(-1) & np.isfinite(radius)
    mx, my = mean2d[:, 0], mean2d[:, 1]
    ok &= ~((mx + radius <= 0) | (mx - radius >= width) | (my + radius <= 0) | (my - radius >= height))
    radii = np.where(ok, radius, 0).astype(np.int64)
    mean2d = np.where(ok[:, None], mean2d, 0.0)
    conic = np.where(ok[:, None], conic, 0.0)
    return rnd(mean2d, dt.f32), rnd(conic, dt.f32), rnd(z, dt.f32), rnd(radii, dt.i32)


# ---- reference: rasterization -----------------------------------------------------------------------
def tile_rect(x: float, y: float, r: float, tile: int, grid: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) tile range [x0, x1) x [y0, y1) covered by a radius-r Gaussian (Inria getRect)."""
    gx, gy = grid

    def clamp(v: float, hi: int) -> int:
        return min(hi, max(0, math.trunc(v)))

    return (clamp((x - r) / tile, gx), clamp((y - r) / tile, gy),
            clamp((x + r + tile - 1) / tile, gx), clamp((y + r + tile - 1) / tile, gy))


def sparse_colors(weights: np.ndarray, idx: np.ndarray, book: np.ndarray) -> np.ndarray:
    """[N, C] per-Gaussian features sum_k weights[:, k] codebook[indices[:, k]] (float64); the kernel never
    forms them (it splats the weights into L channels, then multiplies by the codebook once per pixel)."""
    bad = (idx < 0) | (idx >= book.shape[0])
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise ReferenceEvalError(f"rasterize_gaussians: indices must lie in [0, {book.shape[0]}) (codebook rows); "
                                 f"row {row} holds {idx[row].tolist()}")
    return np.einsum("nk,nkc->nc", weights, book[idx])


@evaluator(Op.RASTERIZE_GAUSSIANS)
def _eval_rasterize(n: Node, xs: list[Any]) -> tuple[np.ndarray, ...]:
    m2d, con, col, opac, dep = (np.asarray(x, dtype=np.float64) for x in xs[:5])
    if len(xs) == 8:
        col = sparse_colors(col, np.asarray(xs[6], dtype=np.int64), np.asarray(xs[7], dtype=np.float64))
    rad = np.asarray(xs[5], dtype=np.int64)
    w, h, tile = n.attr("width"), n.attr("height"), n.attr("tile")
    pc = n.attr("pixel_center")
    nc = col.shape[1]
    grid = (-(-w // tile), -(-h // tile))
    img = np.zeros((h, w, nc))
    trans = np.ones((h, w))
    done = np.zeros((h, w), dtype=bool)
    last = np.full((h, w), -1, dtype=np.int64)
    for g in np.argsort(dep, kind="stable"):
        if rad[g] <= 0:
            continue
        x0, y0, x1, y1 = tile_rect(m2d[g, 0], m2d[g, 1], float(rad[g]), tile, grid)
        if x0 >= x1 or y0 >= y1:
            continue
        px0, px1 = x0 * tile, min(w, x1 * tile)
        py0, py1 = y0 * tile, min(h, y1 * tile)
        dx = m2d[g, 0] - (np.arange(px0, px1) + pc)[None, :]
        dy = m2d[g, 1] - (np.arange(py0, py1) + pc)[:, None]
        power = -0.5 * (con[g, 0] * dx * dx + con[g, 2] * dy * dy) - con[g, 1] * dx * dy
        alpha = np.minimum(0.99, opac[g] * np.exp(power))
        sl = (slice(py0, py1), slice(px0, px1))
        t = trans[sl]
        live = ~done[sl] & (power <= 0) & (alpha >= 1.0 / 255.0)
        test_t = t * (1.0 - alpha)
        stop = live & (test_t < 1e-4)
        add = live & ~stop
        img[sl] += np.where(add[..., None], col[g] * (alpha * t)[..., None], 0.0)
        trans[sl] = np.where(add, test_t, t)
        last[sl] = np.where(add, g, last[sl])
        done[sl] |= stop
    img += trans[..., None] * np.asarray(n.attr("background"))
    if n.attr("last_contributor"):
        return rnd(img, dt.f32), rnd(trans, dt.f32), rnd(last, dt.i32)
    return rnd(img, dt.f32), rnd(trans, dt.f32)
