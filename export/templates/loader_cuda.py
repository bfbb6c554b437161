"""GPU part of a tilefuse bundle's loader (written into the bundle as NAME_cuda.py, loaded by NAME.py): the
CUDA driver through cuda-python when it is installed, else ctypes over libcuda.so.1. The kernels are
loaded once per device, in that device's primary context (cuDevicePrimaryCtxRetain, the context torch
and cupy use), which is pushed around every load and launch and popped after, so the caller's current
context is left as it was."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

SHARED_OPT_IN = 48 * 1024  # above this a kernel must opt in to its dynamic shared memory
FUNC_MAX_DYNAMIC_SHARED = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
ATTR_CC_MAJOR, ATTR_CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR/MINOR
POINTER_DEVICE_ORDINAL = 9  # CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL


class CtypesDriver:
    """The driver entry points a bundle needs, through ctypes over libcuda.so.1."""

    name = "ctypes"

    def __init__(self, errors: Any) -> None:
        self.errors = errors
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise errors.BundleError(f"cannot open the CUDA driver libcuda.so.1 ({exc})") from None
        self.call("cuInit", ctypes.c_uint(0))

    def call(self, fn: str, *args: Any) -> None:
        """Call `fn`; BundleError naming it and the CUresult when it fails."""
        rc = getattr(self.lib, fn)(*args)
        if rc != 0:
            raise self.errors.BundleError(f"{fn} failed with CUresult {rc}")

    def _out(self, fn: str, kind: Any, *args: Any) -> Any:
        value = kind()
        self.call(fn, ctypes.byref(value), *args)
        return value.value

    def primary_context(self, ordinal: int) -> int:
        dev = self._out("cuDeviceGet", ctypes.c_int, ctypes.c_int(ordinal))
        return int(self._out("cuDevicePrimaryCtxRetain", ctypes.c_void_p, ctypes.c_int(dev)) or 0)

    def push(self, ctx: int) -> None:
        self.call("cuCtxPushCurrent_v2", ctypes.c_void_p(ctx))

    def pop(self) -> None:
        self._out("cuCtxPopCurrent_v2", ctypes.c_void_p)

    def capability(self, ordinal: int) -> int:
        dev = self._out("cuDeviceGet", ctypes.c_int, ctypes.c_int(ordinal))
        major = self._out("cuDeviceGetAttribute", ctypes.c_int, ctypes.c_int(ATTR_CC_MAJOR), ctypes.c_int(dev))
        minor = self._out("cuDeviceGetAttribute", ctypes.c_int, ctypes.c_int(ATTR_CC_MINOR), ctypes.c_int(dev))
        return int(major) * 10 + int(minor)

    def pointer_device(self, ptr: int) -> int:
        value = ctypes.c_int()
        self.call("cuPointerGetAttribute", ctypes.byref(value), ctypes.c_int(POINTER_DEVICE_ORDINAL),
                  ctypes.c_uint64(ptr))
        return int(value.value)

    def load_function(self, image: bytes, name: str, shared: int) -> Any:
        buf = ctypes.create_string_buffer(image)
        module = self._out("cuModuleLoadData", ctypes.c_void_p, buf)
        fn = self._out("cuModuleGetFunction", ctypes.c_void_p, ctypes.c_void_p(module), name.encode())
        if shared > SHARED_OPT_IN:
            self.call("cuFuncSetAttribute", ctypes.c_void_p(fn), ctypes.c_int(FUNC_MAX_DYNAMIC_SHARED),
                      ctypes.c_int(shared))
        return fn

    def upload(self, data: bytes) -> int:
        ptr = int(self._out("cuMemAlloc_v2", ctypes.c_uint64, ctypes.c_size_t(max(16, len(data)))))
        if data:
            self.call("cuMemcpyHtoD_v2", ctypes.c_uint64(ptr), data, ctypes.c_size_t(len(data)))
        return ptr

    def memset(self, ptr: int, nbytes: int, stream: int) -> None:
        self.call("cuMemsetD8Async", ctypes.c_uint64(ptr), ctypes.c_ubyte(0), ctypes.c_size_t(nbytes),
                  ctypes.c_void_p(stream))

    def launch(self, fn: Any, grid: list[int], block_x: int, shared: int, stream: int, values: list[int],
               ints: frozenset[int] = frozenset()) -> None:
        """Launch `fn`; `values` are pointers, except the positions in `ints` (dynamic sizes: int32)."""
        cells = [ctypes.c_int32(v) if i in ints else ctypes.c_uint64(v) for i, v in enumerate(values)]
        params = (ctypes.c_void_p * len(cells))(*[ctypes.cast(ctypes.byref(c), ctypes.c_void_p) for c in cells])
        self.call("cuLaunchKernel", ctypes.c_void_p(fn), *[ctypes.c_uint(g) for g in grid], ctypes.c_uint(block_x),
                  ctypes.c_uint(1), ctypes.c_uint(1), ctypes.c_uint(shared), ctypes.c_void_p(stream), params, None)


class CudaPythonDriver:
    """The same entry points through cuda-python (`cuda.bindings.driver`, or `cuda.cuda` before 12.6)."""

    name = "cuda-python"

    def __init__(self, errors: Any, driver: Any) -> None:
        self.errors, self.cu = errors, driver
        self.keep: list[Any] = []  # host buffers whose addresses the driver was given
        try:
            out = driver.cuInit(0)
        except Exception as exc:  # noqa: BLE001 - cuda-python raises its own types when libcuda is absent
            raise errors.BundleError(f"cannot open the CUDA driver through cuda-python ({exc})") from None
        if int(out[0]) != 0:
            raise errors.BundleError(f"cuInit failed with CUresult {int(out[0])}")

    def call(self, fn: str, *args: Any) -> Any:
        """Call `fn`; its value (None, one value or a tuple), or BundleError naming it and the CUresult."""
        out = getattr(self.cu, fn)(*args)
        err, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        if int(err) != 0:
            raise self.errors.BundleError(f"{fn} failed with CUresult {int(err)}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def primary_context(self, ordinal: int) -> Any:
        return self.call("cuDevicePrimaryCtxRetain", self.call("cuDeviceGet", ordinal))

    def push(self, ctx: Any) -> None:
        self.call("cuCtxPushCurrent", ctx)

    def pop(self) -> None:
        self.call("cuCtxPopCurrent")

    def capability(self, ordinal: int) -> int:
        dev = self.call("cuDeviceGet", ordinal)
        attr = self.cu.CUdevice_attribute
        major = self.call("cuDeviceGetAttribute", attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
        minor = self.call("cuDeviceGetAttribute", attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
        return int(major) * 10 + int(minor)

    def pointer_device(self, ptr: int) -> int:
        attr = self.cu.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
        return int(self.call("cuPointerGetAttribute", attr, ptr))

    def _address(self, data: bytes) -> int:
        buf = ctypes.create_string_buffer(data, len(data))
        self.keep.append(buf)
        return ctypes.addressof(buf)

    def load_function(self, image: bytes, name: str, shared: int) -> Any:
        module = self.call("cuModuleLoadData", self._address(image))
        fn = self.call("cuModuleGetFunction", module, name.encode())
        if shared > SHARED_OPT_IN:
            attr = self.cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            self.call("cuFuncSetAttribute", fn, attr, shared)
        return fn

    def upload(self, data: bytes) -> int:
        ptr = self.call("cuMemAlloc", max(16, len(data)))
        if data:
            self.call("cuMemcpyHtoD", ptr, self._address(data), len(data))
        return int(ptr)

    def memset(self, ptr: int, nbytes: int, stream: int) -> None:
        self.call("cuMemsetD8Async", ptr, 0, nbytes, stream)

    def launch(self, fn: Any, grid: list[int], block_x: int, shared: int, stream: int, values: list[int],
               ints: frozenset[int] = frozenset()) -> None:
        params = (tuple(values), tuple(ctypes.c_int32 if i in ints else ctypes.c_uint64 for i in range(len(values))))
        self.call("cuLaunchKernel", fn, *grid, block_x, 1, 1, shared, stream, params, 0)


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):  # DLPack's DLTensor, the head of the DLManagedTensor a capsule holds
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


_DL_DTYPES = {(2, 16): "float16", (2, 32): "float32", (2, 64): "float64", (4, 16): "bfloat16", (0, 8): "int8",
              (0, 16): "int16", (0, 32): "int32", (0, 64): "int64", (1, 8): "uint8", (6, 8): "bool"}
_DL_DEVICES = {1: "cpu", 2: "cuda", 3: "cuda_host", 13: "cuda_managed"}  # kDLCPU, kDLCUDA, ...


def row_major(shape: tuple[int, ...], strides: tuple[int, ...], unit: int) -> bool:
    """Whether `strides` (in units of `unit`) are those of a C-contiguous `shape` (size-1 dims ignored)."""
    step = unit
    for n, st in zip(reversed(shape), reversed(strides)):
        if n != 1 and st != step:
            return False
        step *= n
    return True


def from_dlpack(x: Any, input_error: Any) -> dict[str, Any]:
    """What the loader's Tensor needs of a DLPack object (its capsule kept alive with it)."""
    device_type, ordinal = (int(v) for v in x.__dlpack_device__())
    capsule = x.__dlpack__()
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    try:
        t = _DLTensor.from_address(get(capsule, b"dltensor"))
    except ValueError:
        raise input_error(f"{type(x).__name__}.__dlpack__() did not return a DLPack capsule") from None
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    contiguous = not t.strides or row_major(shape, tuple(int(t.strides[i]) for i in range(t.ndim)), 1)
    code = (int(t.dtype.code), int(t.dtype.bits))
    dtype = _DL_DTYPES.get(code, f"dlpack{code}") if t.dtype.lanes == 1 else f"dlpack{code}x{t.dtype.lanes}"
    return {"shape": shape, "dtype": dtype, "contiguous": contiguous, "pointer": int(t.data or 0) + int(t.byte_offset),
            "device": _DL_DEVICES.get(device_type, f"dlpack device {device_type}"), "ordinal": ordinal, "keep": capsule}


def open_driver(errors: Any) -> Any:
    """cuda-python's driver bindings when installed, else ctypes over libcuda.so.1."""
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver  # cuda-python before 12.6
        except ImportError:
            return CtypesDriver(errors)
    return CudaPythonDriver(errors, driver)


def pick_variant(variants: list[dict[str, Any]], cc: int, errors: Any) -> tuple[dict[str, Any], bool]:
    """The variant whose cubin runs on capability `cc` (the highest), else one whose PTX JIT-compiles for
    it (arch-specific sm_XXa PTX cannot); (variant, from_ptx)."""
    def fits(v: dict[str, Any]) -> bool:
        cap = v["capability"]
        return cc == cap if v["arch_specific"] else (cc // 10 == cap // 10 and cc >= cap)

    cubins = [v for v in variants if fits(v)]
    if cubins:
        return max(cubins, key=lambda v: v["capability"]), False
    ptx = [v for v in variants if not v["arch_specific"] and cc >= v["capability"]]
    if ptx:
        return max(ptx, key=lambda v: v["capability"]), True
    archs = ", ".join(v["arch"] for v in variants)
    raise errors.BundleError(f"no cubin or PTX for compute capability {cc // 10}.{cc % 10} (bundled: {archs})")


def bucket_of(variant: dict[str, Any], sizes: dict[str, int]) -> dict[str, Any]:
    """The bucket of a dynamic variant serving `sizes` (already checked against their ranges); a static
    variant's one bucket runs every launch."""
    for b in variant.get("buckets") or []:
        if all(lo <= sizes[n] <= hi for n, lo, hi in b["ranges"]):
            return dict(b)
    return {"launches": list(range(len(variant["launches"]))), "workspace_bytes": variant["workspace_bytes"]}


def workspace_bytes_at(manifest: dict[str, Any], sizes: dict[str, int]) -> int:
    """Bytes of workspace a run at `sizes` needs: their bucket's, the most over the architectures."""
    return max((int(bucket_of(v, sizes)["workspace_bytes"]) for v in manifest["variants"]), default=0)


class DeviceModules:
    """The bundle loaded on one device: its primary context, functions (one module per cubin: launches of
    one function under one config share it) and uploaded constants."""

    def __init__(self, drv: Any, root: Path, manifest: dict[str, Any], ordinal: int, errors: Any) -> None:
        self.drv, self.ordinal, self.errors = drv, ordinal, errors
        self.params = [p["name"] for p in manifest.get("dynamic", {}).get("params", [])]
        self.ctx = drv.primary_context(ordinal)
        drv.push(self.ctx)
        try:
            self.variant, self.from_ptx = pick_variant(manifest["variants"], drv.capability(ordinal), errors)
            loaded: dict[str, Any] = {}
            for launch in self.variant["launches"]:
                if launch["cubin"] not in loaded:
                    image = (root / launch["ptx"]).read_bytes() + b"\0" if self.from_ptx else \
                        (root / launch["cubin"]).read_bytes()
                    loaded[launch["cubin"]] = drv.load_function(image, launch["mangled_name"],
                                                                launch["shared_mem_bytes"])
            self.functions = [loaded[launch["cubin"]] for launch in self.variant["launches"]]
            self.constants = [drv.upload((root / c["file"]).read_bytes()) for c in self.variant["constants"]]
        finally:
            drv.pop()

    def launch(self, inputs: list[int], outputs: list[int], workspace: int, stream: int,
               sizes: dict[str, int] | None = None) -> None:
        """The launches of the bucket serving `sizes` (every launch of a static graph) in order on `stream`,
        zero-filled workspaces cleared before their kernel's first; grids evaluated at `sizes`, and the
        dynamic sizes passed as int32 arguments."""
        sizes = sizes or {}
        by_index = [sizes[n] for n in self.params]
        bases = {"input": inputs, "output": outputs, "constant": self.constants, "size": by_index}
        self.drv.push(self.ctx)
        try:
            for i in bucket_of(self.variant, sizes)["launches"]:
                fn, launch = self.functions[i], self.variant["launches"][i]
                for offset, nbytes in launch["zero_before"]:
                    self.drv.memset(workspace + offset, nbytes, stream)
                values = [bases[a["role"]][a["index"]] if a["role"] in bases else workspace + a["index"]
                          for a in launch["args"]]
                values += [0, 0]  # Triton 3.x: global and profile scratch, unused
                ints = frozenset(j for j, a in enumerate(launch["args"]) if a["role"] == "size")
                grid = [self.errors.size_at(g, sizes) for g in launch["grid"]]
                self.drv.launch(fn, grid, launch["block"][0], launch["shared_mem_bytes"], stream, values, ints)
        finally:
            self.drv.pop()


class GpuRuntime:
    """The driver (opened on the first launch) and the bundle's modules per device."""

    def __init__(self, root: Path, manifest: dict[str, Any], errors: Any) -> None:
        self.root, self.manifest, self.errors = root, manifest, errors
        self.drv = open_driver(errors)
        self.devices: dict[int, DeviceModules] = {}

    def device_of(self, pointer: int) -> int:
        """The device ordinal a device pointer belongs to (for objects that do not say)."""
        return self.drv.pointer_device(pointer)

    def modules(self, ordinal: int) -> DeviceModules:
        """The bundle loaded on device `ordinal` (loaded on first use)."""
        if ordinal not in self.devices:
            self.devices[ordinal] = DeviceModules(self.drv, self.root, self.manifest, ordinal, self.errors)
        return self.devices[ordinal]
