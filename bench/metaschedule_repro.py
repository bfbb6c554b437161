"""Reproducer: apache-tvm 0.27.0.post1 with apache-tvm-ffi 0.1.15.x segfaults in tvm::ffi::ToJSONGraph.

ToJSONGraph (behind tvm.ir.save_json) crashes on any object with a DLDataType field, e.g. ir.PrimType,
which every PrimExpr holds as its `ty`; a DataType on its own serialises fine. MetaSchedule calls it
while initialising a TuneContext for the PrimFunc, so tune_tir dies before its first trial.

    apache-tvm-ffi 0.1.15.post2 (all cases), 0.1.15.post1 (primtype): SIGSEGV, exit -11
    apache-tvm-ffi 0.1.14.post1 (all cases), 0.1.14.post0 (primtype): pass

Usage: python bench/metaschedule_repro.py            # runs each case in a subprocess, prints exit codes
       python bench/metaschedule_repro.py CASE       # one case in this process (primtype, intimm, tune)
Workaround: pip install "apache-tvm-ffi==0.1.14.post1" (MetaSchedule's builder/runner also need cloudpickle,
TVM's popen-pool extra).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import subprocess
import sys
import tempfile
from importlib.metadata import version


def case_primtype() -> None:
    """The smallest crash: an object whose only non-null field is a DLDataType."""
    import tvm

    print(tvm.ir.save_json(tvm.ir.PrimType("float32"))[:120])


def case_intimm() -> None:
    """Any PrimExpr: IntImm -> ty: PrimType -> dtype."""
    import tvm

    print(tvm.ir.save_json(tvm.tirx.IntImm("int32", 3))[:120])


def case_tune() -> None:
    """The path the benchmark takes: tune_tir on a 256^3 f32 GEMM, 8 trials."""
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms
    from tvm.target import codegen

    a = te.placeholder((256, 256), "float32", name="A")
    b = te.placeholder((256, 256), "float32", name="B")
    r = te.reduce_axis((0, 256), name="k")
    c = te.compute((256, 256), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b, c])})
    target = tvm.target.Target({"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": 2})
    # Each build batch starts fresh popen workers whose first build imports tvm.s_tir.tensor_intrin
    # (~45 s here); importing it in the initializer keeps that out of the 30 s per-build timeout.
    # Without cloudpickle the default builder still shows the crash, which comes first.
    warm = functools.partial(importlib.import_module, "tvm.s_tir.tensor_intrin")
    have_cloudpickle = importlib.util.find_spec("cloudpickle") is not None
    builder = ms.builder.LocalBuilder(initializer=warm) if have_cloudpickle else "local"
    with tempfile.TemporaryDirectory() as work:
        db = ms.tune_tir(mod, target, work, max_trials_global=8, num_trials_per_iter=8, seed=0,
                         database="memory", builder=builder)
        print("best schedule found:", ms.tir_integration.compile_tir(db, mod, target) is not None)


CASES = {"primtype": case_primtype, "intimm": case_intimm, "tune": case_tune}


def main() -> None:
    if len(sys.argv) > 1:
        CASES[sys.argv[1]]()
        return
    print(f"apache-tvm {version('apache-tvm')}, apache-tvm-ffi {version('apache-tvm-ffi')}")
    for name in CASES:
        proc = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True)
        crashed = "ToJSONGraph" in proc.stderr
        lines = proc.stdout.strip().splitlines()
        note = "segfault in tvm::ffi::ToJSONGraph" if crashed else (lines[-1][:80] if lines else "")
        print(f"{name:<9} exit {proc.returncode:>4}  {note}")


if __name__ == "__main__":
    main()
