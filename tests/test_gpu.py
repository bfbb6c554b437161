"""Tests that need a CUDA GPU (marked `gpu`; skipped without one). `make gpu-check` collects only the
files that mark a test gpu, on machines that may lack TVM, optuna, xgboost and SQLAlchemy: so this
file imports none of them (tests/test_gpu_check.py runs it with those imports blocked)."""

from __future__ import annotations

import pytest

import tilefuse as tf
from tilefuse.autotune.runners import GpuRunner
from tilefuse.kernels import fusion_rules, spec_for
from tilefuse.passes import run_pipeline
from tilefuse.schedule.records import Status


def _gpu_graph():
    g = tf.GraphBuilder("mm_gpu")
    a, b = g.input("a", (256, 128), "f16"), g.input("b", (128, 192), "f16")
    g.output("c", a @ b)
    return g.build()


@pytest.mark.gpu
def test_gpu_runner_on_a_real_gpu():
    from tilefuse.autotune.device import detect_devices

    gpu = next(d for d in detect_devices() if d.kind == "cuda")
    kg = run_pipeline(_gpu_graph(), fusion_rules()).kernels
    spec = spec_for(kg, kg.kernels[0], "triton")
    runner = GpuRunner(timeout=120)
    try:
        m = runner.measure(spec, spec.default_config(gpu.target), gpu)
        assert m.status is Status.OK and m.verified and len(m.samples) >= 3
    finally:
        runner.close()
