"""What both splatting kernels share: where each operand of the anchor lives (an input argument read
through a strided view), which kernel output holds each result, the host-side value checks run
before the first launch, and the float32 arctangent the fisheye camera needs (Triton has no atan2
that also runs under the interpreter)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import TilefuseError
from ...ir.dtypes import DType
from ...ir.ops import Node, Op
from ..base import KernelSpec
from ..lowering import LoweringError


class SplatInputError(TilefuseError, ValueError):
    """A splatting kernel called with values it cannot render (non-finite means, non-positive scales,
    an all-zero quaternion, a non-positive focal length): names the op, the tensor and the first bad row."""


@dataclass(frozen=True)
class Operand:
    """Operand `name` of the anchor: the kernel input `arg` (index `buffer`) read through a strided view."""

    name: str
    buffer: int
    dtype: DType
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int

    @property
    def arg(self) -> str:
        return f"in{self.buffer}"

    def at(self, *index: str) -> str:
        """The Triton address of element `index` (one expression per axis)."""
        terms = [str(self.offset)] if self.offset else []
        for i, s in zip(index, self.strides):
            if s:
                terms.append(f"({i})" if s == 1 else f"({i}) * {s}")
        return f"{self.arg} + " + (" + ".join(terms) if terms else "0")

    def view_of(self, t: Any) -> Any:
        """The operand's values out of its input buffer tensor `t` (torch, contiguous)."""
        return t.reshape(-1).as_strided(self.shape, self.strides, self.offset)


def anchor_operands(spec: KernelSpec, node: Node, names: Sequence[str]) -> dict[str, Operand]:
    """Each source of `node` as an Operand read straight from an input (views allowed, computed
    values are not: they would be a prologue, and splatting fuses none)."""
    out = {}
    for name, src in zip(names, node.src):
        e = spec.lowering.load(src, src.shape)
        site = spec.lowering.loads[e.arg]
        out[name] = Operand(name, site.buffer, site.dtype, tuple(src.shape), tuple(site.view.strides),
                            site.view.offset)
    return out


def result_outputs(spec: KernelSpec, node: Node, roles: Sequence[str],
                   members: Sequence[tuple[Node, str | tuple[str, ...]]] = ()) -> dict[str, str]:
    """Result role -> the kernel output argument that holds it (roles the graph does not use are absent);
    `members` names the roles of other group members the kernel computes (a fused sibling op: one role, or
    one per result of a multi-result sibling)."""
    outs = {}
    for i, out in enumerate(spec.kernel.group.outputs):
        role = next((r for m, r in members if m is out and isinstance(r, str)), None)
        role = role or next((r[out.attr("index")] for m, r in members if isinstance(r, tuple)
                             and out.op is Op.RESULT and out.src[0] is m), None)
        if role is not None:
            outs[role] = f"out{i}"
        elif out.op is Op.RESULT and out.src[0] is node:
            outs[roles[out.attr("index")]] = f"out{i}"
        elif out is node:
            outs[roles[0]] = f"out{i}"
        else:
            raise LoweringError(f"{spec.name}: output {out!r} is not a result of {node.op.value}")
    return outs


def first_bad(bad: Any) -> str:
    """'k rows (first: row i)' of a boolean torch tensor of bad rows."""
    idx = bad.nonzero()
    return f"{idx.shape[0]} row{'s' if idx.shape[0] != 1 else ''} (first: row {int(idx[0, 0])})"


ATAN = '''
@triton.jit
def _atan_pos(u):
    """atan(u) for u >= 0 in float32 (Cephes atanf: two range reductions and a degree-9 polynomial)."""
    big = u > 2.414213562373095
    mid = (u > 0.4142135623730950) & (~big)
    x = tl.where(big, -1.0 / tl.maximum(u, 1e-30), tl.where(mid, (u - 1.0) / (u + 1.0), u))
    y = tl.where(big, 1.5707963267948966, tl.where(mid, 0.7853981633974483, 0.0))
    z = x * x
    p = (((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1) * z * x + x
    return y + p
'''
