"""The tuning database's layout and its versions: tables, migrations, and the check that opens one.

Schema (version 2)::

    meta(app, schema_version)                       one row; app = "tilefuse-tuning"
    workloads(key PK, family, description)          description = KernelSpec.describe() as JSON
    devices(key PK, arch, fingerprint)              key = Device.key, fingerprint as JSON
    records(key PK = Record.key, workload_key FK, device_key FK, config_key, config, status,
            samples, median, verified, max_error, error, compile_seconds, resources, toolchain,
            features, created, reference)           index (workload_key, device_key, config_key)

``median`` is the median of ``samples`` (raw seconds); ``reference`` holds the reference kernel's
timings interleaved with them (Measurement.reference), '[]' where the runner did not pair.
Version 0 (the first layout) had no ``records.features`` and no ``devices.arch`` column; version 1
had no ``records.reference``. Both are upgraded in place by ``MIGRATIONS``. A database with other
applications' tables and no ``meta`` table, or with a newer schema, raises DatabaseError; readers
neither create tables nor, when they may not write, migrate. The SQL is portable (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from ..errors import TilefuseError

__all__ = ["APP", "COEXISTING_TABLES", "MIGRATIONS", "SCHEMA_VERSION", "DatabaseError", "MissingDatabaseError",
           "SchemaMigrationNeeded", "devices_t", "meta_t", "metadata", "open_schema", "records_t", "workloads_t"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
APP = "tilefuse-tuning"
# Optuna's RDB storage may share the database (one URL for a whole sweep); its tables are not foreign.
COEXISTING_TABLES = frozenset({
    "alembic_version", "version_info", "studies", "study_directions", "study_user_attributes",
    "study_system_attributes", "trials", "trial_user_attributes", "trial_system_attributes", "trial_params",
    "trial_values", "trial_intermediate_values", "trial_heartbeats",
})


class DatabaseError(TilefuseError, RuntimeError):
    """A database that cannot be used: corrupt, foreign, newer schema or unreachable."""


class MissingDatabaseError(DatabaseError):
    """No database at a SQLite path opened for reading (TuningDB(..., create=False))."""


metadata = sa.MetaData()
meta_t = sa.Table("meta", metadata, sa.Column("app", sa.String(255), nullable=False),
                  sa.Column("schema_version", sa.Integer, nullable=False))
workloads_t = sa.Table("workloads", metadata, sa.Column("key", sa.String(255), primary_key=True),
                       sa.Column("family", sa.String(255), nullable=False),
                       sa.Column("description", sa.Text, nullable=False))
devices_t = sa.Table("devices", metadata, sa.Column("key", sa.String(255), primary_key=True),
                     sa.Column("arch", sa.String(255), nullable=False, index=True),
                     sa.Column("fingerprint", sa.Text, nullable=False))
records_t = sa.Table(
    "records", metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("workload_key", sa.String(255), sa.ForeignKey("workloads.key"), nullable=False),
    sa.Column("device_key", sa.String(255), sa.ForeignKey("devices.key"), nullable=False),
    sa.Column("config_key", sa.String(255), nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("status", sa.String(255), nullable=False),
    sa.Column("samples", sa.Text, nullable=False),
    sa.Column("median", sa.Float, nullable=True),  # set only for verified OK records: what `best` sorts by
    sa.Column("verified", sa.Boolean, nullable=False),
    sa.Column("max_error", sa.Float, nullable=True),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("compile_seconds", sa.Float, nullable=False),
    sa.Column("resources", sa.Text, nullable=False),
    sa.Column("toolchain", sa.Text, nullable=False),
    sa.Column("features", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("reference", sa.Text, nullable=False, server_default="[]"),
    sa.Index("ix_records_workload_device", "workload_key", "device_key", "config_key"),
)


# ------------------------------------------------------------------------------------ migrations

def _migrate_v0_to_v1(conn: Connection) -> None:
    """v0 -> v1: records gain `features`; devices gain `arch` (filled from the fingerprint JSON)."""
    conn.execute(sa.text("ALTER TABLE records ADD COLUMN features TEXT NOT NULL DEFAULT '{}'"))
    conn.execute(sa.text("ALTER TABLE devices ADD COLUMN arch TEXT NOT NULL DEFAULT ''"))
    rows = conn.execute(sa.text("SELECT key, fingerprint FROM devices")).all()
    for key, fp in rows:
        arch = str(json.loads(fp).get("arch", ""))
        conn.execute(sa.text("UPDATE devices SET arch = :arch WHERE key = :key"), {"arch": arch, "key": key})
    conn.execute(sa.text("CREATE INDEX IF NOT EXISTS ix_devices_arch ON devices (arch)"))


def _migrate_v1_to_v2(conn: Connection) -> None:
    """v1 -> v2: records gain `reference` (older records are unpaired: '[]')."""
    conn.execute(sa.text("ALTER TABLE records ADD COLUMN reference TEXT NOT NULL DEFAULT '[]'"))


# MIGRATIONS[v] upgrades a database at schema v to v + 1 inside the opening transaction.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {0: _migrate_v0_to_v1, 1: _migrate_v1_to_v2}


class SchemaMigrationNeeded(DatabaseError):
    """An older schema met by a reader that may not write (open_schema(..., migrate=False))."""


def open_schema(conn: Connection, where: str, *, create: bool = True, migrate: bool = True) -> None:
    """Check an existing database and migrate it to SCHEMA_VERSION; create the tables in an empty one.
    DatabaseError (naming `where`) for a foreign or newer database. Readers pass create=False (an empty
    database is MissingDatabaseError, and nothing is written) and, when they may not write, migrate=False
    (an older schema is SchemaMigrationNeeded). Runs inside the caller's transaction."""
    if conn.dialect.name == "postgresql" and create:  # serialise first-time creation across machines
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7426845)"))
    tables = set(sa.inspect(conn).get_table_names())
    if "meta" not in tables:
        foreign = sorted(tables - COEXISTING_TABLES)
        if foreign:
            raise DatabaseError(f"{where} is not a tilefuse tuning database: it has no 'meta' table and holds "
                                f"other tables ({', '.join(foreign[:8])}); "
                                "point --db/TILEFUSE_DB at a new or tilefuse-made database")
        if not create:
            raise MissingDatabaseError(f"no tuning database in {where}: it has no tables yet (nothing has been "
                                       "tuned into it; `tilefuse tune --db` or `tilefuse db import` makes one)")
        metadata.create_all(conn)
        conn.execute(meta_t.insert().values(app=APP, schema_version=SCHEMA_VERSION))
        return
    try:
        row = conn.execute(sa.select(meta_t.c.app, meta_t.c.schema_version)).first()
    except sa.exc.DBAPIError:
        row = None
    if row is None or row.app != APP:
        raise DatabaseError(f"{where} is not a tilefuse tuning database: its 'meta' table holds "
                            f"{tuple(row) if row else 'no tilefuse row'}")
    version = int(row.schema_version)
    if version > SCHEMA_VERSION:
        raise DatabaseError(f"{where} has tuning-database schema {version}, written by a newer tilefuse; "
                            f"this one reads schemas up to {SCHEMA_VERSION}: upgrade tilefuse")
    if version < SCHEMA_VERSION and not migrate:
        raise SchemaMigrationNeeded(f"{where} has schema {version}, which must be migrated to {SCHEMA_VERSION} "
                                    "by a tilefuse that may write it (run `tilefuse db show` as its owner)")
    while version < SCHEMA_VERSION:
        if version not in MIGRATIONS:
            raise DatabaseError(f"{where} has schema {version}, which has no migration to {SCHEMA_VERSION}")
        logger.info("migrating %s from schema %d to %d", where, version, version + 1)
        MIGRATIONS[version](conn)
        version += 1
        conn.execute(meta_t.update().values(schema_version=version))
