"""Group lowering shared by every family: a member node's value as one expression whose
leaves are load sites (a buffer read through a strided view), reduction results and the
matmul accumulator."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

from ..errors import LoweringError  # noqa: F401 - re-exported for the families
from ..ir import expr as ex
from ..ir.dtypes import DType
from ..ir.expr import E, Expr
from ..ir.ops import Node, Op, prod  # noqa: F401 - re-exported for the families
from ..passes.partition import Kernel, KernelGraph
from ..passes.views import StridedView, base_of, strided_view

Shape = tuple[int, ...]


@dataclass(frozen=True)
class LoadSite:
    """Input buffer `buffer` (index into the kernel's inputs) read through `view`, whose shape is
    the evaluation domain."""

    buffer: int
    dtype: DType
    view: StridedView


class GroupLowering:
    """Builds leaf-level expressions for the members of one kernel's group."""

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        self.kg = kg
        self.kernel = kernel
        self.members = {id(m) for m in kernel.group.nodes}
        self.loads: list[LoadSite] = []

    def load(self, n: Node, domain: Shape, swap_last: bool = False) -> Expr:
        """A leaf reading materialised value `n` (through its views) at the domain's index;
        `swap_last` reads a transposed operand as (..., row, col) of its logical shape."""
        base = base_of(n)
        buf = self.kg.buffers.get(id(base))
        if buf is None or buf not in self.kernel.inputs:
            raise LoweringError(f"{self.kernel.name}: {n!r} is not an input of the kernel")
        view = strided_view(n)
        if view is None:
            raise LoweringError(f"{self.kernel.name}: view {n!r} needs a copy (legalize_views missed it)")
        view = view.broadcast_to(domain)
        if swap_last:
            nd = len(domain)
            view = view.permute(tuple(range(nd - 2)) + (nd - 1, nd - 2))
        site = LoadSite(self.kernel.inputs.index(buf), buf.dtype, view)
        if site not in self.loads:
            self.loads.append(site)
        return ex.load(self.loads.index(site), buf.dtype)

    def value(self, n: Node, domain: Shape, leaf: Callable[[Node], Expr | None], swap_last: bool = False) -> Expr:
        """`n`'s value at the current index of `domain`, expanded down to leaves."""
        memo: dict[int, Expr] = {}
        # An explicit stack, not recursion: a fused chain of thousands of pointwise ops is as deep.
        stack: list[tuple[Node, bool]] = [(n, False)]
        while stack:
            m, expanded = stack.pop()
            if id(m) in memo:
                continue
            if expanded:
                memo[id(m)] = _inline(m, [memo[id(s)] for s in m.src])
                continue
            out = leaf(m)
            if out is None:
                if m.op is Op.CONST:
                    out = ex.const(m.attr("value"), m.dtype)
                elif m.op is Op.POINTWISE and (id(m) in self.members or id(m) in self.kg.inline):
                    stack.append((m, True))
                    stack.extend((s, False) for s in reversed(m.src) if id(s) not in memo)
                    continue
                elif id(m) in self.members:
                    raise LoweringError(f"{self.kernel.name}: member {m!r} has no lowering in this family")
                else:
                    out = self.load(m, domain, swap_last)
            memo[id(m)] = out
        return memo[id(n)]


def _inline(m: Node, srcs: list[Expr]) -> Expr:
    """Pointwise node `m`'s expression with its operands replaced by their values."""
    return ex.substitute(m.attr("expr"), lambda e: srcs[e.arg] if e.op is E.ARG else None)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
