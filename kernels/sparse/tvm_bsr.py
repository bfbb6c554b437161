"""TVM template of BSR SpMM for CPUs: one parallel task per (block row, `tile_n` columns); per stored
block of the row, each of its bn columns k meets one row of B, which is loaded once (vectorised over the
tile) and multiplied into all bm accumulator rows, so a block row reads its B rows once per block."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvm import tirx
from tvm.script.ir_builder import tirx as T  # noqa: N812 - the TVMScript convention

from ...codegen.tvm_expr import prim, tvm_dtype
from ...schedule.config import Config
from .tvm_common import ceil_div, column_tile, index_dtype, module, prim_func
from .tvm_csr import store_tile

if TYPE_CHECKING:
    import tvm

    from .spec import SpmmSpec


def build_module(spec: SpmmSpec, config: Config) -> tvm.IRModule:
    """The PrimFunc `spec.name`(inputs..., outputs...) as described in the module docstring."""
    tn = config.int("tile_n")
    (bm, bn), brows = spec.block, prim(spec.M // spec.block[0])
    tiles = ceil_div(spec.N, tn)
    acc_t = tvm_dtype(spec.acc_dtype)
    idx = index_dtype(*spec.index_dtypes)
    with prim_func(spec) as (val, outs, ib):
        with T.parallel(0, brows * tiles) as t:
            br, jo = t // tiles, t % tiles
            acc = T.alloc_buffer((bm * tn,), acc_t, scope="local")
            with T.serial(0, bm * tn) as i:
                T.buffer_store(acc, tirx.const(0, acc_t), [i])
            start = val.at(spec.indptr, [br], cast=idx)
            end = val.at(spec.indptr, [br + 1], cast=idx)

            def accumulate(buf: Any, stride: int, c0: Any, width: int) -> None:
                with T.serial(start, end) as p:
                    col = val.at(spec.indices, [p], cast=idx)
                    with T.serial(0, bn) as kk:
                        k = col * bn + kk
                        with T.serial(0, bm) as i:
                            v = val.at(spec.values, [p, i, kk], cast=acc_t)
                            with T.vectorized(0, width) as j:
                                b = val.at(spec.b, spec.b_index(k, c0 + j), cast=acc_t)
                                T.buffer_store(buf, buf[i * stride + j] + v * b, [i * stride + j])

            column_tile(jo, tn, spec.N, bm, acc, acc_t, accumulate)
            store_tile(spec, val, outs, br * bm, bm, acc, jo * tn, tn)
    return module(spec, ib)
