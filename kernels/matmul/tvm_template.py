"""TVM (TE -> TIR) template of the matmul family, scheduled for CPUs as a register-blocked GEMM.

Stages: `Apack` (the A operand, prologue applied and converted to the accumulator dtype, packed as
[batch, M/micro_m, K, micro_m] panels), `Bpack` (B likewise, [batch, N/micro_n, K, micro_n]), `P`
(the product over one k-tile: a micro_m x micro_n block of registers once scheduled), `C` (the sum
of the k-tiles over the padded [batch, M, N] tile grid) and one `out{o}` per output (the epilogue,
[batch, M, N]). Both packs are zero padded to whole cache tiles, so no inner loop has a bounds
check: odd sizes cost padding, never a scalar tail."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvm import s_tir, te, tirx

from ...schedule.config import Config
from ...codegen.lowering import LoweringError
from ...codegen.tvm_script import check_index32
from ...codegen.tvm_expr import (PrimExpr, dtype_of, lower_expr, prim, prim_module, tvm_dtype, tvm_storage_dtype,
                                      view_offset)
from ...ir import dtypes as dt
from ...ir.expr import E, Expr
from ..lowering import prod
from .reductions import RED

if TYPE_CHECKING:
    import tvm

    from .spec import MatmulSpec

_REDUCERS = {"sum": te.sum, "max": te.max, "min": te.min}
_IDENTITY = {"sum": 0.0, "max": float("-inf"), "min": float("inf")}


def _ceil_to(x: int, m: int) -> int:
    # (x + m - 1) // m, not -(-x // m): for a dynamic x the TIR is a floordiv TVM's simplifier reads
    return (x + m - 1) // m * m


def arg_shapes(spec: MatmulSpec) -> list[tuple[int, ...]]:
    """Shapes of the PrimFunc's buffers: flat inputs, then [batch, M, N] outputs ([batch, N] or [batch, M]
    for the results of reductions over M or N)."""
    nb = max(1, prod(spec.batch))
    shapes: dict[int, tuple[int, ...]] = {o.index: (nb, spec.M, spec.N) for o in spec.outs}
    shapes.update({o.index: (nb, spec.N if o.axis == "m" else spec.M) for o in spec.reduced_outs})
    return [(b.numel,) for b in spec.inputs] + [shapes[i] for i in range(len(spec.outputs))]


class _Builder:
    """Builds the TE stages of one matmul spec under a config's tile sizes."""

    def __init__(self, spec: MatmulSpec, config: Config):
        self.spec, self.config = spec, config
        check_index32(spec)
        self.nb = spec.require_static(max(1, prod(spec.batch)), "the batch size", "tvm")
        self.N = spec.require_static(spec.N, "N (the output's last axis)", "tvm")
        self.K = spec.require_static(spec.K, "K (the reduction axis)", "tvm")
        self.tm, self.tn, self.tk = config.int("tile_m"), config.int("tile_n"), config.int("tile_k")
        self.mr, self.nr = config.int("micro_m"), config.int("micro_n")
        self.Mp, self.Np, self.Kp = _ceil_to(spec.M, self.tm), _ceil_to(spec.N, self.tn), _ceil_to(spec.K, self.tk)
        self.acc = "int32" if spec.operand_dtype.is_int else "float32"
        self.inputs = [te.placeholder((prim(b.numel),), tvm_storage_dtype(b.dtype, f"input {b.name}"), name=f"in{i}")
                       for i, b in enumerate(spec.inputs)]

    def value(self, e: Expr, b: PrimExpr, row: PrimExpr, col: PrimExpr, acc: PrimExpr | None = None,
              red: PrimExpr | None = None) -> PrimExpr:
        """`e` at (batch b, row, col) of its domain; loads index the flat inputs through their views; VAR
        `acc` is `acc`, a reduction's VAR `red` is `red`."""
        nbatch = len(self.spec.batch)

        def leaf(n: Expr) -> PrimExpr | None:
            if n.op is E.LOAD:
                if n.dtype in (dt.f8e4m3, dt.f8e5m2):
                    raise LoweringError(f"tvm: {self.spec.name} reads {n.dtype} input {self.spec.loads[n.arg].buffer} "
                                        "outside a dequantize; the tvm backend reads fp8 only as dequantize codes")
                v = self.spec.loads[n.arg].view
                off = view_offset(v.shape, v.strides, v.offset, nbatch, b, [row, col])
                return self.inputs[self.spec.loads[n.arg].buffer](off)
            if n.op is E.VAR and n.arg in self.spec.loaders():
                return self.loaded(n.arg, row, col)
            if n.op is E.VAR and n.arg == RED and red is not None:
                return red
            if n.op is E.VAR:
                if acc is None:
                    raise LoweringError(f"tvm: operand expression of {self.spec.name} reads variable {n.arg}")
                return acc
            return None

        return lower_expr(e, leaf)

    def loaded(self, name: str, row: PrimExpr, col: PrimExpr) -> PrimExpr:
        """Loader VAR `name` (MatmulSpec.loaders) at (row, col): its loads index the flat inputs directly.
        A loader's integer division and remainder work on element and bit positions, never negative, so
        they lower to floordiv/floormod, which TVM's simplifier folds ((u * 8 + j) // 8 -> u for j < 8):
        the vectorized loads stay contiguous and the unrolled shifts constant."""
        return self.loader_at(self.spec.loaders()[name], row, col)

    def loader_at(self, e: Expr, row: PrimExpr, col: PrimExpr) -> PrimExpr:
        """A loader-form expression `e` (over r, c and the kernel's inputs) at (row, col)."""
        memo: dict[int, PrimExpr] = {}

        def leaf(n: Expr) -> PrimExpr | None:
            if n.op is E.VAR:
                return {"r": row, "c": col}[n.arg]
            if n.op is E.LOAD:
                return self.inputs[n.arg](lower_expr(n.src[0], leaf, memo))
            if n.op in (E.DIV, E.IDIV, E.MOD) and n.dtype.is_int:
                a, b = (memo[id(s)] for s in n.src)
                return tirx.floormod(a, b) if n.op is E.MOD else tirx.floordiv(a, b)
            return None

        return lower_expr(e, leaf, memo)

    def _packed(self, e: Expr, b: PrimExpr, row: PrimExpr, col: PrimExpr, rows: int, cols: int) -> PrimExpr:
        """Operand `e` at (b, row, col) in the accumulator dtype, zero outside its rows x cols."""
        v = self.value(e, b, row, col)
        v = tirx.Cast(self.acc, v) if dtype_of(v) != self.acc else v
        conds = [c for c, pad in ((row < prim(rows), rows), (col < prim(cols), cols)) if pad]
        if not conds:
            return v
        # if_then_else is lazy: padding lanes never read the operand
        return tirx.if_then_else(tirx.all(*conds), v, tirx.const(0, self.acc))

    def build(self) -> list[Any]:
        spec, mr, nr = self.spec, self.mr, self.nr
        pad_m, pad_n, pad_k = self.Mp != spec.M, self.Np != spec.N, self.Kp != spec.K

        def pack_a(b: Any, mo: Any, k: Any, mi: Any) -> Any:
            return self._packed(spec.a_expr, b, mo * mr + mi, k, spec.M if pad_m else 0, spec.K if pad_k else 0)

        def pack_b(b: Any, no: Any, k: Any, ni: Any) -> Any:
            return self._packed(spec.b_expr, b, k, no * nr + ni, spec.K if pad_k else 0, spec.N if pad_n else 0)

        apack = te.compute((self.nb, prim(self.Mp // mr), self.Kp, mr), pack_a, name="Apack")
        bpack = te.compute((self.nb, self.Np // nr, self.Kp, nr), pack_b, name="Bpack")
        tk = self.tk
        ki = te.reduce_axis((0, tk), name="ki")

        def part(b: Any, ko: Any, m: Any, n: Any) -> Any:
            k = ko * tk + ki
            return te.sum(apack(b, m // mr, k, m % mr) * bpack(b, n // nr, k, n % nr), axis=ki)

        # P: the product over one k-tile (a micro tile of registers once scheduled); C sums the k-tiles.
        p = te.compute((self.nb, self.Kp // tk, prim(self.Mp), self.Np), part, name="P")
        ko = te.reduce_axis((0, self.Kp // tk), name="ko")
        c = te.compute((self.nb, prim(self.Mp), self.Np), lambda b, m, n: te.sum(p(b, ko, m, n), axis=ko), name="C")
        outs = []
        for o in spec.outs:
            d = tvm_dtype(spec.outputs[o.index].dtype, f"output {o.index}")
            outs.append((o.index, te.compute((self.nb, prim(spec.M), spec.N), self._epilogue(o.expr, c, d),
                                             name=f"out{o.index}")))
        return outs + self._reduced(c)

    def _reduced(self, c: Any) -> list[Any]:
        """Reduction epilogues: `part{i}` [batch, tiles, kept] reduces each cache tile along the axis (at the
        tile once scheduled), `comb{i}` [batch, kept] combines the tiles; the reduced outputs apply each
        reduction's `post` to those and compute what the group computes from them."""
        finals, M, N = {}, self.spec.M, self.spec.N
        for i, r in enumerate(self.spec.reductions):
            size, tile, kept = (M, self.tm, N) if r.axis == "m" else (N, self.tn, M)
            parts = te.compute((self.nb, -(-size // tile), kept), self._partial(i, c, size, tile), name=f"part{i}")
            finals[f"r{i}"] = _combine(parts, r.op, f"comb{i}")
        return [(o.index, self._reduced_output(o, finals)) for o in self.spec.reduced_outs]

    def _partial(self, i: int, c: Any, size: int, tile: int) -> Any:
        """The body of `part{i}`: reduction i of one tile's rows (columns) at (batch, tile, kept index)."""
        r = self.spec.reductions[i]
        ri = te.reduce_axis((0, tile), name=f"ri{i}")
        ident = tirx.const(_IDENTITY[r.op], r.acc_dtype.name)

        def body(b: Any, t: Any, k: Any) -> Any:
            j = t * tile + ri
            row, col = (j, k) if r.axis == "m" else (k, j)
            v = self.value(r.value, b, row, col, acc=c(b, row, col))
            v = tirx.Cast(r.acc_dtype.name, v) if dtype_of(v) != r.acc_dtype.name else v
            # if_then_else is lazy: rows (columns) of the padding never read the epilogue's inputs
            return _REDUCERS[r.op](tirx.if_then_else(j < size, v, ident) if size % tile else v, axis=ri)

        return body

    def _reduced_output(self, o: Any, finals: dict[str, Any]) -> Any:
        d = tvm_dtype(self.spec.outputs[o.index].dtype, f"output {o.index}")
        kept = self.spec.N if o.axis == "m" else self.spec.M

        def body(b: Any, k: Any) -> Any:
            def leaf(e: Expr) -> PrimExpr | None:
                if e.op is E.VAR and e.arg in finals:
                    r = self.spec.reductions[int(e.arg[1:])]
                    row, col = (0, k) if r.axis == "m" else (k, 0)
                    return self.value(r.post, b, row, col, red=finals[e.arg](b, k))
                return None

            v = lower_expr(o.expr, leaf)
            return tirx.Cast(d, v) if dtype_of(v) != d else v

        return te.compute((self.nb, kept), body, name=f"out{o.index}")

    def _epilogue(self, e: Expr, c: Any, d: str) -> Any:
        def body(b: Any, m: Any, n: Any) -> Any:
            v = self.value(e, b, m, n, acc=c(b, m, n))
            if d == "bool" and dtype_of(v) != "bool":
                return tirx.NE(v, tirx.const(0, dtype_of(v)))
            return tirx.Cast(d, v) if dtype_of(v) != d else v

        return body


def _combine(parts: Any, op: str, name: str) -> Any:
    """[batch, kept]: the partials [batch, tiles, kept] combined over the tiles by `op`."""
    rt = te.reduce_axis((0, int(parts.shape[1])), name=f"rt_{name}")
    return te.compute((parts.shape[0], parts.shape[2]), lambda b, k: _REDUCERS[op](parts(b, rt, k), axis=rt),
                      name=name)


def build_module(spec: MatmulSpec, config: Config) -> tvm.IRModule:
    """The unscheduled TIR module: one PrimFunc named after the kernel, (inputs..., outputs...)."""

    b = _Builder(spec, config)
    return prim_module(spec.name, len(spec.outputs), b.inputs, b.build(), spec.size_params())


def _schedule_pack(sch: s_tir.Schedule, name: str, vector: int) -> None:
    """One parallel task per (batch, panel); the panel's lanes vectorized when they are whole vectors."""
    pb, po, _, pi = sch.get_loops(sch.get_sblock(name))
    sch.parallel(sch.fuse(pb, po))
    lanes = int(sch.get(pi).extent)
    if lanes % vector == 0:
        sch.vectorize(sch.split(pi, [None, vector])[1])


def _vectorize_inner(sch: s_tir.Schedule, block: Any, vector: int) -> None:
    """Vectorize the block's innermost loop by `vector` lanes (its extent is a multiple of it)."""
    sch.vectorize(sch.split(sch.get_loops(block)[-1], [None, vector])[1])


def schedule(mod: tvm.IRModule, spec: MatmulSpec, config: Config) -> tvm.IRModule:
    """Apply the CPU config (BLIS loop nest): (batch, m-tile, n-tile) in parallel; inside a tile the
    loops (k-tile, n-panel, m-panel) around a micro_m x micro_n accumulator block held in registers,
    whose k loop (unrolled by `unroll`) runs outside the fully unrolled micro tile, vectorized along
    micro_n by `vector`; the block is added into the tile's C once per k-tile; the epilogue is fused
    at the tile."""
    tm, tn = config.int("tile_m"), config.int("tile_n")
    mr, nr = config.int("micro_m"), config.int("micro_n")
    vector, unroll = config.int("vector"), config.int("unroll")
    sch = s_tir.Schedule(mod)
    sch.work_on(spec.name)
    _schedule_pack(sch, "Apack", vector)
    _schedule_pack(sch, "Bpack", vector)
    c = sch.get_sblock("C")
    b, m, n, ko = sch.get_loops(c)
    mo, mp, mi = sch.split(m, [None, tm // mr, mr])
    no, np_, ni = sch.split(n, [None, tn // nr, nr])
    sch.reorder(b, mo, no, ko, np_, mp, mi, ni)
    tile = sch.fuse(b, mo, no)
    sch.parallel(tile)
    # Epilogue at the tile: C never leaves the tile-sized buffer the compaction pass gives it.
    even_n = spec.N % tn == 0
    for o in spec.outs:
        out = sch.get_sblock(f"out{o.index}")
        sch.reverse_compute_at(out, tile)
        if even_n:
            _vectorize_inner(sch, out, vector)
    # Reduction epilogues: each tile's partials at the tile too, so C never holds more than a tile.
    for i in range(len(spec.reductions)):
        sch.reverse_compute_at(sch.get_sblock(f"part{i}"), tile)
    # The micro tile: P (micro_m x micro_n, local) accumulates one k-tile with k outermost.
    p = sch.get_sblock("P")
    sch.compute_at(p, mp)
    sch.set_scope(p, 0, "local")
    pm, pn, pk = sch.get_loops(p)[-3:]
    pv, pl = sch.split(pn, [None, vector])
    pk, pu = sch.split(pk, [None, unroll])
    sch.reorder(pk, pu, pm, pv, pl)
    sch.unroll(pu)
    sch.unroll(pm)
    sch.unroll(pv)
    sch.vectorize(pl)
    pinit = sch.decompose_reduction(p, pk)
    for loop in sch.get_loops(pinit)[-3:-1]:
        sch.unroll(loop)
    sch.vectorize(sch.get_loops(pinit)[-1])
    # C += P once per k-tile.
    cv, cl = sch.split(ni, [None, vector])
    sch.unroll(mi)
    sch.unroll(cv)
    sch.vectorize(cl)
    cinit = sch.decompose_reduction(c, ko)
    _vectorize_inner(sch, cinit, vector)
    return sch.mod
