"""Splatting family, rasterization forward ("splat_raster"): rasterize_gaussians as one launch plan.

1. `{name}_count` (one program per BLOCK_G Gaussians): tiles each Gaussian covers, by the reference's
   rectangle rule (ir/splat_op.py tile_rect), into workspace `counts` [N];
2. `{name}_scan` (one program): exclusive scan of counts into `offsets` [N + 1]; offsets[N] is the
   number of (tile, Gaussian) intersections;
3. `{name}_emit` (per BLOCK_G Gaussians): 64-bit keys tile << 32 | float bits of depth into `keys`
   and Gaussian ids into `ids`, each Gaussian at its offset, tiles row-major, so ids ascend per tile;
4. `{name}_sort`, a HOST STEP (schedule/launch.py `Launch.host`): torch.sort(keys[:total], stable)
   and the ids gathered into `sids` (stable: equal depths keep index order, as the reference);
5. `{name}_ranges` (per BLOCK_R intersections): each tile's [start, end) in the sorted list, into
   the zeroed `ranges` [tiles, 2] (an empty tile keeps [0, 0));
6. `{name}_render` (one program per tile, tile x tile pixels): Gaussians in batches of BATCH, the
   batch's alphas as a [pixels, BATCH] tile, front-to-back compositing by a cumulative product
   along the batch (the reference's rules: alpha <= 0.99, skip alpha < 1/255, stop before a
   Gaussian would take T below 1e-4); stops early once every pixel of the tile has stopped.

The tile is the op's `tile` attribute (it decides which Gaussians a pixel visits, so it is part of
the result, not a free knob): 8, 16 or 32. Workspaces are sized for the worst case (every Gaussian
on every tile: N x tiles intersections), which bounds scenes to what that fits; sizing them from
offsets[N] needs a plan step that allocates after the scan."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...ir.ops import Op
from ...schedule.config import Config
from ...schedule.launch import Arg, Launch, Workspace
from ...schedule.target import Target
from ...passes.partition import Kernel, KernelGraph
from ..base import KernelSpec
from ..lowering import LoweringError
from ..registry import register_family
from .common import Operand, SplatInputError, anchor_operands, first_bad, result_outputs

OPERANDS = ("means2d", "conics", "colors", "opacities", "depths", "radii")
ROLES = ("image", "final_T", "last")
TILES = (8, 16, 32)


@register_family("rasterize_gaussians")
class RasterSpec(KernelSpec):
    """rasterize_gaussians: tile binning, sorting and front-to-back compositing (module docstring)."""

    family = "splat_raster"

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        super().__init__(kg, kernel)
        node = self.anchor_node(Op.RASTERIZE_GAUSSIANS)
        self.node = node
        self.N, self.C = node.src[2].shape
        self.width, self.height, self.tile = node.attr("width"), node.attr("height"), node.attr("tile")
        if self.tile not in TILES:
            raise LoweringError(f"{self.name}: rasterize_gaussians with tile={self.tile} on the triton backend: "
                                f"the tile must be one of {list(TILES)}")
        self.background = tuple(node.attr("background"))
        self.pixel_center = node.attr("pixel_center")
        self.gx, self.gy = -(-self.width // self.tile), -(-self.height // self.tile)
        self.ops: dict[str, Operand] = anchor_operands(self, node, OPERANDS)
        self.outs = result_outputs(self, node, ROLES)

    @property
    def tiles(self) -> int:
        return self.gx * self.gy

    @property
    def capacity(self) -> int:
        """Intersection slots: every Gaussian on every tile (the worst case)."""
        return max(1, self.N * self.tiles)

    def program_description(self) -> dict[str, Any]:
        return {"N": self.N, "C": self.C, "width": self.width, "height": self.height, "tile": self.tile,
                "background": list(self.background), "pixel_center": self.pixel_center,
                "outputs": sorted(self.outs.items())}

    # -- schedule --
    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        return {"BATCH": (8, 16, 32), "BLOCK_G": (64, 128, 256), "num_warps": (2, 4, 8), "num_stages": (1,)}

    def constraints(self, config: Config, target: Target) -> list[str]:
        pixels = self.tile * self.tile
        if pixels * config.int("BATCH") > 32 * 32 * config.int("num_warps") * 8:
            return [f"a {pixels} x {config['BATCH']} alpha tile is over 256 values per thread with "
                    f"{config['num_warps']} warps (registers spill)"]
        return []

    def default_config(self, target: Target) -> Config:
        return Config(BATCH=16, BLOCK_G=128, num_warps=8, num_stages=1)

    def grid(self, config: Config) -> tuple[int, int, int]:
        """The render launch's grid: one program per tile."""
        return (self.tiles, 1, 1)

    def triton_constexprs(self, config: Config) -> dict[str, Any]:
        return {"BATCH": config.int("BATCH")}

    def workspaces(self, config: Config, sizes: Mapping[str, int] | None = None) -> list[Workspace]:
        """The binning's scratch (the backward's plan has the same: it bins again, raster_bwd_spec.py)."""
        cap = self.capacity
        return [Workspace("counts", (self.N,), "i32"), Workspace("offsets", (self.N + 1,), "i32"),
                Workspace("keys", (cap,), "i64"), Workspace("ids", (cap,), "i32"), Workspace("sids", (cap,), "i32"),
                Workspace("ranges", (self.tiles, 2), "i32", zeroed=True)]

    def binning_launches(self, config: Config, by: Mapping[str, Arg]) -> list[Launch]:
        """count, scan, emit, the host sort and ranges: launches 1-5 of the module docstring."""
        def pick(*names: str) -> tuple[Arg, ...]:
            return tuple(by[n] for n in names)

        m2d, dep, rad = (self.ops[n].arg for n in ("means2d", "depths", "radii"))
        per_g = (-(-self.N // config.int("BLOCK_G")), 1, 1)
        block_g = {"BLOCK_G": config.int("BLOCK_G")}
        return [
            self.launch(f"{self.name}_count", per_g, config, pick(*dict.fromkeys((m2d, rad)), "counts"), block_g),
            self.launch(f"{self.name}_scan", (1, 1, 1), config, pick("counts", "offsets"), {"SCAN": 1024}),
            self.launch(f"{self.name}_emit", per_g, config,
                        pick(*dict.fromkeys((m2d, dep, rad)), "offsets", "keys", "ids"), block_g),
            Launch(f"{self.name}_sort", (), pick("offsets", "keys", "ids", "sids"), host=True),
            self.launch(f"{self.name}_ranges", (-(-self.capacity // 1024), 1, 1), config,
                        pick("offsets", "keys", "ranges"), {"BLOCK_R": 1024}),
        ]

    def launches(self, config: Config, args: tuple[Arg, ...],
                 sizes: Mapping[str, int] | None = None) -> list[Launch]:
        by = {a.name: a for a in args}
        outs = tuple(by[o] for o in sorted(self.outs.values()))
        render_in = tuple(by[a] for a in dict.fromkeys(self.ops[n].arg for n in OPERANDS[:4]))
        return self.binning_launches(config, by) + [
            self.launch(f"{self.name}_render", self.grid(config), config,
                        render_in + (by["sids"], by["ranges"]) + outs)]

    # -- cost hooks --
    def flops(self) -> float:
        """The compositing of every pixel with the Gaussians of its tile, at an assumed 8 per tile."""
        return float(20 * self.width * self.height * 8 + 40 * self.N)

    def mma_dtype(self) -> None:
        return None

    def shared_bytes(self, config: Config) -> float:
        return 0.0

    def registers_per_thread(self, config: Config, target: Target) -> float:
        """About six live [pixels, BATCH] f32 tiles (power, alpha, the cumulative product, T x it, weights)."""
        per_thread = self.tile * self.tile * config.int("BATCH") / (32 * config.int("num_warps"))
        return 40.0 + 6.0 * per_thread

    def family_features(self, config: Config) -> dict[str, float]:
        return {"gaussians": float(self.N), "channels": float(self.C), "tiles": float(self.tiles),
                "tile": float(self.tile)}

    def report_lines(self, config: Config) -> list[str]:
        return [f"{self.tiles} tiles of {self.tile}x{self.tile}; key sort on the host step {self.name}_sort "
                f"(torch.sort); workspaces {sum(w.nbytes for w in self.workspaces(config))} bytes"]

    def aux_args(self, config: Config, inputs: list[Any], device: Any) -> list[Any]:
        """No auxiliary tensors; checks depths and radii first (SplatInputError)."""
        check_raster_inputs(self.ops, inputs)
        return []


def check_raster_inputs(ops: dict[str, Operand], inputs: list[Any]) -> None:
    """SplatInputError for values the binning cannot key: a negative radius, or a negative or
    non-finite depth of a Gaussian with a radius (its key would land in another tile)."""
    rad = ops["radii"].view_of(inputs[ops["radii"].buffer])
    dep = ops["depths"].view_of(inputs[ops["depths"].buffer])
    if bool((rad < 0).any()):
        raise SplatInputError(f"rasterize_gaussians: radii must be >= 0 (0 = culled): {first_bad(rad < 0)}")
    bad = (rad > 0) & ~(dep >= 0)
    if bool(bad.any()):
        raise SplatInputError(f"rasterize_gaussians: depths of Gaussians with a radius must be finite and >= 0 "
                              f"(in front of the camera): {first_bad(bad)}")
