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

import hashlib
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

WRITTEN_BY = "unset"  # the exporter writes its tilefuse version here
BUNDLE_FORMAT = 4
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


class Tensor:
    """What the loader needs of one argument: shape, dtype name, contiguity, pointer and device (type and
    ordinal; ordinal None when the object does not say, as with __cuda_array_interface__). A plain class:
    dataclasses need the module in sys.modules, which a loader imported by path need not be."""

    def __init__(self, shape: tuple[int, ...], dtype: str, contiguous: bool, pointer: int, device: str,
                 ordinal: int | None, keep: Any = None) -> None:
        self.shape, self.dtype, self.contiguous, self.pointer = shape, dtype, contiguous, pointer
        self.device, self.ordinal = device, ordinal
        self.keep = keep  # a DLPack capsule, alive until the launch is queued


def describe(x: Any) -> Tensor:
    """A torch tensor, a DLPack object (__dlpack__ and __dlpack_device__) or a __cuda_array_interface__ object,
    described without touching the driver."""
    if type(x).__module__.startswith("torch"):
        return Tensor(tuple(x.shape), str(x.dtype).removeprefix("torch."), bool(x.is_contiguous()), int(x.data_ptr()),
                      x.device.type, x.device.index)
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        return Tensor(**_part("cuda").from_dlpack(x, BundleInputError))
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is None:
        raise BundleInputError(f"{type(x).__name__} is neither a torch tensor nor an object with __dlpack__ or "
                               "__cuda_array_interface__")
    shape = tuple(int(s) for s in cai["shape"])
    typestr = str(cai["typestr"])
    names = {ts: name for name, (_, ts) in DTYPES.items() if ts is not None}
    strides = cai.get("strides")
    contiguous = strides is None or _part("cuda").row_major(shape, tuple(strides), int(typestr[2:]))
    return Tensor(shape, DTYPES[names[typestr]][0] if typestr in names else typestr, contiguous, int(cai["data"][0]),
                  "cuda", None)


def check_count(what: str, given: list[Any], specs: list[dict[str, Any]]) -> None:
    """BundleInputError unless `given` has one tensor per spec."""
    if len(given) != len(specs):
        names = ", ".join(s["name"] for s in specs)
        raise BundleInputError(f"expected {len(specs)} {what} ({names}), got {len(given)}")


def check_tensors(what: str, given: list[Any], specs: list[dict[str, Any]],
                  shapes: list[list[int]] | None = None) -> list[Tensor]:
    """`given` (objects, or Tensors already described) described, after checking count, device type, dtype,
    shape (`shapes`: a dynamic graph's at the run's sizes) and contiguity."""
    check_count(what, given, specs)
    out = []
    for i, (x, spec) in enumerate(zip(given, specs)):
        t = x if isinstance(x, Tensor) else describe(x)
        spec = spec if shapes is None else {**spec, "shape": shapes[i]}
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
        self.workspace_bytes = int(self.manifest["workspace_bytes"])  # the most any sizes need
        self.dynamic = "dynamic" in self.manifest
        self._driver: Any = None  # NAME_cuda.GpuRuntime, made on the first launch

    def runtime(self) -> Any:
        """The GPU runtime (driver and per-device modules), made once."""
        if self._driver is None:
            if not self.manifest["variants"]:
                raise BundleError(f"{self.root}: bundle {self.name} has no GPU build; export it with --targets sm_XX")
            self._driver = _part("cuda").GpuRuntime(self.root, self.manifest, _errors())
        return self._driver

    def launch(self, ordinal: int, inputs: list[int], outputs: list[int], workspace: int, stream: int = 0,
               sizes: dict[str, int] | None = None) -> None:
        """Launch the kernels (a dynamic graph's: those of the bucket serving `sizes`) on device `ordinal` on
        device pointers (already checked) and a CUstream."""
        modules = self.runtime().modules(ordinal)
        need = _part("cuda").bucket_of(modules.variant, sizes or {})["workspace_bytes"]
        if need and not workspace:
            raise BundleInputError(f"{self.name} needs a workspace of {need} bytes")
        modules.launch(inputs, outputs, workspace, stream, sizes)

    def run(self, *inputs: Any, out: list[Any] | None = None, workspace: Any = None, stream: int | None = None) -> Any:
        """Run on torch tensors (outputs allocated unless `out`), DLPack or __cuda_array_interface__ objects
        (`out` and, when workspace_bytes > 0, `workspace` required); returns the output(s). Every tensor must
        be on one device; the kernels run there, in its primary context. A graph with dynamic sizes reads
        them from the inputs' shapes (checked against their ranges first) and runs their bucket."""
        if not self.manifest["variants"]:
            raise BundleError(f"{self.root}: bundle {self.name} has no GPU build; export it with --targets sm_XX")
        check_count("inputs", list(inputs), self.inputs)
        given = [describe(x) for x in inputs]
        sizes, in_shapes, out_shapes = bind_sizes(self.manifest, [t.shape for t in given]) if self.dynamic \
            else ({}, None, None)
        ins = check_tensors("inputs", given, self.inputs, in_shapes)
        torch_in = bool(inputs) and type(inputs[0]).__module__.startswith("torch")
        if out is None:
            if not torch_in:
                raise BundleInputError("pass out=[...] (and workspace=) when the inputs are not torch tensors")
            out = self._alloc_outputs(inputs[0], out_shapes)
        outs = check_tensors("outputs", list(out), self.outputs, out_shapes)
        named = [(s["name"], t) for s, t in zip(self.inputs + self.outputs, ins + outs)]
        ordinal = same_device(named)
        need = _part("cuda").workspace_bytes_at(self.manifest, sizes) if self.dynamic else self.workspace_bytes
        if workspace is None and torch_in and need:
            workspace = self._torch_empty(inputs[0], need)
        ws = None if workspace is None else describe(workspace)
        if ws is not None:
            ordinal = same_device(named + [("workspace", ws)])
        if ordinal is None:  # only __cuda_array_interface__ objects: ask the driver where they live
            ordinal = self._device_of(named)
        if stream is None:
            stream = _torch_stream(inputs[0]) if torch_in else 0
        self.launch(ordinal, [t.pointer for t in ins], [t.pointer for t in outs], 0 if ws is None else ws.pointer,
                    stream, sizes)
        return out[0] if len(out) == 1 else tuple(out)

    def _device_of(self, named: list[tuple[str, Tensor]]) -> int:
        rt = self.runtime()
        for _, t in named:
            t.ordinal = rt.device_of(t.pointer)
        return same_device(named) or 0

    def _alloc_outputs(self, like: Any, shapes: list[list[int]] | None = None) -> list[Any]:
        import torch

        shapes = shapes or [o["shape"] for o in self.outputs]
        return [torch.empty(shape, dtype=getattr(torch, DTYPES[o["dtype"]][0]), device=like.device)
                for o, shape in zip(self.outputs, shapes)]

    @staticmethod
    def _torch_empty(like: Any, nbytes: int) -> Any:
        import torch

        return torch.empty(nbytes, dtype=torch.uint8, device=like.device)


def _errors() -> Any:
    """The error classes and the size binding, for the bundle's NAME_cuda.py and NAME_cpu.py."""
    return types.SimpleNamespace(BundleError=BundleError, BundleInputError=BundleInputError, bind_sizes=bind_sizes,
                                 size_at=size_at)


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
        sizes: dict[str, Any] = {}  # a dynamic size as the inputs' dim (a SymInt while tracing), not an int
        for spec, x in zip(bundle.inputs, inputs):
            for dim, got in zip(spec["shape"], x.shape):
                if isinstance(dim, list) and len(dim) == 1:
                    sizes.setdefault(dim[0], got)
        return [like.new_empty([size_at(d, sizes) for d in o["shape"]], dtype=getattr(torch, DTYPES[o["dtype"]][0]))
                for o in bundle.outputs]

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
