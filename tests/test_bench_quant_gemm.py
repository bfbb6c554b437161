"""bench/quant_gemm.py --dry-run (what gpu-check runs without a GPU): every format's case under the Triton
interpreter, checked against torch's f32 product and the float64 reference, with the JSON result the GPU
run writes (device, versions, date, the issue's targets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tilefuse.ir.ops import Op

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.bench  # ~15 s of interpreter work; gpu-check's interpreter run (tests/test_gpu_check.py) runs it too
def test_quant_gemm_dry_run_checks_every_format(tmp_path: Path) -> None:
    out = tmp_path / "quant_gemm.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*sys.path, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "quant_gemm.py"), "--dry-run", "--json", str(out)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert {"device", "target", "torch", "triton", "date", "tilefuse"} <= set(doc["meta"])
    assert doc["meta"]["target"] == "interp" and doc["meta"]["size"] == "dry-run"
    rows = doc["rows"]
    formats = {"w4a16", "fp8"} | ({"w8a8"} if hasattr(Op, "QUANTIZE") else set())
    assert {r["format"] for r in rows} == formats and {r["M"] for r in rows} == {1, 5, 64}
    assert ("w8a8: skipped" in res.stdout) == (not hasattr(Op, "QUANTIZE"))
    assert all(r["rel_err"] < 3e-2 and r["tilefuse_ms"] > 0 and r["vs_f16"] > 0 for r in rows)
    fp8 = [r for r in rows if r["format"] == "fp8"]
    assert all("quant_matmul" in r["kernels"][0] and '"BLOCK_K":128' in r["kernels"][0] for r in fp8)
    assert all("scaled_mm_recipe" in r for r in fp8)
    assert {t["format"] for t in doc["targets"]} == {"w4a16", "fp8", "w8a8"}
