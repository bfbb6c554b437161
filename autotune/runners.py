"""Runners turn (spec, config, device) into a Measurement. Real runners (CPU via TVM, GPU via
Triton) measure in a worker subprocess with a timeout, so a crash or hang marks the candidate
(runtime_error / timeout) and the sweep continues with a fresh worker. FakeRunner serves tests.

Builds run in parallel (`prebuild`: `jobs` build workers compile a batch before it is measured, into
tilefuse's build cache for TVM, into Triton's kernel cache for the GPU); measurement runs one
candidate at a time in the single measurement worker, which then loads the binaries."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..schedule.config import Config
from ..schedule.records import Measurement, Status
from .worker import CRASH, ERROR, OK, TIMEOUT, Outcome, Worker, WorkerPool

if TYPE_CHECKING:
    from ..kernels.base import KernelSpec
    from .device import Device

log = logging.getLogger(__name__)

FLUSH_CAP_BYTES = 256 * 2**20


def flush_bytes(device: Any) -> int:
    """Bytes a CPU cache flush writes for `device`: twice its per-core L2 (device.l2_bytes), at most
    FLUSH_CAP_BYTES. That evicts the operands from L1 and L2 but not from a large L3: a server's L3
    (tens to hundreds of MiB, shared with other tenants on a VM) would cost more to sweep per sample
    than the kernels measured take, so samples model a kernel whose inputs another kernel wrote."""
    return min(FLUSH_CAP_BYTES, 2 * int(getattr(device, "l2_bytes", 0) or 0))


@runtime_checkable
class Runner(Protocol):
    """Measures one candidate: compile, verify against the reference, time."""

    def measure(self, spec: KernelSpec, config: Config, device: Device) -> Measurement: ...


def prebuild(runner: Any, spec: KernelSpec, configs: Sequence[Config], device: Device) -> None:
    """Let `runner` compile a batch in parallel before it is measured, if it can."""
    fn = getattr(runner, "prebuild", None)
    if fn is not None and configs:
        fn(spec, list(configs), device)


def close(runner: Any) -> None:
    """Stop a runner's worker processes, if it has any."""
    fn = getattr(runner, "close", None)
    if fn is not None:
        fn()


def outcome_measurement(out: Outcome) -> Measurement:
    """Map a worker outcome to a Measurement (the worker function returns one on success)."""
    if out.kind == OK:
        if isinstance(out.value, Measurement):
            return out.value
        return Measurement(Status.RUNTIME_ERROR, error=f"worker returned {type(out.value).__name__}, not a Measurement")
    if out.kind == TIMEOUT:
        return Measurement(Status.TIMEOUT, error=out.error)
    return Measurement(Status.RUNTIME_ERROR, error=out.error if out.kind in (ERROR, CRASH) else str(out))


# ---- fake runner (tests) ---------------------------------------------------------------------
@dataclass(frozen=True)
class Matcher:
    """Which configs a fake behaviour applies to: a predicate (module-level, so it pickles) or a set."""

    fn: Callable[[Config], bool] | None = None
    configs: frozenset[Config] = frozenset()

    @staticmethod
    def of(x: Callable[[Config], bool] | Collection[Config] | None) -> Matcher:
        if x is None:
            return Matcher()
        if callable(x):
            return Matcher(fn=x)
        return Matcher(configs=frozenset(x))

    def __call__(self, config: Config) -> bool:
        return config in self.configs or (self.fn is not None and bool(self.fn(config)))


@dataclass(frozen=True)
class FakeRequest:
    time_fn: Callable[[Config], float]
    config: Config
    fail: Matcher
    error: Matcher
    crash: Matcher
    hang: Matcher
    wrong: Matcher
    samples: int
    noise: float
    hang_seconds: float
    isolated: bool
    scale: float = 1.0  # the machine's slowdown while this candidate is measured (FakeRunner's drift)
    reference: float | None = None  # seconds of the paired reference kernel, None: unpaired


def fake_measure(req: FakeRequest) -> Measurement:
    """Fake timings: `time_fn(config)` seconds with deterministic noise, or the scripted failure."""
    c = req.config
    if req.fail(c):
        return Measurement(Status.COMPILE_ERROR, error="fake compile error")
    if req.crash(c):
        if req.isolated:
            os._exit(13)  # what a segfault looks like from the parent
        return Measurement(Status.RUNTIME_ERROR, error="fake crash")
    if req.error(c):
        raise RuntimeError(f"fake runtime error for {c.to_json()}")
    if req.hang(c):
        if req.isolated:
            time.sleep(req.hang_seconds)
        return Measurement(Status.TIMEOUT, error="fake hang")
    t = float(req.time_fn(c))
    rng = random.Random(c.key)
    samples = tuple(req.scale * t * (1.0 + req.noise * rng.uniform(-1.0, 1.0)) for _ in range(req.samples))
    if req.wrong(c):
        return Measurement(Status.WRONG_RESULT, samples, verified=False, max_error=1.0, error="fake wrong result")
    ref = tuple(req.scale * req.reference for _ in samples) if req.reference is not None else ()
    return Measurement(Status.OK, samples, verified=True, max_error=0.0, reference=ref)


class FakeRunner:
    """Fake timings from `time_fn(config) -> seconds`; `fail`, `error` (raises), `crash` (os._exit),
    `hang` (sleeps past the timeout) and `wrong` (fast but wrong) select misbehaving configs.
    With `isolate=True` each candidate runs in a worker subprocess with `timeout` seconds, exactly as
    the real runners do; in-process, crashes and hangs are reported without happening.
    `drift(i)` scales every time of the i-th measurement (a shared machine's slow phases); with
    `reference` seconds, measurements are paired with a reference kernel that drifts alike."""

    def __init__(self, time_fn: Callable[[Config], float], *, fail: Any = None, error: Any = None, crash: Any = None,
                 hang: Any = None, wrong: Any = None, samples: int = 3, noise: float = 0.0, isolate: bool = False,
                 timeout: float = 10.0, hang_seconds: float = 600.0, drift: Callable[[int], float] | None = None,
                 reference: float | None = None):
        self.time_fn = time_fn
        self.matchers = {k: Matcher.of(v) for k, v in
                         (("fail", fail), ("error", error), ("crash", crash), ("hang", hang), ("wrong", wrong))}
        self.samples = samples
        self.noise = noise
        self.isolate = isolate
        self.timeout = timeout
        self.hang_seconds = hang_seconds
        self.drift = drift
        self.reference = reference
        self.calls: list[Config] = []
        self.worker = Worker(name="tilefuse-fake-worker") if isolate else None

    def measure(self, spec: Any, config: Config, device: Any) -> Measurement:
        self.calls.append(config)
        m = self.matchers
        scale = float(self.drift(len(self.calls) - 1)) if self.drift is not None else 1.0
        req = FakeRequest(self.time_fn, config, m["fail"], m["error"], m["crash"], m["hang"], m["wrong"], self.samples,
                          self.noise, self.hang_seconds, self.isolate, scale, self.reference)
        if self.worker is None:
            try:
                return fake_measure(req)
            except Exception as err:  # noqa: BLE001 - as the worker reports it
                return Measurement(Status.RUNTIME_ERROR, error=f"{type(err).__name__}: {err}")
        return outcome_measurement(self.worker.call(fake_measure, req, self.timeout))

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


# ---- real runners ----------------------------------------------------------------------------
class IsolatedRunner:
    """Shared orchestration: one measurement worker, optional build workers, failure mapping."""

    backend = ""
    worker_env: dict[str, str] = {}
    pairs_by_default = False

    def __init__(self, *, timeout: float = 120.0, samples: int = 5, warmup: int = 2, min_sample_seconds: float = 2e-3,
                 seed: int = 0, jobs: int | None = None, build_timeout: float = 600.0,
                 worker_fn: Callable[[Any], Measurement] | None = None, output_hook: Any = None,
                 paired: bool | None = None):
        from ..settings import get_settings

        self.timeout = timeout
        self.samples = samples
        self.warmup = warmup
        self.min_sample_seconds = min_sample_seconds
        self.seed = seed
        self.jobs = jobs if jobs is not None else get_settings().jobs
        self.build_timeout = build_timeout
        self.worker_fn = worker_fn or self.default_worker_fn()
        self.output_hook = output_hook  # module-level fn(config, outputs) run in the worker (tests)
        # time the family default interleaved with every candidate (Measurement.reference)
        self.paired = self.pairs_by_default if paired is None else bool(paired)
        self.worker = Worker(self.worker_env, name=f"tilefuse-{self.backend}-measure")
        self._pool: WorkerPool | None = None
        self._build_errors: dict[tuple[str, Config], str] = {}

    def default_worker_fn(self) -> Callable[[Any], Measurement]:
        raise NotImplementedError

    def build_fn(self) -> Callable[[Any], Any] | None:
        return None

    def restart_after(self, m: Measurement) -> bool:
        """Whether the worker must be replaced after this result (beyond crashes and timeouts)."""
        return False

    def request(self, spec: KernelSpec, config: Config, device: Device) -> dict[str, Any]:
        from .measure import SpecRef

        return {"spec": SpecRef.of(spec, self.backend), "config": config.to_json(), "seed": self.seed,
                "arch": str(getattr(device, "arch", "cpu")),
                "samples": self.samples, "warmup": self.warmup, "min_sample_seconds": self.min_sample_seconds,
                "paired": self.paired,
                "flush_bytes": flush_bytes(device),
                "hook": self.output_hook}

    def measure(self, spec: KernelSpec, config: Config, device: Device) -> Measurement:
        """Compile (unless prebuilt), verify and time `config` in the worker subprocess."""
        err = self._build_errors.get((spec.key, config))
        if err is not None:
            return Measurement(Status.COMPILE_ERROR, error=err)
        m = outcome_measurement(self.worker.call(self.worker_fn, self.request(spec, config, device), self.timeout))
        if m.status is Status.RUNTIME_ERROR and self.restart_after(m):
            self.worker.kill()
        return m

    def prebuild(self, spec: KernelSpec, configs: list[Config], device: Device) -> None:
        """Compile a batch into the build cache with `jobs` parallel build workers."""
        fn = self.build_fn()
        if fn is None or self.jobs < 2 or len(configs) < 2:
            return
        if self._pool is None:
            self._pool = WorkerPool(self.jobs, self.worker_env)
        todo = [c for c in configs if (spec.key, c) not in self._build_errors]
        outs = self._pool.map(fn, [self.request(spec, c, device) for c in todo], self.build_timeout)
        for c, out in zip(todo, outs):
            if out.kind == OK and out.value:
                self._build_errors[(spec.key, c)] = str(out.value)
            elif out.kind != OK:
                # Crashed or hung builds are retried (and isolated) by the measurement worker.
                log.info("prebuild of %s %s: %s", spec.name, c.to_json(), out.error.splitlines()[:1])

    def close(self) -> None:
        """Stop the measurement and build workers."""
        self.worker.close()
        if self._pool is not None:
            self._pool.close()
            self._pool = None


class CpuRunner(IsolatedRunner):
    """TVM/LLVM kernels on the host CPU (see measure.py for the verification and timing protocol).

    Paired by default: each sample of a candidate follows one of the family default's, so records
    rank by a ratio that machine drift does not move (on a shared 2-vCPU VM one config's median
    moves 15-20% between measurements; the paired ratio ~4%). It doubles the timing (not the
    compile) time of a candidate; paired=False turns it off."""

    backend = "tvm"
    pairs_by_default = True

    def default_worker_fn(self) -> Callable[[Any], Measurement]:
        from .runner_workers import cpu_measure

        return cpu_measure

    def build_fn(self) -> Callable[[Any], Any] | None:
        from .runner_workers import cpu_prebuild

        return cpu_prebuild


class GpuRunner(IsolatedRunner):
    """Triton kernels on a CUDA GPU: builds in parallel workers (see prebuild), then in the measurement
    worker a JIT launch that loads the built binary, CUDA-event timing, an L2 flush of twice the
    device's L2 between samples. Any CUDA error (an illegal address poisons the context) replaces
    the worker."""

    backend = "triton"
    worker_env = {"TRITON_INTERPRET": "0"}

    def __init__(self, **kw: Any):
        if kw.get("paired"):
            raise ValueError("GpuRunner does not pair measurements with the reference kernel (CUDA-event timings "
                             "of a dedicated GPU drift far less than a shared CPU's); use paired=False")
        kw.setdefault("min_sample_seconds", 0.0)
        kw.setdefault("samples", 10)
        super().__init__(**kw)

    def default_worker_fn(self) -> Callable[[Any], Measurement]:
        from .runner_workers import gpu_measure

        return gpu_measure

    def build_fn(self) -> Callable[[Any], Any] | None:
        from .runner_workers import gpu_prebuild

        return gpu_prebuild

    def restart_after(self, m: Measurement) -> bool:
        return True

    @staticmethod
    def _check_local(device: Device) -> None:
        """DeviceError for a nominal device (no such GPU here), instead of one runtime_error record
        per candidate."""
        if getattr(device, "nominal", False):
            from .device import DeviceError, gpu_status

            raise DeviceError(f"cannot measure on {getattr(device, 'name', device)}: it is a nominal fingerprint, "
                              f"not a GPU of this machine ({gpu_status()})")

    def measure(self, spec: KernelSpec, config: Config, device: Device) -> Measurement:
        """As IsolatedRunner.measure, on a GPU of this machine only."""
        self._check_local(device)
        return super().measure(spec, config, device)

    def prebuild(self, spec: KernelSpec, configs: list[Config], device: Device) -> None:
        """Compile a batch for the device's arch in parallel build workers (runner_workers.gpu_prebuild:
        no GPU in them) into Triton's on-disk cache, so the measurement worker's first launch of a
        candidate loads its binary instead of compiling it while the GPU waits."""
        self._check_local(device)
        super().prebuild(spec, configs, device)

    def request(self, spec: KernelSpec, config: Config, device: Device) -> dict[str, Any]:
        req = super().request(spec, config, device)
        req["flush_bytes"] = 2 * int(getattr(device, "l2_bytes", 0) or 0)  # all of the L2, no cap
        return req
