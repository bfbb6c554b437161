"""Search strategies, budgets, early stopping, resume (also after SIGKILL) and the tune command,
all with a fake runner and fake timings."""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tilefuse.schedule.config import Config, sha256_json
from tilefuse.autotune.database import TuningDB
from tilefuse.autotune.device import cpu_device
from tilefuse.schedule.records import Status
from tilefuse.autotune.runners import FakeRunner
from tilefuse.autotune.search import tune_kernel
from tilefuse.autotune.space import SearchSpace
from tilefuse.autotune.strategies import STRATEGIES
from tilefuse.kernels.base import KernelSpec

TESTS = Path(__file__).parent


class FakeSpec(KernelSpec):
    """A kernel with three knobs (6 x 6 x 4 = 144 configs) of which 84 are legal (a * b <= 32); the
    cost model's hooks it does not define are KernelSpec's defaults."""

    family = "fake"

    def __init__(self, name: str = "k0_fake", cap: int = 32):
        self.name = name
        self.cap = cap
        self.constraint_calls = 0

    @property
    def key(self) -> str:
        return sha256_json(self.describe())

    def describe(self) -> dict:
        return {"family": self.family, "name": self.name, "cap": self.cap}

    def knob_space(self, target):
        return {"a": (1, 2, 4, 8, 16, 32), "b": (1, 2, 4, 8, 16, 32), "c": (0, 1, 2, 3)}

    def constraints(self, config, target):
        self.constraint_calls += 1
        a, b = config.int("a"), config.int("b")
        return [f"a*b={a * b} > {self.cap}"] if a * b > self.cap else []

    def default_config(self, target):
        return Config(a=1, b=1, c=0)

    def family_features(self, config):
        return {}

    def mma_dtype(self):
        return None

    def flops(self):
        return 1e6

    def bytes_moved(self):
        return 1e4

    def grid(self, config):
        return (1, 1, 1)


OPT = Config(a=4, b=8, c=2)


def latency(c: Config) -> float:
    """A smooth synthetic latency with its minimum (1 ms) at OPT."""
    return 1e-3 * (1 + abs(math.log2(c.int("a")) - 2)) * (1 + abs(math.log2(c.int("b")) - 3)) * \
        (1 + 0.5 * abs(c.int("c") - 2))


def slow_latency(c: Config) -> float:
    time.sleep(0.05)
    return latency(c)


@pytest.fixture
def dev():
    return cpu_device()


@pytest.fixture
def db():
    with TuningDB("sqlite://") as d:
        yield d


def test_space_prunes_before_anything_else(dev):
    spec = FakeSpec()
    space = SearchSpace(spec, dev.target)
    legal = space.legal()
    assert len(legal) == 84 and all(c.int("a") * c.int("b") <= 32 for c in legal)
    assert sorted(space.grid_order(), key=lambda c: c.key) == sorted(legal, key=lambda c: c.key)
    rng = random.Random(0)
    assert all(space.is_legal(c) for c in space.sample(rng, 50))
    for c in legal[:20]:
        m = space.mutate(c, rng)
        assert m is None or (space.is_legal(m) and m != c)
        x = space.crossover(c, legal[-1], rng)
        assert x is None or space.is_legal(x)
    assert not space.is_legal(Config(a=32, b=32, c=0)) and not space.is_legal(Config(a=3, b=1, c=0))
    assert space.default() == Config(a=1, b=1, c=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_finds_optimum_within_budget(strategy, dev, db):
    spec = FakeSpec()
    runner = FakeRunner(latency)
    budget = 84 if strategy == "grid" else 60
    res = tune_kernel(spec, dev, runner, db, budget=budget, strategy=strategy, seed=3)
    space = SearchSpace(spec, dev.target)
    assert len(runner.calls) == len(res.trials) <= budget
    assert len(set(runner.calls)) == len(runner.calls), "a config was measured twice"
    assert all(space.is_legal(c) for c in runner.calls), "an illegal config reached the runner"
    assert runner.calls[0] == spec.default_config(dev.target)
    assert res.best_config == OPT and res.best_seconds == pytest.approx(1e-3)
    assert res.history == sorted(res.history, reverse=True)  # best-so-far never gets worse
    assert len(db.measured(spec.key, dev.key)) == len(res.trials)
    assert res.default_seconds == pytest.approx(latency(spec.default_config(dev.target)))


def test_grid_exhausts_small_space(dev, db):
    res = tune_kernel(FakeSpec(), dev, FakeRunner(latency), db, budget=500, strategy="grid")
    assert len(res.trials) == 84 and res.stopped == "exhausted"


@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_time_limit(strategy, dev, db):
    t0 = time.monotonic()
    res = tune_kernel(FakeSpec(), dev, FakeRunner(slow_latency), db, budget=80, strategy=strategy, time_limit=0.4)
    assert res.stopped == "time_limit" and 1 <= len(res.trials) < 20
    assert time.monotonic() - t0 < 3.0


class SparseSpec(FakeSpec):
    """Five knobs of 6 values (7776 configs), legal only where a == b == c and d == e: 36 configs, 1 in 216.
    Tests lower space.ENUMERATE_LIMIT below 7776, so the space is sampled, as CPU matmul spaces are."""

    family = "fake_sparse"

    def knob_space(self, target):
        return {k: (1, 2, 4, 8, 16, 32) for k in "abcde"}

    def constraints(self, config, target):
        self.constraint_calls += 1
        a, b, c, d, e = (config.int(k) for k in "abcde")
        return [] if a == b == c and d == e else ["off the diagonal"]

    def default_config(self, target):
        return Config(a=1, b=1, c=1, d=1, e=1)


@pytest.mark.parametrize("seed", range(4))
def test_random_search_of_a_sparse_space_runs_its_budget_and_resumes(seed, dev, tmp_path, monkeypatch):
    """Rejection sampling found no legal config in a batch's draws often here, and the search stopped as
    "exhausted" after a trial or a few (the matmul kernels with --set T=4 H=64 I=96 --seed 2 did)."""
    from tilefuse.autotune import space

    monkeypatch.setattr(space, "ENUMERATE_LIMIT", 1000)
    spec = SparseSpec()
    assert not SearchSpace(spec, dev.target).enumerable
    with TuningDB(f"sqlite:///{tmp_path / 't.db'}") as db:
        first = tune_kernel(spec, dev, FakeRunner(latency), db, budget=12, strategy="random", seed=seed)
        again = tune_kernel(spec, dev, FakeRunner(latency), db, budget=12, strategy="random", seed=seed)
        assert (len(first.trials), first.stopped) == (12, "budget")
        assert (len(again.trials), again.stopped, again.previous) == (12, "budget", 12)
        last = tune_kernel(spec, dev, FakeRunner(latency), db, budget=40, strategy="random", seed=seed)
        assert (len(last.trials), last.stopped) == (12, "exhausted")  # all 36 measured: now it is
        assert len(db.measured(spec.key, dev.key)) == 36


def test_early_stopping_on_patience(dev, db):
    flat = FakeRunner(lambda c: 1e-3)
    res = tune_kernel(FakeSpec(), dev, flat, db, budget=80, strategy="random", patience=5)
    assert res.stopped == "patience" and len(res.trials) == 6  # the first sets the best, 5 more fail to beat it


def test_resume_measures_nothing_twice(tmp_path, dev):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    spec = FakeSpec()
    r1, r2 = FakeRunner(latency), FakeRunner(latency)
    with TuningDB(url) as db:
        tune_kernel(spec, dev, r1, db, budget=10, strategy="model", seed=0)
    with TuningDB(url) as db:
        res = tune_kernel(spec, dev, r2, db, budget=10, strategy="model", seed=0)
        measured = db.measured(spec.key, dev.key)
    assert not set(r1.calls) & set(r2.calls)
    assert {c.key for c in r1.calls} | {c.key for c in r2.calls} == set(measured)
    assert len(measured) == 20 and res.previous == 10


def test_wrong_result_is_stored_but_never_wins(dev, db):
    spec = FakeSpec()
    cheat = Config(a=2, b=2, c=1)
    runner = FakeRunner(lambda c: 1e-6 if c == cheat else latency(c), wrong={cheat})
    res = tune_kernel(spec, dev, runner, db, budget=84, strategy="grid")
    assert cheat in runner.calls
    assert res.best_config == OPT
    rec = db.measured(spec.key, dev.key)[cheat.key]
    assert rec.measurement.status is Status.WRONG_RESULT and rec.measurement.median is None
    assert db.best(spec.key, dev.key).config == OPT


def test_failures_are_recorded_and_the_sweep_continues(dev, db):
    spec = FakeSpec()
    runner = FakeRunner(latency, fail=lambda c: c.int("c") == 1, error=lambda c: c.int("c") == 3)
    res = tune_kernel(spec, dev, runner, db, budget=40, strategy="random", seed=1)
    assert len(res.trials) == 40
    assert res.statuses.get("compile_error", 0) > 0 and res.statuses.get("runtime_error", 0) > 0
    statuses = {r.measurement.status for r in db.measured(spec.key, dev.key).values()}
    assert {Status.OK, Status.COMPILE_ERROR, Status.RUNTIME_ERROR} <= statuses


SWEEP = """
import sys
sys.path.insert(0, {tests!r})
from test_search import FakeSpec, slow_latency
from tilefuse.autotune.database import TuningDB
from tilefuse.autotune.device import cpu_device
from tilefuse.autotune.runners import FakeRunner
from tilefuse.autotune.search import tune_kernel
with TuningDB({url!r}) as db:
    tune_kernel(FakeSpec(), cpu_device(), FakeRunner(slow_latency), db, budget=60, strategy="random", seed=5)
"""


def test_sigkill_loses_nothing_and_resume_completes(tmp_path, dev):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    script = tmp_path / "sweep.py"
    script.write_text(textwrap.dedent(SWEEP.format(tests=str(TESTS), url=url)))
    spec = FakeSpec()
    proc = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 30
        n = 0
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            if os.path.exists(tmp_path / "tune.db"):
                with TuningDB(url) as db:
                    n = len(db.measured(spec.key, dev.key))
                if n >= 5:
                    break
        assert n >= 5, "the sweep never got going"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    with TuningDB(url) as db:
        before = db.measured(spec.key, dev.key)
        runner = FakeRunner(latency)
        res = tune_kernel(spec, dev, runner, db, budget=30, strategy="random", seed=5)
        after = db.records(workload_key=spec.key, device_key=dev.key)
    assert res.previous == len(before) and len(res.trials) == 30
    assert not {c.key for c in runner.calls} & set(before)
    assert len(after) == len({r.config.key for r in after}) == len(before) + 30


def test_tune_command_reports_and_resumes(tmp_path, monkeypatch, capsys):
    from tilefuse.autotune import tune
    from tilefuse.cli import tune as cli_tune

    monkeypatch.setattr(tune, "make_runner", lambda device: FakeRunner(lambda c: 1e-4 * (1 + len(c.key) % 7)))
    src = tmp_path / "g.tf"
    src.write_text("graph g(N=32) {\n  %a = input f32[N, N]\n  %b = input f32[N, N]\n"
                   "  %c = matmul(%a, %b)\n  %d = pointwise(%c) {expr=(max $0:f32 0.0:f32)}\n  output d = %d\n}\n")
    parser = argparse.ArgumentParser()
    cli_tune.register(parser.add_subparsers(dest="cmd"))
    argv = ["tune", str(src), "--budget", "5", "--db", str(tmp_path / "t.db"), "--report", str(tmp_path / "rep")]
    args = parser.parse_args(argv)
    assert args.fn(args) == 0
    out = capsys.readouterr()
    assert "| kernel | family | trials |" in out.out and "5 (+0 earlier)" in out.out
    assert "/5" in out.err and "ETA" in out.err
    for name in ("results.json", "summary.md", "best_so_far.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    args = parser.parse_args(argv)
    assert args.fn(args) == 0
    assert "5 (+5 earlier)" in capsys.readouterr().out


def test_model_search_starts_from_other_workloads_winners(dev, db):
    """With another workload of the family tuned on this device, the model strategy's first batch
    holds that workload's winner (here the optimum of both), so it is measured right after the
    default instead of being searched for."""
    first = tune_kernel(FakeSpec("k0_fake"), dev, FakeRunner(latency), db, budget=30, strategy="random", seed=1)
    assert first.best_config == OPT
    runner = FakeRunner(latency)
    res = tune_kernel(FakeSpec("k1_fake"), dev, runner, db, budget=6, strategy="model", seed=0, batch=4)
    assert runner.calls[0] == Config(a=1, b=1, c=0)  # the default, always first
    assert OPT in runner.calls[1:5]
    assert res.best_config == OPT


def test_model_search_ignores_history_of_another_feature_schema(dev, db):
    """Records an older tilefuse stored (features without the schema marker) do not train the model."""
    import dataclasses

    from tilefuse.schedule.records import Status
    from tilefuse.autotune.space import SearchSpace
    from tilefuse.autotune.strategies import ModelStrategy

    tune_kernel(FakeSpec("k0_fake"), dev, FakeRunner(latency), db, budget=12, strategy="random", seed=1)
    recs = db.records(device_key=dev.key, status=Status.OK)
    spec = FakeSpec("k1_fake")
    space = SearchSpace(spec, dev.target)
    assert len(ModelStrategy(space, spec, dev, history=recs).history) == len(recs) > 0
    old = [dataclasses.replace(r, features={k: v for k, v in r.features.items() if k != "feature_schema"})
           for r in recs]
    assert ModelStrategy(space, spec, dev, history=old).history == []


def test_paired_measurements_rank_through_machine_drift(dev):
    """A slow phase of the machine (1.6x, five measurements long) strikes while the optimum is
    measured: unpaired, tuning keeps a runner-up measured in a fast phase; paired with the reference
    kernel, which slows alike, the optimum wins, in the sweep and in the database."""
    spec = FakeSpec()
    budget = len(SearchSpace(spec, dev.target).legal())
    with TuningDB("sqlite://") as db:
        order = FakeRunner(latency)
        tune_kernel(spec, dev, order, db, budget=budget, strategy="grid")
    at = order.calls.index(OPT)

    def drift(i: int) -> float:
        return 1.6 if abs(i - at) <= 2 else 1.0

    for reference in (None, 2e-3):
        with TuningDB("sqlite://") as db:
            runner = FakeRunner(latency, drift=drift, reference=reference)
            res = tune_kernel(spec, dev, runner, db, budget=budget, strategy="grid")
            assert runner.calls == order.calls
            best = db.best(spec.key, dev.key)
            if reference is None:
                assert res.best_config != OPT and best.config == res.best_config
                continue
            assert res.best_config == OPT and best.config == OPT and best.measurement.relative == pytest.approx(0.5)
            # paired times: relative x the pooled median of the reference's samples (2 ms outside the phase)
            assert res.best_seconds == pytest.approx(1e-3)
            assert res.default_seconds == pytest.approx(latency(spec.default_config(dev.target)))
            times = [t for t in res.history if t is not None]
            assert times == sorted(times, reverse=True)


def test_tpe_tells_paired_times_on_a_scale_fixed_at_the_first(dev):
    """TPE's values are told once, so a paired record is told as relative x the first paired record's
    reference time, not with comparable_seconds' pooled scale, which moves as records arrive."""
    from tilefuse.schedule.records import Measurement, Record, Status
    from tilefuse.autotune.strategies import TpeStrategy

    spec = FakeSpec()
    strat = TpeStrategy(SearchSpace(spec, dev.target), seed=0)

    def record(c: Config, seconds: float, reference: float) -> Record:
        m = Measurement(Status.OK, (seconds,) * 3, True, 0.0, reference=(reference,) * 3)
        return Record(spec.key, spec.family, spec.describe(), dev.key, dev.fingerprint, c, m, {})

    a, b, c = Config(a=1, b=1, c=0), Config(a=2, b=1, c=0), Config(a=4, b=1, c=0)
    strat.observe(record(a, 2e-3, 1e-3))  # relative 2; scale fixed at 1 ms
    strat.observe(record(b, 9e-3, 3e-3))  # relative 3, measured in a 3x slow phase
    strat.observe(Record(spec.key, spec.family, spec.describe(), dev.key, dev.fingerprint, c,
                         Measurement(Status.OK, (5e-3,) * 3, True, 0.0), {}))  # unpaired: its median
    told = {Config(t.params): t.value for t in strat.study.trials}
    assert told == pytest.approx({a: math.log(2e-3), b: math.log(3e-3), c: math.log(5e-3)})
