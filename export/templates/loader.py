"""Python loader of a tilefuse export bundle: the standard library alone (ctypes over libcuda.so.1, or
cuda-python when installed; NAME_cuda.py), numpy for the CPU build (NAME_cpu.py).

It imports neither tilefuse nor Triton; torch is imported only when a torch tensor is passed (or
`torch_op()` is called). Use it from the bundle directory it was exported into:

    import importlib.util
    spec = importlib.util.spec_from_file_location("mlp", "bundle/decoder_mlp.py")
    mlp = importlib.util.module_from_spec(spec); spec.loader.exec_module(mlp)
    bundle = mlp.load()        # checks manifest.json, every file's sha256, the bundle format and version
    y = bundle.run(x, norm_w, ...)  # torch CUDA tensors in, outputs allocated on the inputs' device
    mlp.run(*dlpack_or_cai_arrays, out=[y], workspace=ws)  # any DLPack / __cuda_array_interface__ object
    y = mlp.run_cpu(*numpy_arrays)  # the CPU build, when exported with --targets cpu,...

Every check on the tensors (count, device, dtype, shape, contiguity, one device for all) runs before the
driver is touched; the kernels run on the tensors' device, in its primary context.
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
BUNDLE_FORMAT = 3
HERE = Path(__file__).resolve().parent

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


def size_at(dim: Any, sizes: dict[str, int]) -> int:
    """A manifest size at `sizes`: an int, or a postfix program over the dynamic sizes (+ - * // %)."""
    if isinstance(dim, int):
        return dim
    stack: list[int] = []
    for tok in dim:
        if isinstance(tok, int) or tok not in ("+", "-", "*", "//", "%"):
            stack.append(tok if isinstance(tok, int) else sizes[tok])
            continue
        b, a = stack.pop(), stack.pop()
        stack.append(a + b if tok == "+" else a - b if tok == "-" else a * b if tok == "*" else a // b if tok == "//"
                     else a % b)
    return stack[0]


def bind_sizes(manifest: dict[str, Any], shapes: list[Any]) -> tuple[dict[str, int], list[list[int]], list[list[int]]]:
    """The dynamic sizes read from the inputs' `shapes` (checked against their ranges and between inputs), and
    every input's and output's shape at them; BundleInputError naming the size and the input otherwise."""
    sizes: dict[str, int] = {}
    source: dict[str, str] = {}
    for spec, shape in zip(manifest["inputs"], shapes):
        for dim, got in zip(spec["shape"], shape if len(shape) == len(spec["shape"]) else ()):
            if isinstance(dim, list) and len(dim) == 1 and dim[0] not in sizes:
                sizes[dim[0]], source[dim[0]] = int(got), spec["name"]
    for p in manifest.get("dynamic", {}).get("params", []):
        if p["name"] not in sizes:
            raise BundleInputError(f"no input gives the dynamic size {p['name']} (expected "
                                   f"{len(manifest['inputs'])} inputs with their shapes)")
        if not p["lo"] <= sizes[p["name"]] <= p["hi"]:
            raise BundleInputError(f"input {source[p['name']]!r}: dynamic size {p['name']}={sizes[p['name']]} is "
                                   f"outside its range {p['lo']}..{p['hi']}")
    for spec, shape in zip(manifest["inputs"], shapes):
        for i, (dim, got) in enumerate(zip(spec["shape"], shape if len(shape) == len(spec["shape"]) else ())):
            if isinstance(dim, list) and len(dim) == 1 and int(got) != sizes[dim[0]]:
                raise BundleInputError(f"input {spec['name']!r}: dimension {i} is the dynamic size {dim[0]}, which "
                                       f"input {source[dim[0]]!r} gives as {sizes[dim[0]]}, but it is {got}")
    ins = [[size_at(d, sizes) for d in t["shape"]] for t in manifest["inputs"]]
    return sizes, ins, [[size_at(d, sizes) for d in t["shape"]] for t in manifest["outputs"]]


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


class Tensor:
    """What the loader needs of one argument: shape, dtype name, contiguity, pointer and device (type and
    ordinal; ordinal None when the object does not say, as with __cuda_array_interface__). A plain class:
    dataclasses need the module in sys.modules, which a loader imported by path need not be."""

    def __init__(self, shape: tuple[int, ...], dtype: str, contiguous: bool, pointer: int, device: str,
                 ordinal: int | None, keep: Any = None) -> None:
        self.shape, self.dtype, self.contiguous, self.pointer = shape, dtype, contiguous, pointer
        self.device, self.ordinal = device, ordinal
        self.keep = keep  # a DLPack capsule, alive until the launch is queued


def _row_major(shape: tuple[int, ...], strides: tuple[int, ...], unit: int) -> bool:
    """Whether `strides` (in units of `unit`) are those of a C-contiguous `shape` (size-1 dims ignored)."""
    step = unit
    for n, st in zip(reversed(shape), reversed(strides)):
        if n != 1 and st != step:
            return False
        step *= n
    return True


def _from_dlpack(x: Any) -> Tensor:
    device_type, ordinal = (int(v) for v in x.__dlpack_device__())
    capsule = x.__dlpack__()
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    try:
        t = _DLTensor.from_address(get(capsule, b"dltensor"))
    except ValueError:
        raise BundleInputError(f"{type(x).__name__}.__dlpack__() did not return a DLPack capsule") from None
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    contiguous = not t.strides or _row_major(shape, tuple(int(t.strides[i]) for i in range(t.ndim)), 1)
    code = (int(t.dtype.code), int(t.dtype.bits))
    dtype = _DL_DTYPES.get(code, f"dlpack{code}") if t.dtype.lanes == 1 else f"dlpack{code}x{t.dtype.lanes}"
    return Tensor(shape, dtype, contiguous, int(t.data or 0) + int(t.byte_offset),
                  _DL_DEVICES.get(device_type, f"dlpack device {device_type}"), ordinal, capsule)


def describe(x: Any) -> Tensor:
    """A torch tensor, a DLPack object (__dlpack__ and __dlpack_device__) or a __cuda_array_interface__ object,
    described without touching the driver."""
    if type(x).__module__.startswith("torch"):
        return Tensor(tuple(x.shape), str(x.dtype).removeprefix("torch."), bool(x.is_contiguous()), int(x.data_ptr()),
                      x.device.type, x.device.index)
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        return _from_dlpack(x)
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is None:
        raise BundleInputError(f"{type(x).__name__} is neither a torch tensor nor an object with __dlpack__ or "
                               "__cuda_array_interface__")
    shape = tuple(int(s) for s in cai["shape"])
    typestr = str(cai["typestr"])
    names = {ts: name for name, (_, ts) in DTYPES.items() if ts is not None}
    strides = cai.get("strides")
    contiguous = strides is None or _row_major(shape, tuple(strides), int(typestr[2:]))
    return Tensor(shape, DTYPES[names[typestr]][0] if typestr in names else typestr, contiguous, int(cai["data"][0]),
                  "cuda", None)


def check_tensors(what: str, given: list[Any], specs: list[dict[str, Any]]) -> list[Tensor]:
    """`given` described, after checking count, device type, dtype, shape and contiguity."""
    if len(given) != len(specs):
        names = ", ".join(s["name"] for s in specs)
        raise BundleInputError(f"expected {len(specs)} {what} ({names}), got {len(given)}")
    out = []
    for x, spec in zip(given, specs):
        t = describe(x)
        label = f"{what[:-1]} {spec['name']!r}"
        want_dtype = DTYPES.get(spec["dtype"], (spec["dtype"], None))[0]
        if t.device not in ("cuda", "cuda_managed"):
            raise BundleInputError(f"{label}: expected a CUDA tensor, got one on {t.device}")
        if t.dtype != want_dtype:
            raise BundleInputError(f"{label}: expected dtype {want_dtype} ({spec['dtype']}), got {t.dtype}")
        if list(t.shape) != list(spec["shape"]):
            raise BundleInputError(f"{label}: expected shape {list(spec['shape'])}, got {list(t.shape)}")
        if not t.contiguous:
            raise BundleInputError(f"{label}: expected a contiguous (row-major) tensor")
        out.append(t)
    return out


def same_device(tensors: list[tuple[str, Tensor]]) -> int | None:
    """The one device ordinal the named tensors are on (None when none of them says); BundleInputError
    naming them when they are on different devices."""
    known = [(name, t.ordinal) for name, t in tensors if t.ordinal is not None]
    if len({o for _, o in known}) > 1:
        where = ", ".join(f"{name} on cuda:{o}" for name, o in known)
        raise BundleInputError(f"the tensors are on different devices ({where}); a run uses one device")
    return known[0][1] if known else None


class Bundle:
    """A checked bundle: run(*inputs) launches its kernels in order on the inputs' device."""

    def __init__(self, root: Path = HERE) -> None:
        self.root = root
        self.manifest = read_manifest(root)
        self.name = self.manifest["name"]
        self.inputs = self.manifest["inputs"]
        self.outputs = self.manifest["outputs"]
        self.workspace_bytes = int(self.manifest["workspace_bytes"])
        self._driver: Any = None  # NAME_cuda.GpuRuntime, made on the first launch

    def runtime(self) -> Any:
        """The GPU runtime (driver and per-device modules), made once."""
        if self._driver is None:
            if not self.manifest["variants"]:
                raise BundleError(f"{self.root}: bundle {self.name} has no GPU build; export it with --targets sm_XX")
            self._driver = _part("cuda").GpuRuntime(self.root, self.manifest, _errors())
        return self._driver

    def launch(self, ordinal: int, inputs: list[int], outputs: list[int], workspace: int, stream: int = 0) -> None:
        """Launch every kernel on device `ordinal` on device pointers (already checked) and a CUstream."""
        modules = self.runtime().modules(ordinal)
        if modules.variant["workspace_bytes"] and not workspace:
            raise BundleInputError(f"{self.name} needs a workspace of {self.workspace_bytes} bytes")
        modules.launch(inputs, outputs, workspace, stream)

    def run(self, *inputs: Any, out: list[Any] | None = None, workspace: Any = None, stream: int | None = None) -> Any:
        """Run on torch tensors (outputs allocated unless `out`), DLPack or __cuda_array_interface__ objects
        (`out` and, when workspace_bytes > 0, `workspace` required); returns the output(s). Every tensor must
        be on one device; the kernels run there, in its primary context."""
        ins = check_tensors("inputs", list(inputs), self.inputs)
        torch_in = bool(inputs) and type(inputs[0]).__module__.startswith("torch")
        if out is None:
            if not torch_in:
                raise BundleInputError("pass out=[...] (and workspace=) when the inputs are not torch tensors")
            out = self._alloc_outputs(inputs[0])
        outs = check_tensors("outputs", list(out), self.outputs)
        named = [(s["name"], t) for s, t in zip(self.inputs + self.outputs, ins + outs)]
        ordinal = same_device(named)
        if workspace is None and torch_in and self.workspace_bytes:
            workspace = self._torch_empty(inputs[0], self.workspace_bytes)
        ws = None if workspace is None else describe(workspace)
        if ws is not None:
            ordinal = same_device(named + [("workspace", ws)])
        if ordinal is None:  # only __cuda_array_interface__ objects: ask the driver where they live
            ordinal = self._device_of(named)
        if stream is None:
            stream = _torch_stream(inputs[0]) if torch_in else 0
        self.launch(ordinal, [t.pointer for t in ins], [t.pointer for t in outs], 0 if ws is None else ws.pointer,
                    stream)
        return out[0] if len(out) == 1 else tuple(out)

    def _device_of(self, named: list[tuple[str, Tensor]]) -> int:
        rt = self.runtime()
        for _, t in named:
            t.ordinal = rt.device_of(t.pointer)
        return same_device(named) or 0

    def _alloc_outputs(self, like: Any) -> list[Any]:
        import torch

        return [torch.empty(o["shape"], dtype=getattr(torch, DTYPES[o["dtype"]][0]), device=like.device)
                for o in self.outputs]

    @staticmethod
    def _torch_empty(like: Any, nbytes: int) -> Any:
        import torch

        return torch.empty(nbytes, dtype=torch.uint8, device=like.device)


def _errors() -> Any:
    """The error classes and the size binding, for the bundle's NAME_cuda.py and NAME_cpu.py."""
    return types.SimpleNamespace(BundleError=BundleError, BundleInputError=BundleInputError, bind_sizes=bind_sizes)


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
        _CPU[num_threads] = _part("cpu").CpuBundle(bundle.root, bundle.manifest, _errors(), DTYPES, num_threads)
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
