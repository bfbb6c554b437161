"""`tilefuse tune FILE.tf`: tune every kernel of a graph on a device, with a progress bar per kernel
on stderr, a summary table on stdout and a report directory. `cli.main` calls `register(subparsers)`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from ..deps import require
from .common import BUCKETS_HELP

__all__ = ["ProgressBar", "cmd_tune", "register"]


def register(subparsers: Any) -> None:
    """Add the `tune` subcommand to the tilefuse argparse CLI."""
    sp = subparsers.add_parser("tune", help="tune every kernel of a .tf graph on a device (resumable)")
    sp.add_argument("file")
    sp.add_argument("--target", default="cpu", help="cpu | sm_80 | sm_90 (default: cpu)")
    sp.add_argument("--budget", type=int, default=200, help="new measurements per kernel (default 200)")
    sp.add_argument("--strategy", default="model", choices=("model", "tpe", "random", "grid"))
    sp.add_argument("--db", metavar="URL", help="SQLAlchemy URL or .db path (default: TILEFUSE_DB or the "
                    "per-user sqlite file)")
    sp.add_argument("--time-limit", type=float, metavar="S", help="wall-clock limit for the whole graph")
    sp.add_argument("--patience", type=int, metavar="N",
                    help="stop a kernel after N trials without a 1%% gain (default: a quarter of the budget, "
                         "at least 16; 0: never stop early)")
    sp.add_argument("--report", metavar="DIR", help="report directory (default: tune-report-<graph>)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--set", action="append", default=[], metavar="NAME=INT", help="override a size parameter")
    sp.add_argument("--buckets", metavar="N,N,...", help=BUCKETS_HELP)
    sp.set_defaults(fn=cmd_tune)


def default_patience(budget: int) -> int:
    """`tune`'s early stop when --patience is not given: a quarter of the budget, at least 16 trials."""
    return max(16, budget // 4)


def _fmt_eta(s: float | None) -> str:
    if s is None:
        return "--"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ProgressBar:
    """One line per kernel, redrawn with \\r: trials/budget, best time, roofline fraction, ETA."""

    def __init__(self, stream: TextIO | None = None, width: int = 24, min_interval: float = 0.1):
        # resolved per call, not at import: sys.stderr may be replaced (pytest capture, redirection)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.kernel: str | None = None
        self._last = 0.0
        self._len = 0

    def __call__(self, ev: Any) -> None:
        from ..autotune.tune import fmt_roofline, fmt_time

        if ev.kernel != self.kernel:
            self.finish()
            self.kernel = ev.kernel
        now = time.monotonic()
        if ev.trial < ev.budget and now - self._last < self.min_interval:
            return
        self._last = now
        filled = int(self.width * min(1.0, ev.trial / max(1, ev.budget)))
        bar = "#" * filled + "." * (self.width - filled)
        roof = f"{fmt_roofline(ev.roofline_fraction):>6} of roofline"
        if (ev.roofline_fraction or 0.0) > 1.0:
            roof += " (* over its bound: an estimate is too low)"
        line = (f"{ev.kernel[:28]:<28} [{bar}] {ev.trial:>4}/{ev.budget:<4} best {fmt_time(ev.best_seconds):>10}  "
                f"{roof}  ETA {_fmt_eta(ev.eta)}")
        self.stream.write("\r" + line + " " * max(0, self._len - len(line)))
        self.stream.flush()
        self._len = len(line)

    def finish(self) -> None:
        if self.kernel is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.kernel = None
        self._len = 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Tune, print the summary table, write the report; 0 on success."""
    optuna = require("optuna", "tilefuse tune")

    from .common import load_graph_arg, parse_buckets
    from ..autotune.database import DatabaseError, TuningDB
    from ..autotune.device import DeviceError
    from ..autotune.space import SpaceError
    from ..autotune.tune import TuneError, tune_graph

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the CLI owns output: no per-trial INFO lines
    if args.budget < 1:
        print("error: --budget must be at least 1", file=sys.stderr)
        return 2
    if args.patience is not None and args.patience < 0:
        print("error: --patience must be 0 (never stop early) or more", file=sys.stderr)
        return 2
    patience = default_patience(args.budget) if args.patience is None else (args.patience or None)
    g = load_graph_arg(args.file, args.set)
    report = args.report or f"tune-report-{g.name}"
    bar = ProgressBar()
    try:
        with TuningDB(args.db) as db:
            res = tune_graph(g, args.target, budget=args.budget, strategy=args.strategy, db=db,
                             time_limit=args.time_limit, report_dir=report, progress=bar, patience=patience,
                             seed=args.seed, buckets=parse_buckets(args.buckets))
    except (TuneError, DatabaseError, DeviceError, SpaceError) as err:
        bar.finish()
        print(f"error: {err}", file=sys.stderr)
        return 2
    bar.finish()
    print(f"tuned {g.name} on {res.device} ({res.target}) with {res.strategy}, budget {res.budget}/kernel, "
          f"in {res.elapsed:.1f} s")
    print(res.table())
    for r in res.rows:
        if r.stopped != "budget":
            print(f"  {', '.join(r.kernels)}: stopped early ({r.stopped})")
        bad = {k: v for k, v in r.statuses.items() if k != "ok"}
        if bad:
            print(f"  {', '.join(r.kernels)}: " + ", ".join(f"{v} {k}" for k, v in sorted(bad.items())))
    print(f"report: {report}/summary.md, results.json, best_so_far.png")
    return 0
