"""Triton templates of edge softmax and of the fused SDDMM -> edge softmax -> SpMM kernel
(kernels/sparse/edge_softmax.py explains the two passes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...codegen.headers import header
from ...codegen.triton_expr import literal, tl_type
from ...ir.expr import E
from ...schedule.config import Config
from .triton_common import IND, Scope

if TYPE_CHECKING:
    from .edge_softmax import SparseAttentionSpec, SparseSoftmaxSpec, _EdgeSoftmaxBase


def _scores(spec: _EdgeSoftmaxBase, L: list[str], ind: str, tag: str) -> str:
    """Lines computing the scores `score{tag}` [BLOCK_NZ] of nonzeros `p` (mask `nz`; -inf where masked) and
    their columns `col{tag}`; returns the scores' name."""
    acc_t = tl_type(spec.acc_dtype)
    col = Scope(spec, L, ind, f"c{tag}", ("p",), "nz").emit(spec.indices)
    L.append(f"{ind}col{tag} = {col}")
    env: dict[str, str] = {}
    if spec.sddmm is not None:
        ind2 = ind + IND
        L += [f"{ind}dot{tag} = tl.zeros([BLOCK_NZ], dtype={acc_t})",
              f"{ind}for k0 in range(0, {spec.K}, BLOCK_K):",
              f"{ind2}rk = k0 + tl.arange(0, BLOCK_K)",
              f"{ind2}kmask = rk < {spec.K}",
              f"{ind2}bmask = nz[:, None] & kmask[None, :]"]
        a = Scope(spec, L, ind2, f"a{tag}", ("row", "rk"), "kmask").emit(spec.a)
        b = Scope(spec, L, ind2, f"b{tag}", (f"col{tag}[:, None]", "rk[None, :]"), "bmask").emit(spec.b)
        L.append(f"{ind2}dot{tag} += tl.sum({a}.to({acc_t})[None, :] * {b}.to({acc_t}), axis=1)")
        env["s"] = f"dot{tag}"
    s = Scope(spec, L, ind, f"s{tag}", ("p",), "nz", env).emit(spec.score)
    L.append(f"{ind}score{tag} = tl.where(nz, {s}.to({acc_t}), float(\"-inf\"))")
    return f"score{tag}"


def _stats(spec: _EdgeSoftmaxBase, L: list[str]) -> None:
    """The row's bounds and the first pass: the running max `m` and the sum `l` of exp(s - m)."""
    acc_t = tl_type(spec.acc_dtype)
    start = Scope(spec, L, IND, "rs", ("row",), None).emit(spec.indptr)
    end = Scope(spec, L, IND, "re", ("(row + 1)",), None).emit(spec.indptr)
    L += [f"{IND}start = {start}",
          f"{IND}end = {end}",
          f"{IND}m = tl.full([1], float(\"-inf\"), {acc_t})",
          f"{IND}l = tl.zeros([1], dtype={acc_t})",
          f"{IND}for p0 in range(start, end, BLOCK_NZ):",
          f"{IND * 2}p = p0 + tl.arange(0, BLOCK_NZ)",
          f"{IND * 2}nz = p < end"]
    s = _scores(spec, L, IND * 2, "1")
    L += [f"{IND * 2}m_new = tl.maximum(m, tl.max({s}, axis=0))",
          f"{IND * 2}l = l * tl.exp(m - m_new) + tl.sum(tl.exp({s} - m_new), axis=0)",
          f"{IND * 2}m = m_new",
          f"{IND}for p0 in range(start, end, BLOCK_NZ):",
          f"{IND * 2}p = p0 + tl.arange(0, BLOCK_NZ)",
          f"{IND * 2}nz = p < end"]
    s = _scores(spec, L, IND * 2, "2")
    L.append(f"{IND * 2}prob = tl.exp({s} - m) / l")


def _open(spec: _EdgeSoftmaxBase, config: Config, extra: str) -> list[str]:
    return [header(spec, config, "triton"), "import triton", "import triton.language as tl", "", "",
            "@triton.jit", f"def {spec.name}({', '.join(spec.arg_names())}, BLOCK_NZ: tl.constexpr{extra}):",
            f"{IND}row = tl.program_id(0)"]


def render_softmax(spec: SparseSoftmaxSpec, config: Config) -> str:
    """Edge softmax: per row, the two passes, then every output at the row's nonzeros."""
    L = _open(spec, config, ", BLOCK_K: tl.constexpr" if spec.sddmm is not None else "")
    _stats(spec, L)
    out = Scope(spec, L, IND * 2, "o", ("p",), "nz", {"p": "prob"})
    for i, e in spec.outs:
        v = out.em.emit(e)
        if e.op is E.CONST:
            v = f"tl.full([BLOCK_NZ], {literal(e.arg, e.dtype)}, {tl_type(e.dtype)})"
        L.append(f"{IND * 2}tl.store(out{i} + p, {v}.to({tl_type(spec.outputs[i].dtype)}), mask=nz)")
    return "\n".join(L) + "\n"


def render_attention(spec: SparseAttentionSpec, config: Config) -> str:
    """Fused graph attention: per (row, BLOCK_N features), the two passes; the second accumulates
    weight(p) * x[col, features]; then the SpMM epilogue."""
    acc_t = tl_type(spec.acc_dtype)
    extra = (", BLOCK_K: tl.constexpr" if spec.sddmm is not None else "") + ", BLOCK_N: tl.constexpr"
    L = _open(spec, config, extra)
    L += [f"{IND}rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)",
          f"{IND}rn = tl.max_contiguous(tl.multiple_of(rn, BLOCK_N), BLOCK_N)",
          f"{IND}nmask = rn < {spec.D}",
          f"{IND}acc = tl.zeros([BLOCK_N], dtype={acc_t})"]
    _stats(spec, L)
    w = Scope(spec, L, IND * 2, "w", ("p",), "nz", {"p": "prob"}).emit(spec.weight)
    L += [f"{IND * 2}w = tl.where(nz, {w}.to({acc_t}), 0)",
          f"{IND * 2}xmask = nz[:, None] & nmask[None, :]"]
    x = Scope(spec, L, IND * 2, "x", ("col2[:, None]", "rn[None, :]"), "xmask").emit(spec.x)
    L.append(f"{IND * 2}acc += tl.sum(w[:, None] * {x}.to({acc_t}), axis=0)")
    out = Scope(spec, L, IND, "o", ("row", "rn"), "nmask")
    for i, e in spec.outs:
        v = out.em.emit(e)
        if e.op is E.CONST:
            v = f"tl.full([BLOCK_N], {literal(e.arg, e.dtype)}, {tl_type(e.dtype)})"
        L.append(f"{IND}tl.store(out{i} + row * {spec.D} + rn, {v}.to({tl_type(spec.outputs[i].dtype)}), mask=nmask)")
    return "\n".join(L) + "\n"


def render(spec: _EdgeSoftmaxBase, config: Config, interpret: bool = False) -> str:
    """Readable, deterministic Triton source of an edge-softmax or fused graph-attention kernel."""
    if spec.family == "sparse_attention":
        return render_attention(spec, config)  # type: ignore[arg-type]
    return render_softmax(spec, config)  # type: ignore[arg-type]
