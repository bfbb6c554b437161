"""Quantized GEMM family: `x @ dequantize(...)` (and pointwise chains or sums of dequantized planes between
them) as one matmul kernel whose B-operand loader dequantizes. Everything else (epilogues, batching,
GROUP_M, split-K, knob spaces, constraints, tuning) is the matmul family's: this spec only plugs the
dequantizing loader into the matmul templates' operand-loader hook (MatmulSpec.operand_leaf/loaders)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...ir import expr as ex
from ...ir.expr import Expr
from ...ir.ops import Node, Op
from ...ir.text import format_expr
from ...passes.partition import Kernel, KernelGraph
from ...passes.views import base_of, strided_view
from ...schedule.config import Config
from ...schedule.target import Target
from ..lowering import LoweringError, next_pow2, prod
from ..matmul.spec import MatmulSpec
from ..registry import register_family
from .dequant import Operand, dequant_value


# Expression nodes x B elements one thread may dequantize per k-step (sm_80/sm_90 builds: AWQ's ~40 nodes
# x 32 elements builds with 151 registers; NF4 double-quantized, ~560 nodes x 32, spills).
DEQUANT_BUDGET = 4096


@dataclass(frozen=True)
class Plane:
    """One dequantized weight plane: the VAR that stands for it in the B operand, its node and value."""

    var: str
    node: Node
    value: Expr


@register_family("quant_matmul")
class QuantMatmulSpec(MatmulSpec):
    """A matmul whose B operand is computed from packed low-bit weights in its tile loads."""

    family = "quant_matmul"

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        self.planes: list[Plane] = []
        self._kg, self._kernel = kg, kernel
        super().__init__(kg, kernel)
        if not self.planes:
            raise LoweringError(f"{self.name}: quant_matmul group without a dequantized B operand")
        if self.anchor.attr("trans_b") or self.has_prologue[0] and _reads_plane(self.a_expr):
            raise LoweringError(f"{self.name}: a dequantized operand must be the matmul's untransposed B operand")
        self._loaders = {p.var: p.value for p in self.planes}

    def operand_leaf(self, n: Node) -> Expr | None:
        if n.op is not Op.DEQUANTIZE:
            return None
        for p in self.planes:
            if p.node is n:
                return ex.var(p.var, n.dtype)
        ops = [self._operand_of(s) for s in n.src]
        plane = Plane(f"dq{len(self.planes)}", n, dequant_value(n, ops))
        self.planes.append(plane)
        return ex.var(plane.var, n.dtype)

    def loaders(self) -> dict[str, Expr]:
        return getattr(self, "_loaders", {p.var: p.value for p in self.planes})

    def _operand_of(self, s: Node) -> Operand:
        """Dequantize operand `s` as this kernel reads it: its input buffer and strided view."""
        buf = self._kg.buffers.get(id(base_of(s)))
        view = strided_view(s)
        if buf is None or buf not in self._kernel.inputs or view is None:
            raise LoweringError(f"{self.name}: dequantize operand {s!r} is not a kernel input")
        return Operand(self._kernel.inputs.index(buf), buf.dtype, view)

    def program_description(self) -> dict[str, Any]:
        out = super().program_description()
        out["planes"] = [[p.var, format_expr(p.value)] for p in self.planes]
        return out

    def format_features(self) -> dict[str, float]:
        """What the weight format costs: bits per weight, group length, weight bytes per FLOP."""
        n = self.planes[0].node
        gs = n.attr("group_size")
        group = float(gs[0] if isinstance(gs, tuple) else gs)
        weight_bytes = sum(b.numel * b.dtype.itemsize for b in self.inputs
                           if any(b is self._kg.buffers.get(id(base_of(s))) for p in self.planes for s in p.node.src))
        return {"quant_bits": float(n.attr("bits")), "quant_group": group if group > 0 else float(self.K),
                "quant_planes": float(len(self.planes)),
                "quant_weight_bytes_per_flop": weight_bytes / max(1.0, self.flops())}

    def features(self, config: Config) -> dict[str, float]:
        return {**super().features(config), **self.format_features()}

    def dequant_work(self) -> int:
        """Expression nodes evaluated per dequantized B element (all planes): what a thread's share of the
        B tile costs in registers."""
        return sum(len(ex.toposort([p.value])) for p in self.planes)

    def default_config(self, target: Target) -> Config:
        """The matmul's default for prefill (M > 64); for decode shapes a 16..64-row tile, BLOCK_K 128 and
        split-K until the tiles fill the SMs (the weights, not the flops, bound M <= 64). Then the B tile
        shrinks (or the warps grow) until a thread dequantizes at most DEQUANT_BUDGET expression nodes:
        measured on sm_80/sm_90 builds, NF4's 256-entry scale table over 32 elements per thread spills."""
        cfg = super().default_config(target)
        if target.kind == "cpu":
            return cfg
        if self.M <= 64:
            bm = max(16, next_pow2(self.M))
            bk = max(16, min(128, next_pow2(self.K)))
            bn = max(16, min(64, next_pow2(self.N)))
            tiles = -(-self.M // bm) * -(-self.N // bn) * max(1, prod(self.batch))
            split = 1
            while split < 16 and tiles * split < (target.num_sms or 108) and split * 2 * bk <= self.K:
                split *= 2
            cfg = cfg.replace(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, num_warps=4,
                              num_stages=4 if target.schedule_arch >= 90 else 3)
        elif cfg.int("BLOCK_N") > 128:
            # sm_90's 128x256 prefill tile: its accumulator and a dequantized 64x256 B tile spill (AWQ build)
            cfg = cfg.replace(BLOCK_N=128)
        cfg = self._fit_dequant(cfg)
        while self.constraints(cfg, target) and cfg.int("num_stages") > 1:
            cfg = cfg.replace(num_stages=cfg.int("num_stages") - 1)
        return cfg

    def _fit_dequant(self, cfg: Config) -> Config:
        work = self.dequant_work()

        def per_thread(c: Config) -> int:
            return c.int("BLOCK_K") * c.int("BLOCK_N") // (32 * c.int("num_warps")) * work

        while per_thread(cfg) > DEQUANT_BUDGET:
            bm, bn, warps = cfg.int("BLOCK_M"), cfg.int("BLOCK_N"), cfg.int("num_warps")
            if warps < 8 and bm * bn >= 2 * warps * 32 * 4:
                cfg = cfg.replace(num_warps=warps * 2)
            elif cfg.int("BLOCK_K") > 32:
                cfg = cfg.replace(BLOCK_K=cfg.int("BLOCK_K") // 2)
            elif bn > 16:
                cfg = cfg.replace(BLOCK_N=bn // 2)
                while cfg.int("BLOCK_M") * cfg.int("BLOCK_N") < cfg.int("num_warps") * 32 * 4 \
                        and cfg.int("num_warps") > 1:
                    cfg = cfg.replace(num_warps=cfg.int("num_warps") // 2)
            else:
                break
        return cfg


def _reads_plane(e: Expr) -> bool:
    return any(v.startswith("dq") for v in ex.vars_used(e))
