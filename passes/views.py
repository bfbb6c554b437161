"""Strided views: how a chain of view ops over a contiguous buffer maps indices to offsets."""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.ops import VIEWS, Node, Op, base_of  # noqa: F401 - base_of re-exported for passes and kernels

Shape = tuple[int, ...]


def contiguous_strides(shape: Shape) -> Shape:
    """Row-major strides (in elements) of a contiguous tensor of `shape`."""
    out = [0] * len(shape)
    acc = 1
    for i in range(len(shape) - 1, -1, -1):
        out[i] = acc if shape[i] != 1 else 0
        acc *= shape[i]
    return tuple(out)


@dataclass(frozen=True)
class StridedView:
    """Element offset of index i is offset + sum(i[d] * strides[d])."""

    shape: Shape
    strides: Shape
    offset: int = 0

    @staticmethod
    def contiguous(shape: Shape) -> StridedView:
        return StridedView(tuple(shape), contiguous_strides(tuple(shape)), 0)

    def broadcast_to(self, shape: Shape) -> StridedView:
        """Right-aligned numpy broadcast: new and size-1 dims get stride 0."""
        pad = len(shape) - len(self.shape)
        if pad < 0:
            raise ValueError(f"cannot broadcast view of shape {list(self.shape)} to lower rank {list(shape)}")
        strides = [0] * pad + list(self.strides)
        sh = [1] * pad + list(self.shape)
        for d, (have, want) in enumerate(zip(sh, shape)):
            if have == 1 and want != 1:
                strides[d] = 0
            elif have != want:
                raise ValueError(f"view of shape {list(self.shape)} does not broadcast to {list(shape)}")
        return StridedView(tuple(shape), tuple(strides), self.offset)

    def permute(self, perm: Shape) -> StridedView:
        return StridedView(tuple(self.shape[p] for p in perm), tuple(self.strides[p] for p in perm), self.offset)

    def slice(self, starts: Shape, steps: Shape, shape: Shape) -> StridedView:
        off = self.offset + sum(b * s for b, s in zip(starts, self.strides))
        return StridedView(tuple(shape), tuple(s * st for s, st in zip(self.strides, steps)), off)

    def reshape(self, shape: Shape) -> StridedView | None:
        strides = _reshape_strides(self.shape, self.strides, tuple(shape))
        return None if strides is None else StridedView(tuple(shape), strides, self.offset)

    @property
    def is_contiguous(self) -> bool:
        return self.offset == 0 and all(
            s == c or n == 1 for s, c, n in zip(self.strides, contiguous_strides(self.shape), self.shape))


def _reshape_strides(old: Shape, strides: Shape, new: Shape) -> Shape | None:
    """Strides of `new` viewing the same elements as (old, strides), or None if a copy is needed
    (the algorithm of torch's computeStride)."""
    if not old:
        return tuple(0 for _ in new)
    out = [0] * len(new)
    view_d = len(new) - 1
    chunk = strides[-1]
    tensor_numel = 1
    view_numel = 1
    for td in range(len(old) - 1, -1, -1):
        tensor_numel *= old[td]
        if td == 0 or (old[td - 1] != 1 and strides[td - 1] != tensor_numel * chunk):
            while view_d >= 0 and (view_numel < tensor_numel or new[view_d] == 1):
                out[view_d] = view_numel * chunk
                view_numel *= new[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return None
            if td > 0:
                chunk = strides[td - 1]
                tensor_numel = 1
                view_numel = 1
    if view_d != -1:
        return None
    return tuple(s if n != 1 else 0 for s, n in zip(out, new))


def strided_view(n: Node) -> StridedView | None:
    """The strided view that `n` (a chain of views, or any node) is of its base's contiguous
    layout; None when a reshape needs a copy."""
    chain: list[Node] = []
    while n.op in VIEWS:
        chain.append(n)
        n = n.src[0]
    v: StridedView | None = StridedView.contiguous(n.shape)
    for m in reversed(chain):
        assert v is not None
        if m.op is Op.PERMUTE:
            v = v.permute(m.attr("perm"))
        elif m.op is Op.EXPAND:
            v = v.broadcast_to(m.shape)
        elif m.op is Op.SLICE:
            v = v.slice(m.attr("starts"), m.attr("steps"), m.shape)
        elif m.op is Op.RESHAPE:
            v = v.reshape(m.shape)
            if v is None:
                return None
    return v


def unit_reshape(a: Shape, b: Shape) -> bool:
    """Whether a reshape between `a` and `b` only drops or adds unit axes (the elements keep their order)."""
    return [d for d in a if d != 1] == [d for d in b if d != 1]
