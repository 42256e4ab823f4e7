"""Schema migrations: numbered plain-SQL files applied in order, recorded with a checksum."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from billing.errors import MigrationError, MigrationsPending

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: one migrator at a time per database (cluster-wide advisory lock key)
_LOCK_KEY = 0x75736167  # "usag"

_TABLE = """
CREATE TABLE IF NOT EXISTS usagebill_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """The migration files shipped in sql/migrations, in order."""
    found: list[Migration] = []
    for entry in resources.files("sql").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
        elif entry.name.endswith(".sql"):
            raise MigrationError(f"migration file name {entry.name!r} is not NNNN_name.sql")
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


def applied(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str]]:
    """version -> (name, checksum) of the applied migrations; empty when none."""
    exists = conn.execute("SELECT to_regclass('usagebill_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT version, name, checksum FROM usagebill_migrations ORDER BY version").fetchall()
    return {int(v): (str(n), str(c)) for v, n, c in rows}


def _check_applied(files: list[Migration], done: dict[int, tuple[str, str]]) -> None:
    by_version = {m.version: m for m in files}
    for version, (name, checksum) in done.items():
        mig = by_version.get(version)
        if mig is None:
            raise MigrationError(f"applied migration {version:04d}_{name}.sql is missing from sql/migrations")
        if mig.checksum != checksum:
            raise MigrationError(
                f"migration {mig.filename} was changed after it was applied (checksum differs); "
                "add a new migration instead of editing an applied one"
            )


def pending(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Migrations not yet applied; raises when an applied one was changed or removed."""
    files = available()
    done = applied(conn)
    _check_applied(files, done)
    return [m for m in files if m.version not in done]


def migrate(conn: psycopg.Connection[Any], *, target: int | None = None) -> list[Migration]:
    """Apply the pending migrations (up to `target`), each in its own transaction. Idempotent."""
    if not conn.autocommit:
        raise MigrationError("migrate needs an autocommit connection (each migration is its own transaction)")
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        conn.execute(_TABLE)
        todo = [m for m in pending(conn) if target is None or m.version <= target]
        for mig in todo:
            try:
                with conn.transaction():
                    conn.execute(mig.sql)  # a trusted file of ours
                    conn.execute(
                        "INSERT INTO usagebill_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (mig.version, mig.name, mig.checksum),
                    )
            except psycopg.Error as exc:
                raise MigrationError(f"migration {mig.filename} failed: {exc}") from exc
        return todo
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def require_current(conn: psycopg.Connection[Any]) -> None:
    """Raise MigrationsPending unless every shipped migration is applied (checked at process start)."""
    todo = pending(conn)
    if todo:
        raise MigrationsPending(
            f"the database lacks {len(todo)} migration(s) (first: {todo[0].filename}); run `usagebill migrate`"
        )
