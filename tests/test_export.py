"""tilefuse export: the bundle (manifest and schema, files and their sha256), the C launcher built with
gcc -Werror and run without a driver, refusals, and the stdlib-only Python loader."""

from __future__ import annotations

import ctypes.util
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tilefuse.cli import main
from tilefuse.export import ExportError, export_bundle, launch_list, verify_bundle
from tilefuse.export.manifest import check_manifest
from tilefuse.export.plan import check_binary
from tilefuse.ir.text import load_graph

SIZES = {"T": 4, "H": 64, "I": 96}
FIXTURES = Path(__file__).parent / "export_fixtures"
HAS_DRIVER = ctypes.util.find_library("cuda") is not None


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    g = load_graph("examples/decoder_mlp.tf", SIZES)
    export_bundle(g, ["sm_80", "sm_90"], out, name="mlp", db=None, cost_model=None, sizes=SIZES)
    return out


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def test_manifest_describes_every_launch(bundle):
    m = verify_bundle(bundle, tilefuse_version="0.1.0")
    assert [v["arch"] for v in m["variants"]] == ["sm_80", "sm_90"]
    assert [i["name"] for i in m["inputs"]] == ["x", "norm_w", "w_gate", "b_gate", "w_up", "b_up", "w_down"]
    assert m["outputs"] == [{"name": "y", "dtype": "f16", "shape": [4, 64]}]
    for v in m["variants"]:
        assert [x["function"] for x in v["launches"]] == [k["name"] for k in v["kernels"]]
        assert all(x["block"][0] == 32 * x["num_warps"] for x in v["launches"])
        # temporaries between kernels live in the workspace, each region aligned and disjoint
        ends = [(r["offset"], r["offset"] + r["bytes"]) for r in v["workspace"]]
        assert all(o % 256 == 0 for o, _ in ends) and all(a[1] <= b[0] for a, b in zip(ends, ends[1:]))
        assert v["workspace_bytes"] == ends[-1][1] <= m["workspace_bytes"]
        first = v["launches"][0]
        assert [a["role"] for a in first["args"]] == ["input", "input", "workspace"]
    sm80, sm90 = m["variants"]
    assert (sm80["ptx_target"], sm80["arch_specific"]) == ("sm_80", False)
    assert (sm90["ptx_target"], sm90["arch_specific"]) == ("sm_90a", True)  # wgmma needs sm_90a
    assert ".target sm_90a" in (bundle / sm90["launches"][1]["ptx"]).read_text()
    assert {"mlp.c", "mlp.h", "mlp.py", "CMakeLists.txt"} <= set(m["files"])


def test_schema_rejects_a_broken_manifest(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    del m["graph_key"]
    m["variants"][0]["launches"][0]["grid"] = [1, 0]
    m["variants"][1]["launches"][0]["scratch"]["global_bytes"] = 128
    with pytest.raises(ExportError) as err:
        check_manifest(m, "m.json")
    text = str(err.value)
    assert "missing required key 'graph_key'" in text and "$.variants[0].launches[0].grid" in text
    assert "$.variants[1].launches[0].scratch.global_bytes: expected 0" in text


def test_altered_cubin_and_foreign_version_are_refused(bundle, tmp_path):
    b = copy_of(bundle, tmp_path)
    with pytest.raises(ExportError, match="written by tilefuse 0.1.0, this is tilefuse 9.9"):
        verify_bundle(b, tilefuse_version="9.9")
    cubin = b / "k1_matmul_add_mul.sm_90.cubin"
    data = bytearray(cubin.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cubin.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"k1_matmul_add_mul.sm_90.cubin: sha256 .* altered after export"):
        verify_bundle(b)
    cubin.unlink()
    with pytest.raises(ExportError, match="listed in the manifest but missing"):
        verify_bundle(b)


def test_scratch_needing_binary_is_refused(bundle):
    g = load_graph("examples/decoder_mlp.tf", SIZES)
    import tilefuse

    cg = tilefuse.compile(g, target="sm_90", db=None, cost_model=None)
    launch = launch_list(cg, "sm_90")[0]
    check_binary(launch, "sm_90")  # the real one passes
    meta = {**launch.binary.metadata, "global_scratch_size": 512}
    bad = dataclasses.replace(launch, binary=dataclasses.replace(launch.binary, metadata=meta))
    with pytest.raises(ExportError, match="global_scratch_size=512"):
        check_binary(bad, "sm_90")


def test_cli_errors_are_one_line(tmp_path, capsys):
    small = ["--set", "T=4", "--set", "H=64", "--set", "I=96", "--db", "none", "--costmodel", "none"]
    for extra, message in ((["--targets", "interp"], "is not a bundle target"),
                           (["--targets", "sm_80,sm_80"], "names a target twice"),
                           (["--name", "my-mlp"], "a bundle name is a C identifier")):
        assert main(["export", "examples/decoder_mlp.tf", "--out", str(tmp_path), *small, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1


def cuda_include() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "include"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_c_api_builds_with_werror_and_fails_cleanly_without_driver(bundle, tmp_path):
    exe = tmp_path / "load_check"
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-isystem", str(cuda_include()), f"-I{bundle}"]
    cmd = ["gcc", *flags, '-DBUNDLE_H="mlp.h"', "-DPREFIX=mlp", str(FIXTURES / "load_check.c"), str(bundle / "mlp.c"),
           "-ldl", "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert lines["run_null"] == "400"  # CUDA_ERROR_INVALID_HANDLE
    assert lines["load_null_out"] == "1"  # CUDA_ERROR_INVALID_VALUE
    assert lines["unload_null"] == "0"
    ws = json.loads((bundle / "manifest.json").read_text())["workspace_bytes"]
    assert lines["workspace"] == str(ws)
    if not HAS_DRIVER:
        assert (lines["load"], lines["handle_null"]) == ("100", "1")  # CUDA_ERROR_NO_DEVICE
        assert "cannot open the CUDA driver libcuda.so.1" in lines["message"]


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("gcc") is None, reason="needs cmake and gcc")
def test_cmake_builds_static_and_shared(bundle, tmp_path):
    build = tmp_path / "build"
    cfg = ["cmake", "-S", str(bundle), "-B", str(build), f"-DMLP_CUDA_INCLUDE={cuda_include()}",
           "-DCMAKE_C_FLAGS=-Wall -Wextra -Werror"]
    subprocess.run(cfg, check=True, capture_output=True, text=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, text=True)
    assert (build / "libmlp.a").exists() and (build / "libmlp.so").exists()


def probe(bundle: Path, blocked: str) -> dict:
    """Run the loader probe in a fresh interpreter that cannot import `blocked`."""
    cmd = [sys.executable, str(FIXTURES / "loader_probe.py"), str(bundle), "mlp", blocked]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=bundle)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_loader_imports_without_tilefuse_triton_torch_and_checks_inputs(bundle):
    r = probe(bundle, "tilefuse,triton,torch")
    assert r["load"] == "ok" and r["modules"] == [] and r["driver_opened"] is False
    assert r["count"].startswith("BundleInputError: expected 7 inputs (x, norm_w, w_gate")
    assert r["dtype"] == "BundleInputError: input 'x': expected dtype float16 (f16), got float32"
    assert r["shape"] == "BundleInputError: input 'x': expected shape [4, 64], got [1, 2]"
    assert r["strided"] == "BundleInputError: input 'x': expected a contiguous (row-major) tensor"
    assert r["no_out"].startswith("BundleInputError: pass out=[...]")


def test_loader_checks_dlpack_objects_and_devices_before_the_driver(bundle):
    r = probe(bundle, "tilefuse,triton,torch")
    assert r["dl_dtype"] == "BundleInputError: input 'x': expected dtype float16 (f16), got float32"
    assert r["dl_strided"] == "BundleInputError: input 'x': expected a contiguous (row-major) tensor"
    assert r["dl_cpu"] == "BundleInputError: input 'x': expected a CUDA tensor, got one on cpu"
    assert r["np_cpu"] == r["dl_cpu"]  # numpy's own __dlpack__ capsule, read the same way
    assert r["dl_devices"].startswith("BundleInputError: the tensors are on different devices (x on cuda:0, "
                                      "norm_w on cuda:1")
    assert r["driver_opened_by_checks"] is False  # every check above ran without the driver
    if not HAS_DRIVER:  # valid DLPack objects pass every check and reach the driver, which is absent here
        assert r["dl_good"].startswith("BundleError: cannot open the CUDA driver libcuda.so.1")


def test_loader_rejects_cpu_tensors_and_registers_a_traceable_op(bundle):
    r = probe(bundle, "tilefuse,triton")
    assert r["cpu_tensor"] == "BundleInputError: input 'x': expected a CUDA tensor, got one on cpu"
    assert r["fake"] == [[4, 64, "torch.float16"]]  # the fake implementation: shapes without a launch
    assert r["driver_opened"] is False and "tilefuse" not in r["modules"]


def test_loader_refuses_altered_or_foreign_bundle(bundle, tmp_path):
    b = copy_of(bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["tilefuse_version"] = "0.0.9"
    (b / "manifest.json").write_text(json.dumps(m))
    assert "written by tilefuse 0.0.9, this loader by tilefuse 0.1.0" in probe(b, "tilefuse,triton,torch")["load"]
    m["tilefuse_version"] = "0.1.0"
    (b / "manifest.json").write_text(json.dumps(m))
    ptx = b / "k0_mul_mean_rsqrt_cast.sm_80.ptx"
    ptx.write_text(ptx.read_text() + "// edited\n")
    assert "k0_mul_mean_rsqrt_cast.sm_80.ptx: sha256 differs" in probe(b, "tilefuse,triton,torch")["load"]


def test_loader_picks_the_cubin_or_ptx_for_the_capability_and_refuses_older_gpus(bundle):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlp_cuda_part", bundle / "mlp_cuda.py")
    part = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(part)
    errors = type("errors", (), {"BundleError": ExportError})
    variants = json.loads((bundle / "manifest.json").read_text())["variants"]
    assert [(v["arch"], ptx) for v, ptx in [part.pick_variant(variants, cc, errors) for cc in (80, 86, 90, 100)]] == [
        ("sm_80", False), ("sm_80", False), ("sm_90", False), ("sm_80", True)]  # sm_90a PTX cannot JIT for 10.0
    with pytest.raises(ExportError, match=r"no cubin or PTX for compute capability 7\.5 \(bundled: sm_80, sm_90\)"):
        part.pick_variant(variants, 75, errors)
