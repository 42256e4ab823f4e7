"""`usagebill worker` as a process: bad configuration fails at start; burst reports and re-queues failed jobs."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from billing.settings import Settings
from producer import jobspec
from tests.conftest import ADMIN_URL
from tests.integration.ingest_util import assert_consistent, event, text

WORKER = [sys.executable, "-m", "worker.cli", "worker"]


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WORKER, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def _one_line_failure(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("usagebill: error:"), res.stderr
    for needle in needles:
        assert needle in last, last


@pytest.fixture
def empty_db_url() -> Iterator[str]:
    name = f"usagebill_test_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_bad_configuration_fails_at_start(cli_env: dict[str, str], empty_db_url: str) -> None:
    res = _run("--burst", env=dict(cli_env, DATABASE_URL="postgresql://postgres:secret@127.0.0.1:1/nope"))
    _one_line_failure(res, "database unreachable")
    assert "secret" not in res.stderr
    _one_line_failure(_run("--burst", env=dict(cli_env, REDIS_URL="redis://127.0.0.1:1/0")), "Redis unreachable")
    _one_line_failure(_run("--burst", env=dict(cli_env, USAGEBILL_BATCH_SIZE="0")), "USAGEBILL_BATCH_SIZE")
    _one_line_failure(_run("--burst", env=dict(cli_env, DATABASE_URL=empty_db_url)), "usagebill migrate")


def test_burst_reports_failed_jobs_and_requeue_failed(
    settings: Settings, rconn: redis.Redis, conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    docs = [event(f"q{i}") for i in range(8)]
    conn.execute("ALTER TABLE usage_daily RENAME TO usage_daily_away")
    q = Queue(settings.queue, connection=rconn, serializer=JSONSerializer)
    q.enqueue_call(func=jobspec.INGEST_FUNC, args=([text(d) for d in docs],), failure_ttl=jobspec.FAILURE_TTL)
    res = _run("--burst", env=cli_env)
    assert res.returncode == 0 and res.stdout == ""
    assert "1 failed job(s)" in res.stderr
    # the start-up warm-up met the missing table too: a warning, the jobs still ran (and failed, kept)
    assert "warming the ingest connections failed" in res.stderr
    conn.execute("ALTER TABLE usage_daily_away RENAME TO usage_daily")
    res = _run("--requeue-failed", env=cli_env)
    assert res.returncode == 0 and "re-queued 1 failed job(s)" in res.stderr
    res = _run("--burst", env=cli_env)
    assert res.returncode == 0 and "failed job" not in res.stderr
    assert_consistent(conn, docs)
