"""Tuning one kernel on one device: propose configs with a strategy, measure them with a runner,
store every measurement in the tuning database as it happens (a killed sweep loses nothing) and
skip configs already measured on this device (re-running resumes).

The family default config is measured first by every strategy (it is the baseline of reports).
`budget` counts the measurements this call makes; configs measured earlier are free: they are
never measured again and they seed the strategy."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..schedule.config import Config
from ..schedule.records import Measurement, Record, Status
from .runners import prebuild
from .space import SearchSpace
from .strategies import STRATEGIES, Strategy, make_strategy

if TYPE_CHECKING:
    from ..kernels.base import KernelSpec
    from .database import TuningDB

log = logging.getLogger(__name__)

__all__ = ["STRATEGIES", "ProgressEvent", "TuneResult", "make_record", "roofline_seconds", "toolchain", "tune_kernel"]

BATCH = {"grid": 8, "random": 8, "tpe": 2, "model": 8}
IMPROVEMENT = 0.01  # early stopping: an improvement must beat the best by more than 1%


@dataclass
class TuneResult:
    """The outcome of `tune_kernel`: the best verified config (over this and earlier runs)."""

    best_config: Config | None
    best_seconds: float | None
    trials: list[tuple[Config, Measurement]]  # measured by this call, in order
    history: list[float | None]  # best-so-far seconds after each trial of this call
    default_config: Config | None = None
    default_seconds: float | None = None
    previous: int = 0  # configs measured before this call (skipped)
    stopped: str = "budget"  # budget | time_limit | patience | exhausted
    elapsed: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ProgressEvent:
    """Sent to `progress` after every trial."""

    kernel: str
    family: str
    trial: int
    budget: int
    best_seconds: float | None
    roofline_fraction: float | None
    elapsed: float
    eta: float | None
    status: Status


@functools.lru_cache(maxsize=1)
def toolchain() -> dict[str, str]:
    """Versions of the tools that shape a measurement (installed distributions; '' when absent)."""
    from importlib import metadata

    out = {}
    for key, dist in (("triton", "triton"), ("tvm", "apache-tvm"), ("torch", "torch"), ("tilefuse", "tilefuse")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = ""
    return out


def roofline_seconds(spec: KernelSpec, device: Any) -> float:
    """The fastest the kernel could be (costmodel.roofline: max(FLOPs / peak, minimal bytes / the
    bandwidth of the memory level they fit in))."""
    from ..costmodel.roofline import roofline_bound

    return roofline_bound(spec, device).seconds


def make_record(spec: KernelSpec, config: Config, device: Any, m: Measurement) -> Record:
    """The database row of one measurement, with the cost-model features of (spec, config, device)."""
    from ..costmodel.features import featurize

    try:
        feats = featurize(spec, config, device, m.resources or None)
    except Exception as err:  # noqa: BLE001 - a record without features is still a measurement
        log.warning("%s: no features for %s: %s", spec.name, config.to_json(), err)
        feats = {}
    return Record(spec.key, spec.family, spec.describe(), device.key, device.fingerprint, config, m, toolchain(),
                  feats, time.time())


def tune_kernel(spec: KernelSpec, device: Any, runner: Any, db: TuningDB, *, budget: int, strategy: str,
                time_limit: float | None = None, patience: int | None = None, seed: int = 0,
                progress: Callable[[ProgressEvent], None] | None = None, batch: int | None = None,
                optuna_storage: str | None = None) -> TuneResult:
    """Tune `spec` on `device` with `strategy` for up to `budget` new measurements."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown search strategy {strategy!r}; accepted: {', '.join(STRATEGIES)}")
    t0 = time.monotonic()
    space = SearchSpace(spec, device.target)
    history = db.records(device_key=device.key, family=spec.family, status=Status.OK)[-5000:] \
        if strategy == "model" else None
    strat = make_strategy(strategy, space, spec, device, seed, history=history, storage=optuna_storage)
    measured: dict[Config, Record] = {}
    _absorb(db, spec, device, strat, measured)
    previous = len(measured)
    default = space.default()
    queue: list[Config] = [default] if default is not None and default not in measured else []
    roof = roofline_seconds(spec, device)
    res = TuneResult(None, None, [], [], default, None, previous)
    earlier = set(measured)
    since_best = 0
    n_batch = batch or BATCH[strategy]
    while len(res.trials) < budget:
        stop = _stop_reason(t0, time_limit, patience, since_best)
        if stop is not None:
            res.stopped = stop
            break
        if not queue:
            _absorb(db, spec, device, strat, measured)  # pick up concurrent tuners' records
            queue = [c for c in strat.ask(min(n_batch, budget - len(res.trials)), set(measured))
                     if c not in measured]
            if not queue:
                res.stopped = "exhausted"
                break
            prebuild(runner, spec, queue, device)
        config = queue.pop(0)
        if config in measured:
            continue
        m = runner.measure(spec, config, device)
        rec = make_record(spec, config, device, m)
        db.add(rec)
        measured[config] = rec
        strat.observe(rec)
        res.trials.append((config, m))
        res.statuses[m.status.value] = res.statuses.get(m.status.value, 0) + 1
        improved, best_t = _after_trial(strat, config)
        since_best = 0 if improved else since_best + 1
        if progress is not None:
            progress(_progress_event(spec, res, budget, best_t, roof, m, t0, time_limit))
    _summarize(res, strat, default, earlier)
    res.elapsed = time.monotonic() - t0
    return res


def _stop_reason(t0: float, time_limit: float | None, patience: int | None, since_best: int) -> str | None:
    """Why tuning stops before the next trial ("time_limit", "patience"), or None to go on."""
    if time_limit is not None and time.monotonic() - t0 >= time_limit:
        return "time_limit"
    if patience is not None and since_best >= patience:
        return "patience"
    return None


def _after_trial(strat: Strategy, config: Config) -> tuple[bool, float | None]:
    """Whether `config`'s time beat every earlier one by IMPROVEMENT, and the best time so far. The
    strategy has observed every measured record: its times are this workload's comparable ones."""
    t = strat.seconds.get(config)
    prior = min((v for c, v in strat.seconds.items() if v is not None and c != config), default=None)
    improved = t is not None and (prior is None or t < prior * (1.0 - IMPROVEMENT))
    best_t = t if t is not None and (prior is None or t < prior) else prior
    return improved, best_t


def _progress_event(spec: KernelSpec, res: TuneResult, budget: int, best_t: float | None, roof: float,
                    m: Any, t0: float, time_limit: float | None) -> ProgressEvent:
    elapsed = time.monotonic() - t0
    done = len(res.trials)
    eta = elapsed / done * (budget - done) if done else None
    if time_limit is not None and eta is not None:
        eta = min(eta, max(0.0, time_limit - elapsed))
    return ProgressEvent(spec.name, spec.family, done, budget, best_t,
                         roof / best_t if best_t and roof > 0 else None, elapsed, eta, m.status)


def _summarize(res: TuneResult, strat: Strategy, default: Config | None, earlier: set[Config]) -> None:
    """Fill the result's default, best and running-best history from the strategy's final times.
    Paired times are rescaled as the reference's pooled median settles: report them all at the end's."""
    times = {c: v for c, v in strat.seconds.items() if v is not None}
    res.default_seconds = times.get(default) if default is not None else None
    best = _best(times)
    if best is not None:
        res.best_config, res.best_seconds = best
    running: float | None = min((times[c] for c in earlier if c in times), default=None)
    for config, _ in res.trials:
        v = times.get(config)
        if v is not None and (running is None or v < running):
            running = v
        res.history.append(running)


def _absorb(db: TuningDB, spec: KernelSpec, device: Any, strat: Strategy, measured: dict[Config, Record]) -> None:
    """Records of this workload on this device not seen yet: marked measured, shown to the strategy."""
    for rec in db.measured(spec.key, device.key).values():
        if rec.config not in measured:
            measured[rec.config] = rec
            strat.observe(rec)


def _best(times: dict[Config, float]) -> tuple[Config, float] | None:
    """The fastest config, ties by Config.key (as records.ranked, which the database's best uses)."""
    if not times:
        return None
    t, _, c = min((t, c.key, c) for c, t in times.items())
    return c, t
