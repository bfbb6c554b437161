"""Run by tests/test_export.py in a fresh interpreter: block the given top-level packages, import a bundle's
loader from its file, feed it bad tensors and print what it said, as JSON, on the last line."""

import ctypes
import importlib.abc
import importlib.util
import json
import sys

BUNDLE, NAME, BLOCKED = sys.argv[1], sys.argv[2], set(sys.argv[3].split(","))


class Blocker(importlib.abc.MetaPathFinder):
    """Makes the blocked packages unimportable, as in an environment without them."""

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"{fullname} is blocked in this test")
        return None


sys.meta_path.insert(0, Blocker())


class CudaArray:
    """A device array as cupy or numba present one: only __cuda_array_interface__ (the pointer is never used)."""

    def __init__(self, shape, typestr, strides=None):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr, "data": (0x10000, False),
                                         "strides": strides, "version": 3}


class DLManagedTensor(ctypes.Structure):
    """DLPack's managed tensor, laid out as the standard defines it (the loader reads its DLTensor head)."""

    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32),
                ("ndim", ctypes.c_int32), ("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
                ("lanes", ctypes.c_uint16),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


DL_CODES = {"<f2": (2, 16), "<f4": (2, 32), "<i4": (0, 32), "|u1": (1, 8)}


class DLPackArray:
    """A device array as a DLPack producer presents one: __dlpack__ and __dlpack_device__ (kDLCUDA = 2), its
    capsule holding a real DLManagedTensor over a pointer that is never used."""

    def __init__(self, shape, typestr, device=(2, 0), strides=None):
        self.device = device
        self.shape = (ctypes.c_int64 * len(shape))(*shape)
        self.strides = (ctypes.c_int64 * len(shape))(*strides) if strides else None
        code, bits = DL_CODES[typestr]
        self.t = DLManagedTensor(0x20000, device[0], device[1], len(shape), code, bits, 1, self.shape,
                                 self.strides, 0, None, None)

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, stream=None):
        new = ctypes.pythonapi.PyCapsule_New
        new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        return new(ctypes.addressof(self.t), b"dltensor", None)


def attempt(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the probe reports every failure by type and message
        return f"{type(exc).__name__}: {exc}"
    return "ok"


spec = importlib.util.spec_from_file_location(NAME, f"{BUNDLE}/{NAME}.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
report = {"load": attempt(mod.load)}
if report["load"] == "ok":
    b = mod.load()
    good = [CudaArray(t["shape"], mod.DTYPES[t["dtype"]][1]) for t in b.inputs]
    out = [CudaArray(t["shape"], mod.DTYPES[t["dtype"]][1]) for t in b.outputs]
    report["count"] = attempt(lambda: b.run(*good[:-1], out=out))
    report["dtype"] = attempt(lambda: b.run(CudaArray(b.inputs[0]["shape"], "<f4"), *good[1:], out=out))
    report["shape"] = attempt(lambda: b.run(CudaArray([1, 2], "<f2"), *good[1:], out=out))
    report["strided"] = attempt(lambda: b.run(CudaArray(b.inputs[0]["shape"], "<f2", strides=(2, 8)), *good[1:],
                                              out=out))
    report["no_out"] = attempt(lambda: b.run(*good))
    dl = [DLPackArray(t["shape"], mod.DTYPES[t["dtype"]][1]) for t in b.inputs]
    dl_out = [DLPackArray(t["shape"], mod.DTYPES[t["dtype"]][1]) for t in b.outputs]
    report["dl_dtype"] = attempt(lambda: b.run(DLPackArray(b.inputs[0]["shape"], "<f4"), *dl[1:], out=dl_out))
    report["dl_strided"] = attempt(lambda: b.run(DLPackArray(b.inputs[0]["shape"], "<f2", strides=(1, 4)), *dl[1:],
                                                 out=dl_out))
    report["dl_cpu"] = attempt(lambda: b.run(DLPackArray(b.inputs[0]["shape"], "<f2", device=(1, 0)), *dl[1:],
                                             out=dl_out))
    other = [DLPackArray(t["shape"], mod.DTYPES[t["dtype"]][1], device=(2, 1)) for t in b.inputs]
    report["dl_devices"] = attempt(lambda: b.run(dl[0], *other[1:], out=dl_out))
    import numpy as np  # a real DLPack producer (host memory)

    report["np_cpu"] = attempt(lambda: b.run(np.zeros(b.inputs[0]["shape"], np.float16), *dl[1:], out=dl_out))
    report["driver_opened_by_checks"] = b._driver is not None
    report["dl_good"] = attempt(lambda: b.run(*dl, out=dl_out, workspace=DLPackArray([b.workspace_bytes], "|u1")))
    if "torch" not in BLOCKED:
        import torch

        cpu = [torch.zeros(t["shape"], dtype=getattr(torch, mod.DTYPES[t["dtype"]][0])) for t in b.inputs]
        report["cpu_tensor"] = attempt(lambda: b.run(*cpu))
        op = mod.torch_op()
        meta = [x.to("meta") for x in cpu]
        report["fake"] = [list(y.shape) + [str(y.dtype)] for y in op(meta)]
    report["driver_opened"] = b._driver is not None
report["modules"] = sorted(m for m in ("tilefuse", "triton", "torch") if m in sys.modules)
print(json.dumps(report))
