"""Attention family (backward): dQ, dK, dV of attention_bwd, FlashAttention-2 style, over the block
structure of the forward (kernels/block_sparsity.py).

Launch structure (one module, two launches, deterministic: no atomics):

1. `{name}` (preprocess): delta = rowsum(dO * O) in f32 for every query row, into the f32 workspace
   [B * Hq * Sq]; a grid-stride loop over (query block, b * Hq + h).
2. `{name}_finish` (the backward), grid (NKV + NQ,): programs 0..NKV-1 are dK/dV programs, one per
   (key block, b * Hkv + kv head). Each keeps its k, v tiles and dK, dV accumulators resident and
   walks, for every query head of its GQA group (no K/V copies), the query blocks that see its key
   block: the TRANSPOSE of the forward's block lists, full blocks first (no mask), then partial ones
   (mask applied per element); empty blocks are never visited. Programs NKV.. are dQ programs, one
   per (query block, b * Hq + h), walking the forward's lists with q, dO resident and dQ in f32.
   dK and dV (dQ) are each written by exactly one program, so results are bit-reproducible; the
   price is recomputing P and dP in both roles (as FlashAttention-2's Triton kernels do).

Both roles share one block size pair (BLOCK_M query rows x BLOCK_N keys), so one block analysis
serves both lists. Roles whose outputs the graph does not use are left out of the grid. Auxiliary
int32 tensors: the forward's four (kv_ptr, kv_nfull, kv_idx, head_pat) plus the transposed CSR
q_ptr [P * NKB + 1], q_nfull [P * NKB], q_idx [nnz] over rows pattern * NKB + key block; a ragged
last query block is always in the masked part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...schedule.config import Config
from ...schedule.launch import Arg, Launch, Workspace
from ...schedule.target import Target
from ...ir.attention_bwd_op import FIRST_EXTRA, score_derivative
from ...ir.expr import E, Expr
from ...ir.ops import Node, Op
from ...ir.text import format_expr
from ...passes.partition import Kernel, KernelGraph
from .spec import AUX_NAMES, REF_BLOCK, AttentionSpec
from ..base import KernelSpec
from ..registry import register_family
from .block_sparsity import BlockLists, BlockSparsity, analyze_runtime
from ..lowering import LoweringError, next_pow2

BWD_AUX_NAMES = AUX_NAMES + ("q_ptr", "q_nfull", "q_idx")
ROLES = ("dq", "dk", "dv")
# Register estimate per arch (BwdRegisterModel), fitted to AOT builds
# of a causal f16 backward with an additive (ALiBi-style) and a non-additive (softcap) score_mod: BLOCK_M and
# BLOCK_N in 32 / 64 / 128, 4 / 8 warps, 1-3 stages, hdim 64 and 128 (432 builds, 210 spill; the defaults must
# pass). Softcap's derivative tile costs sm_90 about 12 registers per thread more than the bias (12 more builds
# spill) and sm_80 none.
# 11 accepted builds spill, all at 255 registers: 64 x 64 with 8 warps at hdim 64 on sm_80 (Triton puts the 8
# warps along 64 rows there, 8 rows per 16-row mma fragment, while the accepted sm_80 default 64 x 32 with 4
# warps is larger in every term) and 1- or 3-stage neighbours of accepted 2-stage configs on sm_90 (the
# hdim-128 default among them); catching those would reject another dozen non-spilling 3-stage builds.
# 20 non-spilling builds are rejected, all at 237-255 registers.
@dataclass(frozen=True)
class BwdRegisterModel:
    score: float  # f32 score-sized tiles live at once
    dscore: float  # more with a non-additive score_mod (its derivative tile)
    limit: int


BWD_REGISTERS = {80: BwdRegisterModel(6.0, 0.0, 192), 90: BwdRegisterModel(4.5, 0.25, 252)}


@dataclass
class BwdLists(BlockLists):
    """The forward's CSR lists plus their transpose (query blocks per (pattern, key block) row)."""

    q_ptr: Any = None
    q_nfull: Any = None
    q_idx: Any = None

    def as_list(self) -> list[Any]:
        return super().as_list() + [self.q_ptr, self.q_nfull, self.q_idx]


@register_family("attention_bwd")
class AttentionBwdSpec(AttentionSpec):
    """Backward attention: q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv], o / do [B, Hq, Sq, Dv],
    lse [B, Hq, Sq] -> dq, dk, dv. Block analysis, run-time lists and aux caching come from the forward."""

    family = "attention_bwd"

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        KernelSpec.__init__(self, kg, kernel)  # the forward's __init__ expects an attention anchor
        node = self.anchor_node(Op.ATTENTION_BWD)
        self.node: Node = node
        q, k, v, o, do, lse = node.src[:6]
        self.B, self.Hq, self.Sq, self.D = q.shape
        self.Hkv, self.Sk, self.Dv = k.shape[1], k.shape[2], v.shape[3]
        for size, what in ((self.B, "the batch"), (self.Sq, "the query length"), (self.Sk, "the key length")):
            self.require_static(size, what, "triton")  # no run-time block lists in the backward yet
        self.group = self.Hq // self.Hkv
        self.dtype = q.dtype
        self.scale = float(node.attr("scale"))
        self.mask: Expr | None = node.attr("mask_mod")
        self.score_mod: Expr | None = node.attr("score_mod")
        # d score_mod / d score, multiplied into dS; None for no score_mod or an additive one (derivative 1)
        self.dscore: Expr | None = score_derivative(self.score_mod) if self.score_mod is not None else None
        lw = self.lowering
        self.q_expr, self.k_expr, self.v_expr, self.o_expr, self.do_expr, self.lse_expr = (
            lw.value(x, x.shape, lambda _: None) for x in (q, k, v, o, do, lse))
        if self.lse_expr.op is not E.LOAD:
            raise LoweringError(f"{self.name}: lse ({lse!r}) must be a tensor or a view of one")
        self.extra_slot: dict[int, int] = {}
        for i, x in enumerate(node.src[FIRST_EXTRA:], start=FIRST_EXTRA):
            e = lw.value(x, x.shape, lambda _: None)
            if e.op is not E.LOAD:
                raise LoweringError(f"{self.name}: mask/score operand {i} ({x!r}) must be a tensor or a view "
                                          "of one; materialise computed operands first")
            self.extra_slot[i] = e.arg
        self.outs: list[tuple[int, str]] = []
        for i, out in enumerate(kernel.group.outputs):
            if out is node:
                self.outs.append((i, "dq"))
            elif out.op is Op.RESULT and out.src[0] is node:
                self.outs.append((i, ROLES[out.attr("index")]))
            else:
                raise LoweringError(f"{self.name}: output {out!r} is not a result of the attention_bwd")
        self._sparsity: dict[tuple[int, ...], BlockSparsity] = {}
        self.dynamic_sizes = False  # required static above
        self._aux: dict[Any, list[Any]] = {}
        self._describe: dict[str, Any] | None = None

    # -- roles and block structure --
    def out_index(self, role: str) -> int | None:
        """The kernel output argument index of result `role` (None when the graph does not use it)."""
        return next((i for i, r in self.outs if r == role), None)

    @property
    def has_dkdv(self) -> bool:
        return self.out_index("dk") is not None or self.out_index("dv") is not None

    @property
    def has_dq(self) -> bool:
        return self.out_index("dq") is not None

    def block_lists(self, config: Config, operands: dict[int, np.ndarray] | None = None,
                    device: Any = None, sizes: Mapping[str, int] | None = None) -> BwdLists:
        """CSR lists (forward and transposed) for `config`, numpy or built on `device` (see the forward);
        `operands` refines data-dependent masks."""
        bm, bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        sp = self.sparsity(bm, bn)
        if operands is not None and self.mask is not None and self.runtime_lists(bm, bn):
            from ...ir.attention_op import make_loader

            xs: list[Any] = [None] * (FIRST_EXTRA + len(self.extra_slot))
            for i, arr in operands.items():
                xs[i] = arr
            sp = analyze_runtime(self.mask, sp, self.B, self.Hq, make_loader(xs, f"{self.name} block analysis"))
        fwd, bwd = sp.lists(device), sp.lists(device, transposed=True)
        return BwdLists(fwd.kv_ptr, fwd.kv_nfull, fwd.kv_idx, fwd.head_pat, bwd.kv_ptr, bwd.kv_nfull, bwd.kv_idx)

    def aux_signature(self, config: Config) -> dict[str, str]:
        return {name: "*i32" for name in BWD_AUX_NAMES}

    def workspaces(self, config: Config, sizes: Mapping[str, int] | None = None) -> list[Workspace]:
        """The f32 delta = rowsum(dO * O) workspace `ws`, one value per query row."""
        return [Workspace("ws", (self.B * self.Hq * self.Sq,))]

    def launches(self, config: Config, args: tuple[Arg, ...],
                 sizes: Mapping[str, int] | None = None) -> list[Launch]:
        """The delta pre-pass `{name}`, then the backward `{name}_finish`, both on grid(config)."""
        grid = self.grid(config)
        return [self.launch(self.name, grid, config, args), self.launch(f"{self.name}_finish", grid, config, args)]

    # -- identity --
    def program_description(self) -> dict[str, Any]:
        if self._describe is None:
            exprs = {name: format_expr(e) for name, e in (("q", self.q_expr), ("k", self.k_expr), ("v", self.v_expr),
                                                          ("o", self.o_expr), ("do", self.do_expr),
                                                          ("lse", self.lse_expr))}
            self._describe = {
                "B": self.B, "Hq": self.Hq, "Hkv": self.Hkv, "Sq": self.Sq, "Sk": self.Sk, "D": self.D, "Dv": self.Dv,
                "dtype": self.dtype.name, "scale": self.scale, **exprs,
                "mask_mod": format_expr(self.mask) if self.mask is not None else None,
                "score_mod": format_expr(self.score_mod) if self.score_mod is not None else None,
                "extra_slots": sorted(self.extra_slot.items()),
                "outputs": [[i, r] for i, r in self.outs],
                "block_structure": self.sparsity(*REF_BLOCK).describe(),
            }
        return self._describe

    # -- schedule --
    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        space = super().knob_space(target)
        return {**space, "BLOCK_M": (16, 32, 64, 128)}

    def smem_bytes(self, config: Config) -> int:
        """Shared memory of the larger role: the resident tiles plus num_stages buffers of the streamed
        ones (k, v stream in the dQ role; q, dO in the dK/dV role), plus LSE / delta vectors. An upper
        bound of every static build measured at hdim 64 / 128 (sm_90 keeps wgmma operands there)."""
        bm, bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        dp, dvp = self.head_dims
        stages = config.int("num_stages")
        rows = max(bn + stages * bm if self.has_dkdv else 0, bm + stages * bn if self.has_dq else 0)
        return rows * (dp + dvp) * self.dtype.itemsize + 16 * (bm + bn)

    def registers(self, config: Config, target: Target) -> int:
        """Estimated 32-bit registers per thread: the f32 accumulators (dK, dV, or dQ), the score-sized tiles
        (s, p, dP, dS and their half-precision copies; score_mod's derivative `dmod` with a non-additive
        score_mod) and a quarter of the operand tiles (BWD_REGISTERS)."""
        bm, bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        dp, dvp = self.head_dims
        model = BWD_REGISTERS[90 if target.arch >= 90 else 80]
        tiles = model.score + (model.dscore if self.dscore is not None else 0.0)
        acc = max(bn * (dp + dvp) if self.has_dkdv else 0, bm * dp if self.has_dq else 0)
        return math.ceil((acc + tiles * bm * bn + (bm + bn) * (dp + dvp) / 4) / (config.int("num_warps") * 32))

    smem_what = "the backward's tiles"

    def register_constraints(self, config: Config, target: Target) -> list[str]:
        bm, bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        regs, limit = self.registers(config, target), BWD_REGISTERS[90 if target.arch >= 90 else 80].limit
        if regs <= limit:
            return []
        return [f"the dK/dV (dQ) accumulators and {bm}x{bn} score tiles need about {regs} registers per "
                f"thread with {config.int('num_warps')} warps (> {limit} spills on {target.name})"]

    def tile_constraints(self, config: Config, target: Target) -> list[str]:
        """Tiles larger than the problem; on sm_90 a 64-row tile in either role needs a warpgroup."""
        out: list[str] = []
        bm, bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        if bm > max(16, next_pow2(self.Sq)) or bn > max(16, next_pow2(self.Sk)):
            out.append(f"tile {bm}x{bn} is larger than the {self.Sq}x{self.Sk} score matrix")
        if target.arch >= 90 and min(bm, bn) >= 64 and config.int("num_warps") < 4:
            out.append("sm_90 wgmma needs a warpgroup (num_warps >= 4) for 64-row tiles")
        return out

    def default_config(self, target: Target) -> Config:
        def fit(x: int, cap: int) -> int:
            return max(16, min(cap, next_pow2(x)))

        if target.kind == "interp":  # the interpreter pays per op, not per element: small tiles
            return Config(BLOCK_M=fit(self.Sq, 32), BLOCK_N=fit(self.Sk, 32), num_warps=4, num_stages=1)
        # From the static-build sweep (no spills, HGMMA on sm_90): FlashAttention-2's square 64 x 64 tiles
        # with 8 warps at hdim 128; at hdim 64 a 128-key dK/dV tile on sm_90 and 64 x 32 with 4 warps on
        # sm_80 (64 x 64 spills there with either warp count).
        dp = max(self.head_dims)
        if dp <= 64:
            bm, bn, warps, stages = (64, 128, 8, 2) if target.schedule_arch >= 90 else (64, 32, 4, 2)
        elif dp <= 128:
            bm, bn, warps, stages = 64, 64, 8, 2
        else:
            bm, bn, warps, stages = 32, 32, 8, 1
        cfg = Config(BLOCK_M=fit(self.Sq, bm), BLOCK_N=fit(self.Sk, bn), num_warps=warps, num_stages=stages)
        while self.constraints(cfg, target) and cfg.int("num_stages") > 1:
            cfg = cfg.replace(num_stages=cfg.int("num_stages") - 1)
        while self.constraints(cfg, target) and cfg.int("BLOCK_N") > 16:
            cfg = cfg.replace(BLOCK_N=cfg.int("BLOCK_N") // 2)
        return cfg

    def programs(self, config: Config) -> tuple[int, int]:
        """(dK/dV programs, dQ programs) of the backward launch."""
        nkv = -(-self.Sk // config.int("BLOCK_N")) * self.B * self.Hkv if self.has_dkdv else 0
        nq = -(-self.Sq // config.int("BLOCK_M")) * self.B * self.Hq if self.has_dq else 0
        return nkv, nq

    def grid(self, config: Config) -> tuple[int, int, int]:
        # The grid of both launches (see launches): the pre-pass strides over every query row.
        return (max(1, sum(self.programs(config))), 1, 1)

    def flops(self) -> float:
        """FlashAttention's convention: 2.5 x the forward's matmul flops over the visited blocks."""
        return 2.5 * super().flops()

    def bytes_moved(self) -> float:
        return super().bytes_moved() + 8.0 * self.B * self.Hq * self.Sq  # the delta workspace, written + read

    # -- reports and rendering --
    def report_lines(self, config: Config) -> list[str]:
        nkv, nq = self.programs(config)
        return super().report_lines(config) + [
            f"  backward: delta pre-pass, then {nkv} dK/dV programs (transposed lists) + {nq} dQ programs"]

