"""Run by tests/test_export.py in a fresh interpreter: block the given top-level packages, import a bundle's
loader from its file, feed it bad tensors and print what it said, as JSON, on the last line."""

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
