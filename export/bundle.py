"""`export_bundle`: compile a graph for GPU architectures and/or the CPU and write a self-contained bundle
(cubins, PTX, sources, manifest.json, NAME.h/NAME.c, libNAME_cpu.so with NAME_cpu.h/NAME_cpu.c,
CMakeLists.txt, the NAME.py loader)."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import TilefuseError
from ..fileio import write_atomic
from .csource import render_c, render_cmake
from .manifest import BUNDLE_FORMAT, check_manifest, sha256_bytes, tensors, variant_entry
from .plan import ExportError, check_binary, check_expressible, constants, launch_list, workspace_layout

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOADER_MARK = 'WRITTEN_BY = "unset"  # the exporter writes its tilefuse version here'


def parse_targets(text: str) -> list[str]:
    """`cpu,sm_80,sm_90` as a list of bundle target names (cpu and GPU architectures), each checked."""
    from ..schedule.target import get_target

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ExportError(f"--targets {text!r}: name at least one target, e.g. sm_80,sm_90 or cpu")
    for n in names:
        try:
            kind = get_target(n).kind
        except TilefuseError as exc:
            raise ExportError(f"--targets: {exc}") from None
        if kind not in ("cuda", "cpu"):
            raise ExportError(f"--targets: {n!r} is not a bundle target; a bundle holds cubins for GPU architectures "
                              "(sm_80, sm_90) and a library for cpu")
    if len(set(names)) != len(names):
        raise ExportError(f"--targets {text!r} names a target twice")
    return names


def _compile_variant(graph: Any, arch: str, db: Any, cost_model: Any,
                     buckets: Any = None) -> tuple[Any, dict[str, Any], dict[str, bytes]]:
    """Compile for one arch: the compiled graph, its manifest variant and the files it adds (`buckets` given
    for a static graph: compile_graph's CompileOptionError)."""
    from ..compiler import build_aot, compile_graph

    cg = compile_graph(graph, target=arch, aot=False, db=db, cost_model=cost_model, buckets=buckets)
    check_expressible(cg)  # before the builds, which take seconds per kernel
    for ck in cg.kernels:
        ck.binaries[arch] = build_aot(ck.spec, ck.config, ck.source, cg.target)
    launches = launch_list(cg, arch)
    for launch in launches:
        check_binary(launch, arch)
    consts = constants(cg)
    variant = variant_entry(cg, arch, launches, workspace_layout(cg), consts)
    files: dict[str, bytes] = {k["source"]: ck.source.encode("utf-8") for k, ck in zip(variant["kernels"], cg.kernels)}
    files.update({entry["file"]: c.data.tobytes() for entry, c in zip(variant["constants"], consts)})
    for entry, launch in zip(variant["launches"], launches):
        files[entry["cubin"]] = launch.binary.cubin
        files[entry["ptx"]] = launch.binary.ptx.encode("utf-8")
    return cg, variant, files


def _loader_source(tilefuse_version: str) -> bytes:
    text = resources.files(__package__).joinpath("templates", "loader.py").read_text(encoding="utf-8")
    if LOADER_MARK not in text:
        raise ExportError("export/templates/loader.py lost its WRITTEN_BY line; the package is damaged")
    return text.replace(LOADER_MARK, f"WRITTEN_BY = {tilefuse_version!r}").encode("utf-8")


def export_bundle(graph: Any, targets: list[str], out: str | Path, name: str | None = None, db: Any = "auto",
                  cost_model: Any = "auto", sizes: dict[str, int] | None = None, buckets: Any = None) -> Path:
    """Write the bundle of `graph` for `targets` (GPU architectures and/or cpu) into `out`; returns the
    manifest's path. Nothing is written unless every target builds. A graph with dynamic sizes is
    compiled once per size bucket (`buckets`: as compile_graph takes them) and its bundle takes the sizes
    at run time (the dispatch table: export/gpu_dyn.py, export/cpu.py)."""
    import tilefuse

    name = name or graph.name
    if not _NAME.match(name):
        raise ExportError(f"--name {name!r}: a bundle name is a C identifier (letters, digits, _)")
    files: dict[str, bytes] = {}
    variants, compiled = [], []
    cpu_entry = None
    if "cpu" in targets:
        from .cpu import build_cpu

        cg, cpu_entry, added = build_cpu(graph, name, db, cost_model, buckets)
        compiled.append(cg)
        files.update(added)
    for arch in (t for t in targets if t != "cpu"):
        if getattr(graph, "is_dynamic", False):
            from .gpu_dyn import build_dynamic_variant

            cg, variant, added = build_dynamic_variant(graph, arch, db, cost_model, buckets)
        else:
            cg, variant, added = _compile_variant(graph, arch, db, cost_model, buckets)
        compiled.append(cg)
        variants.append(variant)
        files.update(added)
    manifest = _manifest(compiled[0], name, variants, cpu_entry, sizes, tilefuse.__version__)
    if variants:
        files.update({k: v.encode("utf-8") for k, v in render_c(manifest, files).items()})
    if cpu_entry is not None:
        from .cpu import link_cpu

        files.update(link_cpu(manifest, files))
    files["CMakeLists.txt"] = render_cmake(manifest).encode("utf-8")
    files[f"{name}.py"] = _loader_source(tilefuse.__version__)
    for part, present in (("cuda", bool(variants)), ("cpu", cpu_entry is not None)):
        if present:  # the loader's parts, NAME_cuda.py and NAME_cpu.py
            loader_part = resources.files(__package__).joinpath("templates", f"loader_{part}.py")
            files[f"{name}_{part}.py"] = loader_part.read_bytes()
    manifest["files"] = {k: sha256_bytes(v) for k, v in sorted(files.items())}
    check_manifest(manifest, f"bundle {name}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for fname, data in files.items():
        write_atomic(root / fname, data)
    write_atomic(root / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return root / "manifest.json"


def _manifest(cg: Any, name: str, variants: list[dict[str, Any]], cpu: dict[str, Any] | None,
              sizes: dict[str, int] | None, version: str) -> dict[str, Any]:
    """The manifest without its file digests."""
    from ..codegen.aot import triton_version

    ins, outs = tensors(cg)
    manifest: dict[str, Any] = {
        "bundle_format": BUNDLE_FORMAT, "name": name, "graph": cg.graph.name, "graph_key": cg.graph.key,
        "sizes": dict(sizes or {}), "tilefuse_version": version,
        "triton_version": triton_version() if variants else None, "inputs": ins, "outputs": outs,
        "workspace_bytes": max((v["workspace_bytes"] for v in variants), default=0), "variants": variants,
        "files": {}}
    if cpu is not None:
        manifest["cpu"] = cpu
    if getattr(cg, "buckets", None):
        from .dyn import dynamic_entry

        manifest["dynamic"] = dynamic_entry(cg)
    return manifest
