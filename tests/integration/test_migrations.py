"""Migrations: applied in order, recorded with a checksum, idempotent, and a changed file is refused."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from billing import migrate
from billing.db import CONNECT_OPTIONS
from billing.errors import MigrationError, MigrationsPending
from tests.conftest import ADMIN_URL, _url_with_db


@pytest.fixture
def empty_db(pg_template: str) -> Iterator[str]:
    """A database with nothing in it (not cloned from the migrated template)."""
    name = f"usagebill_test_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield _url_with_db(ADMIN_URL, name)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def schema_of(url: str) -> str:
    """The schema as pg_dump prints it, minus the migration bookkeeping rows and comments."""
    out = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "--no-privileges", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return "\n".join(
        line for line in out.splitlines() if line and not line.startswith("--") and not line.startswith("\\")
    )


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, options=CONNECT_OPTIONS)


def test_step_by_step_reaches_the_same_schema_as_one_run(empty_db: str, database_url: str) -> None:
    with connect(empty_db) as conn:
        for mig in migrate.available():
            applied = migrate.migrate(conn, target=mig.version)
            assert [m.version for m in applied] == [mig.version]
            migrate.require_current(conn) if mig is migrate.available()[-1] else None
    # database_url was migrated in one run (the template)
    assert schema_of(empty_db) == schema_of(database_url)


def test_migrate_twice_is_a_no_op(conn: psycopg.Connection[Any]) -> None:
    before = conn.execute("SELECT version, checksum, applied_at FROM usagebill_migrations ORDER BY 1").fetchall()
    assert migrate.migrate(conn) == []
    after = conn.execute("SELECT version, checksum, applied_at FROM usagebill_migrations ORDER BY 1").fetchall()
    assert before == after
    assert [r[0] for r in before] == [m.version for m in migrate.available()]


def test_a_changed_applied_migration_is_refused_by_name(conn: psycopg.Connection[Any]) -> None:
    conn.execute("UPDATE usagebill_migrations SET checksum = 'x' WHERE version = 1")
    with pytest.raises(MigrationError, match=r"0001_foundation\.sql was changed"):
        migrate.migrate(conn)


def test_an_applied_migration_missing_from_disk_is_refused(conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO usagebill_migrations VALUES (9999, 'ghost', 'x')")
    with pytest.raises(MigrationError, match=r"9999_ghost\.sql is missing"):
        migrate.pending(conn)


def test_unmigrated_database_is_reported(empty_db: str) -> None:
    with connect(empty_db) as conn, pytest.raises(MigrationsPending, match="usagebill migrate"):
        migrate.require_current(conn)


def test_cli_migrate_twice_and_refusal(empty_db: str, cli_env: dict[str, str]) -> None:
    env = {**cli_env, "DATABASE_URL": empty_db}
    first = subprocess.run(["usagebill", "migrate"], check=False, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout == ""
    assert "applied 0001_foundation.sql" in first.stderr
    second = subprocess.run(["usagebill", "migrate"], check=False, env=env, capture_output=True, text=True)
    assert second.returncode == 0
    assert "0 migration(s) applied" in second.stderr
    with connect(empty_db) as conn:
        conn.execute("UPDATE usagebill_migrations SET checksum = 'x' WHERE version = 1")
    third = subprocess.run(["usagebill", "migrate"], check=False, env=env, capture_output=True, text=True)
    assert third.returncode == 1
    assert third.stderr.count("\n") == 1 and "0001_foundation.sql" in third.stderr
    assert "Traceback" not in third.stderr


def test_the_aggregates_updated_in_place_leave_room_on_their_pages(conn: psycopg.Connection[Any]) -> None:
    # 0012: room for HOT updates of the lines every ingest transaction updates
    rows = conn.execute(
        "SELECT relname, reloptions FROM pg_class WHERE relname IN ('invoice_usage', 'usage_org_month')"
    ).fetchall()
    assert dict(rows) == {"invoice_usage": ["fillfactor=50"], "usage_org_month": ["fillfactor=50"]}
