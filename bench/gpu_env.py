"""What the GPU benchmarks share: the run's device, target and timer, with a --dry-run under the Triton
interpreter on CPU (one untimed-quality wall-clock run per case: it only proves the cases work)."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any


def wall_ms(fn: Any, reps: int = 1) -> float:
    """Median wall-clock milliseconds of `fn()` (the dry run's timer: one run, the interpreter is slow)."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def setup(args: argparse.Namespace, script: str) -> dict[str, Any]:
    """Device, target, timer and device name for this run; `args.dry_run` selects the interpreter."""
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
        return {"device": "cpu", "target": "interp", "bench": wall_ms, "name": "cpu (dry run)"}
    import torch
    from triton.testing import do_bench

    assert torch.cuda.is_available(), f"{script} needs a CUDA GPU (or --dry-run)"
    major, _ = torch.cuda.get_device_capability()
    return {"device": "cuda", "target": args.target or ("sm_90" if major >= 9 else "sm_80"),
            "bench": lambda f: do_bench(f, return_mode="median"), "name": torch.cuda.get_device_name()}
