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
        grid = tuple(int(g) for g in spec.grid(ck.config))  # a dynamic kernel's at its bucket's sizes
        lines.append(f"    config ({ck.config_source}) {ck.config.to_json()}  grid {grid}")
        for s in spec.report_lines(ck.config):
            lines.append(f"    {s}")
        lines.append(f"    build  {ck.build_seconds:.2f} s{' (cache hit)' if ck.cached else ''}")
        for bins in ck.binaries.values():
            lines.extend(_resources(bins))
    for decision in getattr(cg, "patterns", ()):
        lines.extend(f"  {s}" for s in decision.lines())
    lines.append("  outputs: " + ", ".join(f"{n} <- {b.name}" for n, b in kg.outputs))
    if getattr(cg, "buckets", None):
        lines += dispatch_lines(cg)
    return "\n".join(lines)


def dispatch_lines(cg: Any) -> list[str]:
    """A dynamic graph's dispatch table: per kernel, its size buckets (consecutive ones with one config
    merged) -> config, where the config came from, and the binary (#n, shared by equal configs)."""
    params = ", ".join(f"{k}={p.text()}" for k, p in cg.graph.params.items())
    binaries = {id(ck): i for i, ck in enumerate(cg.distinct_kernels())}
    lines = [f"  dynamic sizes {params}: {len(cg.buckets)} bucket(s), {len(binaries)} binaries; the kernels "
             "above are the hint's bucket", "  dispatch table (size bucket -> config):"]
    for k, ck0 in enumerate(cg.buckets[0].compiled.kernels):
        lines.append(f"    {ck0.spec.name}")
        rows: list[list[Any]] = []
        for b in cg.buckets:
            ck = b.compiled.kernels[k]
            if rows and rows[-1][1] is ck:
                rows[-1][0] = (rows[-1][0][0], b.ranges)
            else:
                rows.append([(b.ranges, b.ranges), ck])
        for (first, last), ck in rows:
            span = ", ".join(f"{n}={lo}" + (f"..{hi2}" if hi2 != lo else "")
                             for (n, lo, _), (_, _, hi2) in zip(first, last))
            lines.append(f"      {span:<16} #{binaries[id(ck)]:<3} {ck.config.to_json()}  ({ck.config_source})")
    return lines


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
