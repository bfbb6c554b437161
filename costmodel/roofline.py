"""The roofline bound of a kernel on a device: max(FLOPs / peak FLOP/s, bytes / bandwidth), with the
bandwidth of the memory level the kernel's working set fits in, not always main memory.

Why the level matters: the CPU runner flushes L1 and L2 before a sample and then times the kernel
back to back (as many runs as fill `min_sample_seconds`), so a kernel whose inputs and outputs fit in
L1 runs from L1. Charging its bytes at DRAM bandwidth gave bounds slower than the measured time
(160% "of roofline" for the decoder MLP's RMSNorm kernel on a 2-core EPYC). The GPU runner instead
flushes the L2 before every sample and times one launch, so every byte starts in HBM there: GPU
samples are cold (`warm_caches`), and the L2 level only applies to a caller that asks for warm caches.

Level bandwidths are estimates of each level's peak, scaled by the device's units and clock:

- CPU L1d: two vector loads per cycle per core (Intel Skylake-SP and later, AMD Zen 2 and later:
  2 x 32 B with AVX2, 2 x 64 B with AVX-512; 2 x 16 B otherwise);
- CPU L2: 64 B per cycle per core (the L2-to-L1 fill path of Intel Skylake-SP and later; AMD Zen
  sustains about half, so this stays an upper bound);
- CPU L3: 32 B per cycle per core (the L3-to-L2 path of Zen and recent Xeons);
- CPU DRAM: ``Device.mem_bandwidth`` (a sustained STREAM-triad estimate per core);
- GPU L2: 5120 B per clock over 108 SMs (NVIDIA's A100 whitepaper), i.e. 47.4 B per SM per clock,
  scaled by the SM count and max SM clock of the device;
- GPU HBM: ``Device.mem_bandwidth`` (bus width x memory clock x 2).

Capacities: a CPU kernel's work is split over the cores, so L1 and L2 hold cores x their per-core
size; the L3 holds the size cpu0 shares. Sustained bandwidths are lower than these peaks, so fractions
well under 100% are normal; a fraction above 100% means an estimate here is too low for that kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

CPU_L1_LOADS_PER_CYCLE = 2
CPU_L2_BYTES_PER_CYCLE = 64
CPU_L3_BYTES_PER_CYCLE = 32
GPU_L2_BYTES_PER_SM_CLOCK = 5120 / 108


@dataclass(frozen=True)
class MemoryLevel:
    """One level of the memory hierarchy as the roofline sees it."""

    name: str  # "L1", "L2", "L3", "DRAM" (CPU) or "L2", "HBM" (GPU)
    rank: int  # 1 (L1) .. 4 (main memory): a feature that means the same on every device
    capacity: float  # bytes a kernel's working set may have to fit (math.inf for main memory)
    bandwidth: float  # bytes/s over all units


@dataclass(frozen=True)
class RooflineBound:
    """The fastest a kernel can run on a device, and where the bound comes from."""

    seconds: float  # max(compute_seconds, memory_seconds)
    compute_seconds: float  # FLOPs / peak
    memory_seconds: float  # minimal bytes / the level's bandwidth
    peak_flops: float
    level: MemoryLevel

    @property
    def limit(self) -> str:
        """What bounds the kernel: "compute" or the memory level's name."""
        return "compute" if self.compute_seconds >= self.memory_seconds else self.level.name


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return 0.0
    return v if math.isfinite(v) else 0.0


def is_gpu(device: Any) -> bool:
    """Whether `device` is a GPU (anything whose kind is not "cpu")."""
    return str(getattr(device, "kind", "cpu")).lower() != "cpu"


def warm_caches(device: Any) -> bool:
    """Whether the tuner's samples find the working set in the caches: CPU samples repeat the kernel
    back to back (warm); GPU samples are one launch after an L2 flush (cold)."""
    return not is_gpu(device)


def memory_levels(device: Any) -> list[MemoryLevel]:
    """The device's caches and main memory, fastest first (levels whose size or clock the device does
    not report are left out; main memory is always there)."""
    fp = getattr(device, "fingerprint", None) or {}
    units = max(1.0, _num(getattr(device, "num_units", 1)))
    main = _num(getattr(device, "mem_bandwidth", 0.0))
    if is_gpu(device):
        hz = _num(fp.get("max_sm_clock_mhz")) * 1e6
        l2 = _num(getattr(device, "l2_bytes", 0))
        levels = [MemoryLevel("L2", 2, l2, units * hz * GPU_L2_BYTES_PER_SM_CLOCK)]
        return [lv for lv in levels if lv.capacity > 0 and lv.bandwidth > 0] + [MemoryLevel("HBM", 4, math.inf, main)]
    hz = _num(fp.get("max_mhz")) * 1e6
    vector = _num(getattr(device, "vector_bytes", 0))
    levels = [MemoryLevel("L1", 1, units * _num(fp.get("l1d_bytes")), units * hz * CPU_L1_LOADS_PER_CYCLE * vector),
              MemoryLevel("L2", 2, units * _num(fp.get("l2_bytes")), units * hz * CPU_L2_BYTES_PER_CYCLE),
              MemoryLevel("L3", 3, _num(fp.get("l3_bytes")), units * hz * CPU_L3_BYTES_PER_CYCLE)]
    # a cache estimated slower than main memory (clock or vector width unknown) is no estimate: left out
    return [lv for lv in levels if lv.capacity > 0 and lv.bandwidth > main] + [MemoryLevel("DRAM", 4, math.inf, main)]


def memory_level(device: Any, working_set: float, warm: bool | None = None) -> MemoryLevel:
    """The fastest level `working_set` bytes fit in; main memory when the caches start cold
    (`warm` defaults to warm_caches(device))."""
    levels = memory_levels(device)
    if not (warm_caches(device) if warm is None else warm):
        return levels[-1]
    return next(lv for lv in levels if working_set <= lv.capacity)


def peak_flops(mma_dtype: Any, device: Any) -> float:
    """The peak that bounds a kernel: tensor-core (device.peak_flops) when its matrix multiplies take
    16-bit or narrower operands, the f32 peak otherwise (spec.mma_dtype() gives the dtype)."""
    peak = _num(getattr(device, "peak_flops", 0.0))
    f32 = _num(getattr(device, "peak_f32_flops", peak)) or peak
    narrow = mma_dtype is not None and _num(getattr(mma_dtype, "itemsize", 4)) <= 2
    return peak if narrow and peak > 0 else f32


def roofline_bound(spec: Any, device: Any, warm: bool | None = None) -> RooflineBound:
    """The config-independent bound of `spec` on `device` from its flops(), bytes_moved() and
    mma_dtype() hooks; the bytes are charged at the bandwidth of the level they fit in."""
    flops = _num(spec.flops())
    nbytes = max(1.0, _num(spec.bytes_moved()))
    peak = peak_flops(spec.mma_dtype(), device)
    level = memory_level(device, nbytes, warm)
    t_compute = flops / peak if peak > 0 else 0.0
    t_memory = nbytes / level.bandwidth if level.bandwidth > 0 else 0.0
    return RooflineBound(max(t_compute, t_memory), t_compute, t_memory, peak, level)

