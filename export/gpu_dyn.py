"""The GPU part of a bundle for a graph with dynamic sizes: per architecture, one cubin per distinct
(kernel, config) of the graph's size buckets, and per bucket its launches (grids as size programs,
the dynamic sizes passed as int32 arguments) and its workspace layout at the bucket's upper ends
(which serves every smaller size in it). The C launcher and the Python loader pick the bucket from
the run-time sizes, as compiled graphs do.

The cubins take every dynamic size as a plain i32 argument: build_aot asks Triton for no value
specialisation of integer arguments (no equal-to-1 constant, no divisible-by-16 hint; only pointers
get the divisibility hint), so one cubin is right for every value in its buckets."""

from __future__ import annotations

import dataclasses
from typing import Any

from .dyn import evaluate, size_value
from .manifest import region_entries, variant_entry
from .plan import ExportError, Launch, check_binary, check_expressible, launch_list, workspace_layout


def check_dynamic_kernels(cg: Any) -> None:
    """Refuse what a dynamic GPU bundle cannot carry: host steps, read-backs and auxiliary tensors (the
    attention block lists are computed for one sequence length; a bundle would need them per size). The
    sizes fit the int32 the kernels take: a dynamic parameter is an input's dim, at most 2^31 - 1 (ir/limits)."""
    for b in cg.buckets:
        for ck in b.compiled.kernels:  # before check_expressible, whose reason (a data-dependent mask) is not this
            aux = list(ck.spec.aux_signature(ck.config))
            if aux:  # a bundle's constants are per variant, not per bucket
                raise ExportError(f"kernel {ck.spec.name} ({ck.spec.family}) takes the auxiliary tensors {aux} (block "
                                  f"lists), which depend on the dynamic sizes {sorted(cg.graph.params)}; GPU bundles "
                                  "of dynamic graphs do not compute them per size yet: bind the size with --set "
                                  "(sizes=), or export --targets cpu")
        check_expressible(b.compiled)


def grids_at(names: list[str], lo: dict[str, int], hi: dict[str, int]) -> Any:
    """The grid function launch_list takes: each launch's grid as size programs, checked against the
    kernel's own launch plan at both ends of the bucket (a family that computed a grid from a bound value
    instead of the size expression would differ)."""
    def grids(spec: Any, config: Any, plan: Any) -> list[list[Any]]:
        raw = spec.launches(config, plan.args, None)
        programs = [[size_value(g) for g in ln.grid] for ln in raw]
        for end in (lo, hi):
            want = [list(ln.grid) for ln in spec.launch_plan(config, end).launches]
            got = [[evaluate(g, end) for g in grid] for grid in programs]
            if got != want:
                raise ExportError(f"kernel {spec.name}: its grids {programs} give {got} at {end}, but its launch plan "
                                  f"has {want}; the grid depends on the dynamic sizes {names} in a way a bundle "
                                  "cannot evaluate")
        return programs
    return grids


def _stems(kernels: list[Any]) -> dict[int, str]:
    """A file stem per distinct kernel: its name and which of its configs (k1_matmul__v0, __v1, ...)."""
    out: dict[int, str] = {}
    for ck in kernels:
        n = sum(1 for s in out.values() if s.rsplit("__v", 1)[0] == ck.spec.name)
        out[id(ck)] = f"{ck.spec.name}__v{n}"
    return out


def build_dynamic_variant(graph: Any, arch: str, db: Any, cost_model: Any,
                          buckets: Any) -> tuple[Any, dict[str, Any], dict[str, bytes]]:
    """Compile `graph` once per size bucket for `arch`: the compiled graph, the manifest variant (with its
    `buckets`) and the files it adds (sources, cubins, PTX)."""
    from ..compiler import build_aot, compile_graph

    cg: Any = compile_graph(graph, target=arch, aot=False, db=db, cost_model=cost_model, buckets=buckets)
    check_dynamic_kernels(cg)  # a DynamicCompiledGraph: its buckets and distinct kernels
    names = sorted(graph.params)
    for b in cg.buckets:  # the grids first: the builds take seconds per kernel
        grids = grids_at(names, {n: low for n, low, _ in b.ranges}, {n: high for n, _, high in b.ranges})
        for ck in b.compiled.kernels:
            grids(ck.spec, ck.config, ck.spec.launch_plan(ck.config))
    kernels = cg.distinct_kernels()
    stems = _stems(kernels)
    image: dict[int, str] = {}
    for ck in kernels:
        ck.binaries[arch] = build_aot(ck.spec, ck.config, ck.source, cg.target)
        image.update({id(b): f"{b_fn}__v{stems[id(ck)].rsplit('__v', 1)[1]}" for b_fn, b in ck.binaries[arch].items()})
    launches: list[Launch] = []
    table: list[dict[str, Any]] = []
    for b in cg.buckets:
        lo = {n: low for n, low, _ in b.ranges}
        hi = {n: high for n, _, high in b.ranges}
        mine = launch_list(b.compiled, arch, hi, tuple(names), grids_at(names, lo, hi))
        regions = workspace_layout(b.compiled, sizes=hi)
        table.append({"ranges": [[n, low, high] for n, low, high in b.ranges],
                      "launches": list(range(len(launches), len(launches) + len(mine))),
                      "workspace_bytes": max((r.offset + r.nbytes for r in regions), default=0),
                      "workspace": region_entries(regions)})
        launches += [dataclasses.replace(x, image=image[id(x.binary)]) for x in mine]
    for launch in launches:
        check_binary(launch, arch)
    variant = variant_entry(cg, arch, launches, [], [], [(ck, stems[id(ck)]) for ck in kernels])
    variant["workspace_bytes"] = max(t["workspace_bytes"] for t in table)
    variant["buckets"] = table
    files: dict[str, bytes] = {k["source"]: ck.source.encode("utf-8") for k, ck in zip(variant["kernels"], kernels)}
    for entry, launch in zip(variant["launches"], launches):
        files[entry["cubin"]] = launch.binary.cubin
        files[entry["ptx"]] = launch.binary.ptx.encode("utf-8")
    return cg, variant, files
