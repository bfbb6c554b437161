"""CPU tuning benchmark: every search strategy at the same trial budget on f32 GEMMs (1024^3 and two
odd shapes) and on the decoder MLP (small sizes), plus TVM MetaSchedule on the same GEMMs.

Prints, per workload and strategy, the best time (the re-timed value of the run's best config, see
below, so that all runs are on one scale), the tuning wall time and the ratio to numpy
(numpy time / best time: > 1 is faster than numpy), and how many trials model-guided and random
search needed to come within 5% of the best config any strategy found. Each run gets its own
database and build cache, so none profits from another's work on the measured workloads.

Trials-to-target is a random variable, and on a shared 2-core machine one config's median moves
by 15-20% from one measurement to the next (slow phases of other tenants, lasting longer than a
measurement), several times the 5% target. Two defences: (1) the CPU runner pairs every sample with
one of the default kernel's, and configs rank by the paired ratio (Measurement.relative, ~4% spread
here), in the tuner and in this report; (2) model and random search run with --seeds seeds each
(their median is reported), and the verdict does not rest on single timings: every config any run
measured within 25% of the best (--retime-window) is re-timed, all of them interleaved,
--retime-reps times, and a trial reaches the target when its config's re-timed value (median
ratio x the reference's median time) is within 5% of the best re-timed value.

A learned cost model is trained on what a device has tuned before; so first, unless --history-budget
is 0, random search tunes a few *other* GEMM shapes (--history-shapes, none of them measured below),
and with --history-mlp-sizes the decoder MLP at other sizes (the only history its norm kernel's
family can have), into a history database, and every run's database starts as a copy of it. Only
model-guided search reads that history (it trains XGBoost on it and starts from its winners); the
others ignore records of other workloads. The history's tuning time is printed apart and not charged to any
strategy.

Usage: python bench/tune_cpu.py [--budget 32] [--mlp-budget 12] [--strategies model tpe random grid]
                                [--shapes 1024x1024x1024 1000x1000x1000 777x333x1024] [--no-metaschedule]
                                [--history-shapes 512x512x512 ...] [--history-mlp-sizes T=32,H=512,I=1376 ...]
                                [--history-budget 24]
                                [--seeds 3] [--retime-reps 5] [--retime-window 1.25] [--retime-cap 60]
                                [--json RUNS.json] [--report RUNS.json]
Shapes are MxNxK. Defaults take about 35 minutes on a 2-core machine (MetaSchedule is 12 of them);
--seeds 5 --no-metaschedule about 30.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

ROOT = tempfile.mkdtemp(prefix="tilefuse-tune-bench-")
SEEDED = ("model", "random")  # the strategies compared by trials-to-target, run with several seeds


def gemm_graph(m: int, n: int, k: int) -> Any:
    import tilefuse as tf

    g = tf.GraphBuilder(f"gemm_{m}x{n}x{k}")
    g.output("c", g.input("a", (m, k), "f32") @ g.input("b", (k, n), "f32"))
    return g.build()


def numpy_seconds(m: int, n: int, k: int, reps: int = 30) -> float:
    """numpy's f32 GEMM: the median of `reps` samples, caches flushed before each, as the runner times
    a kernel. Not paired with the default kernel: OpenBLAS's and TVM's worker threads spin after a
    call and slowed the other library's next sample ~10x here (numpy/default read 0.08 paired vs 0.9-1.1
    apart), and a pause long enough for them to stop let the VM's vCPUs idle, which cost ms to wake."""
    from tilefuse.autotune.device import cpu_device
    from tilefuse.autotune.measure import CacheFlusher, time_runs
    from tilefuse.autotune.runners import flush_bytes

    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = np.empty((m, n), np.float32)
    flush = CacheFlusher(flush_bytes(cpu_device()))
    return float(statistics.median(time_runs(lambda: np.matmul(a, b, out=c), flush, samples=reps, warmup=2,
                                             min_sample_seconds=0.0)))


@dataclass
class Run:
    """One strategy's tuning run: its result and, per workload, the configs in measurement order with
    their time relative to the default kernel's (Measurement.relative; None: failed). Relatives
    compare across runs; a run's seconds (result) scale with that run's own reference median."""

    strategy: str
    seed: int
    result: Any
    trials: dict[str, list[tuple[Any, float | None]]]


def tune(graph: Any, strategy: str, budget: int, seed: int, history: str | None = None) -> Run:
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
        res = tune_graph(graph, "cpu", budget=budget, strategy=strategy, db=db, seed=seed)
        trials = {}
        for r in res.rows:
            recs = db.records(workload_key=r.workload_key, device_key=res.device_key)
            trials[r.workload_key] = [(rec.config, rec.measurement.relative) for rec in recs]
    return Run(strategy, seed, res, trials)


def tune_all(graph: Any, strategies: list[str], budget: int, seed: int, seeds: int,
             history: str | None) -> dict[str, list[Run]]:
    """Every strategy once; model-guided and random search `seeds` times (seed, seed + 1, ...),
    the seeds interleaved across strategies so that a slow spell of the machine hits all of them."""
    runs: dict[str, list[Run]] = {s: [] for s in strategies}
    for i in range(max(1, seeds)):
        for s in strategies:
            if i == 0 or s in SEEDED:
                runs[s].append(tune(graph, s, budget, seed + i, history))
    return runs


def mlp_graph(sizes: str) -> Any:
    """examples/decoder_mlp.tf at `sizes` ("T=16,H=256,I=688")."""
    from tilefuse.ir.text import load_graph

    dims = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in sizes.split(",")}
    return load_graph(os.path.join(os.path.dirname(__file__), "..", "examples", "decoder_mlp.tf"), dims)


def build_history(shapes: list[str], mlp_sizes: list[str], budget: int, seed: int) -> str:
    """Tune GEMM `shapes` and decoder MLPs of `mlp_sizes` with random search into a new database file;
    its path."""
    from tilefuse.autotune.database import TuningDB
    from tilefuse.autotune.tune import tune_graph

    path = os.path.join(ROOT, "history.db")
    os.environ["TILEFUSE_CACHE_DIR"] = tempfile.mkdtemp(prefix="history-", dir=ROOT)
    t0 = time.perf_counter()
    with TuningDB(f"sqlite:///{path}") as db:
        for shape in shapes:
            m, n, k = (int(x) for x in shape.split("x"))
            tune_graph(gemm_graph(m, n, k), "cpu", budget=budget, strategy="random", db=db, seed=seed + 1)
        for sizes in mlp_sizes:
            tune_graph(mlp_graph(sizes), "cpu", budget=budget, strategy="random", db=db, seed=seed + 1)
        count = len(db.records())
    mlps = f" and decoder MLPs at {'; '.join(mlp_sizes)}" if mlp_sizes else ""
    print(f"history: {count} records of {len(shapes)} other GEMM shapes ({', '.join(shapes)}){mlps}, random "
          f"search, {budget} trials per kernel, {time.perf_counter() - t0:.0f} s (not charged to any strategy)")
    return path


def raw(runs: dict[str, list[Run]], true: dict[str, dict[Any, float]], budget: int) -> dict[str, Any]:
    """JSON-able runs (per strategy and seed: each workload's configs in trial order with their times
    relative to the default kernel's) and the re-timed values (seconds), from which the
    trials-to-target figures of the report can be recomputed (--report)."""
    first = next(iter(runs.values()))[0].result
    return {
        "budget": budget, "kernels": {r.workload_key: r.kernels[0] for r in first.rows},
        "runs": {s: [{"seed": r.seed, "elapsed": r.result.elapsed,
                      "trials": {k: [[dict(c), t] for c, t in v] for k, v in r.trials.items()}} for r in rs]
                 for s, rs in runs.items()},
        "retimed": {k: [[dict(c), t] for c, t in v.items()] for k, v in true.items()},
    }


def retime(graph: Any, runs: list[Run], reps: int, window: float = 1.25,
           cap: int = 60) -> dict[str, dict[Any, float]]:
    """Per workload: the median of `reps` fresh, interleaved measurements of every config that some
    run measured within `window` of the best relative time any run measured (at most `cap`, fastest
    first).
    The runner pairs each with the default kernel (Measurement.relative); a config's re-timed value
    is the median of its relatives times the median of every reference sample of the workload."""
    from tilefuse.autotune.device import device_for_target
    from tilefuse.autotune.runners import close, prebuild
    from tilefuse.autotune.tune import make_runner, workload_groups

    os.environ["TILEFUSE_CACHE_DIR"] = tempfile.mkdtemp(prefix="retime-", dir=ROOT)
    dev = device_for_target("cpu")
    runner = make_runner(dev)
    out: dict[str, dict[Any, float]] = {}
    try:
        for key, (spec, *_) in workload_groups(graph, "tvm").items():
            seen: dict[Any, float] = {}
            for run in runs:
                for c, t in run.trials.get(key, []):
                    if t is not None:
                        seen[c] = min(t, seen.get(c, t))
            if not seen:
                continue
            best = min(seen.values())
            cands = sorted((c for c, t in seen.items() if t <= window * best), key=lambda c: seen[c])[:cap]
            prebuild(runner, spec, cands, dev)
            times: dict[Any, list[float]] = {c: [] for c in cands}
            refs: list[float] = []
            for _ in range(reps):
                for c in cands:
                    m = runner.measure(spec, c, dev)
                    if m.relative is not None:
                        times[c].append(m.relative)
                        refs.extend(m.reference)
            ref = statistics.median(refs) if refs else 0.0
            out[key] = {c: statistics.median(v) * ref for c, v in times.items() if v}
    finally:
        close(runner)
    return out


def trials_to_target(run: Run, key: str, true: dict[Any, float], within: float = 1.05) -> int | None:
    """1-based index of the run's first trial whose config's re-timed median is within `within` of
    the best re-timed median; None if no trial is."""
    if not true:
        return None
    target = within * min(true.values())
    for i, (c, _) in enumerate(run.trials.get(key, [])):
        if c in true and true[c] <= target:
            return i + 1
    return None


def median_trials(needs: list[int | None], budget: int) -> float:
    """Median trials-to-target, a run that never got there counting as budget + 1 (a lower bound)."""
    return float(statistics.median([n if n is not None else budget + 1 for n in needs]))


def random_draws(runs: list[Run], key: str, true: dict[Any, float], within: float = 1.05) -> tuple[int, int]:
    """(hits, draws) over random search's uniform draws (every trial but each run's first, the
    default): how many configs it drew whose re-timed median is within `within` of the best. Random
    search needs about 1 + draws / hits trials on average (the default first, then geometric)."""
    target = within * min(true.values())
    hits = draws = 0
    for run in runs:
        for c, _ in run.trials.get(key, [])[1:]:
            draws += 1
            hits += c in true and true[c] <= target
    return hits, draws


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


def report_workload(name: str, runs: dict[str, list[Run]], numpy_s: float | None, ms_row: tuple | None,
                    true: dict[str, dict[Any, float]], budget: int) -> None:
    """Per strategy: best time (re-timed, see best_of), tuning wall time, ratio to numpy; then the
    trials-to-target verdicts."""
    from tilefuse.schedule.config import Config
    from tilefuse.autotune.tune import fmt_time

    def best_of(run: Run) -> float:
        # the run's best config at its re-timed value where it was re-timed (every run on one scale),
        # else at the run's own (its paired times scale with the run's own reference median)
        total = 0.0
        for r in run.result.rows:
            cfg = Config(r.best_config) if r.best_config else None
            total += true.get(r.workload_key, {}).get(cfg, r.best_seconds or 0.0)
        return total

    print(f"\n== {name}")
    print(f"{'strategy':<14} {'best':>11} {'tune wall':>10} {'vs numpy':>9}  trials")
    for strat, rs in runs.items():
        totals = [best_of(run) for run in rs]
        total = statistics.median(totals)
        ratio = f"{numpy_s / total:.2f}x" if numpy_s and total else "-"
        trials = sum(r.trials for r in rs[0].result.rows)
        wall = statistics.mean(run.result.elapsed for run in rs)
        many = f" (median of {len(rs)} seeds; best {fmt_time(min(totals))})" if len(rs) > 1 else ""
        print(f"{strat:<14} {fmt_time(total):>11} {wall:>9.1f}s {ratio:>9}  {trials}{many}")
    if ms_row is not None:
        best, wall, note = ms_row
        ratio = f"{numpy_s / best:.2f}x" if numpy_s and best else "-"
        print(f"{'metaschedule':<14} {fmt_time(best):>11} {wall:>9.1f}s {ratio:>9}  {note} (unpaired, its own process)")
    if numpy_s:
        print(f"{'numpy':<14} {fmt_time(numpy_s):>11}  (unpaired, right after the re-timing; see numpy_seconds)")
    first = next(iter(runs.values()))[0]
    for row in first.result.rows:
        report_target(row.kernels[0], row.workload_key, runs, true.get(row.workload_key, {}), budget)


def report_target(kernel: str, key: str, runs: dict[str, list[Run]], t: dict[Any, float], budget: int) -> None:
    """Trials to within 5% of the best re-timed config, per strategy and seed, and the verdict on
    'model-guided search needs at most a third of the trials random search needs'."""
    from tilefuse.autotune.tune import fmt_time

    if not t:
        return
    print(f"{kernel}: best re-timed {fmt_time(min(t.values()))} ({len(t)} configs re-timed); "
          "trials to within 5% of it, per seed:")
    medians = {}
    for strat in ("model", "random", "tpe", "grid"):
        if strat not in runs:
            continue
        needs = [trials_to_target(run, key, t) for run in runs[strat]]
        medians[strat] = median_trials(needs, budget)
        shown = ", ".join(str(n) if n is not None else f">{budget}" for n in needs)
        med = f"{medians[strat]:g}" if medians[strat] <= budget else f">{budget}"
        print(f"   {strat:<8} {shown:<24} median {med}")
    if medians.get("random") == 1:
        print("   model-guided within a third of random's trials: n/a (the default config, every run's "
              "first trial, is already within 5%)")
        return
    if "model" not in medians or "random" not in medians:
        return
    hits, draws = random_draws(runs["random"], key, t)
    if hits:
        need = 1 + draws / hits
        about = f"{hits} of its {draws} uniform draws within 5%, so it needs ~{need:.0f}"
    else:
        need, about = 1 + draws, f"none of its {draws} uniform draws within 5%, so it needs > {draws}"
    if medians["model"] > budget:
        verdict = f"no (the median model run did not get there in {budget} trials)"
    else:
        verdict = f"{'yes' if 3 * medians['model'] <= need else 'no'} (model median {medians['model']:g})"
    conf = "" if hits else " (63% confidence)"
    print(f"   random search: {about} trials on average{conf}; model-guided within a third of that: {verdict}")


def rereport(path: str) -> None:
    """The trials-to-target part of the report again, from a --json file."""
    from tilefuse.schedule.config import Config

    with open(path) as fp:
        dump = json.load(fp)
    for name, d in dump.items():
        budget = d.get("budget")
        runs = {s: [Run(s, r["seed"], None, {k: [(Config(c), t) for c, t in v] for k, v in r["trials"].items()})
                    for r in rs] for s, rs in d["runs"].items()}
        print(f"\n== {name}")
        for i, (key, rows) in enumerate(d["retimed"].items()):
            n = budget or max(len(v) for rs in runs.values() for r in rs for v in r.trials.values())
            report_target(d.get("kernels", {}).get(key, f"kernel {i}"), key, runs,
                          {Config(c): t for c, t in rows}, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=32, help="trials per GEMM per strategy (and MetaSchedule)")
    ap.add_argument("--mlp-budget", type=int, default=12, help="trials per decoder-MLP kernel per strategy")
    ap.add_argument("--strategies", nargs="+", default=["model", "tpe", "random", "grid"])
    ap.add_argument("--shapes", nargs="*", default=["1024x1024x1024", "1000x1000x1000", "777x333x1024"],
                    help="GEMM shapes (MxNxK) to tune; none (a bare --shapes) tunes only the decoder MLP")
    ap.add_argument("--mlp-sizes", default="T=16,H=256,I=688")
    ap.add_argument("--no-metaschedule", action="store_true")
    ap.add_argument("--no-mlp", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--history-shapes", nargs="+", default=["512x512x512", "1536x768x1024", "640x1280x896"],
                    help="other GEMM shapes (MxNxK) tuned first as the device's history")
    ap.add_argument("--history-mlp-sizes", nargs="*", default=[],
                    help="other decoder MLP sizes (e.g. T=32,H=512,I=1376) tuned first as the device's history")
    ap.add_argument("--history-budget", type=int, default=24, help="random trials per history kernel (0: none)")
    ap.add_argument("--seeds", type=int, default=3, help="runs (seeds) of model-guided and random search")
    ap.add_argument("--retime-reps", type=int, default=5, help="interleaved re-measurements of the best configs")
    ap.add_argument("--retime-window", type=float, default=1.25,
                    help="re-time every config measured within this factor of the best relative time measured")
    ap.add_argument("--retime-cap", type=int, default=60, help="re-time at most this many configs per workload")
    ap.add_argument("--json", default=None, help="also write every run's trials and the re-timed configs here")
    ap.add_argument("--report", metavar="JSON", help="only print the trials-to-target verdicts of a --json file")
    args = ap.parse_args()
    if args.report:
        rereport(args.report)
        return
    overlap = set(args.history_shapes) & set(args.shapes)
    if overlap and args.history_budget:
        ap.error(f"history shapes {sorted(overlap)} are also measured shapes; the history must be other workloads")
    if args.mlp_sizes in args.history_mlp_sizes and args.history_budget and not args.no_mlp:
        ap.error(f"history MLP sizes include the measured {args.mlp_sizes}; the history must be other workloads")
    os.environ.setdefault("TILEFUSE_CACHE_DIR", os.path.join(ROOT, "default"))
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t_all = time.perf_counter()
    dump: dict[str, Any] = {}
    history = build_history(args.history_shapes, args.history_mlp_sizes, args.history_budget, args.seed) \
        if args.history_budget else None
    for shape in args.shapes:
        m, n, k = (int(x) for x in shape.split("x"))
        g = gemm_graph(m, n, k)
        runs = tune_all(g, args.strategies, args.budget, args.seed, args.seeds, history)
        true = retime(g, [r for rs in runs.values() for r in rs], args.retime_reps, args.retime_window,
                      args.retime_cap)
        ms_row = None
        if not args.no_metaschedule:
            ms_row = metaschedule(m, n, k, args.budget)
        report_workload(f"f32 GEMM {m}x{n}x{k} (MxNxK), budget {args.budget}", runs, numpy_seconds(m, n, k),
                        ms_row, true, args.budget)
        dump[f"gemm {shape}"] = raw(runs, true, args.budget)
    if not args.no_mlp:
        g = mlp_graph(args.mlp_sizes)
        runs = tune_all(g, args.strategies, args.mlp_budget, args.seed, args.seeds, history)
        true = retime(g, [r for rs in runs.values() for r in rs], args.retime_reps, args.retime_window,
                      args.retime_cap)
        report_workload(f"decoder MLP {args.mlp_sizes} (sum over kernels), budget {args.mlp_budget}/kernel",
                        runs, None, None, true, args.mlp_budget)
        dump[f"decoder mlp {args.mlp_sizes}"] = raw(runs, true, args.mlp_budget)
    if args.json:
        with open(args.json, "w") as fp:
            json.dump(dump, fp, indent=1)
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
