"""Edge softmax and graph attention: `sparse_softmax` (a softmax over each row's stored entries of a CSR
tensor) as a kernel of its own, with the SDDMM that computes its scores fused in (family
`sparse_softmax`), and SDDMM -> edge softmax -> SpMM as one kernel (family `sparse_attention`, the
fused GAT / sparse-attention kernel of FastGL and DGL).

Both walk one CSR row per program (GPU) or nnz-balanced row ranges per task (CPU), in two passes over
the row's nonzeros: the first computes the scores (the SDDMM dot of a[r] with b[col], or the values'
expression) and keeps the running max m and the sum l of exp(s - m), rescaled as m grows (the online
softmax); the second recomputes each score and has p = exp(s - m) / l, which `sparse_softmax` writes at
the nonzero (through its epilogue) and `sparse_attention` multiplies into the row's accumulator with
the dense row x[col] (through the values' expression of p), before the SpMM epilogue. Scores are
recomputed rather than stored: the fused kernel never writes the [nnz] scores or probabilities.

The structures must be one: the SDDMM's pattern, the softmax's operand and the SpMM's operand read the
same indptr and indices (what `as_sparse=True` builds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...ir import dtypes as dt
from ...ir import expr as ex
from ...ir.expr import Expr
from ...ir.ops import Node, Op
from ...ir.text import format_expr
from ...passes.partition import Kernel, KernelGraph
from ...schedule.config import Config
from ...schedule.target import Target
from ..base import BASE_REGISTERS, KernelSpec
from ..lowering import LoweringError, next_pow2
from ..registry import register_family
from .common import check_structure, csr_structure, plain_value, sparse_operand

MAX_TILE = 8192  # BLOCK_NZ x BLOCK_K (scores) or BLOCK_NZ x BLOCK_N (aggregation) gathered elements
MAX_CPU_ROW = 8192  # the CPU attention kernel holds one output row of this many features in a stack buffer


class _EdgeSoftmaxBase(KernelSpec):
    """What both families share: the softmax node, its CSR structure and the score expression."""

    dynamic_backends = frozenset({"triton", "tvm"})

    outs: list[tuple[int, Expr]]

    def scores(self, sm: Node) -> None:
        """Set the structure, the score expression (VAR `s` is the SDDMM dot when one is fused) and the
        SDDMM's operands from the `sparse_softmax` node `sm`."""
        sp = sparse_operand(self.kernel, sm, 0)
        if sp.attr("format") != "csr":
            raise LoweringError(f"{self.name}: sparse_softmax over a sparse {sp.attr('format')!r} tensor has no "
                                "template yet (csr has)")
        self.sparse, self.softmax = sp, sm
        self.M, self.N = sp.shape
        lw = self.lowering
        self.indptr, self.indices, self.nnz = csr_structure(self, sp)
        sd = next((m for m in self.kernel.group.nodes if m.op is Op.SDDMM), None)
        self.sddmm = sd
        self.K = 0
        wide = sm.dtype == dt.f64 or sp.dtype == dt.f64
        if sd is not None:
            pattern = sd.src[2]
            if pattern.src[0] is not sp.src[0] or pattern.src[1] is not sp.src[1]:
                raise LoweringError(f"{self.name}: the sddmm's pattern and the softmax's operand must share "
                                    "indptr and indices (build the scores with sddmm(..., as_sparse=True))")
            self.a, self.b = plain_value(self, sd.src[0]), plain_value(self, sd.src[1])
            self.K = sd.src[0].shape[1]
            wide = wide or dt.f64 in (self.a.dtype, self.b.dtype)
        self.acc_dtype = dt.f64 if wide else dt.f32
        dot = ex.cast(ex.var("s", self.acc_dtype), sd.dtype) if sd is not None else None
        self.score = lw.value(sp.src[2], (self.nnz,), lambda n: dot if n is sd else None)
        self.prob = ex.cast(ex.var("p", self.acc_dtype), sm.dtype)

    def check_inputs(self, inputs: Sequence[Any]) -> None:
        """The structure is valid (ir/sparse_op.validate_arrays), else SparseStructureError."""
        check_structure(self, self.sparse, (self.indptr, self.indices), inputs)

    def describe_scores(self) -> dict[str, Any]:
        out = {"M": self.M, "N": self.N, "nnz": self.nnz, "indptr": format_expr(self.indptr),
               "indices": format_expr(self.indices), "score": format_expr(self.score)}
        if self.sddmm is not None:
            out.update(K=self.K, a=format_expr(self.a), b=format_expr(self.b))
        return out

    def score_knobs(self, target: Target) -> dict[str, tuple[Any, ...]]:
        if target.kind == "cpu":
            return {"tasks": (1, 2, 4, 8, 16, 32, 64), **({"tile_k": (4, 8, 16, 32, 64)} if self.K else {})}
        space: dict[str, tuple[Any, ...]] = {"BLOCK_NZ": (8, 16, 32, 64)}
        if self.K:
            space["BLOCK_K"] = (16, 32, 64, 128)
        return {**space, "num_warps": (1, 2, 4, 8), "num_stages": (1, 2)}

    def score_defaults(self, target: Target) -> dict[str, int]:
        if target.kind == "cpu":
            return {"tasks": 8, **({"tile_k": max(4, min(16, next_pow2(self.K)))} if self.K else {})}
        out = {"BLOCK_NZ": 16, "num_warps": 2, "num_stages": 1}
        if self.K:
            out["BLOCK_K"] = max(16, min(64, next_pow2(self.K)))
        return out

    def score_constraints(self, config: Config) -> list[str]:
        out: list[str] = []
        if "tile_k" in config and config.int("tile_k") > max(4, next_pow2(self.K)):
            out.append(f"tile_k={config['tile_k']} is larger than K={self.K}")
        if "BLOCK_K" in config:
            bk, bz = config.int("BLOCK_K"), config.int("BLOCK_NZ")
            if bk > max(16, next_pow2(self.K)):
                out.append(f"BLOCK_K={bk} is larger than K={self.K}")
            if bz * bk > MAX_TILE:
                out.append(f"a {bz}x{bk} gathered tile of b exceeds {MAX_TILE} elements (registers spill)")
        return out

    def grid(self, config: Config) -> tuple[int, int, int]:
        if "tasks" in config:
            return (config.int("tasks"), 1, 1)
        tiles = -(-self.out_features() // config.int("BLOCK_N")) if "BLOCK_N" in config else 1
        return (self.M, tiles, 1)

    def out_features(self) -> int:
        return 1

    def mma_dtype(self) -> dt.DType | None:
        return None

    def shared_bytes(self, config: Config) -> float:
        return 0.0

    def score_flops(self) -> float:
        """Two passes over the scores (a K-long dot each when an SDDMM is fused) and the exps."""
        return 2.0 * self.nnz * (2 * self.K + 4)

    def registers_per_thread(self, config: Config, target: Target) -> float:
        """BASE_REGISTERS plus the gathered tiles (b for the scores, x for the aggregation), over the threads."""
        if "BLOCK_NZ" not in config:
            return float(BASE_REGISTERS)
        threads = self.threads_per_program(config) or 1
        bz = config.int("BLOCK_NZ")
        tile = bz * 4 + bz * 2 * max(config.int("BLOCK_K") if "BLOCK_K" in config else 0,
                                     config.int("BLOCK_N") if "BLOCK_N" in config else 0)
        return float(BASE_REGISTERS + -(-tile // threads))

    def triton_constexprs(self, config: Config) -> dict[str, Any]:
        return {k: config.int(k) for k in ("BLOCK_NZ", "BLOCK_K", "BLOCK_N") if k in config}


@register_family("sparse_softmax")
class SparseSoftmaxSpec(_EdgeSoftmaxBase):
    """sparse_softmax(S csr) with S's constructor, the SDDMM computing its values when fused, and pointwise
    epilogues on the [nnz] probabilities."""

    family = "sparse_softmax"

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        super().__init__(kg, kernel)
        sm = self.anchor_node(Op.SPARSE_SOFTMAX)
        self.anchor: Node = sm
        self.scores(sm)
        self.outs = [(i, self.lowering.value(o, tuple(sm.shape), lambda n: self.prob if n is sm else None))
                     for i, o in enumerate(kernel.group.outputs)]

    def program_description(self) -> dict[str, Any]:
        return {**self.describe_scores(), "outputs": [[i, format_expr(e)] for i, e in self.outs]}

    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        return self.score_knobs(target)

    def constraints(self, config: Config, target: Target) -> list[str]:
        return self.score_constraints(config)

    def default_config(self, target: Target) -> Config:
        return Config(self.score_defaults(target))

    def flops(self) -> float:
        return self.score_flops()

    def family_features(self, config: Config) -> dict[str, float]:
        return {"M": float(self.M), "N": float(self.N), "K": float(self.K), "nnz": float(self.nnz),
                "density": self.nnz / float(max(1, self.M * self.N)), "epilogue_outputs": float(len(self.outs))}


@register_family("sparse_attention")
class SparseAttentionSpec(_EdgeSoftmaxBase):
    """spmm(sparse(structure, f(sparse_softmax(S))), x): the softmax (and the SDDMM of its scores, when fused)
    read in the SpMM's loads, with pointwise epilogues on the [M, D] output."""

    family = "sparse_attention"

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        super().__init__(kg, kernel)
        mm = self.anchor_node(Op.SPMM)
        self.anchor: Node = mm
        sp = sparse_operand(kernel, mm, 0)
        sm = next(m for m in kernel.group.nodes if m.op is Op.SPARSE_SOFTMAX)
        self.scores(sm)
        if sp.attr("format") != "csr" or sp.src[0] is not self.sparse.src[0] or sp.src[1] is not self.sparse.src[1]:
            raise LoweringError(f"{self.name}: the spmm's sparse operand must share the softmax's indptr and "
                                "indices (build it with sparse_softmax(..., as_sparse=True))")
        self.weight = self.lowering.value(sp.src[2], (self.nnz,), lambda n: self.prob if n is sm else None)
        self.x = self.lowering.value(mm.src[1], tuple(mm.src[1].shape), lambda _: None)
        self.D = mm.shape[1]
        if self.x.dtype == dt.f64:
            self.acc_dtype = dt.f64
        anchor_val = ex.cast(ex.var("acc", self.acc_dtype), mm.dtype)
        self.outs = [(i, self.lowering.value(o, tuple(mm.shape), lambda n: anchor_val if n is mm else None))
                     for i, o in enumerate(kernel.group.outputs)]

    def out_features(self) -> int:
        return self.D

    def program_description(self) -> dict[str, Any]:
        return {**self.describe_scores(), "D": self.D, "weight": format_expr(self.weight),
                "x": format_expr(self.x), "outputs": [[i, format_expr(e)] for i, e in self.outs]}

    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        space = self.score_knobs(target)
        return space if target.kind == "cpu" else {"BLOCK_N": (16, 32, 64, 128, 256), **space}

    def constraints(self, config: Config, target: Target) -> list[str]:
        out = self.score_constraints(config)
        if target.kind == "cpu":
            if self.D > MAX_CPU_ROW:
                out.append(f"D={self.D} features exceed the {MAX_CPU_ROW} a CPU task holds in one row")
            return out
        bn, bz = config.int("BLOCK_N"), config.int("BLOCK_NZ")
        if bn > max(16, next_pow2(self.D)):
            out.append(f"BLOCK_N={bn} is larger than D={self.D}")
        if bn * bz > MAX_TILE:
            out.append(f"a {bz}x{bn} gathered tile of x exceeds {MAX_TILE} elements (registers spill)")
        return out

    def default_config(self, target: Target) -> Config:
        base = self.score_defaults(target)
        if target.kind == "cpu":
            return Config(base)
        bn = max(16, min(128, next_pow2(self.D)))
        return Config({**base, "BLOCK_N": bn, "num_warps": 4 if bn * base["BLOCK_NZ"] >= 2048 else 2})

    def flops(self) -> float:
        return self.score_flops() + 2.0 * self.nnz * self.D

    def family_features(self, config: Config) -> dict[str, float]:
        return {"M": float(self.M), "N": float(self.N), "K": float(self.K), "D": float(self.D),
                "nnz": float(self.nnz), "density": self.nnz / float(max(1, self.M * self.N)),
                "epilogue_outputs": float(len(self.outs))}
