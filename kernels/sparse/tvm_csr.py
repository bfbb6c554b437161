"""TVM template of CSR SpMM for CPUs: `tasks` parallel tasks, each owning the rows whose first nonzero
falls in its equal share of the nonzeros (found by a binary search over indptr), so a power-law row
distribution splits by work, not by row count. A task walks its rows; per row and per `tile_n`
columns a vector accumulator sums values[p] * B[indices[p], :] over the row's nonzeros, then the
epilogue writes the output row. Every size may be dynamic (an int32 argument): N (X's columns, or x's
rows when transposed) bounds the column tiles and their tail test, M and nnz the tasks' binary search."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvm import tirx
from tvm.script.ir_builder import tirx as T  # noqa: N812 - the TVMScript convention

from ...codegen.tvm_expr import PrimExpr, prim, tvm_dtype
from ...schedule.config import Config
from .tvm_common import Values, ceil_div, column_tile, index_dtype, module, prim_func, task_rows

if TYPE_CHECKING:
    import tvm

    from .spec import SpmmSpec


def build_module(spec: SpmmSpec, config: Config) -> tvm.IRModule:
    """The PrimFunc `spec.name`(inputs..., outputs...) as described in the module docstring."""
    tasks, tn = config.int("tasks"), config.int("tile_n")
    acc_t = tvm_dtype(spec.acc_dtype)
    idx = index_dtype(*spec.index_dtypes)
    with prim_func(spec) as (val, outs, ib):
        def ip(r: PrimExpr) -> PrimExpr:
            return val.at(spec.indptr, [r], cast=idx)

        with task_rows(ip, spec.M, spec.nnz, tasks, idx) as r:
            _row(spec, val, outs, ip, r, tn, acc_t, idx)
    return module(spec, ib)


def _row(spec: SpmmSpec, val: Values, outs: list[Any], ip: Any, r: Any, tn: int, acc_t: str, idx: str) -> None:
    """Row r: per tile of tn columns, accumulate over the row's nonzeros (column_tile), then write the
    epilogue."""
    with T.serial(0, ceil_div(spec.N, tn)) as jo:
        acc = T.alloc_buffer((tn,), acc_t, scope="local")
        with T.vectorized(0, tn) as j:
            T.buffer_store(acc, tirx.const(0, acc_t), [j])

        def accumulate(buf: Any, stride: int, c0: Any, width: int) -> None:
            with T.serial(ip(r), ip(r + 1)) as p:
                col = val.at(spec.indices, [p], cast=idx)
                v = val.at(spec.values, [p], cast=acc_t)
                with T.vectorized(0, width) as j:
                    b = val.at(spec.b, spec.b_index(col, c0 + j), cast=acc_t)
                    T.buffer_store(buf, buf[j] + v * b, [j])

        column_tile(jo, tn, spec.N, 1, acc, acc_t, accumulate)
        store_tile(spec, val, outs, r, 1, acc, jo * tn, tn)


def store_tile(spec: SpmmSpec, val: Values, outs: list[Any], row0: Any, nrows: int, acc: Any, c0: Any,
               tn: int) -> None:
    """The epilogue of an accumulator tile acc[nrows x tn] (rows row0.. of the sparse operand, columns
    c0.. of the dense one): every output at its (row, column), columns past N and rows past M skipped."""
    with T.serial(0, nrows) as i:
        with T.serial(0, tn) as j:
            r, c = row0 + i, c0 + j
            with T.If(tirx.And(c < prim(spec.N), r < prim(spec.M))):
                with T.Then():
                    for o, e in spec.outs:
                        oi = spec.out_index(r, c)
                        v = val.at(e, list(oi), acc=acc[i * tn + j], cast=tvm_dtype(spec.outputs[o].dtype))
                        T.buffer_store(outs[o], v, [oi[0] * prim(spec.out_shape[1]) + oi[1]])
