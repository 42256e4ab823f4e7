"""`usagebill reconcile`: clean after real ingestion and a close; any tampering is reported (exit 3)."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
import redis

from billing import quotas
from billing.db import connect
from billing.ingest import ingest_batch
from billing.invoices import close_month
from billing.reconcile import reconcile
from billing.settings import Settings


def ev(i: int, org: str, when: str, model: str = "gpt-4o", **usage: int) -> str:
    u = {
        "input_tokens": 1000,
        "cached_input_tokens": 200,
        "cache_write_tokens": 0,
        "output_tokens": 300,
        "reasoning_tokens": 100,
    }
    u.update(usage)
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": f"{org}-{i}",
            "occurred_at": when,
            "org_id": org,
            "user_id": f"u{i % 3}",
            "provider": "openai",
            "model": model,
            "usage": u,
        }
    )


def load(conn: psycopg.Connection[Any], settings: Settings, rconn: redis.Redis) -> None:
    conn.execute(
        "INSERT INTO rates (provider, model, effective_from, currency, price_input, price_cached_input, "
        "price_output, price_reasoning, source) "
        "VALUES ('openai', 'gpt-4o', '2026-01-01', 'USD', 2.5, 1.25, 10, 12, 't')"
    )
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    batch = [
        ev(1000 * k + i, org, when)
        for i in range(20)
        for org in ("a", "b")
        for k, when in enumerate(("2026-09-30T23:59:59Z", "2026-10-01T00:00:00Z", now))
    ]
    batch += [ev(100 + i, "a", now, model="mystery-model") for i in range(3)]  # unpriced
    with connect(settings) as db:
        quotas.set_quota(db, org_id="a", kind="tokens", limit=Decimal(10**9), mode="hard", redis_client=rconn)
        db.commit()
        result = ingest_batch(db, batch, settings=settings)
        quotas.refresh_mirror(db, rconn, result.org_months)
        db.commit()


def run_cli(cli_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["usagebill", "reconcile", *args], check=False, capture_output=True, text=True, env=cli_env, timeout=120
    )


def test_clean_after_ingest_and_close_then_tampering_is_caught(
    conn: psycopg.Connection[Any], settings: Settings, rconn: redis.Redis, cli_env: dict[str, str]
) -> None:
    load(conn, settings, rconn)
    with connect(settings) as db:
        close_month(db, date(2026, 9, 1))
    # late usage for the closed month lands on a later invoice: still clean
    with connect(settings) as db:
        ingest_batch(db, [ev(500, "a", "2026-09-15T00:00:00Z")], settings=settings)
    with connect(settings) as db:
        report = reconcile(db, rconn)
    assert report.clean, report.drifts
    out = run_cli(cli_env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("reconcile: clean")

    conn.execute(
        "UPDATE usage_daily SET cost = cost + 0.000001 WHERE org_id = 'b' AND day = '2026-10-01' AND user_id = 'u0'"
    )
    out = run_cli(cli_env, "--format", "json")
    assert out.returncode == 3
    drift = json.loads(out.stdout)["drift"]
    assert {(d["org_id"], d["month"], d["what"]) for d in drift} == {("b", "2026-10", "usage_daily.cost")}
    assert Decimal(drift[0]["found"]) - Decimal(drift[0]["expected"]) == Decimal("0.000001")

    out = run_cli(cli_env, "--month", "2026-09")
    assert out.returncode == 0, out.stdout  # the tampered month is not the one asked for


def test_org_month_aggregate_drift_is_caught(
    conn: psycopg.Connection[Any], settings: Settings, rconn: redis.Redis
) -> None:
    load(conn, settings, rconn)
    conn.execute(
        "UPDATE usage_org_month SET output_tokens = output_tokens + 7 WHERE org_id = 'a' AND month = '2026-10-01'"
    )
    with connect(settings) as db:
        drift = reconcile(db, rconn).drifts
    found = [(d.org_id, d.month, d.what) for d in drift if not d.what.startswith("mirror")]
    assert found == [("a", "2026-10", "usage_org_month.output_tokens")]
    assert Decimal(drift[0].found) - Decimal(drift[0].expected) == 7


def test_invoice_aggregate_drift_and_mirror_repair(
    conn: psycopg.Connection[Any], settings: Settings, rconn: redis.Redis, cli_env: dict[str, str]
) -> None:
    load(conn, settings, rconn)
    conn.execute(
        "UPDATE invoice_usage SET quantity = quantity - 1 WHERE org_id = 'a' AND category = 'reasoning' "
        "AND usage_month = '2026-10-01'"
    )
    with connect(settings) as db:
        drift = reconcile(db, rconn).drifts
    assert [(d.org_id, d.month, d.what) for d in drift] == [("a", "2026-10", "invoice_usage.reasoning.quantity")]
    conn.execute(
        "UPDATE invoice_usage SET quantity = quantity + 1 WHERE org_id = 'a' AND category = 'reasoning' "
        "AND usage_month = '2026-10-01'"
    )

    rconn.flushdb()  # the mirror is gone (e.g. a Redis restart without persistence)
    out = run_cli(cli_env)
    assert out.returncode == 3 and "mirror" in out.stdout
    out = run_cli(cli_env, "--repair-mirror")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rebuilt" in out.stderr
    assert run_cli(cli_env).returncode == 0
