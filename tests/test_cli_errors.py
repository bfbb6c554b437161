"""What every `tilefuse` command says when the user's input is wrong: one `error:` line on stderr and
exit code 2, never a traceback; and read-only commands never create a database."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from tilefuse.cli import main

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "decoder_mlp.tf")
SMALL = ["--set", "T=4", "--set", "H=64", "--set", "I=96"]


@pytest.fixture()
def bad_dbs(tmp_path: Path) -> dict[str, Path]:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(os.urandom(4096))
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    con.commit()
    con.close()
    return {"corrupt": corrupt, "foreign": foreign}


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.mark.parametrize("kind, words", [("corrupt", ["not a database"]), ("foreign", ["not a tilefuse", "users"])])
def test_compile_and_costmodel_report_a_bad_database(bad_dbs, kind, words, tmp_path, capsys):
    path = bad_dbs[kind]
    for db in (f"sqlite:///{path}", str(path)):  # a URL or a bare path, alike in every command
        _fails(["compile", EXAMPLE, *SMALL, "--target", "cpu", "--db", db, "--out", str(tmp_path / "o")], capsys,
               str(path), *words)
        _fails(["costmodel", "train", "--db", db], capsys, str(path), *words)
        _fails(["db", "show", "--db", db], capsys, str(path), *words)


def test_missing_database_is_an_error_for_readers_and_is_not_created(tmp_path, capsys):
    missing = tmp_path / "typo" / "tuning.db"
    for argv in (["db", "show", "--db", str(missing)], ["db", "export", "--db", f"sqlite:///{missing}"],
                 ["devices", "--db", str(missing)], ["costmodel", "train", "--db", str(missing)],
                 ["compile", EXAMPLE, *SMALL, "--target", "cpu", "--db", str(missing), "--out", str(tmp_path / "o")]):
        _fails(argv, capsys, "no tuning database at", str(missing))
    assert not missing.parent.exists()


def test_bad_cost_model_directory(tmp_path, capsys):
    _fails(["compile", EXAMPLE, *SMALL, "--target", "cpu", "--db", "none", "--costmodel", str(tmp_path / "nomodel"),
            "--out", str(tmp_path / "o")], capsys, "nomodel")


def test_bad_settings_name_the_variable(monkeypatch, tmp_path, capsys):
    from tilefuse.settings import get_settings, reload_settings

    try:
        monkeypatch.setenv("TILEFUSE_DB", "bogus")
        get_settings.cache_clear()  # read again, by the command
        _fails(["db", "show"], capsys, "TILEFUSE_DB='bogus' is not a database URL")
        _fails(["tune", EXAMPLE, *SMALL, "--budget", "1", "--report", str(tmp_path / "r")], capsys, "TILEFUSE_DB")
        monkeypatch.setenv("TILEFUSE_DB", str(tmp_path / "t.db"))
        monkeypatch.setenv("TILEFUSE_JOBS", "abc")
        get_settings.cache_clear()
        err = _fails(["tune", EXAMPLE, *SMALL, "--budget", "1", "--db", str(tmp_path / "d.db"),
                      "--report", str(tmp_path / "r")], capsys, "TILEFUSE_JOBS='abc'")
        assert "--db" not in err
    finally:
        monkeypatch.undo()
        reload_settings()


def test_bad_db_arguments(tmp_path, capsys):
    _fails(["db", "show", "--db", "bogus"], capsys, "'bogus' is not a database URL")
    _fails(["db", "import", str(tmp_path), "--db", str(tmp_path / "c.db")], capsys, str(tmp_path))
    _fails(["db", "import", str(tmp_path / "none.jsonl"), "--db", str(tmp_path / "c.db")], capsys, "none.jsonl")
    assert not (tmp_path / "c.db").exists()  # an unreadable input creates no database
    _fails(["tune", EXAMPLE, *SMALL, "--budget", "1", "--patience", "-1"], capsys, "--patience")


def test_db_accepts_a_bare_path_everywhere(tmp_path, capsys):
    from tilefuse.autotune.database import TuningDB

    path = tmp_path / "t.db"
    with TuningDB(str(path)) as db:
        assert db.url == f"sqlite:///{path}" and db.count() == 0
    assert main(["db", "show", "--db", str(path)]) == 0
    assert "0 records" in capsys.readouterr().out
    assert main(["devices", "--db", str(path)]) == 0


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`tilefuse db show | head -1`: the reader goes away; no traceback, the SIGPIPE exit status."""
    import subprocess
    import sys

    from tilefuse.autotune.database import TuningDB

    with TuningDB(str(tmp_path / "t.db")):
        pass
    argv = ["db", "show", "--db", str(tmp_path / "t.db")]
    code = f"import sys; from tilefuse.cli import main; sys.exit(main({argv!r}))"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # before the child has printed anything: it imports for far longer than this takes
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
