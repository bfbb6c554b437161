"""What the sparse family's TVM (CPU) templates share: flat buffers, the PrimFunc preamble (dynamic sizes
as trailing int32 arguments), expressions at index PrimExprs, and the nnz-balanced split of rows into
parallel tasks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tvm import tirx
from tvm.script.ir_builder import tirx as T  # noqa: N812 - the TVMScript convention

from ...codegen.tvm_expr import PrimExpr, dtype_of, lower_expr, prim, view_offset
from ...codegen.tvm_script import script_func
from ...ir import dims
from ...ir.expr import E, Expr

if TYPE_CHECKING:
    import tvm

    from ..base import KernelSpec

def arg_shapes(spec: KernelSpec) -> list[tuple[int, ...]]:
    """Flat buffers: the inputs, then the outputs."""
    return [(b.numel,) for b in list(spec.inputs) + list(spec.outputs)]


class Values:
    """Expressions of a spec at index PrimExprs, reading the PrimFunc's flat input buffers; VAR leaves
    take `acc` (the anchor's value) or their entry in `env` (by variable name)."""

    def __init__(self, spec: KernelSpec, inputs: list[Any]):
        self.spec, self.inputs = spec, inputs

    def at(self, e: Expr, idx: list[PrimExpr], acc: PrimExpr | None = None, cast: str | None = None,
           env: Mapping[str, PrimExpr] | None = None) -> PrimExpr:
        def leaf(n: Expr) -> PrimExpr | None:
            if n.op is E.LOAD:
                site = self.spec.loads[n.arg]
                v = site.view
                return self.inputs[site.buffer][view_offset(v.shape, v.strides, v.offset, 0, tirx.const(0), idx)]
            if n.op is E.VAR:
                return env[n.arg] if env and n.arg in env else acc
            return None

        out = lower_expr(e, leaf)
        return tirx.Cast(cast, out) if cast and dtype_of(out) != cast else out


@contextmanager
def prim_func(spec: KernelSpec) -> Iterator[tuple[Values, list[Any], Any]]:
    """Open the PrimFunc `spec.name`(in0.., out0.., sizes..) (codegen/tvm_script.script_func); yields (values
    of the inputs, the output buffers, the IRBuilder, whose `get()` is the PrimFunc once the block closes)."""
    with script_func(spec) as (ins, outs, _, ib):
        yield Values(spec, ins), outs, ib


def module(spec: KernelSpec, ib: Any) -> tvm.IRModule:
    """The IRModule holding the PrimFunc that `ib` built."""
    import tvm

    return tvm.IRModule({spec.name: ib.get()})


def as_index(size: Any, idx: str) -> Any:
    """A size (static or dynamic) as a TIR value of the index dtype `idx`."""
    return tirx.Cast(idx, prim(size)) if dims.is_dynamic(size) else tirx.const(int(size), idx)


def row_bounds(ip: Any, rows: Any, nnz: Any, t: Any, tasks: int, idx: str) -> Any:
    """[first, end) rows of task t: the first rows whose indptr `ip(row)` reaches t/tasks and (t+1)/tasks
    of nnz (a binary search each), so tasks split the work, not the row count. rows and nnz may be dynamic."""
    bounds = T.alloc_buffer((2,), idx, scope="local")
    for side in range(2):
        target = tirx.Cast(idx, t + side) * as_index(nnz, idx) // tasks
        lo = T.alloc_buffer((2,), idx, scope="local")
        T.buffer_store(lo, tirx.const(0, idx), [0])
        T.buffer_store(lo, as_index(rows, idx), [1])
        with T.While(lo[0] < lo[1]):
            mid = (lo[0] + lo[1]) // 2
            with T.If(ip(mid) < target):
                with T.Then():
                    T.buffer_store(lo, mid + 1, [0])
                with T.Else():
                    T.buffer_store(lo, mid, [1])
        T.buffer_store(bounds, tirx.Select(t + side == tasks, as_index(rows, idx), lo[0]), [side])
    return bounds


@contextmanager
def task_rows(ip: Any, rows: Any, nnz: Any, tasks: int, idx: str) -> Iterator[Any]:
    """`tasks` parallel tasks, each visiting its nnz-balanced share of the rows; yields the row variable.

    The row loop runs over all rows with a range test rather than from the task's first row: with
    bounds read from a local buffer as the loop's start, TVM 0.27 produced wrong rows (seen in a test
    of the CSR template; a 0-based loop with the test is correct and costs rows x tasks compares)."""
    with T.parallel(0, tasks) as t:
        bounds = row_bounds(ip, rows, nnz, t, tasks, idx)
        with T.serial(0, prim(rows)) as r:
            with T.If(tirx.And(bounds[0] <= tirx.Cast(idx, r), tirx.Cast(idx, r) < bounds[1])):
                with T.Then():
                    yield r


def column_tile(jo: Any, tn: int, size: Any, rows: int, acc: Any, acc_t: str,
                accumulate: Callable[[Any, int, Any, int], None]) -> None:
    """Accumulate column tile jo (tn columns out of `size`, which may be dynamic) of a rows x tn accumulator
    `acc`: `accumulate(buf, stride, c0, width)` emits the loop nest adding columns c0.. c0 + width - 1 into
    buf[i * stride + j] (j a vector loop of constant width). A whole tile is one call into acc; the last
    tile of a ragged size runs its rem columns as chunks of the powers of two in rem (rem = 7: 4, 2, 1),
    each into an accumulator of its own, then copied into acc. No lane reads past `size`, and every vector
    loop has a constant width: a loop over a run-time number of lanes kept the accumulator in memory, and
    lanes clamped to the last column gathered tn of them (1024x1024 10%-dense CSR transposed, tile_n=16,
    T=1: 0.76 ms clamped, 0.23 with a run-time loop, 0.07 in chunks, 0.06 static)."""
    if not dims.is_dynamic(size) and int(size) % tn == 0:
        accumulate(acc, tn, jo * tn, tn)
        return
    n = prim(size)
    with T.If(jo * tn + tn <= n):
        with T.Then():
            accumulate(acc, tn, jo * tn, tn)
        with T.Else():
            rem = n - jo * tn
            w = tn // 2
            while w >= 1:
                with T.If(tirx.bitwise_and(rem, w) != 0):
                    with T.Then():
                        off = rem // (2 * w) * (2 * w)  # past the wider chunks
                        part = T.alloc_buffer((rows * w,), acc_t, scope="local")
                        with T.serial(0, rows * w) as i:
                            T.buffer_store(part, tirx.const(0, acc_t), [i])
                        accumulate(part, w, jo * tn + off, w)
                        with T.serial(0, rows) as i:
                            with T.serial(0, w) as j:
                                T.buffer_store(acc, part[i * w + j], [i * tn + off + j])
                w //= 2


def ceil_div(n: Any, m: int) -> Any:
    """ceil(n / m) for a size n (a dynamic one as TIR over its size variables): (n + m - 1) // m, the form
    TVM's simplifier reads, not -(-n // m)."""
    return (prim(n) + m - 1) // m


def index_dtype(*dtypes: Any) -> str:
    """int64 when any structure array is i64, else int32."""
    return "int64" if "i64" in (d.name for d in dtypes) else "int32"
