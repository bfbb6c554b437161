"""Triton template of the attention backward (launch structure in kernels/attention_bwd.py).

P is recomputed from the scores and the forward's LSE in base 2 (p = exp2(s * scale * log2(e) -
lse * log2(e))); rows whose LSE is -inf (fully masked) use +inf instead, so their p is 0, and so do
query rows past Sq (their LSE loads as +inf). dS = P * (dP - delta) with delta from the pre-pass.
A non-additive score_mod also renders its derivative (ir/autodiff.py) at the raw score, `dmod`, with
the same emitter (shared nodes such as softcap's tanh are computed once), and dS is multiplied by it.
P and dS are rounded to the input dtype before they feed the tensor cores, as in FlashAttention-2.

The Triton interpreter computes bf16 dots wrongly and f16 dots in f16 (triton 3.6): under it every
dot operand is widened to f32 after that rounding (as the forward template does)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...schedule.config import Config
from ...codegen.triton_expr import tl_type
from ...ir import dtypes as dt
from ...ir.expr import Expr
from .triton_template import LOG2E, _Mods, _terms, _Tile, tile_loads
from ...codegen.headers import header

if TYPE_CHECKING:
    from .bwd_spec import AttentionBwdSpec

IND = "    "


class _Ctx:
    """What every emitted line needs: the spec, the line list, the block sizes and dot options."""

    def __init__(self, spec: AttentionBwdSpec, config: Config, interpret: bool):
        self.spec = spec
        self.L: list[str] = []
        self.bm, self.bn = config.int("BLOCK_M"), config.int("BLOCK_N")
        self.dp, self.dvp = spec.head_dims
        op_dt = dt.f32 if interpret else spec.dtype
        self.op_t = tl_type(op_dt)
        self.in_t = tl_type(spec.dtype)
        self.prec = ', input_precision="ieee"' if self.op_t == "tl.float32" else ""
        self.interpret = interpret

    def emit(self, ind: str, *lines: str) -> None:
        self.L.extend(ind + line for line in lines)

    def cast(self, x: str) -> str:
        """`x` (f32) rounded to the input dtype, as a dot operand."""
        return f"{x}.to({self.in_t}).to({self.op_t})" if self.op_t != self.in_t else f"{x}.to({self.op_t})"

    def tile(self, ind: str, name: str, e: Expr, head: str, rows: str, cols: str, transpose: bool,
             conds: list[tuple[str, bool]]) -> str:
        """Load operand expression `e` as a 2-D tile, widened to the dot type; conds are (mask, needed)."""
        mask = " & ".join(c for c, on in conds if on) or None
        t = _Tile(self.spec, self.L, ind, name, head, rows, cols, transpose, mask).emit(e)
        self.emit(ind, f"{name} = {t}.to({self.op_t})")
        return name

    def lse(self, ind: str, rows: str, ragged: bool) -> None:
        """lse2 = the forward's LSE in base 2 for `rows` (+inf for masked rows and rows past Sq)."""
        site = self.spec.loads[self.spec.lse_expr.arg]
        sb, sh, ss = site.view.strides
        off = _terms([(str(site.view.offset), 1 if site.view.offset else 0), ("b.to(tl.int64)", sb),
                      ("h.to(tl.int64)", sh), (rows, ss)])
        mask = f", mask={rows} < {self.spec.Sq}, other=float('inf')" if ragged else ""
        self.emit(ind, f"lse = tl.load(in{site.buffer} + {off}{mask})",
                  f"lse2 = tl.where(lse == float('-inf'), float('inf'), lse) * {LOG2E!r}")
        mask = f", mask={rows} < {self.spec.Sq}, other=0.0" if ragged else ""
        self.emit(ind, f"delta = tl.load(ws + pid_bh.to(tl.int64) * {self.spec.Sq} + {rows}{mask})")


def _probs(c: _Ctx, ind: str, tag: str, masked: bool, transposed: bool, ragged_k: bool) -> None:
    """s (already q k^T) -> p with score_mod, mask_mod and the LSE; `transposed`: s is [BLOCK_N, BLOCK_M]."""
    spec = c.spec
    qi, ki = ("rm[None, :]", "rn[:, None]") if transposed else ("rm[:, None]", "rn[None, :]")
    lse2 = "lse2[None, :]" if transposed else "lse2[:, None]"
    if tile_loads(spec.score_mod, spec.mask if masked else None):
        c.emit(ind, f"valid = ({qi} < {spec.Sq}) & ({ki} < {spec.Sk})")

    def mods(prefix: str) -> _Mods:
        m = _Mods(spec, c.L, ind, prefix, "s", zero="z2t" if transposed else "z2")
        m.vars.update(q_idx=qi, kv_idx=ki)
        return m

    if spec.score_mod is not None:
        c.emit(ind, f"s = s * {spec.scale!r}")
        sm = mods(f"{tag}s")
        mod = sm.emit(spec.score_mod)
        if spec.dscore is not None:  # score_mod' at the raw score, before s is overwritten (shares its nodes)
            c.emit(ind, f"dmod = {sm.emit(spec.dscore)}")
        c.emit(ind, f"s = {mod} * {LOG2E!r}")
    else:
        c.emit(ind, f"s = s * {spec.scale * LOG2E!r}")
    c.emit(ind, f"p = tl.exp2(s - {lse2})")
    keep = [f"({ki} < {spec.Sk})"] if ragged_k else []
    if masked and spec.mask is not None:
        keep.append(f"({mods(f'{tag}m').emit(spec.mask)})")
    if keep:
        c.emit(ind, f"p = tl.where({' & '.join(keep)}, p, 0.0)")


def _ds(spec: AttentionBwdSpec, delta: str) -> str:
    """dS = P * (dP - delta), times score_mod' (`dmod`) for a non-additive score_mod, and then 0 where p is
    0 (masked, rows past Sq, keys past Sk) so that a derivative that is inf or NaN there cannot leak in."""
    if spec.dscore is None:
        return f"ds = p * (dp - {delta})"
    return f"ds = tl.where(p > 0.0, p * (dp - {delta}) * dmod, 0.0)"


def _dkdv_loop(c: _Ctx, ind: str, masked: bool) -> None:
    """One pass over a transposed list range: q blocks that see this key block."""
    spec = c.spec
    tag = "p" if masked else "f"
    ragged = masked and spec.Sq % c.bm != 0
    lo, hi = ("mid", "end") if masked else ("start", "mid")
    c.emit(ind, f"for j in range({lo}, {hi}):")
    i2 = ind + IND
    c.emit(i2, "rm = tl.load(q_idx + j) * BLOCK_M + rm0")
    qt = c.tile(i2, f"qt{tag}", spec.q_expr, "h", "rd", "rm", True,
                [(f"(rd[:, None] < {spec.D})", spec.D != c.dp), (f"(rm[None, :] < {spec.Sq})", ragged)])
    c.emit(i2, f"s = tl.dot(k, {qt}{c.prec})")
    c.lse(i2, "rm", ragged)
    _probs(c, i2, f"kv{tag}", masked, True, False)
    do = c.tile(i2, f"do{tag}", spec.do_expr, "h", "rm", "rdv", False,
                [(f"(rm[:, None] < {spec.Sq})", ragged), (f"(rdv[None, :] < {spec.Dv})", spec.Dv != c.dvp)])
    c.emit(i2, f"dv = tl.dot({c.cast('p')}, {do}, dv{c.prec})",
           f"dp = tl.dot(v, tl.trans({do}){c.prec})",
           _ds(spec, "delta[None, :]"),
           f"dk = tl.dot({c.cast('ds')}, tl.trans({qt}), dk{c.prec})")


def _dkdv(c: _Ctx, ind: str, pid: str) -> None:
    """The dK/dV role: one key block of one (b, kv head), over the query heads of its group."""
    spec = c.spec
    nkb = -(-spec.Sk // c.bn)
    ragged = spec.Sk % c.bn != 0
    c.emit(ind, f"n = {pid} % {nkb}", f"pid_bhk = {pid} // {nkb}", f"b = pid_bhk // {spec.Hkv}",
           f"hk = pid_bhk % {spec.Hkv}", "rn = n * BLOCK_N + rn0")
    rows = [(f"(rn[:, None] < {spec.Sk})", ragged)]
    c.tile(ind, "k", spec.k_expr, "hk", "rn", "rd", False, rows + [(f"(rd[None, :] < {spec.D})", spec.D != c.dp)])
    c.tile(ind, "v", spec.v_expr, "hk", "rn", "rdv", False, rows + [(f"(rdv[None, :] < {spec.Dv})", spec.Dv != c.dvp)])
    c.emit(ind, "dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)",
           "dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)")
    if tile_loads(spec.mask, spec.score_mod):
        # Its own name: Triton requires a name assigned in both roles' branches to have one type.
        c.emit(ind, "z2t = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.int32)")
    c.emit(ind, f"for g in range({spec.group}):")
    i2 = ind + IND
    c.emit(i2, f"h = hk * {spec.group} + g", f"pid_bh = b * {spec.Hq} + h",
           f"row = tl.load(head_pat + pid_bh) * {nkb} + n",
           "start = tl.load(q_ptr + row)", "mid = start + tl.load(q_nfull + row)", "end = tl.load(q_ptr + row + 1)")
    _dkdv_loop(c, i2, False)
    _dkdv_loop(c, i2, True)
    base = f"pid_bhk.to(tl.int64) * {spec.Sk}"
    for role, acc, width, wp in (("dk", f"dk * {spec.scale!r}", spec.D, c.dp), ("dv", "dv", spec.Dv, c.dvp)):
        idx = spec.out_index(role)
        if idx is None:
            continue
        col = "rd" if role == "dk" else "rdv"
        mask = [c2 for c2, on in ((f"(rn[:, None] < {spec.Sk})", ragged), (f"({col}[None, :] < {width})", width != wp))
                if on]
        m = f", mask={' & '.join(mask)}" if mask else ""
        c.emit(ind, f"tl.store(out{idx} + {base} * {width} + (rn[:, None] * {width} + {col}[None, :]), "
                    f"({acc}).to({tl_type(spec.outputs[idx].dtype)}){m})")


def _dq_loop(c: _Ctx, ind: str, masked: bool) -> None:
    """One pass over a forward list range: the key blocks this query block sees."""
    spec = c.spec
    tag = "p" if masked else "f"
    ragged = masked and spec.Sk % c.bn != 0
    lo, hi = ("mid", "end") if masked else ("start", "mid")
    c.emit(ind, f"for j in range({lo}, {hi}):")
    i2 = ind + IND
    c.emit(i2, "rn = tl.load(kv_idx + j) * BLOCK_N + rn0")
    kt = c.tile(i2, f"kt{tag}", spec.k_expr, "hk", "rd", "rn", True,
                [(f"(rd[:, None] < {spec.D})", spec.D != c.dp), (f"(rn[None, :] < {spec.Sk})", ragged)])
    c.emit(i2, f"s = tl.dot(q, {kt}{c.prec})")
    _probs(c, i2, f"q{tag}", masked, False, ragged)
    vt = c.tile(i2, f"vt{tag}", spec.v_expr, "hk", "rdv", "rn", True,
                [(f"(rdv[:, None] < {spec.Dv})", spec.Dv != c.dvp), (f"(rn[None, :] < {spec.Sk})", ragged)])
    c.emit(i2, f"dp = tl.dot(do, {vt}{c.prec})",
           _ds(spec, "delta[:, None]"),
           f"dq = tl.dot({c.cast('ds')}, tl.trans({kt}), dq{c.prec})")


def _dq(c: _Ctx, ind: str, pid: str) -> None:
    """The dQ role: one query block of one (b, q head), over the key blocks it sees."""
    spec = c.spec
    nqb = -(-spec.Sq // c.bm)
    ragged = spec.Sq % c.bm != 0
    c.emit(ind, f"m = {pid} % {nqb}", f"pid_bh = {pid} // {nqb}", f"b = pid_bh // {spec.Hq}", f"h = pid_bh % {spec.Hq}",
           f"hk = h // {spec.group}", "rm = m * BLOCK_M + rm0")
    rows = [(f"(rm[:, None] < {spec.Sq})", ragged)]
    c.tile(ind, "q", spec.q_expr, "h", "rm", "rd", False, rows + [(f"(rd[None, :] < {spec.D})", spec.D != c.dp)])
    c.tile(ind, "do", spec.do_expr, "h", "rm", "rdv", False,
           rows + [(f"(rdv[None, :] < {spec.Dv})", spec.Dv != c.dvp)])
    c.lse(ind, "rm", ragged)
    c.emit(ind, "dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)")
    if tile_loads(spec.mask, spec.score_mod):
        c.emit(ind, "z2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)")
    c.emit(ind, f"row = tl.load(head_pat + pid_bh) * {nqb} + m", "start = tl.load(kv_ptr + row)",
           "mid = start + tl.load(kv_nfull + row)", "end = tl.load(kv_ptr + row + 1)")
    _dq_loop(c, ind, False)
    _dq_loop(c, ind, True)
    idx = spec.out_index("dq")
    assert idx is not None
    mask = [m for m, on in ((f"(rm[:, None] < {spec.Sq})", ragged), (f"(rd[None, :] < {spec.D})", spec.D != c.dp))
            if on]
    m = f", mask={' & '.join(mask)}" if mask else ""
    c.emit(ind, f"tl.store(out{idx} + pid_bh.to(tl.int64) * {spec.Sq * spec.D} + (rm[:, None] * {spec.D} + "
                f"rd[None, :]), (dq * {spec.scale!r}).to({tl_type(spec.outputs[idx].dtype)}){m})")


def _preprocess(c: _Ctx, nprog: int) -> None:
    """delta = rowsum(dO * O) in f32 for every (query block, b * Hq + h), grid-stride over the programs."""
    spec = c.spec
    nqb = -(-spec.Sq // c.bm)
    ragged = spec.Sq % c.bm != 0
    rows = [(f"(rm[:, None] < {spec.Sq})", ragged), (f"(rdv[None, :] < {spec.Dv})", spec.Dv != c.dvp)]
    c.emit(IND, "rm0 = tl.arange(0, BLOCK_M)", "rdv = tl.arange(0, BLOCK_DV)",
           f"for t in range(tl.program_id(0), {nqb * spec.B * spec.Hq}, {nprog}):")
    i2 = IND * 2
    c.emit(i2, f"pid_bh = t // {nqb}", f"b = pid_bh // {spec.Hq}", f"h = pid_bh % {spec.Hq}",
           f"rm = (t % {nqb}) * BLOCK_M + rm0")
    o = _Tile(c.spec, c.L, i2, "o", "h", "rm", "rdv", False,
              " & ".join(m for m, on in rows if on) or None).emit(spec.o_expr)
    do = _Tile(c.spec, c.L, i2, "do", "h", "rm", "rdv", False,
               " & ".join(m for m, on in rows if on) or None).emit(spec.do_expr)
    mask = f", mask=rm < {spec.Sq}" if ragged else ""
    c.emit(i2, f"delta = tl.sum({o}.to(tl.float32) * {do}.to(tl.float32), 1)",
           f"tl.store(ws + pid_bh.to(tl.int64) * {spec.Sq} + rm, delta{mask})")


def render(spec: AttentionBwdSpec, config: Config, interpret: bool = False) -> str:
    """Readable, deterministic Triton source: `{name}` (delta pre-pass) and `{name}_finish` (dK/dV and dQ)."""
    from .bwd_spec import BWD_AUX_NAMES

    c = _Ctx(spec, config, interpret)
    args = ", ".join(spec.arg_names() + list(BWD_AUX_NAMES) + ["ws"])
    cexpr = "BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr"
    nkv, nq = spec.programs(config)
    c.L += [header(spec, config, "triton"), "import triton", "import triton.language as tl", "", "",
            "@triton.jit", f"def {spec.name}({args}, {cexpr}):"]
    _preprocess(c, max(1, nkv + nq))
    c.L += ["", "", "@triton.jit", f"def {spec.name}_finish({args}, {cexpr}):"]
    c.emit(IND, "pid = tl.program_id(0)", "rm0 = tl.arange(0, BLOCK_M)", "rn0 = tl.arange(0, BLOCK_N)",
           "rd = tl.arange(0, BLOCK_D)", "rdv = tl.arange(0, BLOCK_DV)")
    if nkv and nq:
        c.emit(IND, f"if pid < {nkv}:  # dK/dV programs, then dQ programs")
        _dkdv(c, IND * 2, "pid")
        c.emit(IND, "else:")
        _dq(c, IND * 2, f"(pid - {nkv})")
    elif nkv:
        _dkdv(c, IND, "pid")
    elif nq:
        _dq(c, IND, "pid")
    return "\n".join(c.L) + "\n"
