"""tilefuse export of a graph with a dynamic size (examples/decoder_mlp.tf, T=dyn[1..8192]) for the CPU: the
manifest carries the parameters, the size buckets and the shapes as size programs; libNAME_cpu.so takes the
sizes through NAME_cpu_run_dyn (a C program runs it at T=1 and T=7 against the numpy reference, and gets
clear errors out of range); the Python loader reads T from the inputs' shapes and checks it first."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tilefuse.export import export_bundle, verify_bundle
from tilefuse.export.dyn import c_expr, evaluate, size_value
from tilefuse.ir import dtypes as dt
from tilefuse.ir import dims
from tilefuse.ir.reference import evaluate as reference
from tilefuse.ir.sampling import random_inputs
from tilefuse.ir.text import load_graph

SIZES = {"H": 64, "I": 96}
FIXTURES = Path(__file__).parent / "export_fixtures"
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dyn_bundle")
    g = load_graph("examples/decoder_mlp.tf", SIZES)
    export_bundle(g, ["cpu"], out, name="mlp", db=None, cost_model=None, sizes=SIZES, buckets=[1, 4, 8192])
    return out


def case(t: int, seed: int = 3) -> tuple[dict, dict]:
    g = load_graph("examples/decoder_mlp.tf", {**SIZES, "T": t})
    ins = random_inputs(g, seed)
    return ins, reference(g, ins)


def storage(x, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).astype(dt.storage_numpy(dt.dtype(dtype))))


def assert_close(got: np.ndarray, want: np.ndarray, dtype: str) -> None:
    rtol, atol = dt.tolerance(dt.dtype(dtype))
    scale = float(np.max(np.abs(want)))
    assert float(np.max(np.abs(got.astype(np.float64) - want))) <= atol * max(1.0, scale) + rtol * scale


def test_size_programs_evaluate_like_the_expressions():
    g = load_graph("examples/decoder_mlp.tf", SIZES)
    t = g.inputs[0].shape[0]
    for e in (t, 64 * t, t * t + 3 * t - 1, (t + 15) // 16, (4 * t + 7) % 5, 2 * ((t + 63) // 64) * t):
        program = size_value(e)
        for v in (1, 7, 100):
            assert evaluate(program, {"T": v}) == dims.resolve(e, {"T": v})
    assert size_value(64) == 64 and c_expr([64, "T", "*"], ["T"]) == "(INT64_C(64) * sz[0])"


def test_manifest_carries_the_dispatch_table(bundle):
    m = verify_bundle(bundle)
    assert m["bundle_format"] == 4
    assert m["dynamic"]["params"] == [{"name": "T", "lo": 1, "hi": 8192, "hint": 16}]
    assert [b["ranges"] for b in m["dynamic"]["buckets"]] == [[["T", 1, 1]], [["T", 2, 4]], [["T", 5, 8192]]]
    assert m["inputs"][0]["shape"] == [["T"], 64] and m["outputs"][0]["shape"] == [["T"], 64]
    cpu = m["cpu"]
    assert [len(b["calls"]) for b in cpu["buckets"]] == [4, 4, 4]
    assert all(c["sizes"] == ["T"] for c in cpu["calls"])
    # the workspace holds the temporaries at the top of the range: [8192, 96] f16 twice at least
    assert cpu["workspace_bytes"] >= 2 * 8192 * 96 * 2


def build_c_program(bundle: Path, tmp_path: Path) -> Path:
    exe = tmp_path / "cpu_run_dyn"
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{bundle}"]
    cmd = ["gcc", *flags, '-DBUNDLE_H="mlp_cpu.h"', "-DPREFIX=mlp", "-DUPPER=MLP", str(FIXTURES / "cpu_run_dyn.c"),
           f"-L{bundle}", "-lmlp_cpu", f"-Wl,-rpath,{bundle}", "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


@needs_gcc
@pytest.mark.parametrize("t", [1, 7])
def test_c_program_runs_the_dynamic_bundle_at_any_size(bundle, tmp_path, t):
    exe = build_c_program(bundle, tmp_path)
    m = json.loads((bundle / "manifest.json").read_text())
    ins, ref = case(t)
    argv = [str(exe), str(t)]
    for spec in m["inputs"]:
        path = tmp_path / f"{spec['name']}.in"
        storage(ins[spec["name"]], spec["dtype"]).tofile(path)
        argv.append(str(path))
    nbytes = t * 64 * 2
    (tmp_path / "y.out").write_bytes(b"\xff" * nbytes)  # poison: NaN in f16
    argv.append(f"{tmp_path / 'y.out'}:{nbytes}")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert (r["load"], r["run"], r["unload"]) == ("0", "0", "0"), r
    assert r["static_run"] == "1" and "dynamic sizes (T); call mlp_cpu_run_dyn" in r["static_run_message"]
    assert r["null_sizes"] == "1" and r["below"] == "1" and r["above"] == "1"
    assert "size T=0 is outside its range 1..8192" in r["below_message"]
    assert "size T=1073741824 is outside its range 1..8192" in r["above_message"]
    got = np.fromfile(tmp_path / "y.out", dtype=np.float16).reshape(t, 64)
    assert_close(got, ref["y"], "f16")


def loader(bundle: Path, tag: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(tag, bundle / "mlp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_python_loader_reads_the_size_from_the_shapes_and_runs_each_bucket(bundle):
    mod = loader(bundle, "mlp_dyn_loader")
    m = json.loads((bundle / "manifest.json").read_text())
    for t in (1, 3, 7):  # one size per bucket
        ins, ref = case(t, seed=t)
        y = mod.run_cpu(*[storage(ins[s["name"]], s["dtype"]) for s in m["inputs"]])
        assert y.shape == (t, 64)
        assert_close(y, ref["y"], "f16")


def test_python_loader_checks_range_and_consistency_before_running(bundle):
    mod = loader(bundle, "mlp_dyn_loader_bad")
    m = json.loads((bundle / "manifest.json").read_text())
    ins, _ = case(7)
    arrays = [storage(ins[s["name"]], s["dtype"]) for s in m["inputs"]]
    manifest = {**m, "inputs": [m["inputs"][0], {**m["inputs"][1], "shape": [["T"]]}]}
    cases = {
        r"input 'x': dynamic size T=0 is outside its range 1\.\.8192": lambda: mod.run_cpu(
            np.zeros((0, 64), np.float16), *arrays[1:]),
        r"input 'x': dynamic size T=9000 is outside its range 1\.\.8192": lambda: mod.run_cpu(
            np.zeros((9000, 64), np.float16), *arrays[1:]),
        r"input 'x': expected shape \[7, 64\], got \[7, 32\]": lambda: mod.run_cpu(arrays[0][:, :32].copy(),
                                                                                    *arrays[1:]),
        r"output 'y': expected shape \[7, 64\], got \[4, 64\]": lambda: mod.run_cpu(
            *arrays, out=[mod._part("cpu").aligned_empty([4, 64], np.float16)]),
        # the same size in two inputs must agree (a manifest where norm_w is [T])
        r"input 'norm_w': dimension 0 is the dynamic size T, which input 'x' gives as 7, but it is 64": lambda:
            mod.bind_sizes(manifest, [(7, 64), (64,)]),
    }
    for message, call in cases.items():
        with pytest.raises(mod.BundleInputError, match=message):
            call()
    assert mod.bind_sizes(manifest, [(7, 64), (7,)]) == ({"T": 7}, [[7, 64], [7]], [[7, 64]])


def test_old_format_manifest_is_refused_by_the_loader(bundle, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**m, "bundle_format": 2}))
    mod = loader(copy, "mlp_dyn_loader_old")
    with pytest.raises(mod.BundleError, match="bundle format 2; this loader reads format 4"):
        mod.read_manifest(copy)


def test_cli_export_takes_buckets(tmp_path, capsys):
    from tilefuse.cli import main

    small = ["--set", "H=64", "--set", "I=96", "--db", "none", "--costmodel", "none"]
    args = ["export", "examples/decoder_mlp.tf", "--out", str(tmp_path), "--targets", "cpu", *small]
    assert main([*args, "--buckets", "1,x"]) == 2
    assert "--buckets expects positive integers" in capsys.readouterr().err
    assert not (tmp_path / "manifest.json").exists()
