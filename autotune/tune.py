"""Tuning a whole graph: the pass pipeline gives the kernels, each distinct workload is tuned on
the target's device, and a report directory gets results.json, summary.md and best_so_far.png."""

from __future__ import annotations

from ..deps import require
from ..errors import TilefuseError
from ..fileio import atomic_open, write_atomic

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..schedule.config import Config
from ..costmodel.roofline import roofline_bound
from .search import ProgressEvent, tune_kernel

REPORT_SCHEMA = 1


class TuneError(TilefuseError, RuntimeError):
    """A graph or target that cannot be tuned here (no device to measure on, an untunable target)."""


@dataclass
class KernelTuneRow:
    """One tuned workload (kernels with the same workload key share it)."""

    kernels: list[str]
    family: str
    workload_key: str
    trials: int
    previous: int
    best_seconds: float | None
    default_seconds: float | None
    roofline_seconds: float
    best_config: dict[str, Any] | None
    stopped: str
    statuses: dict[str, int]
    history: list[float | None] = field(default_factory=list)
    elapsed: float = 0.0
    roofline_limit: str = ""  # what bounds the kernel: "compute" or the memory level ("L1", "DRAM", "HBM")

    @property
    def speedup(self) -> float | None:
        if self.best_seconds and self.default_seconds:
            return self.default_seconds / self.best_seconds
        return None

    @property
    def roofline_fraction(self) -> float | None:
        return self.roofline_seconds / self.best_seconds if self.best_seconds else None


@dataclass
class GraphTuneResult:
    graph: str
    target: str
    device: str
    device_key: str
    strategy: str
    budget: int
    rows: list[KernelTuneRow]
    elapsed: float
    report_dir: str | None = None

    def configs(self) -> dict[str, Config]:
        """kernel name -> best config (for compile_graph(configs=...))."""
        return {k: Config(r.best_config) for r in self.rows if r.best_config for k in r.kernels}

    def to_json(self) -> dict[str, Any]:
        rows = [{**asdict(r), "speedup": r.speedup, "roofline_fraction": r.roofline_fraction} for r in self.rows]
        return {"schema": REPORT_SCHEMA, "graph": self.graph, "target": self.target, "device": self.device,
                "device_key": self.device_key, "strategy": self.strategy, "budget": self.budget,
                "elapsed": self.elapsed, "kernels": rows}

    def table(self) -> str:
        """The summary as a Markdown table (roofline: the fraction of the bound and what bounds it; a
        kernel faster than its bound is shown as >100% with a footnote saying why)."""
        head = ("| kernel | family | trials | best | default | speedup | roofline |\n"
                "|---|---|---:|---:|---:|---:|---:|")
        lines = [head]
        for r in self.rows:
            lines.append(f"| {', '.join(r.kernels)} | {r.family} | {r.trials} (+{r.previous} earlier) | "
                         f"{fmt_time(r.best_seconds)} | {fmt_time(r.default_seconds)} | "
                         f"{f'{r.speedup:.2f}x' if r.speedup else '-'} | "
                         f"{fmt_roofline(r.roofline_fraction, r.roofline_limit)} |")
        if any((r.roofline_fraction or 0.0) > 1.0 for r in self.rows):
            lines += ["", ROOFLINE_OVER]
        return "\n".join(lines)


ROOFLINE_OVER = ("* faster than the roofline bound, so an estimate behind the bound (the peak FLOP/s or the "
                 "bandwidth of the memory level, costmodel/roofline.py) is too low for this kernel and device")


def fmt_roofline(fraction: float | None, limit: str = "") -> str:
    """A roofline fraction as a percentage with what bounds it ("42.0% (L1)"); above 100% capped at
    ">100%*", which ROOFLINE_OVER explains wherever it is shown."""
    if not fraction:
        return "-"
    where = f" ({limit})" if limit else ""
    return f">100%*{where}" if fraction > 1.0 else f"{100 * fraction:.1f}%{where}"


def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1.0:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} us"


def make_runner(device: Any) -> Any:
    """The runner that measures on `device`; TuneError when the device is not on this machine."""
    from .runners import CpuRunner, GpuRunner

    if device.kind == "cpu":
        return CpuRunner()
    if device.nominal:
        from .device import gpu_status

        raise TuneError(f"cannot tune for {device.arch}: no {device.arch} GPU on this machine to measure on "
                        f"({gpu_status()}); tune on a machine with one, or tune --target cpu")
    return GpuRunner()


def workload_groups(graph: Any, backend: str, buckets: Any = None) -> dict[str, list[Any]]:
    """The graph's kernel specs for `backend`, grouped by workload key (kernels with one key are
    tuned once), in kernel order. A graph with dynamic sizes has one spec per kernel and size bucket
    (`buckets`: their upper ends, default powers of two), bound at the bucket's upper end: each is
    tuned, and stored, under its bucket's key."""
    from ..ir.buckets import all_edges, bucket_graphs
    from ..ir.graph import as_graph
    from ..kernels import graph_specs

    g = as_graph(graph)
    parts = bucket_graphs(g, all_edges(g, buckets)) if g.is_dynamic else [(None, g)]
    groups: dict[str, list[Any]] = {}
    for ranges, gb in parts:
        for spec in graph_specs(gb, backend, ranges)[1]:
            groups.setdefault(spec.key, []).append(spec)
    return groups


def kernel_label(spec: Any) -> str:
    """A kernel's name, with its size bucket when it has one ("k1_matmul [T=17..32]")."""
    if not spec.bucket:
        return str(spec.name)
    spans = [f"{n}={lo}" if lo == hi else f"{n}={lo}..{hi}" for n, lo, hi in spec.bucket]
    return f"{spec.name} [{', '.join(spans)}]"


def tune_graph(graph: Any, target_name: str, *, budget: int, strategy: str, db: Any, time_limit: float | None = None,
               report_dir: str | Path | None = None, progress: Callable[[ProgressEvent], None] | None = None,
               runner: Any = None, device: Any = None, patience: int | None = None, seed: int = 0,
               buckets: Any = None) -> GraphTuneResult:
    """Tune every kernel of `graph` on `target_name`'s device with `budget` trials per kernel (and per
    size bucket, for a graph with dynamic sizes: see workload_groups)."""
    from ..schedule.target import get_target
    from ..ir.graph import as_graph
    from .device import device_for_target

    t0 = time.monotonic()
    g = as_graph(graph)
    tgt = get_target(target_name)
    if tgt.kind == "interp":
        raise TuneError("target 'interp' (the Triton interpreter) has no meaningful timings; tune --target cpu "
                        "or a GPU arch such as sm_90")
    dev = device if device is not None else device_for_target(target_name)
    own_runner = runner is None
    run = make_runner(dev) if own_runner else runner
    groups = workload_groups(g, tgt.backend, buckets)
    rows: list[KernelTuneRow] = []
    # TPE tuners sharing a server database (PostgreSQL) share one Optuna study per kernel and device.
    storage = db.url if strategy == "tpe" and getattr(db, "is_server", False) else None
    try:
        for i, specs in enumerate(groups.values()):
            spec = specs[0]
            limit = None
            if time_limit is not None:
                limit = max(0.0, (time_limit - (time.monotonic() - t0)) / (len(groups) - i))
            bound = roofline_bound(spec, dev)
            res = tune_kernel(spec, dev, run, db, budget=budget, strategy=strategy, time_limit=limit,
                              patience=patience, seed=seed, progress=progress, optuna_storage=storage)
            rows.append(KernelTuneRow([kernel_label(s) for s in specs], spec.family, spec.key, len(res.trials),
                                      res.previous,
                                      res.best_seconds, res.default_seconds, bound.seconds,
                                      dict(res.best_config) if res.best_config else None, res.stopped, res.statuses,
                                      res.history, res.elapsed, bound.limit))
    finally:
        if own_runner:
            run.close()
    out = GraphTuneResult(g.name, target_name, dev.name, dev.key, strategy, budget, rows, time.monotonic() - t0)
    if report_dir is not None:
        write_report(out, Path(report_dir))
    return out


def write_report(res: GraphTuneResult, out: Path) -> Path:
    """results.json, summary.md and best_so_far.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    res.report_dir = str(out)
    write_atomic(out / "results.json", json.dumps(res.to_json(), indent=2, sort_keys=True).encode())
    md = (f"# Tuning {res.graph} on {res.device} ({res.target})\n\n"
          f"Strategy `{res.strategy}`, budget {res.budget} trials per kernel, {res.elapsed:.1f} s.\n"
          "Roofline: max(FLOPs / peak, bytes / bandwidth of the memory level they fit in) over the best time; "
          "in brackets what bounds the kernel (compute or that level).\n\n" + res.table() + "\n")
    write_atomic(out / "summary.md", md.encode())
    _plot(res, out / "best_so_far.png")
    return out


def _plot(res: GraphTuneResult, path: Path) -> None:
    require("matplotlib", "the tuning report's best-so-far plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in res.rows if any(h is not None for h in r.history)] or res.rows[:1]
    fig = Figure(figsize=(7, 2.6 * max(1, len(rows))))
    FigureCanvasAgg(fig)
    for i, r in enumerate(rows):
        ax = fig.add_subplot(max(1, len(rows)), 1, i + 1)
        pts = [(k + 1, h * 1e3) for k, h in enumerate(r.history) if h is not None]
        if pts:
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label="best so far")
        if r.default_seconds:
            ax.axhline(r.default_seconds * 1e3, color="gray", linestyle="--", linewidth=1, label="default")
        ax.set_title(f"{', '.join(r.kernels)} ({r.family})", fontsize=9)
        ax.set_xlabel("trial")
        ax.set_ylabel("ms")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
