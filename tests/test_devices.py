"""Device fingerprints: key sensitivity for every field, H100 vs H200, NVML present and absent."""

from __future__ import annotations

import argparse
import os
import sys
import types

import pytest

from tilefuse.autotune import device as devmod
from tilefuse.autotune.device import (NOMINAL, Device, DeviceError, cpu_device, cpu_fingerprint, detect_devices,
                                      device_for_target, gpu_fingerprint, gpu_status)
from tilefuse.schedule.target import TargetError

GPU_FIELDS = {"name", "arch", "cc", "memory_bytes", "sms", "max_sm_clock_mhz", "max_mem_clock_mhz",
              "bus_width_bits", "l2_bytes"}
CPU_FIELDS = {"name", "vendor", "family", "model", "stepping", "sockets", "cores", "threads", "max_mhz", "isa",
              "l1d_bytes", "l1i_bytes", "l2_bytes", "l3_bytes"}


def _perturb(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float):
        return v * 1.5 + 1
    if isinstance(v, str):
        return v + "x"
    if isinstance(v, list):
        return [*v, "extra"]
    raise AssertionError(f"unexpected fingerprint value {v!r}")


@pytest.fixture
def no_gpu(monkeypatch):
    """detect_devices as on a machine without nvidia-ml-py."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    devmod._probe_gpus.cache_clear()
    yield
    devmod._probe_gpus.cache_clear()


def _fake_nvml(gpus, driver="580.159.04", missing_library=False):
    """A stand-in for nvidia-ml-py reporting `gpus`: dicts of NVML answers."""

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - pynvml's own name
        pass

    m = types.ModuleType("pynvml")
    m.NVMLError = NVMLError
    m.NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    m.NVML_CLOCK_SM, m.NVML_CLOCK_MEM = 1, 2

    def init():
        if missing_library:
            raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    m.nvmlInit = init
    m.nvmlShutdown = lambda: None
    m.nvmlSystemGetDriverVersion = lambda: driver
    m.nvmlSystemGetNVMLVersion = lambda: "13.580"
    m.nvmlSystemGetCudaDriverVersion = lambda: 13000
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = lambda i: gpus[i]
    m.nvmlDeviceGetName = lambda h: h["name"].encode()
    m.nvmlDeviceGetUUID = lambda h: h["uuid"]
    m.nvmlDeviceGetCudaComputeCapability = lambda h: h["cc"]
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=h["mem"], free=0, used=0)
    m.nvmlDeviceGetMaxClockInfo = lambda h, which: h["sm_clock"] if which == 1 else h["mem_clock"]
    m.nvmlDeviceGetMemoryBusWidth = lambda h: h["bus"]
    return m


H100_NVML = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1", "cc": (9, 0), "mem": 81559 * 2**20,
             "sm_clock": 1980, "mem_clock": 2619, "bus": 5120}
H200_NVML = {"name": "NVIDIA H200", "uuid": "GPU-2", "cc": (9, 0), "mem": 143771 * 2**20,
             "sm_clock": 1980, "mem_clock": 3201, "bus": 6144}


@pytest.fixture
def fake_gpus(monkeypatch):
    """Install a fake NVML with the given GPUs (torch is not asked: the per-name table is used)."""

    def install(gpus, torch_props=None, **kw):
        monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(gpus, **kw))

        def props():
            if torch_props is None:
                raise AssertionError("torch was asked about a GPU the table knows")
            return torch_props

        monkeypatch.setattr(devmod, "_torch_props", props)
        devmod._probe_gpus.cache_clear()
        return sys.modules["pynvml"]

    yield install
    devmod._probe_gpus.cache_clear()


def test_gpu_fingerprint_has_every_identifying_field():
    fp = NOMINAL["H100"].fingerprint
    assert GPU_FIELDS <= set(fp)
    assert "driver" not in fp and "cuda" not in fp


@pytest.mark.parametrize("field", sorted(NOMINAL["H100"].fingerprint))
def test_gpu_key_sensitive_to_every_field(field):
    base = NOMINAL["H100"]
    fp = dict(base.fingerprint)
    fp[field] = _perturb(fp[field])
    assert Device.from_fingerprint(fp).key != base.key, field


def test_cpu_fingerprint_has_every_identifying_field():
    assert CPU_FIELDS <= set(cpu_device().fingerprint)


@pytest.mark.parametrize("field", sorted(cpu_fingerprint()))
def test_cpu_key_sensitive_to_every_field(field):
    base = cpu_device()
    fp = dict(base.fingerprint)
    fp[field] = _perturb(fp[field])
    assert Device.from_fingerprint(fp).key != base.key, field


def test_h100_and_h200_differ_though_both_sm_90():
    h100, h200 = NOMINAL["H100"], NOMINAL["H200"]
    assert h100.arch == h200.arch == "sm_90"
    assert h100.key != h200.key
    assert h200.mem_bandwidth > h100.mem_bandwidth
    assert h200.fingerprint["memory_bytes"] > h100.fingerprint["memory_bytes"]
    assert NOMINAL["sm_90"] is h100 and NOMINAL["sm_80"] is NOMINAL["A100"]


def test_identical_gpus_are_equal_and_software_is_not_identity():
    args = ("NVIDIA H100 80GB HBM3", (9, 0), 81559 * 2**20, 132, 1980, 2619, 5120, 50 * 2**20)
    a = Device("cuda", args[0], "sm_90", gpu_fingerprint(*args), software={"driver": "550.1", "uuid": "GPU-a"})
    b = Device("cuda", args[0], "sm_90", gpu_fingerprint(*args), software={"driver": "580.2", "uuid": "GPU-b"})
    assert a == b and hash(a) == hash(b) and a.key == b.key


def test_nominal_numbers_match_datasheets():
    assert NOMINAL["A100"].peak_flops == pytest.approx(312e12, rel=0.01)
    assert NOMINAL["A100"].peak_f32_flops == pytest.approx(19.5e12, rel=0.01)
    assert NOMINAL["A100"].mem_bandwidth == pytest.approx(2.039e12, rel=0.01)
    assert NOMINAL["H100"].mem_bandwidth == pytest.approx(3.35e12, rel=0.01)
    assert NOMINAL["H100"].num_units == 132 and NOMINAL["H100"].l2_bytes == 50 * 2**20
    assert NOMINAL["H100"].target.name == "sm_90" and NOMINAL["H100"].nominal


def test_cpu_fingerprint_stable_across_calls():
    a, b = cpu_device(), cpu_device()
    assert a.key == b.key and a == b
    assert a.kind == "cpu" and a.arch == "cpu" and a.target.name == "cpu"
    assert a.num_units >= 1 and a.peak_flops > 0 and a.mem_bandwidth > 0


def test_cpuinfo_counts_sockets_cores_threads():
    blocks = []
    for proc, (phys, core) in enumerate([(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0), (1, 1), (1, 1)]):
        blocks.append(f"processor\t: {proc}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
                      f"model name\t: Intel(R) Xeon(R) Platinum 8480+ @ 2.00GHz\nstepping\t: 8\n"
                      f"physical id\t: {phys}\ncore id\t\t: {core}\nflags\t\t: fpu avx2 fma avx512f amx_tile\n")
    fp = cpu_fingerprint("\n".join(blocks))
    assert (fp["sockets"], fp["cores"], fp["threads"]) == (2, 4, 8)
    assert fp["isa"] == ["amx_tile", "avx2", "avx512f", "fma"]
    assert fp["model"] == "143" and fp["vendor"] == "GenuineIntel"
    if not os.path.exists("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"):
        assert fp["max_mhz"] == 2000  # from the model name; cpufreq, where present, wins


def test_device_json_round_trip():
    for dev in (NOMINAL["H200"], cpu_device()):
        back = Device.from_json(dev.to_json())
        assert back == dev and back.key == dev.key and back.software == dev.software
        assert back.nominal == dev.nominal
    with pytest.raises(DeviceError):
        Device.from_json('{"kind": "cuda"}')


def test_detect_devices_without_nvml_module(no_gpu):
    devs = detect_devices()
    assert [d.kind for d in devs] == ["cpu"]
    assert gpu_status().startswith("No GPU") and "nvidia-ml-py" in gpu_status()


def test_detect_devices_without_driver(fake_gpus):
    fake_gpus([], missing_library=True)
    assert [d.kind for d in detect_devices()] == ["cpu"]
    assert "NVML library" in gpu_status()


def test_detect_devices_with_no_devices(fake_gpus):
    fake_gpus([])
    assert [d.kind for d in detect_devices()] == ["cpu"]
    assert "found no NVIDIA devices" in gpu_status()


def test_detect_h100_and_h200_through_nvml(fake_gpus):
    fake_gpus([H100_NVML, H200_NVML, dict(H100_NVML, uuid="GPU-3")])
    devs = detect_devices()
    assert [d.kind for d in devs] == ["cuda", "cuda", "cuda", "cpu"]
    h100, h200, h100b = devs[:3]
    # the NVML reading of a real H100 SXM is exactly the nominal table entry
    assert h100.key == NOMINAL["H100"].key and h200.key == NOMINAL["H200"].key
    assert h100 == h100b and h100.key != h200.key
    assert not h100.nominal and h100.software["driver"] == "580.159.04" and h100.software["cuda"] == "13.0"
    assert "3 NVIDIA GPUs" in gpu_status()
    assert device_for_target("sm_90") is h100 and not device_for_target("sm_90").nominal


def test_unknown_gpu_asks_torch_then_nvml_core_count(fake_gpus):
    future = {"name": "NVIDIA Future X", "uuid": "GPU-9", "cc": (9, 0), "mem": 2**36, "sm_clock": 2000,
              "mem_clock": 4000, "bus": 8192}
    fake_gpus([future], torch_props={"GPU-9": (140, 96 * 2**20)})
    (gpu, _cpu) = detect_devices()
    assert (gpu.num_units, gpu.l2_bytes) == (140, 96 * 2**20)
    nvml = fake_gpus([future], torch_props={})
    nvml.nvmlDeviceGetNumGpuCores = lambda h: 132 * 128
    (gpu, _cpu) = detect_devices()
    assert (gpu.num_units, gpu.l2_bytes) == (132, 0)


def test_device_for_target_falls_back_to_nominal(no_gpu):
    d = device_for_target("sm_90")
    assert d.nominal and d.key == NOMINAL["H100"].key
    assert device_for_target("sm_80").name == "NVIDIA A100-SXM4-80GB"
    assert device_for_target("cpu").key == cpu_device().key
    with pytest.raises(TargetError):
        device_for_target("sm_12")


def test_cli_devices_without_gpu(no_gpu, capsys):
    from tilefuse.cli.db import register

    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(["devices"])
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("No GPU") and "CPU:" in out and "ISA" in out and "caches" in out
    args = p.parse_args(["devices", "--json"])
    assert args.fn(args) == 0
    assert Device.from_json(capsys.readouterr().out.strip().splitlines()[-1]).kind == "cpu"


def test_cli_devices_with_gpu(fake_gpus, capsys):
    from tilefuse.cli.db import register

    fake_gpus([H200_NVML])
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(["devices"])
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    for text in ("GPU: NVIDIA H200", "140.4 GiB", "SMs", "132", "3201 MHz", "6144 bits", "4917 GB/s", "60 MiB",
                 "580.159.04", "CUDA", "13.0", "CPU:"):
        assert text in out, text
