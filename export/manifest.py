"""The bundle manifest: built from the compiled graphs and their launch lists, validated against the
schema shipped in the package, and checked against the files of a bundle directory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .plan import Constant, ExportError, Launch, Region

BUNDLE_FORMAT = 4  # 3: dynamic sizes (size programs, buckets); 4: GPU dispatch tables; older loaders refuse it


def sha256_bytes(data: bytes) -> str:
    """The hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def tensors(cg: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's inputs and outputs as manifest entries (name, dtype, shape; a dynamic size as a program)."""
    from .dyn import size_value

    ins = [{"name": n.attr("name"), "dtype": n.dtype.name, "shape": [size_value(s) for s in n.shape]}
           for n in cg.graph.inputs]
    outs = [{"name": name, "dtype": b.dtype.name, "shape": [size_value(s) for s in b.shape]}
            for name, b in cg.pipeline.kernels.outputs]
    return ins, outs


def launch_entry(launch: Launch, arch: str) -> dict[str, Any]:
    """One launch as a manifest entry; its cubin and PTX file names follow the function and arch."""
    b = launch.binary
    meta = b.metadata or {}
    return {"kernel": launch.kernel, "function": launch.function, "mangled_name": b.fn_name,
            "grid": list(launch.grid), "block": [32 * launch.num_warps, 1, 1], "num_warps": launch.num_warps,
            "num_stages": launch.num_stages, "shared_mem_bytes": int(b.shared_mem_bytes),
            "scratch": {"global_bytes": int(meta.get("global_scratch_size", 0) or 0),
                        "profile_bytes": int(meta.get("profile_scratch_size", 0) or 0)},
            "args": [{"name": a.name, "role": a.role, "index": a.index, "buffer": a.what} for a in launch.args],
            "zero_before": [list(z) for z in launch.zero],
            "cubin": f"{launch.image or launch.function}.{arch}.cubin",
            "ptx": f"{launch.image or launch.function}.{arch}.ptx",
            "resources": b.resources.to_dict()}


def constant_entry(c: Constant, arch: str) -> dict[str, Any]:
    """A constant auxiliary tensor as a manifest entry; its file follows the kernel, name and arch."""
    return {"kernel": c.kernel, "name": c.name, "dtype": c.dtype, "shape": list(c.data.shape),
            "bytes": int(c.data.nbytes), "file": f"{c.kernel}.{c.name}.{arch}.bin"}


def region_entries(regions: list[Region]) -> list[dict[str, Any]]:
    """A workspace layout as manifest entries."""
    return [{"what": r.what, "dtype": r.dtype, "shape": [int(s) for s in r.shape], "offset": r.offset,
             "bytes": r.nbytes, "zeroed": r.zeroed} for r in regions]


def variant_entry(cg: Any, arch: str, launches: list[Launch], regions: list[Region],
                  consts: list[Constant], kernels: list[tuple[Any, str]] | None = None) -> dict[str, Any]:
    """Everything the bundle runs on one architecture: kernels, configs, launches, workspace layout and
    the constants uploaded at load. `kernels`: (compiled kernel, file stem) of a dynamic graph's distinct
    kernels (default: cg's, each by its name)."""
    capability = int(cg.target.arch)
    ptx_target = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"  # as Triton's backend builds it
    kernels = [(ck, ck.spec.name) for ck in cg.kernels] if kernels is None else kernels
    entries = [{"name": ck.spec.name, "family": ck.spec.family, "workload_key": ck.spec.key,
                "config": dict(ck.config), "config_source": ck.config_source,
                "source": f"{stem}.{arch}.py"} for ck, stem in kernels]
    total = max((r.offset + r.nbytes for r in regions), default=0)
    return {"arch": arch, "capability": capability, "ptx_target": ptx_target,
            "arch_specific": ptx_target.endswith("a"), "workspace_bytes": total,
            "workspace": region_entries(regions),
            "constants": [constant_entry(c, arch) for c in consts],
            "kernels": entries, "launches": [launch_entry(x, arch) for x in launches]}


def check_manifest(manifest: Any, where: str) -> None:
    """Raise ExportError listing every way `manifest` breaks the shipped schema."""
    from .schema import manifest_schema, validate

    errors = validate(manifest, manifest_schema())
    if errors:
        shown = "; ".join(errors[:8]) + (f"; and {len(errors) - 8} more" if len(errors) > 8 else "")
        raise ExportError(f"{where}: the manifest does not match the bundle schema: {shown}")


def verify_bundle(directory: str | Path, tilefuse_version: str | None = None) -> dict[str, Any]:
    """The manifest of the bundle in `directory`, after checking its schema, its version and the sha256
    of every file it lists; ExportError naming the first problem otherwise."""
    root = Path(directory)
    path = root / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{root}: not a bundle (no manifest.json)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(manifest, dict) and manifest.get("bundle_format") != BUNDLE_FORMAT:
        raise ExportError(f"{path}: bundle format {manifest.get('bundle_format')!r}; this tilefuse reads "
                          f"format {BUNDLE_FORMAT}")
    check_manifest(manifest, str(path))
    if tilefuse_version is not None and manifest["tilefuse_version"] != tilefuse_version:
        raise ExportError(f"{path}: written by tilefuse {manifest['tilefuse_version']}, this is tilefuse "
                          f"{tilefuse_version}; export the bundle again")
    for name, digest in sorted(manifest["files"].items()):
        try:
            data = (root / name).read_bytes()
        except FileNotFoundError:
            raise ExportError(f"{root}: {name} is listed in the manifest but missing") from None
        if sha256_bytes(data) != digest:
            raise ExportError(f"{root / name}: sha256 {sha256_bytes(data)[:16]}... differs from the manifest's "
                              f"{digest[:16]}...; the file was altered after export")
    return dict(manifest)
