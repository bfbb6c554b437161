"""Python loader of a tilefuse export bundle: the standard library alone (ctypes over libcuda.so.1).

It imports neither tilefuse nor Triton; torch is imported only when a torch tensor is passed (or
`torch_op()` is called). Use it from the bundle directory it was exported into:

    import importlib.util
    spec = importlib.util.spec_from_file_location("mlp", "bundle/decoder_mlp.py")
    mlp = importlib.util.module_from_spec(spec); spec.loader.exec_module(mlp)
    bundle = mlp.load()        # checks manifest.json, every file's sha256, the bundle format and version
    y = bundle.run(x, norm_w, ...)  # torch CUDA tensors in, outputs allocated on the inputs' device

Every check on the tensors (count, device, dtype, shape, contiguity) runs before the driver is touched.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

WRITTEN_BY = "unset"  # the exporter writes its tilefuse version here
BUNDLE_FORMAT = 2
HERE = Path(__file__).resolve().parent
SHARED_OPT_IN = 48 * 1024  # above this a kernel must opt in to its dynamic shared memory
_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR/MINOR

# tilefuse dtype -> (torch dtype name, __cuda_array_interface__ typestr)
DTYPES = {"f64": ("float64", "<f8"), "f32": ("float32", "<f4"), "f16": ("float16", "<f2"),
          "bf16": ("bfloat16", None), "i64": ("int64", "<i8"), "i32": ("int32", "<i4"), "i16": ("int16", "<i2"),
          "i8": ("int8", "|i1"), "u8": ("uint8", "|u1"), "bool": ("bool", "|b1")}


class BundleError(RuntimeError):
    """A bundle that cannot be loaded (missing or altered file, another version, no fitting binary)."""


class BundleInputError(BundleError, ValueError):
    """Tensors that do not match the bundle's inputs; raised before any launch."""


def read_manifest(root: Path = HERE) -> dict[str, Any]:
    """manifest.json of the bundle in `root`, after checking its format, its version and every file's sha256."""
    path = root / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{root}: no manifest.json; the loader must stay in its bundle directory") from None
    except ValueError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    found = manifest.get("bundle_format") if isinstance(manifest, dict) else None
    if found != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {found!r}; this loader reads format {BUNDLE_FORMAT}")
    if manifest.get("tilefuse_version") != WRITTEN_BY:
        raise BundleError(f"{path}: written by tilefuse {manifest.get('tilefuse_version')}, this loader by "
                          f"tilefuse {WRITTEN_BY}; use the loader exported with the manifest")
    for name, digest in sorted(manifest.get("files", {}).items()):
        try:
            data = (root / name).read_bytes()
        except FileNotFoundError:
            raise BundleError(f"{root}: {name} is listed in the manifest but missing") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise BundleError(f"{root / name}: sha256 differs from the manifest's; the file was altered after export")
    return manifest


def _shape_of(x: Any) -> tuple[tuple[int, ...], str | None, bool, int, str]:
    """(shape, dtype name, contiguous, device pointer, device description) of a torch tensor or a
    __cuda_array_interface__ object; the device pointer is read but not used here."""
    if type(x).__module__.startswith("torch"):
        return (tuple(x.shape), str(x.dtype).removeprefix("torch."), bool(x.is_contiguous()), int(x.data_ptr()),
                str(x.device))
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is None:
        raise BundleInputError(f"{type(x).__name__} is neither a torch tensor nor an object with "
                               "__cuda_array_interface__")
    shape = tuple(int(s) for s in cai["shape"])
    typestr = str(cai["typestr"])
    names = {ts: name for name, (_, ts) in DTYPES.items() if ts is not None}
    return shape, DTYPES[names[typestr]][0] if typestr in names else typestr, _cai_contiguous(cai, shape), \
        int(cai["data"][0]), "cuda"


def _cai_contiguous(cai: dict[str, Any], shape: tuple[int, ...]) -> bool:
    strides = cai.get("strides")
    if strides is None:
        return True
    itemsize = int(str(cai["typestr"])[2:])
    expect, step = [], itemsize
    for s in reversed(shape):
        expect.append(step)
        step *= s
    return tuple(strides) == tuple(reversed(expect))


def check_tensors(what: str, given: list[Any], specs: list[dict[str, Any]]) -> list[int]:
    """The device pointers of `given`, after checking count, device, dtype, shape and contiguity."""
    if len(given) != len(specs):
        names = ", ".join(s["name"] for s in specs)
        raise BundleInputError(f"expected {len(specs)} {what} ({names}), got {len(given)}")
    ptrs = []
    for x, spec in zip(given, specs):
        shape, dtype, contiguous, ptr, device = _shape_of(x)
        label = f"{what[:-1]} {spec['name']!r}"
        want_dtype = DTYPES.get(spec["dtype"], (spec["dtype"], None))[0]
        if not device.startswith("cuda"):
            raise BundleInputError(f"{label}: expected a CUDA tensor, got one on {device}")
        if dtype != want_dtype:
            raise BundleInputError(f"{label}: expected dtype {want_dtype} ({spec['dtype']}), got {dtype}")
        if list(shape) != list(spec["shape"]):
            raise BundleInputError(f"{label}: expected shape {list(spec['shape'])}, got {list(shape)}")
        if not contiguous:
            raise BundleInputError(f"{label}: expected a contiguous (row-major) tensor")
        ptrs.append(ptr)
    return ptrs


class Driver:
    """The few libcuda.so.1 entry points a bundle needs, through ctypes."""

    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise BundleError(f"cannot open the CUDA driver libcuda.so.1 ({exc})") from None
        self.call("cuInit", ctypes.c_uint(0))

    def call(self, fn: str, *args: Any) -> None:
        """Call `fn`; BundleError naming it and the CUresult when it fails."""
        rc = getattr(self.lib, fn)(*args)
        if rc != 0:
            raise BundleError(f"{fn} failed with CUresult {rc}")

    def capability(self) -> int:
        """Compute capability of the current context's device (90 for 9.0); retains device 0's
        primary context when the thread has none."""
        ctx = ctypes.c_void_p()
        self.call("cuCtxGetCurrent", ctypes.byref(ctx))
        if not ctx.value:
            self.call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), ctypes.c_int(0))
            self.call("cuCtxSetCurrent", ctx)
        dev = ctypes.c_int()
        self.call("cuCtxGetDevice", ctypes.byref(dev))
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.call("cuDeviceGetAttribute", ctypes.byref(major), ctypes.c_int(_ATTR_CC_MAJOR), dev)
        self.call("cuDeviceGetAttribute", ctypes.byref(minor), ctypes.c_int(_ATTR_CC_MINOR), dev)
        return major.value * 10 + minor.value


def pick_variant(variants: list[dict[str, Any]], cc: int) -> tuple[dict[str, Any], bool]:
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
    raise BundleError(f"no cubin or PTX for compute capability {cc // 10}.{cc % 10} (bundled: {archs})")


class Bundle:
    """A loaded bundle: run(*inputs) launches its kernels in order on the current CUDA stream."""

    def __init__(self, root: Path = HERE) -> None:
        self.root = root
        self.manifest = read_manifest(root)
        self.name = self.manifest["name"]
        self.inputs = self.manifest["inputs"]
        self.outputs = self.manifest["outputs"]
        self.workspace_bytes = int(self.manifest["workspace_bytes"])
        self._driver: Driver | None = None
        self._functions: list[Any] = []
        self.variant: dict[str, Any] | None = None

    def _load(self) -> Driver:
        """Open the driver and load the modules, once (on the first launch)."""
        if self._driver is not None:
            return self._driver
        drv = Driver()
        variant, from_ptx = pick_variant(self.manifest["variants"], drv.capability())
        for launch in variant["launches"]:
            image = (self.root / (launch["ptx"] if from_ptx else launch["cubin"])).read_bytes()
            buf = ctypes.create_string_buffer(image + (b"\0" if from_ptx else b""))
            module, fn = ctypes.c_void_p(), ctypes.c_void_p()
            drv.call("cuModuleLoadData", ctypes.byref(module), buf)
            drv.call("cuModuleGetFunction", ctypes.byref(fn), module, launch["mangled_name"].encode())
            if launch["shared_mem_bytes"] > SHARED_OPT_IN:
                drv.call("cuFuncSetAttribute", fn, ctypes.c_int(_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED),
                         ctypes.c_int(launch["shared_mem_bytes"]))
            self._functions.append(fn)
        self.variant, self._driver = variant, drv
        return drv

    def launch(self, inputs: list[int], outputs: list[int], workspace: int, stream: int = 0) -> None:
        """Launch every kernel on device pointers (already checked) and a CUstream handle."""
        drv = self._load()
        assert self.variant is not None
        if self.variant["workspace_bytes"] and not workspace:
            raise BundleInputError(f"{self.name} needs a workspace of {self.workspace_bytes} bytes")
        for fn, launch in zip(self._functions, self.variant["launches"]):
            values = []
            for arg in launch["args"]:
                base = {"input": inputs, "output": outputs}.get(arg["role"])
                values.append(ctypes.c_uint64(base[arg["index"]] if base is not None else workspace + arg["index"]))
            values += [ctypes.c_uint64(0), ctypes.c_uint64(0)]  # Triton 3.x: global and profile scratch, unused
            params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v in values])
            gx, gy, gz = launch["grid"]
            drv.call("cuLaunchKernel", fn, ctypes.c_uint(gx), ctypes.c_uint(gy), ctypes.c_uint(gz),
                     ctypes.c_uint(launch["block"][0]), ctypes.c_uint(1), ctypes.c_uint(1),
                     ctypes.c_uint(launch["shared_mem_bytes"]), ctypes.c_void_p(stream), params, None)

    def run(self, *inputs: Any, out: list[Any] | None = None, workspace: Any = None, stream: int | None = None) -> Any:
        """Run on torch tensors (outputs allocated unless `out`) or __cuda_array_interface__ objects
        (`out` and, when workspace_bytes > 0, `workspace` required); returns the output(s)."""
        in_ptrs = check_tensors("inputs", list(inputs), self.inputs)
        torch_in = bool(inputs) and type(inputs[0]).__module__.startswith("torch")
        if out is None:
            if not torch_in:
                raise BundleInputError("pass out=[...] (and workspace=) when the inputs are not torch tensors")
            out = self._alloc_outputs(inputs[0])
        out_ptrs = check_tensors("outputs", list(out), self.outputs)
        if workspace is None and torch_in and self.workspace_bytes:
            workspace = self._torch_empty(inputs[0], self.workspace_bytes)
        ws_ptr = 0 if workspace is None else _pointer(workspace)
        if stream is None:
            stream = _torch_stream(inputs[0]) if torch_in else 0
        self.launch(in_ptrs, out_ptrs, ws_ptr, stream)
        return out[0] if len(out) == 1 else tuple(out)

    def _alloc_outputs(self, like: Any) -> list[Any]:
        import torch

        return [torch.empty(o["shape"], dtype=getattr(torch, DTYPES[o["dtype"]][0]), device=like.device)
                for o in self.outputs]

    @staticmethod
    def _torch_empty(like: Any, nbytes: int) -> Any:
        import torch

        return torch.empty(nbytes, dtype=torch.uint8, device=like.device)


def _pointer(x: Any) -> int:
    if hasattr(x, "data_ptr"):
        return int(x.data_ptr())
    return int(x.__cuda_array_interface__["data"][0])


def _torch_stream(x: Any) -> int:
    import torch

    return int(torch.cuda.current_stream(x.device).cuda_stream)


_BUNDLE: Bundle | None = None


def load() -> Bundle:
    """The bundle this file was exported with (checked and read once; the driver opens on the first run)."""
    global _BUNDLE
    if _BUNDLE is None:
        _BUNDLE = Bundle(HERE)
    return _BUNDLE


def run(*inputs: Any, **kwargs: Any) -> Any:
    """Run the bundle on `inputs`; see Bundle.run."""
    return load().run(*inputs, **kwargs)


def _part(kind: str) -> Any:
    """The bundle's NAME_<kind>.py beside this file (checked with the manifest), imported once by path."""
    if kind not in _PARTS:
        path = HERE / f"{Path(__file__).stem}_{kind}.py"
        spec = importlib.util.spec_from_file_location(f"{__name__}_{kind}", path)
        if spec is None or spec.loader is None or not path.exists():
            raise BundleError(f"{path}: missing; the loader must stay in its bundle directory")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _PARTS[kind] = module
    return _PARTS[kind]


_PARTS: dict[str, Any] = {}
_CPU: dict[int, Any] = {}


def load_cpu(num_threads: int = 0) -> Any:
    """The bundle's CPU library (libNAME_cpu.so) with its own `num_threads` threads (0: one per CPU this
    process may use), loaded once per thread count; BundleError when the bundle has no CPU build."""
    if num_threads not in _CPU:
        bundle = load()
        errors = types.SimpleNamespace(BundleError=BundleError, BundleInputError=BundleInputError)
        _CPU[num_threads] = _part("cpu").CpuBundle(bundle.root, bundle.manifest, errors, DTYPES, num_threads)
    return _CPU[num_threads]


def run_cpu(*inputs: Any, **kwargs: Any) -> Any:
    """Run the CPU build on numpy arrays (or torch CPU tensors); see CpuBundle.run in NAME_cpu.py."""
    return load_cpu().run(*inputs, **kwargs)


def torch_op() -> Any:
    """Register (once) and return the torch custom op tilefuse_bundle::NAME, made with
    torch.library.custom_op: a list of input tensors in, a list of output tensors out (CUDA tensors run
    the cubins, CPU tensors the CPU library, as the bundle holds them), with a fake implementation so
    that torch.compile and torch.export trace through it."""
    import torch

    bundle = load()
    if bundle.name in _OPS:
        return _OPS[bundle.name]

    def impl(inputs: Any) -> Any:
        on_cpu = bool(inputs) and inputs[0].device.type == "cpu"
        out = load_cpu().run(*inputs) if on_cpu else bundle.run(*inputs)
        return list(out) if isinstance(out, tuple) else [out]

    def fake(inputs: Any) -> Any:
        like = inputs[0] if inputs else torch.empty(0)
        return [like.new_empty(o["shape"], dtype=getattr(torch, DTYPES[o["dtype"]][0])) for o in bundle.outputs]

    devices = (["cuda"] if bundle.manifest["variants"] else []) + (["cpu"] if "cpu" in bundle.manifest else [])
    op = torch.library.custom_op(f"tilefuse_bundle::{bundle.name}", impl, mutates_args=(),
                                 device_types=devices, schema="(Tensor[] inputs) -> Tensor[]")
    op.register_fake(fake)
    _OPS[bundle.name] = op
    return op


_OPS: dict[str, Any] = {}  # name -> registered custom op (torch refuses a second definition)

if "torch" in sys.modules:  # register the op when the embedding program already uses torch
    try:
        torch_op()
    except BundleError:
        pass  # a damaged bundle raises on load() where the user calls it, with the message
