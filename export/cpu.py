"""The CPU part of a bundle: each kernel's scheduled TVM module compiled (LLVM, the exporting host's CPU) to
an object file whose entry symbol carries the bundle's name, and libNAME_cpu.so linked from those objects
and the generated NAME_cpu.c, which provides the few TVM runtime hooks the kernels call (parallel loops,
scratch allocation, error messages). Running the bundle needs no TVM runtime and no Python."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..ir import dtypes as dt
from .cpu_source import render_cpu_c
from .plan import ExportError, Region, buffer_places, workspace_layout

# The context symbols of TVM's runtime a kernel may read, all provided by NAME_cpu.c; a kernel that needs
# another one (a call into a packed function, a device switch) is refused at export.
HOOKS = frozenset({"__TVMBackendParallelLaunch", "__TVMBackendParallelBarrier", "__TVMBackendAllocWorkspace",
                   "__TVMBackendFreeWorkspace"})
ERROR_SETTERS = frozenset({"TVMFFIErrorSetRaisedFromCStr", "TVMFFIErrorSetRaisedFromCStrParts"})
# Instruction sets NAME_cpu_load checks (x86-64, __builtin_cpu_supports), where the kernels use them.
CHECKED_FEATURES = ("sse4.2", "popcnt", "avx", "avx2", "fma", "bmi", "bmi2", "avx512f", "avx512cd", "avx512bw",
                    "avx512dq", "avx512vl")


def cpu_target() -> dict[str, Any]:
    """The LLVM target the CPU kernels are compiled for (this host), with its triple and the checked features."""
    from tvm.target import Target, codegen

    from ..codegen.tvm_runtime import host_target

    target = dict(host_target())
    features = {str(f) for f in codegen.llvm_get_cpu_features(Target(target))}
    triple = str(codegen.llvm_get_system_triple())
    checked = [f for f in CHECKED_FEATURES if f in features] if triple.startswith("x86_64") else []
    return {"llvm": target, "triple": triple, "features": checked}


def check_runtime_calls(ll: str, kernel: str) -> None:
    """Refuse a kernel whose LLVM IR reads a TVM runtime symbol NAME_cpu.c does not provide."""
    names = set(re.findall(r"^@([\w.$]+) = .*\bglobal\b", ll, re.M))
    names |= set(re.findall(r"^declare [^@]*@([\w.$]+)\(", ll, re.M))
    runtime = {n for n in names if n.lower().startswith(("tvm", "__tvm")) and not n.startswith("__tvm_set_raised")}
    unknown = sorted(runtime - HOOKS - ERROR_SETTERS)
    if unknown:
        raise ExportError(f"kernel {kernel} (cpu) calls the TVM runtime through {unknown}; a CPU bundle provides "
                          f"only {sorted(HOOKS | ERROR_SETTERS)}")


def kernel_object(spec: Any, config: Any, symbol: str, llvm: dict[str, str]) -> bytes:
    """The object file of `spec` under `config`, its entry point renamed `symbol`."""
    import tvm

    from ..codegen.tvm_runtime import scheduled_module

    mod = scheduled_module(spec, config)
    (gv,) = mod.get_global_vars()
    exe = tvm.compile(tvm.IRModule({symbol: mod[gv].with_attr("global_symbol", symbol)}), target=llvm)
    check_runtime_calls(str(exe.mod.inspect_source("ll")), spec.name)
    with tempfile.TemporaryDirectory(prefix="tilefuse-export-") as tmp:
        path = Path(tmp) / f"{symbol}.o"
        exe.mod.write_to_file(str(path))
        return path.read_bytes()


def dl_dtype(d: dt.DType) -> list[int]:
    """DLPack's (type code, bits) of `d`'s storage, as the kernels check their arguments."""
    import numpy as np

    if d == dt.bf16:
        return [4, 16]  # kDLBfloat
    storage = np.dtype(dt.storage_numpy(d))
    codes = {"i": 0, "u": 1, "f": 2, "b": 6}  # kDLInt, kDLUInt, kDLFloat, kDLBool
    if storage.kind not in codes:
        raise ExportError(f"dtype {d} has no DLPack storage type a CPU bundle can pass")
    return [codes[storage.kind], storage.itemsize * 8]


def cpu_calls(cg: Any, name: str, regions: list[Region], kernels: list[Any] | None = None) -> list[dict[str, Any]]:
    """One manifest entry per kernel call (`kernels`: the distinct kernels of a dynamic graph, default
    cg's): its symbol, object, source, arguments resolved to inputs, outputs or workspace offsets with the
    shapes and dtypes the compiled function checks (a dynamic size as a program, see dyn.py), and the
    dynamic sizes it takes after the tensors."""
    from .dyn import size_value

    where = buffer_places(cg, regions)
    calls: list[dict[str, Any]] = []
    for ck in cg.kernels if kernels is None else kernels:
        spec = ck.spec
        aux = list(spec.aux_signature(ck.config))
        if aux:  # the cpu kernel takes them after its outputs (TvmKernel passes KernelSpec.host_aux)
            raise ExportError(f"kernel {spec.name} ({spec.family}) takes the auxiliary arrays {aux} (its block lists) "
                              "on cpu, which a CPU bundle does not pass yet; export it for a GPU target, or run it "
                              "with tilefuse")
        shapes = spec.template("tvm").arg_shapes(spec)
        buffers = list(spec.inputs) + list(spec.outputs)
        args = [{"role": where[b.name][0], "index": int(where[b.name][1]), "buffer": b.name, "dtype": b.dtype.name,
                 "dl_dtype": dl_dtype(b.dtype), "shape": [size_value(s) for s in shape]}
                for b, shape in zip(buffers, shapes)]
        tag = spec.name
        if kernels is not None:  # one object per distinct config of a kernel
            tag = f"{spec.name}__v{sum(c['kernel'] == spec.name for c in calls)}"
        call = {"kernel": spec.name, "family": spec.family, "workload_key": spec.key,
                "config": dict(ck.config), "config_source": ck.config_source,
                "symbol": f"{name}__{tag}", "object": f"{tag}.cpu.o", "source": f"{tag}.cpu.tir.py", "args": args}
        if kernels is not None:
            call["sizes"] = spec.size_params()
        calls.append(call)
    return calls


def build_cpu(graph: Any, name: str, db: Any, cost_model: Any,
              buckets: Any = None) -> tuple[Any, dict[str, Any], dict[str, bytes]]:
    """Compile `graph` for the CPU: the compiled graph, the manifest's `cpu` entry and its object and
    source files (the library is linked later, with the rendered C). A dynamic graph's workspace layout
    is the one at the top of its range (it serves every smaller size), and its entry lists each bucket's
    calls."""
    from ..codegen.tvm_expr import tvm_version
    from ..compiler import compile_graph

    cg = compile_graph(graph, target="cpu", db=db, cost_model=cost_model, buckets=buckets)
    target = cpu_target()
    dynamic = getattr(cg, "buckets", None)
    top = dynamic[-1].compiled if dynamic else cg
    tops = {n: p.hi for n, p in graph.params.items()} if dynamic else None
    regions = workspace_layout(top, scratch=False, sizes=tops)
    kernels = cg.distinct_kernels() if dynamic else cg.kernels  # type: ignore[attr-defined]
    calls = cpu_calls(top, name, regions, kernels if dynamic else None)
    files: dict[str, bytes] = {}
    for ck, call in zip(kernels, calls):
        files[call["object"]] = kernel_object(ck.spec, ck.config, call["symbol"], target["llvm"])
        files[call["source"]] = ck.source.encode("utf-8") if isinstance(ck.source, str) else b""
    entry = {"library": f"lib{name}_cpu.so", "tvm_version": tvm_version(), "target": target,
             "workspace_bytes": int(max((r.offset + r.nbytes for r in regions), default=0)),
             "workspace": [{"what": r.what, "dtype": r.dtype, "shape": [int(s) for s in r.shape],
                            "offset": int(r.offset), "bytes": int(r.nbytes)} for r in regions],
             "calls": calls}
    if dynamic:
        index = {id(ck): i for i, ck in enumerate(kernels)}
        entry["buckets"] = [{"ranges": [[n, lo, hi] for n, lo, hi in b.ranges],
                             "calls": [index[id(ck)] for ck in b.compiled.kernels]} for b in dynamic]
    return cg, entry, files


def compiler() -> str:
    """The system C compiler that links the CPU library (ExportError when there is none)."""
    for cc in ("cc", "gcc", "clang"):
        path = shutil.which(cc)
        if path:
            return path
    raise ExportError("--targets cpu: no C compiler (cc, gcc or clang) on PATH to link the CPU library")


def link_cpu(manifest: dict[str, Any], files: dict[str, bytes]) -> dict[str, bytes]:
    """NAME_cpu.h, NAME_cpu.c, the linker's export list and libNAME_cpu.so, built from the objects in `files`."""
    name = manifest["name"]
    out = {k: v.encode("utf-8") for k, v in render_cpu_c(manifest).items()}
    cpu = manifest["cpu"]
    with tempfile.TemporaryDirectory(prefix="tilefuse-export-") as tmp:
        root = Path(tmp)
        for fname, data in {**out, **{c["object"]: files[c["object"]] for c in cpu["calls"]}}.items():
            (root / fname).write_bytes(data)
        lib = root / cpu["library"]
        cmd = [compiler(), "-shared", "-fPIC", "-O2", "-std=c11", f"-I{root}", "-Wl,-Bsymbolic",
               f"-Wl,--version-script={root / f'{name}_cpu.map'}", str(root / f"{name}_cpu.c"),
               *[str(root / c["object"]) for c in cpu["calls"]], "-o", str(lib), "-lpthread", "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ExportError(f"linking {cpu['library']} with {cmd[0]} failed: {proc.stderr.strip()[:2000]}")
        out[cpu["library"]] = lib.read_bytes()
    return out
