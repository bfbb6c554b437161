"""Splatting family, projection ("splat_project"): project_gaussians in one launch, one program per
BLOCK Gaussians, everything in float32 registers (camera transform, covariance R S S^T R^T, EWA
Jacobian of the pinhole or fisheye camera, 2D covariance, conic, radius, culling).

Before the launch the host checks the values the reference would turn into garbage silently
(SplatInputError naming the tensor): non-finite means, scales or view matrix, scales <= 0,
quaternions of zero norm, focal lengths <= 0. The checks read the inputs (one device sync)."""

from __future__ import annotations

from typing import Any

from ...ir.ops import Node, Op
from ...schedule.config import Config
from ...schedule.target import Target
from ...passes.partition import Kernel, KernelGraph
from ..base import KernelSpec
from ..registry import register_family
from .common import Operand, SplatInputError, anchor_operands, first_bad, result_outputs

OPERANDS = ("means3d", "scales", "quats", "opacities", "viewmat", "K")
ROLES = ("means2d", "conics", "depths", "radii")
FLOPS_PER_GAUSSIAN = 250  # transform 18, quaternion 30, Sigma 45, W Sigma W^T 90, J C J^T 30, conic/radius 30


@register_family("project_gaussians")
class ProjectSpec(KernelSpec):
    """project_gaussians: means3d, scales, quats, opacities, viewmat, K -> means2d, conics, depths, radii."""

    family = "splat_project"

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        super().__init__(kg, kernel)
        node = self.anchor_node(Op.PROJECT_GAUSSIANS)
        self.node = node
        self.N = node.src[0].shape[0]
        self.width, self.height = node.attr("width"), node.attr("height")
        self.camera = node.attr("camera")
        self.near, self.far, self.eps2d = node.attr("near"), node.attr("far"), node.attr("eps2d")
        self.ops: dict[str, Operand] = anchor_operands(self, node, OPERANDS)
        # A fused sh_to_color sibling (kernels/splat/__init__.py): its colours come out of this kernel.
        self.sh = next((m for m in kernel.group.nodes if m.op is Op.SH_TO_COLOR), None)
        members: tuple[tuple[Node, str], ...] = ()
        if self.sh is not None:
            self.ops.update(anchor_operands(self, self.sh, ("sh_coeffs",)))
            members = ((self.sh, "colors"),)
        self.outs = result_outputs(self, node, ROLES, members)

    @property
    def sh_count(self) -> int:
        """Spherical-harmonic basis functions evaluated per channel ((degree + 1)^2; 0 without SH)."""
        return 0 if self.sh is None else (self.sh.attr("degree") + 1) ** 2

    def program_description(self) -> dict[str, Any]:
        out = {"N": self.N, "width": self.width, "height": self.height, "camera": self.camera,
               "near": self.near, "far": self.far, "eps2d": self.eps2d,
               "outputs": sorted(self.outs.items())}
        if self.sh is not None:  # only with SH, so projections without it keep their keys
            out["sh_degree"] = self.sh.attr("degree")
        return out

    # -- schedule --
    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        return {"BLOCK": (32, 64, 128, 256), "num_warps": (1, 2, 4, 8), "num_stages": (1,)}

    def constraints(self, config: Config, target: Target) -> list[str]:
        if config.int("BLOCK") < 32 * config.int("num_warps"):
            return [f"BLOCK={config['BLOCK']} leaves warps idle (BLOCK >= 32 * num_warps)"]
        return []

    def default_config(self, target: Target) -> Config:
        return Config(BLOCK=128, num_warps=4, num_stages=1)

    def grid(self, config: Config) -> tuple[int, int, int]:
        return (-(-self.N // config.int("BLOCK")), 1, 1)

    def triton_constexprs(self, config: Config) -> dict[str, Any]:
        return {"BLOCK": config.int("BLOCK")}

    # -- cost hooks --
    def flops(self) -> float:
        return float((FLOPS_PER_GAUSSIAN + (40 + 6 * self.sh_count if self.sh_count else 0)) * self.N)

    def mma_dtype(self) -> None:
        return None

    def shared_bytes(self, config: Config) -> float:
        return 0.0

    def registers_per_thread(self, config: Config, target: Target) -> float:
        """About 90 live f32 values per Gaussian (the covariance chain), BLOCK / threads Gaussians each."""
        per_thread = config.int("BLOCK") / (32 * config.int("num_warps"))
        return 32.0 + (90.0 + self.sh_count) * per_thread

    def family_features(self, config: Config) -> dict[str, float]:
        out = {"gaussians": float(self.N), "fisheye": float(self.camera == "fisheye")}
        if self.sh is not None:
            out["sh_bases"] = float(self.sh_count)
        return out

    # -- host checks (run before the launch: SplatInputError, never a garbage image) --
    def aux_args(self, config: Config, inputs: list[Any], device: Any) -> list[Any]:
        """No auxiliary tensors; checks the input values first (see the module docstring)."""
        check_projection_inputs(self.ops, inputs)
        if self.sh is not None:
            check_sh_inputs(self.ops, inputs)
        return []


def check_projection_inputs(ops: dict[str, Operand], inputs: list[Any]) -> None:
    """SplatInputError naming the first tensor whose values project_gaussians cannot take."""
    import torch

    def val(name: str) -> Any:
        return ops[name].view_of(inputs[ops[name].buffer]).to(torch.float64)

    what = "project_gaussians"
    means, scales, quats, view, k = (val(n) for n in ("means3d", "scales", "quats", "viewmat", "K"))
    for name, x in (("means3d", means), ("scales", scales), ("quats", quats)):
        bad = ~torch.isfinite(x).all(dim=1)
        if bool(bad.any()):
            raise SplatInputError(f"{what}: {name} has non-finite values in {first_bad(bad)}; every value must "
                                  "be finite")
    bad = (scales <= 0).any(dim=1)
    if bool(bad.any()):
        raise SplatInputError(f"{what}: scales must be > 0 (linear scales, not logs); {first_bad(bad)} "
                              "hold a zero or negative scale")
    bad = (quats * quats).sum(dim=1) < 1e-24
    if bool(bad.any()):
        raise SplatInputError(f"{what}: quats of zero norm cannot be normalised into a rotation: {first_bad(bad)}")
    if not bool(torch.isfinite(view).all()):
        raise SplatInputError(f"{what}: viewmat has non-finite values")
    fx, fy = float(k[0, 0]), float(k[1, 1])
    if not (fx > 0 and fy > 0 and bool(torch.isfinite(k).all())):
        raise SplatInputError(f"{what}: K needs finite focal lengths fx, fy > 0, got fx={fx}, fy={fy}")


def check_sh_inputs(ops: dict[str, Operand], inputs: list[Any]) -> None:
    """SplatInputError for SH coefficients that are not finite, or a view matrix whose rotation part has
    no inverse (the camera centre -R^-1 t the view directions start from)."""
    import torch

    coeffs = ops["sh_coeffs"].view_of(inputs[ops["sh_coeffs"].buffer]).to(torch.float64)
    bad = ~torch.isfinite(coeffs).flatten(1).all(dim=1)
    if bool(bad.any()):
        raise SplatInputError(f"sh_to_color: coeffs has non-finite values in {first_bad(bad)}; every "
                              "coefficient must be finite")
    view = ops["viewmat"].view_of(inputs[ops["viewmat"].buffer]).to(torch.float64)
    rot = view[:3, :3]
    if not abs(float(torch.linalg.det(rot))) > 1e-12 * float(rot.abs().max()) ** 3:
        raise SplatInputError("sh_to_color: viewmat's rotation part viewmat[:3, :3] is singular, so the camera has "
                              "no centre to take view directions from")
