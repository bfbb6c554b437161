"""Graph -> graph rewrites: canonicalize, fuse, partition into kernels (one flat pipeline)."""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Graph
from .canonicalize import canonicalize
from .fuse import FusedGraph, fuse
from .partition import KernelGraph, partition


@dataclass
class PipelineResult:
    """Every stage of the pass pipeline, for reports and `tilefuse show`."""

    source: Graph
    canonical: Graph
    fused: FusedGraph
    kernels: KernelGraph


def run_pipeline(g: Graph) -> PipelineResult:
    """The pass pipeline, one named pass per line."""
    canonical = canonicalize(g)
    fused = fuse(canonical)
    kernels = partition(fused)
    return PipelineResult(g, canonical, fused, kernels)


__all__ = ["FusedGraph", "KernelGraph", "PipelineResult", "canonicalize", "fuse", "partition", "run_pipeline"]
