"""Splatting family, projection backward ("splat_project_bwd"): project_gaussians_bwd in one launch, one
program per BLOCK Gaussians. Each program recomputes the forward's chain in float32 registers (the
projection template's own lines) and walks it back by hand: conic -> 2D covariance -> camera
covariance and EWA Jacobian -> world covariance -> M = R S -> scales and the normalised quaternion ->
the quaternion; the Jacobian and the 2D mean -> the camera-space mean -> means3d. Gaussians with
radius 0 get zero gradients (gsplat's rule). Host checks as the forward's (project_spec.py).

A fused sh_to_color_bwd sibling (kernels/splat/__init__.py) adds the SH gradients: the view direction and
basis again, d_coeffs = basis x the clamp-gated d_colors, and the means' share through the direction
(d basis / d dir, projected off the direction and divided by the distance), as separate outputs."""

from __future__ import annotations

from typing import Any

from ...ir.ops import Node, Op
from ...passes.partition import Kernel, KernelGraph
from ...schedule.config import Config
from ...schedule.target import Target
from ..base import KernelSpec
from ..registry import register_family
from .common import Operand, anchor_operands, result_outputs
from .project_spec import ProjectSpec, check_projection_inputs, check_sh_inputs

OPERANDS = ("means3d", "scales", "quats", "viewmat", "K", "radii", "d_means2d", "d_conics")
ROLES = ("d_means3d", "d_scales", "d_quats")
FLOPS_PER_GAUSSIAN = 650  # the forward's 250 again, then about 400 for the chain back


@register_family("project_gaussians_bwd")
class ProjectBwdSpec(ProjectSpec):
    """project_gaussians_bwd: means3d, scales, quats, viewmat, K, radii, d_means2d, d_conics -> gradients."""

    family = "splat_project_bwd"

    def __init__(self, kg: KernelGraph, kernel: Kernel):  # noqa: D107 - not ProjectSpec's: another anchor
        KernelSpec.__init__(self, kg, kernel)
        node = self.anchor_node(Op.PROJECT_GAUSSIANS_BWD)
        self.node = node
        self.N = node.src[0].shape[0]
        self.width, self.height = node.attr("width"), node.attr("height")
        self.camera, self.eps2d = node.attr("camera"), node.attr("eps2d")
        self.ops: dict[str, Operand] = anchor_operands(self, node, OPERANDS)
        self.sh = next((m for m in kernel.group.nodes if m.op is Op.SH_TO_COLOR_BWD), None)
        members: tuple[tuple[Node, tuple[str, ...]], ...] = ()
        if self.sh is not None:
            sh_ops = anchor_operands(self, self.sh, ("sh_coeffs", "sh_means", "sh_viewmat", "d_colors"))
            self.ops.update({k: sh_ops[k] for k in ("sh_coeffs", "d_colors")})
            members = ((self.sh, ("d_sh_coeffs", "d_sh_means")),)
        self.outs = result_outputs(self, node, ROLES, members)

    def program_description(self) -> dict[str, Any]:
        out = {"N": self.N, "width": self.width, "height": self.height, "camera": self.camera,
               "eps2d": self.eps2d, "outputs": sorted(self.outs.items())}
        if self.sh is not None:  # only with SH, so backward projections without it keep their keys
            out["sh"] = {"degree": self.sh.attr("degree"), "K": self.sh.src[0].shape[1]}
        return out

    def default_config(self, target: Target) -> Config:
        return Config(BLOCK=128, num_warps=4, num_stages=1)

    def flops(self) -> float:
        return float(FLOPS_PER_GAUSSIAN * self.N)

    def registers_per_thread(self, config: Config, target: Target) -> float:
        """About 200 live f32 values per Gaussian (the forward's chain and its gradients)."""
        per_thread = config.int("BLOCK") / (32 * config.int("num_warps"))
        return 32.0 + 200.0 * per_thread

    def aux_args(self, config: Config, inputs: list[Any], device: Any) -> list[Any]:
        """No auxiliary tensors; checks the input values first, as the forward does."""
        check_projection_inputs(self.ops, inputs)
        if self.sh is not None:
            check_sh_inputs(self.ops, inputs)
        return []
