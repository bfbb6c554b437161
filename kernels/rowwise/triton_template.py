"""Triton template of the pointwise / row-reduction family."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...schedule.config import Config
from ...codegen.triton_expr import TileEmitter, literal, tl_type
from ...ir.expr import E, Expr
from ...codegen.headers import header

if TYPE_CHECKING:
    from .spec import RowwiseSpec

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
                 bound: dict[str, str]):
        self.spec = spec
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
        self.lines.append(f"{self.indent}{name} = tl.load(in{site.buffer} + ({off}) + 0 * {shape_ref}, "
                          f"mask={mask}, other=0)")
        self.loaded[slot] = name
        return name

    def emit(self, e: Expr) -> str:
        return self.em.emit(e)


def _tile(value: str, e: Expr, level: str) -> str:
    """A value broadcast to the scope's full tile shape in its own dtype."""
    shape = "[BLOCK_R, 1]" if level == "row" else "[BLOCK_R, BLOCK_C]"
    if e.op is E.CONST:
        return f"tl.full({shape}, {literal(e.arg, e.dtype)}, {tl_type(e.dtype)})"
    return f"tl.broadcast_to({value}, {shape})"


def render(spec: RowwiseSpec, config: Config, interpret: bool = False) -> str:
    """Readable, deterministic Triton source for a rowwise kernel."""
    args = ", ".join(spec.arg_names())
    big = max([b.numel for b in spec.inputs + spec.outputs] + [1]) > INDEX64
    L: list[str] = [header(spec, config, "triton"), "import triton", "import triton.language as tl", "", "",
                    "@triton.jit", f"def {spec.name}({args}, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):"]
    ind = "    "
    L.append(f"{ind}ROWS = {spec.rows}")
    L.append(f"{ind}COLS = {spec.cols}")
    L.append(f"{ind}rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]")
    if big:
        L.append(f"{ind}rows = rows.to(tl.int64)")
    L.append(f"{ind}rmask = rows < ROWS")
    lead = spec.domain[:-1]
    for d in range(len(lead)):
        inner = 1
        for s in lead[d + 1:]:
            inner *= s
        expr = "rows" if inner == 1 else f"(rows // {inner})"
        if d > 0:
            expr = f"{expr} % {lead[d]}"
        L.append(f"{ind}i{d} = {expr}")
    bound: dict[str, str] = {}

    def store_domain(body: _Body) -> None:
        for o in spec.outs:
            if o.level != "domain":
                continue
            v = body.emit(o.expr)
            buf = spec.outputs[o.index]
            L.append(f"{body.indent}tl.store(out{o.index} + rows * COLS + cols, "
                     f"{_tile(v, o.expr, 'domain')}.to({tl_type(buf.dtype)}), mask=mask)")

    def row_scope(done: set[int]) -> None:
        body = _Body(spec, L, ind, "w", "row", bound)
        for j, rv in enumerate(spec.rowvals):
            if f"v{j}" not in bound and rv.deps <= done:
                L.append(f"{ind}v{j} = {_tile(body.emit(rv.expr), rv.expr, 'row')}")
                bound[f"v{j}"] = f"v{j}"

    if not spec.has_reduction:
        L.append(f"{ind}cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]")
        L.append(f"{ind}mask = rmask & (cols < COLS)")
        store_domain(_Body(spec, L, ind, "t", "domain", bound))
        return "\n".join(L) + "\n"

    done: set[int] = set()
    row_scope(done)
    for k, r in enumerate(spec.reductions):
        acc_t, init = _acc(r.op, r.dtype.name, r.dtype.is_float)
        L.append(f"{ind}# pass {k}: {r.op} over the columns")
        L.append(f"{ind}acc{k} = tl.full([BLOCK_R, BLOCK_C], {init}, {acc_t})")
        L.append(f"{ind}for c0 in range(0, COLS, BLOCK_C):")
        ind2 = ind * 2
        L.append(f"{ind2}cols = c0 + tl.arange(0, BLOCK_C)[None, :]")
        L.append(f"{ind2}mask = rmask & (cols < COLS)")
        body = _Body(spec, L, ind2, "t", "domain", bound)
        v = f"{body.emit(r.expr)}.to({acc_t})"
        if r.op in ("sum", "mean"):
            L.append(f"{ind2}acc{k} += tl.where(mask, {v}, 0)")
        else:
            fn = "tl.maximum" if r.op == "max" else "tl.minimum"
            L.append(f"{ind2}acc{k} = {fn}(acc{k}, tl.where(mask, {v}, {init}))")
        red = {"sum": "tl.sum", "mean": "tl.sum", "max": "tl.max", "min": "tl.min"}[r.op]
        total = f"{red}(acc{k}, axis=1)[:, None]"
        if r.op == "mean":
            total = f"{total} / COLS"
        L.append(f"{ind}r{k} = ({total}).to({tl_type(r.dtype)})")
        bound[f"r{k}"] = f"r{k}"
        done.add(k)
        row_scope(done)
    if any(o.level == "domain" for o in spec.outs):
        L.append(f"{ind}# final pass: write the outputs")
        L.append(f"{ind}for c0 in range(0, COLS, BLOCK_C):")
        ind2 = ind * 2
        L.append(f"{ind2}cols = c0 + tl.arange(0, BLOCK_C)[None, :]")
        L.append(f"{ind2}mask = rmask & (cols < COLS)")
        store_domain(_Body(spec, L, ind2, "t", "domain", bound))
    body = _Body(spec, L, ind, "u", "row", bound)
    for o in spec.outs:
        if o.level == "row":
            v = body.emit(o.expr)
            buf = spec.outputs[o.index]
            L.append(f"{ind}tl.store(out{o.index} + rows, {_tile(v, o.expr, 'row')}.to({tl_type(buf.dtype)}), "
                     "mask=rmask)")
    return "\n".join(L) + "\n"
