"""Ahead-of-time Triton builds: Python source text -> PTX + cubin for one sm_XX, no GPU needed.

The source is written to a real file and imported, because Triton reads a kernel's source with
``inspect.getsource``. ``triton.compile`` with an explicit ``GPUTarget`` needs no driver.

``TRITON_INTERPRET=1`` makes ``@triton.jit`` return an ``InterpretedFunction`` (the decision is
``triton.knobs.runtime.interpret``, read from the environment each time a function is
decorated), which cannot be compiled. Two cases:

* Triton was imported with the interpreter off: the generated module is imported inside
  ``triton.knobs.runtime.scope()`` with the knob forced off; the scope restores the knob and
  the environment variable afterwards, so interpreter tests in the same process are unaffected.
* Triton was imported with ``TRITON_INTERPRET=1`` (the usual test setup): Triton's own
  ``@jit`` library (``tl.zeros``, ``tl.cdiv``, ``tl.sum``...) is already interpreted, and running
  interpreted kernels patches ``triton.language`` in place, so this process cannot compile.
  The build then runs in a fresh ``python`` subprocess with the interpreter off.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import TilefuseError
from .cache import BuildCache, canonical_json
from .resources import ResourceReport, report_from_cubin

__all__ = ["AOT_SCHEMA_VERSION", "AOTError", "TritonBinary", "build_key_payload", "build_triton", "load_jit_function",
           "triton_version"]

logger = logging.getLogger(__name__)

AOT_SCHEMA_VERSION = 1
SUBPROCESS_TIMEOUT_S = 600.0
_INT_TYPES = ("i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64")
_PTX_FILE = "kernel.ptx"
_CUBIN_FILE = "kernel.cubin"
_META_FILE = "metadata.json"

_import_lock = threading.Lock()
_modules: dict[str, ModuleType] = {}
_source_dir: Path | None = None


class AOTError(TilefuseError, RuntimeError):
    """An ahead-of-time build failed; the message names the kernel, the arch and what went wrong."""


@dataclasses.dataclass(frozen=True)
class TritonBinary:
    """One kernel compiled for one GPU architecture, with its static resource report."""

    arch: int
    fn_name: str
    ptx: str
    cubin: bytes
    shared_mem_bytes: int
    num_warps: int
    num_stages: int
    compile_seconds: float
    resources: ResourceReport
    key: str = ""
    from_cache: bool = False
    # Triton's launch metadata (JSON scalars/lists), kept for launchers; not part of identity.
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False, repr=False)


def triton_version() -> str:
    """Return the installed Triton version (part of every build key)."""
    import triton

    return str(triton.__version__)


def build_key_payload(source: str, fn_name: str, signature: dict[str, str], constexprs: dict[str, Any], *,
                      arch: int, num_warps: int, num_stages: int,
                      divisible_by_16: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return the canonical payload whose sha256 identifies a build; every field changes the kernel."""
    return {
        "kind": "triton_aot",
        "source": source,
        "fn_name": fn_name,
        "signature": dict(signature),
        "constexprs": dict(constexprs),
        "arch": int(arch),
        "num_warps": int(num_warps),
        "num_stages": int(num_stages),
        "divisibility": sorted(set(divisible_by_16)),
        "triton_version": triton_version(),
        "aot_schema": AOT_SCHEMA_VERSION,
    }


def _payload_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(payload).encode("ascii")).hexdigest()


def _get_source_dir() -> Path:
    global _source_dir
    if _source_dir is None:
        _source_dir = Path(tempfile.mkdtemp(prefix="tilefuse-aot-src-"))
        atexit.register(shutil.rmtree, _source_dir, True)
    return _source_dir


def load_jit_function(source: str, fn_name: str) -> Any:
    """Import `source` as a module from a real file and return its compilable ``@triton.jit`` `fn_name`."""
    import triton
    from triton.runtime.jit import JITFunction

    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:24]
    module_name = f"_tilefuse_aot_{digest}"
    with _import_lock:
        module = _modules.get(module_name)
        if module is None:
            path = _get_source_dir() / f"{module_name}.py"
            path.write_text(source, encoding="utf-8")
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise AOTError(f"cannot import generated Triton source written to {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                # Force the JIT (not the interpreter) while the decorators run; scope() restores
                # triton.knobs.runtime and TRITON_INTERPRET in os.environ on exit.
                with triton.knobs.runtime.scope():
                    triton.knobs.runtime.interpret = False
                    spec.loader.exec_module(module)
            except Exception as exc:
                sys.modules.pop(module_name, None)
                raise AOTError(f"importing the generated source for {fn_name!r} failed ({path}): {exc!r}") from exc
            _modules[module_name] = module
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise AOTError(f"generated source defines no {fn_name!r}; it must contain '@triton.jit def {fn_name}(...)'")
    if not isinstance(fn, JITFunction):
        raise AOTError(f"{fn_name!r} is a {type(fn).__name__}, not a @triton.jit function; it cannot be compiled AOT")
    return fn


def _full_signature(fn: Any, signature: dict[str, str], constexprs: dict[str, Any],
                    divisible_by_16: tuple[str, ...]) -> tuple[dict[str, str], dict[tuple[int, ...], Any]]:
    arg_names: list[str] = list(fn.arg_names)
    for group, names in (("signature", signature), ("constexprs", constexprs), ("divisible_by_16", divisible_by_16)):
        unknown = sorted(set(names) - set(arg_names))
        if unknown:
            raise AOTError(f"{group} names {unknown} that are not parameters of {fn.__name__}{tuple(arg_names)}")
    full: dict[str, str] = {}
    for name in arg_names:
        if name in constexprs:
            if signature.get(name, "constexpr") != "constexpr":
                raise AOTError(f"{fn.__name__}: {name!r} has a constexpr value but signature type {signature[name]!r}")
            full[name] = "constexpr"
        elif name in signature:
            if signature[name] == "constexpr":
                raise AOTError(f"{fn.__name__}: {name!r} is typed constexpr but has no value in constexprs")
            full[name] = signature[name]
        else:
            raise AOTError(f"{fn.__name__}: parameter {name!r} has neither a signature type (e.g. '*fp16', 'i32') "
                           "nor a constexpr value")
    attrs: dict[tuple[int, ...], Any] = {}
    for name in sorted(set(divisible_by_16)):
        ty = full[name]
        if not (ty.startswith("*") or ty in _INT_TYPES):
            raise AOTError(f"{fn.__name__}: divisibility hint on {name!r} of type {ty!r}; accepted: pointer or "
                           f"integer arguments ({', '.join(_INT_TYPES)})")
        attrs[(arg_names.index(name),)] = [["tt.divisibility", 16]]
    return full, attrs


def _json_metadata(metadata: Any) -> dict[str, Any]:
    raw = metadata._asdict() if hasattr(metadata, "_asdict") else dict(metadata)
    # Triton serialises its own metadata with default=vars (GPUTarget is a dataclass).
    result: dict[str, Any] = json.loads(json.dumps(raw, default=vars))
    return result


def _from_cache(files: dict[str, bytes], key: str) -> TritonBinary:
    meta = json.loads(files[_META_FILE].decode("utf-8"))
    return TritonBinary(
        arch=int(meta["arch"]),
        fn_name=str(meta["fn_name"]),
        ptx=files[_PTX_FILE].decode("utf-8"),
        cubin=files[_CUBIN_FILE],
        shared_mem_bytes=int(meta["shared_mem_bytes"]),
        num_warps=int(meta["num_warps"]),
        num_stages=int(meta["num_stages"]),
        compile_seconds=float(meta["compile_seconds"]),
        resources=ResourceReport.from_dict(meta["resources"]),
        key=key,
        from_cache=True,
        metadata=meta["triton"],
    )


def _to_cache(binary: TritonBinary) -> dict[str, bytes]:
    meta = {
        "arch": binary.arch,
        "fn_name": binary.fn_name,
        "shared_mem_bytes": binary.shared_mem_bytes,
        "num_warps": binary.num_warps,
        "num_stages": binary.num_stages,
        "compile_seconds": binary.compile_seconds,
        "resources": binary.resources.to_dict(),
        "triton": binary.metadata,
    }
    return {
        _PTX_FILE: binary.ptx.encode("utf-8"),
        _CUBIN_FILE: binary.cubin,
        _META_FILE: canonical_json(meta).encode("ascii"),
    }


def build_triton(source: str, fn_name: str, signature: dict[str, str], constexprs: dict[str, Any], *,
                 arch: int, num_warps: int, num_stages: int, divisible_by_16: tuple[str, ...] = (),
                 cache: BuildCache | None = None) -> TritonBinary:
    """Compile ``@triton.jit`` `fn_name` in `source` to PTX and cubin for sm_`arch`, using `cache` if given."""
    payload = build_key_payload(source, fn_name, signature, constexprs, arch=arch, num_warps=num_warps,
                                num_stages=num_stages, divisible_by_16=divisible_by_16)
    key = cache.key(payload) if cache is not None else _payload_key(payload)
    if cache is not None:
        files = cache.get(key)
        if files is not None:
            try:
                return _from_cache(files, key)
            except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
                logger.warning("build cache entry %s for %s is unusable (%r); rebuilding", key, fn_name, exc)

    request = {"source": source, "fn_name": fn_name, "signature": dict(signature), "constexprs": dict(constexprs),
               "arch": int(arch), "num_warps": int(num_warps), "num_stages": int(num_stages),
               "divisible_by_16": list(divisible_by_16)}
    if _process_can_compile():
        binary = _build_in_process(request, key)
    else:
        logger.info("triton in this process runs under TRITON_INTERPRET; building %s in a subprocess", fn_name)
        binary = _build_in_subprocess(request, key)
    logger.debug("built %s for sm_%d in %.2f s (key %s)", binary.fn_name, arch, binary.compile_seconds, key[:12])
    if cache is not None:
        cache.put(key, _to_cache(binary))
    return binary


def _process_can_compile() -> bool:
    """Whether triton.language in this process is the compiler's (not the interpreter's) version."""
    import triton.language as tl
    import triton.language.standard as standard
    from triton.runtime.jit import JITFunction

    # Imported under TRITON_INTERPRET=1, Triton's own @jit library is interpreted; after an
    # interpreted run, builtins such as tl.arange may remain replaced by interpreter lambdas.
    return (isinstance(standard.zeros, JITFunction) and tl.core.is_builtin(tl.arange)
            and tl.core.is_builtin(tl.core.tensor.__getitem__))


def _build_in_process(request: dict[str, Any], key: str) -> TritonBinary:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn_name: str = request["fn_name"]
    arch: int = request["arch"]
    num_warps: int = request["num_warps"]
    num_stages: int = request["num_stages"]
    fn = load_jit_function(request["source"], fn_name)
    full_signature, attrs = _full_signature(fn, request["signature"], request["constexprs"],
                                            tuple(request["divisible_by_16"]))
    src = ASTSource(fn=fn, signature=full_signature, constexprs=dict(request["constexprs"]), attrs=attrs)
    start = time.perf_counter()
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": num_warps, "num_stages": num_stages})
    except Exception as exc:
        raise AOTError(f"triton.compile of {fn_name!r} for sm_{arch} (num_warps={num_warps}, "
                       f"num_stages={num_stages}) failed: {exc}") from exc
    seconds = time.perf_counter() - start
    metadata = _json_metadata(compiled.metadata)
    cubin = compiled.asm.get("cubin")
    ptx = compiled.asm.get("ptx")
    if not isinstance(cubin, bytes) or not cubin or not isinstance(ptx, str):
        raise AOTError(f"triton.compile of {fn_name!r} for sm_{arch} produced no cubin/ptx")
    shared = int(metadata.get("shared", 0))
    return TritonBinary(
        arch=arch,
        fn_name=str(metadata.get("name", fn_name)),
        ptx=ptx,
        cubin=cubin,
        shared_mem_bytes=shared,
        num_warps=num_warps,
        num_stages=num_stages,
        compile_seconds=seconds,
        resources=report_from_cubin(cubin, shared),
        key=key,
        from_cache=False,
        metadata=metadata,
    )


def _build_in_subprocess(request: dict[str, Any], key: str, timeout_s: float = SUBPROCESS_TIMEOUT_S) -> TritonBinary:
    fn_name = request["fn_name"]
    env = dict(os.environ)
    env["TRITON_INTERPRET"] = "0"
    with tempfile.TemporaryDirectory(prefix="tilefuse-aot-out-") as out:
        request_path = Path(out) / "request.json"
        request_path.write_text(canonical_json({**request, "key": key}), encoding="utf-8")
        args = [sys.executable, "-m", "tilefuse.codegen.aot", str(request_path), out]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
        except subprocess.TimeoutExpired as exc:
            raise AOTError(f"building {fn_name!r} for sm_{request['arch']} in a subprocess timed out after "
                           f"{timeout_s:.0f} s") from exc
        if proc.returncode != 0:
            tail = proc.stderr.strip()[-4000:]
            raise AOTError(f"building {fn_name!r} for sm_{request['arch']} in a subprocess failed "
                           f"(exit {proc.returncode}):\n{tail}")
        files = {name: (Path(out) / name).read_bytes() for name in (_PTX_FILE, _CUBIN_FILE, _META_FILE)}
    return dataclasses.replace(_from_cache(files, key), from_cache=False)


def _subprocess_main(argv: list[str]) -> int:
    """Entry point of the build subprocess: request JSON path, output directory."""
    request_path, out = Path(argv[0]), Path(argv[1])
    request = json.loads(request_path.read_text(encoding="utf-8"))
    key = request.pop("key")
    if not _process_can_compile():
        raise AOTError("the build subprocess still imported triton under TRITON_INTERPRET")
    binary = _build_in_process(request, key)
    for name, data in _to_cache(binary).items():
        (out / name).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(_subprocess_main(sys.argv[1:]))
