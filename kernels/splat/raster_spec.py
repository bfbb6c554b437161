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

Features (kernels/splat/raster_features.py): more than four channels render as [pixels, CHUNK] tiles
with tl.dot, one program per (tile, channel chunk); the sparse-coefficient variant (8 operands: K
weights into an [L, C] codebook) splats L coefficient channels and multiplies by the codebook per
pixel, one program per (tile, block of PIX pixels).

The tile is the op's `tile` attribute (it decides which Gaussians a pixel visits, so it is part of
the result, not a free knob): 8, 16 or 32. The intersection workspaces keys, ids and sids are sized from
the scan: the plan reads offsets[N] back to the host after `{name}_scan` (a Readback, schedule/launch.py:
one 4-byte device-to-host copy, as gsplat reads its cumsum's last element) and allocates them with that
many elements; the ranges launch's grid comes from the same value. Their declared shape, every Gaussian
on every tile (N x tiles), is the worst case each read value is checked against and what AOT builds see
(an export refuses the plan: a bundle has no Python to read back and allocate, export/plan.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ...ir.ops import Op
from ...schedule.config import Config
from ...schedule.launch import Arg, Launch, Readback, Workspace
from ...schedule.target import Target
from ...passes.partition import Kernel, KernelGraph
from ..base import KernelSpec
from ..lowering import LoweringError, next_pow2
from ..registry import register_family
from .common import Operand, SplatInputError, anchor_operands, first_bad, result_outputs

OPERANDS = ("means2d", "conics", "colors", "opacities", "depths", "radii", "indices", "codebook")
ROLES = ("image", "final_T", "last")
TILES = (8, 16, 32)
ISECT = ("ellipse", "rect")  # the binning's tile test: the rectangle's tiles the ellipse reaches, or all of them
SORT_NOTE = ("sort: torch.sort on the device (radix sort), not a tilefuse kernel: the host step {name}_sort "
             "calls it on the keys where they live (no copy to the host)")
UNROLLED_CHANNELS = 4  # up to this many channels, one accumulator per channel; more take the chunked tl.dot path


@register_family("rasterize_gaussians")
class RasterSpec(KernelSpec):
    """rasterize_gaussians: tile binning, sorting and front-to-back compositing (module docstring)."""

    family = "splat_raster"

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        super().__init__(kg, kernel)
        node = self.anchor_node(Op.RASTERIZE_GAUSSIANS)
        self.node = node
        self.N = node.src[0].shape[0]
        self.C = node.shape[2]
        # Sparse-coefficient features: K weights of L codebook rows per Gaussian (raster_features.py).
        self.sparse = len(node.src) == 8
        self.K, self.L = (node.src[2].shape[1], node.src[7].shape[0]) if self.sparse else (0, 0)
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

    @property
    def feature_render(self) -> bool:
        """Whether the render accumulates channels as [pixels, CHUNK] tiles with tl.dot (many channels or
        sparse coefficients) instead of one unrolled accumulator per channel."""
        return self.sparse or self.C > UNROLLED_CHANNELS

    @property
    def lpad(self) -> int:
        """The sparse variant's per-pixel coefficient channels: L padded to a power of two >= 16 (tl.dot)."""
        return max(16, next_pow2(self.L))

    def program_description(self) -> dict[str, Any]:
        out = {"N": self.N, "C": self.C, "width": self.width, "height": self.height, "tile": self.tile,
               "background": list(self.background), "pixel_center": self.pixel_center,
               "outputs": sorted(self.outs.items())}
        if self.sparse:  # only then, so the dense rasterizer keeps its keys
            out["sparse"] = {"K": self.K, "L": self.L}
        return out

    # -- schedule --
    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        space = {"BATCH": (8, 16, 32), "BLOCK_G": (64, 128, 256), "num_warps": (2, 4, 8), "num_stages": (1,),
                 "ISECT": ISECT}
        if self.sparse:
            return {**space, "CHUNK": (16, 32, 64), "PIX": (32, 64, 128, 256)}
        return {**space, "CHUNK": (16, 32, 64)} if self.feature_render else space

    def constraints(self, config: Config, target: Target) -> list[str]:
        pixels, threads = self.tile * self.tile, 32 * config.int("num_warps")
        if pixels * config.int("BATCH") > 32 * 32 * config.int("num_warps") * 8:
            return [f"a {pixels} x {config['BATCH']} alpha tile is over 256 values per thread with "
                    f"{config['num_warps']} warps (registers spill)"]
        if not self.feature_render:
            return []
        out = []
        if config.int("BATCH") < 16:
            out.append(f"BATCH={config['BATCH']} < 16: tl.dot needs a contraction of 16 or more")
        if config.int("CHUNK") > max(16, next_pow2(self.C)):
            out.append(f"CHUNK={config['CHUNK']} is wider than the {self.C} channels need")
        if self.sparse and config.int("PIX") > pixels:
            out.append(f"PIX={config['PIX']} is more than the tile's {pixels} pixels")
        pix, width = self.render_pixels(config), self.lpad if self.sparse else config.int("CHUNK")
        if pix * width // threads > 32:
            out.append(f"a {pix}-pixel accumulator of {width} channels is {pix * width // threads} values per "
                       f"thread with {config['num_warps']} warps (over 32: registers spill)")
        return out

    def render_pixels(self, config: Config) -> int:
        """Pixels one render program composites: PIX of the sparse render, else the whole tile."""
        return min(config.int("PIX"), self.tile * self.tile) if self.sparse else self.tile * self.tile

    def default_config(self, target: Target) -> Config:
        base = Config(BATCH=16, BLOCK_G=128, ISECT="ellipse", num_warps=8, num_stages=1)
        if self.sparse:  # a [64, L] accumulator: 16 values per thread at L = 64
            return base.replace(CHUNK=16, PIX=min(64, self.tile * self.tile))
        if self.feature_render:
            return base.replace(CHUNK=min(32, max(16, next_pow2(self.C))))
        return base

    def ellipse(self, config: Config) -> bool:
        """Whether binning keeps only the tiles a Gaussian's ellipse reaches (raster_ellipse.py)."""
        return config.get("ISECT") == "ellipse"

    def splits(self, config: Config) -> int:
        """Render programs per tile: channel chunks of dense features, pixel blocks of sparse ones, else 1."""
        if self.sparse:
            return -(-self.tile * self.tile // self.render_pixels(config))
        return -(-self.C // config.int("CHUNK")) if self.feature_render else 1

    def grid(self, config: Config) -> tuple[int, int, int]:
        """The render launch's grid: one program per tile (x channel chunk or pixel block of features)."""
        return (self.tiles, self.splits(config), 1)

    def triton_constexprs(self, config: Config) -> dict[str, Any]:
        if self.sparse:
            return {"BATCH": config.int("BATCH"), "CHUNK": config.int("CHUNK"), "PIX": self.render_pixels(config)}
        if self.feature_render:
            return {"BATCH": config.int("BATCH"), "CHUNK": config.int("CHUNK")}
        return {"BATCH": config.int("BATCH")}

    def workspaces(self, config: Config, sizes: Mapping[str, int] | None = None) -> list[Workspace]:
        """The binning's scratch (the backward's plan has the same: it bins again, raster_bwd_spec.py)."""
        cap = self.capacity
        return [Workspace("counts", (self.N,), "i32"), Workspace("offsets", (self.N + 1,), "i32"),
                Workspace("keys", (cap,), "i64", sized_by="total"), Workspace("ids", (cap,), "i32", sized_by="total"),
                Workspace("sids", (cap,), "i32", sized_by="total"),
                Workspace("ranges", (self.tiles, 2), "i32", zeroed=True)]

    def readbacks(self, config: Config) -> list[Readback]:
        """offsets[N], the number of (tile, Gaussian) intersections, read after the scan: it sizes keys, ids
        and sids and the ranges launch's grid."""
        return [Readback("total", f"{self.name}_scan", "offsets", self.N)]

    def scratch_bytes_at(self, config: Config, total: int) -> int:
        """Workspace bytes of one run with `total` intersections (the plan's readback value)."""
        return self.launch_plan(config).at({"total": total}).scratch_bytes()

    def workspace_note(self, config: Config) -> str:
        """The report's line on the workspaces: which are sized from the scan, the bytes, the worst case."""
        plan = self.launch_plan(config)
        fixed = sum(w.nbytes for w in plan.workspaces if not w.sized_by)
        per = sum(w.nbytes // int(w.shape[0]) for w in plan.workspaces if w.sized_by)
        return (f"workspaces: keys, ids, sids sized from the scan's total (offsets[{self.N}], read back after "
                f"{self.name}_scan): {fixed} bytes + {per} per intersection; worst case (N x tiles) "
                f"{plan.scratch_bytes()} bytes")

    def binning_launches(self, config: Config, by: Mapping[str, Arg]) -> list[Launch]:
        """count, scan, emit, the host sort and ranges: launches 1-5 of the module docstring."""
        def pick(*names: str) -> tuple[Arg, ...]:
            return tuple(by[n] for n in names)

        m2d, con, op, dep, rad = (self.ops[n].arg for n in ("means2d", "conics", "opacities", "depths", "radii"))
        per_g = (-(-self.N // config.int("BLOCK_G")), 1, 1)
        block_g = {"BLOCK_G": config.int("BLOCK_G")}
        shape = (con, op) if self.ellipse(config) else ()  # the ellipse test reads conics and opacities
        return [
            self.launch(f"{self.name}_count", per_g, config, pick(*dict.fromkeys((m2d, rad) + shape), "counts"),
                        block_g),
            self.launch(f"{self.name}_scan", (1, 1, 1), config, pick("counts", "offsets"), {"SCAN": 1024}),
            self.launch(f"{self.name}_emit", per_g, config,
                        pick(*dict.fromkeys((m2d, dep, rad) + shape), "offsets", "keys", "ids"), block_g),
            Launch(f"{self.name}_sort", (), pick("offsets", "keys", "ids", "sids"), host=True),
            replace(self.launch(f"{self.name}_ranges", (-(-self.capacity // 1024), 1, 1), config,
                                pick("offsets", "keys", "ranges"), {"BLOCK_R": 1024}), grid_by=("total", 1024)),
        ]

    def launches(self, config: Config, args: tuple[Arg, ...],
                 sizes: Mapping[str, int] | None = None) -> list[Launch]:
        by = {a.name: a for a in args}
        outs = tuple(by[o] for o in sorted(self.outs.values()))
        render_in = tuple(by[a] for a in dict.fromkeys(
            tuple(self.ops[n].arg for n in OPERANDS[:4]) + self.sparse_args()))
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
        """About six live [pixels, BATCH] f32 tiles (power, alpha, the cumulative product, T x it, weights),
        plus the [pixels, channels] accumulator of the feature render."""
        threads = 32 * config.int("num_warps")
        per_thread = self.render_pixels(config) * config.int("BATCH") / threads
        acc = 0.0
        if self.feature_render:
            acc = self.render_pixels(config) * (self.lpad if self.sparse else config.int("CHUNK")) / threads
        return 40.0 + 6.0 * per_thread + acc

    def sparse_args(self) -> tuple[str, ...]:
        """The sparse variant's extra render arguments (indices, codebook); none otherwise."""
        return (self.ops["indices"].arg, self.ops["codebook"].arg) if self.sparse else ()

    def family_features(self, config: Config) -> dict[str, float]:
        out = {"gaussians": float(self.N), "channels": float(self.C), "tiles": float(self.tiles),
               "tile": float(self.tile), "ellipse_test": float(self.ellipse(config))}
        if self.sparse:
            out.update(codebook_rows=float(self.L), coefficients=float(self.K))
        return out

    def report_lines(self, config: Config) -> list[str]:
        return [f"{self.tiles} tiles of {self.tile}x{self.tile}; " + SORT_NOTE.format(name=self.name),
                self.workspace_note(config)]

    def aux_args(self, config: Config, inputs: list[Any], device: Any) -> list[Any]:
        """No auxiliary tensors; checks depths and radii first (SplatInputError)."""
        check_raster_inputs(self.ops, inputs)
        if self.sparse:
            idx = self.ops["indices"].view_of(inputs[self.ops["indices"].buffer])
            bad = ((idx < 0) | (idx >= self.L)).any(dim=1)
            if bool(bad.any()):
                raise SplatInputError(f"rasterize_gaussians: indices must lie in [0, {self.L}) (rows of the "
                                      f"codebook): {first_bad(bad)} hold one outside")
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
