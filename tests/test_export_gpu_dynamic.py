"""tilefuse export of a graph with a dynamic size (examples/decoder_mlp.tf, T=dyn[1..8192]) for GPUs: the
manifest carries each bucket's launches, cubins shared between buckets with one config, grids as size
programs; the cubins take T as an unspecialised int32 (PTX parameter lists). Without a GPU, the C launcher
(NAME_run_dyn) and the Python loader run against tests/export_fixtures/fake_libcuda.c, a test double of
the CUDA driver that runs no kernel and logs each module load and launch: the test checks that the right
bucket's cubins are launched with the grids tilefuse's own launch plans give at that T, the pointers
and T as arguments, and that sizes out of range are refused with a message naming T and its range."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tilefuse.compiler import compile_graph
from tilefuse.export import ExportError, export_bundle, verify_bundle
from tilefuse.ir.text import load_graph

SIZES = {"H": 64, "I": 96}
BUCKETS = [1, 4, 64, 8192]
FIXTURES = Path(__file__).parent / "export_fixtures"
INPUT, OUTPUT, WORKSPACE = 0x1000000, 0x100000000, 0x7000000000  # the made-up pointers gpu_run_dyn.c passes
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu_dyn_bundle")
    g = load_graph("examples/decoder_mlp.tf", SIZES)
    export_bundle(g, ["sm_90"], out, name="mlp", db=None, cost_model=None, sizes=SIZES, buckets=BUCKETS)
    return out


@pytest.fixture(scope="module")
def compiled():
    """The graph as tilefuse compiles it for sm_90: its buckets and launch plans are what the bundle must do."""
    g = load_graph("examples/decoder_mlp.tf", SIZES)
    return compile_graph(g, target="sm_90", aot=False, db=None, cost_model=None, buckets=BUCKETS)


def fnv(data: bytes) -> str:
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) % 2**64
    return f"{h:016x}"


def ptx_params(ptx: str) -> tuple[str, list[int]]:
    """The entry's name and its parameters' sizes in bytes, from its PTX."""
    m = re.search(r"\.entry (\w+)\(([^)]*)\)", ptx)
    assert m is not None
    return m.group(1), [8 if ".u64" in p else 4 for p in m.group(2).split(",")]


def expected(m: dict, compiled, t: int) -> list[tuple[str, str, list[int], list[int]]]:
    """(function, cubin FNV, grid, arguments) of every launch a run at T=t makes, from tilefuse's own plans."""
    v = next(x for x in m["variants"] if x["arch"] == "sm_90")
    stems = {(k["name"], json.dumps(k["config"], sort_keys=True)): k["source"].split(".")[0] for k in v["kernels"]}
    bucket = next(b for b in v["buckets"] if b["ranges"][0][1] <= t <= b["ranges"][0][2])
    mine = [v["launches"][i] for i in bucket["launches"]]  # the workspace offsets are the bucket's
    out = []
    for ck in compiled.bucket({"T": t}).compiled.kernels:
        plan = ck.spec.launch_plan(ck.config, {"T": t})
        stem = stems[(ck.spec.name, json.dumps(dict(ck.config), sort_keys=True))]
        for ln in plan.launches:
            entry = next(x for x in mine if x["cubin"] == f"{ln.fn}__v{stem.rsplit('__v', 1)[1]}.sm_90.cubin")
            assert [a["name"] for a in entry["args"]] == [a.name for a in ln.args]  # the kernel's signature order
            bases = {"input": INPUT, "output": OUTPUT}
            args = [t if a["role"] == "size" else WORKSPACE + a["index"] if a["role"] == "workspace"
                    else bases[a["role"]] * (a["index"] + 1) for a in entry["args"]]
            grid = list(ln.grid) + [1] * (3 - len(ln.grid))
            out.append((ln.fn, fnv((Path(m["_root"]) / entry["cubin"]).read_bytes()), grid, args + [0, 0]))
    return out


def test_manifest_carries_the_gpu_dispatch_table(bundle, compiled):
    m = verify_bundle(bundle)
    assert m["bundle_format"] == 4
    (v,) = m["variants"]
    assert [b["ranges"] for b in v["buckets"]] == [[["T", 1, 1]], [["T", 2, 4]], [["T", 5, 64]], [["T", 65, 8192]]]
    assert [len(b["launches"]) for b in v["buckets"]] == [4, 4, 4, 4]
    # one cubin per distinct (kernel, config): buckets with equal configs share it
    configs = {(ck.spec.name, json.dumps(dict(ck.config), sort_keys=True)) for b in compiled.buckets
               for ck in b.compiled.kernels}
    assert len({x["cubin"] for x in v["launches"]}) == len(configs) == len(v["kernels"])
    assert all(a["role"] != "size" or (a["name"], a["index"]) == ("T", 0) for x in v["launches"] for a in x["args"])
    # each bucket's workspace holds its temporaries at its upper end: [hi, 96] f16 at least
    assert all(b["workspace_bytes"] >= b["ranges"][0][2] * 96 * 2 for b in v["buckets"])
    assert v["workspace_bytes"] == max(b["workspace_bytes"] for b in v["buckets"]) <= m["workspace_bytes"]


def test_cubins_take_the_dynamic_size_unspecialised(bundle):
    """Triton specialises an int equal to 1 (or divisible by 16) into the code unless told not to: the T=1
    bucket's cubins would then ignore T. Every entry keeps T as a 32-bit parameter in the manifest's place."""
    m = verify_bundle(bundle)
    for v in m["variants"]:
        for x in v["launches"]:
            name, sizes = ptx_params((bundle / x["ptx"]).read_text())
            assert name == x["mangled_name"] and len(sizes) == len(x["args"]) + 2  # + the two scratch pointers
            assert sizes[:-2] == [4 if a["role"] == "size" else 8 for a in x["args"]]


def fake_driver(bundle: Path, tmp_path: Path) -> dict[str, str]:
    """The environment that puts the test double of libcuda.so.1 first, with every kernel's parameter sizes."""
    lib = tmp_path / "fake" / "libcuda.so.1"
    lib.parent.mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-std=c11", str(FIXTURES / "fake_libcuda.c"), "-o", str(lib)],
                   check=True, capture_output=True, text=True)
    params = dict(ptx_params(p.read_text()) for p in sorted(bundle.glob("*.ptx")))  # equal on every arch
    spec = ";".join(f"{k}={','.join(str(s) for s in v)}" for k, v in params.items())
    return {**os.environ, "LD_LIBRARY_PATH": str(lib.parent), "FAKE_CUDA_PARAMS": spec, "FAKE_CUDA_CC": "90",
            "FAKE_CUDA_LOG": str(tmp_path / "driver.log")}


def runs(log: Path) -> dict[int | str, list[tuple[str, str, list[int], list[int]]]]:
    """The launches the driver's log records after each `run T=...` (and `run static`) marker."""
    out: dict[int | str, list] = {}
    current = None
    for line in log.read_text().splitlines():
        if line.startswith("run "):
            current = out.setdefault(int(line[6:]) if line.startswith("run T=") else line[4:], [])
        elif line.startswith("launch ") and current is not None:
            f = dict(kv.split("=", 1) for kv in line.split()[1:])
            current.append((f["fn"], f["image"], [int(g) for g in f["grid"].split(",")],
                            [int(a) for a in f["args"].split(",")]))
    return out


SIZES_TO_RUN = [1, 2, 4, 5, 7, 64, 65, 1000, 8192]


def run_c(bundle: Path, tmp_path: Path, sizes: list[int], cc: int = 90) -> tuple[list[str], dict[str, str]]:
    """gpu_run_dyn.c built against the bundle (gcc -Werror) and run with `sizes` on the fake driver (a device
    of compute capability `cc`): its output lines and the environment (the log's path)."""
    from test_export import cuda_include

    env = {**fake_driver(bundle, tmp_path), "FAKE_CUDA_CC": str(cc)}
    exe = tmp_path / "gpu_run_dyn"
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-isystem", str(cuda_include()), f"-I{bundle}"]
    subprocess.run(["gcc", *flags, '-DBUNDLE_H="mlp.h"', "-DPREFIX=mlp", str(FIXTURES / "gpu_run_dyn.c"),
                    str(bundle / "mlp.c"), "-ldl", "-o", str(exe)], check=True, capture_output=True, text=True)
    proc = subprocess.run([str(exe), *map(str, sizes)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines(), env


@needs_gcc
def test_static_bundle_launches_what_its_plans_say(tmp_path):
    """A static graph's bundle (one bucket, constant grids) through the same launcher: mlp_run launches each
    kernel's cubin on the grid of its launch plan with the input, output and workspace pointers."""
    sizes = {**SIZES, "T": 4}
    g = load_graph("examples/decoder_mlp.tf", sizes)
    out = tmp_path / "static"
    export_bundle(g, ["sm_90"], out, name="mlp", db=None, cost_model=None, sizes=sizes)
    lines, env = run_c(out, tmp_path, [])
    assert lines[1] == "static_run=0 error="
    (v,) = verify_bundle(out)["variants"]
    bases = {"input": INPUT, "output": OUTPUT}
    cg = compile_graph(g, target="sm_90", aot=False, db=None, cost_model=None)
    want = []
    for ck, entry in zip(cg.kernels, v["launches"]):
        (ln,) = ck.spec.launch_plan(ck.config).launches
        args = [WORKSPACE + a["index"] if a["role"] == "workspace" else bases[a["role"]] * (a["index"] + 1)
                for a in entry["args"]]
        want.append((ln.fn, fnv((out / entry["cubin"]).read_bytes()), list(ln.grid) + [1] * (3 - len(ln.grid)),
                     args + [0, 0]))
    assert runs(Path(env["FAKE_CUDA_LOG"]))["static"] == want


@needs_gcc
def test_c_launcher_dispatches_buckets_grids_and_sizes(bundle, compiled, tmp_path):
    lines, env = run_c(bundle, tmp_path, [*SIZES_TO_RUN, 0, 8193])
    assert lines[0].startswith("load=0 arch=sm_90 ")
    assert lines[1].startswith("static_run=1 error=mlp: the graph has dynamic sizes (T); call mlp_run_dyn")
    result = {int(x.split()[0][5:]): dict(kv.split("=", 1) for kv in x.split(" error=")[0].split()[1:])
              | {"error": x.split(" error=", 1)[1]} for x in lines[2:-1]}
    ws1 = int(result[1]["workspace"])
    assert ws1 > 0 and lines[-1] == f"null_workspace=1 error=mlp: these sizes need a workspace of {ws1} bytes, got NULL"
    m = {**verify_bundle(bundle), "_root": str(bundle)}
    logged = runs(Path(env["FAKE_CUDA_LOG"]))
    (sm90,) = m["variants"]
    for t in SIZES_TO_RUN:
        assert result[t]["rc"] == "0" and result[t]["error"] == "", (t, result[t])
        bucket = next(b for b in sm90["buckets"] if b["ranges"][0][1] <= t <= b["ranges"][0][2])
        assert int(result[t]["workspace"]) == max(v["buckets"][sm90["buckets"].index(bucket)]["workspace_bytes"]
                                                  for v in m["variants"])
        assert logged[t] == expected(m, compiled, t), t
    for t in (0, 8193):
        assert (result[t]["rc"], result[t]["wsrc"]) == ("1", "1")  # CUDA_ERROR_INVALID_VALUE
        assert result[t]["error"] == f"mlp: size T={t} is outside its range 1..8192"
        assert logged[t] == []  # refused before any launch
    assert logged["static"] == []  # mlp_run refuses a dynamic bundle


LOADER_RUN = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("mlp", sys.argv[1] + "/mlp.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
INPUT, OUTPUT, WORKSPACE = 0x1000000, 0x100000000, 0x7000000000

class CudaArray:
    def __init__(self, shape, typestr, ptr):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr, "data": (ptr, False),
                                         "strides": None, "version": 3}

b = mod.load()
for t in json.loads(sys.argv[2]):
    at = lambda shape: [t if isinstance(d, list) else d for d in shape]
    ins = [CudaArray(at(s["shape"]), "<f2", INPUT * (i + 1)) for i, s in enumerate(b.inputs)]
    outs = [CudaArray(at(s["shape"]), "<f2", OUTPUT * (j + 1)) for j, s in enumerate(b.outputs)]
    open(sys.argv[3], "a").write(f"run T={t}\\n")
    try:
        b.run(*ins, out=outs, workspace=CudaArray([1 << 20], "|u1", WORKSPACE))
        print(t, "ok")
    except mod.BundleInputError as exc:
        print(t, "error", exc)
import torch
x = [torch.empty([5 if isinstance(d, list) else d for d in s["shape"]], dtype=torch.float16, device="meta")
     for s in b.inputs]
print("fake", list(mod.torch_op()(x)[0].shape))
"""


def test_python_loader_reads_the_size_from_the_shapes_and_dispatches(bundle, compiled, tmp_path):
    env = fake_driver(bundle, tmp_path)
    proc = subprocess.run([sys.executable, "-c", LOADER_RUN, str(bundle), json.dumps([1, 7, 1000, 8192, 9000]),
                           env["FAKE_CUDA_LOG"]], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    said = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert said == {"1": "ok", "7": "ok", "1000": "ok", "8192": "ok",
                    "9000": "error input 'x': dynamic size T=9000 is outside its range 1..8192",
                    "fake": "[5, 64]"}  # the torch op's fake implementation shapes the output at T
    m = {**verify_bundle(bundle), "_root": str(bundle)}
    logged = runs(Path(env["FAKE_CUDA_LOG"]))
    for t in (1, 7, 1000, 8192):
        assert logged[t] == expected(m, compiled, t), t
    assert logged[9000] == []


@pytest.mark.slow
def test_cli_exports_the_decoder_mlp_for_sm80_and_sm90(tmp_path, capsys):
    from tilefuse.cli import main

    small = ["--set", "H=64", "--set", "I=96", "--db", "none", "--costmodel", "none"]
    assert main(["export", "examples/decoder_mlp.tf", "--out", str(tmp_path), "--targets", "sm_80,sm_90",
                 "--name", "mlp", *small]) == 0
    m = verify_bundle(tmp_path)
    assert [v["arch"] for v in m["variants"]] == ["sm_80", "sm_90"]
    assert all(len(v["buckets"]) == len(m["dynamic"]["buckets"]) == 14 for v in m["variants"])
    # an sm_86 device runs the sm_80 cubins, an sm_100 one the sm_80 PTX (sm_90a's is arch-specific)
    for cc, arch, kind in ((86, "sm_80", "cubin"), (100, "sm_80", "ptx")):
        work = tmp_path / f"cc{cc}"
        work.mkdir()
        lines, env = run_c(tmp_path, work, [7], cc)
        assert lines[0].startswith(f"load=0 arch={arch} ") and lines[2].startswith("size=7 rc=0 "), lines
        log = Path(env["FAKE_CUDA_LOG"]).read_text()
        assert log.count(f"kind={kind}") == len({x["cubin"] for x in m["variants"][0]["launches"]})
        assert len(runs(Path(env["FAKE_CUDA_LOG"]))[7]) == 4


def test_attention_with_run_time_block_lists_is_refused_naming_the_kernel(tmp_path):
    """Causal attention with a dynamic S lists its blocks per call's S; a GPU bundle does not compute them per
    size yet, so the export refuses it (before any build) and names the kernel and the way out."""
    import tilefuse as tf

    b = tf.GraphBuilder("causal")
    s = b.dyn("S", 1, 512, hint=64)
    q, k, v = (b.input(n, (1, 2, s, 32), "f16") for n in "qkv")
    b.output("o", tf.attention(q, k, v, mask_mod=tf.causal_mask(s, s)))
    with pytest.raises(ExportError, match=r"kernel k0_\w+ \(attention\) takes the auxiliary tensors .* depend on the "
                                          r"dynamic sizes \['S'\].*bind the size with --set"):
        export_bundle(b.build(), ["sm_90"], tmp_path, db=None, cost_model=None)
    assert not (tmp_path / "manifest.json").exists()


def test_a_grid_computed_from_a_bound_value_is_refused(tmp_path, monkeypatch):
    """Fault injection: a family whose launches() without run-time sizes evaluated its grid at the spec's bound
    size (an int, right for one bucket end only) instead of keeping the size expression, while its plans at
    given sizes are right; the export compares each grid program with the kernel's launch plan at both ends
    of every bucket and refuses it, before any build."""
    from tilefuse.ir import dims
    from tilefuse.ir.parser import parse_graph
    from tilefuse.kernels.rowwise.spec import RowwiseSpec

    real = RowwiseSpec.launches

    def baked(self, config, args, sizes=None):
        out = real(self, config, args, sizes)
        if sizes is not None:
            return out
        return [dataclasses.replace(ln, grid=dims.resolve(tuple(ln.grid), self.bound_sizes())) for ln in out]

    monkeypatch.setattr(RowwiseSpec, "launches", baked)
    g = parse_graph("graph sq(T=dyn[1..4096], H=64) {\n  %x = input f16[T, H]\n"
                    "  %y = pointwise(%x) {expr=(mul $0:f16 $0:f16)}\n  output y = %y\n}")
    with pytest.raises(ExportError, match=r"kernel k0_\w+: its grids .* but its launch plan has .* a bundle cannot "
                                          "evaluate"):
        export_bundle(g, ["sm_90"], tmp_path, db=None, cost_model=None, buckets=[16])
