"""Devices and their exact fingerprints: every GPU (through nvidia-ml-py, plus torch where present)
and the host CPU.

A device's identity is its *fingerprint*: a JSON dict of every number that makes two devices
perform differently (for a GPU: name, compute capability, memory size, SM count, max SM and
memory clocks, memory bus width, L2 size; for a CPU: model, cpuid family/model/stepping, sockets,
cores, threads, max clock, ISA extensions, cache sizes). ``Device.key`` is the sha256 of its
canonical JSON, so H100 and H200 (both sm_90) differ and two identical GPUs are equal.

Versions of the driver, CUDA and the OS are *not* part of the key: they describe the software
around the device, not the device, and a driver update must not orphan a tuning database. They
are kept in ``Device.software`` (and the toolchain of each tuning record).

``NOMINAL`` holds table entries for devices that are not present (ahead-of-time compilation for
sm_80/sm_90 on a machine without that GPU); their numbers are the ones NVML reports on the real
parts, so they are usable as roofline inputs, but they are marked ``nominal=True``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from ..errors import TilefuseError
from ..schedule.config import canonical_json, sha256_json
from ..schedule.target import Target, get_target
from .cpu_info import describe_cpu

__all__ = ["FINGERPRINT_SCHEMA", "NOMINAL", "Device", "DeviceError", "cpu_device", "detect_devices",
           "device_for_target", "gpu_status"]

logger = logging.getLogger(__name__)

FINGERPRINT_SCHEMA = 1

# Dense tensor-core f16/bf16 FLOP per clock per SM (f32 accumulate) and f32 FMA-pipe FLOP per
# clock per SM (2 x FP32 lanes), by compute capability. From NVIDIA's architecture whitepapers:
# A100 312 TFLOP/s = 108 SMs x 1.41 GHz x 2048; H100 SXM 989 TFLOP/s = 132 x 1.83 GHz x 4096.
_TENSOR_FLOP_PER_CLK_SM = {70: 1024, 75: 1024, 80: 2048, 86: 1024, 87: 1024, 89: 1024, 90: 4096, 100: 8192}
_F32_FLOP_PER_CLK_SM = {70: 128, 75: 128, 80: 128, 86: 256, 87: 256, 89: 256, 90: 256, 100: 256}

# SM count and L2 bytes by exact NVML name. NVML reports neither; these are fixed per product,
# so a table keeps the fingerprint identical in every process without initialising CUDA.
_GPU_TABLE: dict[str, tuple[int, int]] = {
    "NVIDIA H100 80GB HBM3": (132, 50 * 2**20),
    "NVIDIA H100 PCIe": (114, 50 * 2**20),
    "NVIDIA H100 NVL": (132, 50 * 2**20),
    "NVIDIA H200": (132, 60 * 2**20),
    "NVIDIA A100-SXM4-80GB": (108, 40 * 2**20),
    "NVIDIA A100-SXM4-40GB": (108, 40 * 2**20),
    "NVIDIA A100-PCIE-40GB": (108, 40 * 2**20),
    "NVIDIA A100 80GB PCIe": (108, 40 * 2**20),
    "NVIDIA A10": (72, 6 * 2**20),
    "NVIDIA L4": (58, 48 * 2**20),
    "NVIDIA L40S": (142, 96 * 2**20),
    "NVIDIA GeForce RTX 4090": (128, 72 * 2**20),
    "NVIDIA GeForce RTX 3090": (82, 6 * 2**20),
}
# CUDA cores per SM, to turn NVML's core count into SMs when neither the table nor torch knows the GPU.
_CORES_PER_SM = {70: 64, 75: 64, 80: 64, 86: 128, 87: 128, 89: 128, 90: 128, 100: 128, 120: 128}

# Queried in a child process so that this process never initialises CUDA: a CUDA context made
# before fork() breaks every forked worker ("Cannot re-initialize CUDA in forked subprocess").
_TORCH_PROBE = """
import json, torch
out = []
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append([str(getattr(p, "uuid", "")), p.name, p.multi_processor_count, getattr(p, "L2_cache_size", 0)])
print(json.dumps(out))
"""

# x86 and Arm ISA extensions that change what a CPU kernel can use; the fingerprint keeps these.

# A rough sustained STREAM-triad bandwidth per core of a current server CPU. Only used for
# roofline fractions on CPU; good to about a factor of two.
_CPU_BYTES_PER_S_PER_CORE = 10e9


class DeviceError(TilefuseError, ValueError):
    """A target with no local device and no nominal table entry, or a malformed device record."""


@dataclass(frozen=True)
class Device:
    """One device with its fingerprint; all numbers below are derived from the fingerprint."""

    kind: str  # "cuda" | "cpu"
    name: str
    arch: str  # a Target name: "sm_90", "cpu"
    fingerprint: dict[str, Any]
    nominal: bool = False  # a table entry standing in for a device that is not present
    software: dict[str, Any] = field(default_factory=dict, compare=False)  # driver/CUDA/OS: not in key

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def key(self) -> str:
        """sha256 of the canonical JSON of the fingerprint: the device's identity."""
        return sha256_json(self.fingerprint)

    @property
    def target(self) -> Target:
        """The compilation target of this device (raises TargetError for unsupported archs)."""
        return get_target(self.arch)

    @property
    def num_units(self) -> int:
        """SMs (cuda) or physical cores (cpu)."""
        return int(self.fingerprint["sms"] if self.kind == "cuda" else self.fingerprint["cores"])

    @property
    def l2_bytes(self) -> int:
        """Whole-chip L2 (cuda) or one core's private L2 (cpu)."""
        return int(self.fingerprint["l2_bytes"])

    @property
    def peak_flops(self) -> float:
        """Dense f16/bf16 tensor-core FLOP/s at max SM clock (cuda); f32 FMA FLOP/s (cpu). Estimates."""
        if self.kind == "cuda":
            per = _TENSOR_FLOP_PER_CLK_SM.get(_cc_int(self.fingerprint), 1024)
            return float(self.num_units * self.fingerprint["max_sm_clock_mhz"] * 1e6 * per)
        return self.peak_f32_flops

    @property
    def peak_f32_flops(self) -> float:
        """f32 FLOP/s: FP32 lanes x 2 x max SM clock (cuda); cores x clock x SIMD lanes x 2 x FMA units (cpu)."""
        fp = self.fingerprint
        if self.kind == "cuda":
            per = _F32_FLOP_PER_CLK_SM.get(_cc_int(fp), 128)
            return float(self.num_units * fp["max_sm_clock_mhz"] * 1e6 * per)
        lanes, fma_units = _cpu_simd(fp.get("isa", []))
        return float(self.num_units * fp["max_mhz"] * 1e6 * lanes * 2 * fma_units)

    @property
    def vector_bytes(self) -> int:
        """Bytes of one SIMD register (cpu: 64 with AVX-512, 32 with AVX/AVX2, 16 otherwise); 0 (cuda)."""
        return 0 if self.kind == "cuda" else 4 * _cpu_simd(self.fingerprint.get("isa", []))[0]

    @property
    def mem_bandwidth(self) -> float:
        """DRAM bytes/s: bus width / 8 x max memory clock x 2 (cuda, double data rate); an estimate (cpu)."""
        fp = self.fingerprint
        if self.kind == "cuda":
            return float(fp["bus_width_bits"] / 8 * fp["max_mem_clock_mhz"] * 1e6 * 2)
        return float(self.num_units * _CPU_BYTES_PER_S_PER_CORE)

    def to_json(self) -> str:
        """Canonical JSON of the whole device (fingerprint, nominal flag, software versions)."""
        return canonical_json({"kind": self.kind, "name": self.name, "arch": self.arch,
                               "fingerprint": self.fingerprint, "nominal": self.nominal, "software": self.software})

    @staticmethod
    def from_json(s: str) -> Device:
        """Parse `to_json` output; raises DeviceError naming what is missing."""
        try:
            d = json.loads(s)
            return Device(str(d["kind"]), str(d["name"]), str(d["arch"]), dict(d["fingerprint"]),
                          bool(d.get("nominal", False)), dict(d.get("software") or {}))
        except (ValueError, KeyError, TypeError) as err:
            raise DeviceError(f"not a device JSON document: {err}") from None

    @staticmethod
    def from_fingerprint(fp: dict[str, Any]) -> Device:
        """Rebuild a Device from a stored fingerprint (tuning records carry only the fingerprint)."""
        try:
            return Device(str(fp["kind"]), str(fp["name"]), str(fp["arch"]), dict(fp))
        except (KeyError, TypeError) as err:
            raise DeviceError(f"device fingerprint lacks {err}; it has {sorted(fp)}") from None


def _cc_int(fp: dict[str, Any]) -> int:
    major, _, minor = str(fp["cc"]).partition(".")
    return int(major) * 10 + int(minor or 0)


def _cpu_simd(isa: list[str]) -> tuple[int, int]:
    """(f32 lanes per vector, FMA units per core): two 512/256-bit FMA pipes on x86 servers."""
    flags = set(isa)
    if "avx512f" in flags:
        return 16, 2
    if "avx2" in flags or "avx" in flags:
        return 8, 2 if "fma" in flags else 1
    if "asimd" in flags or "sve" in flags:
        return 4, 2
    return 4, 1


def gpu_fingerprint(name: str, cc: tuple[int, int], memory_bytes: int, sms: int, max_sm_clock_mhz: int,
                    max_mem_clock_mhz: int, bus_width_bits: int, l2_bytes: int) -> dict[str, Any]:
    """The identity of a GPU: every number that changes how fast a kernel runs on it."""
    return {"fingerprint_schema": FINGERPRINT_SCHEMA, "kind": "cuda", "name": name, "arch": f"sm_{cc[0]}{cc[1]}",
            "cc": f"{cc[0]}.{cc[1]}", "memory_bytes": int(memory_bytes), "sms": int(sms),
            "max_sm_clock_mhz": int(max_sm_clock_mhz), "max_mem_clock_mhz": int(max_mem_clock_mhz),
            "bus_width_bits": int(bus_width_bits), "l2_bytes": int(l2_bytes)}


def _gpu(fp: dict[str, Any], nominal: bool = False, software: dict[str, Any] | None = None) -> Device:
    return Device("cuda", fp["name"], fp["arch"], fp, nominal, dict(software or {}))


# Numbers as NVML/torch report them on the real parts (memory in MiB as nvidia-smi shows it).
NOMINAL: dict[str, Device] = {
    "H100": _gpu(gpu_fingerprint("NVIDIA H100 80GB HBM3", (9, 0), 81559 * 2**20, 132, 1980, 2619, 5120,
                                 50 * 2**20), nominal=True),
    "H200": _gpu(gpu_fingerprint("NVIDIA H200", (9, 0), 143771 * 2**20, 132, 1980, 3201, 6144,
                                 60 * 2**20), nominal=True),
    "A100": _gpu(gpu_fingerprint("NVIDIA A100-SXM4-80GB", (8, 0), 81920 * 2**20, 108, 1410, 1593, 5120,
                                 40 * 2**20), nominal=True),
    "L4": _gpu(gpu_fingerprint("NVIDIA L4", (8, 9), 23034 * 2**20, 58, 2040, 6251, 192, 48 * 2**20), nominal=True),
    "A10": _gpu(gpu_fingerprint("NVIDIA A10", (8, 6), 23028 * 2**20, 72, 1695, 6251, 384, 6 * 2**20), nominal=True),
}
# The entry each arch falls back to; also reachable as NOMINAL["sm_90"] etc.
_NOMINAL_FOR_ARCH = {"sm_90": "H100", "sm_80": "A100", "sm_89": "L4", "sm_86": "A10"}
NOMINAL.update({arch: NOMINAL[model] for arch, model in _NOMINAL_FOR_ARCH.items()})


# ----------------------------------------------------------------------------------------- GPUs

@functools.lru_cache(maxsize=1)
def _probe_gpus() -> tuple[tuple[Device, ...], str]:
    """Every GPU NVML sees, and one plain sentence about how that went."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return (), "No GPU: nvidia-ml-py (the pynvml module) is not installed."
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        if isinstance(err, pynvml.NVMLError_LibraryNotFound):
            return (), "No GPU: the NVIDIA driver's NVML library (libnvidia-ml.so) was not found."
        return (), f"No GPU: NVML did not start ({_nvml_text(err)})."
    try:
        software = {"driver": _text(pynvml.nvmlSystemGetDriverVersion()), "nvml": _try(pynvml.nvmlSystemGetNVMLVersion)}
        cuda = _try(pynvml.nvmlSystemGetCudaDriverVersion)
        if isinstance(cuda, int):
            software["cuda"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        names = [_text(pynvml.nvmlDeviceGetName(h)) for h in handles]
        props = {} if all(n in _GPU_TABLE for n in names) else _torch_props()
        devices = [_nvml_device(pynvml, h, props, software) for h in handles]
    except pynvml.NVMLError as err:
        return (), f"No GPU: NVML failed while reading the devices ({_nvml_text(err)})."
    finally:
        _try(pynvml.nvmlShutdown)
    if not devices:
        return (), f"No GPU: NVML (driver {software['driver']}) found no NVIDIA devices."
    names = sorted({d.name for d in devices})
    return tuple(devices), (f"{len(devices)} NVIDIA GPU{'s' if len(devices) > 1 else ''} found through NVML "
                            f"(driver {software['driver']}): {', '.join(names)}.")


def _nvml_device(pynvml: Any, h: Any, props: dict[str, tuple[int, int]], software: dict[str, Any]) -> Device:
    name = _text(pynvml.nvmlDeviceGetName(h))
    uuid = _text(_try(lambda: pynvml.nvmlDeviceGetUUID(h)) or "")
    major, minor = (int(v) for v in pynvml.nvmlDeviceGetCudaComputeCapability(h))
    mem = int(pynvml.nvmlDeviceGetMemoryInfo(h).total)
    sm_clock = int(pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM))
    mem_clock = int(pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM))
    bus = _try(lambda: pynvml.nvmlDeviceGetMemoryBusWidth(h))
    if not bus:  # drivers before R510 lack the query
        nominal = next((d for d in NOMINAL.values() if d.name == name), None)
        bus = nominal.fingerprint["bus_width_bits"] if nominal else 0
    # SMs and L2: the table, else torch (in a child process), else NVML's core count and no L2.
    sms_l2 = _GPU_TABLE.get(name) or props.get(uuid) or props.get(name)
    if sms_l2 is None:
        cores = _try(lambda: pynvml.nvmlDeviceGetNumGpuCores(h)) or 0
        sms_l2 = (int(cores) // _CORES_PER_SM.get(major * 10 + minor, 128), 0)
        logger.warning("SM count of %r taken from NVML's core count and its L2 size is unknown "
                       "(torch with CUDA reads both)", name)
    fp = gpu_fingerprint(name, (major, minor), mem, sms_l2[0], sm_clock, mem_clock, int(bus), sms_l2[1])
    return _gpu(fp, software={**software, "uuid": uuid})


def _torch_props() -> dict[str, tuple[int, int]]:
    """(SMs, L2 bytes) by UUID and by name from torch, without initialising CUDA in this process."""
    out: dict[str, tuple[int, int]] = {}
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():  # CUDA is up here already: ask directly
            rows = [[str(getattr(p, "uuid", "")), p.name, p.multi_processor_count, getattr(p, "L2_cache_size", 0)]
                    for p in map(torch.cuda.get_device_properties, range(torch.cuda.device_count()))]
        elif importlib.util.find_spec("torch") is not None:
            res = subprocess.run([sys.executable, "-c", _TORCH_PROBE], capture_output=True, text=True, timeout=120)
            rows = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else []
        else:
            rows = []
    except Exception as err:  # noqa: BLE001 - torch is optional; any failure means "fall back"
        logger.debug("torch device properties unavailable: %s", err)
        return out
    for uuid, name, sms, l2 in rows:
        if uuid:
            out[uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"] = (int(sms), int(l2))
        out.setdefault(str(name), (int(sms), int(l2)))
    return out


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _nvml_text(err: Exception) -> str:
    return str(err) or type(err).__name__


def _try(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - optional NVML queries missing on old drivers
        return None


# ------------------------------------------------------------------------------------------ CPU

def cpu_fingerprint(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """The identity of the host CPU, from /proc/cpuinfo and sysfs (stable across calls)."""
    return {"fingerprint_schema": FINGERPRINT_SCHEMA, **describe_cpu(cpuinfo_text)}


def cpu_device() -> Device:
    """The host CPU as a Device."""
    fp = cpu_fingerprint()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    software = {"os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
                "usable_cpus": usable}
    return Device("cpu", fp["name"], "cpu", fp, False, software)


# ---------------------------------------------------------------------------------------- public

def detect_devices(refresh: bool = False) -> list[Device]:
    """Every GPU NVML sees (cached per process unless `refresh`), then the host CPU."""
    if refresh:
        _probe_gpus.cache_clear()
    gpus, _ = _probe_gpus()
    return [*gpus, cpu_device()]


def gpu_status() -> str:
    """One plain sentence: how many GPUs were found, or why none was."""
    return _probe_gpus()[1]


def device_for_target(target_name: str) -> Device:
    """The device to tune/compile for `target_name`: the local one if present, else the nominal entry."""
    if target_name in ("cpu", "interp"):
        return cpu_device()  # the Triton interpreter runs on the host CPU
    get_target(target_name)  # unknown names raise TargetError listing the accepted ones
    for dev in _probe_gpus()[0]:
        if dev.arch == target_name:
            return dev
    nominal = NOMINAL.get(target_name)
    if nominal is None:
        raise DeviceError(f"no local GPU of arch {target_name} and no nominal entry for it; "
                          f"nominal archs: {', '.join(sorted(_NOMINAL_FOR_ARCH))}")
    return nominal
