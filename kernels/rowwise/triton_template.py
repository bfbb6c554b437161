"""Triton template of the pointwise / row-reduction family."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...schedule.config import Config
from ...codegen.triton_expr import TileEmitter, literal, tl_type
from ...ir import dtypes as dt
from ...ir.expr import E, Expr
from ...ir.fp8_encode import soft_fp8_casts
from .fp8_bytes import FP8, as_bytes, byte_expr
from ...codegen.headers import header

if TYPE_CHECKING:
    from .spec import Reduction, RowwiseSpec

INDEX64 = 2**31 - 1


def _acc(op: str, dtype_name: str, is_float: bool) -> tuple[str, str]:
    """(accumulator tl type, initial value) of a reduction."""
    acc_t = "tl.float64" if dtype_name == "f64" else "tl.float32" if is_float else \
        "tl.int64" if dtype_name == "i64" else "tl.int32"
    if op in ("sum", "mean"):
        init = "0"
    elif op == "max":
        init = "float('-inf')" if is_float else ("-9223372036854775808" if dtype_name == "i64" else "-2147483648")
    else:
        init = "float('inf')" if is_float else ("9223372036854775807" if dtype_name == "i64" else "2147483647")
    return acc_t, init


class _Body:
    """Emits the loads and arithmetic of one scope (a column chunk or the row scope)."""

    def __init__(self, spec: RowwiseSpec, lines: list[str], indent: str, prefix: str, level: str,
                 bound: dict[str, str], fp8_mode: str = "native"):
        self.spec = spec
        self.fp8_mode = fp8_mode
        self.level = level
        self.bound = bound  # var name -> python name already computed in an outer scope
        self.em = TileEmitter(lines, indent, prefix, self.leaf)
        self.lines = lines
        self.indent = indent
        self.loaded: dict[int, str] = {}

    def leaf(self, e: Expr) -> str | None:
        if e.op is E.VAR:
            return self.bound[e.arg]
        if e.op is E.LOAD:
            return self.load(e.arg)
        return None

    def load(self, slot: int) -> str:
        if slot in self.loaded:
            return self.loaded[slot]
        site = self.spec.loads[slot]
        terms = [str(site.view.offset)] if site.view.offset else []
        nd = len(site.view.shape)
        for d, stride in enumerate(site.view.strides):
            if stride == 0:
                continue
            if d == nd - 1:
                if self.level == "row":
                    raise AssertionError("row-level load varies along the reduced axis")
                idx = "cols"
            else:
                idx = f"i{d}"
            terms.append(idx if stride == 1 else f"{idx} * {stride}")
        off = " + ".join(terms) if terms else "0"
        mask = "rmask" if self.level == "row" else "mask"
        name = f"ld{slot}" if self.level != "row" else f"rld{slot}"
        # Broadcast loads that vary along neither axis to the scope's tile shape.
        shape_ref = "rows" if self.level == "row" else "(rows + cols)"
        # the interpreter cannot cast an integer 0 to fp8 (a quantize's codes read back by a copy)
        other = "0.0" if self.spec.inputs[site.buffer].dtype in (dt.f8e4m3, dt.f8e5m2) else "0"
        self.lines.append(f"{self.indent}{name} = tl.load(in{site.buffer} + ({off}) + 0 * {shape_ref}, "
                          f"mask={mask}, other={other})")
        self.loaded[slot] = name
        return name

    def emit(self, e: Expr) -> str:
        # "soft": the interpreter's f32 -> e4m3 conversion drops the rounding carry and rounds ties away:
        # encode in software (integer bit ops, ir/fp8_encode.py) and bitcast the byte; "bytes": sm_80 has no
        # fp8 type at all, the byte itself is stored through a u8 pointer (fp8_bytes.py)
        if self.fp8_mode == "bytes":
            return self.em.emit(byte_expr(e))
        return self.em.emit(soft_fp8_casts(e) if self.fp8_mode == "soft" else e)


def w_type(d: dt.DType, fp8_mode: str) -> str:
    """The tl type an output of dtype `d` is stored as: fp8 as its byte in "bytes" mode."""
    return "tl.uint8" if fp8_mode == "bytes" and d in FP8 else tl_type(d)


def _tile(value: str, e: Expr, level: str) -> str:
    """A value broadcast to the scope's full tile shape in its own dtype."""
    shape = "[BLOCK_R, 1]" if level == "row" else "[BLOCK_R, BLOCK_C]"
    if e.op is E.CONST:
        return f"tl.full({shape}, {literal(e.arg, e.dtype)}, {tl_type(e.dtype)})"
    return f"tl.broadcast_to({value}, {shape})"


class _Writer:
    """Writes one rowwise kernel's lines: row indices, then either one tiled pointwise pass, or one
    pass per reduction (each followed by the row values it unlocks) and a final pass for the outputs."""

    IND = "    "

    def __init__(self, spec: RowwiseSpec, config: Config, fp8_mode: str = "native"):
        self.spec = spec
        self.fp8_mode = fp8_mode
        self.bound: dict[str, str] = {}
        args = ", ".join(spec.arg_names())
        self.lines: list[str] = [header(spec, config, "triton"), "import triton", "import triton.language as tl",
                                 "", "", "@triton.jit",
                                 f"def {spec.name}({args}, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):"]

    def add(self, line: str, depth: int = 1) -> None:
        self.lines.append(self.IND * depth + line)

    def row_indices(self) -> None:
        spec = self.spec
        big = max([b.numel for b in spec.inputs + spec.outputs] + [1]) > INDEX64
        self.add(f"ROWS = {spec.rows}")
        self.add(f"COLS = {spec.cols}")
        self.add("rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]")
        if big:
            self.add("rows = rows.to(tl.int64)")
        self.add("rmask = rows < ROWS")
        lead = spec.domain[:-1]
        for d in range(len(lead)):
            inner = 1
            for s in lead[d + 1:]:
                inner *= s
            expr = "rows" if inner == 1 else f"(rows // {inner})"
            if d > 0:
                expr = f"{expr} % {lead[d]}"
            self.add(f"i{d} = {expr}")

    def column_loop(self) -> str:
        """Open a loop over column tiles; returns the loop body's indent."""
        self.add("for c0 in range(0, COLS, BLOCK_C):")
        self.add("cols = c0 + tl.arange(0, BLOCK_C)[None, :]", 2)
        self.add("mask = rmask & (cols < COLS)", 2)
        return self.IND * 2

    def store_domain(self, indent: str) -> None:
        body = _Body(self.spec, self.lines, indent, "t", "domain", self.bound, self.fp8_mode)
        for o in self.spec.outs:
            if o.level != "domain":
                continue
            v = body.emit(o.expr)
            buf = self.spec.outputs[o.index]
            self.lines.append(f"{indent}tl.store(out{o.index} + rows * COLS + cols, "
                              f"{_tile(v, o.expr, 'domain')}.to({w_type(buf.dtype, self.fp8_mode)}), mask=mask)")

    def row_scope(self, done: set[int]) -> None:
        """Bind the row values whose reductions are all done."""
        body = _Body(self.spec, self.lines, self.IND, "w", "row", self.bound, self.fp8_mode)
        for j, rv in enumerate(self.spec.rowvals):
            if f"v{j}" not in self.bound and rv.deps <= done:
                self.add(f"v{j} = {_tile(body.emit(rv.expr), rv.expr, 'row')}")
                self.bound[f"v{j}"] = f"v{j}"

    def reduction_pass(self, k: int, r: Reduction) -> None:
        acc_t, init = _acc(r.op, r.dtype.name, r.dtype.is_float)
        self.add(f"# pass {k}: {r.op} over the columns")
        self.add(f"acc{k} = tl.full([BLOCK_R, BLOCK_C], {init}, {acc_t})")
        indent = self.column_loop()
        body = _Body(self.spec, self.lines, indent, "t", "domain", self.bound, self.fp8_mode)
        v = f"{body.emit(r.expr)}.to({acc_t})"
        if r.op in ("sum", "mean"):
            self.lines.append(f"{indent}acc{k} += tl.where(mask, {v}, 0)")
        else:
            fn = "tl.maximum" if r.op == "max" else "tl.minimum"
            self.lines.append(f"{indent}acc{k} = {fn}(acc{k}, tl.where(mask, {v}, {init}))")
        red = {"sum": "tl.sum", "mean": "tl.sum", "max": "tl.max", "min": "tl.min"}[r.op]
        total = f"{red}(acc{k}, axis=1)[:, None]"
        if r.op == "mean":
            total = f"{total} / COLS"
        self.add(f"r{k} = ({total}).to({tl_type(r.dtype)})")
        self.bound[f"r{k}"] = f"r{k}"

    def row_outputs(self) -> None:
        body = _Body(self.spec, self.lines, self.IND, "u", "row", self.bound, self.fp8_mode)
        for o in self.spec.outs:
            if o.level == "row":
                v = body.emit(o.expr)
                buf = self.spec.outputs[o.index]
                ty = w_type(buf.dtype, self.fp8_mode)
                self.add(f"tl.store(out{o.index} + rows, {_tile(v, o.expr, 'row')}.to({ty}), "
                         "mask=rmask)")

    def source(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(spec: RowwiseSpec, config: Config, interpret: bool = False) -> str:
    """Readable, deterministic Triton source for a rowwise kernel."""
    w = _Writer(spec, config, "bytes" if as_bytes(config) else "soft" if interpret else "native")
    w.row_indices()
    if not spec.has_reduction:
        w.add("cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]")
        w.add("mask = rmask & (cols < COLS)")
        w.store_domain(w.IND)
        return w.source()
    done: set[int] = set()
    w.row_scope(done)
    for k, r in enumerate(spec.reductions):
        w.reduction_pass(k, r)
        done.add(k)
        w.row_scope(done)
    if any(o.level == "domain" for o in spec.outs):
        w.add("# final pass: write the outputs")
        w.store_domain(w.column_loop())
    w.row_outputs()
    return w.source()
