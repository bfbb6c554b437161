"""TVM template of 2:4 SpMM for CPUs: one parallel task per (`tile_m` rows, `tile_n` columns). Per group
of four columns of A, each row's two kept values (values [M, K/2], their positions in meta) multiply two
of the group's four B rows into the row's vector accumulator: the four B rows stay in cache while the
tile's rows visit them, and A is read as stored (half a dense A's values)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvm import tirx
from tvm.script.ir_builder import tirx as T  # noqa: N812 - the TVMScript convention

from ...codegen.tvm_expr import prim, tvm_dtype
from ...schedule.config import Config
from .tvm_common import ceil_div, column_tile, module, prim_func
from .tvm_csr import store_tile

if TYPE_CHECKING:
    import tvm

    from .spec import SpmmSpec


def build_module(spec: SpmmSpec, config: Config) -> tvm.IRModule:
    """The PrimFunc `spec.name`(inputs..., outputs...) as described in the module docstring."""
    assert spec.meta is not None
    meta = spec.meta
    tm, tn, m = config.int("tile_m"), config.int("tile_n"), prim(spec.M)
    tiles_m, tiles_n = ceil_div(spec.M, tm), ceil_div(spec.N, tn)
    acc_t = tvm_dtype(spec.acc_dtype)
    with prim_func(spec) as (val, outs, ib):
        with T.parallel(0, tiles_m * tiles_n) as t:
            mo, jo = t // tiles_n, t % tiles_n
            acc = T.alloc_buffer((tm * tn,), acc_t, scope="local")
            with T.serial(0, tm * tn) as i:
                T.buffer_store(acc, tirx.const(0, acc_t), [i])

            def accumulate(buf: Any, stride: int, c0: Any, width: int) -> None:
                with T.serial(0, prim(spec.K // 2)) as h:
                    with T.serial(0, tm) as i:
                        r = tirx.min(mo * tm + i, m - 1)  # rows past M: read in bounds, never stored
                        col = h // 2 * 4 + val.at(meta, [r, h], cast="int32")
                        v = val.at(spec.values, [r, h], cast=acc_t)
                        with T.vectorized(0, width) as j:
                            b = val.at(spec.b, spec.b_index(col, c0 + j), cast=acc_t)
                            T.buffer_store(buf, buf[i * stride + j] + v * b, [i * stride + j])

            column_tile(jo, tn, spec.N, tm, acc, acc_t, accumulate)
            store_tile(spec, val, outs, mo * tm, tm, acc, jo * tn, tn)
    return module(spec, ib)
