"""The GPU runner's parallel builds, without a GPU: build workers compile candidates for sm_90 into
Triton's on-disk cache (runner_workers.gpu_prebuild under the target-only driver), and the launch the
measurement worker makes later finds exactly those binaries there instead of compiling again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tilefuse as tf
from tilefuse.schedule.config import Config
from tilefuse.autotune.device import DeviceError
from tilefuse.autotune.measure import kernel_inputs, resolve
from tilefuse.schedule.records import Measurement, Status
from tilefuse.autotune.runners import GpuRunner
from tilefuse.schedule.target import get_target
from tilefuse.autotune.worker import OK, Worker
from tilefuse.kernels import fusion_rules, spec_for
from tilefuse.passes import run_pipeline

SMALL = Config(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=8, SPLIT_K=1, num_stages=2, num_warps=4)
SPLIT = Config(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=8, SPLIT_K=2, num_stages=2, num_warps=4)
# 4 stages of 256x128 + 128x256 bf16 tiles: 512 KiB of shared memory, sm_90 has 227 KiB per block
TOO_BIG = Config(BLOCK_M=256, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, SPLIT_K=1, num_stages=4, num_warps=8)


def bf16_matmul_spec():
    g = tf.GraphBuilder("mm_bf16")
    a, b = g.input("a", (64, 96), "bf16"), g.input("b", (96, 80), "bf16")
    g.output("c", a @ b)
    kg = run_pipeline(g.build(), fusion_rules()).kernels
    return spec_for(kg, kg.kernels[0], "triton")


class _LocalH200:
    kind, arch, name, key, nominal, l2_bytes = "cuda", "sm_90", "NVIDIA H200", "e" * 64, False, 60 * 2**20


class _NominalH200(_LocalH200):
    nominal = True


def cache_entries() -> set[str]:
    root = Path(os.environ["TRITON_CACHE_DIR"])
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def launch_like_the_measurement_worker(req: dict) -> dict:
    """In a worker: what gpu_measure's first launch of a candidate does (its inputs, outputs, launch
    arguments and JIT call), on CPU tensors under the target-only driver; the compile step runs (or
    hits the cache), the launch itself then fails for want of a GPU."""
    from tilefuse.autotune import runner_workers as rw

    spec = resolve(req["spec"])
    config = Config.from_json(req["config"])
    rw.use_target_only_driver(get_target(req["arch"]).arch)
    inputs = rw.device_inputs(spec, kernel_inputs(spec, 0), "cpu")
    launch, _ = rw._gpu_launcher(spec, config, spec.render_triton(config), inputs, device="cpu")
    before = cache_entries()
    try:
        launch()
        launched = "launched"
    except Exception as err:  # noqa: BLE001 - no GPU to launch on
        launched = type(err).__name__
    return {"new": sorted(cache_entries() - before), "launched": launched,
            "dtypes": [str(x.dtype) for x in inputs]}


@pytest.fixture
def triton_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private Triton cache for the build and measurement workers this test starts."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    return tmp_path / "triton"


def never_called(req: dict) -> Measurement:
    raise AssertionError("a candidate that failed its build reached the measurement worker")


def test_parallel_builds_fill_the_cache_the_measurement_launch_reads(triton_cache: Path) -> None:
    spec = bf16_matmul_spec()
    dev = _LocalH200()
    runner = GpuRunner(worker_fn=never_called, jobs=2, timeout=60.0)
    try:
        runner.prebuild(spec, [SMALL, SPLIT, TOO_BIG], dev)
        built = cache_entries()
        # SMALL: one kernel; SPLIT: the split-K kernel and its finishing kernel; TOO_BIG compiles too
        assert len(built) >= 4, built
        too_big = runner.measure(spec, TOO_BIG, dev)  # refused from its build, no GPU time spent
        assert too_big.status is Status.COMPILE_ERROR
        assert "OutOfResources" in too_big.error and "232448" in too_big.error, too_big.error
        worker = Worker({"TRITON_INTERPRET": "0"}, name="tilefuse-test-measure-like")
        try:
            for config in (SMALL, SPLIT):
                out = worker.call(launch_like_the_measurement_worker, runner.request(spec, config, dev), 300.0)
                assert out.kind == OK, out.error
                # the launch compiled nothing: it found the prebuilt binaries under the same keys
                assert out.value["new"] == [], (config.to_json(), out.value)
                assert out.value["launched"] != "launched"
                assert out.value["dtypes"] == ["torch.bfloat16", "torch.bfloat16"]  # bf16 inputs convert
        finally:
            worker.close()
    finally:
        runner.close()


def test_prebuild_reports_compile_errors_per_candidate(triton_cache: Path) -> None:
    """A config the kernel cannot be rendered or compiled for becomes that candidate's compile error."""
    from tilefuse.autotune.runner_workers import gpu_prebuild

    spec = bf16_matmul_spec()
    bad = Config(BLOCK_M=48, BLOCK_N=32, BLOCK_K=32, GROUP_M=8, SPLIT_K=1, num_stages=2, num_warps=4)
    runner = GpuRunner(worker_fn=never_called, jobs=1)
    req = runner.request(spec, bad, _LocalH200())
    runner.close()
    w = Worker({"TRITON_INTERPRET": "0"}, name="tilefuse-test-build")
    try:
        out = w.call(gpu_prebuild, req, 300.0)
        assert out.kind == OK and out.value, out  # arange of 48 is not a power of two
        assert "48" in out.value or "power of 2" in out.value, out.value
    finally:
        w.close()


def test_gpu_runner_refuses_a_nominal_device_before_building() -> None:
    runner = GpuRunner(worker_fn=never_called, jobs=2)
    try:
        with pytest.raises(DeviceError, match="nominal"):
            runner.prebuild(bf16_matmul_spec(), [SMALL, SPLIT], _NominalH200())
        assert runner._pool is None  # no build worker was started
    finally:
        runner.close()


def test_mock_launch_args_follow_the_signature() -> None:
    import torch

    from tilefuse.autotune.runner_workers import mock_launch_args
    from tilefuse.ir.dtypes import DTypeError, torch_of_triton_sig

    spec = bf16_matmul_spec()
    assert mock_launch_args(spec.launch_plan(SMALL)) == {"in0": torch.bfloat16, "in1": torch.bfloat16,
                                                         "out0": torch.bfloat16}
    split = mock_launch_args(spec.launch_plan(SPLIT))
    assert list(split.values()) == [torch.bfloat16] * 3 + [torch.float32]  # the split-K workspace
    assert torch_of_triton_sig("i1") is torch.bool and torch_of_triton_sig("fp8e4nv") is torch.float8_e4m3fn
    with pytest.raises(DTypeError, match="'fp7' has no torch dtype"):
        torch_of_triton_sig("fp7")
