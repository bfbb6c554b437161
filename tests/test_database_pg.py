"""The tuning database on PostgreSQL: the SQLite tests' behaviour, schema creation and migration, several
tuner processes sharing one database (records, resume, one Optuna TPE study), foreign and newer databases,
and what a shared server adds (deadlocks, serialization failures, dropped connections).

The server is a throwaway one from the `pgserver` wheel (tests/pg_fixture.py); without it the module skips.
Worker processes are spawned (not forked), as tuners on other machines would be separate interpreters."""

from __future__ import annotations

import inspect
import json
import multiprocessing
import os
import random
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import test_database as sqlite_tests
from pg_fixture import PgServer, missing
from test_database import H200, V0_DDL, rec
from test_search import FakeSpec, latency
from tilefuse.schedule.config import Config
from tilefuse.autotune.database import SCHEMA_VERSION, DatabaseError, TuningDB
from tilefuse.autotune.device import cpu_device
from tilefuse.autotune.runners import FakeRunner
from tilefuse.autotune.search import make_record, tune_kernel
from tilefuse.autotune.space import SearchSpace
from tilefuse.autotune.strategies import TpeStrategy

if missing():
    pytest.skip(missing(), allow_module_level=True)

TIMEOUT = 120  # seconds for one worker call: generous, the CI machine has two shared cores


@pytest.fixture(scope="session")
def pg():
    server = PgServer()
    yield server
    server.stop()


@pytest.fixture
def url(pg):
    """A new, empty database for each test."""
    return pg.new_database()


@pytest.fixture(scope="module")
def workers():
    """Three spawned processes shared by this module's multi-process tests (spawning is the slow part)."""
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        yield pool


def together(pool, tmp_path: Path, fn, *calls: tuple) -> list:
    """fn(start, *args) for every args tuple, each in a different worker process, all running at once."""
    start = tmp_path / f"start-{fn.__name__}"
    start.mkdir()
    pending = [pool.apply_async(fn, ((str(start), len(calls)), *args)) for args in calls]
    return [p.get(TIMEOUT) for p in pending]


def _start_together(where: str, n: int) -> None:
    """Wait for `n` distinct processes to get here (a process busy waiting cannot take a second call)."""
    Path(where, str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(where)) < n:
        assert time.monotonic() < deadline, f"only {len(os.listdir(where))} of {n} worker processes started"
        time.sleep(0.01)


def _wait_for_lock_waiter(pg: PgServer, url: str) -> None:
    """Wait until a session of the database at `url` waits for a lock (a row, or a transaction to end)."""
    name = sa.engine.make_url(url).database
    deadline = time.monotonic() + 30
    while not pg.execute("SELECT 1 FROM pg_stat_activity WHERE datname = :db AND wait_event_type = 'Lock'", db=name):
        assert time.monotonic() < deadline, "the writer never blocked"
        time.sleep(0.02)


# ------------------------------------------------------------------------ the SQLite behaviour, on PostgreSQL

SAME_AS_SQLITE = [
    sqlite_tests.test_round_trip_add_records_best,  # also: add() says whether the record was new
    sqlite_tests.test_failed_wrong_and_unverified_records_never_win,
    sqlite_tests.test_best_for_arch_and_filters,
    sqlite_tests.test_toolchain_is_part_of_the_record_key,
    sqlite_tests.test_empty_database,
    sqlite_tests.test_export_import_round_trip,  # exports from PostgreSQL, imports into SQLite
    sqlite_tests.test_import_reports_bad_line_and_imports_nothing,
]


@pytest.mark.parametrize("case", SAME_AS_SQLITE, ids=lambda f: f.__name__.removeprefix("test_"))
def test_same_behaviour_as_sqlite(case, url, tmp_path):
    extra = {"tmp_path": tmp_path} if "tmp_path" in inspect.signature(case).parameters else {}
    case(url, **extra)


def test_schema_created_on_postgres(url, pg):
    created = 1.7e9 + 0.123456789  # a time.time() value: needs a double precision column
    with TuningDB(url) as db:
        assert db.add(rec(1, created=created))
        assert db.records()[0].created == created
    tables = {name for (name,) in pg.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", url)}
    assert tables == {"meta", "workloads", "devices", "records"}
    assert pg.execute("SELECT app, schema_version FROM meta", url) == [("tilefuse-tuning", SCHEMA_VERSION)]
    indexes = {name for (name,) in pg.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'", url)}
    assert {"ix_records_workload_device", "ix_devices_arch"} <= indexes
    with TuningDB(url) as db:  # reopening checks the schema and creates nothing
        assert db.count() == 1


def _open_and_add(start, url: str, i: int) -> bool:
    _start_together(*start)
    with TuningDB(url) as db:
        return db.add(rec(i, device=H200))


def test_migration_v0_to_v1_by_two_processes_at_once(url, pg, workers, tmp_path):
    for stmt in filter(str.strip, V0_DDL.split(";")):
        pg.execute(stmt, url)
    r = rec(2, device=H200)
    m = r.measurement
    pg.execute("INSERT INTO workloads VALUES (:k, :f, :d)", url, k=r.workload_key, f=r.family,
               d=json.dumps(r.workload))
    pg.execute("INSERT INTO devices VALUES (:k, :fp)", url, k=r.device_key, fp=json.dumps(r.device))
    pg.execute("INSERT INTO records VALUES (:key, :w, :d, :ck, :c, :status, :samples, :median, true, :max_error, "
               ":error, :compile_seconds, :resources, :toolchain, :created)", url, key=r.key, w=r.workload_key,
               d=r.device_key, ck=r.config.key, c=r.config.to_json(), status=m.status.value,
               samples=json.dumps(list(m.samples)), median=m.median, max_error=m.max_error, error=m.error,
               compile_seconds=m.compile_seconds, resources=json.dumps(m.resources),
               toolchain=json.dumps(r.toolchain), created=r.created)
    # both open the v0 database at the same moment: one migrates, the other waits and finds schema 1
    assert together(workers, tmp_path, _open_and_add, (url, 3), (url, 4)) == [True, True]
    assert pg.execute("SELECT schema_version FROM meta", url) == [(SCHEMA_VERSION,)]
    with TuningDB(url) as db:
        back = {x.key: x for x in db.records()}
        assert len(back) == 3 and back[r.key].features == {} and back[r.key].measurement == m
        assert db.best_for_arch(r.workload_key, "sm_90") == back[r.key]  # devices.arch was filled in
        assert db.records()[-1].features == {"ai": 4.0}


# ------------------------------------------------------------------------ several processes, one database

COMMON = [rec(5000 + i, workload=f"w-common{i % 5}") for i in range(20)]


def _writer(start, url: str, worker: int, n: int) -> tuple[int, int, int]:
    _start_together(*start)
    with TuningDB(url) as db:  # all open a new database at once: one creates the tables
        own = sum(db.add(rec(worker * 1000 + i, workload=f"w{worker}")) for i in range(n))
        shared = int(db.add(rec(10_000, workload="w-shared")))
        batch = COMMON[:]
        random.Random(worker).shuffle(batch)  # batches in different orders take row locks in different orders
        return own, shared, db.add_many(batch)


def test_concurrent_writers_lose_and_duplicate_nothing(url, pg, workers, tmp_path):
    results = together(workers, tmp_path, _writer, *[(url, w, 30) for w in range(3)])
    assert [own for own, _, _ in results] == [30, 30, 30]
    assert sum(shared for _, shared, _ in results) == 1  # exactly one process stored it
    assert sum(common for _, _, common in results) == len(COMMON)  # each common record counted new once
    expected = {rec(w * 1000 + i, workload=f"w{w}").key for w in range(3) for i in range(30)}
    expected |= {rec(10_000, workload="w-shared").key} | {r.key for r in COMMON}
    with TuningDB(url) as db:
        keys = [r.key for r in db.records()]
        assert len(keys) == len(set(keys)) == db.count() == len(expected) and set(keys) == expected
        assert sorted(n for _, _, n in db.workloads()) == [1, 4, 4, 4, 4, 4, 30, 30, 30]
        assert [d["records"] for d in db.devices()] == [len(expected)]
    assert pg.execute("SELECT count(*), count(DISTINCT key) FROM records", url) == [(len(expected),) * 2]


def _tune(start, url: str, strategy: str, budget: int, seed: int) -> tuple[list[dict], int]:
    """One tuner process: the configs it measured and how many it found measured already."""
    if start is not None:
        _start_together(*start)
    runner = FakeRunner(latency)
    with TuningDB(url) as db:
        res = tune_kernel(FakeSpec(), cpu_device(), runner, db, budget=budget, strategy=strategy, seed=seed,
                          optuna_storage=url if strategy == "tpe" else None)
    return [dict(c) for c in runner.calls], res.previous


def test_resume_across_processes(url, workers):
    first, previous = workers.apply_async(_tune, (None, url, "random", 8, 0)).get(TIMEOUT)
    assert len(first) == 8 and previous == 0
    # this process resumes the sweep with the same seed, so it would propose the same configs first
    spec, dev, runner = FakeSpec(), cpu_device(), FakeRunner(latency)
    with TuningDB(url) as db:
        res = tune_kernel(spec, dev, runner, db, budget=8, strategy="random", seed=0)
        measured = db.measured(spec.key, dev.key)
    assert res.previous == 8 and len(res.trials) == 8
    assert not {Config(c) for c in first} & set(runner.calls)
    assert set(measured) == {Config(c).key for c in first} | {c.key for c in runner.calls}


def test_tpe_study_is_shared_by_two_processes(url, workers, tmp_path):
    import optuna

    (a, _), (b, _) = together(workers, tmp_path, _tune, (url, "tpe", 6, 1), (url, "tpe", 6, 2))
    assert len(a) == len(b) == 6
    spec, dev = FakeSpec(), cpu_device()
    study = optuna.load_study(study_name=f"tilefuse-{spec.key[:16]}-{dev.key[:16]}", storage=url)
    told = {Config(t.params) for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    assert {Config(c) for c in a} <= told and {Config(c) for c in b} <= told  # both processes' trials
    with TuningDB(url) as db:  # the tuning tables and Optuna's live side by side
        assert set(db.measured(spec.key, dev.key)) == {Config(c).key for c in a + b}


def test_optuna_first_start_beside_another(url, pg):
    """Optuna creates its tables without a lock: a tuner whose CREATE collides with another's tries again."""
    from optuna.storages._rdb import models

    from tilefuse.autotune.strategies import _rdb_storage

    out: dict[str, object] = {}

    def first_start() -> None:
        try:
            out["storage"] = _rdb_storage(url)
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            out["error"] = err

    other = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with other.connect() as conn:
        models.BaseModel.metadata.create_all(conn)  # another tuner's first start, not committed yet
        starter = threading.Thread(target=first_start)
        starter.start()
        _wait_for_lock_waiter(pg, url)  # its CREATE waits on ours ...
        conn.commit()  # ... and fails as a duplicate once ours commits
        starter.join(TIMEOUT)
    other.dispose()
    assert "error" not in out, out
    out["storage"].engine.dispose()


def test_tpe_counts_another_tuners_measurement_once(url):
    spec, dev = FakeSpec(), cpu_device()
    space = SearchSpace(spec, dev.target)
    runner = FakeRunner(latency)
    one = TpeStrategy(space, seed=1, storage=url, study_name="shared")
    other = TpeStrategy(space, seed=2, storage=url, study_name="shared")
    (c,) = one.ask(1, set())
    r = make_record(spec, c, dev, runner.measure(spec, c, dev))
    one.observe(r)
    other.observe(r)  # as the other tuner's next _absorb shows it the record: its trial is in the study
    d = next(x for x in space.legal() if x != c)
    other.observe(make_record(spec, d, dev, runner.measure(spec, d, dev)))  # measured outside the study
    params = [Config(t.params) for t in one.study.get_trials()]
    assert params.count(c) == 1 and params.count(d) == 1


# ------------------------------------------------------------------------ foreign, newer, unreachable

def test_foreign_database_is_a_clear_error(url, pg):
    name = sa.engine.make_url(url).database
    pg.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)", url)
    with pytest.raises(DatabaseError, match=f"{name}.* is not a tilefuse tuning database.*users"):
        TuningDB(url)
    pg.execute("CREATE TABLE meta (k TEXT, v TEXT)", url)  # another application's own 'meta' table
    with pytest.raises(DatabaseError, match="not a tilefuse tuning database"):
        TuningDB(url)


def test_readers_create_nothing_in_an_empty_database(url, pg):
    """compile, db show and costmodel open the database to read: an empty one is "nothing tuned yet"."""
    from tilefuse.autotune.database import MissingDatabaseError

    with pytest.raises(MissingDatabaseError, match="no tables yet"):
        TuningDB(url, create=False)
    assert pg.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", url) == []
    with TuningDB(url) as db:  # a writer creates the schema
        db.add(rec(1))
    with TuningDB(url, create=False) as db:
        assert db.count() == 1


def test_optuna_tables_may_come_first(url):
    import optuna

    optuna.storages.RDBStorage(url).engine.dispose()
    with TuningDB(url) as db:
        assert db.add(rec(1))


def test_newer_schema_is_a_clear_error(url, pg):
    TuningDB(url).close()
    pg.execute("UPDATE meta SET schema_version = :v", url, v=SCHEMA_VERSION + 1)
    with pytest.raises(DatabaseError, match=f"schema {SCHEMA_VERSION + 1}.*newer"):
        TuningDB(url)


def test_missing_database_is_a_clear_error(pg):
    url = pg.url("no_such_db").replace("postgres:@", "postgres:hunter2@")
    with pytest.raises(DatabaseError, match='cannot use database postgresql://.*no_such_db.*does not exist') as err:
        TuningDB(url)
    assert "hunter2" not in str(err.value)


# ------------------------------------------------------------------------ what a shared server adds

@pytest.mark.parametrize("conflict", ["deadlock", "serialization"])
def test_conflicting_writes_run_again(conflict, url, pg):
    name = sa.engine.make_url(url).database
    if conflict == "serialization":  # a DBA's choice; every write conflict then aborts one side
        pg.execute(f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'serializable'")
    else:
        pg.execute(f"ALTER DATABASE \"{name}\" SET deadlock_timeout = '100ms'")
    r1, r2 = rec(1, workload="w-a"), rec(2, workload="w-b")
    out: dict[str, object] = {}
    other = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with TuningDB(url) as db, other.connect() as conn:
        conn.exec_driver_sql("SET deadlock_timeout = '10s'")  # so that TuningDB is the one PostgreSQL aborts
        conn.commit()
        conn.execute(sa.text("INSERT INTO workloads VALUES ('w-a', 'matmul', '{}')"))  # not committed yet

        def write() -> None:
            try:
                out["new"] = db.add_many([r2, r1] if conflict == "deadlock" else [r1])
            except DatabaseError as err:
                out["error"] = err

        writer = threading.Thread(target=write)
        writer.start()
        _wait_for_lock_waiter(pg, url)  # the writer waits for 'w-a'
        if conflict == "deadlock":  # ... holding 'w-b', which this connection now waits for
            conn.execute(sa.text("INSERT INTO workloads VALUES ('w-b', 'matmul', '{}')"))
        conn.commit()
        writer.join(TIMEOUT)
        n = 2 if conflict == "deadlock" else 1
        assert out == {"new": n} and db.count() == n
    other.dispose()


def test_dropped_connections_are_replaced(url, pg):
    with TuningDB(url) as db:
        assert db.add(rec(1))
        # a server restart or an idle-connection timeout ends the pooled connection under the tuner
        pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db",
                   db=sa.engine.make_url(url).database)
        assert db.add(rec(2)) and db.count() == 2


def test_tune_graph_shares_tpe_studies_through_a_server_database(url):
    """`tilefuse tune --strategy tpe --db postgresql://...` (tune_graph) keeps each kernel's Optuna study
    in that database, so tuners on other machines continue the same study."""
    import optuna

    import tilefuse as tf
    from tilefuse.autotune.tune import tune_graph

    g = tf.GraphBuilder("pg_tpe")
    g.output("c", g.input("a", (64, 48), "f32") @ g.input("b", (48, 32), "f32"))
    dev = cpu_device()
    with TuningDB(url) as db:
        res = tune_graph(g, "cpu", budget=4, strategy="tpe", db=db, runner=FakeRunner(lambda c: 1e-3), device=dev)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage=url)]
    key = res.rows[0].workload_key
    assert f"tilefuse-{key[:16]}-{dev.key[:16]}" in names
