"""CPU tuning benchmark: every search strategy at the same trial budget on f32 GEMMs (1024^3 and two
odd shapes) and on the decoder MLP (small sizes), plus TVM MetaSchedule on the same GEMMs.

Prints, per workload and strategy, the best time, the tuning wall time and the ratio to numpy
(numpy time / best time: > 1 is faster than numpy), and how many trials model-guided and random
search needed to come within 5% of the best config any strategy found. Each strategy gets its own
database and build cache, so none profits from another's work on the measured workloads.

A learned cost model is trained on what a device has tuned before; so first, unless --history-budget
is 0, random search tunes a few *other* GEMM shapes (--history-shapes, none of them measured below)
into a history database, and every strategy's database starts as a copy of it. Only model-guided
search reads that history (it trains XGBoost on it and starts from its winners); the others ignore
records of other workloads. The history's tuning time is printed apart and not charged to any
strategy.

Usage: python bench/tune_cpu.py [--budget 32] [--mlp-budget 12] [--strategies model tpe random grid]
                                [--shapes 1024x1024x1024 1000x1000x1000 777x333x1024] [--no-metaschedule]
                                [--history-shapes 512x512x512 ...] [--history-budget 24]
Shapes are MxNxK. Defaults finish in under 20 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

ROOT = tempfile.mkdtemp(prefix="tilefuse-tune-bench-")


def gemm_graph(m: int, n: int, k: int) -> Any:
    import tilefuse as tf

    g = tf.GraphBuilder(f"gemm_{m}x{n}x{k}")
    g.output("c", g.input("a", (m, k), "f32") @ g.input("b", (k, n), "f32"))
    return g.build()


def numpy_seconds(m: int, n: int, k: int, reps: int = 10) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    a @ b
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def tune(graph: Any, strategy: str, budget: int, seed: int, history: str | None = None) -> Any:
    """One strategy on every kernel of `graph`, with a fresh build cache and a fresh database (a copy
    of the `history` database file when given)."""
    from tilefuse.autotune.database import TuningDB
    from tilefuse.autotune.tune import tune_graph

    # Runner workers start lazily and read the cache directory from the environment then.
    os.environ["TILEFUSE_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"{strategy}-", dir=ROOT)
    url = "sqlite://"
    if history:
        fd, path = tempfile.mkstemp(prefix=f"{strategy}-", suffix=".db", dir=ROOT)
        os.close(fd)
        shutil.copyfile(history, path)
        url = f"sqlite:///{path}"
    with TuningDB(url) as db:
        return tune_graph(graph, "cpu", budget=budget, strategy=strategy, db=db, seed=seed)


def build_history(shapes: list[str], budget: int, seed: int) -> str:
    """Tune `shapes` with random search into a new database file; its path."""
    from tilefuse.autotune.database import TuningDB
    from tilefuse.autotune.tune import tune_graph

    path = os.path.join(ROOT, "history.db")
    os.environ["TILEFUSE_CACHE_DIR"] = tempfile.mkdtemp(prefix="history-", dir=ROOT)
    t0 = time.perf_counter()
    with TuningDB(f"sqlite:///{path}") as db:
        for shape in shapes:
            m, n, k = (int(x) for x in shape.split("x"))
            tune_graph(gemm_graph(m, n, k), "cpu", budget=budget, strategy="random", db=db, seed=seed + 1)
        count = len(db.records())
    print(f"history: {count} records of {len(shapes)} other GEMM shapes ({', '.join(shapes)}), random search, "
          f"{budget} trials each, {time.perf_counter() - t0:.0f} s (not charged to any strategy)")
    return path


def trials_to_within(history: list[float | None], target: float) -> int | None:
    for i, h in enumerate(history):
        if h is not None and h <= target:
            return i + 1
    return None


def metaschedule(m: int, n: int, k: int, budget: int) -> tuple[float | None, float, str]:
    """MetaSchedule in a worker subprocess, so that a crash in TVM cannot end the benchmark."""
    from tilefuse.autotune.worker import Worker

    w = Worker(name="metaschedule")
    try:
        # apache-tvm-ffi 0.1.15.x segfaults serialising IR (bench/metaschedule_repro.py), which
        # MetaSchedule does before its first trial: probe it first so the row says why.
        probe = w.call(_ffi_serialises_ir, None, timeout=300)
        if probe.kind == "crash":
            ffi = _version("apache-tvm-ffi")
            return None, 0.0, (f"skipped: tvm.ir.save_json crashes with apache-tvm-ffi {ffi} "
                               "(bench/metaschedule_repro.py); pin apache-tvm-ffi==0.1.14.post1")
        out = w.call(_metaschedule, (m, n, k, budget), timeout=1800)
    finally:
        w.close()
    if out.kind != "ok":
        return None, 0.0, f"{out.kind}: {out.error.strip().splitlines()[-1][:200] if out.error else ''}"
    return out.value


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "(not installed)"


def _ffi_serialises_ir(_: None) -> bool:
    """Serialise a PrimType (a DLDataType field): kills this process where tvm-ffi's ToJSONGraph is broken."""
    import tvm

    return bool(tvm.ir.save_json(tvm.ir.PrimType("float32")))


def _metaschedule(job: tuple[int, int, int, int]) -> tuple[float | None, float, str]:
    """(best seconds, tuning wall seconds, note) of MetaSchedule's tune_tir on the same GEMM."""
    m, n, k, budget = job
    import functools
    import importlib
    import importlib.util
    import logging

    if importlib.util.find_spec("cloudpickle") is None:
        raise ImportError("MetaSchedule's LocalBuilder/LocalRunner need cloudpickle (apache-tvm[popen-pool])")

    from tilefuse.codegen.tvm_runtime import configure_threads, host_target

    # Same thread count as our kernels (TILEFUSE_THREADS, else one per physical core). It sets
    # TVM_NUM_THREADS before TVM's pool exists here, and MetaSchedule's builder and runner workers
    # inherit it; num-cores is what MetaSchedule's parallelisation rules plan for.
    threads = configure_threads()

    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    # Keep task-scheduler tables off the console; they still go to the log files in work_dir.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    a = te.placeholder((m, k), "float32", name="A")
    b = te.placeholder((k, n), "float32", name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b, c])})
    target = tvm.target.Target({**host_target(), "num-cores": threads})
    # LocalBuilder starts fresh workers for every batch, and the first build in a worker imports
    # tvm.s_tir.tensor_intrin (about 45 s on a 2-core machine), past the 30 s build timeout, so every
    # trial failed. The initializer's import is not charged to the timeout; it is in the wall time.
    warm = functools.partial(importlib.import_module, "tvm.s_tir.tensor_intrin")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=ROOT) as work:
        builder = ms.builder.LocalBuilder(max_workers=threads, initializer=warm)
        db = ms.tune_tir(mod, target, work, max_trials_global=budget, num_trials_per_iter=min(budget, 16),
                         seed=0, database="memory", num_tuning_cores=threads, builder=builder)
        sch = ms.tir_integration.compile_tir(db, mod, target)
    wall = time.perf_counter() - t0
    if sch is None:
        return None, wall, "no valid schedule"
    lib = tvm.compile(sch.mod, target=target)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal((m, k)).astype(np.float32), dev),
            tvm.runtime.tensor(rng.standard_normal((k, n)).astype(np.float32), dev),
            tvm.runtime.empty((m, n), "float32", dev)]
    f = lib["main"]
    f(*args)
    ts = []
    for _ in range(10):
        t1 = time.perf_counter()
        f(*args)
        ts.append(time.perf_counter() - t1)
    trials = len(db.get_all_tuning_records())
    return float(np.median(ts)), wall, f"{trials} trials, {threads} threads"


def report_workload(name: str, results: dict[str, Any], numpy_s: float | None, ms_row: tuple | None) -> None:
    from tilefuse.autotune.tune import fmt_time

    print(f"\n== {name}")
    print(f"{'strategy':<14} {'best':>11} {'tune wall':>10} {'vs numpy':>9}  trials")
    best_any: dict[str, float] = {}
    for strat, res in results.items():
        total = sum(r.best_seconds or 0.0 for r in res.rows)
        ratio = f"{numpy_s / total:.2f}x" if numpy_s and total else "-"
        trials = sum(r.trials for r in res.rows)
        print(f"{strat:<14} {fmt_time(total):>11} {res.elapsed:>9.1f}s {ratio:>9}  {trials}")
        for r in res.rows:
            if r.best_seconds is not None:
                best_any[r.workload_key] = min(best_any.get(r.workload_key, float("inf")), r.best_seconds)
    if ms_row is not None:
        best, wall, note = ms_row
        ratio = f"{numpy_s / best:.2f}x" if numpy_s and best else "-"
        print(f"{'metaschedule':<14} {fmt_time(best):>11} {wall:>9.1f}s {ratio:>9}  {note}")
    if numpy_s:
        print(f"{'numpy':<14} {fmt_time(numpy_s):>11}")
    for strat in ("model", "random"):
        if strat not in results:
            continue
        needs = []
        for r in results[strat].rows:
            n = trials_to_within(r.history, 1.05 * best_any.get(r.workload_key, float("inf")))
            needs.append(f"{r.kernels[0]}: {n if n is not None else f'>{r.trials}'}")
        print(f"trials for {strat} to reach within 5% of the best of any strategy: {'; '.join(needs)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=32, help="trials per GEMM per strategy (and MetaSchedule)")
    ap.add_argument("--mlp-budget", type=int, default=12, help="trials per decoder-MLP kernel per strategy")
    ap.add_argument("--strategies", nargs="+", default=["model", "tpe", "random", "grid"])
    ap.add_argument("--shapes", nargs="+", default=["1024x1024x1024", "1000x1000x1000", "777x333x1024"])
    ap.add_argument("--mlp-sizes", default="T=16,H=256,I=688")
    ap.add_argument("--no-metaschedule", action="store_true")
    ap.add_argument("--no-mlp", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--history-shapes", nargs="+", default=["512x512x512", "1536x768x1024", "640x1280x896"],
                    help="other GEMM shapes (MxNxK) tuned first as the device's history")
    ap.add_argument("--history-budget", type=int, default=24, help="random trials per history shape (0: none)")
    args = ap.parse_args()
    overlap = set(args.history_shapes) & set(args.shapes)
    if overlap and args.history_budget:
        ap.error(f"history shapes {sorted(overlap)} are also measured shapes; the history must be other workloads")
    os.environ.setdefault("TILEFUSE_CACHE_DIR", os.path.join(ROOT, "default"))
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t_all = time.perf_counter()
    history = build_history(args.history_shapes, args.history_budget, args.seed) if args.history_budget else None
    for shape in args.shapes:
        m, n, k = (int(x) for x in shape.split("x"))
        g = gemm_graph(m, n, k)
        results = {s: tune(g, s, args.budget, args.seed, history) for s in args.strategies}
        ms_row = None
        if not args.no_metaschedule:
            ms_row = metaschedule(m, n, k, args.budget)
        report_workload(f"f32 GEMM {m}x{n}x{k} (MxNxK), budget {args.budget}", results, numpy_seconds(m, n, k),
                        ms_row)
    if not args.no_mlp:
        from tilefuse.ir.text import load_graph

        sizes = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in args.mlp_sizes.split(",")}
        path = os.path.join(os.path.dirname(__file__), "..", "examples", "decoder_mlp.tf")
        g = load_graph(path, sizes)
        results = {s: tune(g, s, args.mlp_budget, args.seed, history) for s in args.strategies}
        report_workload(f"decoder MLP {args.mlp_sizes} (sum over kernels), budget {args.mlp_budget}/kernel",
                        results, None, None)
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
