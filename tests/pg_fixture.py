"""A throwaway PostgreSQL server for tests: the `pgserver` wheel (PostgreSQL binaries on PyPI), run from a
temporary directory over a Unix socket (no TCP port, no system PostgreSQL, no root needed; run as root,
pgserver starts PostgreSQL as a `pgserver` user it creates).

`missing()` names what is not installed (the tests skip with that reason); `PgServer` starts a server
and hands out one fresh database per test."""

from __future__ import annotations

import importlib.util
import itertools
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

INSTALL = 'pip install pgserver "psycopg[binary]"'


def missing() -> str | None:
    """Why a PostgreSQL test cannot run here, or None when it can."""
    absent = [name for name in ("pgserver", "psycopg") if importlib.util.find_spec(name) is None]
    if absent:
        return f"PostgreSQL tests need {' and '.join(absent)} ({INSTALL}; `make install` does it)"
    return None


class PgServer:
    """One PostgreSQL server in a new temporary directory; `new_database()` gives each test its own database."""

    def __init__(self) -> None:
        # Not under pytest's basetemp: run as root, pgserver opens every parent directory of its data
        # directory to the unprivileged user it starts PostgreSQL as.
        self.root = Path(tempfile.mkdtemp(prefix="tilefuse-pg-"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset (CI)
            import pgserver

        import sqlalchemy as sa

        try:
            self._server = pgserver.get_server(self.root / "pgdata", cleanup_mode="delete")
        except BaseException:  # pgserver has logged the server's log
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self._counter = itertools.count()
        self._admin = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with self._admin.connect() as conn:
            # a throwaway server: durability only costs time on a shared CI disk
            for setting in ("fsync = off", "synchronous_commit = off", "full_page_writes = off"):
                conn.exec_driver_sql(f"ALTER SYSTEM SET {setting}")
            conn.exec_driver_sql("SELECT pg_reload_conf()")

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database` on this server (psycopg 3, SQLAlchemy 2.1's default driver)."""
        return str(self._server.get_uri(database))

    def new_database(self) -> str:
        """Create an empty database; returns its URL."""
        name = f"tilefuse_test_{next(self._counter)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, sql: str, url: str | None = None, **params: Any) -> list[Any]:
        """Run one statement in autocommit mode as the superuser, in the database at `url` (default: the
        maintenance database); returns its rows, if any."""
        import sqlalchemy as sa

        engine = self._admin if url is None else sa.create_engine(url, isolation_level="AUTOCOMMIT",
                                                                  poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            result = conn.execute(sa.text(sql), params)
            return list(result.all()) if result.returns_rows else []

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        self._admin.dispose()
        self._server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)
