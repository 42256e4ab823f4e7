"""`usagebill quota ...` as a subprocess against the real services: set, show (table and JSON), failures."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis

from billing.ingest import ingest_batch
from billing.settings import Settings
from producer.quota import READY_KEY, QuotaClient, limits_key
from tests.integration.ingest_util import event, text


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "quota", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _one_line_error(out: subprocess.CompletedProcess[str], text_part: str) -> None:
    assert out.returncode == 1, out
    assert out.stdout == ""
    assert out.stderr.startswith("usagebill: error: ") and text_part in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_set_and_show(cli_env: dict[str, str], settings: Settings, rconn: redis.Redis) -> None:
    out = run(
        cli_env, "set", "--org", "acme", "--tokens", "10000", "--money", "2.50", "--hard", "--thresholds", "50,90"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    assert run(cli_env, "set", "--org", "acme", "--user", "bob", "--tokens", "3000").returncode == 0
    assert run(cli_env, "set", "--org", "other", "--tokens", "5").returncode == 0
    recent = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    with psycopg.connect(settings.database_url, options="-c TimeZone=UTC") as c:
        ingest_batch(c, [text(event("e1", org_id="acme", user_id="bob", occurred_at=recent))], settings=settings)
    shown = run(cli_env, "show", "--org", "acme", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    by_scope = {(r["user_id"], r["kind"]): r for r in rows}
    assert set(by_scope) == {(None, "tokens"), (None, "money"), ("bob", "tokens")}
    tokens = by_scope[(None, "tokens")]
    assert (tokens["used"], tokens["limit"], tokens["remaining"], tokens["percent"]) == (1200, 10000, 8800, 12.0)
    assert tokens["mode"] == "hard" and tokens["thresholds"] == [50, 90] and not tokens["exceeded"]
    money = by_scope[(None, "money")]
    # gpt-4o is unpriced here (no rate imported): 1000 input x 15 + 200 output x 75 per million = 0.03
    assert (money["used"], money["limit"], money["remaining"], money["currency"]) == ("0.03", "2.5", "2.47", "USD")
    assert money["percent"] == 1.2 and money["unpriced_tokens"] == 1200
    bob = by_scope[("bob", "tokens")]
    assert (bob["used"], bob["mode"], bob["percent"]) == (1200, "soft", 40.0)
    table = run(cli_env, "show")
    assert table.returncode == 0
    for part in ("acme", "other", "bob", "8,800", "2.47 USD", "40.00%"):
        assert part in table.stdout
    # set wrote the limits to the mirror at once; checks need the mirror marked whole (a rebuild)
    assert rconn.hget(limits_key("other"), "t") == b"S5"
    assert not rconn.exists(READY_KEY)
    assert run(cli_env, "rebuild-mirror").returncode == 0
    assert QuotaClient(rconn).check("other").remaining_tokens == 5


def test_failures_are_one_line(cli_env: dict[str, str], conn: psycopg.Connection[Any]) -> None:
    _one_line_error(run(cli_env, "set", "--org", "acme"), "--tokens")
    _one_line_error(run(cli_env, "set", "--org", "acme", "--money", "5", "--currency", "EUR"), "billed in USD")
    _one_line_error(run(cli_env, "set", "--org", "acme", "--tokens", "1.5"), "whole number")
    _one_line_error(run(cli_env, "set", "--org", "acme", "--tokens", "-3"), "positive")
    _one_line_error(run(cli_env, "set", "--org", "acme", "--tokens", "abc"), "decimal number")
    _one_line_error(run(cli_env, "set", "--org", "acme", "--tokens", "9", "--thresholds", "50,x"), "thresholds")
    _one_line_error(run(cli_env, "set", "--org", "acme", "--tokens", "9", "--webhook", "http://h/x"), "--secret")
    _one_line_error(run(cli_env, "show", "--format", "xml"), "unknown format")
    assert conn.execute("SELECT count(*) FROM quotas").fetchone() == (0,)
    empty = run(cli_env, "show", "--format", "json")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []


def test_set_with_redis_down_stores_the_quota_and_warns(cli_env: dict[str, str], conn: psycopg.Connection[Any]) -> None:
    env = {**cli_env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    out = run(env, "set", "--org", "acme", "--tokens", "100")
    assert out.returncode == 0
    assert "warning: Redis" in out.stderr and "rebuild-mirror" in out.stderr
    assert conn.execute("SELECT org_id, quota_limit FROM quotas").fetchall() == [("acme", 100)]
    _one_line_error(run(env, "rebuild-mirror"), "Redis unreachable")


def test_unmigrated_database_is_one_line(cli_env: dict[str, str], conn: psycopg.Connection[Any]) -> None:
    conn.execute("DELETE FROM usagebill_migrations WHERE version = 5")
    _one_line_error(run(cli_env, "show"), "usagebill migrate")
