"""One module per kernel family: how a fused group is tiled and the template each backend renders."""

from __future__ import annotations

from ..passes.partition import Kernel, KernelGraph
from .attention import AttentionSpec
from .attention_bwd import AttentionBwdSpec
from .base import ConfigRejected, KernelSpec
from .decode import DecodeSpec
from .lowering import KernelLoweringError
from .matmul import MatmulSpec
from .rowwise import RowwiseSpec

# Group kind (passes/fuse.py; an anchor's op name for anchors other than matmul) -> family.
# Each family module adds its own line here.
FAMILIES: dict[str, type[KernelSpec]] = {
    "pointwise": RowwiseSpec,
    "reduction": RowwiseSpec,
    "copy": RowwiseSpec,
    "matmul": MatmulSpec,
    "attention": AttentionSpec,
    "paged_attention": DecodeSpec,
    "attention_bwd": AttentionBwdSpec,
}


class UnsupportedKernel(NotImplementedError):
    """A fused group no kernel family lowers for the requested backend."""


def spec_for(kg: KernelGraph, kernel: Kernel, backend: str) -> KernelSpec:
    """The family spec for a kernel; names the op, dtype and backend when none applies."""
    cls = FAMILIES.get(kernel.group.kind)
    if cls is None or backend not in cls.backends:
        n = kernel.group.anchor or kernel.group.nodes[0]
        raise UnsupportedKernel(f"op '{n.op.value}' with dtype {n.dtype} is not supported on backend '{backend}': "
                                "no kernel family lowers it yet (families: " + ", ".join(sorted(set(FAMILIES))) + ")")
    try:
        return cls(kg, kernel)
    except KernelLoweringError as err:
        raise UnsupportedKernel(f"{err} (backend '{backend}')") from None


__all__ = ["FAMILIES", "ConfigRejected", "KernelSpec", "MatmulSpec", "RowwiseSpec", "UnsupportedKernel", "spec_for"]
