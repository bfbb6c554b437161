"""The decoder MLP (examples/decoder_mlp.tf) on the CPU compiled once with a dynamic token count T vs
compiled once per T with T static, at T in {1, 16, 128, 1024}: the run time of each (dynamic over static,
the same inputs, timed in alternation, family default configs on both sides: the dynamic graph's config is its bucket's
default, chosen at the bucket's upper end), and the builds and compile time each way. Builds go to a
fresh cache directory, so every build is real. With `--tune N` both sides are tuned first, N trials per kernel
(random search, into a fresh database): the dynamic graph per size bucket with the buckets' upper ends at the
given T (`tune --buckets`; the buckets above the largest T are tuned too, at the range's top), each static graph
once; both then compile from that database, so each T runs a config tuned for it. Usage:
    python bench/dynamic_cpu.py [--quick] [--h 1024] [--i 2816] [--tokens 1 16 128 1024] [--reps 10] [--tune N]
                                [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "decoder_mlp.tf"


def paired_medians(fa: Any, fb: Any, reps: int) -> tuple[float, float]:
    """Median seconds of `fa` and of `fb` over `reps` rounds, each round timing one call of each back to back
    (after a warm-up call of both), so a shared machine's slow phases slow both alike."""
    fa()
    fb()
    ta, tb = [], []
    for _ in range(reps):
        for fn, ts in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return float(np.median(ta)), float(np.median(tb))


def count_builds() -> list[str]:
    """A list that grows by one kernel name per TVM library compiled (a spy on the real function)."""
    from tilefuse.codegen import tvm_runtime

    built: list[str] = []
    real = tvm_runtime.compile_library

    def spy(spec: Any, config: Any) -> bytes:
        built.append(spec.name)
        return real(spec, config)

    tvm_runtime.compile_library = spy  # type: ignore[assignment]
    return built


def machine() -> dict[str, Any]:
    """CPU, core count and versions, for the results file."""
    import tvm

    import tilefuse

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=EXAMPLE.parent, capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "tvm": str(tvm.__version__), "tilefuse": tilefuse.__version__, "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def run(h: int, i: int, tokens: list[int], reps: int, tune: int = 0) -> dict[str, Any]:
    """Compile both ways (after tuning both with `tune` trials per kernel and bucket), time both at every T;
    returns the results (see the module docstring)."""
    import tilefuse as tf
    from tilefuse.autotune.database import TuningDB
    from tilefuse.autotune.tune import tune_graph
    from tilefuse.compiler import check_against_reference
    from tilefuse.ir.sampling import random_inputs
    from tilefuse.ir.text import load_graph

    built = count_builds()
    g = load_graph(str(EXAMPLE), {"H": h, "I": i})
    db = TuningDB(str(Path(os.environ["TILEFUSE_CACHE_DIR"]) / "tuning.db")) if tune else None
    buckets = tokens if tune else None

    def tuned(graph: Any, **kw: Any) -> float:
        t0 = time.perf_counter()
        if tune:
            tune_graph(graph, "cpu", budget=tune, strategy="random", db=db, patience=None, **kw)
        return time.perf_counter() - t0

    dyn_tune = tuned(g, buckets=buckets)
    start = len(built)
    t0 = time.perf_counter()
    dyn = tf.compile(g, target="cpu", db=db, cost_model=None, buckets=buckets)
    dyn_compile = time.perf_counter() - t0
    dyn_builds = len(built) - start
    rows = []
    for t in tokens:
        inputs = random_inputs(g.at({"T": t}), seed=t)
        assert all(ok for *_, ok in check_against_reference(dyn, inputs=inputs)), f"dynamic wrong at T={t}"
        gs = load_graph(str(EXAMPLE), {"T": t, "H": h, "I": i})
        static_tune = tuned(gs)
        before = len(built)
        t0 = time.perf_counter()
        static = tf.compile(gs, target="cpu", db=db, cost_model=None)
        static_compile = time.perf_counter() - t0
        static_builds = len(built) - before
        t_dyn, t_static = paired_medians(lambda: dyn.run(inputs), lambda: static.run(inputs), reps)
        rows.append({"T": t, "dynamic_ms": t_dyn * 1e3, "static_ms": t_static * 1e3, "ratio": t_dyn / t_static,
                     "bucket": dyn.bucket({"T": t}).label(), "static_compile_s": static_compile,
                     "static_builds": static_builds, "static_tune_s": static_tune,
                     "dynamic_configs": [dict(ck.config) for ck in dyn.bucket({"T": t}).compiled.kernels],
                     "static_configs": [dict(ck.config) for ck in static.kernels]})
        print(f"T={t:<5} dynamic {t_dyn * 1e3:9.3f} ms  static {t_static * 1e3:9.3f} ms  dynamic/static "
              f"{t_dyn / t_static:5.2f}  (bucket {rows[-1]['bucket']}; static compile {static_compile:.1f} s, "
              f"{static_builds} builds)", flush=True)
        if tune:  # the same configs on both sides: what being dynamic costs, apart from what each tune found
            same = tf.compile(gs, target="cpu", cost_model=None,
                              configs={ck.spec.name: ck.config for ck in dyn.bucket({"T": t}).compiled.kernels})
            t_dyn2, t_same = paired_medians(lambda: dyn.run(inputs), lambda: same.run(inputs), reps)
            rows[-1].update({"dynamic_ms_2": t_dyn2 * 1e3, "static_same_configs_ms": t_same * 1e3,
                             "ratio_same_configs": t_dyn2 / t_same})
            print(f"        dynamic {t_dyn2 * 1e3:9.3f} ms  static with the bucket's configs {t_same * 1e3:9.3f} ms  "
                  f"dynamic/static {t_dyn2 / t_same:5.2f}", flush=True)
    if not tune:  # tuning builds too, between the compiles
        assert len(built) == dyn_builds + sum(r["static_builds"] for r in rows), "a dynamic call built something"
    per_t = sum(r["static_compile_s"] for r in rows)
    if tune:
        print(f"tuned with {tune} random trials per kernel: dynamic {dyn_tune:.0f} s for {len(dyn.buckets)} buckets, "
              f"static {sum(r['static_tune_s'] for r in rows):.0f} s for {len(tokens)} graphs (the compiles below "
              "then reuse the tuner's cached builds)")
    print(f"dynamic: compiled once in {dyn_compile:.1f} s, {dyn_builds} builds ({len(dyn.buckets)} buckets, "
          f"every T in 1..8192); static: {per_t:.1f} s and {sum(r['static_builds'] for r in rows)} builds "
          f"for these {len(tokens)} values of T only")
    return {"sizes": {"H": h, "I": i}, "tokens": tokens, "reps": reps, "rows": rows,
            "tune_budget": tune,
            "dynamic": {"compile_s": dyn_compile, "builds": dyn_builds, "buckets": len(dyn.buckets),
                        "tune_s": dyn_tune},
            "static_total": {"compile_s": per_t, "builds": sum(r["static_builds"] for r in rows)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="H=256, I=704")
    ap.add_argument("--h", type=int, default=1024)
    ap.add_argument("--i", type=int, default=2816)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 128, 1024])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--tune", type=int, default=0, metavar="N", help="tune both sides first, N trials per kernel "
                    "(and per bucket on the dynamic side)")
    ap.add_argument("--json", help="write the results (with the machine and versions) here")
    ap.add_argument("--note", default="", help="a note stored with the results (e.g. the machine's load)")
    args = ap.parse_args(argv)
    if args.quick:
        args.h, args.i = 256, 704
    os.environ["TILEFUSE_CACHE_DIR"] = tempfile.mkdtemp(prefix="tilefuse-bench-dynamic-")  # every build real
    result = {"machine": machine(), "note": args.note, **run(args.h, args.i, args.tokens, args.reps, args.tune)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
