"""TVM (CPU) template of the attention forward: one parallel task per (batch * q head, query block), an
online softmax over the key blocks of the spec's CSR block lists, all in f32.

The PrimFunc takes (inputs..., outputs..., kv_ptr, kv_nfull, kv_idx, head_pat, dynamic sizes...): the block
lists are the Triton kernel's (spec.block_lists; at run time `AttentionSpec.host_aux` makes them for each
call's sizes and, for a block-aligned data-dependent mask, its operands), so a causal mask visits about half
the key blocks and a streaming one its sink and window only. Per task:

    qt [BLOCK_M, D]            the query rows, times the scale (f32)
    kt [D, BLOCK_N], vt [BLOCK_N, Dv]   each visited key block, packed once and shared by the rows
    per row: s = qt[i] . kt (vectorized over the keys), score_mod, mask (masked blocks only), the online
             max / normaliser and acc[i] += p vt (vectorized over Dv)

Key blocks that need no mask come first, then the masked ones (partial, or the ragged last block, whose
columns past Sk are masked here); key indices are clamped before any load so a ragged block never reads past
a buffer. Fully masked rows give 0 and lse = -inf, as the reference. With a post_mod the block list is walked
twice (row max and normaliser, then the exact probabilities, post_mod and p' V), as in the Triton kernel."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tvm import tirx
from tvm.script.ir_builder import tirx as T  # noqa: N812 - the TVMScript convention

from ...codegen.tvm_script import script_func
from ...codegen.tvm_expr import (PrimExpr, dtype_of, exp_f32, lower_expr, prim, tvm_storage_dtype,
                                 view_offset)
from ...ir.expr import E, Expr
from ...schedule.config import Config

if TYPE_CHECKING:
    import tvm

    from .spec import AttentionSpec

F32 = "float32"
NEG_INF = float("-inf")
LANES = 8  # lanes of the partial max / sum (BLOCK_N is a multiple): one AVX2 register of f32


def arg_shapes(spec: AttentionSpec) -> list[tuple[int, ...]]:
    """Flat buffers: the inputs, then the outputs (the block lists are sized by each call)."""
    return [(b.numel,) for b in list(spec.inputs) + list(spec.outputs)]


def _f32(x: PrimExpr) -> PrimExpr:
    return x if dtype_of(x) == F32 else tirx.Cast(F32, x)


def _i32(x: PrimExpr) -> PrimExpr:
    return x if dtype_of(x) == "int32" else tirx.Cast("int32", x)


def _c(v: float) -> PrimExpr:
    return tirx.const(v, F32)


class _Kernel:
    """Emits the loop nest of one spec under one config into the open PrimFunc."""

    def __init__(self, spec: AttentionSpec, config: Config, ins: list[Any], outs: list[Any], aux: list[Any]):
        self.spec, self.ins, self.outs = spec, ins, outs
        self.kv_ptr, self.kv_nfull, self.kv_idx, self.head_pat = aux
        self.bm, self.bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        self.D, self.Dv = int(spec.D), int(spec.Dv)
        self.sq, self.sk = prim(spec.Sq), prim(spec.Sk)
        self.nqb = tirx.floordiv(self.sq + (self.bm - 1), self.bm) if not isinstance(self.sq, int) \
            else -(-self.sq // self.bm)

    # -- values --
    def operand(self, e: Expr, idx: list[PrimExpr]) -> PrimExpr:
        """q, k or v (with any fused prologue) at [b, head, seq, d], in f32."""
        def leaf(n: Expr) -> PrimExpr | None:
            if n.op is not E.LOAD:
                return None
            site = self.spec.loads[n.arg]
            v = site.view
            return self.ins[site.buffer][view_offset(v.shape, v.strides, v.offset, 0, tirx.const(0, "int32"), idx)]

        return _f32(lower_expr(e, leaf))

    def mod(self, e: Expr, env: Mapping[str, PrimExpr]) -> PrimExpr:
        """A mask_mod / score_mod / post_mod at the index PrimExprs (and score / p) in `env`; its loads read the
        extra operands at their explicit indices."""
        memo: dict[int, PrimExpr] = {}

        def leaf(n: Expr) -> PrimExpr | None:
            if n.op is E.VAR:
                return env[n.arg]
            if n.op is not E.LOAD:
                return None
            site = self.spec.loads[self.spec.extra_slot[n.arg]]
            v = site.view
            idx = [_i32(memo[id(s)]) for s in n.src]
            return self.ins[site.buffer][view_offset(v.shape, v.strides, v.offset, 0, tirx.const(0, "int32"), idx)]

        return lower_expr(e, leaf, memo)

    # -- the task --
    def emit(self) -> None:
        spec, bm = self.spec, self.bm
        with T.parallel(0, prim(spec.B) * spec.Hq * self.nqb) as t:
            bh, qb = tirx.floordiv(t, self.nqb), tirx.floormod(t, self.nqb)
            self.b, self.h = tirx.floordiv(bh, spec.Hq), tirx.floormod(bh, spec.Hq)
            self.hk = tirx.floordiv(self.h, spec.group) if spec.group > 1 else self.h
            self.bh, self.q0 = bh, qb * bm
            self.rows = tirx.min(bm, self.sq - self.q0)
            row = self.head_pat[bh] * self.nqb + qb
            self.start, self.mid, self.end = self.kv_ptr[row], self.kv_ptr[row] + self.kv_nfull[row], \
                self.kv_ptr[row + 1]
            self.qt = T.alloc_buffer((bm * self.D,), F32, scope="local")
            self.kt = T.alloc_buffer((self.D * self.bn,), F32, scope="local")
            self.vt = T.alloc_buffer((self.bn * self.Dv,), F32, scope="local")
            self.s = T.alloc_buffer((self.bn,), F32, scope="local")
            self.m = T.alloc_buffer((bm,), F32, scope="local")
            self.l = T.alloc_buffer((bm,), F32, scope="local")
            self.acc = T.alloc_buffer((bm * self.Dv,), F32, scope="local")
            self.red = T.alloc_buffer((2,), F32, scope="local")  # a row's block max and sum
            self.part = T.alloc_buffer((LANES,), F32, scope="local")  # their per-lane partial results
            self._init()
            if spec.post_mod is None:
                self._walk(stats_only=False)
            else:
                self._walk(stats_only=True)
                self._walk(stats_only=False, post=True)
            self._epilogue()

    def _init(self) -> None:
        scale = _c(self.spec.scale)
        with T.serial(0, self.rows) as i:
            with T.serial(0, self.D) as d:
                q = self.operand(self.spec.q_expr, [self.b, self.h, self.q0 + i, d])
                T.buffer_store(self.qt, q * scale, [i * self.D + d])
            T.buffer_store(self.m, _c(NEG_INF), [i])
            T.buffer_store(self.l, _c(0.0), [i])
            with T.vectorized(0, self.Dv) as dv:
                T.buffer_store(self.acc, _c(0.0), [i * self.Dv + dv])

    def _walk(self, stats_only: bool, post: bool = False) -> None:
        """One pass over the task's block list: the blocks needing no mask, then the masked ones."""
        for lo, hi, masked in ((self.start, self.mid, False), (self.mid, self.end, True)):
            with T.serial(0, hi - lo) as jj:
                k0 = self.kv_idx[lo + jj] * self.bn
                self._pack(k0, stats_only)
                with T.serial(0, self.rows) as i:
                    self._row(i, k0, masked, stats_only, post)

    def _pack(self, k0: PrimExpr, stats_only: bool) -> None:
        """kt and vt of the key block starting at k0 (rows past Sk repeat the last key: they are masked)."""
        spec = self.spec
        with T.serial(0, self.bn) as n:
            kv = tirx.min(k0 + n, self.sk - 1)
            with T.serial(0, self.D) as d:
                T.buffer_store(self.kt, self.operand(spec.k_expr, [self.b, self.hk, kv, d]), [d * self.bn + n])
            if not stats_only:
                with T.serial(0, self.Dv) as dv:
                    T.buffer_store(self.vt, self.operand(spec.v_expr, [self.b, self.hk, kv, dv]), [n * self.Dv + dv])

    def _scores(self, i: Any, k0: PrimExpr, masked: bool) -> Callable[[Any], tuple[PrimExpr, PrimExpr, PrimExpr]]:
        """s[n] = scaled q . k of row i; returns a function giving (score, keep, kv index) of key n after the
        score_mod and mask, for use inside a loop over n."""
        with T.vectorized(0, self.bn) as n:
            T.buffer_store(self.s, _c(0.0), [n])
        with T.serial(0, self.D) as d:
            qd = self.qt[i * self.D + d]
            with T.vectorized(0, self.bn) as n:
                T.buffer_store(self.s, self.s[n] + qd * self.kt[d * self.bn + n], [n])
        spec = self.spec

        def at(n: Any) -> tuple[PrimExpr, PrimExpr, PrimExpr]:
            kv = tirx.min(k0 + n, self.sk - 1)  # clamped: a mod's loads stay in range on ragged columns
            env = {"b": self.b, "h": self.h, "q_idx": self.q0 + i, "kv_idx": kv}
            s = self.s[n]
            if spec.score_mod is not None:
                s = _f32(self.mod(spec.score_mod, {**env, "score": s}))
            keep = tirx.const(True, "bool")
            if masked:
                keep = k0 + n < self.sk
                if spec.mask is not None:
                    keep = tirx.And(keep, self.mod(spec.mask, env))
                s = tirx.Select(keep, s, _c(NEG_INF))
            return s, keep, kv

        return at

    def _row(self, i: Any, k0: PrimExpr, masked: bool, stats_only: bool, post: bool) -> None:
        at = self._scores(i, k0, masked)
        if post:
            self._post_row(i, at)
            return
        if masked or self.spec.score_mod is not None:
            with T.serial(0, self.bn) as n:
                T.buffer_store(self.s, at(n)[0], [n])
        self._reduce(0, lambda x, y: tirx.max(x, y), NEG_INF)
        m_old = self.m[i]
        m_new = tirx.max(m_old, self.red[0])
        m_use = tirx.Select(m_new == _c(NEG_INF), _c(0.0), m_new)  # a row still all -inf: keep exp finite
        with T.vectorized(0, self.bn) as n:
            T.buffer_store(self.s, exp_f32(self.s[n] - m_use), [n])
        self._reduce(1, lambda x, y: x + y, 0.0)
        alpha = exp_f32(m_old - m_use)
        T.buffer_store(self.l, self.l[i] * alpha + self.red[1], [i])
        if not stats_only:
            with T.vectorized(0, self.Dv) as dv:
                T.buffer_store(self.acc, self.acc[i * self.Dv + dv] * alpha, [i * self.Dv + dv])
            self._pv(i)
        T.buffer_store(self.m, m_new, [i])

    def _reduce(self, slot: int, op: Callable[[PrimExpr, PrimExpr], PrimExpr], init: float) -> None:
        """red[slot] = op over s[0:BLOCK_N]: LANES partial results in one vector, then across its lanes (a
        serial chain of BLOCK_N dependent ops cost a third of the time)."""
        with T.vectorized(0, LANES) as j:
            T.buffer_store(self.part, _c(init), [j])
        with T.serial(0, self.bn // LANES) as c:
            with T.vectorized(0, LANES) as j:
                T.buffer_store(self.part, op(self.part[j], self.s[c * LANES + j]), [j])
        T.buffer_store(self.red, _c(init), [slot])
        with T.serial(0, LANES) as j:
            T.buffer_store(self.red, op(self.red[slot], self.part[j]), [slot])

    def _pv(self, i: Any) -> None:
        """acc[i] += sum_n s[n] vt[n] (s holds the row's weights)."""
        with T.serial(0, self.bn) as n:
            p = self.s[n]
            with T.vectorized(0, self.Dv) as dv:
                T.buffer_store(self.acc, self.acc[i * self.Dv + dv] + p * self.vt[n * self.Dv + dv],
                               [i * self.Dv + dv])

    def _post_row(self, i: Any, at: Callable[[Any], tuple[PrimExpr, PrimExpr, PrimExpr]]) -> None:
        """Pass 2 of a post_mod kernel: p = exp(s - m) / l from pass 1's statistics, post_mod, 0 where
        masked (or on a row with no live score), then acc[i] += p' vt."""
        assert self.spec.post_mod is not None
        m_fin = tirx.Select(self.m[i] == _c(NEG_INF), _c(0.0), self.m[i])
        inv_l = _c(1.0) / tirx.Select(self.l[i] == _c(0.0), _c(1.0), self.l[i])
        with T.serial(0, self.bn) as n:
            s, keep, kv = at(n)
            p = exp_f32(s - m_fin) * inv_l
            env = {"b": self.b, "h": self.h, "q_idx": self.q0 + i, "kv_idx": kv, "p": p}
            pm = _f32(self.mod(self.spec.post_mod, env))
            T.buffer_store(self.s, tirx.Select(tirx.And(keep, self.l[i] > _c(0.0)), pm, _c(0.0)), [n])
        self._pv(i)

    def _epilogue(self) -> None:
        spec = self.spec
        post = spec.post_mod is not None
        with T.serial(0, self.rows) as i:
            live = self.l[i] > _c(0.0)
            row = self.bh * self.sq + self.q0 + i
            for index, role in spec.outs:
                out = self.outs[index]
                if role == "lse":
                    lse = self.m[i] + tirx.log(tirx.Select(live, self.l[i], _c(1.0)))
                    T.buffer_store(out, tirx.Select(live, lse, _c(NEG_INF)), [row])
                    continue
                inv = _c(1.0) if post else _c(1.0) / tirx.Select(live, self.l[i], _c(1.0))
                d = tvm_storage_dtype(spec.outputs[index].dtype, f"output {index}")
                with T.vectorized(0, self.Dv) as dv:
                    o = tirx.Select(live, self.acc[i * self.Dv + dv] * inv, _c(0.0))
                    T.buffer_store(out, o if d == F32 else tirx.Cast(d, o), [row * self.Dv + dv])


def build_module(spec: AttentionSpec, config: Config) -> tvm.IRModule:
    """The PrimFunc `spec.name`(inputs..., outputs..., kv_ptr, kv_nfull, kv_idx, head_pat, sizes...)."""
    import tvm

    from .spec import AUX_NAMES

    # the block lists' lengths follow each call's sizes (and a data-dependent mask's operands)
    with script_func(spec, AUX_NAMES, tvm_storage_dtype) as (ins, outs, aux, ib):
        _Kernel(spec, config, ins, outs, aux).emit()
    return tvm.IRModule({spec.name: ib.get()})


def schedule(mod: tvm.IRModule, spec: AttentionSpec, config: Config) -> tvm.IRModule:
    """The loop nest is built scheduled (parallel tasks, vectorized dot products): nothing to add."""
    return mod
