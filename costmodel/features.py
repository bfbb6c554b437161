"""Cost-model features of (kernel, config, device): flat dicts of floats with stable names.

Every value is a finite float. Names are grouped by prefix: ``knob_*`` (the numeric Config
values), ``spec_*`` (``KernelSpec.features``: programs, flops, bytes and the family's own
``family_features``), ``dev_*`` (the device), ``res_*`` (the static resource report of the compiled
binary; -1 when absent) and unprefixed derived numbers (intensity, per-program work, occupancy,
waves, the memory level of the working set, roofline times). A spec is read only through its
cost-estimate hooks (kernels/base.py), so a new family brings its numbers by implementing them.
Bump FEATURE_SCHEMA whenever a name changes meaning: saved models refuse another schema, and
every feature dict carries its schema as ``feature_schema`` so that records stored by an older
tilefuse (no marker: schema 1) are left out of training and scoring instead of mixing meanings.

Schema 3 (from 2): registers and shared memory come from each family's own estimates, the ones
its constraints use (attention's fitted register models; decode's register and shared-memory
estimates, before a flat 32 registers and none), attention and decode are held to the tensor-core
peak of their 16-bit matmuls (before the f32 peak), and memory times charge the bandwidth of the
level the working set fits in (roofline.py; CPU kernels in cache were charged DRAM bandwidth).
Matmul and pointwise features on GPU are unchanged; new: mem_level, mem_level_bandwidth.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from ..schedule.config import Config
from ..schedule.target import Target, TargetError, get_target
from .roofline import is_gpu, roofline_bound

FEATURE_SCHEMA = 3
SCHEMA_FEATURE = "feature_schema"

# Fields of codegen.resources.ResourceReport that become res_* features, in a fixed order.
RESOURCE_FIELDS = ("registers", "shared_bytes", "static_shared_bytes", "dynamic_shared_bytes", "stack_bytes",
                   "local_bytes", "spill_stores", "spill_loads", "spills", "hgmma", "hmma", "imma", "qgmma",
                   "ldgsts", "utmaldg", "ldl", "stl", "ffma", "total_instructions")


class DeviceLike(Protocol):
    """The part of autotune.device.Device the features read (all attributes may be missing)."""

    kind: str
    name: str


# Per-SM limits by compute capability: (shared bytes, registers, warps, resident blocks).
_SM_LIMITS: dict[int, tuple[int, int, int, int]] = {
    70: (98304, 65536, 64, 32),
    75: (65536, 65536, 32, 16),
    80: (167936, 65536, 64, 32),
    86: (102400, 65536, 48, 16),
    87: (167936, 65536, 48, 16),
    89: (102400, 65536, 48, 24),
    90: (233472, 65536, 64, 32),
}
_DEFAULT_ARCH = 80
_MAX_REGS = 255


def _num(x: Any, default: float = 0.0) -> float:
    """A finite float from an attribute that may be None, missing, a string or infinite."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def _arch(device: Any) -> int:
    """Compute capability as an int (90) from 90, "90", "sm_90" or "9.0"; 0 for CPUs."""
    a = getattr(device, "arch", 0)
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return int(a)
    digits = re.sub(r"[^0-9]", "", str(a or ""))
    return int(digits) if digits else 0


def device_features(device: Any) -> dict[str, float]:
    """dev_* features: units (SMs or cores), bandwidth, peak FLOP/s, L2, arch."""
    gpu = is_gpu(device)
    peak = _num(getattr(device, "peak_flops", 0.0))
    return {
        "dev_is_gpu": 1.0 if gpu else 0.0,
        "dev_arch": float(_arch(device)),
        "dev_units": max(1.0, _num(getattr(device, "num_units", 1.0), 1.0)),
        "dev_mem_bandwidth": _num(getattr(device, "mem_bandwidth", 0.0)),
        "dev_peak_flops": peak,
        "dev_peak_f32_flops": _num(getattr(device, "peak_f32_flops", peak), peak),
        "dev_l2_bytes": _num(getattr(device, "l2_bytes", 0.0)),
    }


def _sm_limits(device: Any) -> tuple[int, int, int, int]:
    arch = _arch(device)
    known = _SM_LIMITS.get(arch) or _SM_LIMITS[max([a for a in _SM_LIMITS if a <= arch] or [_DEFAULT_ARCH])]
    smem = int(_num(getattr(device, "max_shared_per_unit", 0.0))) or known[0]
    return smem, known[1], known[2], known[3]


def resource_features(resources: Mapping[str, Any] | Any | None) -> dict[str, float]:
    """res_* features from a ResourceReport (or its to_dict()); every field -1 when absent."""
    if resources is not None and hasattr(resources, "to_dict"):
        resources = resources.to_dict()
    r: Mapping[str, Any] = resources or {}
    out = {f"res_{k}": -1.0 for k in RESOURCE_FIELDS}
    if not r:
        return out
    for k in RESOURCE_FIELDS:
        if k in r and not isinstance(r[k], (dict, list)):
            out[f"res_{k}"] = _num(r[k], -1.0)
    if "shared_bytes" not in r:
        if "static_shared_bytes" in r or "dynamic_shared_bytes" in r:
            out["res_shared_bytes"] = _num(r.get("static_shared_bytes", 0)) + _num(r.get("dynamic_shared_bytes", 0))
        elif "shared" in r:
            out["res_shared_bytes"] = _num(r["shared"], -1.0)
    if "spills" not in r and any(k in r for k in ("stack_bytes", "local_bytes", "spill_stores", "spill_loads")):
        spilled = any(_num(r.get(k, 0)) > 0 for k in ("stack_bytes", "local_bytes", "spill_stores", "spill_loads"))
        out["res_spills"] = 1.0 if spilled else 0.0
    return out


def _target(device: Any) -> Target:
    """The compilation target of a GPU device (its arch; sm_80 when it names none)."""
    arch = _arch(device) or _DEFAULT_ARCH
    try:
        return get_target(f"sm_{arch}")
    except TargetError:
        return Target(f"sm_{arch}", "cuda", arch)


def _work(spec: Any, cfg: Config, dev: Mapping[str, float]) -> dict[str, float]:
    """FLOPs, bytes (minimal and with no reuse between tiles), programs and tiles of one launch."""
    flops = _num(spec.flops())
    bytes_min = max(1.0, _num(spec.bytes_moved()))
    gx, gy, gz = spec.grid(cfg)
    programs = float(max(1, int(gx) * int(gy) * int(gz)))
    tiles, tile_bytes = (_num(v) for v in spec.tile_traffic(cfg))
    bytes_tiled = max(bytes_min, tiles * tile_bytes)
    return {
        "flops": flops, "bytes": bytes_min, "arith_intensity": flops / bytes_min,
        "programs": programs, "tiles": tiles,
        "flops_per_program": flops / programs, "bytes_per_program": bytes_tiled / programs,
        "bytes_per_tile": tile_bytes, "bytes_tiled": bytes_tiled, "tiled_intensity": flops / bytes_tiled,
        "l2_footprint": bytes_min / dev["dev_l2_bytes"] if dev["dev_l2_bytes"] > 0 else -1.0,
    }


def _occupancy(spec: Any, cfg: Config, device: Any, dev: Mapping[str, float], res: Mapping[str, float],
               programs: float) -> dict[str, float]:
    """Resident programs per unit (GPU: shared memory, registers, warps), waves and load balance."""
    threads = spec.threads_per_program(cfg)
    if dev["dev_is_gpu"] and threads is not None:
        warps = max(1, int(threads) // 32)
        smem_sm, regs_sm, warps_sm, blocks_sm = _sm_limits(device)
        if res["res_registers"] > 0:
            regs = res["res_registers"]
        else:
            regs = min(float(_MAX_REGS), _num(spec.registers_per_thread(cfg, _target(device))))
        smem = res["res_shared_bytes"] if res["res_shared_bytes"] >= 0 else _num(spec.shared_bytes(cfg))
        limits = [blocks_sm, warps_sm // warps, regs_sm // max(1.0, regs * threads)]
        if smem > 0:
            limits.append(smem_sm // smem)
        blocks = float(max(0, int(min(limits))))
        occupancy = blocks * warps / warps_sm
        threads_f = float(threads)
    else:
        threads_f, regs, smem, blocks, occupancy = -1.0, -1.0, -1.0, 1.0, 1.0
    # Work items spread over the units: GPU programs over SMs; on a CPU the template's parallel
    # tasks over cores, where the launch grid is a single call.
    units = dev["dev_units"]
    tasks = programs if dev["dev_is_gpu"] else max(1.0, _num(spec.parallel_tasks(cfg)))
    waves = tasks / (units * max(1.0, blocks))
    # Load balance over units: the busiest unit runs ceil(tasks / units) of them, so a launch of
    # 133 programs on 132 SMs takes as long as 264 (resident blocks share one SM), and 7 tiles on
    # 2 cores as long as 8.
    balance = tasks / (units * math.ceil(tasks / units))
    return {
        "threads_per_program": threads_f, "regs_per_thread": regs, "shared_per_program": smem,
        "occupancy_blocks": blocks, "occupancy": occupancy, "fits": 1.0 if blocks >= 1 else 0.0,
        "waves": waves, "wave_efficiency": waves / math.ceil(waves), "unit_balance": balance,
    }


def featurize(spec: Any, config: Mapping[str, Any], device: Any,
              resources: Mapping[str, Any] | Any | None = None) -> dict[str, float]:
    """Features of running `spec` with `config` on `device` (resources: the binary's static report).
    Reads only KernelSpec's cost-estimate hooks, never a family's attributes."""
    cfg = config if isinstance(config, Config) else Config(config)
    out: dict[str, float] = {f"knob_{k}": float(v) for k, v in cfg.items() if isinstance(v, (int, float))}
    out.update({f"spec_{k}": _num(v) for k, v in spec.features(cfg).items()})
    dev = device_features(device)
    out.update(dev)
    res = resource_features(resources)
    out.update(res)
    out.update(_work(spec, cfg, dev))
    out.update(_occupancy(spec, cfg, device, dev, res, out["programs"]))
    bound = roofline_bound(spec, device)
    bw = bound.level.bandwidth
    # padding to whole tiles is work too (work_ratio: padded over useful FLOPs)
    t_padded = bound.compute_seconds * max(1.0, _num(spec.work_ratio(cfg)))
    t_tiled = out["bytes_tiled"] / bw if bw > 0 else 0.0
    # roofline_time_min is the config-independent bound (bytes at the bandwidth of the memory level
    # they fit in); roofline_time charges the tiles' traffic (no reuse between tiles), idle units and
    # configs that do not fit, so it ranks configs of one workload (the bound alone would tie them all).
    out.update({
        "mem_level": float(bound.level.rank), "mem_level_bandwidth": bw,
        "roofline_compute_time": bound.compute_seconds, "roofline_memory_time": bound.memory_seconds,
        "roofline_time_min": bound.seconds,
        "roofline_time": max(t_padded, t_tiled) / out["unit_balance"] * (1.0 if out["fits"] else 2.0),
    })
    out[SCHEMA_FEATURE] = float(FEATURE_SCHEMA)
    return {k: _num(v) for k, v in out.items()}


def is_current(features: Mapping[str, Any]) -> bool:
    """Whether a feature dict was computed under this FEATURE_SCHEMA (no marker: schema 1)."""
    return _num(features.get(SCHEMA_FEATURE), 1.0) == FEATURE_SCHEMA


def record_features(record: Any) -> dict[str, float]:
    """A Record's stored features with res_* filled from its measurement's resource report; {} when
    it has none or they were computed under another FEATURE_SCHEMA (their names may mean other things)."""
    feats = dict(getattr(record, "features", {}) or {})
    if not feats or not is_current(feats):
        return {}
    resources = getattr(getattr(record, "measurement", None), "resources", None)
    if resources:
        feats.update({k: v for k, v in resource_features(resources).items() if v >= 0 or k not in feats})
    return {k: _num(v) for k, v in feats.items()}


def feature_names(records_or_dicts: Iterable[Any]) -> list[str]:
    """Sorted union of the feature names of Records (their record_features) or feature dicts."""
    names: set[str] = set()
    for item in records_or_dicts:
        names.update(item if isinstance(item, Mapping) else record_features(item))
    return sorted(names)


def to_matrix(dicts: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    """Rows of feature values in `names` order (float32); a missing feature is NaN."""
    index = {n: i for i, n in enumerate(names)}
    x = np.full((len(dicts), len(names)), np.nan, dtype=np.float32)
    for r, d in enumerate(dicts):
        for k, v in d.items():
            i = index.get(k)
            if i is not None:
                x[r, i] = v
    return x
