"""Triton template of the matmul family."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...schedule.config import Config
from ...codegen.triton_expr import TileEmitter, literal, tl_type
from ...ir import dtypes as dt
from ...ir.dims import upper
from ...ir.expr import E, Expr
from ...codegen.headers import header
from ..lowering import LoadSite, prod
from .reductions import RED, identity

if TYPE_CHECKING:
    from .spec import MatmulSpec, ScaledDot

IND = "    "
INDEX32 = 2**31 - 1
_REDUCE = {"sum": "tl.sum", "max": "tl.max", "min": "tl.min"}
_COMBINE = {"max": "tl.maximum", "min": "tl.minimum"}


class _Scope:
    """Loads and arithmetic for one tile scope: 'a' (BM x BK), 'b' (BK x BN) or 'c' (BM x BN), or the results
    of reductions over rows 'fm' (BN, at row 0) or columns 'fn' (BM, at column 0). `bound` names the tiles of
    VARs (the accumulator by default)."""

    def __init__(self, spec: MatmulSpec, lines: list[str], indent: str, which: str, prefix: str, masks: set[str],
                 bound: dict[str, str] | None = None):
        self.spec = spec
        self.bound = bound or {}
        self.masks = masks
        self.which = which
        self.lines = lines
        self.indent = indent
        self.loaded: dict[int, str] = {}
        self.computed: dict[str, str] = {}
        self.em = TileEmitter(lines, indent, prefix, self.leaf)
        self.row, self.col, self.mask = {
            "a": ("rm[:, None]", "kk[None, :]", "a_mask"),
            "b": ("kk[:, None]", "rn[None, :]", "b_mask"),
            "c": ("rm[:, None]", "rn[None, :]", "c_mask"),
            # a scaled dot's per-step scales: a [BLOCK_M, 1] column and a [1, BLOCK_N] row at k0
            "sa": ("rm[:, None]", "k0", "sa_mask"),
            "sb": ("k0", "rn[None, :]", "sb_mask"),
            # a B loader constant along the tile's columns (MatmulSpec.row_loaders): [BLOCK_K, 1] at its first
            "bs": ("kk[:, None]", "pid_n * BLOCK_N", "bs_mask"),
            "fm": ("0", "rn", "k_mask"),
            "fn": ("rm", "0", "k_mask"),
        }[which]

    def leaf(self, e: Expr) -> str | None:
        if e.op is E.VAR:
            if e.arg in self.spec.loaders() or e.arg in self.spec.row_loaders():
                return self.computed_var(e.arg)
            return self.bound.get(e.arg, "acc")
        if e.op is E.LOAD:
            return self.load(e.arg)
        return None

    def offset(self, site: LoadSite) -> str:
        v = site.view
        nb = len(v.shape) - 2
        terms = [str(v.offset)] if v.offset else []
        for d in range(nb):
            if v.strides[d]:
                terms.append(f"b{d} * {v.strides[d]}")
        for idx, stride in ((self.row, v.strides[nb]), (self.col, v.strides[nb + 1])):
            if stride:
                terms.append(idx if stride == 1 else f"{idx} * {stride}")
        # keep the tile's 2-D shape even when a dimension is broadcast
        terms.append(f"0 * ({self.row} + {self.col})")
        return " + ".join(terms)

    def load(self, slot: int) -> str:
        if slot not in self.loaded:
            site = self.spec.loads[slot]
            name = f"{self.which}{slot}"
            mask = f", mask={self.mask}, other=0" if self.mask in self.masks else ""
            self.lines.append(f"{self.indent}{name} = tl.load(in{site.buffer} + ({self.offset(site)}){mask})")
            self.loaded[slot] = name
        return self.loaded[slot]

    def emit(self, e: Expr) -> str:
        return self.em.emit(e)

    # -- the operand-loader hook: VARs whose tiles a loader computes (MatmulSpec.loaders) --
    def computed_var(self, name: str) -> str:
        """The tile of loader VAR `name`, emitted once per scope."""
        if name not in self.computed and name in self.spec.row_loaders():
            masks = {"bs_mask"} if self.mask in self.masks else set()
            self.lines += [f"{self.indent}bs_mask = kk[:, None] < {self.spec.K}"] if masks else []
            row = _Scope(self.spec, self.lines, self.indent, "bs", "", masks)
            self.computed[name] = row.emit_loader(self.spec.row_loaders()[name], f"{self.which}_{name}_")
        if name not in self.computed:
            self.computed[name] = self.emit_loader(self.spec.loaders()[name], f"{self.which}_{name}_")
        return self.computed[name]

    def emit_loader(self, value: Expr, prefix: str) -> str:
        """A loader expression (of `r`, `c` and explicit loads) as this scope's tile."""
        em = TileEmitter(self.lines, self.indent, prefix, lambda e: self.indexed(e, em))
        return em.emit(value)

    def indexed(self, e: Expr, em: TileEmitter) -> str | None:
        """Leaves of a loader's expression: the tile's row and column, and loads at explicit flat indices."""
        if e.op is E.VAR:
            if e.arg in self.spec.row_loaders():
                return self.computed_var(e.arg)
            return {"r": self.row, "c": self.col}[e.arg]
        if e.op is not E.LOAD:
            text = self.spec.loader_text(e, lambda s: em.memo[id(s)])
            if text is None:
                return None
            name = f"{em.prefix}x{em.count}"
            em.count += 1
            self.lines.append(f"{self.indent}{name} = {text}")
            return name
        name = f"{em.prefix}ld{em.count}"
        em.count += 1
        # an fp8 pointer takes a float `other` (the interpreter cannot cast an int tile to fp8e4nv)
        other = "0.0" if e.dtype in (dt.f8e4m3, dt.f8e5m2) else "0"
        mask = f", mask={self.mask}, other={other}" if self.mask in self.masks else ""
        # `0 * (row + col)` gives every load the tile's 2-D shape (indices may depend on one axis only)
        ptr = f"in{e.arg} + {em.memo[id(e.src[0])]} + 0 * ({self.row} + {self.col})"
        self.lines.append(f"{self.indent}{name} = tl.load({ptr}{mask})")
        return name


def _masks(spec: MatmulSpec, config: Config) -> set[str]:
    """Masks needed by this config (dimensions that divide the block sizes need none)."""
    bm, bn, bk, split = (config.int(k) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K"))
    even_m, even_n, even_k = spec.M % bm == 0, spec.N % bn == 0, spec.K % (bk * split) == 0
    out = set()
    if not (even_m and even_k):
        out.add("a_mask")
    if not (even_k and even_n):
        out.add("b_mask")
    if not (even_m and even_n):
        out.add("c_mask")
    out |= {"sa_mask"} if not even_m else set()
    out |= {"sb_mask"} if not even_n else set()
    return out


def _mask_defs(spec: MatmulSpec, masks: set[str], indent: str, which: str) -> list[str]:
    lines = []
    if which == "a" and "a_mask" in masks:
        lines.append(f"{indent}a_mask = (rm[:, None] < {spec.M}) & (kk[None, :] < {spec.K})")
    if which == "b" and "b_mask" in masks:
        lines.append(f"{indent}b_mask = (kk[:, None] < {spec.K}) & (rn[None, :] < {spec.N})")
    if which == "c" and "c_mask" in masks:
        lines.append(f"{indent}c_mask = (rm[:, None] < {spec.M}) & (rn[None, :] < {spec.N})")
    if which == "sa" and "sa_mask" in masks:
        lines.append(f"{indent}sa_mask = rm[:, None] < {spec.M}")
    if which == "sb" and "sb_mask" in masks:
        lines.append(f"{indent}sb_mask = rn[None, :] < {spec.N}")
    return lines


def wide(spec: MatmulSpec, config: Config) -> bool:
    """Whether an element offset can pass 2^31 - 1 (at the top of every dynamic range): then the row, column,
    k and batch indices are int64, as a product like `rm * K` in int32 would wrap silently."""
    sizes = [upper(b.numel) for b in list(spec.inputs) + list(spec.outputs)]
    sizes.append(config.int("SPLIT_K") * upper(prod(spec.batch)) * upper(spec.M) * upper(spec.N))  # workspace
    return max(sizes) > INDEX32


def _prelude(spec: MatmulSpec, L: list[str], wide: bool = False) -> None:
    """Program ids -> (pid_m, pid_n) with GROUP_M swizzling, batch indices, row/col ranges (int64 if `wide`)."""
    M, N = spec.M, spec.N
    L += [f"{IND}pid = tl.program_id(0)",
          f"{IND}pid_b = tl.program_id(2)",
          f"{IND}num_pid_m = tl.cdiv({M}, BLOCK_M)",
          f"{IND}num_pid_n = tl.cdiv({N}, BLOCK_N)",
          f"{IND}group = GROUP_M * num_pid_n",
          f"{IND}first_m = (pid // group) * GROUP_M",
          f"{IND}group_m = tl.minimum(num_pid_m - first_m, GROUP_M)",
          f"{IND}pid_m = first_m + (pid % group) % group_m",
          f"{IND}pid_n = (pid % group) // group_m",
          f"{IND}rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)",
          f"{IND}rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)"]
    if wide:
        L += [f"{IND}pid_b = pid_b.to(tl.int64)", f"{IND}rm = rm.to(tl.int64)", f"{IND}rn = rn.to(tl.int64)"]
    _batch_indices(spec, L)


def _batch_indices(spec: MatmulSpec, L: list[str]) -> None:
    """Batch indices b0, b1, ... of the flat batch program id `pid_b`."""
    for d in range(len(spec.batch)):
        inner = 1
        for s in spec.batch[d + 1:]:
            inner *= s
        e = "pid_b" if inner == 1 else f"(pid_b // {inner})"
        L.append(f"{IND}b{d} = {e}" + (f" % {spec.batch[d]}" if d > 0 else ""))


def _epilogue(spec: MatmulSpec, L: list[str], masks: set[str], config: Config) -> None:
    L += _mask_defs(spec, masks, IND, "c")
    sc = _Scope(spec, L, IND, "c", "e", masks)
    c_off = f"rm[:, None] * {spec.N} + rn[None, :]"
    if spec.batch:
        c_off = f"pid_b * {spec.M * spec.N} + {c_off}"
    store_mask = ", mask=c_mask" if "c_mask" in masks else ""
    for o in spec.outs:
        v = sc.emit(o.expr)
        buf = spec.outputs[o.index]
        if o.expr.op is E.CONST:
            v = f"tl.full([BLOCK_M, BLOCK_N], {literal(o.expr.arg, o.expr.dtype)}, {tl_type(o.expr.dtype)})"
        L.append(f"{IND}tl.store(out{o.index} + {c_off}, {v}.to({tl_type(buf.dtype)}){store_mask})")
    if spec.reductions:
        _partials(spec, L, sc, masks, config)


def _kept(spec: MatmulSpec, axis: str) -> tuple[str, int, str]:
    """(index vector, size, block) of the axis a reduction over `axis` keeps."""
    return ("rn", spec.N, "BLOCK_N") if axis == "m" else ("rm", spec.M, "BLOCK_M")


def _partials(spec: MatmulSpec, L: list[str], sc: _Scope, masks: set[str], config: Config) -> None:
    """Each reduction over the tile's rows (columns): to its workspace row of this tile, or, when one tile
    spans the axis, straight on to the results. Masked-off elements contribute the op's identity."""
    finished = spec.finished_axes(config)
    B = max(1, prod(spec.batch))
    for i, r in enumerate(spec.reductions):
        v = f"{sc.emit(r.value)}.to({tl_type(r.acc_dtype)})"
        if "c_mask" in masks:
            v = f"tl.where(c_mask, {v}, {identity(r.op)})"
        L.append(f"{IND}p{i} = {_REDUCE[r.op]}({v}, axis={0 if r.axis == 'm' else 1})")
        if r.axis in finished:
            idx, kept, _ = _kept(spec, r.axis)
            tile = "pid_m" if r.axis == "m" else "pid_n"
            L.append(f"{IND}tl.store(rws{i} + ({tile} * {B} + pid_b) * {kept} + {idx}, p{i}, mask={idx} < {kept})")
    for axis in ("m", "n"):
        if axis not in finished and any(r.axis == axis for r in spec.reductions):
            _results(spec, L, axis)


def _results(spec: MatmulSpec, L: list[str], axis: str) -> None:
    """The results of the reductions over `axis` from their combined values p{i}, and the outputs of them."""
    idx, kept, block = _kept(spec, axis)
    L.append(f"{IND}k_mask = {idx} < {kept}")
    mine = [i for i, r in enumerate(spec.reductions) if r.axis == axis]
    for i in mine:
        sc = _Scope(spec, L, IND, "f" + axis, f"f{i}_", {"k_mask"}, {RED: f"p{i}"})
        L.append(f"{IND}r{i} = {sc.emit(spec.reductions[i].post)}")
    sc = _Scope(spec, L, IND, "f" + axis, "g", {"k_mask"}, {f"r{i}": f"r{i}" for i in mine})
    off = f"pid_b * {kept} + {idx}" if spec.batch else idx
    for o in spec.reduced_outs:
        if o.axis != axis:
            continue
        v = sc.emit(o.expr)
        if o.expr.op is E.CONST:
            v = f"tl.full([{block}], {literal(o.expr.arg, o.expr.dtype)}, {tl_type(o.expr.dtype)})"
        L.append(f"{IND}tl.store(out{o.index} + {off}, {v}.to({tl_type(spec.outputs[o.index].dtype)}), mask=k_mask)")


def _finish(spec: MatmulSpec, L: list[str], axis: str, signature: str, config: Config) -> None:
    """`{name}_finish_{axis}`: combines the per-tile partials of the reductions over `axis` in tile order
    (deterministic) and writes their results."""
    idx, kept, block = _kept(spec, axis)
    B = max(1, prod(spec.batch))
    L += ["", "", "@triton.jit", f"def {spec.name}_finish_{axis}({signature}):",
          f"{IND}pid_b = tl.program_id(2)", f"{IND}{idx} = tl.program_id(0) * {block} + tl.arange(0, {block})"]
    _batch_indices(spec, L)
    mine = [(i, r) for i, r in enumerate(spec.reductions) if r.axis == axis]
    for i, r in mine:
        L.append(f"{IND}p{i} = tl.full([{block}], {identity(r.op)}, {tl_type(r.acc_dtype)})")
    L.append(f"{IND}for t in range({spec.tiles_along(axis, config)}):")
    for i, r in mine:
        part = f"tl.load(rws{i} + (t * {B} + pid_b) * {kept} + {idx}, mask={idx} < {kept}, other={identity(r.op)})"
        L.append(f"{IND * 2}p{i} = " + (f"p{i} + {part}" if r.op == "sum" else f"{_COMBINE[r.op]}(p{i}, {part})"))
    _results(spec, L, axis)


def _step(spec: MatmulSpec, L: list[str], masks: set[str], op_dt: dt.DType, op_t: str, precision: str) -> None:
    """One K step: the operand tiles (prologues applied) and `acc = tl.dot(a, b, acc)`."""
    ind2 = IND * 2
    operands = []
    for which, e, pro in (("a", spec.a_expr, spec.has_prologue[0]), ("b", spec.b_expr, spec.has_prologue[1])):
        L.extend(_mask_defs(spec, masks, ind2, which))
        sc = _Scope(spec, L, ind2, which, f"{which}p", masks)
        v = sc.emit(e)
        if pro and f"{which}_mask" in masks:
            # a prologue may map the zero padding to non-zero values: re-zero it
            v_masked = f"{which}v"
            L.append(f"{ind2}{v_masked} = tl.where({which}_mask, {v}, 0)")
            v = v_masked
        operands.append(f"{v}.to({op_t})" if e.dtype != op_dt else v)
    L.append(f"{ind2}acc = tl.dot({operands[0]}, {operands[1]}, acc{precision})")


def _scaled_step(spec: MatmulSpec, sd: ScaledDot, L: list[str], masks: set[str]) -> None:
    """One K step of a scaled dot: `acc += tl.dot(a, b) * sa * sb` with the step's scales (a [BLOCK_M, 1]
    column, a [1, BLOCK_N] row). Masked operand loads read 0, whose value is 0 in every format here."""
    ind2 = IND * 2
    tiles = []
    for which, value, scale in (("a", sd.a, sd.a_scale), ("b", sd.b, sd.b_scale)):
        L.extend(_mask_defs(spec, masks, ind2, which))
        v = _Scope(spec, L, ind2, which, f"{which}p", masks).emit_loader(value, f"{which}_")
        tiles.append(f"{v}.to({tl_type(sd.dtype)})" if value.dtype != sd.dtype else v)
        s = f"s{which}"
        L.extend(_mask_defs(spec, masks, ind2, s))
        tiles.append(_Scope(spec, L, ind2, s, f"{s}p", masks).emit_loader(scale, f"{s}_"))
    L.append(f"{ind2}acc += tl.dot({tiles[0]}, {tiles[2]}) * {tiles[1]} * {tiles[3]}")


def render(spec: MatmulSpec, config: Config, interpret: bool = False) -> str:
    """Readable, deterministic Triton source for a matmul kernel (and its split-K finisher).

    The Triton interpreter computes bf16 dots wrongly (triton 3.6), so for it bf16 operands are
    widened to f32: exact, since bf16 products are exact in f32 accumulation."""
    spec = spec.specialized(config)
    masks = _masks(spec, config)
    split = config.int("SPLIT_K")
    args = spec.arg_names() + [w.name for w in spec.workspaces(config)]
    cexpr = "BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, " \
            "SPLIT_K: tl.constexpr"
    L: list[str] = [header(spec, config, "triton"), "import triton", "import triton.language as tl", "", "",
                    "@triton.jit", f"def {spec.name}({', '.join(args)}, {cexpr}):"]
    big = wide(spec, config)
    _prelude(spec, L, big)
    acc_t = "tl.int32" if spec.operand_dtype.is_int else "tl.float32"
    op_dt = spec.operand_dtype
    if interpret and op_dt.name == "bf16":
        op_dt = dt.f32
    op_t = tl_type(op_dt)
    precision = ', input_precision="ieee"' if op_dt.name in ("f32", "f64") else ""
    if spec.operand_dtype.is_int:  # i8 x i8 accumulates exactly in i32 (IMMA on sm_80, IGMMA on sm_90)
        precision = ", out_dtype=tl.int32"
    L.append(f"{IND}acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={acc_t})")
    L.append(f"{IND}for k0 in range(tl.program_id(1) * BLOCK_K, {spec.K}, BLOCK_K * SPLIT_K):")
    ind2 = IND * 2
    L.append(f"{ind2}kk = k0 + tl.arange(0, BLOCK_K)" + (".to(tl.int64)" if big else ""))
    scaled = spec.scaled_dot(config)
    if scaled is not None:
        _scaled_step(spec, scaled, L, masks)
    else:
        _step(spec, L, masks, op_dt, op_t, precision)
    if split == 1:
        _epilogue(spec, L, masks, config)
        for axis in spec.finished_axes(config):
            _finish(spec, L, axis, f"{', '.join(args)}, {cexpr}", config)
        return "\n".join(L) + "\n"
    # split-K: partial sums to the workspace, then a finishing kernel reduces and runs the epilogue
    B = prod(spec.batch)
    full = f"(rm[:, None] < {spec.M}) & (rn[None, :] < {spec.N})"
    ws_off = f"((tl.program_id(1) * {B} + pid_b) * {spec.M} + rm[:, None]) * {spec.N} + rn[None, :]"
    L.append(f"{IND}tl.store(ws + {ws_off}, acc, mask={full})")
    L += ["", "", "@triton.jit", f"def {spec.name}_finish({', '.join(args)}, {cexpr}):"]
    _prelude(spec, L, big)
    L.append(f"{IND}acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={acc_t})")
    L.append(f"{IND}for s in range(SPLIT_K):")
    L.append(f"{IND * 2}acc += tl.load(ws + ((s * {B} + pid_b) * {spec.M} + rm[:, None]) * {spec.N} + rn[None, :], "
             f"mask={full}, other=0)")
    _epilogue(spec, L, masks, config)
    return "\n".join(L) + "\n"
