"""Quantized GEMM family: `x @ dequantize(...)` (and pointwise chains or sums of dequantized planes between
them) as one matmul kernel whose B-operand loader dequantizes. Everything else (epilogues, batching,
GROUP_M, split-K, knob spaces, constraints, tuning) is the matmul family's: this spec only plugs the
dequantizing loader into the matmul templates' operand-loader hook (MatmulSpec.operand_leaf/loaders)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ...ir import dims
from ...ir import dtypes as dt
from ...ir import expr as ex
from ...ir.expr import E, Expr
from ...ir.ops import Node, Op
from ...ir.quant_op import CONTAINERS, FP8, grid_block, unit
from ...ir.text import format_expr
from ...passes.partition import Kernel, KernelGraph
from ...passes.views import base_of, strided_view
from ...schedule.config import Config
from ...schedule.launch import Arg, LaunchPlan
from ...schedule.target import Target
from ..lowering import LoweringError, next_pow2, prod
from ..matmul.spec import CPU_TILE_N, MatmulSpec, ScaledDot, padded
from ..registry import register_family
from . import cpu_gemv, fp8, magic
from .dequant import Operand, dequant_value, scales


# Expression nodes x B elements one thread may dequantize per k-step (sm_80/sm_90 builds: AWQ's ~40 nodes
# x 32 elements builds with 151 registers; NF4 double-quantized, ~560 nodes x 32, spills).
DEQUANT_BUDGET = 4096
# CPU decode schedule: the default for M <= GEMV_DEFAULT_M; a candidate up to GEMV_MAX_M rows.
GEMV_DEFAULT_M = 4
GEMV_MAX_M = 32
GEMV_ACC_FLOATS = 256
# 1: a scale shared by a run of columns (NF4's absmax per 64) computed once per B-tile row, not per element
ROW_KNOB = "BLOCK_SCALE"


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
        # the I4_F16 knob (kernels/quant/magic.py): planes' magic-number values, the f16 subtractions
        self._magic: dict[str, Expr] = {}
        self._subs: set[Expr] = set()
        self._asm = False
        # the BLOCK_SCALE knob: planes whose scale is constant over `_run` columns, their scale once per tile row
        self._row: dict[str, Expr] = {}
        self._row_scaled: dict[str, Expr] = {}
        self._row_active: dict[str, Expr] = {}
        self._run = 1 << 30
        self._kg, self._kernel = kg, kernel
        super().__init__(kg, kernel)
        if not self.planes:
            raise LoweringError(f"{self.name}: quant_matmul group without a dequantized B operand")
        for i, (e, trans) in enumerate(((self.a_expr, "trans_a"), (self.b_expr, "trans_b"))):
            if self.has_prologue[i] and _reads_plane(e) and self.anchor.attr(trans):
                raise LoweringError(f"{self.name}: a dequantized operand of a matmul cannot be transposed "
                                    f"({trans}=true; dequantize the transposed codes instead)")
        self._loaders = {p.var: p.value for p in self.planes}
        self.fp8 = self._fp8_gemm()

    def _fp8_gemm(self) -> fp8.Fp8Gemm | None:
        """The block-scaled FP8 form when both operands are exactly fp8 dequantizes (kernels/quant/fp8.py)."""
        by_var = {p.var: p.node for p in self.planes}
        a, b = (by_var.get(e.arg) if e.op is E.VAR else None for e in (self.a_expr, self.b_expr))
        if a is None or b is None or self.batch:
            return None
        return fp8.fp8_gemm(a, b, [self._operand_of(s) for s in a.src], [self._operand_of(s) for s in b.src], self.K)

    def scaled_dot(self, config: Config) -> ScaledDot | None:
        return self.fp8.scaled_dot(config) if self.fp8 is not None and "BLOCK_K" in config else None

    def operand_leaf(self, n: Node) -> Expr | None:
        if n.op is not Op.DEQUANTIZE:
            return None
        for p in self.planes:
            if p.node is n:
                return ex.var(p.var, n.dtype)
        ops = [self._operand_of(s) for s in n.src]
        plane = Plane(f"dq{len(self.planes)}", n, dequant_value(n, ops))
        self.planes.append(plane)
        if magic.applies(n):
            self._magic[plane.var], sub = magic.value(n, ops)
            self._subs.add(sub)
        elif n.attr("symmetric") and n.src[0].dtype not in FP8:
            run = grid_block(n.attr("scale_layout"), n.attr("group_size"), tuple(n.attr("shape")))[1]
            if run >= 16 and run < self.N:
                sv = f"{plane.var}_s"
                self._row[sv] = scales(n, ops, tuple(n.attr("shape")))
                self._row_scaled[plane.var] = dequant_value(n, ops, ex.var(sv, dt.f32))
                self._run = min(self._run, run)
        return ex.var(plane.var, n.dtype)

    def loaders(self) -> dict[str, Expr]:
        return getattr(self, "_loaders", {p.var: p.value for p in self.planes})

    def specialized(self, config: Config) -> QuantMatmulSpec:
        use_magic = bool(self._magic) and magic.KNOB in config and config.int(magic.KNOB) > 0
        row = bool(self._row) and ROW_KNOB in config and config.int(ROW_KNOB) == 1
        if not (use_magic or row):
            return self
        out = copy.copy(self)
        out._loaders = {**self._loaders, **(self._magic if use_magic else {}), **(self._row_scaled if row else {})}
        out._asm = use_magic and config.int(magic.KNOB) == 2
        out._row_active = self._row if row else {}
        return out

    def row_loaders(self) -> dict[str, Expr]:
        return self._row_active

    def _row_problems(self, config: Config) -> list[str]:
        if not (ROW_KNOB in config and config.int(ROW_KNOB) == 1 and "BLOCK_N" in config):
            return []
        if self._run % config.int("BLOCK_N"):
            return [f"{ROW_KNOB}=1 needs BLOCK_N to divide the {self._run} columns that share a scale, "
                    f"got BLOCK_N={config['BLOCK_N']}"]
        return []

    def loader_text(self, e: Expr, name: Callable[[Expr], str]) -> str | None:
        return magic.asm_text(e, name) if self._asm and e in self._subs else None

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
        if self.fp8 is not None:
            out["fp8_scaled_dot"] = [format_expr(e) for e in (self.fp8.a.scale, self.fp8.b.scale)]
        return out

    def weight_planes(self) -> list[Plane]:
        """The planes of the B operand (the weights; A may be dequantized fp8 activations)."""
        used = ex.vars_used(self.b_expr)
        return [p for p in self.planes if p.var in used] or self.planes

    def format_features(self) -> dict[str, float]:
        """What the weight format costs: bits per weight, group length, weight bytes per FLOP."""
        planes = self.weight_planes()
        n = planes[0].node
        gs = n.attr("group_size")
        group = float(gs[0] if isinstance(gs, tuple) else gs)
        weight_bytes = sum(b.numel * b.dtype.itemsize for b in self.inputs
                           if any(b is self._kg.buffers.get(id(base_of(s))) for p in planes for s in p.node.src))
        return {"quant_bits": float(n.attr("bits")), "quant_group": group if group > 0 else float(self.K),
                "quant_planes": float(len(planes)),
                "quant_weight_bytes_per_flop": weight_bytes / max(1.0, self.flops())}

    def features(self, config: Config) -> dict[str, float]:
        return {**super().features(config), **self.format_features()}

    def dequant_work(self, row: bool = False) -> int:
        """Expression nodes evaluated per dequantized B element (all planes): what a thread's share of the
        B tile costs in registers; `row`: with the block scales computed once per tile row (BLOCK_SCALE=1)."""
        return sum(len(ex.toposort([self._row_scaled.get(p.var, p.value) if row else p.value])) for p in self.planes)

    def packed_zero_group(self) -> int:
        """The shortest K run sharing one packed zero point (a large number without packed zeros). A decode
        k-step spans at most one: int2 G=64 with packed zeros at BLOCK_K=128 (two zero rows unpacked per
        column and step) spilled 8 B on sm_90 (M=1, 4 stages; 128 registers); at BLOCK_K=64, 96 registers."""
        runs = [grid_block(p.node.attr("zero_layout"), p.node.attr("group_size"), tuple(p.node.attr("shape")))[0]
                for p in self.planes if p.node.attr("zeros_packed")]
        return min(runs, default=1 << 30)

    def pack_units(self) -> tuple[int, int]:
        """(ek, en): codes per packing unit along K and along N (lcm over the planes; 1 when unpacked)."""
        ek = en = 1
        for p in self.planes:
            n = p.node
            e = unit(n.attr("bits"), CONTAINERS.get(n.src[0].dtype, n.attr("bits")))[0]
            if n.attr("pack_axis") == 1:
                en = math.lcm(en, e)
            else:
                ek = math.lcm(ek, e)
        return ek, en

    # -- block-scaled FP8 (kernels/quant/fp8.py): BLOCK_K = 128, the FP8_MMA knob, fp8 bytes as u8 --
    def smem_bytes(self, config: Config) -> int:
        """Shared memory of the pipelined tiles. What Triton stages for B are the loader's loads, not the
        dequantized tile: every LOAD of the B loaders as a [BLOCK_K, BLOCK_N] tile of its dtype (a row loader's
        as [BLOCK_K, 1]). Counting only f16 operand tiles let defaults past the limit: AWQ at M=1 built with
        292 KB on sm_90 (the cap is 227 KB), GPTQ int3 374 KB."""
        bm, bn, bk = config.int("BLOCK_M"), config.int("BLOCK_N"), config.int("BLOCK_K")
        if self.fp8 is not None:
            return config.int("num_stages") * (bm * bk + bk * bn)  # the fp8 bytes are what is staged
        sp = self.specialized(config)
        used = ex.vars_used(self.b_expr)
        tiles = [v for k, v in sp.loaders().items() if k in used]
        rows = set(sp.row_loaders().values())
        b_bytes = sum(bk * bn * e.dtype.itemsize for e in ex.toposort(tiles) if e.op is E.LOAD)
        b_bytes += sum(bk * e.dtype.itemsize for e in ex.toposort(list(rows)) if e.op is E.LOAD)
        a_bytes = bm * bk * self.operand_dtype.itemsize
        return config.int("num_stages") * (a_bytes + (b_bytes or bk * bn * self.operand_dtype.itemsize))

    def mma_dtype(self) -> dt.DType | None:
        return self.fp8.a.code.dtype if self.fp8 is not None else super().mma_dtype()

    def report_lines(self, config: Config) -> list[str]:
        if ROW_KNOB in config:
            how = "once per B-tile row" if config.int(ROW_KNOB) else "per element"
            return [f"block scales (one per {self._run} columns): {ROW_KNOB}={config.int(ROW_KNOB)} ({how})"]
        if magic.KNOB in config:
            return [magic.report_line(config)]
        if self.fp8 is None or "BLOCK_K" not in config:
            return []
        how = "native e4m3 tensor-core dots" if fp8.native(config) else "bytes decoded to f16, f16 dots"
        return [f"block-scaled fp8: scales applied after each {fp8.BLOCK}-K step's dot; FP8_MMA="
                f"{config.int('FP8_MMA')} ({how})"]

    def check_problems(self, config: Config, target: Target) -> list[str]:
        problems = super().check_problems(config, target)
        why = fp8.reasons(config, target) if self.fp8 is not None and target.kind != "cpu" else []
        why += magic.reasons(config, target) if self._magic else []
        problems += self._row_problems(config) if target.kind != "cpu" else []
        return why + [p for p in problems if not p.startswith(("BLOCK_K=", "FP8_MMA=", "I4_F16="))] if why else problems

    def launch_plan(self, config: Config, sizes: Mapping[str, int] | None = None) -> LaunchPlan:
        """The matmul's plan; fp8 codes are u8 pointers unless the config takes native fp8 dots (sm_80 refuses
        fp8e4nv pointers; the software decode reads bytes)."""
        plan = super().launch_plan(config, sizes)
        if fp8.native(config):
            return plan
        codes = {id(b) for p in self.planes for b in [self._kg.buffers.get(id(base_of(p.node.src[0])))]
                 if b is not None and b.dtype in FP8}
        as_bytes = {a.name: replace(a, triton_type="*u8") for a in plan.args
                    if a.role == "input" and id(self.inputs[a.index]) in codes}
        if not as_bytes:
            return plan

        def swap(args: tuple[Arg, ...]) -> tuple[Arg, ...]:
            return tuple(as_bytes.get(a.name, a) for a in args)

        launches = tuple(replace(ln, args=swap(ln.args)) for ln in plan.launches)
        return replace(plan, args=swap(plan.args), launches=launches)

    # -- CPU: the matmul's GEMM (gemv=0) or the decode schedule of tvm_template (gemv=1) --
    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        space = super().knob_space(target)
        if target.kind == "cpu" and dims.is_dynamic(self.M):  # a dynamic M's decode rows (tvm_gemv.decode_rows)
            space = {**space, "tile_m": tuple(sorted({1, 2, 4, *space["tile_m"]}))}
        if target.kind == "cpu":
            # the decode schedule has no reduction epilogue stages
            if self.gemv_factors() is None or self.reductions:
                return {**space, "gemv": (0,) if self.reductions else (0, 1)}
            return {**space, "gemv": (0, 1, 2), "tile_n": cpu_gemv.wide_tiles(self, space["tile_n"])}
        if self._row:
            space = {**space, ROW_KNOB: (0, 1)}
        if self._magic and self.fp8 is None:
            return {**space, magic.KNOB: magic.knob_values(target)}
        return fp8.knobs(space, target) if self.fp8 is not None else space

    def gemv_factors(self) -> cpu_gemv.GemvFactors | None:
        """The factored form of the B operand when it is exactly one integer-coded f32 dequantize and the
        activations are float (the CPU's factored decode schedule, gemv=2); None otherwise."""
        if "_factors" not in self.__dict__:
            self._factors = cpu_gemv.factors(self, self._operand_of)
        return self._factors

    def _cpu_constraints(self, config: Config) -> list[str]:
        if not ("gemv" in config and config.int("gemv")):
            return super()._cpu_constraints(config)
        out: list[str] = []
        if config.int("gemv") == 2:
            out += cpu_gemv.problems(self, config)
        ek, en = self.pack_units()
        tn, tk, vec, unroll = (config.int(k) for k in ("tile_n", "tile_k", "vector", "unroll"))
        if tn % (en * vec):
            out.append(f"gemv: tile_n={tn} is not a multiple of {en} codes per word x vector={vec}")
        if tk % (ek * unroll):
            out.append(f"gemv: tile_k={tk} is not a multiple of {ek} codes per word x unroll={unroll}")
        if self.M > GEMV_MAX_M:
            out.append(f"gemv: M={self.M} rows (the decode schedule keeps M x tile_n accumulators; "
                       f"at most {GEMV_MAX_M})")
        if dims.is_dynamic(self.M) and not int(self.M) <= config.int("tile_m") <= GEMV_MAX_M:
            out.append(f"gemv: tile_m={config['tile_m']} (the rows a dynamic M's decode schedule keeps) must "
                       f"hold M={int(self.M)} at the top of the size bucket and be at most {GEMV_MAX_M}")
        for knob, size in (("tile_n", self.N), ("tile_k", self.K)):
            if config.int(knob) > max(16, next_pow2(size), en * vec, ek * unroll):
                out.append(f"{knob}={config[knob]} is larger than the problem ({size})")
        return out

    def _decode_base(self, target: Target) -> Config:
        """The CPU default the decode schedules start from; a dynamic M's rows kept (tile_m) are M at the top
        of the bucket, rounded up to a power of two."""
        base = self._cpu_default(target)
        return base.replace(tile_m=next_pow2(int(self.M))) if dims.is_dynamic(self.M) else base

    def _gemv_default(self, target: Target) -> Config | None:
        """Decode shapes (M <= GEMV_DEFAULT_M): tasks of 64..256 columns (least padding), vectors of 16 lanes
        over the packed words, one k-tile per scale group so the scales stay out of the inner loop."""
        ek, en = self.pack_units()
        n = self.planes[0].node
        gs = n.attr("group_size")
        group = gs[0] if isinstance(gs, tuple) else gs
        tk = max(ek, min(next_pow2(self.K), group if group and group > 0 and group & (group - 1) == 0 else 128))
        unroll = 4 if ek == 1 and tk % 4 == 0 else 1
        base = self._decode_base(target)
        for vec in (16, 8, 4):
            grain = en * vec
            # M x tile_n accumulators: at most GEMV_ACC_FLOATS of them stay in registers (M=16: a GEMV of
            # 256-wide tasks ran 4x slower than the GEMM on the 2-core EPYC)
            cap = min(max(256, grain), max(grain, next_pow2(self.N)), GEMV_ACC_FLOATS // self.M)
            tiles = [t for t in CPU_TILE_N if t % grain == 0 and min(64, grain) <= t <= cap]
            if not tiles:
                continue
            tn = min(tiles, key=lambda t: (padded(self.N, t), -t))
            cfg = base.replace(gemv=1, tile_n=tn, tile_k=tk, vector=vec, unroll=unroll)
            if not self._cpu_constraints(cfg):
                return cfg
        return None

    def default_config(self, target: Target) -> Config:
        """The matmul's default for prefill (M > 64); for decode shapes a 16..64-row tile, BLOCK_K 128 and
        split-K until the tiles fill the SMs (the weights, not the flops, bound M <= 64). Then the B tile
        shrinks (or the warps grow) until a thread dequantizes at most DEQUANT_BUDGET expression nodes:
        measured on sm_80/sm_90 builds, NF4's 256-entry scale table over 32 elements per thread spills."""
        cfg = super().default_config(target)
        if target.kind == "cpu":
            if self.reductions:
                return cfg.replace(gemv=0)
            small = self.M <= cpu_gemv.DEFAULT_M
            factored = cpu_gemv.default(self, self._decode_base(target), target) if small else None
            gemv = factored or (self._gemv_default(target) if self.M <= GEMV_DEFAULT_M else None)
            return gemv or cfg.replace(gemv=0)
        if self.M <= 64:
            bm = max(16, next_pow2(self.M))
            bk = max(16, min(128, next_pow2(self.K), self.packed_zero_group()))
            bn = max(16, min(64, next_pow2(self.N)))
            tiles = -(-self.M // bm) * -(-self.N // bn) * max(1, prod(self.batch))
            split = 1
            while (split < 16 and not self.reductions and tiles * split < (target.num_sms or 108)
                   and split * 2 * bk <= self.K):
                split *= 2
            cfg = cfg.replace(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, num_warps=4,
                              num_stages=4 if target.schedule_arch >= 90 else 3)
        else:
            # sm_90's 128x256 prefill tile: its accumulator and a dequantized 64x256 B tile spill (AWQ build);
            # the stages start again from the matmul's 3 (it cut them for the wider tile's staged loads)
            cfg = cfg.replace(BLOCK_N=min(128, cfg.int("BLOCK_N")), num_stages=3)
        cfg = fp8.default(cfg, target, self.M) if self.fp8 is not None else self._fit_dequant(cfg)
        if magic.KNOB in self.knob_space(target):
            cfg = cfg.replace(**{magic.KNOB: 0})
        if self._row:
            # the scale per tile row is the same arithmetic (bit-identical), once per row instead of per element
            cfg = cfg.replace(**{ROW_KNOB: int(self._run % cfg.int("BLOCK_N") == 0)})
        while self.constraints(cfg, target) and cfg.int("num_stages") > 1:
            cfg = cfg.replace(num_stages=cfg.int("num_stages") - 1)
        return cfg

    def _fit_dequant(self, cfg: Config) -> Config:
        work, row_work = self.dequant_work(), self.dequant_work(row=True)

        def per_thread(c: Config) -> int:
            row = bool(self._row) and self._run % c.int("BLOCK_N") == 0
            return c.int("BLOCK_K") * c.int("BLOCK_N") // (32 * c.int("num_warps")) * (row_work if row else work)

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
