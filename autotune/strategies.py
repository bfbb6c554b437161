"""Search strategies over a SearchSpace: grid, random, Optuna TPE and model-guided evolution.

A strategy proposes batches (`ask(n, measured)`) of legal configs not yet measured and learns from
every record of the workload (`observe(record)`), including records from earlier or concurrent runs."""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..deps import require
from ..schedule.config import Config
from ..schedule.records import Measurement, Record, comparable_seconds, ranked
from .space import SearchSpace

if TYPE_CHECKING:
    from ..kernels.base import KernelSpec

log = logging.getLogger(__name__)

STRATEGIES = ("grid", "random", "tpe", "model")


class Strategy:
    """Base: remembers what was measured; subclasses pick what to measure next."""

    name = "base"

    def __init__(self, space: SearchSpace, seed: int = 0):
        self.space = space
        self.rng = random.Random(seed)
        self.measurements: dict[Config, Measurement] = {}
        self._seconds: dict[Config, float | None] | None = None

    def observe(self, record: Record) -> None:
        self.measurements[record.config] = record.measurement
        self._seconds = None

    @property
    def seconds(self) -> dict[Config, float | None]:
        """Config -> comparable time of every observed measurement (records.comparable_seconds: paired
        ones drift-corrected); None: failed, wrong or rejected."""
        if self._seconds is None:
            configs = list(self.measurements)
            self._seconds = dict(zip(configs, comparable_seconds([self.measurements[c] for c in configs])))
        return self._seconds

    def ask(self, n: int, measured: set[Config]) -> list[Config]:
        raise NotImplementedError

    def best(self, k: int) -> list[Config]:
        ok = sorted((s, c.key, c) for c, s in self.seconds.items() if s is not None)
        return [c for _, _, c in ok[:k]]


class GridStrategy(Strategy):
    """Every legal config once, in the space's deterministic space-filling order."""

    name = "grid"

    def __init__(self, space: SearchSpace, seed: int = 0):
        super().__init__(space, seed)
        self._it: Iterator[Config] = space.grid_order()

    def ask(self, n: int, measured: set[Config]) -> list[Config]:
        out: list[Config] = []
        for c in self._it:
            if c not in measured:
                out.append(c)
                if len(out) >= n:
                    break
        return out


class RandomStrategy(Strategy):
    """Uniform samples of the legal, unmeasured configs."""

    name = "random"

    def ask(self, n: int, measured: set[Config]) -> list[Config]:
        return self.space.sample(self.rng, n, exclude=measured)


class TpeStrategy(Strategy):
    """Optuna's TPE over categorical knobs (ask/tell). The objective is log(seconds); failed and
    illegal configs get a large penalty, told without being measured (illegal ones never compile).
    `storage` (an SQLAlchemy URL) shares one study between tuner processes."""

    name = "tpe"
    PENALTY = 1e3  # log-seconds of real kernels are far below this

    def __init__(self, space: SearchSpace, seed: int = 0, storage: str | None = None, study_name: str | None = None):
        super().__init__(space, seed)
        optuna = require("optuna", "the 'tpe' search strategy")
        self._optuna = optuna
        cat = optuna.distributions.CategoricalDistribution
        self.dists: dict[str, Any] = {k: cat(list(space.knobs[k])) for k in space.names}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate TPE is "experimental"
            sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
        self._shared = storage is not None
        with _quiet_optuna():
            self.study = optuna.create_study(direction="minimize", sampler=sampler,
                                             storage=_rdb_storage(storage) if storage is not None else None,
                                             study_name=study_name, load_if_exists=self._shared)
        self._pending: dict[Config, Any] = {}
        self._told: set[Config] = {Config(t.params) for t in self.study.trials if t.state.is_finished()}
        self._synced = False  # shared study: `_told` re-read since the last ask
        self._scale: float | None = None  # seconds per unit of `relative`, fixed at the first paired record

    def _value(self, seconds: float | None) -> float:
        return math.log(seconds) if seconds is not None and seconds > 0 else self.PENALTY

    def _told_seconds(self, m: Measurement) -> float | None:
        """The time told to TPE, fixed when told: a paired measurement's `relative` times a scale set
        once (the first paired record's reference median; comparable_seconds' pooled scale moves as
        records arrive), an unpaired one's median."""
        rel = m.relative
        if rel is None:
            return m.median
        if self._scale is None:
            self._scale = float(np.median(m.reference))
        return rel * self._scale

    def observe(self, record: Record) -> None:
        super().observe(record)
        c = record.config
        value = self._value(self._told_seconds(record.measurement))
        with _quiet_optuna():
            trial = self._pending.pop(c, None)
            if trial is not None:
                self.study.tell(trial, value)
            elif c not in self._told and set(c) == set(self.dists) and not self._shared_trial(c):
                self.study.add_trial(self._optuna.trial.create_trial(params=dict(c), distributions=self.dists,
                                                                     value=value))
        self._told.add(c)

    def _shared_trial(self, c: Config) -> bool:
        """Whether another tuner sharing the study has a trial of `c` (told, or running: a tuner stores
        the record before it tells the trial), so adding one would count the measurement twice."""
        if not self._shared:
            return False
        if not self._synced:  # one read per batch of other tuners' records (between two asks)
            states = (self._optuna.trial.TrialState.COMPLETE, self._optuna.trial.TrialState.RUNNING)
            self._told |= {Config(t.params) for t in self.study.get_trials(deepcopy=False, states=states)}
            self._synced = True
        return c in self._told

    def ask(self, n: int, measured: set[Config]) -> list[Config]:
        out: list[Config] = []
        self._synced = False
        with _quiet_optuna():
            for _ in range(100 * n):
                if len(out) >= n:
                    break
                trial = self.study.ask(self.dists)
                c = Config(trial.params)
                if not self.space.is_legal(c):
                    self.study.tell(trial, self.PENALTY)
                elif c in measured or c in out or c in self._pending:
                    known = self.measurements.get(c)
                    if c in measured and c not in self._pending:
                        self.study.tell(trial, self._value(self._told_seconds(known) if known else None))
                    else:
                        self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
                else:
                    self._pending[c] = trial
                    out.append(c)
        if len(out) < n:  # TPE keeps proposing known configs: top up at random
            out += self.space.sample(self.rng, n - len(out), exclude=measured | set(out) | set(self._pending))
        return out


def _rdb_storage(url: str) -> Any:
    """Optuna's RDB storage at `url`. Optuna creates its tables on first use without a lock, so tuners
    starting together on a new PostgreSQL database collide (duplicate table or type); a retry finds the
    tables made."""
    import optuna
    import sqlalchemy as sa

    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(url)
        except sa.exc.DBAPIError as err:
            log.debug("Optuna storage not ready (%s); retrying", err.orig)
            time.sleep(0.05 * (attempt + 1) * (1 + random.random()))
    return optuna.storages.RDBStorage(url)


class _quiet_optuna:  # noqa: N801 - used as a context manager
    """Hold Optuna's per-trial INFO logging down for the duration (restored afterwards)."""

    def __enter__(self) -> None:
        import optuna

        self.level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(max(self.level, optuna.logging.WARNING))

    def __exit__(self, *exc: object) -> None:
        import optuna

        optuna.logging.set_verbosity(self.level)


class ModelStrategy(Strategy):
    """Model-guided evolutionary search: a pool of `pool` candidates (mutations and crossovers of the
    best measured configs, plus random ones) is ranked by the cost model; the top of the batch is
    measured (with a few random picks for exploration; half the batch while the roofline ranks) and
    the model refit on all records of the
    workload plus the device's history for the family (other workloads). XGBoost ranks once
    `min_xgb` OK records exist counting the history, the analytic roofline model before that; the
    best configs of the history's workloads that are legal here join the parents, so a device that
    has tuned similar kernels starts from what won there."""

    name = "model"

    def __init__(self, space: SearchSpace, spec: KernelSpec, device: Any, seed: int = 0,
                 history: list[Record] | None = None, pool: int = 2048, parents: int = 8, min_xgb: int = 8,
                 explore: float = 0.125, mutations: float = 0.5, crossovers: float = 0.2):
        super().__init__(space, seed)
        self.spec = spec
        self.device = device
        self.pool = pool
        self.parents = parents
        self.min_xgb = min_xgb
        self.explore = explore
        self.mutations = mutations
        self.crossovers = crossovers
        from ..costmodel.features import record_features

        # records of other workloads whose features this tilefuse computes (not an older schema's)
        self.history = [r for r in (history or []) if r.workload_key != spec.key and record_features(r)]
        self.records: dict[Config, Record] = {}
        self.model: Any = None
        self.model_name = "roofline"
        self._dirty = True
        self._features: dict[Config, dict[str, float]] = {}
        self.transfer = self._transfer_parents()

    def _transfer_parents(self) -> list[Config]:
        """The fastest config of each history workload, fastest workloads' winners first, where legal
        in this space (at most `parents`)."""
        best: dict[str, Record] = {}
        for _, r in ranked(self.history):  # fastest first: each workload's first is its winner
            best.setdefault(r.workload_key, r)
        out: list[Config] = []
        for r in best.values():
            if r.config not in out and self.space.is_legal(r.config):
                out.append(r.config)
        return out[:self.parents]

    def observe(self, record: Record) -> None:
        super().observe(record)
        self.records[record.config] = record
        self._dirty = True

    def _fit(self) -> None:
        from ..costmodel.models import ModelError, RooflineModel, XGBRankModel

        from ..costmodel.features import record_features

        ok = [r for r in self.records.values() if r.measurement.median is not None and record_features(r)]
        self.model, self.model_name = RooflineModel(), "roofline"
        if len(ok) + len(self.history) >= self.min_xgb:
            xgb = XGBRankModel(max_depth=4, min_child_weight=1.0, num_boost_round=100, seed=self.rng.randrange(2**31))
            try:
                xgb.fit(ok + self.history)
                self.model, self.model_name = xgb, "xgb"
            except ModelError as err:
                log.info("%s: cost model not trained (%s); ranking by roofline", self.spec.name, err)
        self._dirty = False

    def features(self, c: Config) -> dict[str, float]:
        f = self._features.get(c)
        if f is None:
            from ..costmodel.features import featurize

            f = featurize(self.spec, c, self.device)
            self._features[c] = f
        return f

    def candidates(self, measured: set[Config]) -> list[Config]:
        """Unique legal unmeasured configs: ~half mutations, ~a fifth crossovers, the rest random."""
        seen: set[Config] = set(measured)
        out: list[Config] = []

        def add(c: Config | None) -> None:
            if c is not None and c not in seen:
                seen.add(c)
                out.append(c)

        parents = self.best(self.parents)
        for c in self.transfer:
            add(c)  # unmeasured winners of other workloads are candidates themselves, and parents
            if c not in parents:
                parents.append(c)
        if parents:
            for _ in range(int(self.pool * self.mutations)):
                add(self.space.mutate(self.rng.choice(parents), self.rng))
            if len(parents) > 1:
                for _ in range(int(self.pool * self.crossovers)):
                    a, b = self.rng.sample(parents, 2)
                    add(self.space.crossover(a, b, self.rng))
        for c in self.space.sample(self.rng, max(0, self.pool - len(out)), exclude=seen):
            add(c)
        return out

    def ask(self, n: int, measured: set[Config]) -> list[Config]:
        if self._dirty or self.model is None:
            self._fit()
        pool = self.candidates(measured)
        if not pool:
            return []
        scores = np.asarray(self.model.predict([self.features(c) for c in pool]), dtype=np.float64)
        order = [pool[i] for i in np.argsort(-scores, kind="stable")]
        # Other workloads' winners go first, in the model's order, up to a quarter of the batch.
        head = [c for c in order if c in self.transfer][:max(1, n // 4)]
        order = head + [c for c in order if c not in head]
        # The analytic model is a weak ranker on CPUs: until XGBoost takes over, half the batch is random.
        n_explore = int(round(n * self.explore)) if self.model_name == "xgb" else n // 2
        chosen = order[:max(len(head), n - n_explore)]
        rest = order[len(chosen):]
        chosen += self.rng.sample(rest, min(len(rest), n - len(chosen)))
        return chosen


def make_strategy(name: str, space: SearchSpace, spec: KernelSpec, device: Any, seed: int = 0,
                  history: list[Record] | None = None, storage: str | None = None) -> Strategy:
    """The strategy called `name` (one of STRATEGIES)."""
    if name == "grid":
        return GridStrategy(space, seed)
    if name == "random":
        return RandomStrategy(space, seed)
    if name == "tpe":
        study = f"tilefuse-{spec.key[:16]}-{getattr(device, 'key', 'dev')[:16]}" if storage else None
        return TpeStrategy(space, seed, storage=storage, study_name=study)
    if name == "model":
        return ModelStrategy(space, spec, device, seed, history=history)
    raise ValueError(f"unknown search strategy {name!r}; accepted: {', '.join(STRATEGIES)}")
