"""Kernel families, one folder each (kernels/<family>/): how a fused group is tiled, the fusion rules
it declares and the template each backend renders. Each family registers itself (kernels/registry.py)
when its folder is imported; `fusion_rules()` is what the pass pipeline fuses by."""

from __future__ import annotations

from ..errors import LoweringError
from ..ir.buckets import Ranges
from ..ir.graph import Graph
from ..passes import PipelineResult, run_pipeline
from ..passes.partition import Kernel, KernelGraph
from . import registry
from .attention import AttentionBwdSpec, AttentionSpec, DecodeSpec
from .base import ConfigRejected, KernelSpec
from .matmul import MatmulSpec
from .quant import QuantMatmulSpec
from .registry import fusion_rules
from .rowwise import RowwiseSpec
from .sparse import SpmmSpec
from .splat import ProjectSpec


def spec_for(kg: KernelGraph, kernel: Kernel, backend: str) -> KernelSpec:
    """The family spec for a kernel; names the op, dtype and backend when none applies."""
    fam = registry.family_for_kind(kernel.group.kind)
    if fam is None or backend not in fam.backends:
        n = kernel.group.anchor or kernel.group.nodes[0]
        head = f"op '{n.op.value}' with dtype {n.dtype} is not supported on backend '{backend}'"
        if fam is None:
            raise LoweringError(f"{head}: no kernel family lowers it yet (families: {', '.join(registry.kinds())})")
        where = {"tvm": "target cpu", "triton": "targets interp, sm_80, sm_90"}
        raise LoweringError(f"{head} ({where.get(backend, backend)}): its kernel family '{fam.name}' has templates "
                            f"for " + ", ".join(f"{b} ({where.get(b, b)})" for b in sorted(fam.backends)) + " only")
    try:
        spec = fam.spec(kg, kernel)
        spec.refuse_dynamic(backend)
        return spec
    except LoweringError as err:  # the same class (StaticSizeRequired stays one), with the backend named
        raise type(err)(f"{err} (backend '{backend}')") from None


def graph_specs(g: Graph, backend: str, ranges: Ranges | None = None) -> tuple[PipelineResult, list[KernelSpec]]:
    """The pass pipeline's result for `g` and each kernel's spec for `backend`; with `ranges` (a size
    bucket of a dynamic graph bound inside it) each dynamic kernel's `bucket` is its part of them."""
    pipeline = run_pipeline(g, fusion_rules())
    specs = [spec_for(pipeline.kernels, k, backend) for k in pipeline.kernels.kernels]
    for s in specs:  # a kernel's bucket names the parameters its sizes read (none: it has no bucket)
        own = tuple(r for r in ranges or () if r[0] in s.size_params())
        s.bucket = own or None
    return pipeline, specs


__all__ = ["AttentionBwdSpec", "AttentionSpec", "ConfigRejected", "DecodeSpec", "KernelSpec", "LoweringError",
           "MatmulSpec", "ProjectSpec", "QuantMatmulSpec", "RowwiseSpec", "SpmmSpec", "fusion_rules",
           "registry", "spec_for"]
