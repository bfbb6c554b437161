"""Pointwise / row-reduction family: any fused group of elementwise ops and last-axis
reductions over a domain [rows..., cols]. Each program owns BLOCK_R rows; reductions loop over
the columns in BLOCK_C chunks (one pass per reduction level, as softmax needs), then a final pass
writes the domain-shaped outputs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping

from ...schedule.config import Config
from ...schedule.launch import LaunchPlan
from ...schedule.target import Target
from ...ir import expr as ex
from ...ir.dtypes import DType
from ...ir.expr import Expr
from ...ir.ops import Node, Op
from ...ir.text import format_expr
from ...passes.fuse import row_shape
from ...passes.partition import Kernel, KernelGraph
from ..base import BASE_REGISTERS, KernelSpec
from ..registry import register_family
from ..lowering import LoweringError, next_pow2, prod
from . import fp8_bytes


@dataclass(frozen=True)
class Reduction:
    op: str  # sum | max | min | mean
    dtype: DType
    expr: Expr  # domain-level value being reduced
    deps: frozenset[int]  # reductions it reads


@dataclass(frozen=True)
class RowValue:
    expr: Expr  # row-level value (reads r{k} and earlier v{j})
    deps: frozenset[int]


@dataclass(frozen=True)
class Output:
    index: int  # kernel output buffer
    level: str  # "domain" | "row"
    expr: Expr


@register_family("pointwise", "reduction", "copy")
class RowwiseSpec(KernelSpec):
    """A pointwise or row-reduction kernel."""

    family = "pointwise"
    dynamic_backends = frozenset({"triton", "tvm"})

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        super().__init__(kg, kernel)
        grp = kernel.group
        dom = tuple(grp.domain) if grp.domain else (1,)
        self.domain = dom
        self.rows = prod(dom[:-1])
        self.cols = dom[-1]
        red_nodes = [m for m in grp.nodes if m.op is Op.REDUCE]
        self.red_index = {id(m): k for k, m in enumerate(red_nodes)}
        is_reduction = bool(red_nodes)
        self.row_members = [m for m in grp.nodes if is_reduction and m.op is Op.POINTWISE
                            and m.shape == row_shape(dom) and m.shape != dom]
        self.row_index = {id(m): j for j, m in enumerate(self.row_members)}
        self.deps: dict[int, frozenset[int]] = {}
        for m in grp.nodes:
            d: set[int] = set()
            for s in m.src:
                d |= self.deps.get(id(s), frozenset())
                if id(s) in self.red_index:
                    d.add(self.red_index[id(s)])
            self.deps[id(m)] = frozenset(d)
        lw = self.lowering
        self.reductions = []
        for m in red_nodes:
            src = m.src[0]
            if m.attr("axes") != (src.ndim - 1,) or not m.attr("keepdim") or src.shape != dom:
                raise LoweringError(f"{self.name}: reduction over {m.attr('axes')} of {list(src.shape)} "
                                          "is not canonical (last axis, keepdim, over the domain)")
            deps = self.deps.get(id(src), frozenset())
            if id(src) in self.red_index:
                deps = deps | {self.red_index[id(src)]}
            self.reductions.append(Reduction(m.attr("op"), m.dtype, lw.value(src, dom, self._leaf), deps))
        self.rowvals = [RowValue(lw.value(m, dom, self._row_leaf(m)), self.deps[id(m)]) for m in self.row_members]
        self.outs = []
        for i, o in enumerate(grp.outputs if grp.kind != "copy" else ()):
            level = "row" if id(o) in self.row_index or id(o) in self.red_index else "domain"
            self.outs.append(Output(i, level, lw.value(o, dom, self._leaf)))
        if grp.kind == "copy":
            self.outs.append(Output(0, "domain", lw.value(grp.outputs[0], dom, lambda n: None)))

    def _leaf(self, n: Node) -> Expr | None:
        if id(n) in self.red_index:
            return ex.var(f"r{self.red_index[id(n)]}", n.dtype)
        if id(n) in self.row_index:
            return ex.var(f"v{self.row_index[id(n)]}", n.dtype)
        return None

    def _row_leaf(self, me: Node) -> Any:
        def leaf(n: Node) -> Expr | None:
            return None if n is me else self._leaf(n)

        return leaf

    @property
    def has_reduction(self) -> bool:
        return bool(self.reductions)

    def program_description(self) -> dict[str, Any]:
        return {
            "domain": list(self.domain),
            "reductions": [[r.op, r.dtype.name, format_expr(r.expr)] for r in self.reductions],
            "rowvals": [format_expr(v.expr) for v in self.rowvals],
            "outputs": [[o.index, o.level, format_expr(o.expr)] for o in self.outs],
        }

    # -- schedule --
    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        if target.kind == "cpu":
            return {"vector": (1, 2, 4, 8, 16, 32), "parallel_rows": (1, 4, 16, 64), "unroll": (0, 1)}
        space = {"BLOCK_R": (1, 2, 4, 8, 16, 32, 64, 128), "BLOCK_C": tuple(1 << i for i in range(0, 14)),
                 "num_warps": (1, 2, 4, 8, 16), "num_stages": (1, 2, 3)}
        if fp8_bytes.touches_fp8(list(self.inputs) + list(self.outputs)):
            space[fp8_bytes.KNOB] = fp8_bytes.knob_values(target)
        return space

    def constraints(self, config: Config, target: Target) -> list[str]:
        if target.kind == "cpu":
            v = config.int("vector")
            if v > next_pow2(self.cols):
                return [f"vector={v} exceeds the {self.cols} columns (next power of two {next_pow2(self.cols)})"]
            return []
        out = []
        br, bc, warps = config.int("BLOCK_R"), config.int("BLOCK_C"), config.int("num_warps")
        if br > next_pow2(self.rows):
            out.append(f"BLOCK_R={br} exceeds the {self.rows} rows (next power of two {next_pow2(self.rows)})")
        if bc > next_pow2(self.cols):
            out.append(f"BLOCK_C={bc} exceeds the {self.cols} columns (next power of two {next_pow2(self.cols)})")
        per_thread = br * bc // (warps * 32)
        if per_thread > 64:
            out.append(f"BLOCK_R*BLOCK_C/(32*num_warps)={per_thread} elements per thread per tile "
                       "(> 64 risks register spills)")
        if warps * 32 > target.max_threads_per_block:
            out.append(f"{warps} warps exceed {target.max_threads_per_block} threads per block")
        return out

    def default_config(self, target: Target) -> Config:
        if target.kind == "cpu":
            return Config(vector=min(16, next_pow2(self.cols)), parallel_rows=16 if self.rows >= 16 else 1,
                          unroll=0)
        cap = 2048 if self.has_reduction else 128
        bc = min(next_pow2(self.cols), cap)
        br = max(1, min(next_pow2(self.rows), 1024 // bc, 128))  # 128: the largest BLOCK_R of the knob space
        tile = br * bc
        warps = 1 if tile <= 128 else 2 if tile <= 256 else 4 if tile <= 2048 else 8
        cfg = Config(BLOCK_R=br, BLOCK_C=bc, num_warps=warps, num_stages=1)
        if fp8_bytes.touches_fp8(list(self.inputs) + list(self.outputs)):
            cfg = cfg.replace(**{fp8_bytes.KNOB: fp8_bytes.default(target)})
        return cfg

    def launch_plan(self, config: Config, sizes: Mapping[str, int] | None = None) -> LaunchPlan:
        """The family's plan; fp8 pointers declared u8 under FP8_BYTES=1 (kernels/rowwise/fp8_bytes.py)."""
        plan = super().launch_plan(config, sizes)
        return fp8_bytes.byte_plan(plan) if fp8_bytes.as_bytes(config) else plan

    def grid(self, config: Config) -> tuple[int, int, int]:
        if "BLOCK_R" not in config:
            return (1, 1, 1)
        br, bc = config.int("BLOCK_R"), config.int("BLOCK_C")
        gr = -(-self.rows // br)
        gc = 1 if self.has_reduction else -(-self.cols // bc)
        return (gr, gc, 1)

    def flops(self) -> float:
        per = sum(ex.cost(r.expr) for r in self.reductions) + sum(ex.cost(o.expr) for o in self.outs)
        return float(per * self.rows * self.cols)

    # -- cost estimates (KernelSpec's contracts) --
    def mma_dtype(self) -> DType | None:
        return None  # elementwise and reductions only

    def family_features(self, config: Config) -> dict[str, float]:
        return {"rows": float(self.rows), "cols": float(self.cols), "reductions": float(len(self.reductions))}

    def shared_bytes(self, config: Config) -> float:
        return 0.0  # no staged tiles (the reductions' scratch is Triton's and small)

    def registers_per_thread(self, config: Config, target: Target) -> float:
        """The BLOCK_R x BLOCK_C row chunk spread over the threads, plus BASE_REGISTERS."""
        threads = self.threads_per_program(config) or 1
        return float(BASE_REGISTERS + math.ceil(config.int("BLOCK_R") * config.int("BLOCK_C") / threads))

    # -- rendering --
    def triton_constexprs(self, config: Config) -> dict[str, Any]:
        return {"BLOCK_R": config.int("BLOCK_R"), "BLOCK_C": config.int("BLOCK_C")}

