"""The paged_attention op (decode against a paged KV cache): inference, verification and the numpy
reference semantics.

    paged_attention(q, k_pages, v_pages, kv_indptr, kv_indices, kv_last_page_len,
                    [k_scales, v_scales, [k_recent, v_recent]], [kmin, kmax])
        {scale, causal, kv_bits, group_size, recent_window, page_budget, sink_pages, local_pages,
         return_lse, return_selection}

Shapes (FlashInfer's NHD page layout). q is [B, Hq, Sq, D] in f16/bf16 (Sq = 1 for decode, a few for
speculative or chunked decode). Pages are [NP, PS, Hkv, D]; the page table is CSR: sequence b owns
the pages kv_indices[kv_indptr[b]:kv_indptr[b+1]] (i32, kv_indptr [B+1] with kv_indptr[0] = 0 and
kv_indptr[B] = len(kv_indices)), in token order; its last page holds kv_last_page_len[b] (1..PS)
tokens, so its length is L = (pages - 1) * PS + last_page_len (0 for a sequence without pages).
GQA: q head h reads kv head h // (Hq // Hkv). With `causal` the queries are aligned bottom-right:
query row i sits at token position L - Sq + i and sees tokens t <= L - Sq + i.

Quantized KV (`kv_bits` 8 or 4; 16 means pages in q's dtype). Symmetric group-wise along D with
`group_size` G (D % G == 0); k_scales / v_scales are f16/f32 [NP, PS, Hkv, D / G]:
    kv_bits=8: pages i8 [NP, PS, Hkv, D], value = code * scale[d // G]
    kv_bits=4: pages u8 [NP, PS, Hkv, D / 2]; element 2j in the low nibble, 2j + 1 in the high nibble
               of byte j; codes are unsigned with an implicit zero of 8: value = (nibble - 8) * scale.
SKVQ-style recent window (`recent_window` R > 0, quantized KV only): the R most recent tokens of each
sequence (t >= L - R) are read from k_recent / v_recent [B, R, Hkv, D] in q's dtype instead of the
pages, at ring slot t % R (appending token t overwrites slot t % R; no shifting). The quantized pages
at those positions are ignored.

Page selection (LServe; `page_budget` K set). kmin / kmax [NP, Hkv, D] (f16/bf16/f32) are per-page
key minima / maxima. For kv head g and the sequence's logical page p the score is
    s[g, p] = max over the group's query heads h and query rows i of sum_d max(q[h,i,d] kmin[d], q[h,i,d] kmax[d])
(an upper bound on the unscaled logit, shared by the GQA group so K/V pages are read once). The first
`sink_pages` and last `local_pages` pages are always kept (score +inf); the selected set is the K
pages of highest score, ties going to the lower page index (all pages when the sequence has <= K).
Attention then runs over the tokens of selected pages only. K counts the sink and local pages.

Semantics (float64): s = scale * q k^T over the visible tokens, softmax, out = p v. Rows with no
visible token output 0 and lse = -inf. Results: out [B, Hq, Sq, D] in q's dtype; with return_lse
also lse [B, Hq, Sq] f32 (natural log); with return_selection also sel i32 [Hkv, len(kv_indices)]:
sel[g, j] = 1 iff page-table entry j is selected for kv head g.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import dtypes as dt
from .attention_op import attention_scale
from .ops import Node, Op, VerifyError, fmt_shape, register
from .reference import ReferenceEvalError, evaluator, rnd

Q_DTYPES = (dt.f16, dt.bf16)
SCALE_DTYPES = (dt.f16, dt.f32)
KV_BITS = (16, 8, 4)


def operand_names(a: dict[str, Any]) -> list[str]:
    """Operand names in order for normalised attrs `a`."""
    names = ["q", "k_pages", "v_pages", "kv_indptr", "kv_indices", "kv_last_page_len"]
    if a.get("kv_bits", 16) != 16:
        names += ["k_scales", "v_scales"]
        if a.get("recent_window", 0):
            names += ["k_recent", "v_recent"]
    if a.get("page_budget") is not None:
        names += ["kmin", "kmax"]
    return names


def _int_attr(a: dict[str, Any], name: str, default: Any, lo: int) -> Any:
    v = a.get(name, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise VerifyError(f"paged_attention: {name} must be an integer >= {lo}, got {v!r}")
    return v


def _bool_attr(a: dict[str, Any], name: str, default: bool) -> bool:
    v = a.get(name, default)
    if not isinstance(v, bool):
        raise VerifyError(f"paged_attention: {name} must be true or false, got {v!r}")
    return v


def _check_pages(srcs: tuple[Node, ...], bits: int, what: str) -> None:
    """q, the K/V pages for `bits` and the CSR page table."""
    q, kp, vp, indptr, indices, last = srcs[:6]
    b, hq, sq, d = q.shape
    if kp.ndim != 4:
        raise VerifyError(f"{what}: k_pages must be [num_pages, page_size, Hkv, D]")
    npages, ps, hkv, dstore = kp.shape
    want_dt, want_d = {16: (q.dtype, d), 8: (dt.i8, d), 4: (dt.u8, d // 2)}[bits]
    if bits == 4 and d % 2:
        raise VerifyError(f"{what}: kv_bits=4 packs two codes per byte along D; D={d} must be even")
    want = (npages, ps, hkv, want_d)
    for name, x in (("k_pages", kp), ("v_pages", vp)):
        if x.dtype != want_dt or x.shape != want:
            raise VerifyError(f"{what}: {name} is {x.dtype}{fmt_shape(x.shape)}; kv_bits={bits} needs "
                              f"{want_dt}{fmt_shape(want)}")
    if hq % hkv:
        raise VerifyError(f"{what}: q heads {hq} must be a multiple of kv heads {hkv} (GQA)")
    for name, x, shape in (("kv_indptr", indptr, (b + 1,)), ("kv_last_page_len", last, (b,))):
        if x.dtype != dt.i32 or x.shape != shape:
            raise VerifyError(f"{what}: {name} is {x.dtype}{fmt_shape(x.shape)}; want i32{fmt_shape(shape)}")
    if indices.dtype != dt.i32 or indices.ndim != 1:
        raise VerifyError(f"{what}: kv_indices is {indices.dtype}{fmt_shape(indices.shape)}; want i32[nnz_pages]")


def _quantized(srcs: tuple[Node, ...], a: dict[str, Any], rest: list[Node], norm: dict[str, Any], what: str) -> None:
    """group_size, recent_window and their operands (k/v scales, k/v recent) of quantized KV."""
    q, kp = srcs[0], srcs[1]
    b, _, _, d = q.shape
    npages, ps, hkv, _ = kp.shape
    gs = _int_attr(a, "group_size", 32, 1)
    if d % gs:
        raise VerifyError(f"{what}: group_size {gs} must divide D={d}")
    rw = _int_attr(a, "recent_window", 0, 0)
    norm.update(group_size=gs, recent_window=rw)
    if len(rest) < 2:
        raise VerifyError(f"{what}: kv_bits={norm['kv_bits']} needs k_scales and v_scales operands")
    ks, vs = rest.pop(0), rest.pop(0)
    for name, x in (("k_scales", ks), ("v_scales", vs)):
        if x.dtype not in SCALE_DTYPES or x.shape != (npages, ps, hkv, d // gs):
            raise VerifyError(f"{what}: {name} is {x.dtype}{fmt_shape(x.shape)}; want f16/f32"
                              f"{fmt_shape((npages, ps, hkv, d // gs))}")
    if rw:
        if len(rest) < 2:
            raise VerifyError(f"{what}: recent_window={rw} needs k_recent and v_recent operands")
        for name, x in (("k_recent", rest.pop(0)), ("v_recent", rest.pop(0))):
            if x.dtype != q.dtype or x.shape != (b, rw, hkv, d):
                raise VerifyError(f"{what}: {name} is {x.dtype}{fmt_shape(x.shape)}; want "
                                  f"{q.dtype}{fmt_shape((b, rw, hkv, d))}")


def _selection(srcs: tuple[Node, ...], a: dict[str, Any], rest: list[Node], norm: dict[str, Any], what: str) -> None:
    """page_budget, sink_pages, local_pages and the kmin / kmax operands of page selection."""
    npages, _, hkv, _ = srcs[1].shape
    d = srcs[0].shape[3]
    budget = _int_attr(a, "page_budget", None, 1)
    if budget is None:
        if a.get("return_selection"):
            raise VerifyError(f"{what}: return_selection needs page_budget")
        return
    sink, local = _int_attr(a, "sink_pages", 0, 0), _int_attr(a, "local_pages", 1, 0)
    if sink + local > budget:
        raise VerifyError(f"{what}: sink_pages {sink} + local_pages {local} exceed page_budget {budget}")
    if len(rest) < 2:
        raise VerifyError(f"{what}: page_budget needs kmin and kmax operands")
    for name, x in (("kmin", rest.pop(0)), ("kmax", rest.pop(0))):
        if not x.dtype.is_float or x.dtype.bits < 16 or x.dtype.bits > 32 or x.shape != (npages, hkv, d):
            raise VerifyError(f"{what}: {name} is {x.dtype}{fmt_shape(x.shape)}; want f16/bf16/f32"
                              f"{fmt_shape((npages, hkv, d))}")
    norm.update(page_budget=budget, sink_pages=sink, local_pages=local)


@register(Op.PAGED_ATTENTION, (6, 12))
def _infer_paged_attention(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    q, kp, indices = srcs[0], srcs[1], srcs[4]
    what = f"paged_attention of q {q.dtype}{fmt_shape(q.shape)}, k_pages {kp.dtype}{fmt_shape(kp.shape)}"
    if q.ndim != 4 or q.dtype not in Q_DTYPES:
        raise VerifyError(f"{what}: q must be [B, Hq, Sq, D] in f16 or bf16")
    b, hq, sq, d = q.shape
    bits = a.get("kv_bits", 16)
    if bits not in KV_BITS or isinstance(bits, bool):
        raise VerifyError(f"{what}: kv_bits {bits!r} not in {KV_BITS}")
    norm: dict[str, Any] = {"kv_bits": bits, "causal": _bool_attr(a, "causal", True)}
    norm["scale"] = attention_scale(a.get("scale"), d, what)
    _check_pages(srcs, bits, what)
    rest = list(srcs[6:])
    if bits != 16:
        _quantized(srcs, a, rest, norm, what)
    elif a.get("recent_window"):
        raise VerifyError(f"{what}: recent_window applies to quantized KV (kv_bits 8 or 4) only")
    _selection(srcs, a, rest, norm, what)
    if rest:
        raise VerifyError(f"{what}: {len(rest)} unexpected extra operands; expected "
                          f"{', '.join(operand_names(norm))}")
    out_shape = (b, hq, sq, d)
    results: list[tuple[dt.DType, tuple[int, ...]]] = [(q.dtype, out_shape)]
    if _bool_attr(a, "return_lse", False):
        norm["return_lse"] = True
        results.append((dt.f32, (b, hq, sq)))
    if _bool_attr(a, "return_selection", False):
        norm["return_selection"] = True
        results.append((dt.i32, (srcs[1].shape[2], indices.shape[0])))
    if len(results) > 1:
        norm["results"] = tuple(results)
    return q.dtype, out_shape, norm


# ---- reference -------------------------------------------------------------------------------
def seq_lengths(indptr: np.ndarray, last: np.ndarray, page_size: int) -> np.ndarray:
    """Token count of every sequence (0 for one without pages)."""
    npg = np.diff(np.asarray(indptr, dtype=np.int64))
    return np.where(npg > 0, (npg - 1) * page_size + np.asarray(last, dtype=np.int64), 0)


def check_page_table(indptr: Any, indices: Any, last: Any, num_pages: int, page_size: int) -> None:
    """Raise ReferenceEvalError naming the first malformed part of a CSR page table."""
    ip, ix, ll = (np.asarray(x, dtype=np.int64) for x in (indptr, indices, last))
    if ip[0] != 0 or ip[-1] != ix.size or np.any(np.diff(ip) < 0):
        raise ReferenceEvalError(f"paged_attention: kv_indptr {ip.tolist()} must rise from 0 to len(kv_indices)="
                                 f"{ix.size}")
    if ix.size and (ix.min() < 0 or ix.max() >= num_pages):
        raise ReferenceEvalError(f"paged_attention: kv_indices span {ix.min()}..{ix.max()}, outside 0..{num_pages - 1}")
    used = np.diff(ip) > 0
    if np.any(used & ((ll < 1) | (ll > page_size))):
        raise ReferenceEvalError(f"paged_attention: kv_last_page_len {ll.tolist()} must be in 1..{page_size}")


def dequantize_pages(codes: Any, scales: Any, bits: int, group_size: int) -> np.ndarray:
    """Float64 values [NP, PS, Hkv, D] of int8 / packed int4 pages (the layouts in the module doc)."""
    c = np.asarray(codes, dtype=np.int64)
    if bits == 4:
        c = c & 0xFF
        c = np.stack([c & 0xF, c >> 4], axis=-1).reshape(*c.shape[:-1], c.shape[-1] * 2) - 8
    s = np.repeat(np.asarray(scales, dtype=np.float64), group_size, axis=-1)
    return c * s


def select_pages(q: np.ndarray, kmin: np.ndarray, kmax: np.ndarray, budget: int, sink: int,
                 local: int) -> np.ndarray:
    """bool [Hkv, P] selected logical pages of one sequence: q [Hq, Sq, D], kmin/kmax [P, Hkv, D]."""
    hq, sq, d = q.shape
    p, hkv, _ = kmin.shape
    if p <= budget:
        return np.ones((hkv, p), dtype=bool)
    qg = q.reshape(hkv, (hq // hkv) * sq, 1, d)
    lo, hi = kmin.transpose(1, 0, 2)[:, None], kmax.transpose(1, 0, 2)[:, None]
    score = np.maximum(qg * lo, qg * hi).sum(axis=-1).max(axis=1)  # [Hkv, P]
    idx = np.arange(p)
    score[:, (idx < sink) | (idx >= p - local)] = np.inf
    sel = np.zeros((hkv, p), dtype=bool)
    for g in range(hkv):
        order = np.lexsort((idx, -score[g]))  # by score descending, then page index ascending
        sel[g, order[:budget]] = True
    return sel


@evaluator(Op.PAGED_ATTENTION)
def _eval_paged_attention(n: Node, xs: list[Any]) -> Any:
    a = n.attrs
    names = operand_names(a)
    ops = dict(zip(names, xs))
    q = np.asarray(ops["q"], dtype=np.float64)
    b, hq, sq, d = q.shape
    npages, ps, hkv, _ = n.src[1].shape
    group = hq // hkv
    ip = np.asarray(ops["kv_indptr"], dtype=np.int64)
    ix = np.asarray(ops["kv_indices"], dtype=np.int64)
    check_page_table(ip, ix, ops["kv_last_page_len"], npages, ps)
    lens = seq_lengths(ip, ops["kv_last_page_len"], ps)
    bits = a["kv_bits"]
    if bits == 16:
        kpg, vpg = (np.asarray(ops[k], dtype=np.float64) for k in ("k_pages", "v_pages"))
    else:
        kpg = dequantize_pages(ops["k_pages"], ops["k_scales"], bits, a["group_size"])
        vpg = dequantize_pages(ops["v_pages"], ops["v_scales"], bits, a["group_size"])
    rw = a.get("recent_window", 0)
    budget = a.get("page_budget")
    out = np.zeros((b, hq, sq, d))
    lse = np.full((b, hq, sq), -np.inf)
    sel_out = np.zeros((hkv, ix.size), dtype=np.int64)
    for bi in range(b):
        pages = ix[ip[bi]:ip[bi + 1]]
        length = int(lens[bi])
        t = np.arange(length)
        k = kpg[pages[t // ps], t % ps]  # [L, Hkv, D]
        v = vpg[pages[t // ps], t % ps]
        if rw:
            rec = t >= length - rw
            k[rec] = np.asarray(ops["k_recent"], dtype=np.float64)[bi, t[rec] % rw]
            v[rec] = np.asarray(ops["v_recent"], dtype=np.float64)[bi, t[rec] % rw]
        keep = np.ones((hkv, length), dtype=bool)
        if budget is not None:
            kmin = np.asarray(ops["kmin"], dtype=np.float64)[pages]
            kmax = np.asarray(ops["kmax"], dtype=np.float64)[pages]
            sel = select_pages(q[bi], kmin, kmax, budget, a["sink_pages"], a["local_pages"])
            sel_out[:, ip[bi]:ip[bi + 1]] = sel
            keep = sel[:, t // ps]
        kh = np.repeat(k.transpose(1, 0, 2), group, axis=0)  # [Hq, L, D]
        vh = np.repeat(v.transpose(1, 0, 2), group, axis=0)
        s = a["scale"] * np.einsum("hqd,hkd->hqk", q[bi], kh)
        vis = np.repeat(keep, group, axis=0)[:, None, :]
        if a["causal"]:
            vis = vis & (t[None, None, :] <= (length - sq + np.arange(sq))[None, :, None])
        s = np.where(vis, s, -np.inf)
        m = s.max(axis=-1, keepdims=True) if length else np.full((hq, sq, 1), -np.inf)
        live = np.isfinite(m)
        p = np.exp(s - np.where(live, m, 0.0))
        den = np.where(live, p.sum(axis=-1, keepdims=True), 1.0)
        out[bi] = np.where(live, np.einsum("hqk,hkd->hqd", p, vh) / den, 0.0)
        lse[bi] = np.where(live, m + np.log(den), -np.inf)[..., 0]
    res: list[np.ndarray] = [rnd(out, n.dtype)]
    if a.get("return_lse"):
        res.append(rnd(lse, dt.f32))
    if a.get("return_selection"):
        res.append(sel_out)
    return tuple(res) if len(res) > 1 else res[0]
