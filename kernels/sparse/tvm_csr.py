"""TVM template of CSR SpMM for CPUs: `tasks` parallel tasks, each owning the rows whose first nonzero
falls in its equal share of the nonzeros (found by a binary search over indptr), so a power-law row
distribution splits by work, not by row count. A task walks its rows; per row and per `tile_n`
columns a vector accumulator sums values[p] * B[indices[p], :] over the row's nonzeros, then the
epilogue writes the output row.

The row loop runs over all M rows with a range test rather than from the task's first row: with
bounds read from a local buffer as the loop's start, TVM 0.27 produced wrong rows (seen in a test
of this template; a 0-based loop with the test is correct and costs M x tasks compares)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T  # noqa: N812 - the TVMScript convention

from ...codegen.lowering import LoweringError
from ...codegen.tvm_expr import PrimExpr, dtype_of, lower_expr, tvm_dtype, view_offset
from ...ir.expr import E, Expr
from ...schedule.config import Config

if TYPE_CHECKING:
    import tvm

    from .spec import SpmmSpec

INDEX32 = 2**31 - 1


def arg_shapes(spec: SpmmSpec) -> list[tuple[int, ...]]:
    """Flat buffers: the inputs, then the [M * N] outputs."""
    shapes: list[tuple[int, ...]] = [(b.numel,) for b in spec.inputs]
    return shapes + [(b.numel,) for b in spec.outputs]


class _Values:
    """Expressions of the spec at index PrimExprs, reading the PrimFunc's flat input buffers."""

    def __init__(self, spec: SpmmSpec, inputs: list[Any]):
        self.spec, self.inputs = spec, inputs

    def at(self, e: Expr, idx: list[PrimExpr], acc: PrimExpr | None = None, cast: str | None = None) -> PrimExpr:
        def leaf(n: Expr) -> PrimExpr | None:
            if n.op is E.LOAD:
                site = self.spec.loads[n.arg]
                v = site.view
                return self.inputs[site.buffer][view_offset(v.shape, v.strides, v.offset, 0, tirx.const(0), idx)]
            if n.op is E.VAR:
                return acc
            return None

        out = lower_expr(e, leaf)
        return tirx.Cast(cast, out) if cast and dtype_of(out) != cast else out


def _row_bounds(ip: Any, spec: SpmmSpec, t: Any, tasks: int, idx: str) -> Any:
    """[first, end) rows of task t: the first rows whose indptr reaches t/tasks and (t+1)/tasks of nnz."""
    bounds = T.alloc_buffer((2,), idx, scope="local")
    for side in range(2):
        target = tirx.Cast(idx, t + side) * spec.nnz // tasks
        lo = T.alloc_buffer((2,), idx, scope="local")
        T.buffer_store(lo, tirx.const(0, idx), [0])
        T.buffer_store(lo, tirx.const(spec.M, idx), [1])
        with T.While(lo[0] < lo[1]):
            mid = (lo[0] + lo[1]) // 2
            with T.If(ip(mid) < target):
                with T.Then():
                    T.buffer_store(lo, mid + 1, [0])
                with T.Else():
                    T.buffer_store(lo, mid, [1])
        T.buffer_store(bounds, tirx.Select(t + side == tasks, tirx.const(spec.M, idx), lo[0]), [side])
    return bounds


def build_module(spec: SpmmSpec, config: Config) -> tvm.IRModule:
    """The PrimFunc `spec.name`(inputs..., outputs...) as described in the module docstring."""
    import tvm

    if spec.format != "csr":
        raise LoweringError(f"{spec.name}: sparse format {spec.format!r} has no CPU (tvm) template yet; "
                            "csr has (target 'interp' or a GPU target runs bsr and 2:4)")
    for b in list(spec.inputs) + list(spec.outputs):
        if b.numel > INDEX32:
            raise LoweringError(f"tvm: buffer {b.name} of {b.numel} elements needs 64-bit indexing, "
                                "which the tvm backend does not support yet")
    tasks, tn, n = config.int("tasks"), config.int("tile_n"), spec.N
    acc_t = tvm_dtype(spec.acc_dtype)
    idx = "int64" if "i64" in (d.name for d in spec.index_dtypes) else "int32"
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(spec.name)
            T.func_attr({"tirx.noalias": True, "global_symbol": spec.name})
            ins = [T.arg(f"in{i}", T.buffer(shape, tvm_dtype(b.dtype, f"input {b.name}")))
                   for i, (b, shape) in enumerate(zip(spec.inputs, arg_shapes(spec)))]
            outs = [T.arg(f"out{i}", T.buffer((b.numel,), tvm_dtype(b.dtype, f"output {b.name}")))
                    for i, b in enumerate(spec.outputs)]
            val = _Values(spec, ins)

            def ip(r: PrimExpr) -> PrimExpr:
                return val.at(spec.indptr, [r], cast=idx)

            with T.parallel(0, tasks) as t:
                bounds = _row_bounds(ip, spec, t, tasks, idx)
                with T.serial(0, spec.M) as r:
                    with T.If(tirx.And(bounds[0] <= tirx.Cast(idx, r), tirx.Cast(idx, r) < bounds[1])):
                        with T.Then():
                            _row(spec, val, outs, ip, r, tn, n, acc_t, idx)
    func = ib.get()
    return tvm.IRModule({spec.name: func})


def _row(spec: SpmmSpec, val: _Values, outs: list[Any], ip: Any, r: Any, tn: int, n: int, acc_t: str,
         idx: str) -> None:
    """Row r: per tile of tn columns, accumulate over the row's nonzeros, then write the epilogue."""
    with T.serial(0, -(-n // tn)) as jo:
        acc = T.alloc_buffer((tn,), acc_t, scope="local")
        with T.vectorized(0, tn) as j:
            T.buffer_store(acc, tirx.const(0, acc_t), [j])
        with T.serial(ip(r), ip(r + 1)) as p:
            col = val.at(spec.indices, [p], cast=idx)
            v = val.at(spec.values, [p], cast=acc_t)
            with T.vectorized(0, tn) as j:
                # columns past N read column N - 1 (in bounds) and are never stored
                c = tirx.min(jo * tn + j, n - 1)
                T.buffer_store(acc, acc[j] + v * val.at(spec.b, [col, c], cast=acc_t), [j])
        with T.serial(0, tn) as j:
            c = jo * tn + j
            with T.If(c < n):
                with T.Then():
                    for i, e in spec.outs:
                        o = val.at(e, [r, c], acc=acc[j], cast=tvm_dtype(spec.outputs[i].dtype))
                        T.buffer_store(outs[i], o, [r * n + c])


def schedule(mod: tvm.IRModule, spec: SpmmSpec, config: Config) -> tvm.IRModule:
    """The loop nest is built scheduled (parallel tasks, vector accumulators): nothing to add."""
    return mod
