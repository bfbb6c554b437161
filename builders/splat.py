"""Builders for Gaussian splatting: EWA projection and alpha-compositing rasterization."""

from __future__ import annotations

from collections.abc import Sequence

from ..frontend import Tensor
from ..ir.ops import Op, make
from .common import results


def project_gaussians(means3d: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor, viewmat: Tensor,
                      intrinsics: Tensor, width: int, height: int, camera: str = "pinhole", near: float = 0.01,
                      far: float = 1e10, eps2d: float = 0.3) -> tuple[Tensor, ...]:
    """EWA projection (gsplat convention) -> (means2d, conics, depths, radii)."""
    node = make(Op.PROJECT_GAUSSIANS, [t.node for t in (means3d, scales, quats, opacities, viewmat, intrinsics)],
                width=width, height=height, camera=camera, near=float(near), far=float(far), eps2d=float(eps2d))
    return results(node)


def rasterize_gaussians(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, depths: Tensor,
                        radii: Tensor, width: int, height: int, tile: int = 16,
                        background: Sequence[float] | None = None, pixel_center: float = 0.5,
                        last_contributor: bool = False) -> tuple[Tensor, ...]:
    """Front-to-back alpha compositing (the Inria rules) -> (image [H, W, C], final_T [H, W]), plus each
    pixel's last contributing Gaussian (i32 [H, W], -1 for none) with `last_contributor`."""
    extra = {} if last_contributor is False else {"last_contributor": last_contributor}
    bg = tuple(float(x) for x in background) if background is not None else (0.0,) * colors.shape[1]
    node = make(Op.RASTERIZE_GAUSSIANS, [t.node for t in (means2d, conics, colors, opacities, depths, radii)],
                width=width, height=height, tile=tile, background=bg, pixel_center=float(pixel_center), **extra)
    return results(node)


def sh_to_color(coeffs: Tensor, means3d: Tensor, viewmat: Tensor, degree: int | None = None) -> Tensor:
    """View-dependent RGB of spherical-harmonic `coeffs` [N, (d+1)^2, 3] seen from the camera of `viewmat`
    (gsplat's convention: + 0.5, clamped at 0) -> colors f32 [N, 3]; `degree` defaults to the stored d."""
    extra = {} if degree is None else {"degree": degree}
    return Tensor(make(Op.SH_TO_COLOR, [coeffs.node, means3d.node, viewmat.node], **extra))


def rasterize_sparse_features(means2d: Tensor, conics: Tensor, weights: Tensor, opacities: Tensor, depths: Tensor,
                              radii: Tensor, indices: Tensor, codebook: Tensor, width: int, height: int,
                              tile: int = 16, background: Sequence[float] | None = None,
                              pixel_center: float = 0.5, last_contributor: bool = False) -> tuple[Tensor, ...]:
    """Sparse-coefficient feature splatting (LangSplatV2): Gaussian g carries K codebook rows `indices` [N, K]
    with `weights` [N, K]; the image [H, W, C] composites sum_k weights[g, k] codebook[indices[g, k]] of a
    `codebook` [L, C] (fused: L channels are splatted, then one matmul by the codebook per pixel)."""
    extra = {} if last_contributor is False else {"last_contributor": last_contributor}
    bg = tuple(float(x) for x in background) if background is not None else (0.0,) * codebook.shape[-1]
    node = make(Op.RASTERIZE_GAUSSIANS, [t.node for t in (means2d, conics, weights, opacities, depths, radii, indices,
                                                          codebook)],
                width=width, height=height, tile=tile, background=bg, pixel_center=float(pixel_center), **extra)
    return results(node)
