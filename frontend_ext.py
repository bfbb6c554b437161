"""Friendly builders for the later-issue ops: attention (+ mask helpers), dequantize, sparse, splatting.

Mask helpers return bool `Expr`s over the VARs b, h, q_idx, kv_idx (i32) for `attention(mask_mod=...)`;
combine them with `&`, `|` and `~`. Helpers reading a tensor take the operand index it will have
in the attention node: q, k, v are 0, 1, 2 and `extra` tensors follow from 3.
`softmax_threshold` builds a post_mod (an f32 Expr over VAR `p`, the softmax probability).
Queries are aligned bottom-right when Sq != Sk: query i sits at key position i + (Sk - Sq).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .frontend import Tensor
from .ir import dtypes as dt
from .ir import expr as ex
from .ir.expr import Expr, ExprLike
from .ir.ops import Op, VerifyError, make, results_of

# bitsandbytes' NF4 code book (QLoRA), indexed by the 4-bit code.
NF4_CODEBOOK = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0)
# AWQ int4-in-int32: the sub-word slot of logical element j (slot i holds element (0,2,4,6,1,3,5,7)[i]).
AWQ_PACK_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


def _v(name: str) -> Expr:
    return ex.var(name, dt.i32)


def _q_abs(sq: int, sk: int) -> Expr:
    """The key position of query row q_idx under bottom-right alignment."""
    return _v("q_idx") + (sk - sq) if sk != sq else _v("q_idx")


# ---- attention masks -------------------------------------------------------------------------
def causal_mask(sq: int, sk: int) -> Expr:
    """kv_idx <= q_idx + (Sk - Sq): causal, bottom-right aligned."""
    return _v("kv_idx").le(_q_abs(sq, sk))


def sliding_window_mask(window: int, sq: int, sk: int) -> Expr:
    """Causal and within the `window` most recent keys, the query's own position included:
    q_pos - window < kv_idx <= q_pos."""
    q = _q_abs(sq, sk)
    return causal_mask(sq, sk) & _v("kv_idx").gt(q - window)


def streaming_mask(sink: int, local: int, sq: int, sk: int) -> Expr:
    """StreamingLLM / LServe streaming heads: causal and (kv_idx < sink or in the `local` window)."""
    return causal_mask(sq, sk) & (_v("kv_idx").lt(sink) | _v("kv_idx").gt(_q_abs(sq, sk) - local))


def strided_mask(stride: int, offset: ExprLike, sq: int, sk: int, local: int = 0) -> Expr:
    """LongGen / S2-Attention strided heads: causal and (kv_idx % stride == offset, or within the
    `local` most recent keys). `offset` may be an Expr (e.g. a per-head shift `h % stride`)."""
    hit = (_v("kv_idx") % stride).eq(offset)
    if local > 0:
        hit = hit | _v("kv_idx").gt(_q_abs(sq, sk) - local)
    return causal_mask(sq, sk) & hit


def per_head_mask(head_masks: Sequence[Expr]) -> Expr:
    """Head h uses head_masks[h]; runs of equal masks become one `where(h < end, ...)` branch."""
    if not head_masks:
        raise VerifyError("per_head_mask: needs one mask per head, got none")
    runs: list[tuple[int, Expr]] = []  # (end head, mask)
    for h, m in enumerate(head_masks):
        if runs and runs[-1][1] is m:
            runs[-1] = (h + 1, m)
        else:
            runs.append((h + 1, m))
    out = runs[-1][1]
    for end, m in reversed(runs[:-1]):
        out = ex.where(_v("h").lt(end), m, out)
    return out


def _batch_head(t: Tensor) -> tuple[ExprLike, ExprLike]:
    return (0 if t.shape[0] == 1 else _v("b")), (0 if t.shape[1] == 1 else _v("h"))


def _truth(e: Expr) -> Expr:
    return e if e.dtype.is_bool else e.ne(0)


def block_mask(operand: int, mask: Tensor, bq: int, bk: int) -> Expr:
    """A bool/u8 block mask [B|1, H|1, ceil(Sq/bq), ceil(Sk/bk)] read at (b, h, q_idx//bq, kv_idx//bk)."""
    b, h = _batch_head(mask)
    return _truth(ex.load(operand, mask.dtype, b, h, _v("q_idx") // bq, _v("kv_idx") // bk))


def topk_block_mask(operand: int, index: Tensor, bq: int, bk: int) -> Expr:
    """Top-k block index lists [B|1, H|1, nqblocks, K] (i32 kv block ids, -1 = padding): true iff
    kv_idx // bk is among the K ids of the query's block (an OR over the K loads)."""
    b, h = _batch_head(index)
    kvb = _v("kv_idx") // bk
    qb = _v("q_idx") // bq
    hits = [ex.load(operand, index.dtype, b, h, qb, j).eq(kvb) for j in range(index.shape[3])]
    out = hits[0]
    for e in hits[1:]:
        out = out | e
    return out


def document_mask(operand: int, doc_id: Tensor) -> Expr:
    """Varlen / packed documents: doc_id[q_idx] == doc_id[kv_idx] for an i32 doc_id [S] (Sq == Sk)."""
    return ex.load(operand, doc_id.dtype, _v("q_idx")).eq(ex.load(operand, doc_id.dtype, _v("kv_idx")))


def softcap_score(cap: float) -> Expr:
    """score_mod for logit soft-capping: cap * tanh(score / cap)."""
    s = ex.var("score", dt.f32)
    return ex.tanh(s * (1.0 / cap)) * cap


def softmax_threshold(tau: float) -> Expr:
    """post_mod for SATA-style score thresholding: keep the probability p where p >= tau, else 0
    (not renormalised: kept rows sum to at most 1)."""
    p = ex.var("p", dt.f32)
    return ex.where(p.ge(float(tau)), p, 0.0)


def _results(node: Any) -> tuple[Tensor, ...]:
    return tuple(Tensor(make(Op.RESULT, [node], index=i)) for i in range(len(results_of(node))))


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, mask_mod: Expr | None = None,
              score_mod: Expr | None = None, extra: Sequence[Tensor] = (), return_lse: bool = False,
              post_mod: Expr | None = None) -> Any:
    """post_mod(softmax(scale q k^T (score_mod, masked))) v (post_mod: an f32 Expr over VAR `p`, see
    `softmax_threshold`; not renormalised); returns out, or (out, lse) with return_lse."""
    kw: dict[str, Any] = {"return_lse": return_lse}
    if scale is not None:
        kw["scale"] = float(scale)
    if mask_mod is not None:
        kw["mask_mod"] = mask_mod
    if score_mod is not None:
        kw["score_mod"] = score_mod
    if post_mod is not None:
        kw["post_mod"] = post_mod
    node = make(Op.ATTENTION, [q.node, k.node, v.node, *(t.node for t in extra)], **kw)
    return _results(node) if return_lse else Tensor(node)


# ---- dequantize ----------------------------------------------------------------------------------
def dequantize(packed: Tensor, scales: Tensor, zeros: Tensor | None = None, *, shape: Sequence[int],
               bits: int = 4, group_size: Any = 128, scale_layout: str = "group_k", out_dtype: str = "f16",
               pack_axis: int = 1, pack_order: Sequence[int] | None = None, signed: bool = False,
               codebook: Sequence[float] | None = None, zeros_packed: bool = False,
               zero_layout: str | None = None, double_quant: tuple[Tensor, Tensor] | None = None,
               dq_block: int = 256, scale_codebook: Sequence[float] | None = None) -> Tensor:
    """The general dequantize op (see ir/quant_op.py); symmetric iff `zeros` is None.
    `double_quant=(scales2, offset)` makes `scales` level-2 quantized codes."""
    kw: dict[str, Any] = {"shape": tuple(shape), "bits": bits, "group_size": group_size,
                          "scale_layout": scale_layout, "out_dtype": dt.dtype(out_dtype),
                          "symmetric": zeros is None}
    if packed.dtype not in (dt.f8e4m3, dt.f8e5m2):
        kw.update(pack_axis=pack_axis, signed=signed)
        if pack_order is not None:
            kw["pack_order"] = tuple(pack_order)
    if codebook is not None:
        kw["codebook"] = tuple(codebook)
    srcs = [packed.node, scales.node]
    if zeros is not None:
        srcs.append(zeros.node)
        kw.update(zeros_packed=zeros_packed, zero_layout=zero_layout or scale_layout)
    if double_quant is not None:
        srcs += [double_quant[0].node, double_quant[1].node]
        kw.update(double_quant=True, dq_block=dq_block)
        if scale_codebook is not None:
            kw["scale_codebook"] = tuple(scale_codebook)
    return Tensor(make(Op.DEQUANTIZE, srcs, **kw))


def dequantize_awq(qweight: Tensor, qzeros: Tensor, scales: Tensor, group_size: int = 128) -> Tensor:
    """AWQ W4: qweight i32 [K, N/8], qzeros i32 [K/G, N/8], scales [K/G, N]; w = (q - z) * s."""
    k, n8 = qweight.shape
    return dequantize(qweight, scales, qzeros, shape=(k, n8 * 8), bits=4, group_size=group_size,
                      pack_order=AWQ_PACK_ORDER, zeros_packed=True, out_dtype=str(scales.dtype))


def dequantize_nf4(packed: Tensor, absmax_codes: Tensor, absmax2: Tensor, offset: Tensor, shape: Sequence[int],
                   block: int = 64, dq_block: int = 256, scale_codebook: Sequence[float] | None = None,
                   out_dtype: str = "bf16") -> Tensor:
    """QLoRA NF4: u8 [K, N/2] codes (first element in the high nibble), blocks of `block` along N,
    absmax stored as u8 codes with an f32 level-2 scale per `dq_block` and an offset."""
    return dequantize(packed, absmax_codes, shape=shape, bits=4, group_size=block, scale_layout="group_n",
                      pack_order=(1, 0), codebook=NF4_CODEBOOK, double_quant=(absmax2, offset),
                      dq_block=dq_block, scale_codebook=scale_codebook, out_dtype=out_dtype)


def dequantize_fp8_block(w: Tensor, scales: Tensor, block: int = 128, out_dtype: str = "bf16") -> Tensor:
    """FP8 e4m3 [K, N] with one f32 scale per block x block tile ([ceil(K/b), ceil(N/b)])."""
    return dequantize(w, scales, shape=w.shape, bits=8, group_size=block, scale_layout="block",
                      out_dtype=out_dtype)


# ---- sparse ------------------------------------------------------------------------------------------
def sparse_csr(indptr: Tensor, indices: Tensor, values: Tensor, shape: Sequence[int]) -> Tensor:
    """A CSR sparse tensor of dense shape [M, K]."""
    return Tensor(make(Op.SPARSE, [indptr.node, indices.node, values.node], format="csr", shape=tuple(shape)))


def sparse_bsr(indptr: Tensor, indices: Tensor, values: Tensor, shape: Sequence[int],
               block: Sequence[int]) -> Tensor:
    """A BSR sparse tensor: values [nnzb, bm, bn], dense shape [M, K]."""
    return Tensor(make(Op.SPARSE, [indptr.node, indices.node, values.node], format="bsr", shape=tuple(shape),
                       block=tuple(block)))


def sparse_24(values: Tensor, meta: Tensor) -> Tensor:
    """A 2:4 semi-structured tensor: values [M, K/2], meta [M, K/2] (positions 0..3 in each group of 4)."""
    m, half = values.shape
    return Tensor(make(Op.SPARSE, [values.node, meta.node], format="2:4", shape=(m, 2 * half)))


def spmm(a: Tensor, b: Tensor, out_dtype: str | None = None) -> Tensor:
    """Sparse [M, K] @ dense [K, N] -> dense [M, N]."""
    kw = {} if out_dtype is None else {"out_dtype": dt.dtype(out_dtype)}
    return Tensor(make(Op.SPMM, [a.node, b.node], **kw))


def sddmm(a: Tensor, b: Tensor, pattern: Tensor, out_dtype: str | None = None, as_sparse: bool = False) -> Tensor:
    """(a @ b^T) at the nonzeros of `pattern`: a values array shaped like the pattern's values, or
    with as_sparse=True a sparse tensor with the pattern's structure and those values."""
    if pattern.node.op is not Op.SPARSE:
        raise VerifyError(f"sddmm: pattern must be a sparse tensor, got {pattern.node.op.value}")
    kw = {} if out_dtype is None else {"out_dtype": dt.dtype(out_dtype)}
    vals = make(Op.SDDMM, [a.node, b.node, pattern.node], **kw)
    if not as_sparse:
        return Tensor(vals)
    p = pattern.node
    srcs = [vals, p.src[1]] if p.attr("format") == "2:4" else [p.src[0], p.src[1], vals]
    return Tensor(make(Op.SPARSE, srcs, **p.attrs))


# ---- gaussian splatting ------------------------------------------------------------------------------
def project_gaussians(means3d: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor, viewmat: Tensor,
                      intrinsics: Tensor, width: int, height: int, camera: str = "pinhole", near: float = 0.01,
                      far: float = 1e10, eps2d: float = 0.3) -> tuple[Tensor, ...]:
    """EWA projection (gsplat convention) -> (means2d, conics, depths, radii)."""
    node = make(Op.PROJECT_GAUSSIANS, [t.node for t in (means3d, scales, quats, opacities, viewmat, intrinsics)],
                width=width, height=height, camera=camera, near=float(near), far=float(far), eps2d=float(eps2d))
    return _results(node)


def rasterize_gaussians(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, depths: Tensor,
                        radii: Tensor, width: int, height: int, tile: int = 16,
                        background: Sequence[float] | None = None, pixel_center: float = 0.5) -> tuple[Tensor, ...]:
    """Front-to-back alpha compositing (the Inria rules) -> (image [H, W, C], final_T [H, W])."""
    bg = tuple(float(x) for x in background) if background is not None else (0.0,) * colors.shape[1]
    node = make(Op.RASTERIZE_GAUSSIANS, [t.node for t in (means2d, conics, colors, opacities, depths, radii)],
                width=width, height=height, tile=tile, background=bg, pixel_center=float(pixel_center))
    return _results(node)


# ---- paged attention (decode) ------------------------------------------------------------------------
# Builder for the paged_attention op (layouts in ir/paged_attention_op.py) and numpy helpers that
# build a paged, optionally quantized, KV cache from dense K/V for tests and examples.
def paged_attention(q: Tensor, k_pages: Tensor, v_pages: Tensor, kv_indptr: Tensor, kv_indices: Tensor,
                    kv_last_page_len: Tensor, *, scale: float | None = None, causal: bool = True, kv_bits: int = 16,
                    scales: tuple[Tensor, Tensor] | None = None, group_size: int = 32,
                    recent: tuple[Tensor, Tensor] | None = None, page_budget: int | None = None,
                    sink_pages: int = 0, local_pages: int = 1, summaries: tuple[Tensor, Tensor] | None = None,
                    return_lse: bool = False, return_selection: bool = False) -> Any:
    """Decode attention against a paged KV cache; `scales=(k_scales, v_scales)` for kv_bits 8/4,
    `recent=(k_recent, v_recent)` for an f16 recent window, `summaries=(kmin, kmax)` with page_budget.
    Returns out, or a tuple (out, [lse], [selection]) when either extra result is asked for."""
    srcs = [t.node for t in (q, k_pages, v_pages, kv_indptr, kv_indices, kv_last_page_len)]
    kw: dict[str, Any] = {"causal": causal, "kv_bits": kv_bits, "return_lse": return_lse,
                          "return_selection": return_selection}
    if scale is not None:
        kw["scale"] = float(scale)
    if kv_bits != 16:
        if scales is None:
            raise VerifyError(f"paged_attention: kv_bits={kv_bits} needs scales=(k_scales, v_scales)")
        srcs += [scales[0].node, scales[1].node]
        kw["group_size"] = group_size
        if recent is not None:
            srcs += [recent[0].node, recent[1].node]
            kw["recent_window"] = recent[0].shape[1]
    if page_budget is not None:
        if summaries is None:
            raise VerifyError("paged_attention: page_budget needs summaries=(kmin, kmax)")
        srcs += [summaries[0].node, summaries[1].node]
        kw.update(page_budget=page_budget, sink_pages=sink_pages, local_pages=local_pages)
    node = make(Op.PAGED_ATTENTION, srcs, **kw)
    return _results(node) if return_lse or return_selection else Tensor(node)


def paginate(k: Any, v: Any, page_size: int, rng: Any, lengths: Sequence[int] | None = None,
             spare_pages: int = 2) -> tuple[Any, ...]:
    """Dense k, v [B, Hkv, S, D] (sequence b holds lengths[b] tokens) -> (k_pages, v_pages [NP, PS, Hkv, D],
    kv_indptr, kv_indices, kv_last_page_len) with page ids shuffled by `rng`; slots past a sequence's
    end and `spare_pages` unused pages are NaN, so a kernel reading them fails."""
    import numpy as np

    k, v = np.asarray(k), np.asarray(v)
    b, hkv, s, d = k.shape
    lens = [s] * b if lengths is None else [int(x) for x in lengths]
    counts = [-(-n // page_size) for n in lens]
    total = sum(counts) + spare_pages
    ids = rng.permutation(total).astype(np.int32)
    kp = np.full((total, page_size, hkv, d), np.nan, dtype=k.dtype)
    vp = np.full((total, page_size, hkv, v.shape[3]), np.nan, dtype=v.dtype)
    indptr = np.zeros(b + 1, dtype=np.int32)
    indptr[1:] = np.cumsum(counts)
    indices = ids[: indptr[-1]]
    last = np.array([n - (c - 1) * page_size if c else 1 for n, c in zip(lens, counts)], dtype=np.int32)
    for bi, n in enumerate(lens):
        for t in range(n):
            page = indices[indptr[bi] + t // page_size]
            kp[page, t % page_size] = k[bi, :, t]
            vp[page, t % page_size] = v[bi, :, t]
    return kp, vp, indptr, indices, last


def quantize_kv(pages: Any, bits: int, group_size: int, scale_dtype: Any = None) -> tuple[Any, Any]:
    """Symmetric group-wise quantization of float pages [NP, PS, Hkv, D] -> (codes, scales): int8 codes,
    or int4 packed two per byte (element 2j low nibble, zero 8). NaN slots quantize to code 0 with scale
    NaN (never read). Scales are rounded to `scale_dtype` (default f16) before the codes are chosen."""
    import numpy as np

    x = np.asarray(pages, dtype=np.float64)
    np_, ps, hkv, d = x.shape
    g = x.reshape(np_, ps, hkv, d // group_size, group_size)
    qmax = 127 if bits == 8 else 7
    with np.errstate(invalid="ignore"):
        s = np.abs(g).max(axis=-1) / qmax
    s = np.where(s == 0, 1.0, s).astype(scale_dtype or np.float16)
    sf = s.astype(np.float64)[..., None]
    codes = np.clip(np.rint(np.nan_to_num(g / sf)), -qmax - (bits == 4), qmax).reshape(np_, ps, hkv, d)
    if bits == 8:
        return codes.astype(np.int8), s
    nib = (codes + 8).astype(np.uint8)
    return (nib[..., 0::2] | (nib[..., 1::2] << 4)).astype(np.uint8), s


def page_summaries(k_pages: Any, kv_indptr: Any, kv_indices: Any, kv_last_page_len: Any) -> tuple[Any, Any]:
    """Per-page key (min, max) [NP, Hkv, D] f32 over each page's valid tokens (0 for unused pages)."""
    import numpy as np

    k = np.asarray(k_pages, dtype=np.float32)
    np_, ps, hkv, d = k.shape
    kmin = np.zeros((np_, hkv, d), dtype=np.float32)
    kmax = np.zeros((np_, hkv, d), dtype=np.float32)
    for b in range(len(kv_indptr) - 1):
        pages = kv_indices[kv_indptr[b]:kv_indptr[b + 1]]
        for j, page in enumerate(pages):
            n = int(kv_last_page_len[b]) if j == len(pages) - 1 else ps
            kmin[page], kmax[page] = k[page, :n].min(axis=0), k[page, :n].max(axis=0)
    return kmin, kmax


def recent_cache(k: Any, lengths: Sequence[int], window: int) -> Any:
    """The ring-buffer recent window [B, R, Hkv, D] of dense k [B, Hkv, S, D]: token t of sequence b
    (t >= lengths[b] - R) at slot t % R; slots never written are NaN."""
    import numpy as np

    k = np.asarray(k)
    b, hkv, _, d = k.shape
    out = np.full((b, window, hkv, d), np.nan, dtype=k.dtype)
    for bi, n in enumerate(lengths):
        for t in range(max(0, n - window), n):
            out[bi, t % window] = k[bi, :, t]
    return out


# ---- attention backward ------------------------------------------------------------------------------
# Builder for the attention_bwd op (ir/attention_bwd_op.py): gradients of `attention`.
def attention_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dout: Tensor, lse: Tensor, *,
                       scale: float | None = None, mask_mod: Expr | None = None, score_mod: Expr | None = None,
                       extra: Sequence[Tensor] = ()) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of `attention(q, k, v, scale, mask_mod, score_mod, extra, return_lse=True) -> (out, lse)`
    given dout. mask_mod / score_mod are the forward's expressions (extras from operand 3); their loads
    are renumbered to the backward's operands (extras from 6). score_mod must be differentiable in the
    score (softcap, scales, where(...) of differentiable branches, additive biases)."""
    from .ir.attention_bwd_op import shift_loads

    for t in (out, lse):  # results of the forward node: its post-softmax expression has no backward here
        fwd = t.node.src[0] if t.node.op is Op.RESULT else t.node
        if fwd.op is Op.ATTENTION and fwd.attr("post_mod") is not None:
            raise VerifyError("attention backward does not support post-softmax expressions (the forward "
                              "attention has a post_mod); differentiate an attention without post_mod")
    kw: dict[str, Any] = {}
    if scale is not None:
        kw["scale"] = float(scale)
    if mask_mod is not None:
        kw["mask_mod"] = shift_loads(mask_mod, 3)
    if score_mod is not None:
        kw["score_mod"] = shift_loads(score_mod, 3)
    srcs = [t.node for t in (q, k, v, out, dout, lse, *extra)]
    dq, dk, dv = _results(make(Op.ATTENTION_BWD, srcs, **kw))
    return dq, dk, dv
