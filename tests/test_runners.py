"""Runners: subprocess isolation (hangs, crashes, raising candidates), the GPU runner's
orchestration with a fake worker function, and the CPU runner on real TVM kernels."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.schedule.config import Config
from tilefuse.autotune.database import TuningDB
from tilefuse.autotune.device import cpu_device
from tilefuse.autotune.measure import kernel_inputs, kernel_reference, time_paired
from tilefuse.schedule.records import Measurement, Status
from tilefuse.autotune.runners import CpuRunner, FakeRunner, GpuRunner
from tilefuse.autotune.search import tune_kernel
from tilefuse.schedule.target import get_target
from tilefuse.ir.reference import evaluate
from tilefuse.kernels import fusion_rules, spec_for
from tilefuse.passes import run_pipeline

from test_search import FakeSpec, latency


def hangs(c: Config) -> bool:
    return c.int("c") == 1 and c.int("a") == 1 and c.int("b") == 4


def crashes(c: Config) -> bool:
    return c.int("c") == 3 and c.int("a") == 1 and c.int("b") == 4


def raises(c: Config) -> bool:
    return c.int("c") == 2 and c.int("a") == 1 and c.int("b") == 4


def matmul_spec(m: int = 37, n: int = 53, k: int = 71):
    g = tf.GraphBuilder("mm_epilogue")
    a, b, bias = g.input("a", (m, k), "f32"), g.input("b", (k, n), "f32"), g.input("bias", (n,), "f32")
    g.output("c", tf.maximum(a @ b + bias, 0.0))
    kg = run_pipeline(g.build(), fusion_rules()).kernels
    assert len(kg.kernels) == 1
    return spec_for(kg, kg.kernels[0], "tvm")


def test_isolated_hang_crash_and_error_are_marked_and_the_sweep_continues():
    dev = cpu_device()
    spec = FakeSpec()
    runner = FakeRunner(latency, hang=hangs, crash=crashes, error=raises, isolate=True, timeout=1.0)
    bad = [Config(a=1, b=4, c=1), Config(a=1, b=4, c=3), Config(a=1, b=4, c=2)]
    try:
        with TuningDB("sqlite://") as db:
            t0 = time.monotonic()
            got = {c: runner.measure(spec, c, dev) for c in bad}
            assert got[bad[0]].status is Status.TIMEOUT and time.monotonic() - t0 < 30
            assert got[bad[1]].status is Status.RUNTIME_ERROR and "died" in got[bad[1]].error
            assert got[bad[2]].status is Status.RUNTIME_ERROR and "fake runtime error" in got[bad[2]].error
            ok = runner.measure(spec, Config(a=2, b=4, c=0), dev)
            assert ok.status is Status.OK and ok.median == pytest.approx(latency(Config(a=2, b=4, c=0)))
            assert runner.worker.starts == 3  # replaced after the hang and after the crash
            res = tune_kernel(spec, dev, runner, db, budget=84, strategy="grid")
            assert len(res.trials) == 84 and res.best_config == Config(a=4, b=8, c=2)
            assert res.statuses == {"ok": 81, "timeout": 1, "runtime_error": 2}
    finally:
        runner.close()


# ---- GPU runner orchestration (no GPU needed: the worker function is a fake) -------------------
def fake_gpu_worker(req: dict) -> Measurement:
    cfg = Config.from_json(req["config"])
    if cfg.int("tile_m") == 8:
        time.sleep(60)  # a hung kernel
    if cfg.int("tile_m") == 16:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    if cfg.int("tile_m") == 24:
        os._exit(139)
    assert req["flush_bytes"] == 2 * 50 * 2**20  # twice the L2
    return Measurement(Status.OK, (1e-3, 1.1e-3, 1e-3), verified=True, max_error=0.0)


class _FakeGpu:
    kind, arch, key, nominal, l2_bytes = "cuda", "sm_90", "f" * 64, False, 50 * 2**20


def test_gpu_runner_orchestration_with_fake_worker():
    spec = matmul_spec()
    runner = GpuRunner(worker_fn=fake_gpu_worker, timeout=2.0, jobs=1)
    base = dict(tile_n=32, tile_k=32, micro_m=4, micro_n=16, vector=8, unroll=4)
    try:
        assert runner.worker.env["TRITON_INTERPRET"] == "0"
        assert runner.measure(spec, Config(tile_m=8, **base), _FakeGpu()).status is Status.TIMEOUT
        m = runner.measure(spec, Config(tile_m=16, **base), _FakeGpu())
        assert m.status is Status.RUNTIME_ERROR and "illegal memory access" in m.error
        assert runner.worker.pid is None  # the CUDA context is poisoned: the worker was replaced
        assert runner.measure(spec, Config(tile_m=24, **base), _FakeGpu()).status is Status.RUNTIME_ERROR
        ok = runner.measure(spec, Config(tile_m=32, **base), _FakeGpu())
        assert ok.status is Status.OK and ok.median == pytest.approx(1e-3)
        assert runner.worker.starts == 4
    finally:
        runner.close()


# ---- CPU runner on real TVM kernels -----------------------------------------------------------
CORRUPT = Config(tile_m=16, tile_n=32, tile_k=32, micro_m=4, micro_n=16, vector=8, unroll=4)


def corrupt_one(config: Config, outputs: list) -> None:
    """A runner hook standing in for a broken kernel: one wrong element for CORRUPT."""
    if config == CORRUPT:
        outputs[0].reshape(-1)[7] += 1.0


def test_time_paired_interleaves_reference_and_candidate():
    """Calibration, then reference sample i right before candidate sample i, each after the flush;
    on a fake clock where the machine slows 3x from the fifth sample pair on, the per-pair ratios
    stay exact while the raw samples do not."""
    events: list[str] = []
    now = [0.0]
    slow = [1.0]

    def clock() -> float:
        return now[0]

    def kernel(name: str, seconds: float):
        def run() -> None:
            events.append(name)
            now[0] += seconds * slow[0]
        return run

    def before() -> None:
        events.append("flush")
        if events.count("flush") == 9:
            slow[0] = 3.0

    out, ref = time_paired(kernel("cand", 2e-3), kernel("ref", 4e-3), before, samples=6, warmup=2,
                           min_sample_seconds=0.0, clock=clock)
    assert events[:4] == ["cand", "cand", "ref", "ref"]
    assert events[4:] == ["flush", "ref", "flush", "cand"] * 6
    assert [o / r for o, r in zip(out, ref)] == pytest.approx([0.5] * 6)
    assert out == pytest.approx([2e-3] * 4 + [6e-3] * 2)
    m = Measurement(Status.OK, tuple(out), True, reference=tuple(ref))
    assert m.relative == pytest.approx(0.5) and m.median == pytest.approx(2e-3)
    assert time_paired(kernel("cand", 1e-3), None, before, samples=2, warmup=1, min_sample_seconds=0.0,
                       clock=clock)[1] == []


def test_kernel_reference_matches_the_graph_reference():
    spec = matmul_spec()
    ins = kernel_inputs(spec, seed=1)
    ref = kernel_reference(spec, ins)
    full = evaluate(spec.kg.graph, {b.name: x for b, x in zip(spec.inputs, ins)})
    np.testing.assert_allclose(ref[0], full["c"])
    assert all(np.std(x) > 0 for x in ins)  # never zeros


def test_cpu_runner_measures_verifies_and_catches_wrong_results():
    dev = cpu_device()
    spec = matmul_spec()
    target = get_target("cpu")
    assert not spec.constraints(CORRUPT, target)
    other = CORRUPT.replace(tile_m=32, micro_m=8)
    assert not spec.constraints(other, target)
    runner = CpuRunner(timeout=120, samples=3, warmup=1, min_sample_seconds=1e-4, jobs=1, output_hook=corrupt_one)
    try:
        d = runner.measure(spec, spec.default_config(target), dev)
        assert d.status is Status.OK and d.verified and d.median is not None and len(d.samples) == 3
        assert d.max_error is not None and d.max_error < 1e-3
        m = runner.measure(spec, other, dev)
        assert m.status is Status.OK and m.verified and m.median > 0
        # paired by default: the default kernel timed before every sample
        assert len(d.reference) == len(m.reference) == 3 and min(m.reference) > 0 and m.relative > 0
        w = runner.measure(spec, CORRUPT, dev)
        assert w.status is Status.WRONG_RESULT and w.median is None and w.max_error >= 0.5
    finally:
        runner.close()


def test_cpu_runner_pairing_can_be_turned_off_and_gpu_runner_refuses_it():
    dev = cpu_device()
    spec = matmul_spec()
    runner = CpuRunner(timeout=120, samples=2, warmup=1, min_sample_seconds=1e-4, jobs=1, paired=False)
    try:
        m = runner.measure(spec, spec.default_config(get_target("cpu")), dev)
        assert m.status is Status.OK and m.reference == () and m.relative is None and m.median > 0
    finally:
        runner.close()
    with pytest.raises(ValueError, match="does not pair"):
        GpuRunner(paired=True)


def test_gpu_runner_refuses_a_nominal_device_up_front():
    """No such GPU on this machine: one clear error, not a runtime_error record per candidate."""
    from tilefuse.autotune.device import NOMINAL, DeviceError

    spec = matmul_spec()
    runner = GpuRunner(worker_fn=fake_gpu_worker, timeout=2.0, jobs=1)
    try:
        with pytest.raises(DeviceError, match="nominal fingerprint"):
            runner.measure(spec, spec.default_config(get_target("sm_90")), NOMINAL["H100"])
        assert runner.worker.starts == 0
    finally:
        runner.close()
