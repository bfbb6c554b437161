"""Triton template of the decode family (paged_attention): the split-KV main kernel and the
log-sum-exp reduction kernel. Shapes and attributes are baked in as literals; BLOCK_N and
KV_SPLITS are constexpr arguments."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ...schedule.config import Config
from ...codegen.triton_expr import tl_type
from ...ir import dtypes as dt
from ...codegen.headers import header

if TYPE_CHECKING:
    from .decode_spec import DecodeSpec

I1, I2, I3, I4 = "    ", "        ", "            ", "                "
LN2 = math.log(2.0)
SCAN_BLOCK = 256  # pages per block of the selection threshold scans


def _prelude(s: DecodeSpec, L: list[str]) -> None:
    """Program ids -> (b, kv head), the group's query rows and the sequence's page range."""
    L += [f"{I1}pid = tl.program_id(0)",
          f"{I1}b = pid // {s.HKV}",
          f"{I1}kvh = pid % {s.HKV}",
          f"{I1}rows = tl.arange(0, {s.block_m})",
          f"{I1}dd = tl.arange(0, {s.block_d})",
          f"{I1}row_ok = rows < {s.M}",
          f"{I1}d_ok = dd < {s.D}",
          f"{I1}qi = rows % {s.SQ}",
          f"{I1}q_row = (b * {s.HQ} + kvh * {s.G} + rows // {s.SQ}) * {s.SQ} + qi",
          f"{I1}rd_mask = row_ok[:, None] & d_ok[None, :]"]


def _seq(s: DecodeSpec, L: list[str]) -> None:
    a = s.args
    L += [f"{I1}start = tl.load({a['kv_indptr']} + b)",
          f"{I1}npages = tl.load({a['kv_indptr']} + b + 1) - start",
          f"{I1}seq_len = tl.where(npages > 0, (npages - 1) * {s.PS} + tl.load({a['kv_last_page_len']} + b), 0)"]


def _key(ind: str, out: str, score: str, idx: str) -> list[str]:
    """Lines computing `out`: a non-negative i64 key ordering pages by score (f32 bits made monotone),
    then by lower page index (31 bits)."""
    return [f"{ind}sbits = ({score}).to(tl.int32, bitcast=True)",
            f"{ind}{out} = ((sbits ^ ((sbits >> 31) & 0x7FFFFFFF)).to(tl.int64) + 2147483648) * 2147483648 "
            f"+ (2147483647 - ({idx}))"]


def _selection(s: DecodeSpec, L: list[str], sel_out: bool, lay: dict[str, int]) -> None:
    """Score every page of the sequence for this kv head, then find the budget-th largest key `thr`."""
    a, at = s.args, s.attrs
    # scoring holds two [bs, D] summary tiles; the threshold scans only read scores
    bs = min(max(1, 2048 // s.block_d), next_pow2_int(s.NNZ))
    bp = min(SCAN_BLOCK, next_pow2_int(s.NNZ))
    L += [f"{I1}sc_base = ws + {lay['scores']} + kvh * {s.NNZ} + start",
          f"{I1}for p0 in range(0, npages, {bs}):",
          f"{I2}pp = p0 + tl.arange(0, {bs})",
          f"{I2}pok = pp < npages",
          f"{I2}pg = tl.load({a['kv_indices']} + start + pp, mask=pok, other=0).to(tl.int64)",
          f"{I2}soff = (pg * {s.HKV} + kvh)[:, None] * {s.D} + dd[None, :]",
          f"{I2}smask = pok[:, None] & d_ok[None, :]",
          f"{I2}lo = tl.load({a['kmin']} + soff, mask=smask, other=0.0).to(tl.float32)",
          f"{I2}hi = tl.load({a['kmax']} + soff, mask=smask, other=0.0).to(tl.float32)",
          f"{I2}best = tl.full([{bs}], float('-inf'), tl.float32)",
          f"{I2}for r in range({s.M}):",
          f"{I3}qoff = ((b * {s.HQ} + kvh * {s.G} + r // {s.SQ}) * {s.SQ} + r % {s.SQ}) * {s.D}",
          f"{I3}qr = tl.load({a['q']} + qoff + dd, mask=d_ok, other=0.0).to(tl.float32)",
          f"{I3}best = tl.maximum(best, tl.sum(tl.maximum(qr[None, :] * lo, qr[None, :] * hi), 1))",
          f"{I2}forced = (pp < {at['sink_pages']}) | (pp >= npages - {at['local_pages']})",
          f"{I2}best = tl.where(forced, float('inf'), best)",
          f"{I2}tl.store(sc_base + pp, best, mask=pok)",
          f"{I1}tl.debug_barrier()",
          f"{I1}thr = tl.program_id(0).to(tl.int64) * 0",
          f"{I1}if npages > {at['page_budget']}:",
          f"{I2}step = thr + 4611686018427387904",
          f"{I2}for _it in range(63):",
          f"{I3}cand = thr + step",
          f"{I3}cnt = tl.program_id(0) * 0",
          f"{I3}for p0 in range(0, npages, {bp}):",
          f"{I4}pp = p0 + tl.arange(0, {bp})",
          f"{I4}pok = pp < npages",
          *_key(I4, "key", "tl.load(sc_base + pp, mask=pok, other=0.0)", "pp"),
          f"{I4}cnt += tl.sum(((key >= cand) & pok).to(tl.int32), 0)",
          f"{I3}thr = tl.where(cnt >= {at['page_budget']}, cand, thr)",
          f"{I3}step = step // 2"]
    if sel_out:
        L += [f"{I1}if tl.program_id(1) == 0:",
              f"{I2}for p0 in range(0, npages, {bp}):",
              f"{I3}pp = p0 + tl.arange(0, {bp})",
              f"{I3}pok = pp < npages",
              *_key(I3, "key", "tl.load(sc_base + pp, mask=pok, other=0.0)", "pp"),
              f"{I3}tl.store({a['sel']} + kvh * {s.NNZ} + start + pp, (key >= thr).to(tl.int32), mask=pok)"]


def next_pow2_int(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _load_kv(s: DecodeSpec, L: list[str], which: str, op_t: str, ind: str) -> str:
    """Lines loading the [BLOCK_N, BLOCK_D] tile of K or V (`which`) for tokens `tok`; returns its name."""
    a = s.args
    pages, name = a[f"{which}_pages"], f"{which}t"
    m = "tok_ok[:, None] & d_ok[None, :]"
    if s.bits == 16:
        L.append(f"{ind}{name} = tl.load({pages} + slot[:, None] * {s.D} + dd[None, :], mask={m}, other=0.0)")
        if op_t != tl_type(s.dtype):
            L.append(f"{ind}{name} = {name}.to({op_t})")
        return name
    rw = s.attrs.get("recent_window", 0)
    gs = s.attrs["group_size"]
    if rw:
        m = "(tok_ok & ~is_rec)[:, None] & d_ok[None, :]"
    if s.bits == 8:
        L.append(f"{ind}{name}c = tl.load({pages} + slot[:, None] * {s.D} + dd[None, :], mask={m}, other=0)"
                 ".to(tl.float32)")
    else:
        L += [f"{ind}{name}b = tl.load({pages} + slot[:, None] * {s.D // 2} + dd[None, :] // 2, mask={m}, "
              "other=0).to(tl.int32)",
              f"{ind}{name}c = (({name}b >> ((dd[None, :] % 2) * 4)) & 15).to(tl.float32) - 8.0"]
    L += [f"{ind}{name}s = tl.load({a[f'{which}_scales']} + slot[:, None] * {s.D // gs} + dd[None, :] // {gs}, "
          f"mask={m}, other=0.0).to(tl.float32)",
          f"{ind}{name} = ({name}c * {name}s).to({op_t})"]
    if rw:
        L += [f"{ind}{name}r = tl.load({a[f'{which}_recent']} + ((b * {rw} + tok % {rw}) * {s.HKV} + kvh)[:, None] "
              f"* {s.D} + dd[None, :], mask=(tok_ok & is_rec)[:, None] & d_ok[None, :], other=0.0)",
              f"{ind}{name} = tl.where(is_rec[:, None], {name}r.to({op_t}), {name})"]
    return name


def _main(s: DecodeSpec, interpret: bool, args: list[str], L: list[str], lay: dict[str, int]) -> None:
    a, at = s.args, s.attrs
    # The Triton interpreter computes bf16 dots wrongly (triton 3.6): widen them to f32 there.
    op_t = "tl.float32" if interpret and s.dtype == dt.bf16 else tl_type(s.dtype)
    precision = ', input_precision="ieee"' if op_t == "tl.float32" else ""
    L += ["@triton.jit", f"def {s.name}({', '.join(args)}, BLOCK_N: tl.constexpr, KV_SPLITS: tl.constexpr):"]
    _prelude(s, L)
    _seq(s, L)
    L += [f"{I1}q = tl.load({a['q']} + q_row[:, None] * {s.D} + dd[None, :], mask=rd_mask, other=0.0)"
          + (f".to({op_t})" if op_t != tl_type(s.dtype) else ""),
          f"{I1}q_pos = seq_len - {s.SQ} + qi",
          f"{I1}pps = tl.cdiv(npages, KV_SPLITS)",
          f"{I1}t_lo = tl.program_id(1) * pps * {s.PS}",
          f"{I1}t_hi = tl.minimum(t_lo + pps * {s.PS}, seq_len)"]
    if s.select:
        _selection(s, L, "sel" in a, lay)
    L += [f"{I1}m_i = tl.full([{s.block_m}], float('-inf'), tl.float32)",
          f"{I1}l_i = tl.zeros([{s.block_m}], tl.float32)",
          f"{I1}acc = tl.zeros([{s.block_m}, {s.block_d}], tl.float32)",
          f"{I1}for t0 in range(t_lo, t_hi, BLOCK_N):",
          f"{I2}tok = t0 + tl.arange(0, BLOCK_N)",
          f"{I2}tok_ok = tok < t_hi"]
    ind = I2
    if s.select:
        L += _key(I2, "key", f"tl.load(sc_base + tok // {s.PS}, mask=tok_ok, other=0.0)", f"tok // {s.PS}")
        L += [f"{I2}tok_ok = tok_ok & (key >= thr)",
              f"{I2}if tl.sum(tok_ok.to(tl.int32), 0) > 0:"]
        ind = I3
    L += [f"{ind}page = tl.load({a['kv_indices']} + start + tok // {s.PS}, mask=tok_ok, other=0).to(tl.int64)",
          f"{ind}slot = (page * {s.PS} + tok % {s.PS}) * {s.HKV} + kvh"]
    if at.get("recent_window"):
        L.append(f"{ind}is_rec = tok >= seq_len - {at['recent_window']}")
    kt = _load_kv(s, L, "k", op_t, ind)
    vis = "row_ok[:, None] & tok_ok[None, :]"
    if at["causal"]:
        vis += " & (tok[None, :] <= q_pos[:, None])"
    L += [f"{ind}sc = tl.dot(q, tl.trans({kt}){precision}) * {at['scale'] / LN2!r}",
          f"{ind}sc = tl.where({vis}, sc, float('-inf'))",
          f"{ind}m_new = tl.maximum(m_i, tl.max(sc, 1))",
          f"{ind}m_use = tl.where(m_new == float('-inf'), 0.0, m_new)",
          f"{ind}alpha = tl.exp2(m_i - m_use)",
          f"{ind}p = tl.exp2(sc - m_use[:, None])",
          f"{ind}l_i = l_i * alpha + tl.sum(p, 1)"]
    vt = _load_kv(s, L, "v", op_t, ind)
    L += [f"{ind}acc = acc * alpha[:, None] + tl.dot(p.to({op_t}), {vt}{precision})",
          f"{ind}m_i = m_new",
          f"{I1}l_safe = tl.where(l_i == 0.0, 1.0, l_i)",
          f"{I1}o = acc / l_safe[:, None]",
          f"{I1}lse2 = tl.where(l_i == 0.0, float('-inf'), m_i + tl.log2(l_safe))",
          f"{I1}if KV_SPLITS == 1:"]
    _store(s, L, I2, "o", "lse2")
    if lay["total"]:
        L += [f"{I1}else:",
              f"{I2}part = (pid * KV_SPLITS + tl.program_id(1)) * {s.M} + rows",
              f"{I2}tl.store(ws + part[:, None] * {s.D} + dd[None, :], o, mask=rd_mask)",
              f"{I2}tl.store(ws + {lay['lse']} + part, lse2, mask=row_ok)"]


def _store(s: DecodeSpec, L: list[str], ind: str, o: str, lse2: str) -> None:
    a = s.args
    if "out" in a:  # a graph may use only the lse (or the selection) of a paged_attention
        L.append(f"{ind}tl.store({a['out']} + q_row[:, None] * {s.D} + dd[None, :], {o}.to({tl_type(s.dtype)}), "
                 "mask=rd_mask)")
    if "lse" in a:
        L.append(f"{ind}tl.store({a['lse']} + q_row, {lse2} * {LN2!r}, mask=row_ok)")


def _finish(s: DecodeSpec, args: list[str], L: list[str], lay: dict[str, int]) -> None:
    L += ["@triton.jit", f"def {s.name}_finish({', '.join(args)}, BLOCK_N: tl.constexpr, KV_SPLITS: tl.constexpr):",
          f"{I1}if KV_SPLITS > 1:"]
    pre: list[str] = []
    _prelude(s, pre)
    L += [I1 + line for line in pre]
    L += [f"{I2}base = pid * KV_SPLITS * {s.M} + rows",
          f"{I2}m = tl.full([{s.block_m}], float('-inf'), tl.float32)",
          f"{I2}for sp in range(KV_SPLITS):",
          f"{I3}m = tl.maximum(m, tl.load(ws + {lay['lse']} + base + sp * {s.M}, mask=row_ok, other=float('-inf')))",
          f"{I2}m_use = tl.where(m == float('-inf'), 0.0, m)",
          f"{I2}den = tl.zeros([{s.block_m}], tl.float32)",
          f"{I2}acc = tl.zeros([{s.block_m}, {s.block_d}], tl.float32)",
          f"{I2}for sp in range(KV_SPLITS):",
          f"{I3}w = tl.exp2(tl.load(ws + {lay['lse']} + base + sp * {s.M}, mask=row_ok, other=float('-inf')) - m_use)",
          f"{I3}den += w",
          f"{I3}acc += w[:, None] * tl.load(ws + (base + sp * {s.M})[:, None] * {s.D} + dd[None, :], "
          "mask=rd_mask, other=0.0)",
          f"{I2}d_safe = tl.where(den == 0.0, 1.0, den)",
          f"{I2}o = acc / d_safe[:, None]",
          f"{I2}lse2 = tl.where(den == 0.0, float('-inf'), m_use + tl.log2(d_safe))"]
    _store(s, L, I2, "o", "lse2")


def render(spec: DecodeSpec, config: Config, interpret: bool = False) -> str:
    """Readable, deterministic Triton source for a decode kernel (and its split reduction)."""
    lay = spec.workspace_layout(config)
    has_ws = lay["total"] > 0
    args = spec.arg_names() + (["ws"] if has_ws else [])
    L: list[str] = [header(spec, config, "triton"), "import triton", "import triton.language as tl", "", ""]
    _main(spec, interpret, args, L, lay)
    if has_ws:
        L += ["", ""]
        _finish(spec, args, L, lay)
    return "\n".join(L) + "\n"
