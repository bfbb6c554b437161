"""Matmul family: C = A @ B with f32 accumulation, operand prologues fused into the tile loads and pointwise
epilogues into the tile store. Batched, either operand transposed (strided loads), GROUP_M swizzle, split-K."""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from typing import Any

from ...schedule.config import Config
from ...schedule.launch import Arg, Launch, Workspace
from ...schedule.target import Target
from ...ir import dtypes as dt
from ...ir import expr as ex
from ...ir.expr import E, Expr
from ...ir.ops import Node, Op
from ...ir.text import format_expr
from ...passes.partition import Kernel, KernelGraph
from ...passes.views import base_of
from ..base import BASE_REGISTERS, KernelSpec
from ..registry import register_family
from ..lowering import LoweringError, next_pow2, prod
from . import reductions as red
from .reductions import MatmulReduction
from .tiles import fitted_tiles, padded  # noqa: F401  (padded: re-exported for the quant family)

ACC = "acc"
CPU_VECTOR_REGISTERS = 32  # AVX-512 zmm registers: the micro tile's register budget
CPU_TILE_M = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
CPU_TILE_N = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


@dataclass(frozen=True)
class MatmulOutput:
    index: int  # kernel output buffer
    expr: Expr  # value at (batch..., m, n); reads var "acc" (f32) and loads
    axis: str = ""  # a reduced output: "m" or "n" (reductions.py), its value read from VARs r{i}


@dataclass(frozen=True)
class ScaledDot:
    """Operands whose scales are applied after each K step's dot (block-scaled FP8): `acc += dot(a, b) *
    a_scale * b_scale`. `a`, `b`: loader expressions (MatmulSpec.loaders) of the operand tiles in `dtype`;
    f32 `a_scale` of (r = A's row, c = the step's first k), `b_scale` of (r = that k, c = B's column)."""

    a: Expr
    b: Expr
    a_scale: Expr
    b_scale: Expr
    dtype: dt.DType


@register_family("matmul")
class MatmulSpec(KernelSpec):
    """A (batched) GEMM with fused prologue and epilogue."""

    family = "matmul"
    dynamic_backends = frozenset({"triton", "tvm"})

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        super().__init__(kg, kernel)
        grp = kernel.group
        mm = grp.anchor
        if mm is None:
            raise LoweringError(f"{self.name}: matmul group without an anchor")
        self.anchor: Node = mm
        a, b = mm.src
        ta, tb = mm.attr("trans_a"), mm.attr("trans_b")
        self.batch: tuple[int, ...] = tuple(mm.shape[:-2])
        self.M, self.N = mm.shape[-2], mm.shape[-1]
        self.K = a.shape[-2] if ta else a.shape[-1]
        self.out_dtype = mm.dtype
        lw = self.lowering
        # Operand domains as stored, broadcast over the output batch; transposes swap strides.
        a_dom = self.batch + tuple(a.shape[-2:])[::-1 if ta else 1]
        b_dom = self.batch + tuple(b.shape[-2:])[::-1 if tb else 1]
        self.a_expr = self._operand(a, a_dom, ta)
        self.b_expr = self._operand(b, b_dom, tb)
        self.operand_dtype = dt.promote(self.a_expr.dtype, self.b_expr.dtype)
        if self.operand_dtype.is_int and not (self.a_expr.dtype == dt.i8 and self.b_expr.dtype == dt.i8):
            raise LoweringError(f"{self.name}: integer matmul supports i8 x i8 operands, got "
                                      f"{self.a_expr.dtype} x {self.b_expr.dtype}")
        acc_dt = dt.i32 if self.operand_dtype.is_int else dt.f32
        acc = ex.var(ACC, acc_dt)
        anchor_val = ex.cast(acc, mm.dtype)

        def leaf(n: Node) -> Expr | None:
            return anchor_val if n is mm else None

        stage = red.is_reduced_stage(list(grp.nodes))
        nodes = [m for m in grp.nodes if m.op is Op.REDUCE]
        self.reductions: list[MatmulReduction] = [
            red.plan(m, lw.value(base_of(m.src[0]), tuple(mm.shape), leaf), tuple(mm.shape), acc, self.loads)
            for m in nodes]
        self.outs = [MatmulOutput(i, lw.value(o, tuple(mm.shape), leaf)) for i, o in enumerate(grp.outputs)
                     if id(o) not in stage]
        self.reduced_outs = [self._reduced_output(i, o, nodes) for i, o in enumerate(grp.outputs) if id(o) in stage]
        self.has_prologue = [self.a_expr.op is not E.LOAD, self.b_expr.op is not E.LOAD]

    def _reduced_output(self, index: int, o: Node, nodes: list[Node]) -> MatmulOutput:
        """A member computed from reduction results: its value from VARs r{i} (reduction i's result)."""
        def leaf(n: Node) -> Expr | None:
            b = base_of(n)
            return ex.var(f"r{nodes.index(b)}", b.dtype) if any(b is r for r in nodes) else None

        e = self.lowering.value(o, tuple(o.shape), leaf)
        used = sorted(int(v[1:]) for v in ex.vars_used(e))
        if any(n.op is E.LOAD for n in e.toposort()) or not used:
            raise LoweringError(f"{self.name}: output {index} reads more than reduction results")
        return MatmulOutput(index, e, self.reductions[used[0]].axis)

    def finished_axes(self, config: Config) -> list[str]:
        """The reduced axes whose partials a finishing launch combines (those of more than one tile)."""
        return [a for a in ("m", "n") if any(r.axis == a for r in self.reductions) and self.tiles_along(a, config) > 1]

    def tiles_along(self, axis: str, config: Config) -> int:
        """Output tiles along `axis` ("m" or "n") under a GPU config: a reduction over it combines that many."""
        size, block = (self.M, "BLOCK_M") if axis == "m" else (self.N, "BLOCK_N")
        return -(-size // config.int(block))

    def _operand(self, n: Node, domain: tuple[int, ...], trans: bool) -> Expr:
        """The operand's value at (batch..., row, col) of the logical (untransposed) operand."""
        if trans:
            domain = domain[:-2] + (domain[-1], domain[-2])
        return self.lowering.value(n, domain, self.operand_leaf, swap_last=trans)

    # -- operand-loader hook: a family that computes an operand member itself (kernels/quant) --
    def operand_leaf(self, n: Node) -> Expr | None:
        """A VAR standing for operand member `n` when a loader computes it (`loaders`), else None."""
        return None

    def loaders(self) -> dict[str, Expr]:
        """VAR name -> its loader's value: an expression of the operand's row and column (i32 VARs `r`, `c`)
        and LOADs at explicit flat indices, rendered wherever an operand reads the VAR. row_loaders: the
        VARs constant along a B tile's columns, rendered as [BLOCK_K, 1] tiles at its first column."""
        return {}

    def row_loaders(self) -> dict[str, Expr]:
        """The loaders constant along a B tile's columns (see `loaders`)."""
        return {}

    def specialized(self, config: Config) -> MatmulSpec:
        """This spec as the templates render it under `config` (a copy when loaders depend on knobs)."""
        return self

    def loader_text(self, e: Expr, name: Callable[[Expr], str]) -> str | None:
        """Triton text for loader node `e` rendered by the family itself (inline asm), else None."""
        return None

    def scaled_dot(self, config: Config) -> ScaledDot | None:
        """The operand tiles and per-step scales when scales are applied after each dot, else None."""
        return None

    def program_description(self) -> dict[str, Any]:
        out = {"batch": list(self.batch), "M": self.M, "N": self.N, "K": self.K,
               "a": format_expr(self.a_expr), "b": format_expr(self.b_expr), "out_dtype": self.out_dtype.name,
               "outputs": [[o.index, format_expr(o.expr)] for o in self.outs]}
        if self.reductions:
            out["reductions"] = [r.describe() for r in self.reductions]
            out["reduced_outputs"] = [[o.index, o.axis, format_expr(o.expr)] for o in self.reduced_outs]
        return out

    # -- schedule --
    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        if target.kind == "cpu":
            # cache tiles (tile_*) around a register micro tile (micro_*), vectorized along micro_n
            # plus tiles fitted to this problem's M and N, so odd sizes need not pad to a power of two
            fit_m = fitted_tiles(self.M, (8, 12), 48, 256)
            fit_n = fitted_tiles(self.N, (16, 32, 48), 48, 512)
            return {"tile_m": tuple(sorted(set(CPU_TILE_M + fit_m))),
                    "tile_n": tuple(sorted(set(CPU_TILE_N + fit_n))),
                    "tile_k": (16, 32, 64, 128, 256, 512, 1024), "micro_m": (2, 4, 6, 8, 12),
                    "micro_n": (8, 16, 32, 48, 64), "vector": (4, 8, 16), "unroll": (1, 2, 4, 8)}
        return {"BLOCK_M": (16, 32, 64, 128, 256), "BLOCK_N": (16, 32, 64, 128, 256),
                "BLOCK_K": (16, 32, 64, 128), "GROUP_M": (1, 4, 8, 16),
                # a reduction epilogue needs the whole K sum in the tile
                "SPLIT_K": (1,) if self.reductions else (1, 2, 4, 8, 16),
                "num_warps": (2, 4, 8), "num_stages": (1, 2, 3, 4, 5)}

    def smem_bytes(self, config: Config) -> int:
        """Shared memory of the pipelined operand tiles."""
        bm, bn, bk = config.int("BLOCK_M"), config.int("BLOCK_N"), config.int("BLOCK_K")
        el = self.operand_dtype.itemsize
        return config.int("num_stages") * (bm * bk + bk * bn) * el

    def constraints(self, config: Config, target: Target) -> list[str]:
        out: list[str] = []
        if target.kind == "cpu":
            return self._cpu_constraints(config)
        bm, bn, bk = config.int("BLOCK_M"), config.int("BLOCK_N"), config.int("BLOCK_K")
        warps, split = config.int("num_warps"), config.int("SPLIT_K")
        smem = self.smem_bytes(config)
        if target.max_shared_bytes and smem > target.max_shared_bytes:
            out.append(f"operand tiles need {smem} B of shared memory, {target.name} allows {target.max_shared_bytes}")
        acc_regs = bm * bn // (warps * 32)
        if acc_regs > 128:
            out.append(f"the {bm}x{bn} f32 accumulator needs {acc_regs} registers per thread with {warps} warps "
                       "(> 128 spills)")
        if bm * bn < warps * 32 * 4:
            out.append(f"{warps} warps are too many for a {bm}x{bn} tile")
        if split > 1 and split * bk > next_pow2(self.K):
            out.append(f"SPLIT_K={split} x BLOCK_K={bk} exceeds K={self.K}")
        min_m = 64 if target.arch >= 90 else 16
        if bm > max(min_m, next_pow2(self.M)) or bn > max(16, next_pow2(self.N)):
            out.append(f"tile {bm}x{bn} is larger than the {self.M}x{self.N} output")
        if bk > max(16, next_pow2(self.K)):
            out.append(f"BLOCK_K={bk} exceeds K={self.K}")
        if target.arch and target.arch >= 90 and warps < 4 and bm >= 64:
            out.append("sm_90 wgmma needs a warpgroup (num_warps >= 4) for BLOCK_M >= 64")
        return out

    def _cpu_constraints(self, config: Config) -> list[str]:
        out: list[str] = []
        mr, nr, vec = config.int("micro_m"), config.int("micro_n"), config.int("vector")
        pairs = (("tile_m", "micro_m"), ("tile_n", "micro_n"), ("micro_n", "vector"), ("tile_k", "unroll"))
        for tile, micro in pairs:
            if config.int(tile) % config.int(micro):
                out.append(f"{tile}={config[tile]} is not a multiple of {micro}={config[micro]}")
        regs = mr * (nr // vec) + nr // vec + 1  # accumulators, one row of B, the broadcast A
        if regs > CPU_VECTOR_REGISTERS:
            out.append(f"the {mr}x{nr} micro tile needs {regs} vector registers of {vec} lanes "
                       f"(> {CPU_VECTOR_REGISTERS} spills)")
        for knob, size in (("tile_m", self.M), ("tile_n", self.N), ("tile_k", self.K)):
            if config.int(knob) > max(16, next_pow2(size)):
                out.append(f"{knob}={config[knob]} is larger than the problem ({size})")
        return out

    def default_config(self, target: Target) -> Config:
        if target.kind == "cpu":
            return self._cpu_default(target)

        def fit(x: int, cap: int) -> int:
            return max(16, min(cap, next_pow2(x)))

        arch = target.schedule_arch
        # i8 operands: the same bytes per K step as f16 (a 128-byte row), so twice the elements; on sm_90 the
        # i32 accumulator of a 128x256 tile with an epilogue spilled (255 registers), 128x128 does not
        int8 = self.operand_dtype.is_int
        if arch >= 90:
            # wgmma works on 64-row warpgroup tiles: smaller M still gets a 64-row tile (masked).
            bm, bn, bk, warps, stages = max(64, fit(self.M, 128)), fit(self.N, 128 if int8 else 256), \
                fit(self.K, 128 if int8 else 64), 8, 3
        else:
            bm, bn, bk, warps, stages = fit(self.M, 128), fit(self.N, 128), fit(self.K, 64 if int8 else 32), 4, 3
            if bm * bn >= 128 * 128:
                warps = 8
        while bm * bn // (warps * 32) > 128 and bn > 16:
            bn //= 2
        while bm * bn < warps * 32 * 4 and warps > 1:
            warps //= 2
        if arch >= 90 and bm >= 64:
            warps = max(4, warps)
        cfg = Config(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, SPLIT_K=1, num_warps=warps, num_stages=stages)
        while self.constraints(cfg, target) and cfg.int("num_stages") > 1:
            cfg = cfg.replace(num_stages=cfg.int("num_stages") - 1)
        return cfg

    def _cpu_default(self, target: Target) -> Config:
        """Measured on AVX-512 (2 cores, f32 512..2048): an 8x32 micro tile (16 zmm accumulators); a
        256-deep k-tile keeps its B panel (32 KiB) in L1; cache tiles of 64..128 rows and 128..256
        columns, sized to pad M and N least (777 rows: 7 tiles of 112, not 7 of 128)."""
        def fit(x: int, cap: int) -> int:
            return max(16, min(cap, next_pow2(x)))

        space = self.knob_space(target)

        def least_padding(knob: str, size: int, grain: int, lo: int, hi: int) -> int:
            # the knob's multiple of `grain` in [lo, hi] padding `size` least (the larger on ties)
            if size <= lo:
                return fit(size, lo)
            tiles = [t for t in space[knob] if lo <= t <= hi and t % grain == 0]
            return min(tiles, key=lambda t: (padded(size, t), -t))

        nr = 32 if self.N > 16 else 16
        return Config(tile_m=least_padding("tile_m", self.M, 8, 64, 128),
                      tile_n=least_padding("tile_n", self.N, nr, 128, 256),
                      tile_k=fit(self.K, 256), micro_m=8, micro_n=nr, vector=16, unroll=4)

    def grid(self, config: Config) -> tuple[int, int, int]:
        if "BLOCK_M" not in config:
            return (1, 1, 1)
        tiles = -(-self.M // config.int("BLOCK_M")) * -(-self.N // config.int("BLOCK_N"))
        return (tiles, config.int("SPLIT_K"), max(1, prod(self.batch)))

    def flops(self) -> float:
        return 2.0 * prod(self.batch) * self.M * self.N * self.K

    # -- cost estimates (KernelSpec's contracts) --
    def mma_dtype(self) -> dt.DType | None:
        return self.operand_dtype

    def family_features(self, config: Config) -> dict[str, float]:
        out = {"M": float(self.M), "N": float(self.N), "K": float(self.K), "batch": float(prod(self.batch)),
               "prologue": float(sum(self.has_prologue)), "epilogue_outputs": float(len(self.outs)),
               # reduction epilogues over rows / columns, and those taken on raw values (f applied per result)
               "reductions_m": float(sum(r.axis == "m" for r in self.reductions)),
               "reductions_n": float(sum(r.axis == "n" for r in self.reductions)),
               "reductions_raw": float(sum(r.raw for r in self.reductions))}
        if "tile_m" in config:
            out.update(self._cpu_features(config))
        return out

    def _cpu_features(self, config: Config) -> dict[str, float]:
        """What the CPU template's loop nest does with a config: the padded work (every dimension is
        padded to whole cache tiles), the parallel tasks (one per batch x m-tile x n-tile) and the
        bytes of the packed panels that must stay in cache (B's k x n panel, A's m x k block, one
        micro panel of each, the C tile)."""
        tm, tn, tk = config.int("tile_m"), config.int("tile_n"), config.int("tile_k")
        mr, nr, vec = config.int("micro_m"), config.int("micro_n"), config.int("vector")
        el = float(self.operand_dtype.itemsize)
        pm, pn, pk = self._padding(config)
        return {
            "pad_m": pm, "pad_n": pn, "pad_k": pk, "work_ratio": self.work_ratio(config),
            "parallel_tasks": self.parallel_tasks(config),
            "k_tiles": float(-(-self.K // tk)),
            "micro_accumulators": float(mr * (nr // max(1, vec))),
            "micro_panel_bytes": (mr + nr) * tk * el, "a_block_bytes": tm * tk * el,
            "b_panel_bytes": tk * tn * el, "c_tile_bytes": tm * tn * 4.0,
        }

    def _padding(self, config: Config) -> tuple[float, float, float]:
        """M, N and K padded to whole CPU cache tiles, over their sizes."""
        tm, tn, tk = config.int("tile_m"), config.int("tile_n"), config.int("tile_k")
        return padded(self.M, tm) / self.M, padded(self.N, tn) / self.N, padded(self.K, tk) / self.K

    def _tile(self, config: Config) -> tuple[int, int, int]:
        """(rows, cols, depth) of one program's output tile and K step, from GPU or CPU knobs."""
        if "BLOCK_M" in config:
            return config.int("BLOCK_M"), config.int("BLOCK_N"), config.int("BLOCK_K")
        return config.int("tile_m"), config.int("tile_n"), config.int("tile_k")

    def tile_traffic(self, config: Config) -> tuple[float, float]:
        """Output tiles (x SPLIT_K x batch); each reads its A row panel and B column panel over its
        share of K and writes its C tile per output (f32 partial sums under split-K) and a row or column of
        partials per reduction epilogue."""
        bm, bn, _ = self._tile(config)
        split = config.int("SPLIT_K") if "SPLIT_K" in config else 1
        tiles = -(-self.M // bm) * -(-self.N // bn) * split * prod(self.batch)
        out_el = 4.0 if split > 1 else float(self.out_dtype.itemsize)
        per = (bm * self.K + self.K * bn) / split * self.operand_dtype.itemsize + bm * bn * out_el * len(self.outs)
        per += sum((bn if r.axis == "m" else bm) * r.acc_dtype.itemsize for r in self.reductions)
        return float(tiles), float(per)

    def work_ratio(self, config: Config) -> float:
        """The CPU template pads M, N and K to whole cache tiles; GPU tiles are masked (ratio 1)."""
        if "tile_m" not in config:
            return 1.0
        pm, pn, pk = self._padding(config)
        return pm * pn * pk

    def parallel_tasks(self, config: Config) -> float:
        """On CPU one task per batch x m-tile x n-tile (the template's parallel loop); GPU: programs."""
        if "tile_m" not in config:
            return super().parallel_tasks(config)
        return float(prod(self.batch) * -(-self.M // config.int("tile_m")) * -(-self.N // config.int("tile_n")))

    def shared_bytes(self, config: Config) -> float:
        return float(self.smem_bytes(config)) if "BLOCK_M" in config else 0.0

    def registers_per_thread(self, config: Config, target: Target) -> float:
        """BASE_REGISTERS plus the f32 accumulator tile and the current K step's operand fragments
        (packed into 32-bit registers), spread over the threads."""
        bm, bn, bk = self._tile(config)
        threads = self.threads_per_program(config) or 1
        regs = bm * bn / threads + (bm + bn) * bk * self.operand_dtype.itemsize / 4.0 / threads
        return float(BASE_REGISTERS + math.ceil(regs))

    # -- rendering --
    def triton_constexprs(self, config: Config) -> dict[str, Any]:
        return {k: config.int(k) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "SPLIT_K")}

    def workspaces(self, config: Config, sizes: Mapping[str, int] | None = None) -> list[Workspace]:
        """Split-K partial sums `ws` [SPLIT_K, batch, M, N] in the accumulator's dtype (f32; i32 for an
        i8 x i8 GEMM, whose sums f32 would round beyond 2^24), reduced by the finishing kernel; or, for
        reduction i over an axis of several tiles, its per-tile partials `rws{i}` [tiles, batch, kept]."""
        if self.reductions:
            if "BLOCK_M" not in config:
                return []
            return [Workspace(f"rws{i}", (self.tiles_along(r.axis, config), max(1, prod(self.batch)),
                                          self.N if r.axis == "m" else self.M), r.acc_dtype.name)
                    for i, r in enumerate(self.reductions) if self.tiles_along(r.axis, config) > 1]
        split = config.int("SPLIT_K") if "SPLIT_K" in config else 1
        acc = "i32" if self.operand_dtype.is_int else "f32"
        return [Workspace("ws", (split, max(1, prod(self.batch)), self.M, self.N), acc)] if split > 1 else []

    def launches(self, config: Config, args: tuple[Arg, ...],
                 sizes: Mapping[str, int] | None = None) -> list[Launch]:
        """The tile kernel on (tiles, SPLIT_K, batch); with split-K, `{name}_finish` on (tiles, 1, batch)
        sums the SPLIT_K partials and runs the epilogue."""
        tiles, split, batch = self.grid(config)
        main = self.launch(self.name, (tiles, split, batch), config, args)
        if self.reductions:
            return [main] + [self.launch(f"{self.name}_finish_{axis}", (self.tiles_along("n" if axis == "m" else "m",
                                                                                       config), 1, batch), config, args)
                             for axis in self.finished_axes(config)]
        if not self.workspaces(config, sizes):
            return [main]
        return [main, self.launch(f"{self.name}_finish", (tiles, 1, batch), config, args)]

