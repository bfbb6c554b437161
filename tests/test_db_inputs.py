"""Hostile inputs to the tuning database: `db import` files whose records break the record schema
(each refused whole, with its line number, writing nothing and creating no database), and database
files that are not ours, empty or read-only (a read never modifies them)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tilefuse.autotune.database import DatabaseError, MissingDatabaseError, TuningDB
from tilefuse.autotune.device import NOMINAL
from tilefuse.cli import main
from tilefuse.schedule.config import Config
from tilefuse.schedule.records import Measurement, Record, RecordError, Status, read_jsonl

H100 = NOMINAL["H100"]


def rec(i: int = 0, seconds: float = 1e-3) -> Record:
    m = Measurement(Status.OK, (seconds, seconds * 1.1), True, 0.0, "", 0.5, {"registers": 96})
    return Record("w-gemm", "matmul", {"op": "matmul", "M": 64}, H100.key, H100.fingerprint,
                  Config(BLOCK_M=16 * (i + 1), num_warps=4), m, {"triton": "3.6.0"}, {"ai": 1.0}, 1000.0 + i)


def _line(**changes: object) -> str:
    d = json.loads(rec(1).to_json())
    d.update(changes)
    return json.dumps(d)


GOOD = rec(0).to_json()
# name -> (second line of the file, words the error names)
BAD_LINES = {
    "not an object": ("[1, 2]", ["must be a JSON object"]),
    "samples a string": (_line(samples="abc"), ["'samples'"]),
    "device a string": (_line(device="gpu"), ["'device'", "JSON object"]),
    "max_error a string": (_line(max_error="x"), ["'max_error'"]),
    "NaN sample": (GOOD.replace('"samples":[0.001', '"samples":[NaN'), ["NaN"]),
    "negative sample": (_line(samples=[-1e-3, 1e-3]), ["'samples'[0]", "positive"]),
    "zero sample": (_line(samples=[1e-3, 0.0]), ["'samples'[1]", "positive"]),
    "verified a string": (_line(verified="false"), ["'verified'", "true or false"]),
    "max_error 1e999": (GOOD.replace('"max_error":0.0', '"max_error":1e999'), ["'max_error'", "finite"]),
    "features a list": (_line(features=[1, 2]), ["'features'"]),
    "feature a string": (_line(features={"ai": "high"}), ["'features'['ai']"]),
    "status unknown": (_line(status="great"), ["'status'", "wrong_result"]),
    "status a list": (_line(status=["ok"]), ["'status'"]),
    "toolchain numbers": (_line(toolchain={"triton": 3.6}), ["'toolchain'"]),
    "config nested": (_line(config={"BLOCK_M": [16]}), ["'config'"]),
    "unknown field": (_line(samplez=[1e-3]), ["samplez"]),
    "schema true": (_line(schema=True), ["schema"]),
    "reference unpaired": (_line(reference=[1e-3]), ["'reference'"]),
    "ok without samples": (_line(samples=[]), ["no 'samples'"]),
    "integer beyond 64 bits": (_line(created=10**30), ["'created'", "64 bits"]),
    "nested too deeply": ("[" * 100_000, ["nested too deeply"]),
    "empty key": (_line(workload_key=""), ["'workload_key'"]),
}


@pytest.mark.parametrize("name", sorted(BAD_LINES))
def test_record_validator_names_the_field(name):
    line, words = BAD_LINES[name]
    with pytest.raises(RecordError) as err:
        Record.from_json(line)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


@pytest.mark.parametrize("name", sorted(BAD_LINES))
def test_db_import_refuses_the_whole_file_and_creates_no_database(name, tmp_path, capsys):
    line, words = BAD_LINES[name]
    src = tmp_path / "in.jsonl"
    src.write_text(f"{GOOD}\n{line}\n{rec(2).to_json()}\n")
    db = tmp_path / "new.db"
    assert main(["db", "import", str(src), "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{src}:2:" in err and "nothing was imported" in err, err
    for w in words:
        assert w in err, (w, err)
    assert not db.exists()


def test_failed_import_leaves_an_existing_database_as_it_was(tmp_path, capsys):
    db = tmp_path / "t.db"
    with TuningDB(str(db)) as d:
        d.add(rec(5))
    src = tmp_path / "in.jsonl"
    src.write_text(f"{GOOD}\n{_line(samples=[-1e-9])}\n")
    assert main(["db", "import", str(src), "--db", str(db)]) == 2
    capsys.readouterr()
    with TuningDB(str(db)) as d:
        assert [r.key for r in d.records()] == [rec(5).key]


@pytest.mark.parametrize("content", [os.urandom(4096), b"{\"schema\": 1}\xff\xfe\n", b"\x00" * 64],
                         ids=["random bytes", "not utf-8", "NUL bytes"])
def test_binary_import_file_is_one_error_line(content, tmp_path, capsys):
    src = tmp_path / "blob.bin"
    src.write_bytes(content)
    assert main(["db", "import", str(src), "--db", str(tmp_path / "t.db")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src}:") and err.count("\n") == 1, err
    assert not (tmp_path / "t.db").exists()


def test_a_line_longer_than_any_record_is_refused_without_reading_it_all():
    from tilefuse.schedule import records

    class Endless(io.TextIOBase):
        """/dev/zero as text: readline(limit) returns `limit` characters, forever."""

        def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
            return "0" * (size if size and size > 0 else 1 << 30)

    with pytest.raises(RecordError, match=f"<z>:1: line longer than {records.MAX_LINE_CHARS}"):
        read_jsonl(Endless(), "<z>")


def test_imported_records_cannot_win_with_an_impossible_time(tmp_path, capsys):
    """The attack the validation stops: a 'faster than anything' record would be compile's pick."""
    db = tmp_path / "t.db"
    with TuningDB(str(db)) as d:
        d.add(rec(0, seconds=1e-3))
    src = tmp_path / "in.jsonl"
    for seconds in (-1.0, 0.0):
        src.write_text(_line(samples=[seconds, seconds]) + "\n")
        assert main(["db", "import", str(src), "--db", str(db)]) == 2
    capsys.readouterr()
    with TuningDB(str(db)) as d:
        best = d.best("w-gemm", H100.key)
        assert best is not None and best.config == rec(0).config


def test_valid_file_round_trips_through_the_validator():
    text = "".join(rec(i).to_json() + "\n" for i in range(3))
    assert [r.to_json() for r in read_jsonl(io.StringIO(text), "x")] == text.splitlines()


# ------------------------------------------------------------------------------- database files

def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _foreign(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO users VALUES (1, 'ada')")
    con.commit()
    con.close()
    return path


def test_a_foreign_sqlite_file_is_refused_without_a_change(tmp_path, capsys):
    path = _foreign(tmp_path / "app.db")
    before = _snapshot(tmp_path)
    for create in (False, True):
        with pytest.raises(DatabaseError, match="not a tilefuse tuning database"):
            TuningDB(str(path), create=create)
    src = tmp_path.parent / f"{tmp_path.name}-in.jsonl"
    src.write_text(GOOD + "\n")
    for argv in (["db", "show"], ["db", "export"], ["devices"], ["db", "import", str(src)]):
        assert main([*argv, "--db", str(path)]) == 2, argv
        assert "not a tilefuse tuning database" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before  # not switched to WAL, no journal or lock files left
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_readers_leave_an_empty_file_empty(tmp_path, capsys):
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(MissingDatabaseError, match="no tables yet"):
        TuningDB(str(path), create=False)
    for argv in (["db", "show"], ["db", "export"], ["devices"], ["costmodel", "train"]):
        assert main([*argv, "--db", str(path)]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "no tables yet" in err and str(path) in err, err
    assert _snapshot(tmp_path) == {"empty.db": b""}
    # compile treats the default database's empty file as "nothing tuned yet"
    from tilefuse.compiler import open_sources
    from tilefuse.schedule.target import get_target
    from tilefuse.settings import reload_settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TILEFUSE_DB", str(path))
        reload_settings()
        try:
            assert open_sources(get_target("cpu"), db="auto", cost_model=None).db is None
        finally:
            mp.undo()
            reload_settings()
    assert _snapshot(tmp_path) == {"empty.db": b""}
    src = tmp_path.parent / f"{tmp_path.name}-in.jsonl"
    src.write_text(GOOD + "\n")
    assert main(["db", "import", str(src), "--db", str(path)]) == 0  # a writer makes it a tuning database
    capsys.readouterr()


def test_readers_leave_no_lock_files_beside_our_database(tmp_path):
    path = tmp_path / "t.db"
    with TuningDB(str(path)) as db:
        db.add(rec(1))
    with open(path, "rb") as f:
        assert f.read(20)[18:20] == b"\x02\x02"  # WAL, set by the writer once the file proved ours
    with TuningDB(str(path), create=False) as db:
        assert db.count() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["t.db"]


@contextlib.contextmanager
def _unprivileged() -> Iterator[None]:
    """Run the block as a user that may not write what the test made read-only (root may write anything:
    it becomes `nobody` for the block, by its effective user id)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_a_database_in_a_read_only_directory_can_be_read(capsys):
    top = Path(tempfile.mkdtemp(prefix="tilefuse-ro-"))  # not under pytest's 0700 tmp dir: `nobody` must reach it
    try:
        os.chmod(top, 0o755)
        path = top / "t.db"
        with TuningDB(str(path)) as db:
            db.add_many([rec(0, seconds=2e-3), rec(1, seconds=1e-3)])
        assert main(["db", "show", "--db", str(path)]) == 0  # once as the owner: every module is imported
        capsys.readouterr()
        os.chmod(path, 0o444)
        os.chmod(top, 0o555)
        with _unprivileged():
            with pytest.raises(DatabaseError):
                TuningDB(str(path)).close()  # a writer may not use it: the guard below is real
            with TuningDB(str(path), create=False) as db:
                assert db.count() == 2
                best = db.best("w-gemm", H100.key)
            rc = main(["db", "show", "--db", str(path)])
        out = capsys.readouterr()
        assert rc == 0 and "2 records" in out.out, out.err
        assert best is not None and best.config == rec(1).config
        assert [p.name for p in top.iterdir()] == ["t.db"]
    finally:
        os.chmod(top, 0o755)
        shutil.rmtree(top)


def _schema_1(path: Path) -> None:
    """Turn a current database into a schema-1 one (no records.reference)."""
    with TuningDB(str(path)) as db:
        db.add(rec(1))
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE records DROP COLUMN reference")
    con.execute("UPDATE meta SET schema_version = 1")
    con.commit()
    con.close()


def test_a_reader_migrates_an_older_database_only_where_it_may_write(capsys):
    top = Path(tempfile.mkdtemp(prefix="tilefuse-ro-"))
    try:
        os.chmod(top, 0o755)
        for name in ("ro.db", "rw.db"):
            _schema_1(top / name)
        assert main(["db", "show", "--db", str(top / "rw.db")]) == 0  # ours and writable: migrated
        assert "1 records" in capsys.readouterr().out
        assert sqlite3.connect(top / "rw.db").execute("SELECT schema_version FROM meta").fetchone()[0] == 2
        os.remove(top / "rw.db")
        os.chmod(top / "ro.db", 0o444)
        os.chmod(top, 0o555)
        with _unprivileged():
            rc = main(["db", "show", "--db", str(top / "ro.db")])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and "schema 1, which must be migrated" in err, err
    finally:
        os.chmod(top, 0o755)
        shutil.rmtree(top)
