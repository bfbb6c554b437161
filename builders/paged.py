"""Builder for the paged_attention (decode) op, with layouts in ir/paged_attention_op.py, and numpy
helpers that build a paged, optionally quantized, KV cache from dense K/V for tests and examples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..frontend import Tensor
from ..ir.ops import Op, VerifyError, make
from .common import results


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
    return results(node) if return_lse or return_selection else Tensor(node)


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

