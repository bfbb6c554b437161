"""Functions that run inside measurement / build worker processes (see runners.py, measure.py).

Each takes one request dict and returns a Measurement (or, for builds, an error message). State that
costs time to make (random inputs, the verified default kernel's outputs, the flush buffer) is kept
per worker process and rebuilt by a fresh worker after a crash."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..schedule.config import Config
from ..schedule.launch import LaunchPlan
from ..codegen.executors import poison_value
from ..ir.dtypes import storage_numpy
from .measure import CacheFlusher, Expected, expected_outputs, kernel_inputs, resolve, time_paired
from ..schedule.records import Measurement, Status
from ..schedule.target import get_target

log = logging.getLogger(__name__)
_STATE: dict[tuple[str, str, int], Any] = {}


def _msg(err: BaseException, limit: int = 4000) -> str:
    return f"{type(err).__name__}: {err}"[:limit]


# ---- CPU (TVM / LLVM) -------------------------------------------------------------------------
@dataclass
class _CpuState:
    inputs: list[np.ndarray]
    poison: list[np.ndarray]
    expected: Expected
    flush: CacheFlusher
    reference: Callable[[], None] | None  # the default kernel on its own output buffers (timing pair)


def _cpu_state(spec: Any, req: dict[str, Any]) -> _CpuState:
    key = ("cpu", spec.key, int(req["seed"]))
    st = _STATE.get(key)
    if st is None:
        from ..codegen import tvm_runtime
        from ..codegen.cache import default_cache

        inputs = kernel_inputs(spec, int(req["seed"]))
        poison = [np.full(b.shape, poison_value(b.dtype), dtype=storage_numpy(b.dtype)) for b in spec.outputs]
        ref: dict[str, Any] = {}

        def run_default() -> list[np.ndarray]:
            kern = tvm_runtime.build(spec, spec.default_config(get_target(req["arch"])), default_cache())
            args = kern._args(inputs, poison, alias_outputs=False)
            outs = args[len(inputs):len(inputs) + len(poison)]  # the dynamic sizes' ints follow the outputs
            for a, p in zip(outs, poison):
                a.copyfrom(p.reshape(a.shape))
            kern.func(*args)
            ref["run"] = lambda: kern.func(*args)
            return [a.numpy() for a in outs]

        expected = expected_outputs(spec, inputs, run_default)
        st = _CpuState(inputs, poison, expected, CacheFlusher(req["flush_bytes"]),
                       ref.get("run") if req.get("paired", False) else None)
        _STATE[key] = st
    return st


def cpu_measure(req: dict[str, Any]) -> Measurement:
    """Build (or load) the TVM library, verify on poisoned outputs, time with cache flushes."""
    from ..codegen import tvm_runtime
    from ..codegen.cache import default_cache

    spec = resolve(req["spec"])
    config = Config.from_json(req["config"])
    st = _cpu_state(spec, req)
    t0 = time.perf_counter()
    try:
        kern = tvm_runtime.build(spec, config, default_cache())
    except Exception as exc:  # noqa: BLE001 - any compiler failure is this candidate's compile error
        return Measurement(Status.COMPILE_ERROR, error=_msg(exc), compile_seconds=time.perf_counter() - t0)
    compile_s = 0.0 if kern.from_cache else time.perf_counter() - t0
    hook: Callable[[Config, list[np.ndarray]], None] | None = req.get("hook")
    # TvmKernel's own argument marshalling; the timed loop calls the packed function directly.
    args = kern._args(st.inputs, st.poison, alias_outputs=False)
    outs = args[len(st.inputs):len(st.inputs) + len(st.poison)]  # the dynamic sizes' ints follow the outputs

    def poison() -> None:
        for a, p in zip(outs, st.poison):
            a.copyfrom(p.reshape(a.shape))

    def read() -> list[np.ndarray]:
        got = [a.numpy() for a in outs]
        if hook is not None:
            hook(config, got)
        return got

    def run() -> None:
        kern.func(*args)

    try:
        poison()
        run()
        ok, err = st.expected.check(read())
        if not ok:
            return Measurement(Status.WRONG_RESULT, max_error=err, compile_seconds=compile_s,
                               error=f"max |err| {err:.3e} vs the {st.expected.source} outputs")

        def before() -> None:
            poison()
            st.flush()

        samples, reference = time_paired(run, st.reference, before, samples=int(req["samples"]),
                                         warmup=int(req["warmup"]), min_sample_seconds=float(req["min_sample_seconds"]))
        ok, err2 = st.expected.check(read())  # the last timed run must be right too
    except Exception as exc:  # noqa: BLE001 - a failing kernel is this candidate's runtime error
        return Measurement(Status.RUNTIME_ERROR, error=_msg(exc), compile_seconds=compile_s)
    if not ok:
        return Measurement(Status.WRONG_RESULT, tuple(samples), max_error=err2, compile_seconds=compile_s,
                           error="the last timed run differs from the expected outputs")
    return Measurement(Status.OK, tuple(samples), verified=True, max_error=max(err, err2), compile_seconds=compile_s,
                       reference=tuple(reference))


def cpu_prebuild(req: dict[str, Any]) -> str:
    """Compile one candidate into the build cache; '' on success (or a hit), else the compile error."""
    from ..codegen import tvm_runtime
    from ..codegen.cache import default_cache

    cache = default_cache()
    if cache is None:
        return ""
    spec = resolve(req["spec"])
    config = Config.from_json(req["config"])
    key = cache.key(tvm_runtime.cache_payload(spec, config))
    if cache.contains(key):
        return ""
    try:
        data = tvm_runtime.compile_library(spec, config)
    except Exception as err:  # noqa: BLE001 - reported as this candidate's compile error
        return _msg(err)
    cache.put(key, {tvm_runtime.LIBRARY: data})
    return ""


# ---- GPU (Triton on CUDA) -------------------------------------------------------------------
@dataclass
class _GpuState:
    inputs: list[Any]
    expected: Expected
    flush: Any


def _gpu_launcher(spec: Any, config: Config, source: str, inputs: list[Any],
                  device: str = "cuda") -> tuple[Callable[[], Any], list[Any]]:
    """The candidate's launch plan as one callable on `inputs` (fresh outputs, aux tensors such as
    block lists, workspaces), JIT-compiled on first call, and its output tensors."""
    import torch

    from ..codegen.executors import plan_arguments
    from ..codegen.triton_runtime import load_module, plan_launcher
    from ..ir import dtypes as dt

    plan = spec.launch_plan(config)
    outs = [torch.empty(b.shape, dtype=dt.to_torch(b.dtype), device=device) for b in spec.outputs]
    bound = plan_arguments(spec, config, plan, list(inputs), outs, device)
    return plan_launcher(load_module(source, interpret=False), plan, bound, interpret=False), outs


def device_inputs(spec: Any, host: list[np.ndarray], device: str) -> list[Any]:
    """The kernel's host inputs as torch tensors of its buffers' dtypes on `device` (bf16 goes through
    float32: torch cannot take ml_dtypes arrays), as the compiled graph's own launches make them."""
    from ..codegen.executors import torch_input

    return [torch_input(b.name, x, b.dtype, device) for b, x in zip(spec.inputs, host)]


def _gpu_state(spec: Any, req: dict[str, Any]) -> _GpuState:
    key = ("gpu", spec.key, int(req["seed"]))
    st = _STATE.get(key)
    if st is None:
        import torch

        host = kernel_inputs(spec, int(req["seed"]))
        inputs = device_inputs(spec, host, "cuda")
        target = get_target(req["arch"])

        def run_default() -> list[np.ndarray]:
            cfg = spec.default_config(target)
            launch, outs = _gpu_launcher(spec, cfg, spec.render_triton(cfg), inputs)
            launch()
            torch.cuda.synchronize()
            return [o.float().cpu().numpy() for o in outs]

        flush = torch.empty(max(1, int(req["flush_bytes"])), dtype=torch.int8, device="cuda")
        st = _GpuState(inputs, expected_outputs(spec, host, run_default), flush)
        _STATE[key] = st
    return st


def kernel_resources(compiled: Any) -> dict[str, Any]:
    """The static resource report of a JIT-compiled Triton kernel, for the cost model: cuobjdump's on
    its cubin (registers, shared memory, spills and the SASS instruction mix), else the counts Triton
    itself keeps (registers, spills, shared bytes; -1 for one it does not have)."""
    from ..codegen.resources import ToolError, report_from_cubin

    asm = getattr(compiled, "asm", None)
    cubin = asm.get("cubin") if isinstance(asm, dict) else None
    shared = getattr(getattr(compiled, "metadata", None), "shared", None)
    if cubin:
        try:
            return report_from_cubin(cubin, int(shared or 0)).to_dict()
        except (ToolError, ValueError) as err:
            log.info("no cuobjdump report of the candidate's cubin (%s); keeping Triton's counts", err)

    def count(value: Any) -> int:
        return -1 if value is None else int(value)

    return {"registers": count(getattr(compiled, "n_regs", None)), "spills": count(getattr(compiled, "n_spills", None)),
            "shared_bytes": count(shared)}


def gpu_measure(req: dict[str, Any]) -> Measurement:
    """JIT-build the Triton kernel, verify on poisoned outputs, time with CUDA events and L2 flushes."""
    import torch

    spec = resolve(req["spec"])
    config = Config.from_json(req["config"])
    st = _gpu_state(spec, req)
    t0 = time.perf_counter()
    try:
        launch, outs = _gpu_launcher(spec, config, spec.render_triton(config), st.inputs)
        for o, b in zip(outs, spec.outputs):
            o.fill_(poison_value(b.dtype))
        compiled = launch()  # the first launch JIT-compiles
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001
        kind = type(exc).__name__
        status = Status.COMPILE_ERROR if ("Compilation" in kind or "OutOfResources" in kind) else Status.RUNTIME_ERROR
        return Measurement(status, error=_msg(exc), compile_seconds=time.perf_counter() - t0)
    compile_s = time.perf_counter() - t0
    resources = kernel_resources(compiled)
    hook = req.get("hook")
    got = [o.float().cpu().numpy() for o in outs]
    if hook is not None:
        hook(config, got)
    ok, err = st.expected.check(got)
    if not ok:
        return Measurement(Status.WRONG_RESULT, max_error=err, compile_seconds=compile_s, resources=resources)
    samples = []
    for _ in range(int(req["warmup"])):
        launch()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(int(req["samples"])):
        st.flush.zero_()  # evict the L2 (twice its size) so every sample starts cold
        start.record()
        launch()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return Measurement(Status.OK, tuple(samples), verified=True, max_error=err, compile_seconds=compile_s,
                       resources=resources)


# ---- GPU builds (parallel build workers; no GPU needed) ---------------------------------------
class TargetOnlyDriver:
    """Triton's active driver in a GPU build worker. It reports the measured GPU's target, so that
    `JITFunction.warmup` compiles exactly what the measurement worker's first launch of the same
    source, arguments and options looks up: same specialization, options and target, hence the same
    key in Triton's on-disk cache (TRITON_CACHE_DIR, shared by the workers). It makes no CUDA context
    and needs no GPU; it cannot launch anything. The device index it reports is the arch, so a JIT
    function's per-device caches never mix two targets in one process."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.arch = int(arch)
        self.target = GPUTarget("cuda", self.arch, 32)

    def is_active(self) -> bool:
        return True

    def get_current_target(self) -> Any:
        return self.target

    def get_current_device(self) -> int:
        return self.arch

    def get_current_stream(self, device: Any = None) -> int:
        return 0


def use_target_only_driver(arch: int) -> None:
    """Make a TargetOnlyDriver for sm_`arch` Triton's active driver in this (build worker) process."""
    from triton.runtime import driver

    current = getattr(driver, "_active", None)  # not driver.active: that would make the default (CUDA) driver
    if not (isinstance(current, TargetOnlyDriver) and current.arch == int(arch)):
        driver.set_active(TargetOnlyDriver(arch))


def mock_launch_args(plan: LaunchPlan) -> dict[str, Any]:
    """Stand-ins for the arguments of `plan` (name -> the torch dtype of the pointer), which
    `JITFunction.warmup` specializes as a 16-byte aligned tensor of that dtype, as the measurement
    worker's freshly allocated tensors are."""
    from ..ir import dtypes as dt

    return {a.name: dt.torch_of_triton_sig(a.triton_type.removeprefix("*")) for a in plan.args}


def gpu_prebuild(req: dict[str, Any]) -> str:
    """Compile one candidate's Triton kernel(s) for the measured GPU into Triton's on-disk cache, where
    the measurement worker's JIT finds them; '' on success (or a hit), else the compile error, which
    includes a kernel needing more shared memory per block than the target has (Triton would refuse
    to launch it: OutOfResources)."""
    from ..codegen.triton_runtime import load_module

    spec = resolve(req["spec"])
    config = Config.from_json(req["config"])
    target = get_target(req["arch"])
    if not target.is_gpu:
        raise ValueError(f"gpu_prebuild for {target.name}: not a CUDA target")
    use_target_only_driver(target.arch)
    try:
        plan = spec.launch_plan(config)
        mod = load_module(spec.render_triton(config), interpret=False)
        mocks = mock_launch_args(plan)
        for name in plan.functions():
            ln = plan.launch_of(name)
            compiled = getattr(mod, name).warmup(*ln.values(mocks), grid=ln.grid, **ln.kwargs(interpret=False))
            shared = int(getattr(compiled.metadata, "shared", 0) or 0)
            if target.max_shared_bytes and shared > target.max_shared_bytes:
                return (f"OutOfResources: {name} needs {shared} bytes of shared memory per block, "
                        f"{target.name} has {target.max_shared_bytes}")
    except Exception as exc:  # noqa: BLE001 - any compiler failure is this candidate's compile error
        return _msg(exc)
    return ""
