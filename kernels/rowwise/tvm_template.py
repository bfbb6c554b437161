"""TVM (TE -> TIR) template of the pointwise / row-reduction family, scheduled for CPUs.

The domain is flattened to (rows, cols). One TE stage per reduction (`red{k}`, shape (rows,),
accumulated in f32/f64/i32/i64), one per row value (`rv{j}`) and one per output (`out{o}`:
(rows, cols) at domain level, (rows,) at row level). Inputs are flat buffers indexed through
their strided views.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvm import s_tir, te, tirx

from ...schedule.config import Config
from ...codegen.lowering import LoweringError
from ...codegen.tvm_script import check_index32
from ...codegen.tvm_expr import (PrimExpr, dtype_of, lower_expr, prim, prim_module, tvm_dtype, tvm_storage_dtype,
                                 view_offset)
from ...ir import dtypes as dt
from ...ir.dims import is_dynamic
from ...ir.expr import E, Expr

if TYPE_CHECKING:
    import tvm

    from .spec import Reduction, RowwiseSpec



def acc_dtype(d: dt.DType) -> str:
    """Accumulator TVM dtype of a reduction producing `d`."""
    if d.is_float:
        return "float64" if d == dt.f64 else "float32"
    return "int64" if d == dt.i64 else "int32"


def arg_shapes(spec: RowwiseSpec) -> list[tuple[int, ...]]:
    """Shapes of the PrimFunc's buffers: flat inputs, then (rows, cols) or (rows,) outputs."""
    shapes: list[tuple[int, ...]] = [(b.numel,) for b in spec.inputs]
    level = {o.index: o.level for o in spec.outs}
    for i, _ in enumerate(spec.outputs):
        shapes.append((spec.rows, spec.cols) if level.get(i) == "domain" else (spec.rows,))
    return shapes


def _reducer(op: str) -> Any:
    # TVM's registered reducers (rfactor needs them); max/min start from the dtype's finite extreme.
    return {"sum": te.sum, "mean": te.sum, "max": te.max, "min": te.min}[op]


def _combine(op: str, a: PrimExpr, b: PrimExpr) -> PrimExpr:
    if op in ("sum", "mean"):
        return a + b
    return tirx.Max(a, b) if op == "max" else tirx.Min(a, b)


def reduction_vector(spec: RowwiseSpec, config: Config) -> int:
    """Lanes of the vectorized column loop of reductions (1: scalar), from the config."""
    v = config.int("vector")
    return v if 1 < v <= spec.cols else 1


class _Builder:
    """Builds the TE stages of one rowwise spec."""

    def __init__(self, spec: RowwiseSpec, vector: int, chunk: int):
        self.spec = spec
        self.vector = vector
        # Dynamic rows: the row stages (reductions, row values) run over the rows rounded up to whole
        # parallel chunks, so no chunk needs a bounds predicate (with one, TVM sizes their per-chunk
        # buffers symbolically and its builtin lowering fails); their loads clamp the row index instead.
        # Only the outputs stop at the last row.
        self.rows = prim(spec.rows)
        self.dynamic = is_dynamic(spec.rows)
        self.row_extent = prim((spec.rows + chunk - 1) // chunk * chunk) if self.dynamic else spec.rows
        # rows may be dynamic (a run-time argument); the vectorized column loop and its tail need the columns
        self.cols = spec.require_static(spec.cols, "the column count (last axis of the domain)", "tvm")
        check_index32(spec)
        self.inputs = [te.placeholder((prim(b.numel),), tvm_storage_dtype(b.dtype, f"input {b.name}"), name=f"in{i}")
                       for i, b in enumerate(spec.inputs)]
        self.reds: list[tuple[Any, Any | None]] = []  # (main part, column tail) per reduction
        self.rowvals: list[Any] = []

    def load(self, slot: int, r: PrimExpr, c: PrimExpr | None) -> PrimExpr:
        site = self.spec.loads[slot]
        v = site.view
        nd = len(v.shape)
        if c is None and v.strides[-1] != 0 and v.shape[-1] != 1:
            raise LoweringError(f"tvm: row-level load {slot} varies along the reduced axis")
        col = c if c is not None else tirx.const(0, "int32")
        if self.dynamic:
            r = tirx.min(r, self.rows - 1)
        off = view_offset(v.shape, v.strides, v.offset, nd - 1, r, [col])
        return self.inputs[site.buffer](off)

    def var(self, name: str, r: PrimExpr, d: dt.DType) -> PrimExpr:
        idx = int(name[1:])
        if name[0] == "v":
            return self.rowvals[idx](r)
        red = self.spec.reductions[idx]
        main, tail = self.reds[idx]
        val = main(r)
        if tail is not None:
            val = _combine(red.op, val, tail(r))
        if red.op == "mean":
            cols = tirx.const(self.cols, dtype_of(val))
            val = val / cols if red.dtype.is_float else tirx.truncdiv(val, cols)
        return tirx.Cast(tvm_dtype(d), val) if dtype_of(val) != tvm_dtype(d) else val

    def value(self, e: Expr, r: PrimExpr, c: PrimExpr | None) -> PrimExpr:
        def leaf(n: Expr) -> PrimExpr | None:
            if n.op is E.LOAD:
                return self.load(n.arg, r, c)
            if n.op is E.VAR:
                return self.var(n.arg, r, n.dtype)
            return None

        return lower_expr(e, leaf)

    def build(self) -> list[Any]:
        spec = self.spec
        done: set[int] = set()
        self._rowvals(done)
        for k, red in enumerate(spec.reductions):
            main = self.cols - self.cols % self.vector
            parts = [te.compute((self.row_extent,), self._reduce_body(red, 0, main), name=f"red{k}")]
            if main < self.cols:
                parts.append(te.compute((self.row_extent,), self._reduce_body(red, main, self.cols),
                                        name=f"red{k}_tail"))
            self.reds.append((parts[0], parts[1] if len(parts) > 1 else None))
            done.add(k)
            self._rowvals(done)
        outs = []
        for o in spec.outs:
            d = tvm_storage_dtype(spec.outputs[o.index].dtype, f"output {o.index}")
            if o.level == "domain":
                outs.append(te.compute((self.rows, self.cols), self._domain_body(o.expr, d), name=f"out{o.index}"))
            else:
                outs.append(te.compute((self.rows,), self._row_body(o.expr, d), name=f"out{o.index}"))
        return outs

    def _reduce_body(self, red: Reduction, start: int, stop: int) -> Any:
        acc = acc_dtype(red.dtype)
        kk = te.reduce_axis((0, stop - start), name="c")
        reducer = _reducer(red.op)

        def body(r: Any) -> Any:
            v = self.value(red.expr, r, kk.var + start if start else kk.var)
            return reducer(tirx.Cast(acc, v) if dtype_of(v) != acc else v, axis=kk)

        return body

    def _domain_body(self, e: Expr, d: str) -> Any:
        return lambda r, c: self._cast(e, r, c, d)

    def _row_body(self, e: Expr, d: str | None) -> Any:
        if d is None:
            return lambda r: self.value(e, r, None)
        return lambda r: self._cast(e, r, None, d)

    def _cast(self, e: Expr, r: PrimExpr, c: PrimExpr | None, d: str) -> PrimExpr:
        v = self.value(e, r, c)
        if d == "bool" and dtype_of(v) != "bool":
            return tirx.NE(v, tirx.const(0, dtype_of(v)))
        return tirx.Cast(d, v) if dtype_of(v) != d else v

    def _rowvals(self, done: set[int]) -> None:
        for j in range(len(self.rowvals), len(self.spec.rowvals)):
            rv = self.spec.rowvals[j]
            if not rv.deps <= done:
                return
            self.rowvals.append(te.compute((self.row_extent,), self._row_body(rv.expr, None), name=f"rv{j}"))


def build_module(spec: RowwiseSpec, config: Config) -> tvm.IRModule:
    """The unscheduled TIR module: one PrimFunc named after the kernel, (inputs..., outputs...)."""

    b = _Builder(spec, reduction_vector(spec, config), config.int("parallel_rows"))
    return prim_module(spec.name, len(spec.outputs), b.inputs, [(o.index, t) for o, t in zip(spec.outs, b.build())],
                       spec.size_params())


def _vector_inner(sch: s_tir.Schedule, loop: Any, vector: int) -> Any:
    """Split `loop` by `vector` and vectorize the inner part; returns the outer loop."""
    if vector <= 1:
        return loop
    outer, inner = sch.split(loop, [None, vector])
    sch.vectorize(inner)
    return outer


def schedule(mod: tvm.IRModule, spec: RowwiseSpec, config: Config) -> tvm.IRModule:
    """Apply the CPU config: rows in parallel chunks of `parallel_rows`, columns vectorized by
    `vector` (reductions through an rfactor over the vector lanes), optional unrolling."""
    vector, chunk, unroll = config.int("vector"), config.int("parallel_rows"), config.int("unroll")
    red_vector = reduction_vector(spec, config)
    sch = s_tir.Schedule(mod)
    sch.work_on(spec.name)
    # With one output every producer is computed per row chunk, under the output's parallel loop.
    anchored = len(spec.outs) == 1
    tops: list[Any] = []
    for o in spec.outs:
        blk = sch.get_sblock(f"out{o.index}")
        loops = sch.get_loops(blk)
        if o.level == "domain" and vector > 1:
            _, ci = sch.split(loops[1], [None, vector])
            sch.vectorize(ci)
        ro, _ = sch.split(loops[0], [None, chunk])
        tops.append(ro)
    producers = [f"rv{j}" for j, rv in enumerate(spec.rowvals) if not rv.deps]
    for k, _ in enumerate(spec.reductions):
        producers.append(f"red{k}")
        if spec.cols % red_vector:
            producers.append(f"red{k}_tail")
        producers += [f"rv{j}" for j, rv in enumerate(spec.rowvals) if rv.deps and max(rv.deps) == k]
    rfs: dict[str, Any] = {}
    if red_vector > 1:
        for k, _ in enumerate(spec.reductions):
            _, ci = sch.split(sch.get_loops(sch.get_sblock(f"red{k}"))[-1], [None, red_vector])
            rfs[f"red{k}"] = sch.rfactor(ci, factor_axis=1)
    for name in reversed(producers):
        blocks = [sch.get_sblock(name)] + ([rfs[name]] if name in rfs else [])
        if anchored:
            for blk in blocks:
                sch.compute_at(blk, tops[0], preserve_unit_loops=True)
            continue
        ro, _ = sch.split(sch.get_loops(blocks[0])[0], [None, chunk])
        tops.append(ro)
        for blk in blocks[1:]:
            sch.compute_at(blk, ro, preserve_unit_loops=True)
    for rf in rfs.values():
        # the rfactor block's loops are (lanes, rows, column chunks): make the lanes innermost
        lanes, row, chunks = sch.get_loops(rf)[-3:]
        sch.reorder(row, chunks, lanes)
        sch.vectorize(lanes)
    for ro in tops:
        sch.parallel(ro)
        if unroll:
            sch.annotate(ro, "pragma_auto_unroll_max_step", 16)
            sch.annotate(ro, "pragma_unroll_explicit", 1)
    return sch.mod
