"""Graph -> graph rewrites: canonicalize, fuse, partition into kernels (one flat pipeline)."""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Graph
from .canonicalize import canonicalize
from .fuse import FusedGraph, fuse
from .fusion_rules import FusionRules
from .partition import KernelGraph, partition


@dataclass
class PipelineResult:
    """Every stage of the pass pipeline, for reports and `tilefuse show`."""

    source: Graph
    canonical: Graph
    fused: FusedGraph
    kernels: KernelGraph


def run_pipeline(g: Graph, rules: FusionRules) -> PipelineResult:
    """The pass pipeline, one named pass per line; `rules` are the families' fusion rules
    (`kernels.fusion_rules()`)."""
    canonical = canonicalize(g)
    fused = fuse(canonical, rules)
    kernels = partition(fused)
    return PipelineResult(g, canonical, fused, kernels)


__all__ = ["FusedGraph", "FusionRules", "KernelGraph", "PipelineResult", "canonicalize", "fuse", "partition",
           "run_pipeline"]
