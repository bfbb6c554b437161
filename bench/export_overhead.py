"""Launch overhead of an export bundle: host time per kernel launch of the bundle's C API (NAME_run called
in a C loop), its Python loader (NAME.py's run) and Triton's own launcher (the generated JIT functions
called directly with their arguments prepared once), at sizes where launches, not kernels, bound the time.

GPU: python bench/export_overhead.py [--quick] [--target sm_90] --json bench/results/export_overhead-<device>.json
Target (issue 16): the C API no slower per launch than Triton's launcher. Each method runs `iters` times
back to back after a warm-up, with a synchronize before and after; the row gives microseconds per kernel
launch (wall clock over the loop / runs / launches per run), the outputs checked against the reference.

--dry-run: no GPU. Exports the same bundles for sm_90, builds the C API and the C timing loop with gcc
-Werror against Triton's cuda.h, checks that the loader refuses a wrong input before the driver and that
NAME_load fails cleanly without one. --cpu (either mode; needs TVM) also times the CPU bundle of the MLP for
real: its C API in a C loop and its Python loader against tilefuse's own CPU executor on the same graph.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib
import importlib.util
import shutil
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CC = shutil.which("gcc") or shutil.which("cc")
CASES = {"decoder_mlp": ("examples/decoder_mlp.tf", {"T": 4, "H": 64, "I": 96}),
         "streaming_attention": ("examples/streaming_attention.tf", {"S": 256, "D": 64})}
LOOP_C = """#include <time.h>
#include "%(name)s%(suffix)s.h"
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
double bench_loop(%(name)s%(suffix)s_handle* h, %(stream)s const void* const* in, void* const* out, void* ws, int n) {
  double t0 = now();
  int i;
  for (i = 0; i < n; ++i)
    if (%(name)s%(suffix)s_run(h, %(stream_arg)s in, out, ws) != 0) return -1.0;
  return now() - t0;
}
"""


def cuda_include() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "include"


def build_loop(bundle: Path, name: str, cpu: bool) -> ctypes.CDLL:
    """libbench.so: the bundle's C API (GPU: NAME.c; CPU: linked to libNAME_cpu.so) and the C timing loop."""
    fields = {"name": name, "suffix": "_cpu" if cpu else "", "stream": "" if cpu else "CUstream s,",
              "stream_arg": "" if cpu else "s,"}
    src = bundle / f"bench_loop{fields['suffix']}.c"
    src.write_text(LOOP_C % fields)
    lib = bundle / f"libbench{fields['suffix']}.so"
    flags = ["-std=gnu11", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", f"-I{bundle}"]
    if cpu:
        cmd = [str(CC), *flags, str(src), f"-L{bundle}", f"-l{name}_cpu", f"-Wl,-rpath,{bundle}", "-o", str(lib)]
    else:
        cmd = [str(CC), *flags, "-isystem", str(cuda_include()), str(src), str(bundle / f"{name}.c"), "-ldl", "-o",
               str(lib)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


def load_loader(bundle: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", bundle / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def export(case: str, targets: list[str], out: Path) -> tuple[Any, Path]:
    from tilefuse.export import export_bundle
    from tilefuse.ir.text import load_graph

    path, sizes = CASES[case]
    g = load_graph(str(ROOT / path), sizes)
    bundle = out / case
    export_bundle(g, targets, bundle, name=case, db=None, cost_model=None, sizes=sizes)
    return g, bundle


def per_launch_us(fn: Any, iters: int, launches: int, sync: Any) -> float:
    """Microseconds per kernel launch of `fn()` run `iters` times after a warm-up."""
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters / launches * 1e6


def c_loop_us(lib: ctypes.CDLL, args: tuple[Any, ...], iters: int, launches: int, sync: Any) -> float:
    """Microseconds per kernel launch of NAME_run called `iters` times by the C loop (after a warm-up run)."""
    assert lib.bench_loop(*args, 1) >= 0, "NAME_run failed"
    sync()
    t0 = time.perf_counter()
    assert lib.bench_loop(*args, iters) >= 0, "NAME_run failed"
    sync()
    return (time.perf_counter() - t0) / iters / launches * 1e6


def gpu_row(case: str, target: str, out: Path, iters: int) -> dict[str, Any]:
    """C API, Python loader and Triton's launcher on one case, outputs checked against tilefuse's run."""
    import torch

    import tilefuse
    from tilefuse.codegen.executors import plan_arguments
    from tilefuse.codegen.triton_runtime import load_module, plan_launcher
    from tilefuse.ir import dtypes as dt
    from tilefuse.ir.sampling import random_inputs

    g, bundle = export(case, [target], out)
    m = json.loads((bundle / "manifest.json").read_text())
    cg = tilefuse.compile(g, target=target, db=None, cost_model=None)
    given = random_inputs(g, 0)
    ins = [torch.from_numpy(np.asarray(given[n.attr("name")])).cuda() for n in g.inputs]
    want = cg(*ins)
    want = want if isinstance(want, tuple) else (want,)
    outs = [torch.empty_like(w) for w in want]
    ws = torch.empty(max(1, m["workspace_bytes"]), dtype=torch.uint8, device="cuda")
    launches = len(m["variants"][0]["launches"])
    # Triton's launcher: every launch's arguments bound once, the JIT functions called directly
    bufs = dict(zip([n.attr("name") for n in g.inputs], ins))
    direct = []
    for ck in cg.kernels:
        plan = ck.spec.launch_plan(ck.config)
        outs_k = [bufs.setdefault(b.name, torch.empty(b.shape, dtype=dt.to_torch(b.dtype), device="cuda"))
                  for b in ck.spec.outputs]
        bound = plan_arguments(ck.spec, ck.config, plan, [bufs[b.name] for b in ck.spec.inputs], outs_k, "cuda")
        direct.append(plan_launcher(load_module(ck.source, False), plan, bound, False))
    lib = build_loop(bundle, case, cpu=False)
    handle = ctypes.c_void_p()
    assert lib[f"{case}_load"](None, ctypes.byref(handle), None, 0) == 0
    lib.bench_loop.restype = ctypes.c_double
    lib.bench_loop.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int]
    in_ptrs = (ctypes.c_void_p * len(ins))(*[t.data_ptr() for t in ins])
    out_ptrs = (ctypes.c_void_p * len(outs))(*[t.data_ptr() for t in outs])
    stream = torch.cuda.current_stream().cuda_stream
    c_args = (handle, stream, in_ptrs, out_ptrs, ws.data_ptr())
    loader = load_loader(bundle, case)
    py = lambda: loader.run(*ins, out=outs, workspace=ws)
    row = {"case": case, "launches": launches, "iters": iters,
           "triton_us": per_launch_us(lambda: [f() for f in direct], iters, launches, torch.cuda.synchronize),
           "c_api_us": c_loop_us(lib, c_args, iters, launches, torch.cuda.synchronize),
           "python_loader_us": per_launch_us(py, iters, launches, torch.cuda.synchronize)}
    py()
    torch.cuda.synchronize()
    row["max_abs_err"] = max(float((o.float() - w.float()).abs().max()) for o, w in zip(outs, want))
    row["c_vs_triton"] = row["triton_us"] / row["c_api_us"]
    lib[f"{case}_unload"](handle)
    return row


def dry_gpu_row(case: str, out: Path) -> dict[str, Any]:
    """The GPU bundle path without a GPU: export, gcc -Werror build, loader checks, NAME_load's clean failure."""
    t0 = time.perf_counter()
    _, bundle = export(case, ["sm_90"], out)
    export_s = time.perf_counter() - t0
    lib = build_loop(bundle, case, cpu=False)
    handle = ctypes.c_void_p()
    err = ctypes.create_string_buffer(256)
    rc = lib[f"{case}_load"](None, ctypes.byref(handle), err, 256)
    loader = load_loader(bundle, case)
    bundle_obj = loader.load()
    try:
        bundle_obj.run(*[object()] * len(bundle_obj.inputs), out=[])
        refused = ""
    except loader.BundleInputError as exc:
        refused = str(exc)
    assert refused and bundle_obj._driver is None, "the loader touched the driver before refusing"
    return {"case": f"{case} sm_90 bundle (dry run)", "export_s": export_s, "load_rc": rc,
            "load_message": err.value.decode(), "loader_refused": refused}


def cpu_row(out: Path, iters: int) -> dict[str, Any]:
    """The MLP's CPU bundle: C loop, Python loader and tilefuse's CPU executor, per kernel call (host)."""
    import tilefuse
    from tilefuse.ir import dtypes as dt
    from tilefuse.ir.sampling import random_inputs

    case = "decoder_mlp"
    g, bundle = export(case, ["cpu"], out / "cpu")
    m = json.loads((bundle / "manifest.json").read_text())
    cg = tilefuse.compile(g, target="cpu", db=None, cost_model=None)
    loader = load_loader(bundle, case)
    cpu = loader.load_cpu()
    aligned = loader._part("cpu").aligned_empty
    ins = []
    given = random_inputs(g, 0)
    for t in m["inputs"]:
        a = aligned(t["shape"], dt.storage_numpy(dt.dtype(t["dtype"])))
        a[...] = given[t["name"]]
        ins.append(a)
    outs = [aligned(t["shape"], dt.storage_numpy(dt.dtype(t["dtype"]))) for t in m["outputs"]]
    lib = build_loop(bundle, case, cpu=True)
    handle = ctypes.c_void_p()
    assert lib[f"{case}_cpu_load"](0, ctypes.byref(handle), None, 0) == 0
    lib.bench_loop.restype = ctypes.c_double
    lib.bench_loop.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int]
    in_ptrs = (ctypes.c_void_p * len(ins))(*[a.ctypes.data for a in ins])
    out_ptrs = (ctypes.c_void_p * len(outs))(*[a.ctypes.data for a in outs])
    calls = len(m["cpu"]["calls"])
    row = {"case": f"{case} cpu bundle", "launches": calls, "iters": iters, "threads": cpu.num_threads,
           "c_api_us": c_loop_us(lib, (handle, in_ptrs, out_ptrs, None), iters, calls, lambda: None),
           "python_loader_us": per_launch_us(lambda: cpu.run(*ins, out=outs), iters, calls, lambda: None),
           "tilefuse_executor_us": per_launch_us(lambda: cg(*ins), iters, calls, lambda: None)}
    row["max_abs_err"] = float(np.max(np.abs(outs[0].astype(np.float64) - np.asarray(cg(*ins), np.float64))))
    lib[f"{case}_cpu_unload"](handle)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--target", help="sm_80 or sm_90 (default: the device's)")
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: the GPU bundle path without launches")
    ap.add_argument("--cpu", action="store_true", help="also time the CPU bundle (needs TVM to export it; gpu-check "
                    "leaves it out, as a GPU image may lack TVM)")
    args = ap.parse_args()
    assert CC, "bench/export_overhead.py builds the bundle's C API with gcc or cc, neither is on PATH"
    iters = 20 if args.dry_run else 200 if args.quick else 2000
    with tempfile.TemporaryDirectory(prefix="export-overhead-") as tmp:
        out = Path(tmp)
        if args.dry_run:
            rows = [dry_gpu_row(c, out) for c in CASES]
            device, target = "cpu (dry run)", "sm_90 (not run)"
        else:
            import torch

            assert torch.cuda.is_available(), "bench/export_overhead.py needs a CUDA GPU (or --dry-run)"
            major, _ = torch.cuda.get_device_capability()
            target = args.target or ("sm_90" if major >= 9 else "sm_80")
            device = torch.cuda.get_device_name()
            rows = [gpu_row(c, target, out, iters) for c in CASES]
        if args.cpu:
            rows.append(cpu_row(out, iters))
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.json:
        import triton

        import tilefuse

        meta = {"device": device, "target": target, "triton": triton.__version__,
                "tvm": str(importlib.import_module("tvm").__version__) if args.cpu else None,
                "tilefuse": tilefuse.__version__, "numpy": np.__version__, "date": datetime.date.today().isoformat(),
                "host": platform.node(), "size": "dry-run" if args.dry_run else "quick" if args.quick else "full"}
        with open(args.json, "w") as f:
            json.dump({"benchmark": "export_overhead", "meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
