"""The factored decode schedule of the quantized GEMM on the CPU (`gemv=2`): y[n] = sum_g s[g, n] * (P[g, n] -
z[g, n] * X[g]) with P[g, n] = sum_{k in g} x[k] * q[k, n] and X[g] = sum_{k in g} x[k], over k-groups of tile_k
rows that share one scale and zero (spec.gemv_factors).

The inner k loop is only unpack, convert and multiply-add: for codes packed along N (8 int4 codes per i32
word), one vector load of `vector` words per k feeds `en` accumulators (one per code slot, each `vector`
words wide); zero and scale are applied once per group and column. Scales and zeros are read at the first
row of a group (TIR stage C), so they never enter the k loop; P lives in a local tile under C's group loop.
The decode schedule without factoring (gemv=1, tvm_template._Gemv) dequantizes every element in the k
loop; it serves the formats this one does not (fp8, f16/bf16 weights, several planes, scales that change
inside a k-tile)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvm import s_tir, te, tirx

from ...codegen.tvm_expr import PrimExpr, dtype_of, prim, tvm_dtype
from ...ir import dims
from ...ir.expr import Expr
from ...schedule.config import Config
from ..matmul import tvm_template as mm

if TYPE_CHECKING:
    import tvm

    from .spec import QuantMatmulSpec


def decode_rows(spec: QuantMatmulSpec, config: Config) -> tuple[int, Any]:
    """(rows the decode stages keep, rows of the output). With M dynamic the stages keep the config's tile_m
    rows (their accumulators are unrolled per row; the spec's constraints ask tile_m >= M at the top of the
    bucket) and read row min(m, M - 1) (row_of), and the output has the call's M rows: a binary serves every M
    up to tile_m at the cost of tile_m rows, which at decode sizes the weight traffic, not the rows, decides.
    The code is a function of the config, never of the bucket, so binaries are shared and cached by config."""
    if not dims.is_dynamic(spec.M):
        return int(spec.M), int(spec.M)
    return config.int("tile_m"), prim(spec.M)


def row_of(spec: QuantMatmulSpec, m: Any) -> Any:
    """The activation row the decode stages read for their row m (clamped to the call's M when dynamic)."""
    return tirx.min(m, prim(spec.M) - 1) if dims.is_dynamic(spec.M) else m


def epilogue_4d(builder: mm._Builder, e: Expr, c: Any, d: str, en: int) -> Any:
    """The body of an output [batch, M, N] computed from C [batch, M, en, N / en] by epilogue `e`."""

    def body(b: Any, m: Any, n: Any) -> Any:
        v = builder.value(e, b, m, n, acc=c(b, m, tirx.floormod(n, en), tirx.floordiv(n, en)))
        if d == "bool" and dtype_of(v) != "bool":
            return tirx.NE(v, tirx.const(0, dtype_of(v)))
        return tirx.Cast(d, v) if dtype_of(v) != d else v

    return body


class Factored(mm._Builder):
    """Stages X [batch, M, groups] (the activation sums), P [batch, M, groups, en, Nh] (the code sums) and C
    [batch, M, en, Nh] (the scaled sum over groups), then one `out{o}` per output."""

    def at(self, e: Expr, row: PrimExpr, col: PrimExpr) -> PrimExpr:
        """Loader expression `e` (over r, c and the kernel's inputs) at (row, col)."""
        return self.loader_at(e, row, col)

    def build(self) -> list[Any]:
        spec: QuantMatmulSpec = self.spec  # type: ignore[assignment]
        f = spec.gemv_factors()
        assert f is not None  # constraints refuse gemv=2 without factors
        _, en = spec.pack_units()
        tn, tk = self.tn, self.tk
        nh, ng = -(-spec.N // tn) * (tn // en), -(-spec.K // tk)
        pad_n, pad_k = nh * en != spec.N, ng * tk != spec.K
        zero32 = tirx.const(0.0, "float32")

        def guarded(v: PrimExpr, conds: list[Any]) -> PrimExpr:
            # if_then_else is lazy: the padding never reads the weights
            return tirx.if_then_else(tirx.all(*conds), v, zero32) if conds else v

        def xa(b: Any, m: Any, k: Any) -> PrimExpr:
            return self._packed(spec.a_expr, b, row_of(spec, m), k, 0, spec.K if pad_k else 0)

        kk = te.reduce_axis((0, tk), name="kk")
        kx = te.reduce_axis((0, tk), name="kx")

        def code_sum(b: Any, m: Any, g: Any, j: Any, u: Any) -> Any:
            k, col = g * tk + kk, u * en + j
            conds = [c for c, pad in ((k < spec.K, pad_k), (col < spec.N, pad_n)) if pad]
            return te.sum(xa(b, m, k) * guarded(self.at(f.value, k, col), conds), axis=kk)

        rows, out_rows = decode_rows(spec, self.config)
        x_sum = te.compute((self.nb, rows, ng), lambda b, m, g: te.sum(xa(b, m, g * tk + kx), axis=kx), name="X")
        p = te.compute((self.nb, rows, ng, en, nh), code_sum, name="P")
        g = te.reduce_axis((0, ng), name="g")

        def acc(b: Any, m: Any, j: Any, u: Any) -> Any:
            row, col = g * tk, u * en + j
            conds = [col < spec.N] if pad_n else []
            v = p(b, m, g, j, u)
            if f.unscale is not None:
                v = v * self.at(f.unscale, row, col)
            if isinstance(f.zero, float):
                v = v - tirx.const(f.zero, "float32") * x_sum(b, m, g)
            elif f.zero is not None:
                v = v - guarded(self.at(f.zero, row, col), conds) * x_sum(b, m, g)
            return te.sum(v * guarded(self.at(f.scale, row, col), conds), axis=g)

        c = te.compute((self.nb, rows, en, nh), acc, name="C")
        outs = []
        for o in spec.outs:
            d = tvm_dtype(spec.outputs[o.index].dtype, f"output {o.index}")
            body = epilogue_4d(self, o.expr, c, d, en)
            outs.append(te.compute((self.nb, out_rows, spec.N), body, name=f"out{o.index}"))
        return outs


def schedule(mod: tvm.IRModule, spec: QuantMatmulSpec, config: Config) -> tvm.IRModule:
    """(batch, n-tile) in parallel; per task the group loop, and in it the group's code sums P: the k loop
    (its steps unrolled by `unroll`, a K-packing unit of `ek` steps fully) outside the M rows, the `en`
    code slots (unrolled) and the tile's words (vectorized by `vector` lanes); then C's update from P, X,
    the scales and zeros. X (M x groups sums) is computed first, on its own."""
    ek, en = spec.pack_units()
    tn = config.int("tile_n")
    vector, unroll = config.int("vector"), config.int("unroll")
    sch = s_tir.Schedule(mod)
    sch.work_on(spec.name)
    c = sch.get_sblock("C")
    b, m, j, u, g = sch.get_loops(c)
    uo, uu, uv = sch.split(u, [None, tn // en // vector, vector])
    sch.reorder(b, uo, g, m, j, uu, uv)
    task = sch.fuse(b, uo)
    sch.parallel(task)
    cw = sch.cache_write(c, 0, "local")
    sch.reverse_compute_at(cw, task)
    p = sch.get_sblock("P")
    sch.compute_at(p, g)
    sch.set_scope(p, 0, "local")
    # under (task, g): P's rows and code slots (each dropped when of extent 1), words, k
    *rows, pu, pk = sch.get_loops(p)[2:]
    ko, kiu, kie = sch.split(pk, [None, unroll, ek])
    pus, puu, puv = sch.split(pu, [None, config.int("micro_n") // en // vector, vector])
    # one strip of micro_n columns at a time through the group's rows: its M x en x (strip words / vector)
    # accumulators stay in registers; the strips of a task share the cache lines of each row (a 64-column
    # strip of int4 is half a line), which the first strip brought into L1
    sch.reorder(pus, ko, kiu, kie, *rows, puu, puv)
    for lp in (kiu, kie, *rows, puu):
        sch.unroll(lp)
    sch.vectorize(puv)
    pinit = sch.decompose_reduction(p, ko)
    for lp in sch.get_loops(pinit)[-4:-1]:
        sch.unroll(lp)
    sch.vectorize(sch.get_loops(pinit)[-1])
    # uu stays a loop: a wide task has hundreds of word vectors (int8 at M=4, N=11008 unrolled 1376 copies:
    # LLVM ran for over 10 minutes)
    for lp in (m, j):
        sch.unroll(lp)
    sch.vectorize(uv)
    cinit = sch.decompose_reduction(c, g)
    sch.vectorize(sch.get_loops(cinit)[-1])
    for o in spec.outs:
        sch.parallel(sch.fuse(*sch.get_loops(sch.get_sblock(f"out{o.index}"))))
    return sch.mod
