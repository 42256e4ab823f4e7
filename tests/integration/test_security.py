"""Tenant isolation by row-level security, least-privilege roles, and no credentials in messages."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from billing.db import CONNECT_OPTIONS, connect
from billing.ingest import ingest_batch
from billing.settings import Settings
from tests.conftest import ADMIN_URL


def event(i: int, org: str) -> str:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": f"{org}-{i}",
            "occurred_at": "2026-10-15T12:00:00Z",
            "org_id": org,
            "user_id": f"{org}-user",
            "provider": "openai",
            "model": "gpt-4o",
            "usage": {
                "input_tokens": 100,
                "cached_input_tokens": 0,
                "cache_write_tokens": 0,
                "output_tokens": 10,
                "reasoning_tokens": 0,
            },
        }
    )


@pytest.fixture
def login_roles(database_url: str) -> Iterator[list[str]]:
    """Throwaway LOGIN roles (cluster-wide), dropped after the test."""
    made: list[str] = []

    def make(group: str) -> str:
        name = f"ub_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE ROLE "{name}" LOGIN IN ROLE {group}')
        made.append(name)
        return name

    yield make  # type: ignore[misc]
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        for name in made:
            admin.execute(f'DROP ROLE IF EXISTS "{name}"')


def as_role(database_url: str, role: str) -> psycopg.Connection[Any]:
    url = database_url.replace("postgres@", f"{role}@", 1)
    return psycopg.connect(url, autocommit=True, options=CONNECT_OPTIONS)


def test_a_reader_of_org_a_sees_nothing_of_org_b(
    settings: Settings, database_url: str, login_roles: Any, conn: psycopg.Connection[Any]
) -> None:
    conn.execute(
        "INSERT INTO rates (provider, model, effective_from, currency, price_input, price_output, source) "
        "VALUES ('openai', 'gpt-4o', '2026-01-01', 'USD', 2.5, 10, 'test')"
    )
    with connect(settings) as db:
        ingest_batch(
            db, [event(i, "org-a") for i in range(3)] + [event(i, "org-b") for i in range(5)], settings=settings
        )
    reader_a, reader_b = login_roles("usagebill_reader"), login_roles("usagebill_reader")
    conn.execute(
        "INSERT INTO org_readers (role_name, org_id) VALUES (%s, 'org-a'), (%s, 'org-b')", (reader_a, reader_b)
    )
    conn.execute(
        "INSERT INTO quotas (org_id, kind, quota_limit, mode) VALUES ('org-a', 'tokens', 1000, 'hard'), "
        "('org-b', 'tokens', 1000, 'hard')"
    )
    with as_role(database_url, reader_a) as ra:
        assert ra.execute("SELECT usagebill_reader_org()").fetchone() == ("org-a",)
        for table in (
            "events",
            "usage_daily",
            "invoice_usage",
            "orgs",
            "usage_monthly",
            "quota_status",
            "quota_usage_monthly",
            "quotas",
        ):
            orgs = {r[0] for r in ra.execute(f"SELECT org_id FROM {table}")}
            assert orgs == {"org-a"}, table
        assert ra.execute("SELECT count(*) FROM events").fetchone() == (3,)
        # a reader cannot widen its view: no mapping table, no writes, no other role
        for forbidden in (
            "SELECT * FROM org_readers",
            "INSERT INTO org_readers VALUES ('x', 'org-b')",
            "DELETE FROM events",
            "UPDATE usage_daily SET events = 0",
            f'SET ROLE "{reader_b}"',
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                ra.execute(forbidden)
    with as_role(database_url, reader_b) as rb:
        assert rb.execute("SELECT count(*), sum(input_tokens) FROM events").fetchone() == (5, 500)


def test_an_unmapped_reader_sees_nothing(settings: Settings, database_url: str, login_roles: Any) -> None:
    with connect(settings) as db:
        ingest_batch(db, [event(0, "org-a")], settings=settings)
    lonely = login_roles("usagebill_reader")
    with as_role(database_url, lonely) as r:
        assert r.execute("SELECT count(*) FROM events").fetchone() == (0,)
        assert r.execute("SELECT count(*) FROM usage_daily").fetchone() == (0,)


def test_the_worker_role_ingests_but_cannot_rewrite_history(
    settings: Settings, database_url: str, login_roles: Any, conn: psycopg.Connection[Any]
) -> None:
    worker = login_roles("usagebill_worker")
    worker_settings = settings.model_copy(update={"database_url": database_url.replace("postgres@", f"{worker}@")})
    with connect(worker_settings) as db:
        result = ingest_batch(db, [event(i, "org-a") for i in range(4)] + ["{bad"], settings=worker_settings)
    assert (result.inserted, result.rejected) == (4, 1)
    assert conn.execute("SELECT sum(events) FROM usage_daily").fetchone() == (4,)
    with as_role(database_url, worker) as w:
        for forbidden in (
            "DELETE FROM events",
            "DELETE FROM event_keys",
            "UPDATE invoices SET total = 0",
            "DELETE FROM invoice_lines",
            "DROP TABLE events",
            "SELECT * FROM org_readers",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                w.execute(forbidden)


def test_roles_survive_a_second_database_migrating(conn: psycopg.Connection[Any]) -> None:
    # the template and this clone both ran 0006 against roles that already existed: still one of each
    rows = conn.execute(
        "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN ('usagebill_worker', 'usagebill_reader') ORDER BY 1"
    ).fetchall()
    assert rows == [("usagebill_reader", False), ("usagebill_worker", False)]
