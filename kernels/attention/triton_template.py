"""Triton template of the attention forward kernel.

One program per (query block, b * Hq + h). The q tile stays resident; the key blocks come from the
CSR block lists: first the blocks that need no mask, then the masked (partial or ragged) ones. The
softmax is online in base 2 (scale * log2(e) folded into the scores, or applied after score_mod),
with f32 statistics and accumulator; fully masked rows give 0 and lse = -inf.

With a post_mod the program walks its block list twice: pass 1 keeps only the row max m and the
normaliser l (online, as above); pass 2 recomputes the scores, forms the final probabilities
p = exp2(s - m) * (1 / l), applies post_mod, zeroes masked positions and accumulates p' V (the
accumulator is not divided by l afterwards: post_mod's output is the weight)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ...schedule.config import Config
from ...codegen.triton_expr import TileEmitter, tl_type
from ...ir import dtypes as dt
from ...ir.expr import E, Expr
from ...codegen.headers import header
from ..lowering import LoadSite
from .dyn_sizes import cdiv_text

if TYPE_CHECKING:
    from .spec import AttentionSpec

IND = "    "
LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)


# Mod variables that vary over a [BLOCK_M, BLOCK_N] tile; b and h are one value per program.
TILE_VARS = frozenset({"q_idx", "kv_idx", "score", "p"})


def load_kind(n: Expr) -> str:
    """How a mod's operand load `n` is rendered, from the tile variables its indices use: "scalar" (none: one
    value per program), "q_idx" or "kv_idx" (a column or row vector) or "tile" (both, or the score)."""
    used = {v.arg for i in n.src for v in i.toposort() if v.op is E.VAR} & TILE_VARS
    if not used:
        return "scalar"
    return used.pop() if len(used) == 1 and used <= {"q_idx", "kv_idx"} else "tile"


def tile_loads(*mods: Expr | None) -> bool:
    """Whether any of `mods` loads a whole tile (such loads need the `valid` mask and a zero tile)."""
    return any(n.op is E.LOAD and load_kind(n) == "tile" for m in mods if m is not None for n in m.toposort())


def _terms(pairs: list[tuple[str, int]]) -> str:
    """`idx * stride` terms of an offset, skipping zero strides."""
    out = [(idx if st == 1 else f"{idx} * {st}") for idx, st in pairs if st]
    return " + ".join(out) if out else "0"


class _Tile:
    """Renders an operand expression (q, k or v, with any fused prologue) as one 2-D tile load."""

    def __init__(self, spec: AttentionSpec, lines: list[str], indent: str, name: str, head: str,
                 rows: str, cols: str, transpose: bool, mask: str | None):
        self.spec, self.lines, self.indent, self.name = spec, lines, indent, name
        self.head, self.rows, self.cols, self.transpose, self.mask = head, rows, cols, transpose, mask

    def offset(self, site: LoadSite) -> str:
        sb, sh, ss, sd = site.view.strides
        base = [t for t, on in ((str(site.view.offset), site.view.offset), (f"b.to(tl.int64) * {sb}", sb),
                                (f"{self.head}.to(tl.int64) * {sh}", sh)) if on]
        row_st, col_st = (sd, ss) if self.transpose else (ss, sd)  # transposed: [D, N] tile of k
        tile = _terms([(f"{self.rows}[:, None]", row_st), (f"{self.cols}[None, :]", col_st)])
        if not (row_st and col_st):  # a broadcast dim: keep the tile 2-D
            tile += f" + 0 * ({self.rows}[:, None] + {self.cols}[None, :])"
        return f"({' + '.join(base)}) + ({tile})" if base else f"({tile})"

    def emit(self, e: Expr) -> str:
        count = [0]

        def leaf(n: Expr) -> str | None:
            if n.op is not E.LOAD:
                return None
            site = self.spec.loads[n.arg]
            var = f"{self.name}_ld{count[0]}"
            count[0] += 1
            mask = f", mask={self.mask}, other=0" if self.mask else ""
            self.lines.append(f"{self.indent}{var} = tl.load(in{site.buffer} + {self.offset(site)}{mask})")
            return var

        return TileEmitter(self.lines, self.indent, f"{self.name}_", leaf).emit(e)


class _Mods:
    """Renders mask_mod / score_mod / post_mod over a [BLOCK_M, BLOCK_N] tile; their loads read extra
    operands at explicit indices, each in the shape its indices give (load_kind): one value per program
    (a scalar load), a column / row vector masked to the query / key range, or a whole tile masked to the
    valid elements, its offset widened by `zero`, an int32 zero tile of the tile's shape (a transposed
    [BLOCK_N, BLOCK_M] tile needs its own). The arithmetic around them broadcasts. (Widening every load to
    the tile made Triton pipeline a whole f32 tile per load and stage through shared memory.)"""

    def __init__(self, spec: AttentionSpec, lines: list[str], indent: str, prefix: str, score: str,
                 prob: str | None = None, zero: str = "z2"):
        self.spec, self.lines, self.indent = spec, lines, indent
        self.zero = zero
        self.vars = {"q_idx": "rm[:, None]", "kv_idx": "rn[None, :]", "b": "b", "h": "h", "score": score}
        if prob is not None:
            self.vars["p"] = prob
        self.loads = 0
        self.prefix = prefix
        self.em = TileEmitter(lines, indent, prefix, self.leaf)

    def leaf(self, n: Expr) -> str | None:
        if n.op is E.VAR:
            return self.vars[n.arg]
        if n.op is not E.LOAD:
            return None
        site = self.spec.loads[self.spec.extra_slot[n.arg]]
        idx = [self.em.memo[id(s)] for s in n.src]
        off = _terms([(f"({i})", st) for i, st in zip(idx, site.view.strides)])
        var = f"{self.prefix}ld{self.loads}"
        self.loads += 1
        ptr = f"in{site.buffer} + ({site.view.offset} + {off}"
        kind = load_kind(n)
        if kind == "scalar":  # in range: every visited block has a valid element, which would read it
            load = f"tl.load({ptr}))"
        elif kind == "tile":
            load = f"tl.load({ptr} + {self.zero}), mask=valid, other=0)"
        else:
            bound = self.spec.Sq if kind == "q_idx" else self.spec.Sk
            load = f"tl.load({ptr}), mask={self.vars[kind]} < {bound}, other=0)"
        self.lines.append(f"{self.indent}{var} = {load}")
        return var

    def emit(self, e: Expr) -> str:
        return self.em.emit(e)


def _scores(spec: AttentionSpec, L: list[str], masked: bool, op_t: str, bn: int, tag: str,
            post: bool) -> tuple[list[str], list[str]]:
    """Opens a loop over a block list range and emits the base-2 scores `s` of one key block;
    returns the per-element keep conditions (bounds, mask_mod) of a `masked` range and the v mask."""
    sq, sk, d, dv = spec.Sq, spec.Sk, spec.D, spec.Dv
    dp, dvp = spec.head_dims
    lo, hi = ("mid", "end") if masked else ("start", "mid")
    ind = IND * 2
    L.append(f"{IND}for j in range({lo}, {hi}):")
    L.append(f"{ind}rn = tl.load(kv_idx + j) * BLOCK_N + rn0")
    ragged = masked and sk % bn != 0
    kmask = [c for c, on in ((f"(rd[:, None] < {d})", d != dp), (f"(rn[None, :] < {sk})", ragged)) if on]
    vmask = [c for c, on in ((f"(rn[:, None] < {sk})", ragged), (f"(rdv[None, :] < {dv})", dv != dvp)) if on]
    kt = _Tile(spec, L, ind, f"k{tag}", "hk", "rd", "rn", True, " & ".join(kmask) or None).emit(spec.k_expr)
    if tile_loads(spec.mask if masked else None, spec.score_mod, spec.post_mod if post else None):
        L.append(f"{ind}valid = (rm[:, None] < {sq}) & (rn[None, :] < {sk})")
    precision = ', input_precision="ieee"' if op_t == "tl.float32" else ""
    L.append(f"{ind}s = tl.dot(q, {kt}.to({op_t}){precision})")
    if spec.score_mod is not None:
        L.append(f"{ind}s = s * {spec.scale!r}")
        sm = _Mods(spec, L, ind, f"{tag}s", "s").emit(spec.score_mod)
        L.append(f"{ind}s = {sm} * {LOG2E!r}")
    else:
        L.append(f"{ind}s = s * {spec.scale * LOG2E!r}")
    keep: list[str] = []
    if masked:
        keep = [f"(rn[None, :] < {sk})"] if ragged else []
        if spec.mask is not None:
            keep.append(f"({_Mods(spec, L, ind, f'{tag}m', 's').emit(spec.mask)})")
    return keep, vmask


def _pv(spec: AttentionSpec, L: list[str], interpret: bool, op_t: str, tag: str, p: str, vmask: list[str],
        rescale: bool) -> None:
    """acc += p @ v for the current key block (p rounded to the input dtype, as the tensor cores see it);
    `rescale` first moves the accumulator to the new row max (the single-pass online softmax; False in
    pass 2 of a post_mod kernel, whose p are final)."""
    ind = IND * 2
    precision = ', input_precision="ieee"' if op_t == "tl.float32" else ""
    vt = _Tile(spec, L, ind, f"v{tag}", "hk", "rn", "rdv", False, " & ".join(vmask) or None).emit(spec.v_expr)
    if rescale:
        L.append(f"{ind}acc = acc * alpha[:, None]")
    if interpret and not rescale and spec.dtype == dt.bf16:
        # The interpreter converts f32 -> bf16 by truncation; pass 2's normalised probabilities (no exact
        # 1.0 among them, unlike the online p) then lose up to an ulp each, all downwards. Round to
        # nearest as the GPU's cvt.rn does, in f32 arithmetic: Veltkamp's split by 2^16 + 1 keeps the top
        # 8 significant bits.
        L.append(f"{ind}pr = {p} * 65537.0")
        L.append(f"{ind}pr = pr - (pr - {p})")
        p_cast = "pr"
    elif interpret and op_t != tl_type(spec.dtype):
        p_cast = f"{p}.to({tl_type(spec.dtype)}).to({op_t})"
    else:
        p_cast = f"{p}.to({op_t})"
    L.append(f"{ind}acc = tl.dot({p_cast}, {vt}.to({op_t}), acc{precision})")


def _loop(spec: AttentionSpec, L: list[str], masked: bool, interpret: bool, op_t: str, bn: int,
          stats_only: bool = False) -> None:
    """One online-softmax pass over a block list range; `masked` applies bounds and mask_mod per
    element; `stats_only` (pass 1 of a post_mod kernel) keeps m and l and skips v."""
    ind = IND * 2
    tag = ("p" if masked else "f") + ("1" if stats_only else "")
    keep, vmask = _scores(spec, L, masked, op_t, bn, tag, False)
    if keep:
        L.append(f"{ind}s = tl.where({' & '.join(keep)}, s, float('-inf'))")
    L.append(f"{ind}m_new = tl.maximum(m_i, tl.max(s, 1))")
    if masked or spec.score_mod is not None:  # a row may still be all -inf: keep exp2 finite
        L.append(f"{ind}m_use = tl.where(m_new == float('-inf'), 0.0, m_new)")
    else:
        L.append(f"{ind}m_use = m_new")
    L.append(f"{ind}alpha = tl.exp2(m_i - m_use)")
    L.append(f"{ind}p = tl.exp2(s - m_use[:, None])")
    L.append(f"{ind}l_i = l_i * alpha + tl.sum(p, 1)")
    if not stats_only:
        _pv(spec, L, interpret, op_t, tag, "p", vmask, True)
    L.append(f"{ind}m_i = m_new")


def _post_loop(spec: AttentionSpec, L: list[str], masked: bool, interpret: bool, op_t: str, bn: int) -> None:
    """Pass 2 of a post_mod kernel over a block list range: exact probabilities from pass 1's m and
    l, then post_mod; masked (and out-of-range) positions contribute 0 whatever post_mod gives."""
    assert spec.post_mod is not None
    ind = IND * 2
    tag = ("p" if masked else "f") + "2"
    keep, vmask = _scores(spec, L, masked, op_t, bn, tag, True)
    if keep:  # masked scores give p = 0 (post_mod then sees no overflowed garbage there)
        L.append(f"{ind}keep = {' & '.join(keep)}")
        L.append(f"{ind}s = tl.where(keep, s, float('-inf'))")
    L.append(f"{ind}p = tl.exp2(s - m_fin[:, None]) * inv_l[:, None]")
    pm = _Mods(spec, L, ind, f"{tag}x", "s", prob="p").emit(spec.post_mod)
    tile = any(n.op is E.VAR and n.arg == "p" for n in spec.post_mod.toposort())
    if not tile:  # post_mod ignores p: widen it to the [BLOCK_M, BLOCK_N] tile
        L.append(f"{ind}pw = {pm} + tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
        pm = "pw"
    if keep:
        L.append(f"{ind}pk = tl.where(keep, {pm}, 0.0)")
        pm = "pk"
    _pv(spec, L, interpret, op_t, tag, pm, vmask, False)


def render(spec: AttentionSpec, config: Config, interpret: bool = False) -> str:
    """Readable, deterministic Triton source of the forward kernel.

    The Triton interpreter computes bf16 dots wrongly and f16 dots in f16 (triton 3.6): under it the
    tiles are widened to f32 (p is rounded to the input dtype first, as the compiled kernel feeds
    the tensor cores), which is what f32 accumulation of exact half-precision products gives."""
    from .spec import AUX_NAMES

    bm, bn = config.int("BLOCK_M"), config.int("BLOCK_N")
    sq, d = spec.Sq, spec.D
    dp, _ = spec.head_dims
    op_dt = dt.f32 if interpret else spec.dtype
    op_t = tl_type(op_dt)
    args = spec.arg_names() + list(AUX_NAMES)
    cexpr = "BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr"
    L: list[str] = [header(spec, config, "triton"), "import triton", "import triton.language as tl", "", "",
                    "@triton.jit", f"def {spec.name}({', '.join(args)}, {cexpr}):"]
    L += [f"{IND}pid_m = tl.program_id(0)",
          f"{IND}pid_bh = tl.program_id(1)",
          f"{IND}b = pid_bh // {spec.Hq}",
          f"{IND}h = pid_bh % {spec.Hq}",
          f"{IND}hk = h // {spec.group}" if spec.group > 1 else f"{IND}hk = h",
          f"{IND}rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)",
          f"{IND}rn0 = tl.arange(0, BLOCK_N)",
          f"{IND}rd = tl.arange(0, BLOCK_D)",
          f"{IND}rdv = tl.arange(0, BLOCK_DV)",
          f"{IND}z2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)"]
    qmask = [c for c, on in ((f"(rm[:, None] < {sq})", sq % bm != 0), (f"(rd[None, :] < {d})", d != dp)) if on]
    qt = _Tile(spec, L, IND, "q", "h", "rm", "rd", False, " & ".join(qmask) or None).emit(spec.q_expr)
    L += [f"{IND}q = {qt}" + ("" if spec.q_expr.dtype == op_dt else f".to({op_t})"),
          f"{IND}m_i = tl.full([BLOCK_M], float('-inf'), tl.float32)",
          f"{IND}l_i = tl.zeros([BLOCK_M], dtype=tl.float32)",
          f"{IND}acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)",
          f"{IND}row = tl.load(head_pat + pid_bh) * {cdiv_text(sq, bm)} + pid_m",
          f"{IND}start = tl.load(kv_ptr + row)",
          f"{IND}mid = start + tl.load(kv_nfull + row)",
          f"{IND}end = tl.load(kv_ptr + row + 1)"]
    if spec.post_mod is None:
        _loop(spec, L, False, interpret, op_t, bn)
        _loop(spec, L, True, interpret, op_t, bn)
    else:
        L.append(f"{IND}# pass 1: row max m_i and normaliser l_i (base 2) over the block list")
        _loop(spec, L, False, interpret, op_t, bn, stats_only=True)
        _loop(spec, L, True, interpret, op_t, bn, stats_only=True)
        L += [f"{IND}l_safe = tl.where(l_i == 0.0, 1.0, l_i)",
              f"{IND}inv_l = 1.0 / l_safe",
              f"{IND}m_fin = tl.where(m_i == float('-inf'), 0.0, m_i)",
              f"{IND}# pass 2: the same blocks again, p = exp2(s - m) / l, post_mod, acc += p' @ v"]
        _post_loop(spec, L, False, interpret, op_t, bn)
        _post_loop(spec, L, True, interpret, op_t, bn)
    _epilogue(spec, L, bm, interpret)
    return "\n".join(L) + "\n"


def _epilogue(spec: AttentionSpec, L: list[str], bm: int, interpret: bool) -> None:
    sq, dv = spec.Sq, spec.Dv
    _, dvp = spec.head_dims
    if spec.post_mod is None:  # a post_mod kernel computed l_safe between its passes
        L.append(f"{IND}l_safe = tl.where(l_i == 0.0, 1.0, l_i)")
    smask = [c for c, on in ((f"(rm[:, None] < {sq})", sq % bm != 0), (f"(rdv[None, :] < {dv})", dv != dvp)) if on]
    for index, role in spec.outs:
        buf = spec.outputs[index]
        if role == "out":
            mask = f", mask={' & '.join(smask)}" if smask else ""
            if spec.post_mod is None:
                L.append(f"{IND}o = acc / l_safe[:, None]")
            else:  # not renormalised; rows with no live score (lse = -inf) output 0
                L.append(f"{IND}o = tl.where(l_i[:, None] == 0.0, 0.0, acc)")
                if interpret and buf.dtype == dt.bf16:  # round to nearest before the truncating store (_pv)
                    L.append(f"{IND}ob = o * 65537.0")
                    L.append(f"{IND}o = ob - (ob - o)")
            L.append(f"{IND}tl.store(out{index} + pid_bh.to(tl.int64) * {sq * dv} + (rm[:, None] * {dv} + "
                     f"rdv[None, :]), o.to({tl_type(buf.dtype)}){mask})")
        else:
            mask = f", mask=rm < {sq}" if sq % bm else ""
            L.append(f"{IND}lse = tl.where(l_i == 0.0, float('-inf'), (m_i + tl.log2(l_safe)) * {LN2!r})")
            L.append(f"{IND}tl.store(out{index} + pid_bh.to(tl.int64) * {sq} + rm, lse{mask})")
