"""Gaussian splatting family: the projection kernel ("splat_project") and the tile-binned
rasterizer ("splat_raster": count, scan, emit, sort, ranges and render launches of one plan), and their
backward ("splat_project_bwd", "splat_raster_bwd").
The projection takes the spherical-harmonic colours (sh_to_color) of the same Gaussians as a sibling."""

from __future__ import annotations

from ...ir.ops import Op
from ...passes.fusion_rules import GroupRule, Sibling
from ..registry import register_fusion, register_template
from .project_bwd_spec import ProjectBwdSpec
from .project_spec import ProjectSpec
from .raster_bwd_spec import RasterBwdSpec
from .raster_spec import RasterSpec

register_template(ProjectSpec.family, "triton", __name__ + ".project_template")
register_template(RasterSpec.family, "triton", __name__ + ".raster_template")
# sh_to_color(coeffs, means, viewmat) reading the projection's means3d (operand 0) and viewmat (4) joins it:
# the colours come out of the projection kernel, from the values it loads anyway.
SH_SIBLING = Sibling(frozenset({Op.SH_TO_COLOR}), shared=((1, 0), (2, 4)))
register_fusion(ProjectSpec.family, GroupRule("project_gaussians", anchors=frozenset({Op.PROJECT_GAUSSIANS}),
                                              siblings=(SH_SIBLING,)))
register_fusion(RasterSpec.family, GroupRule("rasterize_gaussians", anchors=frozenset({Op.RASTERIZE_GAUSSIANS})))
register_template(ProjectBwdSpec.family, "triton", __name__ + ".project_bwd_template")
# sh_to_color_bwd(coeffs, means, viewmat, d_colors) on the projection backward's means3d (0) and viewmat (3)
# joins it the same way: the SH gradients come out of the projection backward's kernel.
SH_BWD_SIBLING = Sibling(frozenset({Op.SH_TO_COLOR_BWD}), shared=((1, 0), (2, 3)))
register_fusion(ProjectBwdSpec.family, GroupRule("project_gaussians_bwd",
                                                 anchors=frozenset({Op.PROJECT_GAUSSIANS_BWD}),
                                                 siblings=(SH_BWD_SIBLING,)))
register_template(RasterBwdSpec.family, "triton", __name__ + ".raster_bwd_template")
register_fusion(RasterBwdSpec.family, GroupRule("rasterize_gaussians_bwd",
                                                anchors=frozenset({Op.RASTERIZE_GAUSSIANS_BWD})))

__all__ = ["ProjectBwdSpec", "ProjectSpec", "RasterBwdSpec", "RasterSpec"]
