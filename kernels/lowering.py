"""Group lowering shared by every family: a member node's value as one expression whose
leaves are load sites (a buffer read through a strided view), reduction results and the
matmul accumulator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..ir import expr as ex
from ..ir.dtypes import DType
from ..ir.expr import E, Expr
from ..ir.ops import Node, Op
from ..passes.partition import Kernel, KernelGraph
from ..passes.views import StridedView, base_of, strided_view

Shape = tuple[int, ...]


class KernelLoweringError(NotImplementedError):
    """A fused group that a kernel family cannot lower."""


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
        self._memo: dict[tuple[int, Shape, int], Expr] = {}

    def load(self, n: Node, domain: Shape) -> Expr:
        """A leaf reading materialised value `n` (through its views) at the domain's index."""
        base = base_of(n)
        buf = self.kg.buffers.get(id(base))
        if buf is None or buf not in self.kernel.inputs:
            raise KernelLoweringError(f"{self.kernel.name}: {n!r} is not an input of the kernel")
        view = strided_view(n)
        if view is None:
            raise KernelLoweringError(f"{self.kernel.name}: view {n!r} needs a copy (legalize_views missed it)")
        site = LoadSite(self.kernel.inputs.index(buf), buf.dtype, view.broadcast_to(domain))
        if site not in self.loads:
            self.loads.append(site)
        return ex.load(self.loads.index(site), buf.dtype)

    def value(self, n: Node, domain: Shape, leaf: Callable[[Node], Expr | None]) -> Expr:
        """`n`'s value at the current index of `domain`, expanded down to leaves."""
        key = (id(n), domain, id(leaf))
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        out = leaf(n)
        if out is None:
            if n.op is Op.CONST:
                out = ex.const(n.attr("value"), n.dtype)
            elif n.op is Op.POINTWISE and (id(n) in self.members or id(n) in self.kg.inline):
                srcs = [self.value(s, domain, leaf) for s in n.src]
                out = ex.substitute(n.attr("expr"), lambda e: srcs[e.arg] if e.op is E.ARG else None)
            elif id(n) in self.members:
                raise KernelLoweringError(f"{self.kernel.name}: member {n!r} has no lowering in this family")
            else:
                out = self.load(n, domain)
        self._memo[key] = out
        return out


def prod(xs: Shape) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
