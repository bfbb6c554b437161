"""Sparse family: SpMM `spmm(sparse(...), B)` with the sparse constructor read in the kernel's loads
(it is a prologue, never a kernel of its own) and pointwise epilogues (bias, activation, residual,
cast) applied to the accumulator before the store.

CSR on the GPU: one program per (row, BLOCK_N columns), walking the row's nonzeros BLOCK_NZ at a time
and gathering rows of B (contiguous along N, so loads are vectorised). With SWIZZLE=1 the rows are
first ordered by length on the device (a counting sort into log2-length bins, longest first: three
small launches before the main one), so the programs of a power-law graph's long rows start first and
the short rows fill in behind them (Sputnik's row swizzle; longest-processing-time-first)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ...ir import dtypes as dt
from ...ir import expr as ex
from ...ir.expr import Expr
from ...ir.ops import Node, Op
from ...ir.text import format_expr
from ...passes.partition import Kernel, KernelGraph
from ...schedule.config import Config
from ...schedule.launch import Arg, Launch, Workspace
from ...schedule.target import Target
from ..base import BASE_REGISTERS, KernelSpec
from ..lowering import LoweringError, next_pow2
from ..registry import register_family

ACC = "acc"
NBINS = 32  # log2 row-length bins: bin b holds rows of length in [2^(b-1), 2^b), bin 0 the empty rows
BLOCK_R = 256  # rows per program of the binning launches
MAX_TILE = 8192  # BLOCK_NZ x BLOCK_N gathered elements of B per step (registers: see constraints)


def _sparse_operand(kernel: Kernel, anchor: Node, i: int) -> Node:
    """The anchor's sparse operand `i`, which must be built inside the kernel (its prologue)."""
    sp = anchor.src[i]
    if sp.op is not Op.SPARSE or not any(p is sp for p in kernel.group.prologue):
        raise LoweringError(f"{kernel.name}: the sparse operand of {anchor.op.value} must be a sparse node read by "
                            "this op only (a sparse tensor that is a graph output or feeds several ops is not "
                            "supported yet)")
    return sp


@register_family("spmm")
class SpmmSpec(KernelSpec):
    """spmm(sparse [M, K], B [K, N]) with its sparse constructor and pointwise epilogues."""

    family = "spmm"

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        super().__init__(kg, kernel)
        mm = kernel.group.anchor
        if mm is None or mm.op is not Op.SPMM:
            raise LoweringError(f"{self.name}: spmm group without an spmm anchor")
        self.anchor: Node = mm
        sp = _sparse_operand(kernel, mm, 0)
        self.sparse = sp
        self.format: str = sp.attr("format")
        if self.format != "csr":
            raise LoweringError(f"{self.name}: sparse format {self.format!r} has no spmm template yet (csr has)")
        self.M, self.K = sp.shape
        self.N = mm.shape[1]
        indptr, indices, values = sp.src
        self.nnz = indices.shape[0]
        self.index_dtypes = (indptr.dtype, indices.dtype)
        lw = self.lowering

        def value(n: Node) -> Expr:
            return lw.value(n, tuple(n.shape), lambda _: None)

        self.indptr, self.indices, self.values = value(indptr), value(indices), value(values)
        self.b = value(mm.src[1])
        wide = dt.f64 in (self.values.dtype, self.b.dtype)
        self.acc_dtype = dt.f64 if wide else dt.f32
        anchor_val = ex.cast(ex.var(ACC, self.acc_dtype), mm.dtype)
        self.outs = [(i, lw.value(o, tuple(mm.shape), lambda n: anchor_val if n is mm else None))
                     for i, o in enumerate(kernel.group.outputs)]
        if any(o is sp for o in kernel.group.outputs):
            raise LoweringError(f"{self.name}: a sparse tensor cannot be a kernel output")

    def program_description(self) -> dict[str, Any]:
        return {"format": self.format, "M": self.M, "K": self.K, "N": self.N, "nnz": self.nnz,
                "indptr": format_expr(self.indptr), "indices": format_expr(self.indices),
                "values": format_expr(self.values), "b": format_expr(self.b),
                "outputs": [[i, format_expr(e)] for i, e in self.outs]}

    # -- schedule --
    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        if target.kind == "cpu":
            return {"tile_n": (16, 32, 64, 128, 256, 512), "tasks": (1, 2, 4, 8, 16, 32, 64)}
        return {"BLOCK_N": (16, 32, 64, 128, 256, 512), "BLOCK_NZ": (4, 8, 16, 32, 64), "SWIZZLE": (0, 1),
                "num_warps": (1, 2, 4, 8), "num_stages": (1, 2, 3)}

    def constraints(self, config: Config, target: Target) -> list[str]:
        out: list[str] = []
        if target.kind == "cpu":
            if config.int("tile_n") > max(16, next_pow2(self.N)):
                out.append(f"tile_n={config['tile_n']} is larger than N={self.N}")
            return out
        bn, bz, warps = config.int("BLOCK_N"), config.int("BLOCK_NZ"), config.int("num_warps")
        if bn > max(16, next_pow2(self.N)):
            out.append(f"BLOCK_N={bn} is larger than N={self.N}")
        if bn * bz > MAX_TILE:
            out.append(f"a {bz}x{bn} gathered tile of B exceeds {MAX_TILE} elements (registers spill)")
        if bn * bz < warps * 32:
            out.append(f"{warps} warps are too many for a {bz}x{bn} tile")
        return out

    def default_config(self, target: Target) -> Config:
        if target.kind == "cpu":
            return Config(tile_n=max(16, min(64, next_pow2(self.N))), tasks=8)
        bn = max(16, min(256, next_pow2(self.N)))
        bz = max(4, min(32, MAX_TILE // 2 // bn))
        warps = 4 if bn * bz >= 2048 else 2
        return Config(BLOCK_N=bn, BLOCK_NZ=bz, SWIZZLE=1, num_warps=warps, num_stages=2)

    def grid(self, config: Config) -> tuple[int, int, int]:
        if "BLOCK_N" not in config:
            return (config.int("tasks"), 1, 1)
        return (self.M, -(-self.N // config.int("BLOCK_N")), 1)

    # -- cost estimates --
    def flops(self) -> float:
        return 2.0 * self.nnz * self.N

    def mma_dtype(self) -> dt.DType | None:
        return None

    def family_features(self, config: Config) -> dict[str, float]:
        swz = float(config.int("SWIZZLE")) if "SWIZZLE" in config else 0.0
        return {"M": float(self.M), "N": float(self.N), "K": float(self.K), "nnz": float(self.nnz),
                "density": self.nnz / float(max(1, self.M * self.K)), "swizzle": swz,
                "epilogue_outputs": float(len(self.outs))}

    def shared_bytes(self, config: Config) -> float:
        return 0.0

    def registers_per_thread(self, config: Config, target: Target) -> float:
        """BASE_REGISTERS plus the gathered B tile and the accumulator row, over the threads."""
        if "BLOCK_N" not in config:
            return float(BASE_REGISTERS)
        threads = self.threads_per_program(config) or 1
        tile = config.int("BLOCK_NZ") * config.int("BLOCK_N") * 2 + config.int("BLOCK_N")
        return float(BASE_REGISTERS + math.ceil(tile / threads))

    # -- launch plan --
    def triton_constexprs(self, config: Config) -> dict[str, Any]:
        return {"BLOCK_N": config.int("BLOCK_N"), "BLOCK_NZ": config.int("BLOCK_NZ")}

    def workspaces(self, config: Config, sizes: Mapping[str, int] | None = None) -> list[Workspace]:
        """With SWIZZLE=1: bin counts (zeroed), bin cursors and the row order [M]."""
        if "SWIZZLE" not in config or not config.int("SWIZZLE"):
            return []
        return [Workspace("counts", (NBINS,), "i32", zeroed=True), Workspace("cursor", (NBINS,), "i32"),
                Workspace("order", (self.M,), "i32")]

    def launches(self, config: Config, args: tuple[Arg, ...],
                 sizes: Mapping[str, int] | None = None) -> list[Launch]:
        """SWIZZLE=0: the row kernel on (M, N tiles). SWIZZLE=1: `_count` (row lengths into bins),
        `_scan` (bin offsets), `_order` (rows by bin, longest first), then the row kernel reading
        its row from `order`."""
        main = self.launch(self.name, self.grid(config), config, args)
        if not self.workspaces(config, sizes):
            return [main]
        blocks = (-(-self.M // BLOCK_R), 1, 1)
        small = {"BLOCK_R": BLOCK_R, "NBINS": NBINS}
        return [self.launch(f"{self.name}_count", blocks, config, args, small),
                self.launch(f"{self.name}_scan", (1, 1, 1), config, args, small),
                self.launch(f"{self.name}_order", blocks, config, args, small), main]
