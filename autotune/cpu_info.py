"""The host CPU as data: model, ISA extensions, sockets/cores/threads, clock and cache sizes, read from
/proc/cpuinfo and sysfs. autotune/device.py turns this into the CPU's fingerprint."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

# ISA extensions that change what a CPU kernel can do (and so belong in its fingerprint).
_ISA_FLAGS = frozenset({
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512cd", "avx512bw", "avx512dq",
    "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512vbmi", "avx_vnni", "amx_tile",
    "amx_bf16", "amx_int8", "amx_fp16", "asimd", "asimdhp", "asimddp", "sve", "sve2", "bf16", "i8mm", "sme",
})


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _size_bytes(s: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]?)B?", s.strip(), re.IGNORECASE)
    if not m:
        return 0
    return int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2).upper()]


def _cpu_caches(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> dict[str, int]:
    """Cache sizes of one core (L1d, L1i, L2) and of its shared last level (L3), in bytes."""
    out = {"l1d_bytes": 0, "l1i_bytes": 0, "l2_bytes": 0, "l3_bytes": 0}
    for idx in sorted(root.glob("index*")):
        level, kind = _read(idx / "level"), _read(idx / "type")
        size = _size_bytes(_read(idx / "size"))
        if level == "1":
            out["l1i_bytes" if kind == "Instruction" else "l1d_bytes"] = size
        elif level in ("2", "3"):
            out[f"l{level}_bytes"] = size
    return out


def _cpuinfo(text: str) -> tuple[dict[str, str], int, int, int]:
    """First processor's fields, and the counts of sockets, physical cores and logical CPUs."""
    first: dict[str, str] = {}
    cores: set[tuple[str, str]] = set()
    sockets: set[str] = set()
    threads = 0
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            k, sep, v = line.partition(":")
            if sep:
                fields[k.strip()] = v.strip()
        if "processor" not in fields:
            continue
        threads += 1
        first = first or fields
        sockets.add(fields.get("physical id", "0"))
        cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
    return first, len(sockets) or 1, len(cores) or (os.cpu_count() or 1), threads or (os.cpu_count() or 1)


def _max_mhz(info: dict[str, str]) -> int:
    # Prefer a fixed number: cpufreq's maximum, then the clock in the model name; the current
    # "cpu MHz" moves with frequency scaling, so it is rounded to 100 MHz as a last resort.
    khz = _read(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))
    if khz.isdigit():
        return int(khz) // 1000
    m = re.search(r"@\s*([\d.]+)\s*GHz", info.get("model name", ""))
    if m:
        return int(round(float(m.group(1)) * 1000))
    try:
        return int(round(float(info.get("cpu MHz", "0")) / 100.0)) * 100
    except ValueError:
        return 0


def describe_cpu(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """The host CPU's fields (name, ISA, cores, caches), from /proc/cpuinfo and sysfs (stable across calls)."""
    if cpuinfo_text is None:
        cpuinfo_text = _read(Path("/proc/cpuinfo"))
    info, sockets, cores, threads = _cpuinfo(cpuinfo_text)
    flags = set((info.get("flags") or info.get("Features") or "").split())
    name = info.get("model name") or info.get("Processor") or platform.processor() or platform.machine()
    fp: dict[str, Any] = {
        "kind": "cpu", "name": name, "arch": "cpu",
        "machine": platform.machine(), "vendor": info.get("vendor_id") or info.get("CPU implementer", ""),
        "family": info.get("cpu family") or info.get("CPU architecture", ""),
        "model": info.get("model") or info.get("CPU part", ""),
        "stepping": info.get("stepping") or info.get("CPU revision", ""),
        "sockets": sockets, "cores": cores, "threads": threads, "max_mhz": _max_mhz(info),
        "isa": sorted(flags & _ISA_FLAGS),
    }
    fp.update(_cpu_caches())
    return fp
