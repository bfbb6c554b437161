"""Tuning database: round trips, empty/corrupt/foreign/newer files, migration, concurrency, SIGKILL."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import statistics
import sys
import textwrap

import pytest

from tilefuse.schedule.config import Config
from tilefuse.autotune.database import SCHEMA_VERSION, DatabaseError, TuningDB
from tilefuse.autotune.device import NOMINAL, cpu_device
from tilefuse.schedule.records import (Measurement, Record, RecordError, Status, comparable_seconds,
                                      corrected_seconds)

H100, H200, A100 = NOMINAL["H100"], NOMINAL["H200"], NOMINAL["A100"]
TOOLCHAIN = {"triton": "3.6.0", "tilefuse": "0.1.0"}


def rec(i: int = 0, *, device=H100, workload: str = "w-gemm", family: str = "matmul", status=Status.OK,
        samples=None, verified: bool = True, toolchain=None, created: float | None = None) -> Record:
    """A record of config BLOCK_M=i; its median is `i` ms unless samples are given."""
    if samples is None:
        samples = (1e-3 * (i + 1), 1e-3 * (i + 1.1), 1e-3 * (i + 0.9)) if status is Status.OK else ()
    m = Measurement(status, tuple(samples), verified, 0.0 if verified else None, "" if status is Status.OK else "boom",
                    0.5, {"registers": 96} if device.kind == "cuda" else {})
    return Record(workload, family, {"op": family, "M": 1024}, device.key, device.fingerprint,
                  Config(BLOCK_M=i, num_warps=4), m, toolchain or TOOLCHAIN, {"ai": float(i)},
                  float(1000 + i if created is None else created))


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path}/sub/tuning.db"


def test_round_trip_add_records_best(url):
    with TuningDB(url) as db:
        rs = [rec(i) for i in (3, 1, 2)]
        assert db.add(rs[0]) is True
        assert db.add(rs[0]) is False  # idempotent on Record.key
        assert db.add_many(rs) == 2
        assert db.count() == 3
        assert [r.to_json() for r in db.records()] == sorted((r.to_json() for r in rs),
                                                             key=lambda s: json.loads(s)["created"])
        back = db.records(workload_key="w-gemm", device_key=H100.key)
        assert {r.key for r in back} == {r.key for r in rs}
        assert all(r == o for r in back for o in rs if o.key == r.key)
        assert db.best("w-gemm", H100.key) == rs[1]
        assert db.best("w-gemm", H200.key) is None
        assert db.has("w-gemm", H100.key, Config(BLOCK_M=2, num_warps=4))
        assert not db.has("w-gemm", H100.key, Config(BLOCK_M=9, num_warps=4))
        assert not db.has("w-gemm", H200.key, Config(BLOCK_M=2, num_warps=4))
        assert set(db.measured("w-gemm", H100.key)) == {r.config.key for r in rs}


def test_failed_wrong_and_unverified_records_never_win(url):
    with TuningDB(url) as db:
        db.add_many([rec(5), rec(0, status=Status.WRONG_RESULT, samples=(1e-6,), verified=False),
                     rec(1, status=Status.OK, samples=(1e-6,), verified=False),
                     rec(2, status=Status.TIMEOUT), rec(3, status=Status.COMPILE_ERROR)])
        assert db.best("w-gemm", H100.key).config["BLOCK_M"] == 5
        assert len(db.records(status=Status.WRONG_RESULT)) == 1
        assert len(db.records(status="timeout")) == 1
        # failed configs still count as measured, so a resumed sweep skips them
        assert db.has("w-gemm", H100.key, Config(BLOCK_M=3, num_warps=4))


def test_best_for_arch_and_filters(url):
    with TuningDB(url) as db:
        db.add_many([rec(4, device=H100), rec(2, device=H200), rec(0, device=A100), rec(1, device=cpu_device()),
                     rec(7, device=H100, workload="w-attn", family="attention")])
        assert db.best_for_arch("w-gemm", "sm_90").device_key == H200.key
        assert db.best_for_arch("w-gemm", "sm_80").device_key == A100.key
        assert db.best_for_arch("w-gemm", "sm_89") is None
        assert db.best_for_arch("w-attn", "sm_90").config["BLOCK_M"] == 7
        assert len(db.records(arch="sm_90")) == 3
        assert len(db.records(family="attention")) == 1
        assert len(db.records(arch="sm_90", family="matmul")) == 2
        assert db.workloads() == [("w-attn", "attention", 1), ("w-gemm", "matmul", 4)]
        devs = {d["key"]: d for d in db.devices()}
        assert devs[H100.key]["records"] == 2 and devs[H100.key]["arch"] == "sm_90"
        assert devs[H200.key]["fingerprint"] == H200.fingerprint


def test_equal_times_break_ties_as_the_tuner_does(url):
    """Configs with equal times: the database serves the one the tuner reports (search._best:
    the smaller Config.key), whatever order the records' keys (which include the device) fall in."""
    from tilefuse.autotune.search import _best

    orders = set()
    with TuningDB(url) as db:
        for device in (H100, H200, A100, cpu_device()):
            tied = [rec(i, device=device, samples=(2e-3, 2e-3, 2e-3)) for i in (3, 4, 5, 6)]
            orders.add(min(tied, key=lambda r: r.key).config == min(tied, key=lambda r: r.config.key).config)
            db.add_many(tied)
            pick = _best({r.config: 2e-3 for r in tied})
            assert pick is not None and db.best("w-gemm", device.key).config == pick[0]
    assert orders == {True, False}  # both orders occurred: the test does not pass by luck of hashing


def test_toolchain_is_part_of_the_record_key(url):
    with TuningDB(url) as db:
        old, new = rec(1, toolchain={"triton": "3.5.0"}, created=1), rec(1, toolchain={"triton": "3.6.0"}, created=2)
        assert db.add(old) and db.add(new)
        assert db.count() == 2
        assert db.measured("w-gemm", H100.key)[old.config.key] == new  # most recent per config


def test_empty_database(url):
    with TuningDB(url) as db:
        assert db.count() == 0 and db.records() == [] and db.workloads() == [] and db.devices() == []
        assert db.best("w", "d") is None and db.best_for_arch("w", "sm_90") is None
        assert db.measured("w", "d") == {} and not db.has("w", "d", Config())
        buf = io.StringIO()
        assert db.export_jsonl(buf) == 0 and buf.getvalue() == ""
        assert db.import_jsonl(io.StringIO("")) == 0
    with TuningDB(url) as db:  # reopening an existing empty database
        assert db.count() == 0


def test_in_memory_database():
    with TuningDB("sqlite://") as db:
        assert db.add(rec(1)) and db.best("w-gemm", H100.key) == rec(1)


def test_default_url_comes_from_settings(tmp_path, monkeypatch):
    from tilefuse.settings import reload_settings

    monkeypatch.setenv("TILEFUSE_DB", str(tmp_path / "x" / "env.db"))
    try:
        reload_settings()
        with TuningDB() as db:
            assert db.url == f"sqlite:///{tmp_path}/x/env.db"
            db.add(rec(1))
        assert (tmp_path / "x" / "env.db").exists()
    finally:
        monkeypatch.undo()
        reload_settings()


def test_export_import_round_trip(url, tmp_path):
    rs = [rec(i, device=d) for i, d in enumerate((H100, H200, cpu_device()))] + [rec(9, status=Status.RUNTIME_ERROR)]
    with TuningDB(url) as db:
        db.add_many(rs)
        buf = io.StringIO()
        assert db.export_jsonl(buf) == 4
    lines = buf.getvalue().splitlines()
    assert [Record.from_json(s) for s in lines] == sorted(rs, key=lambda r: (r.created, r.key))
    with TuningDB(f"sqlite:///{tmp_path}/other.db") as db2:
        assert db2.import_jsonl(io.StringIO(buf.getvalue())) == 4
        assert db2.import_jsonl(io.StringIO(buf.getvalue())) == 0
        out = io.StringIO()
        db2.export_jsonl(out)
        assert out.getvalue() == buf.getvalue()


def test_import_reports_bad_line_and_imports_nothing(url):
    good = rec(1).to_json()
    with TuningDB(url) as db:
        with pytest.raises(RecordError, match=r":3: tuning record is not JSON"):
            db.import_jsonl(io.StringIO(f"{good}\n\n{{oops\n"))
        with pytest.raises(RecordError, match=r":2: tuning record is missing"):
            db.import_jsonl(io.StringIO(f"{good}\n{{\"schema\": 1}}\n"))
        assert db.count() == 0


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(DatabaseError, match=str(path)) as err:
        TuningDB(f"sqlite:///{path}")
    assert "not a database" in str(err.value)


def test_foreign_sqlite_file_is_a_clear_error(tmp_path):
    path = tmp_path / "foreign.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(DatabaseError, match="not a tilefuse tuning database.*users"):
        TuningDB(f"sqlite:///{path}")
    # another application's own 'meta' table is foreign too
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta (k TEXT, v TEXT)")
    con.commit()
    con.close()
    with pytest.raises(DatabaseError, match="not a tilefuse tuning database"):
        TuningDB(f"sqlite:///{path}")


def test_optuna_tables_may_share_the_database(tmp_path):
    path = tmp_path / "shared.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT)")
    con.execute("CREATE TABLE version_info (version_info_id INTEGER PRIMARY KEY, schema_version INTEGER)")
    con.commit()
    con.close()
    with TuningDB(f"sqlite:///{path}") as db:
        assert db.add(rec(1))


def test_newer_schema_is_a_clear_error(url):
    TuningDB(url).close()
    path = url.removeprefix("sqlite:///")
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET schema_version = ?", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    with pytest.raises(DatabaseError, match=f"schema {SCHEMA_VERSION + 1}.*newer"):
        TuningDB(url)


V0_DDL = """
CREATE TABLE meta (app VARCHAR(64) NOT NULL, schema_version INTEGER NOT NULL);
CREATE TABLE workloads (key VARCHAR(64) PRIMARY KEY, family VARCHAR(64) NOT NULL, description TEXT NOT NULL);
CREATE TABLE devices (key VARCHAR(64) PRIMARY KEY, fingerprint TEXT NOT NULL);
CREATE TABLE records (
    key VARCHAR(64) PRIMARY KEY, workload_key VARCHAR(64) NOT NULL REFERENCES workloads(key),
    device_key VARCHAR(64) NOT NULL REFERENCES devices(key), config_key VARCHAR(64) NOT NULL,
    config TEXT NOT NULL, status VARCHAR(32) NOT NULL, samples TEXT NOT NULL, median FLOAT,
    verified BOOLEAN NOT NULL, max_error FLOAT, error TEXT NOT NULL, compile_seconds FLOAT NOT NULL,
    resources TEXT NOT NULL, toolchain TEXT NOT NULL, created FLOAT NOT NULL);
CREATE INDEX ix_records_workload_device ON records (workload_key, device_key, config_key);
INSERT INTO meta VALUES ('tilefuse-tuning', 0);
"""


def test_migration_v0_to_current(tmp_path):
    path = tmp_path / "v0.db"
    r = rec(2, device=H200)
    con = sqlite3.connect(path)
    con.executescript(V0_DDL)
    con.execute("INSERT INTO workloads VALUES (?, ?, ?)", (r.workload_key, r.family, json.dumps(r.workload)))
    con.execute("INSERT INTO devices VALUES (?, ?)", (r.device_key, json.dumps(r.device)))
    m = r.measurement
    con.execute("INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (r.key, r.workload_key, r.device_key, r.config.key, r.config.to_json(), m.status.value,
                 json.dumps(list(m.samples)), m.median, 1, m.max_error, m.error, m.compile_seconds,
                 json.dumps(m.resources), json.dumps(r.toolchain), r.created))
    con.commit()
    con.close()
    with TuningDB(f"sqlite:///{path}") as db:
        (back,) = db.records()
        assert back.features == {} and back.key == r.key and back.measurement == m
        assert db.best_for_arch(r.workload_key, "sm_90") == back  # devices.arch was filled in
        assert db.add(rec(3, device=H200))  # the upgraded layout takes new records with features
        assert db.records()[-1].features == {"ai": 3.0}
    con = sqlite3.connect(path)
    assert con.execute("SELECT schema_version FROM meta").fetchall() == [(SCHEMA_VERSION,)]
    con.close()


def test_migration_v1_to_v2_keeps_records_unpaired(tmp_path):
    path = tmp_path / "v1.db"
    r = rec(2)
    con = sqlite3.connect(path)
    con.executescript(V0_DDL.replace("created FLOAT NOT NULL)", "created FLOAT NOT NULL, features TEXT NOT NULL)")
                      .replace("fingerprint TEXT NOT NULL)", "fingerprint TEXT NOT NULL, arch TEXT NOT NULL)")
                      .replace("'tilefuse-tuning', 0", "'tilefuse-tuning', 1"))
    con.execute("INSERT INTO workloads VALUES (?, ?, ?)", (r.workload_key, r.family, json.dumps(r.workload)))
    con.execute("INSERT INTO devices VALUES (?, ?, ?)", (r.device_key, json.dumps(r.device), "sm_90"))
    m = r.measurement
    con.execute("INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (r.key, r.workload_key, r.device_key, r.config.key, r.config.to_json(), m.status.value,
                 json.dumps(list(m.samples)), m.median, 1, m.max_error, m.error, m.compile_seconds,
                 json.dumps(m.resources), json.dumps(r.toolchain), r.created, json.dumps(r.features)))
    con.commit()
    con.close()
    with TuningDB(f"sqlite:///{path}") as db:
        (back,) = db.records()
        assert back == r and back.measurement.reference == () and back.measurement.relative is None
        paired = dataclasses.replace(rec(3), measurement=dataclasses.replace(
            rec(3).measurement, reference=(2e-3, 2e-3, 2e-3)))
        assert db.add(paired) and db.records()[-1].measurement.reference == (2e-3, 2e-3, 2e-3)
    con = sqlite3.connect(path)
    assert con.execute("SELECT schema_version FROM meta").fetchall() == [(SCHEMA_VERSION,)] == [(2,)]
    con.close()


def paired_rec(i: int, scale: float, *, device=H100, created: float | None = None) -> Record:
    """Config BLOCK_M=i of true time (i + 1) ms, measured while the machine ran `scale` x slower,
    paired with a 2 ms reference kernel."""
    samples = tuple(scale * 1e-3 * (i + 1) * f for f in (1.0, 1.1, 0.9))
    m = Measurement(Status.OK, samples, True, 0.0, reference=tuple(scale * 2e-3 * f for f in (1.0, 1.1, 0.9)))
    return dataclasses.replace(rec(i, device=device, created=created), measurement=m)


def test_paired_records_rank_by_drift_corrected_time(url, tmp_path):
    """Config 1 (2 ms) measured in a 1.6x slow phase reads 3.2 ms, config 2 (3 ms) in a fast one 3 ms:
    by raw medians config 2 would win, by the paired ratios (1.0 vs 1.5) config 1 does; old unpaired
    records of the same workload still compare, by their own medians."""
    with TuningDB(url) as db:
        db.add_many([paired_rec(1, 1.6), paired_rec(2, 1.0, created=900), paired_rec(4, 1.2)])
        raw = min(db.records(), key=lambda r: r.measurement.median)
        assert raw.config["BLOCK_M"] == 2 and raw.measurement.median == pytest.approx(3e-3)
        best = db.best("w-gemm", H100.key)
        assert best.config["BLOCK_M"] == 1 and best.measurement.relative == pytest.approx(1.0)
        seconds = corrected_seconds(db.records())
        # relative x the median of every reference sample (2 ms x {1.6, 1.0, 1.2} x {1, 1.1, 0.9})
        ref = statistics.median(s * 2e-3 * f for s in (1.6, 1.0, 1.2) for f in (1.0, 1.1, 0.9))
        assert seconds[best.key] == pytest.approx(ref * 1.0)
        assert sorted(seconds.values()) == pytest.approx([ref * 1.0, ref * 1.5, ref * 2.5])
        db.add(rec(0))  # unpaired, 1 ms median: it wins on its median
        assert db.best("w-gemm", H100.key).config["BLOCK_M"] == 0
        assert db.best_for_arch("w-gemm", "sm_90").config["BLOCK_M"] == 0
        out = tmp_path / "paired.jsonl"
        with open(out, "w") as f:
            db.export_jsonl(f)
    with TuningDB("sqlite://") as other, open(out) as f:
        assert other.import_jsonl(f) == 4
        assert {r.key: r.measurement.reference for r in other.records()} == \
            {r.key: r.measurement.reference for r in TuningDB(url).records()}
    assert comparable_seconds([Measurement(Status.OK, (1e-3,), True, reference=(0.0,)),
                               Measurement(Status.WRONG_RESULT, (1e-3,), False, reference=(1e-3,))]) == [1e-3, None]


def _writer(url: str, worker: int, n: int) -> None:
    with TuningDB(url) as db:
        db.add(rec(10_000, workload="w-shared"))  # every process adds this one; exactly one wins
        for i in range(n):
            assert db.add(rec(worker * 1000 + i, workload=f"w{worker}"))


def test_concurrent_writers(url):
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    procs = [ctx.Process(target=_writer, args=(url, w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with TuningDB(url) as db:
        assert db.count() == 4 * 50 + 1
        assert sorted(n for _, _, n in db.workloads()) == [1, 50, 50, 50, 50]


KILLED_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_database import rec
    from tilefuse.autotune.database import TuningDB
    db = TuningDB({url!r})
    i = 0
    while True:
        db.add(rec(i))
        print(i + 1, flush=True)
        i += 1
""")


def test_sigkill_loses_no_committed_record(url):
    script = KILLED_WRITER.format(tests=os.path.dirname(__file__), url=url)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    committed = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            committed = int(line)
            if committed >= 40:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert committed >= 40, "the writer died before committing 40 records"
    with TuningDB(url) as db:
        n = db.count()
        assert n >= committed
        assert db.add(rec(n + 1))  # the database takes new writes after the kill
        assert db.has("w-gemm", H100.key, rec(committed - 1).config)
    con = sqlite3.connect(url.removeprefix("sqlite:///"))
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()


def _cli():
    from tilefuse.cli.db import register

    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="cmd", required=True))
    return p


def test_cli_db_show_export_import(url, tmp_path, capsys):
    with TuningDB(url) as db:
        db.add_many([rec(3), rec(1), rec(0, status=Status.WRONG_RESULT, samples=(1e-9,), verified=False),
                     rec(2, device=H200), rec(4, workload="w-x", status=Status.TIMEOUT)])
    p = _cli()
    args = p.parse_args(["db", "show", "--db", url])
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    assert "5 records" in out and "2 workloads" in out and "2 devices" in out
    assert '{"BLOCK_M":1,"num_warps":4}' in out and "2/3" in out and "(no verified config)" in out

    dump = tmp_path / "out" / "dump.jsonl"
    args = p.parse_args(["db", "export", str(dump), "--db", url])
    assert args.fn(args) == 0
    assert len(dump.read_text().splitlines()) == 5
    args = p.parse_args(["db", "export", "--db", url])
    assert args.fn(args) == 0
    assert capsys.readouterr().out == dump.read_text()

    other = f"sqlite:///{tmp_path}/other.db"
    args = p.parse_args(["db", "import", str(dump), "--db", other])
    assert args.fn(args) == 0
    assert "imported 5 new records" in capsys.readouterr().out
    args = p.parse_args(["db", "import", str(tmp_path / "missing.jsonl"), "--db", other])
    assert args.fn(args) == 2


def test_cli_reports_database_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # `db import -` reads (no records) before it opens the db
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"\x00garbage" * 100)
    p = _cli()
    for argv in (["db", "show"], ["db", "export"], ["db", "import", "-"], ["devices"]):
        args = p.parse_args([*argv, "--db", f"sqlite:///{bad}"])
        assert args.fn(args) == 2, argv
        assert f"error: cannot use database file {bad}" in capsys.readouterr().err
