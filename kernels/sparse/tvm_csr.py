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
from ...ir import dims
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
    """Row r: per tile of tn columns, accumulate over the row's nonzeros (vectorized over a whole tile; the
    last tile of a ragged N serially over its columns, or for a dynamic N in power-of-two chunks), then
    write the epilogue."""
    with T.serial(0, ceil_div(spec.N, tn)) as jo:
        acc = T.alloc_buffer((tn,), acc_t, scope="local")
        with T.vectorized(0, tn) as j:
            T.buffer_store(acc, tirx.const(0, acc_t), [j])

        def nonzeros(lanes: Any) -> None:
            with T.serial(ip(r), ip(r + 1)) as p:
                col = val.at(spec.indices, [p], cast=idx)
                v = val.at(spec.values, [p], cast=acc_t)
                with lanes() as j:
                    b = val.at(spec.b, spec.b_index(col, jo * tn + j), cast=acc_t)
                    T.buffer_store(acc, acc[j] + v * b, [j])

        def ragged(lanes: Any) -> None:
            if dims.is_dynamic(spec.N):
                _ragged_chunks(spec, val, ip, r, jo, tn, acc, acc_t, idx)
            else:
                nonzeros(lanes)  # a constant trip count: LLVM keeps the accumulator in registers

        column_tile(jo, tn, spec.N, nonzeros, ragged)
        store_tile(spec, val, outs, r, 1, acc, jo * tn, tn)


def _ragged_chunks(spec: SpmmSpec, val: Values, ip: Any, r: Any, jo: Any, tn: int, acc: Any, acc_t: str,
                   idx: str) -> None:
    """The last tile's rem = N - jo * tn columns (N dynamic) as chunks of the powers of two in rem (rem = 5:
    4 columns, then 1), each one pass over the row's nonzeros with a vector accumulator of constant width:
    a loop over a run-time number of lanes keeps the accumulator in memory (1024x1024 10%-dense CSR
    transposed, T=1: 0.23 ms, static 0.06)."""
    rem = prim(spec.N) - jo * tn
    w = tn // 2
    while w >= 1:
        with T.If(tirx.bitwise_and(rem, w) != 0):
            with T.Then():
                c0 = jo * tn + rem // (2 * w) * (2 * w)  # past the wider chunks
                part = T.alloc_buffer((w,), acc_t, scope="local")
                with T.vectorized(0, w) as j:
                    T.buffer_store(part, tirx.const(0, acc_t), [j])
                with T.serial(ip(r), ip(r + 1)) as p:
                    col = val.at(spec.indices, [p], cast=idx)
                    v = val.at(spec.values, [p], cast=acc_t)
                    with T.vectorized(0, w) as j:
                        b = val.at(spec.b, spec.b_index(col, c0 + j), cast=acc_t)
                        T.buffer_store(part, part[j] + v * b, [j])
                with T.serial(0, w) as j:
                    T.buffer_store(acc, part[j], [c0 - jo * tn + j])
        w //= 2


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
