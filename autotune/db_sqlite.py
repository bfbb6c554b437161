"""SQLite specifics of the tuning database: how a connection is opened (read-only for readers) and
set up (busy timeout, explicit BEGIN). A reader never changes the file; writers switch it to WAL once
they have checked it is ours (TuningDB._use_wal)."""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

__all__ = ["BUSY_TIMEOUT_S", "connect_reader", "on_begin", "on_connect"]

BUSY_TIMEOUT_S = 60.0


def connect_reader(path: Path) -> sqlite3.Connection:
    """A connection for a process that only reads `path`: read-only, so SQLite itself keeps the file as it
    is (a foreign or empty file too). Two exceptions, both for SQLite's lock files: a WAL file (ours, in
    effect) that this process may write gets a plain connection, which removes the -wal and -shm files it
    needs when it closes, as a read-only one cannot; in a directory this process may not write, the file
    is opened immutable, since SQLite could not create those files there."""
    if _is_wal(path) and _may_write(path) and _may_write(path.parent):
        return sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    if not _may_write(path.parent):
        uri += "&immutable=1"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)


def _is_wal(path: Path) -> bool:
    """Whether the SQLite header of `path` says WAL (its read and write format bytes are 2)."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return header.startswith(b"SQLite format 3\x00") and header[18:20] == b"\x02\x02"


def _may_write(path: Path) -> bool:
    """Whether this process (its effective user, where the OS can tell) may write `path`."""
    effective = os.access in os.supports_effective_ids
    return os.access(path, os.W_OK, effective_ids=effective)


def on_connect(dbapi_conn: Any, _record: Any) -> None:
    """Per connection: no implicit BEGIN, a busy timeout, synchronous commits, foreign keys."""
    # Let SQLAlchemy's "begin" hook issue BEGIN (pysqlite's implicit one is deferred and cannot
    # wait for the write lock). The journal mode (WAL) is the file's: writers set it once they have
    # checked the file is ours (TuningDB._use_wal); a connection must not change a file it only reads.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA synchronous = FULL")  # a commit is on disk when add() returns
        cur.execute("PRAGMA foreign_keys = ON")
    finally:
        cur.close()


def on_begin(conn: Connection) -> None:
    """BEGIN DEFERRED, or BEGIN IMMEDIATE for writers (TuningDB._tx), which then wait for the lock."""
    conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', 'DEFERRED')}")
