"""Splatting family, rasterization backward ("splat_raster_bwd"): rasterize_gaussians_bwd as one plan.

1. `{name}_zero` (per BLOCK_G Gaussians): zeros into the gradient outputs, which the render
   launch accumulates into with atomics (outputs are not workspaces: an init launch instead of a
   zero-filled workspace keeps the plan exportable, export/ refuses zeroed workspaces);
2-6. count, scan, emit, sort (host step), ranges: the forward's tile binning, the same functions
   rendered from the same template code (raster_spec.py, raster_template.py);
7. `{name}_render_bwd` (one program per tile): the tile's Gaussians BACK TO FRONT in batches of
   BATCH, from each pixel's stored final transmittance and last contributor, as gsplat and the Inria
   code do. Per batch, as [pixels, BATCH] tiles: which entries a pixel composited (at or before its
   last contributor, by a reverse running count of matches, and passing the alpha rules), the
   transmittance before each (the stored T divided by a reverse cumulative product of 1 - alpha),
   the colour behind it (a reverse cumulative sum), then the gradients of colours, opacities, means2d
   and conics summed over the tile's pixels and added with one atomic per Gaussian and value. The walk
   starts at the first Gaussian deeper than every pixel's last contributor (a binary search of the
   sorted keys), so what the forward's early termination skipped is skipped here too.

Why the binning runs again rather than being taken from the forward: the forward's binning lives in
its plan's workspaces, which exist for one run of one kernel (schedule/launch.py); making them graph
values would put worst-case-sized, schedule-dependent buffers (N x tiles intersections) into the IR,
whose values the reference defines. Binning is O(N + intersections) plus the sort, small next to the
render launches at training sizes; a plan spanning forward and backward could share it later."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...ir.ops import Op
from ...passes.partition import Kernel, KernelGraph
from ...schedule.config import Config
from ...schedule.launch import Arg, Launch
from ...schedule.target import Target
from ..base import KernelSpec
from ..lowering import LoweringError
from ..registry import register_family
from .common import Operand, anchor_operands, result_outputs
from .raster_spec import SORT_NOTE, TILES, RasterSpec, check_raster_inputs

OPERANDS = ("means2d", "conics", "colors", "opacities", "depths", "radii", "final_T", "last", "d_image", "d_final_T")
ROLES = ("d_means2d", "d_conics", "d_colors", "d_opacities")
WIDTH = {"d_means2d": 2, "d_conics": 3, "d_opacities": 1}  # values per Gaussian (d_colors: C)


@register_family("rasterize_gaussians_bwd")
class RasterBwdSpec(RasterSpec):
    """rasterize_gaussians_bwd: binning again, then back-to-front gradients per tile (module docstring)."""

    family = "splat_raster_bwd"

    def __init__(self, kg: KernelGraph, kernel: Kernel):  # noqa: D107 - not RasterSpec's: another anchor
        KernelSpec.__init__(self, kg, kernel)
        node = self.anchor_node(Op.RASTERIZE_GAUSSIANS_BWD)
        self.node = node
        self.N, self.C = node.src[2].shape
        self.sparse, self.K, self.L = False, 0, 0  # RasterSpec's hooks read them; the backward is dense
        self.width, self.height, self.tile = node.attr("width"), node.attr("height"), node.attr("tile")
        if self.tile not in TILES:
            raise LoweringError(f"{self.name}: rasterize_gaussians_bwd with tile={self.tile} on the triton "
                                f"backend: the tile must be one of {list(TILES)}")
        self.background = tuple(node.attr("background"))
        self.pixel_center = node.attr("pixel_center")
        self.gx, self.gy = -(-self.width // self.tile), -(-self.height // self.tile)
        self.ops: dict[str, Operand] = anchor_operands(self, node, OPERANDS[:len(node.src)])
        self.outs = result_outputs(self, node, ROLES)

    def width_of(self, role: str) -> int:
        """Values per Gaussian of gradient output `role`."""
        return WIDTH.get(role, self.C)

    def program_description(self) -> dict[str, Any]:
        return {**super().program_description(), "d_final_T": "d_final_T" in self.ops}

    # -- schedule --
    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        """Batch, Gaussians per binning program, warps: the binning keeps the rectangle rule (no ISECT
        knob yet) and the gradient render has no channel chunks."""
        return {"BATCH": (8, 16, 32), "BLOCK_G": (64, 128, 256), "num_warps": (2, 4, 8), "num_stages": (1,)}

    def grid(self, config: Config) -> tuple[int, int, int]:
        """One program per tile, every channel in it (the forward's channel chunks do not apply)."""
        return (self.tiles, 1, 1)

    def constraints(self, config: Config, target: Target) -> list[str]:
        pixels = self.tile * self.tile
        if pixels * config.int("BATCH") > 32 * 32 * config.int("num_warps") * 4:
            return [f"a {pixels} x {config['BATCH']} gradient tile is over 128 values per thread with "
                    f"{config['num_warps']} warps (about twelve such tiles are live: registers spill)"]
        return []

    def default_config(self, target: Target) -> Config:
        return Config(BATCH=8, BLOCK_G=128, num_warps=8, num_stages=1)

    def launches(self, config: Config, args: tuple[Arg, ...],
                 sizes: Mapping[str, int] | None = None) -> list[Launch]:
        by = {a.name: a for a in args}
        outs = tuple(by[o] for o in sorted(self.outs.values()))
        per_g = (-(-self.N // config.int("BLOCK_G")), 1, 1)
        ins = tuple(by[a] for a in dict.fromkeys(self.ops[n].arg for n in self.ops if n != "radii"))
        return [self.launch(f"{self.name}_zero", per_g, config, outs, {"BLOCK_G": config.int("BLOCK_G")})] \
            + self.binning_launches(config, by) + [
            self.launch(f"{self.name}_render_bwd", self.grid(config), config,
                        ins + (by["keys"], by["sids"], by["ranges"]) + outs)]

    # -- cost hooks --
    def flops(self) -> float:
        """Twice the forward's compositing (recomputed alphas, then the gradients), at 8 Gaussians a tile."""
        return float(60 * self.width * self.height * 8 + 40 * self.N)

    def registers_per_thread(self, config: Config, target: Target) -> float:
        """About twelve live [pixels, BATCH] f32 tiles (alpha, transmittance, scans, gradients)."""
        per_thread = self.tile * self.tile * config.int("BATCH") / (32 * config.int("num_warps"))
        return 48.0 + 12.0 * per_thread

    def report_lines(self, config: Config) -> list[str]:
        return [f"{self.tiles} tiles of {self.tile}x{self.tile}, back to front; the binning runs again; gradients by "
                f"atomics after {self.name}_zero", SORT_NOTE.format(name=self.name), self.workspace_note(config)]

    def aux_args(self, config: Config, inputs: list[Any], device: Any) -> list[Any]:
        """No auxiliary tensors; checks depths and radii first (SplatInputError), as the forward does."""
        check_raster_inputs(self.ops, inputs)
        return []
