"""The gpu-check worker process: compile each named case for one target, run it on fresh inputs with
poisoned outputs and compare with the numpy reference, one JSON line per event on stdout.

    python -m tilefuse.gpu_check.worker --target sm_90 --seed 7 --examples DIR CASE...

The parent sets TRITON_INTERPRET before this process imports triton and restarts it on the cases
left when one hangs or kills it. Lines start with MARK so library output on stdout cannot be taken
for a result."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

MARK = "GPUCHECK "


def emit(event: dict[str, Any]) -> None:
    """One protocol line to the parent."""
    sys.stdout.write(MARK + json.dumps(event, sort_keys=True) + "\n")
    sys.stdout.flush()


def _sync(target: str) -> None:
    if target not in ("interp", "cpu"):
        import torch

        torch.cuda.synchronize()


def _median_run(cg: Any, inputs: dict[str, Any], target: str, reps: int = 5) -> float:
    """Median wall time of a whole run (inputs already in device memory), the device synchronised."""
    import torch

    from ..codegen.executors import torch_input

    dev = {n.attr("name"): torch_input(n.attr("name"), inputs[n.attr("name")], n.dtype, "cuda")
           for n in cg.graph.inputs}
    times = []
    for _ in range(reps):
        _sync(target)
        t0 = time.perf_counter()
        cg.run(dev)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[reps // 2]


def run_case(name: str, target: str, small: bool, examples: Path, seed: int) -> dict[str, Any]:
    """Compile and check case `name`; its result event (status ok or fail, timings, per-output errors)."""
    from ..compiler import check_against_reference, compile_graph
    from ..ir.sampling import random_inputs
    from .cases import build_case

    t0 = time.perf_counter()
    graph, inputs = build_case(name, small, examples, seed)
    ins = inputs if inputs is not None else random_inputs(graph, seed)
    t1 = time.perf_counter()
    cg = compile_graph(graph, target=target, db=None, cost_model=None)
    t2 = time.perf_counter()
    rows = check_against_reference(cg, seed, ins)  # first launch: loads (JIT-compiles) every kernel
    _sync(target)
    t3 = time.perf_counter()
    run_s = None if small else _median_run(cg, ins, target)  # interpreter timings mean nothing
    bad = [f"{out}: max |err| {err:.3e} > bound {bound:.3e}" for out, err, bound, ok in rows if not ok]
    return {"event": "result", "case": name, "status": "fail" if bad else "ok", "error": "; ".join(bad),
            "seconds": time.perf_counter() - t0,
            "details": {"graph": graph.name, "seed": seed, "target": target,
                        "kernels": [{"name": ck.spec.name, "family": ck.spec.family, "config": dict(ck.config),
                                     "config_source": ck.config_source} for ck in cg.kernels],
                        "families": sorted({ck.spec.family for ck in cg.kernels}),
                        "outputs": [{"name": o, "max_err": e, "bound": b, "ok": ok} for o, e, b, ok in rows],
                        "build_s": t1 - t0, "compile_s": t2 - t1, "check_s": t3 - t2, "run_s": run_s}}


def main(argv: list[str] | None = None) -> int:
    """Run every case named on the command line; exit 0 (results, failures included, are events)."""
    ap = argparse.ArgumentParser(prog="python -m tilefuse.gpu_check.worker")
    ap.add_argument("--target", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--examples", type=Path, required=True)
    ap.add_argument("--small", action="store_true", help="interpreter sizes")
    ap.add_argument("cases", nargs="*")
    args = ap.parse_args(argv)
    from ..kernels.registry import families

    emit({"event": "registry", "families": sorted(families())})
    for name in args.cases:
        emit({"event": "start", "case": name})
        t0 = time.perf_counter()
        try:
            result = run_case(name, args.target, args.small, args.examples, args.seed)
        except Exception as err:  # noqa: BLE001 - any failure of a case is that case's result
            result = {"event": "result", "case": name, "status": "fail", "seconds": time.perf_counter() - t0,
                      "error": f"{type(err).__name__}: {err}", "details": {"traceback": traceback.format_exc()}}
        emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
