"""Attention family (forward): out = softmax(score_mod(scale q k^T) masked by mask_mod) v, and the
natural-log LSE, as one FlashAttention-style kernel per (query block, batch * q head).

The kernel visits only the key blocks the block-sparsity analysis (kernels/block_sparsity.py) keeps,
applies the mask only on partial blocks and reads the block lists from four auxiliary int32 tensors
that the spec provides at launch (`aux_args`; their pointer types come from `aux_signature`):

    kv_ptr [R + 1], kv_nfull [R], kv_idx [nnz]   CSR over rows r = pattern * NQB + q block
    head_pat [B * Hq]                            (b, h) -> pattern

Static masks are analysed once per block size at compile time; masks reading operands through
block-aligned loads (block masks, top-k lists) are re-analysed at run time on the actual operands
(cached while the operand tensors are unchanged).

With a post_mod (a post-softmax expression, e.g. a probability threshold) the same launch visits the
block list twice: pass 1 computes the row max and normaliser, pass 2 the exact probabilities, applies
post_mod and accumulates P' V; no score matrix is materialised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...schedule.config import Config
from ...schedule.target import Target
from ...ir import dims
from ...ir.dtypes import DType
from ...ir.expr import E, Expr, toposort as expr_toposort
from ...ir.limits import MAX_ANALYSIS_CELLS
from ...ir.ops import Node, Op
from ...ir.text import format_expr
from ...passes.partition import Kernel, KernelGraph
from ..base import KernelSpec
from ..registry import register_family
from .block_sparsity import BlockLists, BlockSparsity, analyze, analyze_runtime, block_aligned_loads
from ..lowering import LoweringError, next_pow2
from .dyn_sizes import concrete, remember, sizes_from_inputs
from .registers import FWD_REGISTERS, RegisterModel  # noqa: F401  (re-exported)

AUX_NAMES = ("kv_ptr", "kv_nfull", "kv_idx", "head_pat")
REF_BLOCK = (128, 64)  # block sizes of the structure recorded in the workload key and flops()


@register_family("attention")
class AttentionSpec(KernelSpec):
    """Forward attention over q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv] (GQA)."""

    family = "attention"
    dynamic_backends = frozenset({"triton", "tvm"})  # the backward refuses its own (bwd_spec)
    post_mod: Expr | None = None  # a class default: the backward spec shares these methods and has none

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        super().__init__(kg, kernel)
        node = self.anchor_node(Op.ATTENTION)
        self.node: Node = node
        q, k, v = node.src[:3]
        self.B, self.Hq, self.Sq, self.D = q.shape
        self.Hkv, self.Sk, self.Dv = k.shape[1], k.shape[2], v.shape[3]
        backends = ", ".join(sorted(self.backends))  # whose templates need the static sizes (for messages)
        for size, what in ((self.Hq, "the query heads"), (self.Hkv, "the kv heads"), (self.D, "the head dim"),
                           (self.Dv, "the value head dim")):
            self.require_static(size, what, backends)  # dynamic B, Sq, Sk: block lists at run time (dyn_sizes.py)
        self.group = self.Hq // self.Hkv
        self.dtype = q.dtype
        self.scale = float(node.attr("scale"))
        self.mask: Expr | None = node.attr("mask_mod")
        self.score_mod: Expr | None = node.attr("score_mod")
        self.post_mod = node.attr("post_mod")
        lw = self.lowering
        self.q_expr = lw.value(q, q.shape, lambda _: None)
        self.k_expr = lw.value(k, k.shape, lambda _: None)
        self.v_expr = lw.value(v, v.shape, lambda _: None)
        self.extra_slot: dict[int, int] = {}
        for i, x in enumerate(node.src[3:], start=3):
            e = lw.value(x, x.shape, lambda _: None)
            if e.op is not E.LOAD:
                raise LoweringError(f"{self.name}: mask/score operand {i} ({x!r}) must be a tensor or a view "
                                          "of one; materialise computed operands first")
            self.extra_slot[i] = e.arg
        self.dynamic_sizes = any(dims.is_dynamic(x) for x in (self.B, self.Sq, self.Sk))
        if self.dynamic_sizes and max(dims.upper(h * s * d) for h, s in ((self.Hq, self.Sq), (self.Hkv, self.Sk))
                                      for d in (self.D, self.Dv)) >= 2**31:  # the kernel's offsets: int32 sizes
            raise LoweringError(f"{self.name}: a batch entry of q, k, v or out exceeds 2^31 - 1 elements at the top of "
                                "the dynamic size's range; lower the range's top")
        if self.dynamic_sizes and self.dynamic:
            self.require_static(next(x for x in (self.Sq, self.Sk, self.B) if dims.is_dynamic(x)),
                                "a size of an attention whose mask reads operands (their block shapes follow it)",
                                backends)
        self.outs: list[tuple[int, str]] = []
        for i, o in enumerate(kernel.group.outputs):
            if o is node:
                role = "out"
            elif o.op is Op.RESULT and o.src[0] is node:
                role = ("out", "lse")[o.attr("index")]
            else:
                raise LoweringError(f"{self.name}: output {o!r} is not a result of the attention")
            self.outs.append((i, role))
        self._sparsity: dict[tuple[int, ...], BlockSparsity] = {}
        self._aux: dict[Any, list[Any]] = {}
        self._host_aux: dict[Any, list[Any]] = {}
        self._describe: dict[str, Any] | None = None

    # -- block structure --
    @property
    def dynamic(self) -> bool:
        """Whether the mask reads operands (its block classes then depend on data)."""
        return self.mask is not None and any(n.op is E.LOAD for n in expr_toposort([self.mask]))

    def sparsity(self, bm: int, bn: int, sizes: Mapping[str, int] | None = None) -> BlockSparsity:
        """Block classes at BLOCK_M x BLOCK_N (cached): at compile time, or for dynamic sizes at `sizes`
        (default: the spec's binding)."""
        b, sq, sk = concrete((self.B, self.Sq, self.Sk), sizes)
        key = (bm, bn, b, sq, sk)
        hit = self._sparsity.get(key)
        return hit if hit is not None else remember(self._sparsity, key, analyze(self.mask, b, self.Hq, sq, sk, bm, bn))

    def runtime_lists(self, bm: int, bn: int) -> bool:
        """Whether block lists are rebuilt from the operands at run time (block-aligned loads)."""
        return self.mask is not None and self.dynamic and \
            block_aligned_loads(self.mask, int(self.Sq), int(self.Sk), bm, bn)

    def block_lists(self, config: Config, operands: dict[int, np.ndarray] | None = None,
                    device: Any = None, sizes: Mapping[str, int] | None = None) -> BlockLists:
        """CSR lists for `config` (at `sizes` for dynamic ones): numpy, or torch tensors built on `device`
        by the mask_compact kernel; `operands` (attention operand index -> array) refines data-dependent masks."""
        bm, bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        sp = self.sparsity(bm, bn, sizes)
        if operands is not None and self.mask is not None and self.runtime_lists(bm, bn):
            from ...ir.attention_op import make_loader

            xs: list[Any] = [None] * (3 + len(self.extra_slot))
            for i, arr in operands.items():
                xs[i] = arr
            sp = analyze_runtime(self.mask, sp, self.B, self.Hq, make_loader(xs, f"{self.name} block analysis"))
        return sp.lists(device)

    def aux_signature(self, config: Config) -> dict[str, str]:
        """Triton pointer types of the auxiliary (block list) arguments."""
        return {name: "*i32" for name in AUX_NAMES}

    def aux_args(self, config: Config, inputs: list[Any], device: Any) -> list[Any]:
        """The block-list tensors for a launch on `inputs` (the kernel's input tensors)."""
        bm, bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        runtime = self.runtime_lists(bm, bn)
        sizes = sizes_from_inputs(self.inputs, inputs) if self.dynamic_sizes else None
        key: tuple[Any, ...] = (bm, bn, str(device), *concrete((self.B, self.Sq, self.Sk), sizes))
        if runtime:
            key += tuple((t.data_ptr(), t._version, tuple(t.shape))
                         for t in (inputs[self.loads[s].buffer] for s in self.extra_slot.values()))
        hit = self._aux.get(key)
        if hit is not None:
            return hit
        if runtime:
            # Data-dependent: classes from the operands, compacted on the launch's device by the
            # generated mask_compact kernel; one such entry is kept.
            out = self.block_lists(config, self._host_operands(inputs), device).as_list()
            self._aux = {k: v for k, v in self._aux.items() if len(k) == 6}
        else:
            # Static: the compile-time lists (or with dynamic sizes those of this call's sizes), compacted on
            # the host once per block size, sizes and device.
            import torch

            out = [torch.from_numpy(np.ascontiguousarray(a)).to(device)
                   for a in self.block_lists(config, sizes=sizes).as_list()]
        return remember(self._aux, key, out)

    def host_aux(self, config: Config, inputs: Sequence[Any], sizes: Mapping[str, int] | None = None) -> list[Any]:
        """The block lists (int32 numpy, AUX_NAMES order) the cpu kernel takes for a call on `inputs` at `sizes`:
        the compile-time lists or those of the call's sizes (cached), or for a block-aligned data-dependent
        mask those of its operands (made for every call)."""
        bm, bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        if self.runtime_lists(bm, bn):
            return [np.ascontiguousarray(a, dtype=np.int32)
                    for a in self.block_lists(config, self._host_operands(inputs)).as_list()]
        sizes = sizes if self.dynamic_sizes else None
        key = (bm, bn, *concrete((self.B, self.Sq, self.Sk), sizes))
        hit = self._host_aux.get(key)
        return hit if hit is not None else remember(self._host_aux, key, [
            np.ascontiguousarray(a, dtype=np.int32) for a in self.block_lists(config, sizes=sizes).as_list()])

    def constant_aux(self, config: Config) -> list[Any] | None:
        """The compile-time block lists (int32 numpy), unless a data-dependent mask rebuilds them from the
        operands at launch, or the sizes are dynamic (then None)."""
        if self.dynamic_sizes or self.runtime_lists(config.int("BLOCK_M"), config.int("BLOCK_N")):
            return None
        return [np.ascontiguousarray(a, dtype=np.int32) for a in self.block_lists(config).as_list()]

    def _host_operands(self, inputs: Sequence[Any]) -> dict[int, np.ndarray]:
        """The mask's operands (torch tensors or numpy arrays among `inputs`) as numpy views."""
        out = {}
        for i, slot in self.extra_slot.items():
            site = self.loads[slot]
            x = inputs[site.buffer]
            t = x.detach().reshape(-1).cpu() if hasattr(x, "detach") else None
            flat = (t.float() if t.dtype.is_floating_point else t).numpy() if t is not None else np.ravel(x)
            view = site.view
            out[i] = np.lib.stride_tricks.as_strided(flat[view.offset:], shape=view.shape,
                                                     strides=[s * flat.itemsize for s in view.strides])
        return out

    # -- identity --
    def program_description(self) -> dict[str, Any]:
        if self._describe is None:
            ref = self.sparsity(*REF_BLOCK)
            self._describe = {
                "B": self.B, "Hq": self.Hq, "Hkv": self.Hkv, "Sq": self.Sq, "Sk": self.Sk, "D": self.D, "Dv": self.Dv,
                "dtype": self.dtype.name, "scale": self.scale,
                "q": format_expr(self.q_expr), "k": format_expr(self.k_expr), "v": format_expr(self.v_expr),
                "mask_mod": format_expr(self.mask) if self.mask is not None else None,
                "score_mod": format_expr(self.score_mod) if self.score_mod is not None else None,
                "extra_slots": sorted(self.extra_slot.items()),
                "outputs": [[i, r] for i, r in self.outs],
                # dynamic sizes: the structure depends on them, so the key records where it comes from
                "block_structure": "run time (dynamic sizes)" if self.dynamic_sizes else ref.describe(),
            }
            if self.post_mod is not None:  # only when present: keys of kernels without one stay as they were
                self._describe["post_mod"] = format_expr(self.post_mod)
        return self._describe

    # -- schedule --
    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        if target.kind == "cpu" and "tvm" not in self.backends:  # the backward inherits this method
            raise LoweringError(f"{self.name}: {self.family} has no TVM/CPU lowering yet; use target 'interp' or a "
                                "CUDA arch (sm_80, sm_90)")
        if target.kind == "cpu":  # tvm_template.py: BLOCK_M rows share each packed key block of BLOCK_N keys
            return {"BLOCK_M": (8, 16, 32, 64, 128), "BLOCK_N": (16, 32, 64, 128)}
        return {"BLOCK_M": (16, 32, 64, 128, 256), "BLOCK_N": (16, 32, 64, 128),
                "num_warps": (1, 2, 4, 8), "num_stages": (1, 2, 3, 4, 5)}

    @property
    def head_dims(self) -> tuple[int, int]:
        """Head dims padded to the tile (powers of two, at least 16 for tl.dot)."""
        return max(16, next_pow2(self.D)), max(16, next_pow2(self.Dv))

    def smem_bytes(self, config: Config) -> int:
        """Shared memory of the q tile and the pipelined k/v tiles."""
        bm, bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        dp, dvp = self.head_dims
        el = self.dtype.itemsize
        return bm * dp * el + max(1, config.int("num_stages") - 1) * bn * (dp + dvp) * el

    def registers(self, config: Config, target: Target) -> int:
        """Estimated 32-bit registers per thread of `config` on `target` (FWD_REGISTERS; sm_90's from sm_90 on)."""
        dp, dvp = self.head_dims
        return FWD_REGISTERS[90 if target.arch >= 90 else 80].estimate(
            config.int("BLOCK_M"), config.int("BLOCK_N"), dp, dvp, config.int("num_warps"),
            config.int("num_stages"), self.post_mod is not None)

    smem_what = "q/k/v tiles"  # what the shared memory holds, in constraint messages

    def constraints(self, config: Config, target: Target) -> list[str]:
        """Head dims, shared memory, registers (`register_constraints`), tile vs problem size and warps
        (`tile_constraints`), warp count vs tile; the backward spec overrides the two hooks."""
        out: list[str] = []
        bm, bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        dp, dvp = self.head_dims
        if max(dp, dvp) > 256:
            out.append(f"head dims {self.D}/{self.Dv} exceed 256")
        if target.max_shared_bytes and self.smem_bytes(config) > target.max_shared_bytes:
            out.append(f"{self.smem_what} need {self.smem_bytes(config)} B of shared memory, {target.name} allows "
                       f"{target.max_shared_bytes}")
        if target.kind == "cuda":
            out += self.register_constraints(config, target)
        out += self.tile_constraints(config, target)
        cells = -(-self.Sq // bm) * -(-self.Sk // bn)
        if cells > MAX_ANALYSIS_CELLS:  # the block analysis would refuse this tile (ir/limits.py)
            out.append(f"{bm}x{bn} tiles make {cells} block pairs, over the block analysis' {MAX_ANALYSIS_CELLS}")
        if target.kind == "cuda" and bm * bn < config.int("num_warps") * 32 * 4:
            out.append(f"{config.int('num_warps')} warps are too many for a {bm}x{bn} tile")
        return out

    def register_constraints(self, config: Config, target: Target) -> list[str]:
        """The register estimate against the arch's limit (RegisterModel).

        On the sweep FWD_REGISTERS was fitted to (576 builds, 117 of them spill) the estimate accepts 459.
        20 of those spill: 10 by at most 24 B where ptxas chose 128 or 168 registers (an occupancy step, not
        register pressure: no tile-size estimate predicts them), 9 at hdim 256 on sm_80 next to the 255-register
        default 64 x 32 (128-row 8-warp tiles and post_mod kernels with 1 stage), and 128 x 128 with 8 warps,
        2 stages at hdim 128 on sm_80. It rejects 12 builds that do not spill, all at 242-255 registers."""
        bm, bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        regs, limit = self.registers(config, target), FWD_REGISTERS[90 if target.arch >= 90 else 80].limit
        if regs <= limit:
            return []
        return [f"the {bm}x{self.head_dims[1]} accumulator, {bm}x{bn} score tiles and k/v tiles need about {regs} "
                f"registers per thread with {config.int('num_warps')} warps and {config.int('num_stages')} "
                f"stage(s) (> {limit} spills on {target.name})"]

    def tile_constraints(self, config: Config, target: Target) -> list[str]:
        """Tiles larger than the score matrix (sm_90's wgmma tiles are 64 rows anyway), warpgroups."""
        out: list[str] = []
        bm, bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        min_m = 64 if target.arch >= 90 else 16
        if bm > max(min_m, next_pow2(self.Sq)) or bn > max(16, next_pow2(self.Sk)):
            out.append(f"tile {bm}x{bn} is larger than the {self.Sq}x{self.Sk} score matrix")
        if target.arch >= 90 and bm >= 64 and config.int("num_warps") < 4:
            out.append("sm_90 wgmma needs a warpgroup (num_warps >= 4) for BLOCK_M >= 64")
        return out

    def default_config(self, target: Target) -> Config:
        dp = max(self.head_dims)

        def fit(x: int, cap: int, low: int = 16) -> int:
            return max(low, min(cap, next_pow2(x)))

        if target.kind == "cpu":  # 32 rows share each packed key block; 64 keys are a few vector registers wide
            return Config(BLOCK_M=fit(self.Sq, 32, 8), BLOCK_N=fit(self.Sk, 64))
        if target.kind == "interp":  # the interpreter pays per op, not per element: small tiles
            return Config(BLOCK_M=fit(self.Sq, 64), BLOCK_N=fit(self.Sk, 64), num_warps=4, num_stages=1)
        arch = target.schedule_arch
        # FlashAttention-2 tiles (128 x 64 at hdim 128); warp counts from static builds: 4 warps at
        # hdim 128 spill on both archs (Triton keeps q, s, p and acc in registers), and so does a
        # 128 x 128 tile with 4 warps on sm_90 at hdim 64.
        if dp <= 64:
            bm, bn, warps, stages = (128, 128, 8, 3) if arch >= 90 else (128, 64, 4, 3)
            if self.post_mod is not None and arch < 90:  # measured: the two-pass kernel spills with 4 warps
                warps = 8
        elif dp <= 128:
            bm, bn, warps, stages = 128, 64, 8, 3
        else:
            bm, bn, warps, stages = (128, 64, 8, 2) if arch >= 90 else (64, 32, 4, 2)
        bm = fit(self.Sq, bm, 64 if arch >= 90 else 16)
        bn = fit(self.Sk, bn)
        cfg = Config(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
        while self.constraints(cfg, target) and cfg.int("num_stages") > 1:
            cfg = cfg.replace(num_stages=cfg.int("num_stages") - 1)
        while self.constraints(cfg, target) and cfg.int("BLOCK_N") > 16:
            cfg = cfg.replace(BLOCK_N=cfg.int("BLOCK_N") // 2)
        return cfg

    def grid(self, config: Config) -> tuple[int, int, int]:
        bm = config.int("BLOCK_M")
        return ((self.Sq + bm - 1) // bm, self.B * self.Hq, 1)

    def flops(self) -> float:
        """Matmul flops of the visited blocks (dense flops times the block density at 128x64); a
        post_mod's second pass computes q k^T again."""
        qk = 2 if self.post_mod is not None else 1
        dense = 2.0 * self.B * self.Hq * self.Sq * self.Sk * (qk * self.D + self.Dv)
        return dense * self.sparsity(*REF_BLOCK).density()

    # -- cost estimates (KernelSpec's contracts; the backward inherits them) --
    def mma_dtype(self) -> DType | None:
        return self.dtype  # q k^T and P V run on q's dtype

    def family_features(self, config: Config) -> dict[str, float]:
        sp = self.sparsity(config.int("BLOCK_M"), config.int("BLOCK_N"))
        # Per-pattern counts weighted by their heads: never the [B, H, NQB, NKB] table itself.
        heads = np.bincount(sp.pattern_of.reshape(-1), minlength=sp.num_patterns)
        live = max(1, int(heads @ (sp.classes != 0).reshape(sp.num_patterns, -1).sum(axis=1)))
        partial = int(heads @ (sp.classes == 1).reshape(sp.num_patterns, -1).sum(axis=1))
        return {"B": float(self.B), "Hq": float(self.Hq), "Hkv": float(self.Hkv), "Sq": float(self.Sq),
                "Sk": float(self.Sk), "D": float(self.D), "Dv": float(self.Dv), "density": sp.density(),
                "partial_fraction": float(partial) / live, "data_dependent": float(self.dynamic),
                "score_mod": float(self.score_mod is not None), "post_mod": float(self.post_mod is not None)}

    def shared_bytes(self, config: Config) -> float:
        return float(self.smem_bytes(config)) if "num_stages" in config else 0.0  # 0 for a cpu config

    def registers_per_thread(self, config: Config, target: Target) -> float:
        return float(self.registers(config, target)) if "num_warps" in config else 0.0

    # -- reports and rendering --
    def summary(self) -> str:
        op = self.kernel.group.anchor.op.value if self.kernel.group.anchor is not None else "attention"
        lines = [f"anchor: {op} q [{self.B}, {self.Hq}, {self.Sq}, {self.D}] kv [{self.B}, {self.Hkv}, "
                 f"{self.Sk}, {self.Dv}] {self.dtype} scale {self.scale:.6g}"]
        if self.mask is not None:
            lines.append(f"mask_mod: {format_expr(self.mask)}")
        if self.score_mod is not None:
            lines.append(f"score_mod: {format_expr(self.score_mod)}")
        if self.post_mod is not None:
            lines.append(f"post_mod: {format_expr(self.post_mod)}")
        lines.append("outputs: " + ", ".join(r for _, r in self.outs))
        return "\n".join(lines)

    def report_lines(self, config: Config) -> list[str]:
        """The block-sparsity summary at the chosen block sizes (for the compile report)."""
        bm, bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        lines = self.sparsity(bm, bn).summary()
        if self.dynamic_sizes:
            at = ", ".join(f"{k}={v}" for k, v in self.bound_sizes().items())
            lines.append(f"  dynamic sizes: the compile-time block analysis falls back to run time (the table above is "
                         f"at {at}); block lists are analysed on the host for each call's sizes and cached")
        if self.runtime_lists(bm, bn):
            lines.append("  data-dependent mask: block lists rebuilt from the operands at run time")
        elif self.dynamic:
            lines.append("  data-dependent mask: loads not block-aligned, blocks kept partial (masked per element)")
        if self.post_mod is not None:
            lines.append("  post-softmax pass: post_mod on the exact probabilities (2 passes over KV: "
                         "row max and normaliser, then P' V)")
        return lines

    def triton_constexprs(self, config: Config) -> dict[str, Any]:
        dp, dvp = self.head_dims
        return {"BLOCK_M": config.int("BLOCK_M"), "BLOCK_N": config.int("BLOCK_N"), "BLOCK_D": dp, "BLOCK_DV": dvp}


