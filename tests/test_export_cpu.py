"""tilefuse export --targets cpu: libNAME_cpu.so linked from the TVM kernels' objects and the generated C
runtime hooks, run from a C program built with gcc (no Python, no TVM runtime) and from the bundle's
Python loader, both matched against the numpy reference; bad input to either gets a clear error."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tilefuse.cli import main
from tilefuse.export import ExportError, export_bundle, verify_bundle
from tilefuse.export.cpu import check_runtime_calls
from tilefuse.ir import dtypes as dt
from tilefuse.ir.reference import evaluate
from tilefuse.ir.sampling import random_inputs
from tilefuse.ir.text import load_graph

SIZES = {"T": 4, "H": 64, "I": 96}
FIXTURES = Path(__file__).parent / "export_fixtures"
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cpu_bundle")
    g = load_graph("examples/decoder_mlp.tf", SIZES)
    export_bundle(g, ["cpu"], out, name="mlp", db=None, cost_model=None, sizes=SIZES)
    return out


def reference_case(seed: int = 3) -> tuple[dict, dict]:
    g = load_graph("examples/decoder_mlp.tf", SIZES)
    ins = random_inputs(g, seed)
    return ins, evaluate(g, ins)


def storage(x, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).astype(dt.storage_numpy(dt.dtype(dtype))))


def assert_close(got: np.ndarray, want: np.ndarray, dtype: str) -> None:
    rtol, atol = dt.tolerance(dt.dtype(dtype))
    scale = float(np.max(np.abs(want)))
    assert float(np.max(np.abs(got.astype(np.float64) - want))) <= atol * max(1.0, scale) + rtol * scale


def test_manifest_lists_the_cpu_build_and_no_gpu_variant(bundle):
    m = verify_bundle(bundle, tilefuse_version="0.1.0")
    assert m["variants"] == [] and m["triton_version"] is None
    cpu = m["cpu"]
    assert cpu["library"] == "libmlp_cpu.so" and cpu["target"]["llvm"]["kind"] == "llvm"
    assert [c["kernel"] for c in cpu["calls"]] == ["k0_mul_mean_rsqrt_cast", "k1_matmul_add_mul",
                                                  "k2_matmul_add_mul", "k3_matmul_add"]
    assert all(c["symbol"] == f"mlp__{c['kernel']}" for c in cpu["calls"])  # no clash between bundles
    last = cpu["calls"][-1]["args"]
    assert [a["role"] for a in last] == ["workspace", "input", "input", "output"]
    assert last[-1]["dl_dtype"] == [2, 16] and last[-1]["shape"] == [1, 4, 64]  # what the kernel checks
    assert {"libmlp_cpu.so", "mlp_cpu.h", "mlp_cpu.c", "mlp_cpu.map", "mlp_cpu.py", "CMakeLists.txt"} <= set(m["files"])
    assert not (bundle / "mlp.c").exists()  # no GPU launcher without a GPU target


def test_library_exports_the_api_alone(bundle):
    if shutil.which("nm") is None:
        pytest.skip("needs nm")
    names = subprocess.run(["nm", "-D", "--defined-only", str(bundle / "libmlp_cpu.so")], capture_output=True,
                           text=True, check=True).stdout.split()
    exported = sorted(n for n in names if n.startswith(("mlp", "__tvm", "TVM", "k0")))
    assert exported == ["mlp_cpu_error", "mlp_cpu_load", "mlp_cpu_num_threads", "mlp_cpu_run", "mlp_cpu_run_dyn",
                        "mlp_cpu_unload",
                        "mlp_cpu_workspace_bytes"]


def build_c_program(bundle: Path, tmp_path: Path) -> Path:
    exe = tmp_path / "cpu_run"
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{bundle}"]
    cmd = ["gcc", *flags, '-DBUNDLE_H="mlp_cpu.h"', "-DPREFIX=mlp", "-DUPPER=MLP", str(FIXTURES / "cpu_run.c"),
           f"-L{bundle}", "-lmlp_cpu", f"-Wl,-rpath,{bundle}", "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


@needs_gcc
@pytest.mark.parametrize("threads", [1, 2])
def test_c_program_runs_the_cpu_bundle_and_matches_the_reference(bundle, tmp_path, threads):
    exe = build_c_program(bundle, tmp_path)
    m = json.loads((bundle / "manifest.json").read_text())
    ins, ref = reference_case()
    argv = [str(exe), str(threads)]
    for t in m["inputs"]:
        path = tmp_path / f"{t['name']}.in"
        storage(ins[t["name"]], t["dtype"]).tofile(path)
        argv.append(str(path))
    for t in m["outputs"]:
        nbytes = int(np.prod(t["shape"])) * np.dtype(dt.storage_numpy(dt.dtype(t["dtype"]))).itemsize
        (tmp_path / f"{t['name']}.out").write_bytes(b"\xff" * nbytes)  # poison: NaN in f16
        argv.append(f"{tmp_path / (t['name'] + '.out')}:{nbytes}")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert (r["load"], r["run1"], r["run2"], r["unload"]) == ("0", "0", "0", "0"), r
    assert r["threads"] == str(threads) and r["workspace"] == str(m["cpu"]["workspace_bytes"])
    assert (r["run_null_handle"], r["load_null_out"], r["null_input"]) == ("400", "1", "1")
    assert r["misaligned"] == "716" and "input 0 at" in r["misaligned_message"] and "64-byte aligned" in r[
        "misaligned_message"]
    for t in m["outputs"]:
        got = np.fromfile(tmp_path / f"{t['name']}.out", dtype=dt.storage_numpy(dt.dtype(t["dtype"])))
        assert_close(got.reshape(t["shape"]), ref[t["name"]], t["dtype"])


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("gcc") is None, reason="needs cmake and gcc")
def test_cmake_builds_the_cpu_library_static_and_shared(bundle, tmp_path):
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(bundle), "-B", str(build), "-DCMAKE_C_FLAGS=-Wall -Wextra -Werror"],
                   check=True, capture_output=True, text=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, text=True)
    assert (build / "libmlp_cpu.a").exists() and (build / "libmlp_cpu.so").exists()


def loader(bundle: Path, tag: str = "mlp_loader"):
    import importlib.util

    spec = importlib.util.spec_from_file_location(tag, bundle / "mlp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_python_loader_runs_the_cpu_bundle(bundle):
    mod = loader(bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    ins, ref = reference_case(seed=5)
    # numpy arrays as numpy makes them (16-byte aligned, some views): copied into aligned buffers
    arrays = [storage(ins[t["name"]], t["dtype"]) for t in m["inputs"]]
    y = mod.run_cpu(*arrays)
    assert_close(y, ref["y"], "f16")
    cpu = mod.load_cpu(num_threads=1)
    assert cpu.num_threads == 1 and mod.load_cpu(num_threads=1) is cpu
    out = mod._part("cpu").aligned_empty([4, 64], np.float16)
    assert cpu.run(*arrays, out=[out]) is out
    assert_close(out, ref["y"], "f16")


def test_python_loader_rejects_bad_cpu_inputs(bundle):
    mod = loader(bundle, "mlp_loader_bad")
    m = json.loads((bundle / "manifest.json").read_text())
    ins, _ = reference_case()
    arrays = [storage(ins[t["name"]], t["dtype"]) for t in m["inputs"]]
    cpu = mod.load_cpu()
    cases = {
        "expected 7 inputs (x, norm_w": lambda: cpu.run(*arrays[:-1]),
        "input 'x': expected dtype float16 (f16), got float32": lambda: cpu.run(arrays[0].astype(np.float32),
                                                                                 *arrays[1:]),
        "input 'x': expected shape [4, 64], got [64, 4]": lambda: cpu.run(arrays[0].T.copy(), *arrays[1:]),
        "input 'x': expected a numpy array or a torch CPU tensor, got list": lambda: cpu.run(arrays[0].tolist(),
                                                                                             *arrays[1:]),
        "output 'y': expected a writeable C-contiguous array aligned to 64": lambda: cpu.run(
            *arrays, out=[np.empty((64, 4), np.float16).T]),
    }
    for message, call in cases.items():
        with pytest.raises(mod.BundleInputError, match=message.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            call()


def test_bundle_without_cpu_build_or_with_an_altered_library_is_refused(bundle, tmp_path):
    mod = loader(bundle, "mlp_loader_nocpu")
    with pytest.raises(mod.BundleError, match="bundle mlp has no CPU build; export it with --targets cpu"):
        mod._part("cpu").CpuBundle(bundle, {"name": "mlp", "inputs": [], "outputs": []}, mod, mod.DTYPES)
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    lib = copy / "libmlp_cpu.so"
    lib.write_bytes(lib.read_bytes() + b"\0")
    altered = loader(copy, "mlp_loader_altered")
    with pytest.raises(altered.BundleError, match="libmlp_cpu.so: sha256 differs"):
        altered.load_cpu()
    with pytest.raises(ExportError, match="libmlp_cpu.so: sha256 .* altered after export"):
        verify_bundle(copy)


def test_kernel_needing_more_of_the_tvm_runtime_is_refused():
    ll = "@__TVMBackendParallelLaunch = weak global ptr null\ndeclare i32 @TVMFFIFunctionCall(ptr)\n"
    check_runtime_calls(ll.replace("TVMFFIFunctionCall", "expf"), "k0")  # libm and the hooks pass
    with pytest.raises(ExportError, match=r"kernel k0 \(cpu\) calls the TVM runtime through \['TVMFFIFunctionCall'\]"):
        check_runtime_calls(ll, "k0")


def test_cli_targets(tmp_path, capsys):
    small = ["--set", "T=4", "--set", "H=64", "--set", "I=96", "--db", "none", "--costmodel", "none"]
    assert main(["export", "examples/decoder_mlp.tf", "--out", str(tmp_path), "--targets", "interp", *small]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'interp' is not a bundle target" in err and err.count("\n") == 1


@needs_gcc
def test_cpu_without_the_kernels_instruction_sets_is_refused_at_load(bundle, tmp_path):
    import tilefuse.export.cpu as cpu_export

    if cpu_export.cpu_target()["features"].count("avx512f"):
        pytest.skip("this CPU has AVX-512: the refusal cannot be shown here")
    m = json.loads((bundle / "manifest.json").read_text())
    m["cpu"]["target"]["features"] = ["avx2", "avx512f"]  # as if exported on an AVX-512 machine
    files = {c["object"]: (bundle / c["object"]).read_bytes() for c in m["cpu"]["calls"]}
    built = tmp_path / "b"
    built.mkdir()
    for fname, data in cpu_export.link_cpu(m, files).items():
        (built / fname).write_bytes(data)
    mod = loader(bundle, "mlp_loader_avx")  # mlp_cpu_load of the relinked library, through ctypes
    with pytest.raises(mod.BundleError, match=r"mlp_cpu_load returned 801: mlp: the kernels were compiled for "
                                              r"llvm -mcpu=\S+ and use avx512f, which this CPU lacks"):
        mod._part("cpu").CpuBundle(built, m, mod, mod.DTYPES)
