"""Builders for Gaussian splatting: EWA projection and alpha-compositing rasterization, and their backward."""

from __future__ import annotations

from collections.abc import Sequence

from ..frontend import Tensor
from ..ir.ops import Node, Op, VerifyError, make
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



def rasterize_gaussians_backward(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor,
                                 depths: Tensor, radii: Tensor, final_t: Tensor, last: Tensor, d_image: Tensor,
                                 width: int, height: int, tile: int = 16, background: Sequence[float] | None = None,
                                 pixel_center: float = 0.5, d_final_t: Tensor | None = None) -> tuple[Tensor, ...]:
    """Gradients (d_means2d, d_conics, d_colors, d_opacities) of a loss through rasterize_gaussians (same
    operands and attributes), given the forward's final_T and last contributors and the loss's gradient
    with respect to the image (and, optionally, final_T)."""
    bg = tuple(float(x) for x in background) if background is not None else (0.0,) * colors.shape[1]
    grads = [d_image] + ([d_final_t] if d_final_t is not None else [])
    srcs = [t.node for t in (means2d, conics, colors, opacities, depths, radii, final_t, last, *grads)]
    return results(make(Op.RASTERIZE_GAUSSIANS_BWD, srcs, width=width, height=height, tile=tile, background=bg,
                        pixel_center=float(pixel_center)))


def project_gaussians_backward(means3d: Tensor, scales: Tensor, quats: Tensor, viewmat: Tensor, intrinsics: Tensor,
                               radii: Tensor, d_means2d: Tensor, d_conics: Tensor, width: int, height: int,
                               camera: str = "pinhole", eps2d: float = 0.3) -> tuple[Tensor, ...]:
    """Gradients (d_means3d, d_scales, d_quats) through project_gaussians (same attributes) given the loss's
    gradients with respect to means2d and conics; zero where radii is 0 (culled)."""
    srcs = [t.node for t in (means3d, scales, quats, viewmat, intrinsics, radii, d_means2d, d_conics)]
    return results(make(Op.PROJECT_GAUSSIANS_BWD, srcs, width=width, height=height, camera=camera,
                        eps2d=float(eps2d)))


def _forward_of(t: Tensor, op: Op, index: int, what: str) -> Node:
    """The `op` node whose result `index` `t` is (VerifyError naming `what` otherwise)."""
    n = t.node
    if n.op is not Op.RESULT or n.src[0].op is not op or n.attr("index") != index:
        raise VerifyError(f"splat_backward: {what} must be result {index} of a {op.value} node, got {n!r}")
    return n.src[0]


def splat_backward(raster: Sequence[Tensor], d_image: Tensor, d_final_t: Tensor | None = None) -> dict[str, Tensor]:
    """The backward of a splatting forward, from its results: `raster` is what
    `rasterize_gaussians(..., last_contributor=True)` returned (image, final_T, last). Returns gradients by
    operand name: means2d, conics, colors, opacities, and, when means2d and conics are the results of one
    project_gaussians, means3d, scales and quats through it; when the colours are sh_to_color's, sh_coeffs
    too, and the SH view direction's share of the means gradient is added to means3d (or, without a
    projection of the same means, returned as means3d alone)."""
    if len(raster) != 3:
        raise VerifyError(f"splat_backward: raster must be the 3 results of rasterize_gaussians(..., "
                          f"last_contributor=True) (image, final_T, last), got {len(raster)}")
    fwd = _forward_of(raster[0], Op.RASTERIZE_GAUSSIANS, 0, "image")
    for i, name in ((1, "final_T"), (2, "last")):
        if _forward_of(raster[i], Op.RASTERIZE_GAUSSIANS, i, name) is not fwd:
            raise VerifyError(f"splat_backward: {name} comes from another rasterize_gaussians than the image")
    m2d_t, con_t, col_t, op_t, dep_t, rad_t = (Tensor(s) for s in fwd.src)
    dm, dc, dcol, dop = rasterize_gaussians_backward(
        m2d_t, con_t, col_t, op_t, dep_t, rad_t, raster[1], raster[2], d_image, width=fwd.attr("width"),
        height=fwd.attr("height"), tile=fwd.attr("tile"), background=fwd.attr("background"),
        pixel_center=fwd.attr("pixel_center"), d_final_t=d_final_t)
    out = {"means2d": dm, "conics": dc, "colors": dcol, "opacities": dop}
    m2d, con = fwd.src[0], fwd.src[1]
    proj = m2d.src[0] if m2d.op is Op.RESULT and m2d.src[0].op is Op.PROJECT_GAUSSIANS else None
    if proj is not None and m2d.attr("index") == 0 and con.op is Op.RESULT and con.src[0] is proj \
            and con.attr("index") == 1:
        p = [Tensor(s) for s in proj.src]
        radii = Tensor(make(Op.RESULT, [proj], index=3))
        out["means3d"], out["scales"], out["quats"] = project_gaussians_backward(
            p[0], p[1], p[2], p[4], p[5], radii, dm, dc, width=proj.attr("width"), height=proj.attr("height"),
            camera=proj.attr("camera"), eps2d=proj.attr("eps2d"))
    sh = fwd.src[2]
    if sh.op is Op.SH_TO_COLOR:
        out["sh_coeffs"], d_means = sh_to_color_backward(Tensor(sh.src[0]), Tensor(sh.src[1]), Tensor(sh.src[2]),
                                                         dcol, degree=sh.attr("degree"))
        if "means3d" not in out:
            out["means3d"] = d_means
        elif sh.src[1] is proj.src[0]:  # type: ignore[union-attr]
            out["means3d"] = out["means3d"] + d_means
        else:
            out["sh_means"] = d_means
    return out


def sh_to_color_backward(coeffs: Tensor, means3d: Tensor, viewmat: Tensor, d_colors: Tensor,
                         degree: int | None = None) -> tuple[Tensor, Tensor]:
    """Gradients (d_coeffs [N, K, 3], d_means3d [N, 3]) through sh_to_color (same operands and degree) given
    the loss's gradient with respect to the colours; the means' share comes through the view direction."""
    extra = {} if degree is None else {"degree": degree}
    d_coeffs, d_means = results(make(Op.SH_TO_COLOR_BWD, [coeffs.node, means3d.node, viewmat.node, d_colors.node],
                                     **extra))
    return d_coeffs, d_means


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
