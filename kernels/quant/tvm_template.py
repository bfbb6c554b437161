"""TVM template of the quantized GEMM family: the matmul family's CPU GEMM (which dequantizes all of B into
its packed f32 panel on every call) or, when the config says `gemv=1`, a decode schedule that reads the
packed words inside the k loop; `gemv=2` is the factored decode schedule of tvm_gemv.py (the default for
decode shapes wherever the weights factor), which this one backs up.

The GEMV schedule computes C as [batch, M, en, N/en] where `en` is the number of codes one packing unit
holds along N (AWQ int4 in i32: 8; 1 when the codes are packed along K): one parallel task per tile_n
columns; inside it, for each k, one vector load of tile_n/en packed words, the `en` codes of each word
unpacked with constant shifts (the sub-word loop is unrolled), scaled and accumulated into tile_n f32
registers; codes packed along K (GPTQ) are read once per unit of `ek` k-steps (unrolled, so the word
load is shared). Scales and zeros depend on k only through k // group: with tile_k a multiple of the
group, they are invariant in the inner k loop and LLVM hoists them. The epilogue is a separate pass over
the [M, N] result (small at decode sizes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvm import s_tir, te

from ...codegen.tvm_expr import prim_module, tvm_dtype
from ...schedule.config import Config
from ..matmul import tvm_template as mm
from ..matmul.tvm_template import arg_shapes
from . import tvm_gemv

if TYPE_CHECKING:
    import tvm

    from .spec import QuantMatmulSpec

__all__ = ["arg_shapes", "build_module", "schedule"]


def gemv(config: Config) -> int:
    """The decode schedule `config` asks for: 0 (none: the GEMM), 1 (_Gemv) or 2 (factored: tvm_gemv)."""
    return config.int("gemv") if "gemv" in config else 0


class _Gemv(mm._Builder):
    """The GEMV stages: C [batch, M, en, Nh] (the sum over k; words innermost, so vector lanes are
    contiguous) and one `out{o}` per output."""

    def build(self) -> list[Any]:
        spec: QuantMatmulSpec = self.spec  # type: ignore[assignment]
        ek, en = spec.pack_units()
        tn, tk = self.tn, self.tk
        nh = -(-spec.N // tn) * (tn // en)
        kp = -(-spec.K // tk) * tk
        pad_n, pad_k = nh * en != spec.N, kp != spec.K
        k = te.reduce_axis((0, kp), name="k")

        def acc(b: Any, m: Any, j: Any, u: Any) -> Any:
            a = self._packed(spec.a_expr, b, tvm_gemv.row_of(spec, m), k, 0, spec.K if pad_k else 0)
            w = self._packed(spec.b_expr, b, k, u * en + j, spec.K if pad_k else 0, spec.N if pad_n else 0)
            return te.sum(a * w, axis=k)

        rows, out_rows = tvm_gemv.decode_rows(spec, self.config)
        c = te.compute((self.nb, rows, en, nh), acc, name="C")
        outs = []
        for o in spec.outs:
            d = tvm_dtype(spec.outputs[o.index].dtype, f"output {o.index}")
            body = tvm_gemv.epilogue_4d(self, o.expr, c, d, en)
            outs.append(te.compute((self.nb, out_rows, spec.N), body, name=f"out{o.index}"))
        return outs


def build_module(spec: QuantMatmulSpec, config: Config) -> tvm.IRModule:
    """The unscheduled TIR module (the matmul's GEMM, or the GEMV stages under `gemv=1`)."""
    if not gemv(config):
        return mm.build_module(spec, config)
    b = tvm_gemv.Factored(spec, config) if gemv(config) == 2 else _Gemv(spec, config)
    return prim_module(spec.name, len(spec.outputs), b.inputs, [(o.index, t) for o, t in zip(spec.outs, b.build())],
                       spec.size_params())


def schedule(mod: tvm.IRModule, spec: QuantMatmulSpec, config: Config) -> tvm.IRModule:
    """Under `gemv=1`: (batch, n-tile) in parallel; per task the k loop (tile_k steps, the inner steps
    unrolled by `unroll`, a K-packing unit of `ek` steps fully) outside the M rows, the `en` codes of a
    word and the tile's words, vectorized by `vector` lanes over words; the accumulators live in a local
    tile written back once per task."""
    if not gemv(config):
        return mm.schedule(mod, spec, config)
    if gemv(config) == 2:
        return tvm_gemv.schedule(mod, spec, config)
    ek, en = spec.pack_units()
    tn, tk = config.int("tile_n"), config.int("tile_k")
    vector, unroll = config.int("vector"), config.int("unroll")
    sch = s_tir.Schedule(mod)
    sch.work_on(spec.name)
    c = sch.get_sblock("C")
    b, m, j, u, k = sch.get_loops(c)
    uo, uu, uv = sch.split(u, [None, tn // en // vector, vector])
    sch.reorder(b, uo, m, j, uu, uv, k)
    task = sch.fuse(b, uo)
    sch.parallel(task)
    cw = sch.cache_write(c, 0, "local")
    sch.reverse_compute_at(cw, task)
    ko, kio, kiu, kie = sch.split(k, [None, tk // (unroll * ek), unroll, ek])
    inner = [kie, m, j, uu, uv]
    sch.reorder(ko, kio, kiu, *inner)
    for lp in [kiu, *inner[:-1]]:
        sch.unroll(lp)
    sch.vectorize(uv)
    init = sch.decompose_reduction(c, ko)
    iloops = sch.get_loops(init)
    for lp in iloops[1:-1]:
        sch.unroll(lp)
    sch.vectorize(iloops[-1])
    for o in spec.outs:
        sch.parallel(sch.fuse(*sch.get_loops(sch.get_sblock(f"out{o.index}"))))
    return sch.mod
