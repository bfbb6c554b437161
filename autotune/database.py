"""The tuning database: workloads, device fingerprints, configs and every measurement.

SQLite by default (``settings.db_url``; WAL mode, a busy timeout and ``BEGIN IMMEDIATE`` write
transactions so several tuner processes can share one file), any SQLAlchemy URL otherwise
(PostgreSQL for sweeps shared by several machines: ``postgresql://`` needs ``psycopg``, SQLAlchemy's
default driver). It stores decisions and measurements, never binaries. Every write is one transaction:
a tuner killed with SIGKILL loses nothing it committed; writes that collide with another writer (a
locked SQLite file, a PostgreSQL deadlock or serialization failure) run again.

The layout, its versions and migrations are in ``db_schema``; SQLite connections in ``db_sqlite``. A file
that is not SQLite, a database with other applications' tables and no ``meta`` table, or a newer schema
raises DatabaseError. Readers (``create=False``) create and change nothing: they open a SQLite file
read-only (immutable in a directory they may not write) and take a database without tables for a missing
one; writers switch a file to WAL only once it has proved to be ours.
"""

from __future__ import annotations

import functools
import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine

from ..schedule.config import Config, canonical_json
from .db_schema import (MIGRATIONS, SCHEMA_VERSION, DatabaseError, MissingDatabaseError, SchemaMigrationNeeded,
                        devices_t, open_schema, records_t, workloads_t)
from ..schedule.records import Measurement, Record, Status, ranked, read_jsonl
from .db_sqlite import BUSY_TIMEOUT_S, connect_reader, on_begin, on_connect

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "DatabaseError", "MissingDatabaseError", "TuningDB", "iter_jsonl"]

T = TypeVar("T")


class TuningDB:
    """Tuning records keyed by (workload, device, config, toolchain); see the module docstring."""

    def __init__(self, url: str | None = None, *, create: bool = True) -> None:
        """Open the database at `url` (an SQLAlchemy URL or a path to a SQLite file; default: the
        TILEFUSE_DB setting). With create=False (for commands that only read) a database that does not
        exist yet, or has no tables, raises MissingDatabaseError instead of becoming a new, empty one, and
        a SQLite file is opened read-only."""
        from ..settings import SettingsError, database_url, get_settings

        if url is None:
            url = get_settings().db_url
        try:
            url = database_url(url)
        except SettingsError as err:
            raise DatabaseError(str(err)) from None
        self.url = url
        try:
            self._sa_url = sa.engine.make_url(url)
        except sa.exc.ArgumentError as err:
            raise DatabaseError(f"{url!r} is not a database URL ({err}); accepted: an SQLAlchemy URL such as "
                                "'sqlite:///path/tuning.db' or 'postgresql://host/db'") from None
        self._sqlite = self._sa_url.get_backend_name() == "sqlite"
        self.is_server = not self._sqlite  # a database server several machines can share
        file = self._sa_url.database if self._sqlite else None
        self._file = Path(file).expanduser() if file not in (None, "", ":memory:") else None
        if not create and self._file is not None and not self._file.exists():
            raise MissingDatabaseError(f"no tuning database at {self._sa_url.database} (nothing has been tuned "
                                       "into it; `tilefuse tune --db` creates one)")
        # Readers open a SQLite file read-only (db_sqlite.connect_reader): a read never changes a file (not even its
        # journal mode, nor one that turns out not to be ours), and a directory they may not write is no bar.
        self._readonly = not create and self._file is not None
        self._engine = self._make_engine()
        try:
            self._open(create or (self._sqlite and self._file is None))  # in memory: always a new database
        except DatabaseError:
            self._engine.dispose()
            raise

    def _open(self, create: bool) -> None:
        """Check (readers) or create and migrate (writers) the schema; writers switch a file to WAL."""
        try:
            self._retry(lambda: self._open_schema(create, migrate=not self._readonly))
        except SchemaMigrationNeeded as err:  # an older schema of ours: migrate it if this process may write it
            self._engine.dispose()
            self._readonly = False
            self._engine = self._make_engine()
            try:
                self._retry(lambda: self._open_schema(False, migrate=True))
            except DatabaseError as again:
                raise DatabaseError(f"{err} ({again})") from None
        if self._file is not None and not self._readonly:
            self._retry(self._use_wal)

    # -- connection handling

    @property
    def _where(self) -> str:
        if self._sqlite and self._sa_url.database not in (None, "", ":memory:"):
            return f"database file {self._sa_url.database}"
        return f"database {self._sa_url.render_as_string(hide_password=True)}"

    def _make_engine(self) -> Engine:
        kw: dict[str, Any] = {}
        if self._sqlite:
            if self._file is None:
                kw["poolclass"] = sa.pool.StaticPool  # one shared in-memory database
                kw["connect_args"] = {"check_same_thread": False}
            elif self._readonly:
                kw["creator"] = functools.partial(connect_reader, self._file)
            else:
                try:
                    self._file.parent.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise DatabaseError(f"cannot create the directory of {self._where}: {err}") from None
                kw["connect_args"] = {"timeout": BUSY_TIMEOUT_S}
        else:
            kw["pool_pre_ping"] = True  # a server restart or an idle timeout must not break a long sweep
        try:
            engine = sa.create_engine(self._sa_url, **kw)
        except (ImportError, sa.exc.ArgumentError) as err:
            raise DatabaseError(f"cannot use {self._where}: {err} (is its driver installed?)") from None
        if self._sqlite:
            sa.event.listen(engine, "connect", on_connect)
            sa.event.listen(engine, "begin", on_begin)
        return engine

    def _tx(self, write: bool) -> Any:
        """A transaction; on SQLite, writers take the write lock up front (BEGIN IMMEDIATE)."""
        conn = self._engine.connect()
        if self._sqlite:
            conn = conn.execution_options(sqlite_begin="IMMEDIATE" if write else "DEFERRED")
        return _Tx(conn)

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run `fn`, retrying while another writer holds the lock; translate driver errors."""
        delay = 0.01
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                return fn()
            except sa.exc.DBAPIError as err:
                if not (_transient(err) and time.monotonic() < deadline):
                    raise DatabaseError(f"cannot use {self._where}: {err.orig}") from None
            except sqlite3.DatabaseError as err:  # from the connect hook or a raw connection: not wrapped
                text = str(err).lower()
                if not (("locked" in text or "busy" in text) and time.monotonic() < deadline):
                    raise DatabaseError(f"cannot use {self._where}: {err}") from None
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)

    def _open_schema(self, create: bool, migrate: bool) -> None:
        with self._tx(write=not self._readonly) as conn:
            open_schema(conn, self._where, create=create, migrate=migrate)

    def _use_wal(self) -> None:
        """Switch a file of ours to WAL (readers then run beside one writer); it stays so, in the file.
        Outside any transaction, which cannot change the journal mode."""
        raw = self._engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA journal_mode = WAL")
            cur.close()
        finally:
            raw.close()

    def close(self) -> None:
        """Release every connection."""
        self._engine.dispose()

    def __enter__(self) -> TuningDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TuningDB({self._sa_url.render_as_string(hide_password=True)!r})"

    # -- writes

    def add(self, record: Record) -> bool:
        """Store one record in one transaction; False if a record with its key is already there."""
        return self.add_many([record]) == 1

    def add_many(self, records: Iterable[Record]) -> int:
        """Store records in one transaction; returns how many were new."""
        batch = list(records)
        if not batch:
            return 0
        return self._retry(lambda: self._add_batch(batch))

    def _add_batch(self, batch: list[Record]) -> int:
        added = 0
        with self._tx(write=True) as conn:
            for rec in batch:
                self._insert(conn, workloads_t, {"key": rec.workload_key, "family": rec.family,
                                                 "description": canonical_json(rec.workload)})
                self._insert(conn, devices_t, {"key": rec.device_key, "arch": str(rec.device.get("arch", "")),
                                               "fingerprint": canonical_json(rec.device)})
                added += self._insert(conn, records_t, _record_row(rec))
        return added

    def _insert(self, conn: Connection, table: sa.Table, row: dict[str, Any]) -> int:
        """INSERT unless the primary key exists; returns 1 if a row was written."""
        name = conn.dialect.name
        if name in ("sqlite", "postgresql"):
            ins = sqlite_dialect.insert if name == "sqlite" else pg_dialect.insert
            stmt = ins(table).values(**row).on_conflict_do_nothing(index_elements=["key"])
            # SQLAlchemy keeps an INSERT's rowcount only when asked: psycopg 3 reports -1 once the cursor closes
            return int(conn.execute(stmt, execution_options={"preserve_rowcount": True}).rowcount == 1)
        if conn.execute(sa.select(table.c.key).where(table.c.key == row["key"])).first() is not None:
            return 0
        conn.execute(table.insert().values(**row))
        return 1

    # -- reads

    def _select(self) -> sa.Select[Any]:
        return (sa.select(records_t, workloads_t.c.family, workloads_t.c.description, devices_t.c.fingerprint)
                .join(workloads_t, records_t.c.workload_key == workloads_t.c.key)
                .join(devices_t, records_t.c.device_key == devices_t.c.key))

    def _query(self, stmt: Any) -> list[Any]:
        def run() -> list[Any]:
            with self._tx(write=False) as conn:
                return list(conn.execute(stmt).all())

        return self._retry(run)

    def has(self, workload_key: str, device_key: str, config: Config) -> bool:
        """Whether `config` was measured for this workload on this device (any status or toolchain)."""
        c = records_t.c
        stmt = sa.select(c.key).where(c.workload_key == workload_key, c.device_key == device_key,
                                      c.config_key == config.key).limit(1)
        return bool(self._query(stmt))

    def measured(self, workload_key: str, device_key: str) -> dict[str, Record]:
        """config.key -> record for every config measured here; the most recent record per config."""
        c = records_t.c
        rows = self._query(self._select().where(c.workload_key == workload_key, c.device_key == device_key)
                           .order_by(c.created, c.key))
        return {row.config_key: _row_record(row) for row in rows}

    def records(self, workload_key: str | None = None, device_key: str | None = None, family: str | None = None,
                status: Status | str | None = None, arch: str | None = None) -> list[Record]:
        """Records matching every given filter, oldest first."""
        c = records_t.c
        stmt = self._select()
        if workload_key is not None:
            stmt = stmt.where(c.workload_key == workload_key)
        if device_key is not None:
            stmt = stmt.where(c.device_key == device_key)
        if family is not None:
            stmt = stmt.where(workloads_t.c.family == family)
        if status is not None:
            stmt = stmt.where(c.status == Status(status).value)
        if arch is not None:
            stmt = stmt.where(devices_t.c.arch == arch)
        return [_row_record(row) for row in self._query(stmt.order_by(c.created, c.key))]

    def _best(self, *conds: Any) -> Record | None:
        """The fastest verified OK record matching `conds`, by `records.ranked` (per device: paired
        records rank by their time relative to the reference kernel, which machine drift does not move)."""
        c = records_t.c
        stmt = (self._select().where(*conds, c.status == Status.OK.value, c.verified.is_(True), c.median.is_not(None))
                .order_by(c.created, c.key))
        timed = ranked(_row_record(row) for row in self._query(stmt))
        return timed[0][1] if timed else None

    def best(self, workload_key: str, device_key: str) -> Record | None:
        """The fastest verified OK record of this workload on this device."""
        return self._best(records_t.c.workload_key == workload_key, records_t.c.device_key == device_key)

    def best_for_arch(self, workload_key: str, arch: str) -> Record | None:
        """The fastest verified OK record of this workload on any device of `arch`."""
        return self._best(records_t.c.workload_key == workload_key, devices_t.c.arch == arch)

    def count(self) -> int:
        """Number of records."""
        return int(self._query(sa.select(sa.func.count()).select_from(records_t))[0][0])

    def workloads(self) -> list[tuple[str, str, int]]:
        """(workload_key, family, number of records) for every workload, by family then key."""
        n = sa.func.count(records_t.c.key)
        stmt = (sa.select(workloads_t.c.key, workloads_t.c.family, n)
                .select_from(workloads_t.outerjoin(records_t, records_t.c.workload_key == workloads_t.c.key))
                .group_by(workloads_t.c.key, workloads_t.c.family).order_by(workloads_t.c.family, workloads_t.c.key))
        return [(str(k), str(f), int(cnt)) for k, f, cnt in self._query(stmt)]

    def devices(self) -> list[dict[str, Any]]:
        """{"key", "arch", "fingerprint", "records"} for every device, by arch then key."""
        n = sa.func.count(records_t.c.key)
        stmt = (sa.select(devices_t.c.key, devices_t.c.arch, devices_t.c.fingerprint, n)
                .select_from(devices_t.outerjoin(records_t, records_t.c.device_key == devices_t.c.key))
                .group_by(devices_t.c.key, devices_t.c.arch, devices_t.c.fingerprint)
                .order_by(devices_t.c.arch, devices_t.c.key))
        return [{"key": k, "arch": a, "fingerprint": json.loads(fp), "records": int(cnt)}
                for k, a, fp, cnt in self._query(stmt)]

    # -- JSON lines

    def export_jsonl(self, fp: IO[str]) -> int:
        """Write every record as one `Record.to_json` line; returns the number written."""
        n = 0
        for rec in self.records():
            fp.write(rec.to_json() + "\n")
            n += 1
        return n

    def import_jsonl(self, fp: IO[str]) -> int:
        """Validate every line (records.read_jsonl), then add them all in one transaction; returns how many
        were new. A bad line raises RecordError naming its number, and nothing is added."""
        return self.add_many(read_jsonl(fp, getattr(fp, "name", "<stream>")))


class _Tx:
    """`with` block over one connection and one transaction (commit on success)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def __enter__(self) -> Connection:
        try:
            self.conn.begin()
        except BaseException:
            self.conn.close()
            raise
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None:
                self.conn.commit()
            else:
                self.conn.rollback()
        finally:
            self.conn.close()


def _transient(err: sa.exc.DBAPIError) -> bool:
    """Whether `err` came from another writer and the whole transaction can simply run again."""
    sqlstate = getattr(err.orig, "sqlstate", None) or getattr(err.orig, "pgcode", None)  # psycopg 3 / psycopg2
    if sqlstate is not None:
        # PostgreSQL aborts one side of a deadlock (add_many batches in different orders), and every
        # conflicting writer under a SERIALIZABLE default_transaction_isolation.
        return str(sqlstate) in ("40001", "40P01")
    text = str(err.orig).lower()
    return isinstance(err, sa.exc.OperationalError) and ("locked" in text or "busy" in text)  # SQLite


def _record_row(rec: Record) -> dict[str, Any]:
    m = rec.measurement
    return {"key": rec.key, "workload_key": rec.workload_key, "device_key": rec.device_key,
            "config_key": rec.config.key, "config": rec.config.to_json(), "status": m.status.value,
            "samples": canonical_json(list(m.samples)), "median": m.median, "verified": bool(m.verified),
            "max_error": m.max_error, "error": m.error, "compile_seconds": float(m.compile_seconds),
            "resources": canonical_json(m.resources), "toolchain": canonical_json(rec.toolchain),
            "features": canonical_json(rec.features), "created": float(rec.created),
            "reference": canonical_json(list(m.reference))}


def _row_record(row: Any) -> Record:
    m = Measurement(Status(row.status), tuple(json.loads(row.samples)), bool(row.verified), row.max_error,
                    row.error or "", float(row.compile_seconds), json.loads(row.resources),
                    tuple(json.loads(row.reference or "[]")))
    return Record(row.workload_key, row.family, json.loads(row.description), row.device_key,
                  json.loads(row.fingerprint), Config.from_json(row.config), m, json.loads(row.toolchain),
                  json.loads(row.features), float(row.created))


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[Record]:
    """Records of a JSON-lines file (a bench/data dataset), all validated before the first is yielded."""
    with open(path, encoding="utf-8") as fp:
        records = read_jsonl(fp, str(path))
    yield from records
