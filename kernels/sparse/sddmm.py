"""SDDMM `sddmm(a [M, K], b [N, K], pattern sparse [M, N])`: (a @ b^T) at the pattern's nonzeros, with
the pattern's `sparse` constructor read in the kernel's loads (a prologue) and pointwise epilogues on
the [nnz] values (a scale, an exp, a cast).

CSR on the GPU: one program per row, BLOCK_NZ of its nonzeros at a time; per BLOCK_K step it loads the
row's slice of `a` and the BLOCK_NZ gathered rows of `b`, and reduces their products along K. (Rows
are not yet ordered by length as spmm's SWIZZLE does.) On CPUs (kernels/sparse/tvm_sddmm.py) tasks
own nnz-balanced row ranges, as CSR SpMM's. The structure is validated on the host before any launch,
as spmm's."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ...ir import dtypes as dt
from ...ir import expr as ex
from ...ir.ops import Node, Op
from ...ir.text import format_expr
from ...passes.partition import Kernel, KernelGraph
from ...schedule.config import Config
from ...schedule.target import Target
from ..base import BASE_REGISTERS, KernelSpec
from ..lowering import LoweringError, next_pow2
from ..registry import register_family
from .common import check_structure, csr_structure, plain_value, sparse_operand

ACC = "acc"
MAX_TILE = 8192  # BLOCK_NZ x BLOCK_K gathered elements of b per step


@register_family("sddmm")
class SddmmSpec(KernelSpec):
    """sddmm(a, b, sparse pattern) with its pattern's constructor and pointwise epilogues."""

    family = "sddmm"
    dynamic_backends = frozenset({"triton", "tvm"})

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        super().__init__(kg, kernel)
        sd = self.anchor_node(Op.SDDMM)
        self.anchor: Node = sd
        sp = sparse_operand(kernel, sd, 2)
        self.sparse = sp
        self.format: str = sp.attr("format")
        if self.format != "csr":
            raise LoweringError(f"{self.name}: sddmm over a sparse {self.format!r} pattern has no template yet "
                                "(csr has)")
        self.M, self.N = sp.shape
        self.K = sd.src[0].shape[1]
        lw = self.lowering
        self.indptr, self.indices, self.nnz = csr_structure(self, sp)
        self.a, self.b = plain_value(self, sd.src[0]), plain_value(self, sd.src[1])
        self.acc_dtype = dt.f64 if dt.f64 in (self.a.dtype, self.b.dtype) else dt.f32
        anchor_val = ex.cast(ex.var(ACC, self.acc_dtype), sd.dtype)
        self.outs = [(i, lw.value(o, tuple(sd.shape), lambda n: anchor_val if n is sd else None))
                     for i, o in enumerate(kernel.group.outputs)]

    def check_inputs(self, inputs: Sequence[Any]) -> None:
        """The pattern's structure is valid (ir/sparse_op.validate_arrays), else SparseStructureError."""
        check_structure(self, self.sparse, (self.indptr, self.indices), inputs)

    def program_description(self) -> dict[str, Any]:
        return {"format": self.format, "M": self.M, "N": self.N, "K": self.K, "nnz": self.nnz,
                "indptr": format_expr(self.indptr), "indices": format_expr(self.indices),
                "a": format_expr(self.a), "b": format_expr(self.b),
                "outputs": [[i, format_expr(e)] for i, e in self.outs]}

    # -- schedule --
    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        if target.kind == "cpu":
            return {"tile_k": (4, 8, 16, 32, 64), "tasks": (1, 2, 4, 8, 16, 32, 64)}
        return {"BLOCK_NZ": (4, 8, 16, 32, 64), "BLOCK_K": (16, 32, 64, 128), "num_warps": (1, 2, 4, 8),
                "num_stages": (1, 2, 3)}

    def constraints(self, config: Config, target: Target) -> list[str]:
        out: list[str] = []
        if target.kind == "cpu":
            if config.int("tile_k") > max(4, next_pow2(self.K)):
                out.append(f"tile_k={config['tile_k']} is larger than K={self.K}")
            return out
        bz, bk, warps = config.int("BLOCK_NZ"), config.int("BLOCK_K"), config.int("num_warps")
        if bk > max(16, next_pow2(self.K)):
            out.append(f"BLOCK_K={bk} is larger than K={self.K}")
        if bz * bk > MAX_TILE:
            out.append(f"a {bz}x{bk} gathered tile of b exceeds {MAX_TILE} elements (registers spill)")
        if bz * bk < warps * 32:
            out.append(f"{warps} warps are too many for a {bz}x{bk} tile")
        return out

    def default_config(self, target: Target) -> Config:
        if target.kind == "cpu":
            return Config(tile_k=max(4, min(16, next_pow2(self.K))), tasks=8)
        bk = max(16, min(128, next_pow2(self.K)))
        return Config(BLOCK_NZ=16, BLOCK_K=bk, num_warps=4 if 16 * bk >= 1024 else 1, num_stages=2)

    def grid(self, config: Config) -> tuple[int, int, int]:
        if "tasks" in config:
            return (config.int("tasks"), 1, 1)
        return (self.M, 1, 1)

    # -- cost estimates --
    def flops(self) -> float:
        return 2.0 * self.nnz * self.K

    def mma_dtype(self) -> dt.DType | None:
        return None

    def family_features(self, config: Config) -> dict[str, float]:
        return {"M": float(self.M), "N": float(self.N), "K": float(self.K), "nnz": float(self.nnz),
                "density": self.nnz / float(max(1, self.M * self.N)), "epilogue_outputs": float(len(self.outs))}

    def shared_bytes(self, config: Config) -> float:
        return 0.0

    def registers_per_thread(self, config: Config, target: Target) -> float:
        """BASE_REGISTERS plus the gathered b tile, a's slice and the accumulators, over the threads."""
        if "BLOCK_K" not in config:
            return float(BASE_REGISTERS)
        threads = self.threads_per_program(config) or 1
        tile = config.int("BLOCK_NZ") * (config.int("BLOCK_K") * 2 + 1) + config.int("BLOCK_K")
        return float(BASE_REGISTERS + math.ceil(tile / threads))

    def triton_constexprs(self, config: Config) -> dict[str, Any]:
        return {"BLOCK_NZ": config.int("BLOCK_NZ"), "BLOCK_K": config.int("BLOCK_K")}
