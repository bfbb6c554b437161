"""`sh_to_color`: view-dependent colours of 3D Gaussians from spherical-harmonic coefficients (gsplat's
convention, which is the Inria 3DGS code's).

sh_to_color(coeffs [N, K, 3], means [N, 3], viewmat [4, 4]) {degree} -> colors f32 [N, 3]

  K = (d + 1)^2 coefficients per colour channel for some d in 0..3 (1, 4, 9 or 16), and `degree` <= d
  (default d): a scene stored at degree 3 renders at a lower degree with the leading coefficients, as
  gsplat's progressive training does. coeffs[:, 0] is the DC term (a 3DGS PLY's f_dc_*), coeffs[:, 1:]
  the higher bands in basis order (f_rest_*, which the PLY stores channel-major).
  The camera centre is c = -R^{-1} t for R, t = viewmat[:3, :3], viewmat[:3, 3] (the translation of
  inverse(viewmat) whenever its last row is 0 0 0 1, which project_gaussians assumes too); each Gaussian's
  direction is dir = (mean - c) / max(|mean - c|, 1e-12) (torch's F.normalize), and
      color = max(0, sum_k basis_k(dir) coeffs[:, k] + 0.5)
  with the real SH basis of degree <= `degree` in the closed form of Sloan (JCGT 2013) that gsplat
  evaluates: basis_0 = 0.2820947917738781, basis_1..3 = (-0.48860251190292 y, 0.48860251190292 z,
  -0.48860251190292 x), and so on (sh_basis below).

sh_to_color_bwd(coeffs, means, viewmat, d_colors [N, 3]) {degree} -> (d_coeffs f32 [N, K, 3], d_means f32 [N, 3])

  The gradient through sh_to_color of a loss whose gradient with respect to its colours is d_colors:
  d_coeffs[:, k, c] = basis_k(dir) d_colors[:, c] where the clamp passes (sum + 0.5 >= 0, torch.clamp's
  rule), zero for k beyond the degree; d_means through the view direction (the camera centre is held
  fixed: no gradient to viewmat). The reference takes d_means by the complex step (the basis is a
  polynomial, the normalisation a complex-safe square root), d_coeffs in closed form.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import dtypes as dt
from .ops import Node, Op, VerifyError, fmt_shape, register
from .reference import ReferenceEvalError, evaluator, rnd

SH_COUNTS = (1, 4, 9, 16)  # coefficients per channel for degree 0, 1, 2, 3


@register(Op.SH_TO_COLOR, (3, 3))
def _infer_sh(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    coeffs, means, view = srcs
    what = f"sh_to_color of coeffs {coeffs.dtype}{fmt_shape(coeffs.shape)}"
    if coeffs.ndim != 3 or coeffs.shape[2] != 3 or coeffs.shape[1] not in SH_COUNTS:
        raise VerifyError(f"{what}: coeffs must be [N, K, 3] with K = (d + 1)^2 coefficients per colour channel "
                          f"for a degree d in 0..3, so K in {list(SH_COUNTS)}")
    n, k = coeffs.shape[:2]
    stored = SH_COUNTS.index(k)
    degree = a.get("degree", stored)
    if isinstance(degree, bool) or not isinstance(degree, int) or not 0 <= degree <= 3:
        raise VerifyError(f"{what}: degree must be an integer in 0..3, got {degree!r}")
    if degree > stored:
        raise VerifyError(f"{what}: degree {degree} needs (degree + 1)^2 = {(degree + 1) ** 2} coefficients per "
                          f"channel in coeffs, which holds {k} (degree {stored} at most)")
    for x, name, shape in ((coeffs, "coeffs", (n, k, 3)), (means, "means", (n, 3)), (view, "viewmat", (4, 4))):
        if x.shape != shape:
            raise VerifyError(f"{what}: {name} is {x.dtype}{fmt_shape(x.shape)}; want {fmt_shape(shape)}")
        if not x.dtype.is_float:
            raise VerifyError(f"{what}: {name} must be float, got {x.dtype}")
    return dt.f32, (n, 3), {"degree": degree}


def sh_basis(dirs: np.ndarray, count: int) -> np.ndarray:
    """[N, count] real SH basis values at unit directions `dirs` [N, 3] (count = 1, 4, 9 or 16; gsplat's
    _eval_sh_bases_fast, Sloan's closed form)."""
    out = np.zeros((dirs.shape[0], count), dtype=np.result_type(dirs, np.float64))  # complex for the step
    out[:, 0] = 0.2820947917738781
    if count <= 1:
        return out
    x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    out[:, 1], out[:, 2], out[:, 3] = -0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x
    if count <= 4:
        return out
    z2 = z * z
    c1, s1 = x * x - y * y, 2 * x * y
    out[:, 4] = 0.5462742152960395 * s1
    out[:, 5] = -1.092548430592079 * z * y
    out[:, 6] = 0.9461746957575601 * z2 - 0.3153915652525201
    out[:, 7] = -1.092548430592079 * z * x
    out[:, 8] = 0.5462742152960395 * c1
    if count <= 9:
        return out
    tc = -2.285228997322329 * z2 + 0.4570457994644658
    tb = 1.445305721320277 * z
    c2, s2 = x * c1 - y * s1, x * s1 + y * c1
    out[:, 9] = -0.5900435899266435 * s2
    out[:, 10] = tb * s1
    out[:, 11] = tc * y
    out[:, 12] = z * (1.865881662950577 * z2 - 1.119528997770346)
    out[:, 13] = tc * x
    out[:, 14] = tb * c1
    out[:, 15] = -0.5900435899266435 * c2
    return out


def camera_center(view: np.ndarray) -> np.ndarray:
    """The camera centre -R^{-1} t of a world -> camera matrix (float64)."""
    try:
        return -np.linalg.solve(view[:3, :3], view[:3, 3])
    except np.linalg.LinAlgError as err:
        raise ReferenceEvalError(f"sh_to_color: viewmat's rotation part {view[:3, :3].tolist()} is singular, so "
                                 "the camera has no centre") from err


@evaluator(Op.SH_TO_COLOR)
def _eval_sh(n: Node, xs: list[Any]) -> np.ndarray:
    coeffs, means, view = (np.asarray(x, dtype=np.float64) for x in xs)
    d = means - camera_center(view)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    count = SH_COUNTS[n.attr("degree")]
    col = np.einsum("nk,nkc->nc", sh_basis(d, count), coeffs[:, :count])
    return rnd(np.maximum(col + 0.5, 0.0), dt.f32)


@register(Op.SH_TO_COLOR_BWD, (4, 4))
def _infer_sh_bwd(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    _, shape, norm = _infer_sh(srcs[:3], a)
    coeffs, d_col = srcs[0], srcs[3]
    if d_col.shape != shape or not d_col.dtype.is_float:
        raise VerifyError(f"sh_to_color_bwd of coeffs {coeffs.dtype}{fmt_shape(coeffs.shape)}: d_colors is "
                          f"{d_col.dtype}{fmt_shape(d_col.shape)}; want float {fmt_shape(shape)}")
    n, k = coeffs.shape[:2]
    return dt.f32, (n, k, 3), {**norm, "results": ((dt.f32, (n, k, 3)), (dt.f32, (n, 3)))}


def sh_raw(coeffs: np.ndarray, means: np.ndarray, view: np.ndarray, degree: int) -> np.ndarray:
    """sum_k basis_k(dir) coeffs[:, k] + 0.5 before the clamp, for real or complex means (the step)."""
    d = means - camera_center(view)
    norm = np.sqrt((d * d).sum(axis=1, keepdims=True))
    d = d / np.where(norm.real > 1e-12, norm, 1e-12)
    count = SH_COUNTS[degree]
    return np.einsum("nk,nkc->nc", sh_basis(d, count), coeffs[:, :count]) + 0.5


@evaluator(Op.SH_TO_COLOR_BWD)
def _eval_sh_bwd(n: Node, xs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    coeffs, means, view, d_col = (np.asarray(x, dtype=np.float64) for x in xs)
    degree = n.attr("degree")
    gate = np.where(sh_raw(coeffs, means, view, degree) >= 0.0, d_col, 0.0)
    count = SH_COUNTS[degree]
    d = means - camera_center(view)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    d_coeffs = np.zeros(coeffs.shape)
    d_coeffs[:, :count] = sh_basis(d, count)[:, :, None] * gate[:, None, :]
    d_means = np.zeros(means.shape)
    step = 1e-30
    for j in range(3):
        pert = means.astype(np.complex128)
        pert[:, j] += 1j * step
        d_means[:, j] = (sh_raw(coeffs, pert, view, degree).imag * gate).sum(axis=1) / step
    return rnd(d_coeffs, dt.f32), rnd(d_means, dt.f32)
