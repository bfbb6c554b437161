"""The worker side of measurement: rebuilding a spec in a child process, fresh random inputs for a
kernel's buffers, the kernel's float64 reference, verification and the common timing protocol.

Verification protocol: per (workload, seed) the worker draws random inputs for the kernel's input
buffers, evaluates the kernel's fused group with the numpy reference (float64; `kernel_reference`),
builds the family's DEFAULT config and checks it against that reference with the dtype's
tolerance. Every candidate is then compared with the verified default kernel's outputs on the
same inputs (bound: twice the reference tolerance, since both carry rounding error); should the
default itself fail, candidates are compared with the reference directly. Outputs are poisoned
(NaN / 0x5A..) before every run, so an element a candidate fails to write cannot pass.

Timing protocol (`time_paired`): warm-up, then samples after a cache flush each; a paired runner
(the CPU runner by default) times the verified default kernel right before every sample of the
candidate, and records rank by the per-pair ratio (records.Measurement.relative)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import TilefuseError
from ..ir import dtypes as dt
if TYPE_CHECKING:
    from ..kernels.base import KernelSpec


class SpecError(TilefuseError, RuntimeError):
    """A kernel spec that cannot be rebuilt in a worker process."""


@dataclass(frozen=True)
class SpecRef:
    """A picklable handle on a KernelSpec: its canonical graph text, kernel name and backend, and for a
    dynamic kernel its size bucket and the sizes it is bound to (the text holds only the ranges).
    (Specs hold hash-consed IR nodes, which do not pickle; the pipeline is deterministic.)"""

    graph_text: str
    kernel: str
    backend: str
    key: str
    bucket: tuple[tuple[str, int, int], ...] | None = None
    sizes: tuple[tuple[str, int], ...] = ()

    @staticmethod
    def of(spec: KernelSpec, backend: str) -> SpecRef:
        return SpecRef(spec.kg.graph.text, spec.name, backend, spec.key, spec.bucket,
                       tuple(spec.bound_sizes().items()))


@functools.lru_cache(maxsize=32)
def resolve(ref: SpecRef) -> KernelSpec:
    """Rebuild the spec `ref` names (runs the pass pipeline on its graph text)."""
    from ..ir.text import parse_graph
    from ..kernels import fusion_rules, spec_for
    from ..passes import run_pipeline

    g = parse_graph(ref.graph_text)
    kg = run_pipeline(g.at(dict(ref.sizes)) if ref.sizes else g, fusion_rules()).kernels
    for k in kg.kernels:
        if k.name == ref.kernel:
            spec = spec_for(kg, k, ref.backend)
            spec.bucket = ref.bucket
            if spec.key != ref.key:
                raise SpecError(f"kernel {ref.kernel}: rebuilt workload key {spec.key[:12]} differs from "
                                f"{ref.key[:12]}; the pass pipeline is not deterministic for this graph")
            return spec
    raise SpecError(f"kernel {ref.kernel} not found when rebuilding its graph "
                    f"(kernels: {', '.join(k.name for k in kg.kernels)})")


def kernel_inputs(spec: KernelSpec, seed: int) -> list[np.ndarray]:
    """Fresh random inputs for the kernel's input buffers (never zeros): floats ~ N(0, 1), a matmul's
    B operand scaled by 1/sqrt(K) as weights are initialised (cli.random_inputs), small ints, bools."""
    from ..ir.sampling import random_array, sparse_structures, weight_scales

    scales = weight_scales(spec.kernel.group.nodes)
    by_buffer = {spec.kg.buffers[i].name: s for i, s in scales.items() if i in spec.kg.buffers}
    # valid sparse structures (indptr, indices, 2:4 meta) for the sparse tensors the kernel builds
    structures = {spec.kg.buffers[i].name: a for i, a in
                  sparse_structures(spec.kernel.group.nodes, np.random.default_rng([seed, 1])).items()
                  if i in spec.kg.buffers}
    rng = np.random.default_rng(seed)
    out = []
    for b in spec.inputs:
        x = structures.get(b.name)
        if x is None:
            x = random_array(rng, b.shape, b.dtype, by_buffer.get(b.name, 1.0))
        out.append(np.ascontiguousarray(np.asarray(x).astype(dt.storage_numpy(b.dtype))))
    return out


def kernel_reference(spec: KernelSpec, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The kernel's outputs by the numpy reference: its group's nodes (and the views and constants
    they read) evaluated in float64 with the input buffers bound to `inputs`."""
    from ..ir.ops import Op
    from ..ir.reference import EVALUATORS, host

    kg = spec.kg
    env: dict[int, Any] = {}
    for node_id, buf in kg.buffers.items():
        if buf in spec.inputs:
            env[node_id] = host(inputs[spec.inputs.index(buf)], buf.dtype)
    members = {id(n) for n in spec.kernel.group.nodes}
    for n in kg.graph.nodes:
        if id(n) in env or not (id(n) in members or id(n) in kg.inline or n.op is Op.CONST):
            continue
        if all(id(s) in env for s in n.src):
            env[id(n)] = EVALUATORS[n.op](n, [env[id(s)] for s in n.src])
    missing = [o for o in spec.kernel.group.outputs if id(o) not in env]
    if missing:
        raise SpecError(f"{spec.name}: the reference cannot evaluate output {missing[0]!r} from the kernel's inputs")
    return [np.broadcast_to(np.asarray(env[id(o)], dtype=np.float64), b.shape)
            for o, b in zip(spec.kernel.group.outputs, spec.outputs)]


def error_bound(ref: np.ndarray, d: dt.DType) -> float:
    """The dtype tolerance applied to a reference array (as the kernel tests apply it)."""
    rtol, atol = dt.tolerance(d)
    scale = float(np.max(np.abs(ref))) if ref.size else 1.0
    return atol * max(1.0, scale) + rtol * scale


def max_error(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    """Largest |got - want| over all outputs; inf for NaN (unwritten, poisoned) elements."""
    worst = 0.0
    for g, w in zip(got, want):
        if g.size == 0:
            continue
        diff = np.abs(np.asarray(g, dtype=np.float64).reshape(w.shape) - w)
        e = float(np.max(diff))
        worst = max(worst, e if math.isfinite(e) else math.inf)
    return worst


@dataclass
class Expected:
    """What candidates are checked against: outputs, per-output bounds, and where they came from."""

    reference: list[np.ndarray]
    outputs: list[np.ndarray]
    bounds: list[float]
    source: str  # "default" | "reference"
    default_error: float

    def check(self, got: Sequence[np.ndarray]) -> tuple[bool, float]:
        """(ok, max error vs the reference)."""
        ok = all(max_error([g], [w]) <= b for g, w, b in zip(got, self.outputs, self.bounds))
        return ok, max_error(got, self.reference)


def expected_outputs(spec: KernelSpec, inputs: list[np.ndarray],
                     run_default: Callable[[], list[np.ndarray]]) -> Expected:
    """Verify the default kernel against the reference once; candidates are compared with it."""
    ref = kernel_reference(spec, inputs)
    bounds = [error_bound(r, b.dtype) for r, b in zip(ref, spec.outputs)]
    try:
        got = [np.asarray(g, dtype=np.float64).reshape(r.shape) for g, r in zip(run_default(), ref)]
    except Exception:  # noqa: BLE001 - a broken default: fall back to the reference
        got = None
    if got is not None and all(max_error([g], [r]) <= b for g, r, b in zip(got, ref, bounds)):
        return Expected(ref, got, [2.0 * b for b in bounds], "default", max_error(got, ref))
    return Expected(ref, ref, bounds, "reference", math.inf if got is None else max_error(got, ref))


def time_runs(run: Callable[[], None], before_sample: Callable[[], None], *, samples: int, warmup: int,
              min_sample_seconds: float, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """The common protocol: `warmup` runs, then `samples` samples, each preceded by `before_sample`
    (poison outputs, flush caches; not timed) and each the mean of enough back-to-back runs to last
    `min_sample_seconds` (1 run for kernels longer than that)."""
    return time_paired(run, None, before_sample, samples=samples, warmup=warmup,
                       min_sample_seconds=min_sample_seconds, clock=clock)[0]


def time_paired(run: Callable[[], None], reference: Callable[[], None] | None, before_sample: Callable[[], None], *,
                samples: int, warmup: int, min_sample_seconds: float,
                clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], list[float]]:
    """`time_runs` with the reference kernel timed interleaved ("duet" timing): sample i of the
    reference is taken just before sample i of `run`, both after `before_sample`, so a slow phase of
    a shared machine (other tenants, frequency changes: they last longer than a sample pair) slows
    both alike and the per-pair ratio cancels it. Returns (samples, reference samples); the second
    is empty without a reference."""
    def calibrate(fn: Callable[[], None]) -> int:
        t_one = math.inf
        for _ in range(max(1, warmup)):
            t0 = clock()
            fn()
            t_one = min(t_one, clock() - t0)
        return max(1, min(1000, math.ceil(min_sample_seconds / max(t_one, 1e-9))))

    def sample(fn: Callable[[], None], number: int) -> float:
        before_sample()
        t0 = clock()
        for _ in range(number):
            fn()
        return (clock() - t0) / number

    n_run = calibrate(run)
    n_ref = calibrate(reference) if reference is not None else 0
    out: list[float] = []
    ref: list[float] = []
    for _ in range(samples):
        if reference is not None:
            ref.append(sample(reference, n_ref))
        out.append(sample(run, n_run))
    return out, ref


class CacheFlusher:
    """Evicts the device's caches between samples by writing a buffer twice their size."""

    def __init__(self, nbytes: int):
        self.buf = np.zeros(max(1, nbytes // 8), dtype=np.float64)

    def __call__(self) -> None:
        self.buf += 1.0
