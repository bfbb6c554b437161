"""What the sparse family's Triton templates share: expressions rendered at tile index strings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ...codegen.triton_expr import TileEmitter, literal, tl_type
from ...ir.expr import E, Expr

if TYPE_CHECKING:
    from ..base import KernelSpec
    from .spec import SpmmSpec

IND = "    "


class Scope:
    """Expressions of one operand's domain rendered at index strings `idx` (one per dimension), loads
    masked by `mask` (zero where it is false)."""

    def __init__(self, spec: KernelSpec, lines: list[str], indent: str, prefix: str, idx: tuple[str, ...],
                 mask: str | None, env: Mapping[str, str] | None = None):
        self.spec, self.lines, self.indent, self.prefix, self.idx, self.mask = spec, lines, indent, prefix, idx, mask
        self.env = env or {}  # VAR leaves by name; any other VAR is the accumulator `acc`
        self.loaded: dict[int, str] = {}
        self.em = TileEmitter(lines, indent, prefix, self.leaf)

    def leaf(self, e: Expr) -> str | None:
        if e.op is E.VAR:
            return self.env.get(e.arg, "acc")
        if e.op is E.LOAD:
            return self.load(e.arg)
        return None

    def load(self, slot: int) -> str:
        if slot not in self.loaded:
            v = self.spec.loads[slot].view
            terms = [str(v.offset)] if v.offset else []
            terms += [i if s == 1 else f"{i} * {s}" for i, s in zip(self.idx, v.strides) if s]
            if len(self.idx) > 1 or not any(v.strides):
                # keep the tile's shape when a dimension is broadcast (stride 0), or when no index
                # reaches the offset at all (an array of one element: nnz = 1)
                terms.append(f"0 * ({' + '.join(self.idx)})")
            off = " + ".join(terms) or "0"
            mask = f", mask={self.mask}, other=0" if self.mask else ""
            name = f"{self.prefix}l{slot}"
            self.lines.append(f"{self.indent}{name} = tl.load(in{self.spec.loads[slot].buffer} + ({off}){mask})")
            self.loaded[slot] = name
        return self.loaded[slot]

    def emit(self, e: Expr) -> str:
        """The tile value of `e`; zero where the mask is false (a prologue may map 0 to non-zero)."""
        v = self.em.emit(e)
        if e.op is E.LOAD or not self.mask:
            return v
        name = f"{self.prefix}m{len(self.lines)}"
        self.lines.append(f"{self.indent}{name} = tl.where({self.mask}, {v}, 0)")
        return name


def store_outputs(spec: SpmmSpec, L: list[str], idx: tuple[str, str], mask: str, tile: str, offset: str) -> None:
    """The epilogue: every output expression at (row, column) index strings `idx`, stored at `offset`
    (element offset strings of the [M, N] outputs) where `mask`; `tile` is the tile's shape for a constant."""
    sc = Scope(spec, L, IND, "o", idx, mask)
    for i, e in spec.outs:
        v = sc.em.emit(e)
        if e.op is E.CONST:
            v = f"tl.full({tile}, {literal(e.arg, e.dtype)}, {tl_type(e.dtype)})"
        L.append(f"{IND}tl.store(out{i} + {offset}, {v}.to({tl_type(spec.outputs[i].dtype)}), mask={mask})")


def dot_args(spec: SpmmSpec, a: str, b: str) -> tuple[str, str, str]:
    """(a, b, extra tl.dot arguments): 16-bit operands of one dtype go to the tensor cores as they are;
    anything else is computed in the accumulator's dtype, f32 at IEEE precision (never tf32)."""
    va, vb = spec.values.dtype, spec.b.dtype
    if va == vb and va.itemsize == 2 and va.is_float:
        return a, b, ""
    t = tl_type(spec.acc_dtype)
    extra = ', input_precision="ieee"' if spec.acc_dtype.itemsize == 4 else ""
    return f"{a}.to({t})", f"{b}.to({t})", extra
