"""CPU part of a tilefuse bundle's loader (written into the bundle as NAME_cpu.py and loaded by NAME.py):
ctypes over libNAME_cpu.so, numpy arrays (or torch CPU tensors) in and out. Imports numpy, and torch only
when a torch tensor is passed; neither tilefuse nor TVM."""

from __future__ import annotations

import ctypes
import weakref
from pathlib import Path
from typing import Any

ALIGNMENT = 64  # bytes: the compiled kernels assume every buffer starts on this boundary
ERRBUF = 512


def aligned_empty(shape: list[int], dtype: Any) -> Any:
    """An uninitialised C-contiguous numpy array whose data is ALIGNMENT-aligned (numpy aligns to 16)."""
    import numpy as np

    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + ALIGNMENT, dtype=np.uint8)
    off = -raw.ctypes.data % ALIGNMENT
    return raw[off:off + n].view(dtype).reshape(tuple(shape))


def _unload(fn: Any, handle: ctypes.c_void_p) -> None:
    fn(handle)


class CpuBundle:
    """libNAME_cpu.so loaded with its own thread pool: run(*arrays) runs the graph on the host."""

    def __init__(self, root: Path, manifest: dict[str, Any], errors: Any, dtypes: dict[str, Any],
                 num_threads: int = 0) -> None:
        self.errors = errors
        self.name = manifest["name"]
        self.inputs, self.outputs = manifest["inputs"], manifest["outputs"]
        self.np_dtypes = {k: v[0] for k, v in dtypes.items()}
        cpu = manifest.get("cpu")
        if cpu is None:
            raise errors.BundleError(f"{root}: bundle {self.name} has no CPU build; export it with --targets cpu,...")
        try:
            lib = ctypes.CDLL(str(root / cpu["library"]))
        except OSError as exc:
            raise errors.BundleError(f"{root / cpu['library']}: cannot be loaded ({exc})") from None
        api = {f: getattr(lib, f"{self.name}_cpu_{f}") for f in ("load", "run_dyn", "error", "unload", "num_threads")}
        self.manifest, self.params = manifest, [p["name"] for p in manifest.get("dynamic", {}).get("params", [])]
        api["load"].argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_size_t]
        api["run_dyn"].argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        api["error"].argtypes = [ctypes.c_void_p]
        api["error"].restype = ctypes.c_char_p
        api["unload"].argtypes = [ctypes.c_void_p]
        api["num_threads"].argtypes = [ctypes.c_void_p]
        self.lib, self.api, self.handle = lib, api, ctypes.c_void_p()
        err = ctypes.create_string_buffer(ERRBUF)
        rc = api["load"](int(num_threads), ctypes.byref(self.handle), err, ERRBUF)
        if rc != 0:
            raise errors.BundleError(f"{self.name}_cpu_load returned {rc}: {err.value.decode(errors='replace')}")
        self.num_threads = int(api["num_threads"](self.handle))
        self._finalizer = weakref.finalize(self, _unload, api["unload"], self.handle)

    def _array(self, x: Any, spec: dict[str, Any], label: str, output: bool) -> Any:
        """`x` as a numpy array of the spec's dtype and shape; inputs not aligned are copied, outputs must be."""
        import numpy as np

        if type(x).__module__.startswith("torch"):
            if x.device.type != "cpu":
                raise self.errors.BundleInputError(f"{label}: expected a CPU tensor, got one on {x.device}")
            x = x.detach().numpy()
        if not isinstance(x, np.ndarray):
            raise self.errors.BundleInputError(f"{label}: expected a numpy array or a torch CPU tensor, got "
                                               f"{type(x).__name__}")
        want = self.np_dtypes.get(spec["dtype"], spec["dtype"])
        if x.dtype != np.dtype(want):
            raise self.errors.BundleInputError(f"{label}: expected dtype {want} ({spec['dtype']}), got {x.dtype}")
        if list(x.shape) != list(spec["shape"]):
            raise self.errors.BundleInputError(f"{label}: expected shape {list(spec['shape'])}, got {list(x.shape)}")
        ok = x.flags.c_contiguous and x.ctypes.data % ALIGNMENT == 0
        if output and not (ok and x.flags.writeable):
            raise self.errors.BundleInputError(f"{label}: expected a writeable C-contiguous array aligned to "
                                               f"{ALIGNMENT} bytes (aligned_empty makes one)")
        if not ok:
            copy = aligned_empty(list(x.shape), x.dtype)
            copy[...] = x
            x = copy
        return x

    def run(self, *inputs: Any, out: list[Any] | None = None) -> Any:
        """Run on numpy arrays (or torch CPU tensors) in the manifest's order; outputs are allocated unless
        `out` is given. Returns the output, or a tuple of them."""
        if len(inputs) != len(self.inputs):
            names = ", ".join(s["name"] for s in self.inputs)
            raise self.errors.BundleInputError(f"expected {len(self.inputs)} inputs ({names}), got {len(inputs)}")
        sizes, in_shapes, out_shapes = self.errors.bind_sizes(self.manifest, [getattr(x, "shape", ()) for x in inputs])
        ins = [self._array(x, {**s, "shape": shape}, f"input {s['name']!r}", False)
               for x, s, shape in zip(inputs, self.inputs, in_shapes)]
        torch_in = bool(inputs) and type(inputs[0]).__module__.startswith("torch")
        if out is None:
            out = [aligned_empty(shape, self.np_dtypes.get(s["dtype"], s["dtype"]))
                   for s, shape in zip(self.outputs, out_shapes)]
        elif len(out) != len(self.outputs):
            raise self.errors.BundleInputError(f"expected {len(self.outputs)} outputs, got {len(out)}")
        outs = [self._array(x, {**s, "shape": shape}, f"output {s['name']!r}", True)
                for x, s, shape in zip(out, self.outputs, out_shapes)]
        in_ptrs = (ctypes.c_void_p * len(ins))(*[a.ctypes.data for a in ins])
        out_ptrs = (ctypes.c_void_p * len(outs))(*[a.ctypes.data for a in outs])
        size_arr = (ctypes.c_int64 * max(1, len(self.params)))(*[sizes[n] for n in self.params])
        rc = self.api["run_dyn"](self.handle, size_arr if self.params else None, in_ptrs, out_ptrs, None)
        if rc != 0:
            message = (self.api["error"](self.handle) or b"").decode(errors="replace")
            raise self.errors.BundleError(f"{self.name}_cpu_run returned {rc}: {message}")
        if torch_in and not any(type(x).__module__.startswith("torch") for x in out):
            import torch

            out = [torch.from_numpy(a) for a in outs]
        return out[0] if len(out) == 1 else tuple(out)
