"""Sparse family: SpMM `spmm(sparse(...), B)` with the sparse constructor read in the kernel's loads
(it is a prologue, never a kernel of its own) and pointwise epilogues (bias, activation, residual,
cast) applied to the accumulator before the store. On CPUs (TVM, kernels/sparse/tvm_*.py) every format
runs: CSR in nnz-balanced tasks, BSR per block row, 2:4 per row tile.

CSR on the GPU: one program per (row, BLOCK_N columns), walking the row's nonzeros BLOCK_NZ at a time
and gathering rows of B (contiguous along N, so loads are vectorised). With SWIZZLE=1 the rows are
first ordered by length on the device (a counting sort into log2-length bins, longest first: three
small launches before the main one), so the programs of a power-law graph's long rows start first and
the short rows fill in behind them (Sputnik's row swizzle; longest-processing-time-first).

BSR on the GPU: one program per (block row, BLOCK_N columns); per stored block one `tl.dot` of the
[bm, bn] block (padded to 16 and powers of two with masks) with the [bn, BLOCK_N] rows of B it meets.

2:4 on the GPU: a dense GEMM tiling (BLOCK_M x BLOCK_N, BLOCK_K steps) whose A tile is loaded as
sparse (values and meta, half of A's bytes) and decompressed in registers to a dense tile for
`tl.dot`, as Flash-LLM's "load as sparse, compute as dense" (Triton has no mma.sp).

Before any launch `check_inputs` validates the structure arrays on the host (ir/sparse_op.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ...ir import dtypes as dt
from ...ir import expr as ex
from ...ir.expr import Expr
from ...ir.ops import Node, Op
from ...ir.sparse_op import PATTERN_FIELDS
from ...ir.text import format_expr
from ...passes.partition import Kernel, KernelGraph
from ...schedule.config import Config
from ...schedule.launch import Arg, Launch, Workspace
from ...schedule.target import Target
from ..base import BASE_REGISTERS, KernelSpec
from ..lowering import LoweringError, next_pow2
from ..registry import register_family
from .common import check_structure, sparse_operand, structure_exprs

ACC = "acc"
NBINS = 32  # log2 row-length bins: bin b holds rows of length in [2^(b-1), 2^b), bin 0 the empty rows
BLOCK_R = 256  # rows per program of the binning launches
MAX_TILE = 8192  # BLOCK_NZ x BLOCK_N gathered elements of B per step (registers: see constraints)
MAX_REGISTERS = 255  # per thread; a dot tiling estimated above it would spill
GATHER_COST = 2.0  # a gathered B vector load per FMA (CSR, 2:4) vs a register-blocked GEMM's reuse
MAX_CPU_ACC = 4096  # elements of a CPU task's accumulator tile (a stack buffer: 16 KiB in f32)


@register_family("spmm")
class SpmmSpec(KernelSpec):
    """spmm(sparse [M, K], B [K, N]) with its sparse constructor and pointwise epilogues."""

    family = "spmm"
    dynamic_backends = frozenset({"triton", "tvm"})

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        super().__init__(kg, kernel)
        mm = self.anchor_node(Op.SPMM)
        self.anchor: Node = mm
        sp = sparse_operand(kernel, mm, 0)
        self.sparse = sp
        self.format: str = sp.attr("format")
        self.M, self.K = sp.shape
        # transposed: x @ A^T with x [T, K] read as B = x^T [K, T] and the product stored as [T, M]
        self.transposed = bool(mm.attr("transposed", False))
        self.N = mm.shape[0] if self.transposed else mm.shape[1]
        self.block: tuple[int, int] = tuple(sp.attr("block", (1, 1)))  # type: ignore[assignment]
        lw = self.lowering

        def value(n: Node) -> Expr:
            return lw.value(n, tuple(n.shape), lambda _: None)

        self.meta: Expr | None = None
        if self.format == "2:4":
            self.values, self.meta = value(sp.src[0]), value(sp.src[1])
            self.nnz = self.M * self.K // 2
            self.index_dtypes = (sp.src[1].dtype, sp.src[1].dtype)
        else:
            indptr, indices, values = sp.src
            self.nnz = indices.shape[0]
            self.index_dtypes = (indptr.dtype, indices.dtype)
            self.indptr, self.indices, self.values = value(indptr), value(indices), value(values)
        structure_exprs(self, sp, self.structure())
        self.b = value(mm.src[1])
        wide = dt.f64 in (self.values.dtype, self.b.dtype)
        self.acc_dtype = dt.f64 if wide else dt.f32
        anchor_val = ex.cast(ex.var(ACC, self.acc_dtype), mm.dtype)
        self.outs = [(i, lw.value(o, tuple(mm.shape), lambda n: anchor_val if n is mm else None))
                     for i, o in enumerate(kernel.group.outputs)]
        if any(o is sp for o in kernel.group.outputs):
            raise LoweringError(f"{self.name}: a sparse tensor cannot be a kernel output")

    @property
    def out_shape(self) -> tuple[int, int]:
        """The outputs' shape: [M, N], or [N, M] when transposed."""
        return (self.N, self.M) if self.transposed else (self.M, self.N)

    def b_index(self, k: Any, n: Any) -> list[Any]:
        """Index of B's element (k, n) in the dense operand's own domain (x [N, K] when transposed)."""
        return [n, k] if self.transposed else [k, n]

    def out_index(self, m: Any, n: Any) -> tuple[Any, Any]:
        """Index of the product's element (m, n) in the outputs' domain."""
        return (n, m) if self.transposed else (m, n)

    def out_offset(self, m: str, n: str) -> str:
        """Element offset (a Triton index string) of the product's element (m, n) in an output."""
        return f"{n} * {self.M} + {m}" if self.transposed else f"{m} * {self.N} + {n}"

    def structure(self) -> tuple[Expr | None, Expr | None]:
        """The structure operands check_inputs reads: (indptr, indices), or (None, meta) for 2:4."""
        return (None, self.meta) if self.meta is not None else (self.indptr, self.indices)

    def check_inputs(self, inputs: Sequence[Any]) -> None:
        """The sparse operand's structure is valid (ir/sparse_op.validate_arrays), else SparseStructureError."""
        check_structure(self, self.sparse, self.structure(), inputs)

    def program_description(self) -> dict[str, Any]:
        base = {"format": self.format, "M": self.M, "K": self.K, "N": self.N, "nnz": self.nnz,
                **({"transposed": True} if self.transposed else {}),
                **({"pattern": list(self.sparse.attr("pattern"))} if self.sparse.attr("pattern") else {})}
        if self.meta is not None:
            base["meta"] = format_expr(self.meta)
        else:
            base.update(indptr=format_expr(self.indptr), indices=format_expr(self.indices))
        if self.format == "bsr":
            base["block"] = list(self.block)
        return {**base, "values": format_expr(self.values), "b": format_expr(self.b),
                "outputs": [[i, format_expr(e)] for i, e in self.outs]}

    # -- schedule --
    def dot_block(self) -> tuple[int, int]:
        """BSR: the [bm, bn] block padded to tl.dot's tile (powers of two, at least 16)."""
        return max(16, next_pow2(self.block[0])), max(16, next_pow2(self.block[1]))

    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        if target.kind == "cpu":
            tile_n = (16, 32, 64, 128, 256, 512)
            if self.format == "bsr":
                return {"tile_n": tile_n}
            if self.format == "2:4":
                return {"tile_m": (1, 2, 4, 8, 16), "tile_n": tile_n}
            return {"tile_n": tile_n, "tasks": (1, 2, 4, 8, 16, 32, 64)}
        launch = {"num_warps": (1, 2, 4, 8), "num_stages": (1, 2, 3)}
        if self.format == "bsr":
            return {"BLOCK_N": (16, 32, 64, 128, 256), **launch}
        if self.format == "2:4":
            return {"BLOCK_M": (16, 32, 64, 128), "BLOCK_N": (16, 32, 64, 128, 256), "BLOCK_K": (32, 64, 128),
                    **launch}
        return {"BLOCK_N": (16, 32, 64, 128, 256, 512), "BLOCK_NZ": (4, 8, 16, 32, 64), "SWIZZLE": (0, 1),
                **launch}

    def constraints(self, config: Config, target: Target) -> list[str]:
        out: list[str] = []
        if target.kind == "cpu":
            if config.int("tile_n") > max(16, next_pow2(self.N)):
                out.append(f"tile_n={config['tile_n']} is larger than N={self.N}")
            rows = config.int("tile_m") if "tile_m" in config else self.block[0]
            if rows * config.int("tile_n") > MAX_CPU_ACC:
                out.append(f"a {rows}x{config['tile_n']} accumulator tile exceeds {MAX_CPU_ACC} elements")
            if "tile_m" in config and config.int("tile_m") > max(1, next_pow2(self.M)):
                out.append(f"tile_m={config['tile_m']} is larger than M={self.M}")
            return out
        bn, warps = config.int("BLOCK_N"), config.int("num_warps")
        if bn > max(16, next_pow2(self.N)):
            out.append(f"BLOCK_N={bn} is larger than N={self.N}")
        if self.format == "csr":
            bz = config.int("BLOCK_NZ")
            if bn * bz > MAX_TILE:
                out.append(f"a {bz}x{bn} gathered tile of B exceeds {MAX_TILE} elements (registers spill)")
            if bn * bz < warps * 32:
                out.append(f"{warps} warps are too many for a {bz}x{bn} tile")
            return out
        if self.format == "2:4" and config.int("BLOCK_M") > max(16, next_pow2(self.M)):
            out.append(f"BLOCK_M={config['BLOCK_M']} is larger than M={self.M}")
        regs = self.registers_per_thread(config, target)
        if regs > MAX_REGISTERS:
            out.append(f"the tiles need about {regs:.0f} registers per thread, over {MAX_REGISTERS} (spills)")
        return out

    def default_config(self, target: Target) -> Config:
        if target.kind == "cpu":
            tn = max(16, min(64, next_pow2(self.N)))
            if self.format == "bsr":
                return Config(tile_n=max(16, min(tn, MAX_CPU_ACC // self.block[0])))
            if self.format == "2:4":
                return Config(tile_m=min(4, next_pow2(self.M)), tile_n=tn)
            return Config(tile_n=tn, tasks=8)
        n16 = max(16, next_pow2(self.N))
        if self.format == "bsr":
            return Config(BLOCK_N=min(64 if self.dot_block()[0] >= 64 else 128, n16), num_warps=4, num_stages=2)
        if self.format == "2:4":
            return Config(BLOCK_M=min(64, max(16, next_pow2(self.M))), BLOCK_N=min(64, n16), BLOCK_K=64,
                          num_warps=4, num_stages=2)
        bn = max(16, min(256, next_pow2(self.N)))
        bz = max(4, min(32, MAX_TILE // 2 // bn))
        warps = 4 if bn * bz >= 2048 else 2
        return Config(BLOCK_N=bn, BLOCK_NZ=bz, SWIZZLE=1, num_warps=warps, num_stages=2)

    def grid(self, config: Config) -> tuple[int, int, int]:
        if "BLOCK_N" not in config:  # cpu: the parallel tasks
            tiles = -(-self.N // config.int("tile_n"))
            if self.format == "bsr":
                return (self.M // self.block[0] * tiles, 1, 1)
            if self.format == "2:4":
                return (-(-self.M // config.int("tile_m")) * tiles, 1, 1)
            return (config.int("tasks"), 1, 1)
        tiles_n = -(-self.N // config.int("BLOCK_N"))
        if self.format == "bsr":
            return (self.M // self.block[0], tiles_n, 1)
        if self.format == "2:4":
            return (-(-self.M // config.int("BLOCK_M")), tiles_n, 1)
        return (self.M, tiles_n, 1)

    # -- cost estimates --
    def flops(self) -> float:
        return 2.0 * self.nnz * self.block[0] * self.block[1] * self.N

    def mma_dtype(self) -> dt.DType | None:
        if self.format == "csr" or self.values.dtype.itemsize > 2:
            return None
        return self.values.dtype

    def family_features(self, config: Config) -> dict[str, float]:
        swz = float(config.int("SWIZZLE")) if "SWIZZLE" in config else 0.0
        stored = self.nnz * self.block[0] * self.block[1]
        known = self.sparse.attr("pattern")  # a constant structure's statistics (sparse_plan), else zeros
        pattern = dict(zip(PATTERN_FIELDS, known or (0.0,) * len(PATTERN_FIELDS)))
        return {"M": float(self.M), "N": float(self.N), "K": float(self.K), "nnz": float(self.nnz),
                "density": stored / float(max(1, self.M * self.K)), "swizzle": swz,
                "epilogue_outputs": float(len(self.outs)), "pattern_known": float(known is not None),
                **{f"pattern_{k}": float(v) for k, v in pattern.items()}}

    def work_ratio(self, config: Config) -> float:
        """Work over useful work: the N tile's padding, BSR blocks padded to tl.dot's tile, and GATHER_COST
        where a template gathers one row of B per stored element (CSR; 2:4 on CPUs) instead of reusing B
        tiles from registers as a blocked GEMM does (so a nearly dense pattern ranks below dense)."""
        tn = config.int("tile_n") if "tile_n" in config else config.int("BLOCK_N")
        ratio = -(-self.N // tn) * tn / self.N
        if self.format == "bsr":
            pm, pk = self.dot_block() if "BLOCK_N" in config else self.block
            return ratio * pm * pk / (self.block[0] * self.block[1])
        gathers = self.format == "csr" or "tile_m" in config  # the GPU 2:4 template feeds tl.dot dense tiles
        return ratio * (GATHER_COST if gathers else 1.0)

    def shared_bytes(self, config: Config) -> float:
        return 0.0

    def registers_per_thread(self, config: Config, target: Target) -> float:
        """BASE_REGISTERS plus the tiles a program holds (CSR: the gathered B tile and the accumulator
        row; BSR and 2:4: the accumulator, the A and B dot operands), over the threads."""
        if "BLOCK_N" not in config:
            return float(BASE_REGISTERS)
        threads = self.threads_per_program(config) or 1
        bn = config.int("BLOCK_N")
        if self.format == "bsr":
            pm, pk = self.dot_block()
            tile = pm * bn + pk * bn + pm * pk
        elif self.format == "2:4":
            bm, bk = config.int("BLOCK_M"), config.int("BLOCK_K")
            tile = bm * bn + bk * bn + 3 * bm * bk  # the A tile twice (values, meta) and its dense form
        else:
            tile = config.int("BLOCK_NZ") * bn * 2 + bn
        return float(BASE_REGISTERS + math.ceil(tile / threads))

    # -- launch plan --
    def triton_constexprs(self, config: Config) -> dict[str, Any]:
        if self.format == "2:4":
            return {k: config.int(k) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")}
        if self.format == "bsr":
            return {"BLOCK_N": config.int("BLOCK_N")}
        return {"BLOCK_N": config.int("BLOCK_N"), "BLOCK_NZ": config.int("BLOCK_NZ")}

    # -- launch plan --
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
