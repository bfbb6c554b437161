"""TVM (TE -> TIR) template of the matmul family, scheduled for CPUs.

Stages: `Bpack` (the B operand, prologue applied and converted to the accumulator dtype, packed
as [batch, N/tile_n, K, tile_n] and zero padded), `C` (the accumulator over the padded
[batch, M, N] tile grid) and one `out{o}` per output (the epilogue, [batch, M, N]). The A operand
(with its prologue) is read in the inner loop as a broadcast scalar. Padding to whole tiles keeps
every inner loop free of bounds checks, so the n loop vectorizes on every tile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvm import s_tir, te, tirx

from ..autotune.config import Config
from ..codegen.lowering import LoweringError
from ..codegen.tvm_expr import PrimExpr, dtype_of, lower_expr, prim_module, tvm_dtype, view_offset
from ..ir.expr import E, Expr
from .lowering import prod

if TYPE_CHECKING:
    import tvm

    from .matmul import MatmulSpec

INDEX32 = 2**31 - 1


def _ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


def arg_shapes(spec: MatmulSpec) -> list[tuple[int, ...]]:
    """Shapes of the PrimFunc's buffers: flat inputs, then [batch, M, N] outputs."""
    nb = max(1, prod(spec.batch))
    return [(b.numel,) for b in spec.inputs] + [(nb, spec.M, spec.N) for _ in spec.outputs]


class _Builder:
    """Builds the TE stages of one matmul spec under a config's tile sizes."""

    def __init__(self, spec: MatmulSpec, config: Config):
        self.spec = spec
        for b in list(spec.inputs) + list(spec.outputs):
            if b.numel > INDEX32:
                raise LoweringError(f"tvm: buffer {b.name} of {b.numel} elements needs 64-bit indexing, "
                                    "which the tvm backend does not support yet")
        self.nb = max(1, prod(spec.batch))
        self.tm, self.tn, self.tk = config.int("tile_m"), config.int("tile_n"), config.int("tile_k")
        self.Mp, self.Np, self.Kp = _ceil_to(spec.M, self.tm), _ceil_to(spec.N, self.tn), _ceil_to(spec.K, self.tk)
        self.acc = "int32" if spec.operand_dtype.is_int else "float32"
        self.inputs = [te.placeholder((b.numel,), tvm_dtype(b.dtype, f"input {b.name}"), name=f"in{i}")
                       for i, b in enumerate(spec.inputs)]

    def value(self, e: Expr, b: PrimExpr, row: PrimExpr, col: PrimExpr, acc: PrimExpr | None = None) -> PrimExpr:
        """`e` at (batch b, row, col) of its domain; loads index the flat inputs through their views."""
        nbatch = len(self.spec.batch)

        def leaf(n: Expr) -> PrimExpr | None:
            if n.op is E.LOAD:
                v = self.spec.loads[n.arg].view
                off = view_offset(v.shape, v.strides, v.offset, nbatch, b, [row, col])
                return self.inputs[self.spec.loads[n.arg].buffer](off)
            if n.op is E.VAR:
                if acc is None:
                    raise LoweringError(f"tvm: operand expression of {self.spec.name} reads variable {n.arg}")
                return acc
            return None

        return lower_expr(e, leaf)

    def _operand(self, e: Expr, b: PrimExpr, row: PrimExpr, col: PrimExpr) -> PrimExpr:
        v = self.value(e, b, row, col)
        return tirx.Cast(self.acc, v) if dtype_of(v) != self.acc else v

    def build(self) -> list[Any]:
        spec, tn = self.spec, self.tn
        zero = tirx.const(0, self.acc)

        def pack(b: Any, no: Any, k: Any, ni: Any) -> Any:
            n = no * tn + ni
            v = self._operand(spec.b_expr, b, k, n)
            if spec.N % tn or spec.K % self.tk:
                # if_then_else is lazy: padding lanes never read the operand
                return tirx.if_then_else(tirx.all(n < spec.N, k < spec.K), v, zero)
            return v

        bpack = te.compute((self.nb, self.Np // tn, self.Kp, tn), pack, name="Bpack")
        kk = te.reduce_axis((0, self.Kp), name="k")

        def a_at(b: Any, m: Any, k: Any) -> Any:
            v = self._operand(spec.a_expr, b, m, k)
            if spec.M % self.tm or spec.K % self.tk:
                return tirx.if_then_else(tirx.all(m < spec.M, k < spec.K), v, zero)
            return v

        def gemm(b: Any, m: Any, n: Any) -> Any:
            return te.sum(a_at(b, m, kk) * bpack(b, n // tn, kk, n % tn), axis=kk)

        c = te.compute((self.nb, self.Mp, self.Np), gemm, name="C")
        outs = []
        for o in spec.outs:
            d = tvm_dtype(spec.outputs[o.index].dtype, f"output {o.index}")
            outs.append(te.compute((self.nb, spec.M, spec.N), self._epilogue(o.expr, c, d), name=f"out{o.index}"))
        return outs

    def _epilogue(self, e: Expr, c: Any, d: str) -> Any:
        def body(b: Any, m: Any, n: Any) -> Any:
            v = self.value(e, b, m, n, acc=c(b, m, n))
            if d == "bool" and dtype_of(v) != "bool":
                return tirx.NE(v, tirx.const(0, dtype_of(v)))
            return tirx.Cast(d, v) if dtype_of(v) != d else v

        return body


def build_module(spec: MatmulSpec, config: Config) -> tvm.IRModule:
    """The unscheduled TIR module: one PrimFunc named after the kernel, (inputs..., outputs...)."""

    b = _Builder(spec, config)
    return prim_module(spec.name, len(spec.outputs), b.inputs, [(o.index, t) for o, t in zip(spec.outs, b.build())])


def schedule(mod: tvm.IRModule, spec: MatmulSpec, config: Config) -> tvm.IRModule:
    """Apply the CPU config: (batch, m-tile, n-tile) in parallel, loops (ko, mi, ki, ni) inside a
    tile with ni vectorized by `vector` (and ki unrolled), the epilogue fused at the tile."""
    tm, tn, tk = config.int("tile_m"), config.int("tile_n"), config.int("tile_k")
    vector, unroll = config.int("vector"), config.int("unroll")
    sch = s_tir.Schedule(mod)
    sch.work_on(spec.name)
    # B packing: one parallel task per (batch, n-tile), the tile_n lanes vectorized.
    pack = sch.get_sblock("Bpack")
    pb, pno, _, pni = sch.get_loops(pack)
    sch.parallel(sch.fuse(pb, pno))
    if tn % vector == 0:
        _, pv = sch.split(pni, [None, vector])
        sch.vectorize(pv)
    # GEMM tile.
    c = sch.get_sblock("C")
    b, m, n, k = sch.get_loops(c)
    mo, mi = sch.split(m, [None, tm])
    no, ni = sch.split(n, [None, tn])
    ko, ki = sch.split(k, [None, tk])
    sch.reorder(b, mo, no, ko, mi, ki, ni)
    tile = sch.fuse(b, mo, no)
    sch.parallel(tile)
    # Epilogue at the tile: C never leaves the tile-sized buffer the compaction pass gives it.
    even_n = spec.N % tn == 0
    for o in spec.outs:
        out = sch.get_sblock(f"out{o.index}")
        sch.reverse_compute_at(out, tile)
        if even_n and tn % vector == 0:
            _, ov = sch.split(sch.get_loops(out)[-1], [None, vector])
            sch.vectorize(ov)
    _, niv = sch.split(ni, [None, vector])
    if unroll:
        sch.unroll(ki)
    sch.vectorize(niv)
    init = sch.decompose_reduction(c, ko)
    _, iv = sch.split(sch.get_loops(init)[-1], [None, vector])
    sch.vectorize(iv)
    return sch.mod
