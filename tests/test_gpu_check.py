"""`make gpu-check` (python -m tilefuse.gpu_check) on its interpreter path, as it runs without a GPU: the
whole check with TVM, optuna, xgboost and SQLAlchemy imports blocked (a GPU image lacks them), its JSON
and Markdown, its exit status when a check fails or hangs, a worker that dies, and the report's parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tilefuse.gpu_check import report
from tilefuse.gpu_check.steps import BENCHES
from tilefuse.gpu_check.cases import FAMILY_CASES
from tilefuse.gpu_check.main import child_env, target_for
from tilefuse.gpu_check.steps import Plan, _junit_checks, family_coverage, run_cases

ROOT = Path(__file__).resolve().parents[1]
PKG_DIR = str(Path(__import__("tilefuse").__file__).parents[1])  # holds the `tilefuse` package (a symlink)
BLOCKED = ("tvm", "tvm_ffi", "optuna", "xgboost", "sqlalchemy")
BLOCKER = f"""
import os, sys

class _Blocker:
    # a GPU image without these packages: any attempt to import one is logged and fails
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED!r}:
            with open(os.environ["GPU_CHECK_BLOCK_LOG"], "a") as f:
                f.write(name + "\\n")
            raise ImportError(name + " is blocked: the GPU image lacks it")
        return None

sys.meta_path.insert(0, _Blocker())
"""


def blocker_env(tmp: Path) -> dict[str, str]:
    """PYTHONPATH and log file of a sitecustomize that blocks the heavy optional packages."""
    (tmp / "site").mkdir(exist_ok=True)
    (tmp / "site" / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": str(tmp / "site"), "GPU_CHECK_BLOCK_LOG": str(tmp / "blocked.log")}


def gpu_check(tmp: Path, *args: str, blocked: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the check in a child process the way `make gpu-check` does (the package on PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env["PYTHONPATH"] = PKG_DIR
    env["TILEFUSE_CACHE_DIR"] = str(tmp / "cache")
    if blocked:
        block = blocker_env(tmp)
        env.update(block, PYTHONPATH=os.pathsep.join([block["PYTHONPATH"], PKG_DIR]))
    cmd = [sys.executable, "-m", "tilefuse.gpu_check", "--interp", "--out-dir", str(tmp / "out"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=timeout)


def load(tmp: Path) -> tuple[dict, str]:
    return (json.loads((tmp / "out" / "gpu-check-interp.json").read_text()),
            (tmp / "out" / "gpu-check-interp.md").read_text())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The whole check, every step, with the heavy optional packages unimportable."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    t0 = time.monotonic()
    res = gpu_check(tmp, blocked=True)
    return tmp, res, time.monotonic() - t0


def test_the_blocker_blocks(tmp_path):
    """The premise of the next test: with the blocker installed, importing sqlalchemy fails and is logged."""
    env = {**os.environ, **blocker_env(tmp_path)}
    res = subprocess.run([sys.executable, "-c", "import sqlalchemy"], capture_output=True, text=True, env=env)
    assert res.returncode != 0 and "blocked" in res.stderr
    assert (tmp_path / "blocked.log").read_text().split() == ["sqlalchemy"]


def test_gpu_check_without_a_gpu_runs_everything_under_the_interpreter(full_run):
    tmp, res, seconds = full_run
    assert res.returncode == 0, res.stdout + res.stderr
    first = res.stdout.splitlines()[0]
    assert first.startswith("gpu-check: ") and "Triton interpreter" in first
    assert ("no CUDA GPU" in first) != ("not using the GPU" in first)
    doc, md = load(tmp)
    assert doc["ok"] is True and doc["mode"] == "interp" and doc["target"] == "interp"
    assert set(doc["versions"]) >= {"python", "numpy", "torch", "triton", "tilefuse"} and doc["versions"]["triton"]
    assert {"name", "compute_capability", "driver"} <= set(doc["device"]) and doc["date"] and doc["seed"] >= 0
    by_name = {c["name"]: c for c in doc["checks"]}
    examples = {f"example:{p.stem}" for p in (ROOT / "examples").glob("*.tf")}
    assert examples | set(FAMILY_CASES) | {"every family launched", "pytest -m gpu"} <= set(by_name)
    assert {f"bench {Path(b).name}" for b in BENCHES} <= set(by_name)
    # bench/splat.py --dry-run: every stage under the interpreter, checked against the float64 reference and
    # the torch pipeline (render with SH, dense and sparse features)
    splat = {r["case"]: r for r in by_name["bench splat.py"]["details"]["rows"]}
    assert set(splat) == {"render N=200 64x48 sh3", "train N=200 64x48 sh3", "features dense N=200 C=64 64x48",
                          "features sparse N=200 C=64 64x48"} | {f"plan N={n} 1920x1080" for n in (100000, 1000000,
                                                                                                  3000000)}
    assert splat["render N=200 64x48 sh3"]["ref_max_err"] < 1e-3
    assert all(r["max_abs_err_vs_torch"] < 1e-3 for c, r in splat.items() if c.startswith(("render", "features")))
    # the backward (with d_sh_coeffs) against the float64 reference; 1M and 3M fit once sized from the scan
    assert max(splat["train N=200 64x48 sh3"]["ref_rel_err"].values()) < 1e-3
    assert all(splat[f"plan N={n} 1920x1080"]["fits"]["80 GiB"] for n in (1000000, 3000000))
    assert not splat["plan N=3000000 1920x1080"]["worst_case_fits"]["141 GiB"]
    # bench/sparse_gpu.py --dry-run: every case of issue 14's GPU benchmark ran and matched torch
    cases = [r["case"] for r in by_name["bench sparse_gpu.py"]["details"]["rows"]]
    assert sum(c.startswith("csr spmm") for c in cases) == 4 and sum(c.startswith("linear") for c in cases) == 4
    assert any(c.startswith("graph attention") for c in cases)
    assert all(c["status"] in ("ok", "skipped") for c in doc["checks"]), [c for c in doc["checks"] if c["error"]]
    for name in examples | set(FAMILY_CASES):
        outs = by_name[name]["details"]["outputs"]
        assert outs and all(o["ok"] and o["max_err"] <= o["bound"] for o in outs)
        assert by_name[name]["details"]["compile_s"] >= 0 and by_name[name]["seconds"] > 0
    assert set(by_name["every family launched"]["details"]["registered"]) >= {"pointwise", "matmul", "attention",
                                                                               "attention_bwd", "decode"}
    gpu_tests = [c for c in doc["checks"] if c["step"] == "pytest" and c["name"] != "pytest -m gpu"]
    assert gpu_tests and all(c["status"] == "skipped" for c in gpu_tests)  # no device: gpu tests skip
    assert all(c["details"]["rows"] for c in doc["checks"] if c["step"] == "bench")
    assert md.startswith("# tilefuse gpu-check: PASS") and "| example:decoder_mlp | kernels | ok |" in md
    assert "## Kernel cases" in md and "## bench attention.py (--dry-run)" in md and "| dense hdim=" in md
    print(f"gpu-check under the interpreter took {seconds:.0f} s")


def test_gpu_check_imports_no_tvm_optuna_xgboost_or_sqlalchemy(full_run):
    tmp, res, _ = full_run
    assert res.returncode == 0, res.stdout + res.stderr
    log = tmp / "blocked.log"
    assert not log.exists() or log.read_text() == "", f"attempted imports: {log.read_text().split()}"


GOOD = "graph good(N=24) {\n  %x = input f32[N]\n  %y = pointwise(%x) {expr=(mul $0:f32 2:f32)}\n  output y = %y\n}\n"


def test_a_failing_check_makes_the_exit_status_one(tmp_path):
    ex = tmp_path / "examples"
    ex.mkdir()
    (ex / "good.tf").write_text(GOOD)
    (ex / "broken.tf").write_text("graph broken() {\n  %x = frobnicate()\n}\n")
    failing = tmp_path / "failing_bench.py"
    failing.write_text("import sys\nprint('boom: the benchmark broke', file=sys.stderr)\nsys.exit(3)\n")
    res = gpu_check(tmp_path, "--only", "kernels,bench", "--examples", str(ex), "--cases", "example:*",
                    "--bench", str(failing))
    assert res.returncode == 1, res.stdout + res.stderr
    doc, md = load(tmp_path)
    by_name = {c["name"]: c for c in doc["checks"]}
    assert by_name["example:good"]["status"] == "ok"
    assert by_name["example:broken"]["status"] == "fail" and "frobnicate" in by_name["example:broken"]["error"]
    bench = by_name["bench failing_bench.py"]
    assert bench["status"] == "fail" and "exit status 3" in bench["error"] and "boom" in bench["error"]
    assert doc["ok"] is False and doc["summary"] == {"fail": 2, "ok": 1}
    assert md.startswith("# tilefuse gpu-check: FAIL") and "## Failures" in md and "boom" in md
    assert "FAIL" in res.stdout.splitlines()[-1]


def test_hangs_are_killed_at_the_budget(tmp_path):
    """A case that outlasts the budget (a 2048^3 matmul under the interpreter) is killed with its worker,
    the cases after it are reported not run, and a hanging benchmark gets no time: all timeouts."""
    ex = tmp_path / "examples"
    ex.mkdir()
    (ex / "a_big.tf").write_text("graph a_big(N=2048) {\n  %a = input f32[N, N]\n  %b = input f32[N, N]\n"
                                 "  %c = matmul(%a, %b)\n  output c = %c\n}\n")
    (ex / "b_after.tf").write_text(GOOD)
    hang = tmp_path / "hang.py"
    hang.write_text("import time\ntime.sleep(600)\n")
    t0 = time.monotonic()
    res = gpu_check(tmp_path, "--only", "kernels,bench", "--examples", str(ex), "--cases", "example:*",
                    "--bench", str(hang), "--budget", "12", timeout=120)
    assert time.monotonic() - t0 < 90
    assert res.returncode == 1, res.stdout + res.stderr
    doc, _ = load(tmp_path)
    status = {c["name"]: c["status"] for c in doc["checks"]}
    assert status == {"example:a_big": "timeout", "example:b_after": "timeout", "bench hang.py": "timeout"}


def test_a_dying_worker_fails_its_case_and_the_rest_still_run(tmp_path):
    """Workers that crash before their first result (here a `tilefuse` that exits at import): each case
    fails with the worker's exit status and stderr, the worker is restarted for the next one, and
    coverage fails for want of a registry."""
    (tmp_path / "tilefuse").mkdir()
    (tmp_path / "tilefuse" / "__init__.py").write_text(
        "import os, sys\nprint('worker crashed on purpose', file=sys.stderr, flush=True)\nos._exit(7)\n")
    env = {**child_env(interp=True), "PYTHONPATH": str(tmp_path)}
    plan = Plan(ROOT, ROOT / "examples", "interp", True, 1, time.monotonic() + 60, env)
    checks, registered = run_cases(["family:matmul_epilogue", "family:paged_decode"], plan, 30, 60)
    assert [c["status"] for c in checks] == ["fail", "fail"] and registered == []
    assert all("exited with status 7" in c["error"] and "crashed on purpose" in c["error"] for c in checks)
    cover = family_coverage(checks, registered)
    assert cover["status"] == "fail" and "never reported" in cover["error"]


def test_family_coverage_names_the_family_no_case_launched():
    cases = [{"status": "ok", "details": {"families": ["pointwise"]}},
             {"status": "fail", "details": {"families": ["matmul"]}}]
    cover = family_coverage(cases, ["matmul", "pointwise"])
    assert cover["status"] == "fail" and "family matmul" in cover["error"]
    assert family_coverage(cases[:1], ["pointwise"])["status"] == "ok"


def test_on_a_gpu_a_skipped_gpu_test_fails(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(textwrap.dedent("""\
        <testsuites><testsuite>
          <testcase classname="tests.test_gpu" name="test_a" time="0.5"/>
          <testcase classname="tests.test_gpu" name="test_b" time="0.0"><skipped message="needs a CUDA GPU"/></testcase>
          <testcase classname="tests.test_gpu" name="test_c" time="0.1"><failure message="assert 1 == 2"/></testcase>
        </testsuite></testsuites>"""))
    on_gpu = {c["name"]: (c["status"], c["error"]) for c in _junit_checks(junit, on_gpu=True)}
    assert on_gpu["tests.test_gpu::test_a"] == ("ok", "")
    assert on_gpu["tests.test_gpu::test_b"][0] == "fail" and "skipped on a GPU machine" in on_gpu[
        "tests.test_gpu::test_b"][1]
    assert on_gpu["tests.test_gpu::test_c"] == ("fail", "assert 1 == 2")
    assert [c["status"] for c in _junit_checks(junit, on_gpu=False)] == ["ok", "skipped", "fail"]


@pytest.mark.parametrize(("cc", "target"), [("9.0", "sm_90"), ("10.0", "sm_90"), ("8.6", "sm_86"), ("8.0", "sm_80"),
                                            ("7.5", None)])
def test_target_for_the_device(cc, target):
    assert target_for(cc) == target


def test_report_file_names_and_markdown_cells():
    gpu = {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0"}
    assert report.device_slug({"mode": "gpu", "gpu": gpu}) == "nvidia-h100-80gb-hbm3"
    assert report.device_slug({"mode": "interp", "gpu": gpu}) == "interp"
    machine = {"mode": "gpu", "target": "sm_90", "gpu": gpu, "versions": {"torch": "2.11"}, "budget_s": 480,
               "seed": 3}
    checks = [{"name": "a|b", "step": "kernels", "status": "timeout", "error": "line one\nline two", "seconds": 1.0,
               "details": {}}]
    doc = report.build(machine, checks, "2026-01-01T00:00:00+00:00", 2.0)
    md = report.markdown(doc)
    assert doc["ok"] is False and "| a\\|b | kernels | timeout | 1.0 | line one |" in md and "line two" in md
