"""What machine gpu-check runs on: the GPU torch sees (name, compute capability, memory), the driver NVML
reports, and the versions of python, numpy, torch, triton and tilefuse. Run as a child process
(`python -m tilefuse.gpu_check.probe`) so a wedged driver costs a timeout, not the whole check."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_gpu() -> dict[str, Any]:
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - any failure to import torch means "no GPU through torch"
        return {"cuda_available": False, "why": f"torch does not import ({type(err).__name__}: {err})"}
    out: dict[str, Any] = {"torch_cuda": torch.version.cuda, "cuda_available": bool(torch.cuda.is_available())}
    if not out["cuda_available"]:
        built = "torch has no CUDA support" if torch.version.cuda is None else "torch.cuda.is_available() is False"
        return {**out, "why": built}
    p = torch.cuda.get_device_properties(0)
    major, minor = torch.cuda.get_device_capability(0)
    return {**out, "name": p.name, "capability": f"{major}.{minor}", "sms": p.multi_processor_count,
            "memory_bytes": int(p.total_memory), "device_count": torch.cuda.device_count()}


def _git_commit(root: Path) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:  # not a git checkout (a copied working tree)
        return None
    return res.stdout.strip() or None


def collect() -> dict[str, Any]:
    """The machine's GPU (under "gpu") and software versions (under "versions")."""
    from .. import __version__
    from ..autotune.device import detect_devices, gpu_status

    gpu = _torch_gpu()
    nvml = [d for d in detect_devices() if d.kind == "cuda"]
    gpu["nvml"] = gpu_status()
    gpu["driver"] = nvml[0].software.get("driver") if nvml else None
    gpu["cuda_driver"] = nvml[0].software.get("cuda") if nvml else None
    root = Path(__file__).resolve().parents[1]
    versions = {"python": platform.python_version(), "numpy": _version("numpy"), "torch": _version("torch"),
                "triton": _version("triton"), "tilefuse": __version__, "tilefuse_commit": _git_commit(root)}
    return {"gpu": gpu, "versions": versions, "host": platform.node(), "machine": platform.machine()}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(collect()) + "\n")
