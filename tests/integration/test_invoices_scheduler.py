"""The scheduler: rq's CronScheduler with the periodic jobs registered, enqueued as JSON jobs that a
worker runs; the month-close job closes every month whose grace period is over, once."""

from __future__ import annotations

import signal
import subprocess
import time
import zlib
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest
import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from billing.settings import Settings
from tests.integration.invoices_util import add_rate, ev, ingest
from worker import scheduler
from worker.invoicing import close_due


def test_periodic_jobs_register_and_missing_ones_are_skipped(rconn: redis.Redis) -> None:
    jobs = (
        scheduler.Periodic("worker.scheduler.close_due_months", cron="*/15 * * * *"),
        scheduler.Periodic("billing.no_such_module.job", interval=60),
        scheduler.Periodic("worker.scheduler.no_such_function", interval=60),
    )
    cron = scheduler.build(rconn, "usagebill", jobs)
    assert [j.func_name for j in cron.get_jobs()] == ["worker.scheduler.close_due_months"]
    assert all(isinstance(j, scheduler.JsonCronJob) for j in cron.get_jobs())
    # every registered default points at an importable function or is skipped, never a crash
    assert scheduler.build(rconn, "usagebill").get_jobs()


def test_close_job_runs_on_a_worker_and_closes_due_months(
    conn: psycopg.Connection[Any], settings: Settings, rconn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("USAGEBILL_QUEUE", settings.queue)
    add_rate(conn, price_in="1", price_out="2")
    ingest(
        settings,
        [
            ev("a1", "2026-01-10T00:00:00Z", input_tokens=1000),
            ev("a2", "2026-02-10T00:00:00Z", input_tokens=1000),
            ev("now", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), input_tokens=1000),
        ],
    )
    cron = scheduler.build(
        rconn, settings.queue, (scheduler.Periodic("worker.scheduler.close_due_months", interval=3600),)
    )
    enqueued = cron.enqueue_jobs()  # what the scheduler loop does when a job is due
    assert len(enqueued) == 1
    queue = Queue(settings.queue, connection=rconn, serializer=JSONSerializer)
    assert queue.count == 1
    job = queue.jobs[0]
    assert job.func_name == "worker.scheduler.close_due_months"
    raw = rconn.hget(job.key, "data")
    assert isinstance(raw, bytes)
    assert zlib.decompress(raw)[:1] == b"["  # rq stores the JSON serializer's list, zlib-compressed: not pickle

    worker = SimpleWorker([queue], connection=rconn, serializer=JSONSerializer)
    assert worker.work(burst=True)
    job.refresh()
    result = job.return_value()
    assert result[:2] == ["2026-01: closed, 1 invoice(s)", "2026-02: closed, 1 invoice(s)"]
    closed = conn.execute("SELECT month FROM billing_months WHERE status = 'closed' ORDER BY month").fetchall()
    assert (date(2026, 1, 1),) in closed and (date(2026, 2, 1),) in closed
    # the current month stays open (its grace period has not even started)
    assert conn.execute(
        "SELECT status FROM billing_months WHERE month = date_trunc('month', now())::date"
    ).fetchone() == ("open",)
    # idempotent: a second run closes nothing more and numbers nothing twice
    numbers = conn.execute("SELECT count(*), max(number) FROM invoices").fetchone()
    assert close_due(settings) == [] or all(r.invoices == 0 for r in close_due(settings))
    assert conn.execute("SELECT count(*), max(number) FROM invoices").fetchone() == numbers


def test_scheduler_command_runs_and_stops_on_sigterm(cli_env: dict[str, str], rconn: redis.Redis) -> None:
    proc = subprocess.Popen(["usagebill", "scheduler"], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        queue = Queue("usagebill", connection=rconn, serializer=JSONSerializer)
        deadline = time.monotonic() + 30
        while queue.count == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        # interval jobs (alert delivery) are enqueued at start; cron ones (close, reconcile) at their time
        assert "billing.alerts.deliver_pending" in {job.func_name for job in queue.jobs}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert out == b""  # logs go to standard error
    assert b"close_due_months" in err
