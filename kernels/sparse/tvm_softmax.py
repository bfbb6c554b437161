"""TVM (CPU) templates of edge softmax and of the fused SDDMM -> edge softmax -> SpMM kernel: `tasks`
parallel tasks over nnz-balanced row ranges (as CSR SpMM's); per row the two passes of
kernels/sparse/edge_softmax.py, the attention kernel accumulating the row's D features in a vector
buffer before its epilogue. Every size but D may be dynamic (an int32 argument): M, N, nnz and the fused
SDDMM's dot length K; D sizes that buffer, so it must be static."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvm import tirx
from tvm.script.ir_builder import tirx as T  # noqa: N812 - the TVMScript convention

from ...codegen.tvm_expr import PrimExpr, constant, tvm_dtype
from ...schedule.config import Config
from .tvm_common import Values, arg_shapes, index_dtype, module, prim_func, task_rows
from .tvm_sddmm import dot

if TYPE_CHECKING:
    import tvm

    from .edge_softmax import _EdgeSoftmaxBase


def _score(spec: _EdgeSoftmaxBase, val: Values, config: Config, r: Any, p: Any, col: Any) -> PrimExpr:
    """The score of nonzero p (row r, column col): the values' expression, over the SDDMM dot if fused."""
    acc_t = tvm_dtype(spec.acc_dtype)
    env = {}
    if spec.sddmm is not None:
        env["s"] = dot(val, spec.a, spec.b, r, col, spec.K, config.int("tile_k"), acc_t)
    return val.at(spec.score, [p], cast=acc_t, env=env)


def _row(spec: _EdgeSoftmaxBase, val: Values, outs: list[Any], config: Config, ip: Any, r: Any, idx: str) -> None:
    """Row r: the running max and sum, then each nonzero's probability into the outputs (softmax) or
    into the row's accumulator (attention, whose epilogue follows)."""
    acc_t = tvm_dtype(spec.acc_dtype)
    stats = T.alloc_buffer((2,), acc_t, scope="local")  # m, l
    T.buffer_store(stats, constant(float("-inf"), spec.acc_dtype), [0])
    T.buffer_store(stats, tirx.const(0, acc_t), [1])
    with T.serial(ip(r), ip(r + 1)) as p:
        s = _score(spec, val, config, r, p, val.at(spec.indices, [p], cast=idx))
        m_new = tirx.max(stats[0], s)
        T.buffer_store(stats, stats[1] * tirx.exp(stats[0] - m_new) + tirx.exp(s - m_new), [1])
        T.buffer_store(stats, m_new, [0])
    attention = spec.family == "sparse_attention"
    d = spec.out_features()
    acc = T.alloc_buffer((d,), acc_t, scope="local") if attention else None
    if acc is not None:
        with T.vectorized(0, d) as j:
            T.buffer_store(acc, tirx.const(0, acc_t), [j])
    with T.serial(ip(r), ip(r + 1)) as p:
        col = val.at(spec.indices, [p], cast=idx)
        prob = tirx.exp(_score(spec, val, config, r, p, col) - stats[0]) / stats[1]
        if acc is None:
            for o, e in spec.outs:
                T.buffer_store(outs[o], val.at(e, [p], cast=tvm_dtype(spec.outputs[o].dtype), env={"p": prob}), [p])
        else:
            w = val.at(spec.weight, [p], cast=acc_t, env={"p": prob})  # type: ignore[attr-defined]
            with T.vectorized(0, d) as j:
                xv = val.at(spec.x, [col, j], cast=acc_t)  # type: ignore[attr-defined]
                T.buffer_store(acc, acc[j] + w * xv, [j])
    if acc is not None:
        with T.serial(0, d) as j:
            for o, e in spec.outs:
                v = val.at(e, [r, j], acc=acc[j], cast=tvm_dtype(spec.outputs[o].dtype))
                T.buffer_store(outs[o], v, [r * d + j])


def build_module(spec: _EdgeSoftmaxBase, config: Config) -> tvm.IRModule:
    """The PrimFunc `spec.name`(inputs..., outputs...) as described in the module docstring."""
    idx = index_dtype(spec.indptr.dtype, spec.indices.dtype)
    spec.require_static(spec.out_features(), "D (x's feature count: the length of a task's accumulator row)", "tvm")
    with prim_func(spec) as (val, outs, ib):
        def ip(r: PrimExpr) -> PrimExpr:
            return val.at(spec.indptr, [r], cast=idx)

        with task_rows(ip, spec.M, spec.nnz, config.int("tasks"), idx) as r:
            _row(spec, val, outs, config, ip, r, idx)
    return module(spec, ib)


def schedule(mod: tvm.IRModule, spec: _EdgeSoftmaxBase, config: Config) -> tvm.IRModule:
    """The loop nest is built scheduled (parallel tasks, a vector accumulator): nothing to add."""
    return mod


__all__ = ["arg_shapes", "build_module", "schedule"]
