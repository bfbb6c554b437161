"""Decode family: paged_attention (a few query tokens per sequence against a paged KV cache).

Launch structure. The main kernel runs on a grid (B * Hkv, KV_SPLITS): one program per (sequence,
kv head, split). It loads all G * Sq query rows of the kv head's GQA group as one [BLOCK_M, D] tile
(no K/V copies per query head) and walks its split's tokens BLOCK_N at a time, gathering each token's
page through kv_indices (no gather copy of the cache), dequantizing int8/int4 K/V in registers, and
keeping an online softmax in exp2. Split s owns the sequence's logical pages
[s * ceil(P / KV_SPLITS), (s + 1) * ceil(P / KV_SPLITS)). With KV_SPLITS = 1 it writes out (and lse)
directly; otherwise it writes a normalised partial output and its base-2 log-sum-exp to the f32
workspace and the `_finish` kernel, grid (B * Hkv,), combines the splits with log-sum-exp weights.

Page selection (page_budget) is computed in-kernel, before the token loop, by every program of the
(sequence, kv head): it scores all pages from kmin/kmax into the workspace, then finds the
page_budget-th largest key (score, then lower index) by a 63-step bit-wise search over the scores,
and visits only tokens of pages whose key reaches it (steps with no selected page are skipped).
The selection costs O(63 * P / BLOCK_P) workspace scans per program, small next to reading K/V
for the long contexts selection is for; a radix-select pre-kernel is the faster alternative.

Workspace (one f32 buffer): partial out [B * Hkv, KV_SPLITS, G * Sq, D], partial lse
[B * Hkv, KV_SPLITS, G * Sq], page scores [Hkv, len(kv_indices)].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...schedule.config import Config
from ...schedule.launch import Arg, Launch, Workspace
from ...schedule.target import Target
from ...ir import dtypes as dt
from ...ir.ops import Node, Op
from ...ir.paged_attention_op import operand_names
from ...passes.partition import Kernel, KernelGraph
from ...passes.views import strided_view
from ..base import KernelSpec
from ..registry import register_family
from ..lowering import LoweringError, next_pow2

MAX_ROWS = 128  # G * Sq query rows per program


@register_family("paged_attention")
class DecodeSpec(KernelSpec):
    """Paged decode attention with split-KV, GQA grouping, quantized KV and page selection."""

    family = "decode"

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        super().__init__(kg, kernel)
        node = self.anchor_node(Op.PAGED_ATTENTION)
        self.node: Node = node
        self.attrs = dict(node.attrs)
        self.attrs.pop("results", None)
        # operand name -> kernel input argument
        self.args: dict[str, str] = {}
        for name, src in zip(operand_names(self.attrs), node.src):
            view = strided_view(src)
            if view is None or not view.is_contiguous:
                raise LoweringError(f"{self.name}: paged_attention operand {name} must be contiguous "
                                          f"(got a strided view {view})")
            self.args[name] = f"in{kernel.inputs.index(kg.buffer_of(src))}"
        # result index (0 out, then lse, then selection in that order) -> kernel output argument
        kinds = ["out"] + (["lse"] if self.attrs.get("return_lse") else []) + \
            (["sel"] if self.attrs.get("return_selection") else [])
        for i, o in enumerate(kernel.group.outputs):
            if o is node and len(kinds) == 1:
                self.args["out"] = f"out{i}"
            elif o.op is Op.RESULT and o.src[0] is node:
                self.args[kinds[o.attr("index")]] = f"out{i}"
            else:
                raise LoweringError(f"{self.name}: unexpected decode group output {o!r}")
        self.B, self.HQ, self.SQ, self.D = node.src[0].shape
        self.NP, self.PS, self.HKV, _ = node.src[1].shape
        self.NNZ = node.src[4].shape[0]
        self.G = self.HQ // self.HKV
        self.M = self.G * self.SQ
        self.dtype: dt.DType = node.dtype
        self.bits: int = self.attrs["kv_bits"]
        self.select = self.attrs.get("page_budget") is not None
        if self.M > MAX_ROWS:
            raise LoweringError(f"{self.name}: {self.G} query heads per kv head x Sq={self.SQ} = {self.M} "
                                      f"rows per program; the decode kernel handles at most {MAX_ROWS}")

    @property
    def block_m(self) -> int:
        return max(16, next_pow2(self.M))

    @property
    def block_d(self) -> int:
        return max(16, next_pow2(self.D))

    def program_description(self) -> dict[str, Any]:
        return {"B": self.B, "HQ": self.HQ, "HKV": self.HKV, "SQ": self.SQ, "D": self.D, "NP": self.NP,
                "PS": self.PS, "NNZ": self.NNZ, "dtype": self.dtype.name,
                "attrs": {k: (v.name if isinstance(v, dt.DType) else v) for k, v in sorted(self.attrs.items())},
                "args": dict(sorted(self.args.items()))}

    # -- schedule --
    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        if target.kind == "cpu":
            raise LoweringError(f"{self.name}: paged_attention has no TVM/CPU lowering yet; use target "
                                "'interp' or a CUDA arch (sm_80, sm_90)")
        return {"BLOCK_N": (16, 32, 64, 128), "KV_SPLITS": (1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
                "num_warps": (1, 2, 4, 8), "num_stages": (1, 2, 3, 4)}

    def kv_itemsize(self) -> float:
        return {16: 2.0, 8: 1.0, 4: 0.5}[self.bits]

    def constraints(self, config: Config, target: Target) -> list[str]:
        out: list[str] = []
        bn, splits = config.int("BLOCK_N"), config.int("KV_SPLITS")
        warps, stages = config.int("num_warps"), config.int("num_stages")
        bm, bd = self.block_m, self.block_d
        per_thread = self.registers(config)
        if per_thread > 192:
            out.append(f"BLOCK_N={bn} with {bm} rows x D={bd} needs ~{per_thread} f32 registers per thread "
                       f"with {warps} warps (> 192 spills)")
        smem = self.smem_bytes(config)
        if target.max_shared_bytes and smem > target.max_shared_bytes:
            out.append(f"{stages} stages of {bn}x{bd} K/V tiles need {smem} B of shared memory, "
                       f"{target.name} allows {target.max_shared_bytes}")
        if splits > max(1, next_pow2(self.NNZ)):
            out.append(f"KV_SPLITS={splits} exceeds the {self.NNZ} pages of the page table")
        if bm * bn < warps * 32 * 2:
            out.append(f"{warps} warps are too many for a {bm}x{bn} score tile")
        return out

    def registers(self, config: Config) -> int:
        """f32 values per thread: accumulator, scores, and the K/V tiles (quantized tiles hold codes and
        scales as f32 while they are dequantized in registers)."""
        bn, bm, bd = config.int("BLOCK_N"), self.block_m, self.block_d
        kv_tiles = 2 * bn * bd * (1 if self.bits == 16 else 2)
        return (bm * bd + bm * bn + kv_tiles) // (32 * config.int("num_warps"))

    def smem_bytes(self, config: Config) -> int:
        """Shared memory of the pipelined K/V tiles (num_stages buffers of BLOCK_N x D, 16-bit)."""
        return config.int("num_stages") * 2 * config.int("BLOCK_N") * self.block_d * 2

    def default_config(self, target: Target) -> Config:
        bn = 64 if self.block_d <= 128 else 32
        warps = 4
        splits = 1
        if target.kind == "cuda":
            # enough programs to fill the machine twice, each split keeping >= 512 tokens of work
            programs = self.B * self.HKV
            want = next_pow2(-(-2 * max(1, target.num_sms) // programs))
            avg_tokens = self.NNZ * self.PS // max(1, self.B)
            splits = max(1, min(16, want, 1 << max(0, (avg_tokens // 512).bit_length() - 1)))
        cfg = Config(BLOCK_N=bn, KV_SPLITS=splits, num_warps=warps, num_stages=2)
        while self.constraints(cfg, target) and cfg.int("BLOCK_N") > 16:
            cfg = cfg.replace(BLOCK_N=cfg.int("BLOCK_N") // 2)
        while self.constraints(cfg, target) and cfg.int("num_warps") > 1:
            cfg = cfg.replace(num_warps=cfg.int("num_warps") // 2)
        return cfg

    def grid(self, config: Config) -> tuple[int, int, int]:
        splits = config.int("KV_SPLITS") if "KV_SPLITS" in config else 1
        return (self.B * self.HKV, splits, 1)

    def workspace_layout(self, config: Config) -> dict[str, int]:
        """Element offsets of the workspace sections and the total size (0 when none is needed)."""
        splits = config.int("KV_SPLITS")
        parts = self.B * self.HKV * splits * self.M if splits > 1 else 0
        lse_off = parts * self.D
        sc_off = lse_off + parts
        total = sc_off + (self.HKV * self.NNZ if self.select else 0)
        return {"lse": lse_off, "scores": sc_off, "total": total}

    def workspaces(self, config: Config, sizes: Mapping[str, int] | None = None) -> list[Workspace]:
        """The f32 workspace `ws` (split partials and page scores, see workspace_layout), if any."""
        total = self.workspace_layout(config)["total"]
        return [Workspace("ws", (total,))] if total else []

    def launches(self, config: Config, args: tuple[Arg, ...],
                 sizes: Mapping[str, int] | None = None) -> list[Launch]:
        """The main kernel; with a workspace, `{name}_finish` on (B * Hkv, 1, 1) combines the splits."""
        main = self.launch(self.name, self.grid(config), config, args)
        if not self.workspaces(config, sizes):
            return [main]
        return [main, self.launch(f"{self.name}_finish", (self.B * self.HKV, 1, 1), config, args)]

    def flops(self) -> float:
        return 4.0 * self.HQ * self.SQ * self.NNZ * self.PS * self.D

    # -- cost estimates (KernelSpec's contracts) --
    def mma_dtype(self) -> dt.DType | None:
        return self.dtype  # quantized K/V are dequantized to the query's dtype before tl.dot

    def family_features(self, config: Config) -> dict[str, float]:
        return {"B": float(self.B), "HQ": float(self.HQ), "HKV": float(self.HKV), "SQ": float(self.SQ),
                "D": float(self.D), "page_size": float(self.PS), "pages": float(self.NNZ),
                "kv_bits": float(self.bits), "select": float(self.select)}

    def shared_bytes(self, config: Config) -> float:
        return float(self.smem_bytes(config))

    def registers_per_thread(self, config: Config, target: Target) -> float:
        return float(self.registers(config))

    # -- rendering --
    def triton_constexprs(self, config: Config) -> dict[str, Any]:
        return {"BLOCK_N": config.int("BLOCK_N"), "KV_SPLITS": config.int("KV_SPLITS")}

