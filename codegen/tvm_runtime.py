"""Building and running TVM (LLVM, host CPU) kernels, with a content-addressed library cache.

`build(spec, config, cache)` lowers a KernelSpec to TIR (the family's registered tvm template), applies the Config's
schedule, compiles it with `tvm.compile` for the host CPU and returns a callable `TvmKernel`.
The exported shared library is stored in a BuildCache under the sha256 of {workload key, config,
TVM version, target, schema}; a later build of the same kernel loads it and compiles nothing.
"""

from __future__ import annotations

import functools
import json
import math
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Mapping, Sequence

import numpy as np

from ..schedule.config import Config
from ..fileio import write_atomic
from ..ir import dtypes as dt
from ..ir.dims import resolve
from .cache import BuildCache
from .headers import header
from .lowering import LoweringError

FP8 = (dt.f8e4m3, dt.f8e5m2)

if TYPE_CHECKING:
    import tvm

    from ..kernels.base import KernelSpec  # annotations only: codegen never imports kernels

log = logging.getLogger(__name__)

# 2: buffers declared aligned to their element size, not 64 bytes (tvm_expr.element_aligned); a library of
# schema 1 given an element-aligned array zero-copy could fault on an aligned vector load
SCHEMA_VERSION = 2
LIBRARY = "kernel.so"


@functools.lru_cache(maxsize=1)
def host_target() -> dict[str, str]:
    """The LLVM target of this machine's CPU (`-mcpu=native`), as TVM's JSON target dict."""
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())}


def scheduled_module(spec: KernelSpec, config: Config) -> tvm.IRModule:
    """The scheduled TIR module of `spec` under `config` (deterministic)."""
    import tvm

    fam = spec.template("tvm")
    mod = fam.build_module(spec, config)
    # every template's buffers, however it builds its PrimFunc (te or the TVMScript IRBuilder), assume element
    # alignment only: the runner hands element-aligned arrays over without a copy (zero_copy_ok)
    mod = tvm.IRModule({gv.name_hint: element_aligned(f) for gv, f in mod.functions.items()})
    return fam.schedule(mod, spec, config)


def source(spec: KernelSpec, config: Config) -> str:
    """The scheduled TIR script, opened by a header naming the kernel, family and config."""
    return header(spec, config, "tvm") + scheduled_module(spec, config).script() + "\n"


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of the tilefuse sources that write TIR (ir, schedule, codegen, kernels), read once per process.
    The workload key says what a kernel computes, not how this version's templates lower it: without this, a
    persistent cache kept serving the libraries an older template built (correct, but not the new code)."""
    return tree_fingerprint(Path(__file__).resolve().parents[1])


def tree_fingerprint(root: Path) -> str:
    """sha256 over the paths and bytes of the .py files under root/{ir, schedule, codegen, kernels}."""
    import hashlib

    h = hashlib.sha256()
    for sub in ("ir", "schedule", "codegen", "kernels"):
        for f in sorted((root / sub).rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def cache_payload(spec: KernelSpec, config: Config) -> dict[str, Any]:
    """Everything that determines the built library, as JSON data (hashed into the cache key)."""
    import tvm

    # The kernel's name is the library's exported symbol: equal workloads with different names
    # (k0_copy, k3_copy) are different libraries.
    return {"kind": "tvm-llvm-library", "schema": SCHEMA_VERSION, "workload": spec.code_key, "symbol": spec.name,
            "config": json.loads(config.to_json()), "tvm": str(tvm.__version__), "target": host_target(),
            "code": code_fingerprint()}


def _np_dtype(d: dt.DType) -> Any:
    if d in FP8:
        return np.uint8  # the bytes (codegen/tvm_expr.tvm_storage_dtype)
    if d.packed:
        raise LoweringError(f"tvm: dtype {d} is not supported by the tvm backend")
    return dt.storage_numpy(d)


def fp8_bytes(a: Any, d: dt.DType) -> np.ndarray:
    """The bytes of an fp8 input: fp8 values (held as floats, dtypes.to_numpy) encoded with ml_dtypes;
    an array of ml_dtypes fp8 or of uint8 is viewed as it is."""
    import ml_dtypes

    enc = ml_dtypes.float8_e4m3fn if d == dt.f8e4m3 else ml_dtypes.float8_e5m2
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a
    return np.ascontiguousarray(a if a.dtype == enc else a.astype(np.float32).astype(enc)).view(np.uint8)


def fp8_values(b: np.ndarray, d: dt.DType) -> np.ndarray:
    """The values of fp8 bytes `b` (u8), as ml_dtypes fp8."""
    import ml_dtypes

    return np.ascontiguousarray(b).view(ml_dtypes.float8_e4m3fn if d == dt.f8e4m3 else ml_dtypes.float8_e5m2)


class TvmKernel:
    """A built kernel: call it on numpy arrays (inputs, outputs), or time it."""

    def __init__(self, spec: KernelSpec, config: Config, module: Any, shapes: list[tuple[int, ...]],
                 key: str, compiled: bool, path: Path | None = None):
        self.name = spec.name
        self.config = config
        self.module = module
        self.shapes = shapes
        self.dtypes = [b.dtype for b in list(spec.inputs) + list(spec.outputs)]
        self.n_inputs = len(spec.inputs)
        self.size_names = spec.size_params()  # dynamic sizes, passed after the arrays
        self.bound_sizes = spec.bound_sizes()  # their values when a caller gives none (a tuning measurement)
        self.host_aux = spec.host_aux  # auxiliary arrays passed after the outputs (attention's block lists)
        self.key = key
        self.compiled = compiled  # False when the library came from the cache
        self.path = path
        self.func = module[spec.name]
        self._layouts: dict[tuple[tuple[str, int], ...], Any] = {}

    @property
    def from_cache(self) -> bool:
        """Whether the library was loaded from the build cache (no compiler work)."""
        return not self.compiled

    def _args(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
              alias_outputs: bool = True, sizes: Mapping[str, int] | None = None) -> list[Any]:
        """TVM tensors for the packed function: inputs, outputs, the spec's auxiliary arrays for these
        inputs (KernelSpec.host_aux), then the dynamic sizes' ints. An argument that is already C-contiguous,
        of the storage dtype and aligned to its element size (what the compiled code assumes) is passed without a
        copy (DLPack); other inputs are copied into aligned tensors, and other outputs (or every output
        unless `alias_outputs`) get their own tensors, which `_copy_out` copies back."""
        import tvm
        import tvm_ffi

        if len(inputs) != self.n_inputs or len(outputs) != len(self.shapes) - self.n_inputs:
            raise ValueError(f"{self.name}: expected {self.n_inputs} inputs and "
                             f"{len(self.shapes) - self.n_inputs} outputs, got {len(inputs)} and {len(outputs)}")
        dev = tvm.cpu()
        args = []
        sizes = sizes or self.bound_sizes
        for i, (a, (shape, n, want, d, fp8)) in enumerate(zip(list(inputs) + list(outputs), self._layout(sizes))):
            if int(np.size(a)) != n:
                raise ValueError(f"{self.name}: argument {i} has {np.size(a)} elements, expected {n} "
                                 f"(shape {list(shape)}, dtype {d})")
            is_input = i < self.n_inputs
            if fp8:
                a = fp8_bytes(a, d)
            if (is_input or alias_outputs) and zero_copy_ok(a, want) and (is_input or a.flags.writeable):
                try:
                    args.append(tvm_ffi.from_dlpack(a.reshape(shape), require_alignment=want.itemsize,
                                                    require_contiguous=True))
                    continue
                except (BufferError, RuntimeError, TypeError):
                    pass  # e.g. a read-only array numpy will not export: copy it
            if is_input:
                args.append(tvm.runtime.tensor(np.ascontiguousarray(np.asarray(a).astype(want, copy=False))
                                               .reshape(shape), dev))
            else:
                args.append(tvm.runtime.empty(shape, str(want), dev))
        aux = self.host_aux(self.config, list(inputs), sizes if self.size_names else None)
        args += [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in aux]
        return args + [int(sizes[n]) for n in self.size_names]

    def _layout(self, sizes: Mapping[str, int]) -> list[tuple[tuple[int, ...], int, np.dtype, dt.DType, bool]]:
        """(shape, elements, storage dtype, dtype, is fp8) of every argument at `sizes`, worked out once per
        sizes (the per-call cost of a decode GEMV is a few tens of microseconds of this)."""
        key = tuple(sorted(sizes.items()))
        if key not in self._layouts:
            shapes = [resolve(tuple(s), sizes) for s in self.shapes]
            self._layouts[key] = [(shape, math.prod(shape), np.dtype(_np_dtype(d)), d, d in FP8)
                                  for shape, d in zip(shapes, self.dtypes)]
        return self._layouts[key]

    def __call__(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                 sizes: Mapping[str, int] | None = None) -> None:
        """Run on numpy arrays; the results are written into `outputs` (any shape with the right size).
        `sizes` gives the value of each dynamic size the kernel takes (size_names)."""
        args = self._args(inputs, outputs, sizes=sizes)
        self.func(*args)
        self._copy_out(args, outputs)

    def _copy_out(self, args: list[Any], outputs: Sequence[np.ndarray]) -> None:
        for out, arg, d in zip(outputs, args[self.n_inputs:], self.dtypes[self.n_inputs:]):
            if isinstance(out, np.ndarray) and arg.data_ptr() == data_address(out):
                continue  # written in place
            got = arg.numpy()
            if d in FP8 and np.dtype(out.dtype) != np.uint8:
                got = fp8_values(got, d)  # the kernel wrote bytes; a float or ml_dtypes array gets the values
            out[...] = got.reshape(out.shape).astype(out.dtype, copy=False)

    def time(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray], number: int = 10,
             repeat: int = 3, sizes: Mapping[str, int] | None = None) -> list[float]:
        """Seconds per run: `repeat` samples, each the mean of `number` runs after one warm-up run
        (array conversion excluded); the results are written into `outputs`."""
        args = self._args(inputs, outputs, sizes=sizes)
        self.func(*args)
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                self.func(*args)
            samples.append((time.perf_counter() - t0) / number)
        self._copy_out(args, outputs)
        return samples


ALIGNMENT = 64  # bytes: buffers the executor allocates start on this boundary (a cache line)


def zero_copy_ok(a: Any, dtype: np.dtype) -> bool:
    """Whether `a` can be handed to a TVM kernel as is: a C-contiguous ndarray of `dtype` whose data
    is aligned to its element size (the kernels assume no more: tvm_expr.element_aligned)."""
    return (isinstance(a, np.ndarray) and a.dtype == dtype and a.flags.c_contiguous
            and data_address(a) % dtype.itemsize == 0)


def data_address(a: np.ndarray) -> int:
    """The address of `a`'s first element (what `a.ctypes.data` says, without building a ctypes object: ~10 us
    of a decode GEMV's call)."""
    return int(a.__array_interface__["data"][0])


def element_aligned(func: Any) -> Any:
    """`func` with every buffer parameter declared aligned to its element size only (TVM assumes 64 bytes):
    numpy allocates large arrays 16 bytes past a page boundary, and a kernel assuming 64 could not take
    them without a copy (codegen/tvm_runtime.py passes element-aligned arrays zero-copy). LLVM then emits
    unaligned vector loads, as fast as aligned ones on aligned data on current x86 cores."""
    import tvm
    from tvm import tirx
    from tvm.tirx.buffer import is_buffer_var
    from tvm.tirx.transform.common import BufferReplacer

    repl = {}
    for p in func.params:
        if is_buffer_var(p):
            t = p.ty
            align = max(1, tvm.runtime.DataType(str(t.dtype)).bits // 8)
            repl[p] = tirx.decl_buffer(t.shape, t.dtype, p.name, strides=t.strides, elem_offset=t.elem_offset,
                                       data_alignment=align, offset_factor=t.offset_factor)
    return BufferReplacer(repl)(func) if repl else func


def aligned_empty(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array whose data is ALIGNMENT-aligned (numpy aligns to 16)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n + ALIGNMENT, dtype=np.uint8)
    off = -data_address(raw) % ALIGNMENT
    return raw[off:off + n].view(dtype).reshape(tuple(shape))


def _install(data: bytes, path: Path) -> None:
    """Write `data` to `path` atomically (temp file + os.replace) unless an identical file is there."""
    if path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    write_atomic(path, data)


def compile_library(spec: KernelSpec, config: Config) -> bytes:
    """Compile `spec` under `config` for the host CPU; the exported shared library's bytes."""
    import tvm

    mod = scheduled_module(spec, config)
    exe = tvm.compile(mod, target=host_target())
    with tempfile.TemporaryDirectory(prefix="tilefuse-tvm-") as tmp:
        path = os.path.join(tmp, LIBRARY)
        exe.export_library(path)
        with open(path, "rb") as fh:
            return fh.read()


def default_threads() -> int:
    """One thread per physical core this process may run on."""
    avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or avail
    except ImportError:  # pragma: no cover - psutil is a dependency
        physical = avail
    return max(1, min(physical, avail))


_THREADS_SET: list[int] = []


def configure_threads() -> int:
    """Run CPU kernels on TILEFUSE_THREADS threads, else one per physical core (default_threads).

    TVM sizes its thread pool from TVM_NUM_THREADS when the pool is first made, else from half the
    logical CPUs on x86 (it assumes two SMT threads per core): on a 2-vCPU machine with one thread
    per core that is a single thread, and f32 1024^3 ran at 118 GFLOP/s on one core while numpy used
    both. So the count is set explicitly, before the first kernel runs; a pool that already exists
    with another size is reconfigured. Returns the thread count in effect."""
    import tvm

    from ..settings import get_settings

    want = get_settings().threads or int(os.environ.get("TVM_NUM_THREADS", "0") or 0) or default_threads()
    if _THREADS_SET == [want]:
        return want
    os.environ["TVM_NUM_THREADS"] = str(want)  # read when TVM creates its pool
    num_threads = tvm.get_global_func("runtime.NumThreads")
    if int(num_threads()) != want:
        tvm.get_global_func("runtime.config_threadpool")(1, want)  # mode 1: big cores, `want` threads
    got = int(num_threads())
    if got != want:
        log.warning("tvm runs CPU kernels on %d threads, not the %d asked for (its pool was made earlier)",
                    got, want)
    _THREADS_SET[:] = [want]
    return got


def build(spec: KernelSpec, config: Config, cache: BuildCache | None = None) -> TvmKernel:
    """Build (or load from `cache`) the TVM kernel of `spec` under `config`."""
    import tvm

    configure_threads()

    fam = spec.template("tvm")  # LoweringError before any cache lookup when the family has no tvm template
    payload = cache_payload(spec, config)
    key = (cache or BuildCache(tempfile.gettempdir())).key(payload)
    files = cache.get(key) if cache is not None else None
    if files is not None and LIBRARY not in files:
        files = None
    compiled = files is None
    data = compile_library(spec, config) if files is None else files[LIBRARY]
    if cache is not None and compiled:
        cache.put(key, {LIBRARY: data})
    if cache is not None:
        path = cache.root / "loaded" / f"{key}.so"
        _install(data, path)
        module = tvm.runtime.load_module(str(path))
        return TvmKernel(spec, config, module, fam.arg_shapes(spec), key, compiled, path)
    with tempfile.TemporaryDirectory(prefix="tilefuse-tvm-") as tmp:
        path = Path(tmp) / LIBRARY
        path.write_bytes(data)
        module = tvm.runtime.load_module(str(path))
    return TvmKernel(spec, config, module, fam.arg_shapes(spec), key, compiled, None)
