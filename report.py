"""Readable compile reports: kernels, fused ops, knobs, resources per arch (strings; the CLI prints)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .compiler import CompiledGraph


def _resources(binaries: dict[str, Any]) -> list[str]:
    out = []
    for fn, b in binaries.items():
        r = b.resources
        spill = "none" if not r.spills else f"stack {r.stack_bytes} B, LDL {r.ldl}, STL {r.stl}"
        mma = f"HGMMA {r.hgmma}" if r.hgmma else f"HMMA {r.hmma}" if r.hmma else "no tensor-core MMA"
        out.append(f"    {fn}: sm_{b.arch} regs {r.registers}, shared {r.shared_bytes} B, spills {spill}, {mma}"
                   f"{' (cache hit)' if getattr(b, 'from_cache', False) else f', built in {b.compile_seconds:.2f} s'}")
    return out


def format_report(cg: CompiledGraph) -> str:
    """One block per kernel: fused ops, config and where it came from, grid, resources."""
    kg = cg.pipeline.kernels
    lines = [f"graph {cg.graph.name} -> {len(cg.kernels)} kernel(s) for target {cg.target.name} "
             f"({cg.target.backend})"]
    for ck in cg.kernels:
        spec = ck.spec
        grp = spec.kernel.group
        lines.append(f"  {spec.name}  [{spec.family}/{grp.kind}]  workload {spec.key[:12]}")
        lines.append(f"    reads  {', '.join(f'{b.name}:{b.dtype}{list(b.shape)}' for b in spec.inputs) or '-'}")
        lines.append(f"    writes {', '.join(f'{b.name}:{b.dtype}{list(b.shape)}' for b in spec.outputs)}")
        for s in spec.summary().splitlines():
            lines.append(f"    fuses  {s}")
        lines.append(f"    config ({ck.config_source}) {ck.config.to_json()}  grid {spec.grid(ck.config)}")
        for s in spec.report_lines(ck.config):
            lines.append(f"    {s}")
        lines.append(f"    build  {ck.build_seconds:.2f} s{' (cache hit)' if ck.cached else ''}")
        for bins in ck.binaries.values():
            lines.extend(_resources(bins))
    for decision in getattr(cg, "patterns", ()):
        lines.extend(f"  {s}" for s in decision.lines())
    lines.append("  outputs: " + ", ".join(f"{n} <- {b.name}" for n, b in kg.outputs))
    return "\n".join(lines)


def format_pipeline(cg_or_pipeline: Any) -> str:
    """The graph after each pass (for `tilefuse show`)."""
    p = getattr(cg_or_pipeline, "pipeline", cg_or_pipeline)
    out = ["== source ==", p.source.text, "== canonicalize ==", p.canonical.text, "== fuse =="]
    for i, g in enumerate(p.fused.groups):
        ops = ", ".join(n.op.value for n in g.nodes) or "copy"
        pro = f"  prologue {len(g.prologue)}" if g.prologue else ""
        out.append(f"  group {i}: {g.kind:<9} domain {list(g.domain)}  nodes [{ops}]  "
                   f"outputs {[list(o.shape) for o in g.outputs]}{pro}")
    out.append("== partition ==")
    for k in p.kernels.kernels:
        out.append(f"  {k.name}: reads {[b.name for b in k.inputs]} writes {[b.name for b in k.outputs]}")
    return "\n".join(out)
