"""Close under concurrency: two closes at once finalize once (gapless numbers); a batch committing
during a close lands on the invoice or as late usage, never nowhere; the close waits for the queue."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from billing import invoices
from billing.db import connect
from billing.ingest import ingest_batch
from billing.invoices import CloseRefused, CloseResult
from billing.settings import Settings
from producer.jobspec import INGEST_FUNC
from tests.integration.invoices_util import add_rate, ev, ingest
from worker.invoicing import close, ingest_backlog

JAN = date(2026, 1, 1)


def _usage_total(conn: psycopg.Connection[Any], month: date) -> Decimal:
    row = conn.execute("SELECT coalesce(sum(quantity), 0) FROM invoice_usage WHERE billing_month = %s", (month,))
    return Decimal(row.fetchone()[0])  # type: ignore[index]


@pytest.mark.parametrize("closers", [2, 4])
def test_concurrent_closes_finalize_once(conn: psycopg.Connection[Any], settings: Settings, closers: int) -> None:
    add_rate(conn, price_in="1", price_out="2")
    ingest(settings, [ev(f"e{i}", "2026-01-10T00:00:00Z", org_id=f"org{i:02d}", input_tokens=1000) for i in range(12)])
    barrier = threading.Barrier(closers)
    results: list[CloseResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with connect(settings) as c:
                barrier.wait()
                results.append(invoices.close_month(c, JAN))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(closers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(r.already_closed for r in results) == [False] + [True] * (closers - 1)
    numbers = [r[0] for r in conn.execute("SELECT number FROM invoices ORDER BY number").fetchall()]
    assert numbers == list(range(1, 13))  # gapless, once
    assert conn.execute("SELECT last_number FROM invoice_counter").fetchone() == (12,)
    # a later month continues the series
    ingest(settings, [ev("m1", "2026-02-10T00:00:00Z", input_tokens=1000)])
    with connect(settings) as c:
        assert invoices.close_month(c, date(2026, 2, 1)).first_number == 13


def test_batch_committing_during_close_lands_on_the_invoice(conn: psycopg.Connection[Any], settings: Settings) -> None:
    add_rate(conn, price_in="1", price_out="2")
    ingest(settings, [ev("a1", "2026-01-10T00:00:00Z", input_tokens=1000)])
    # an ingest transaction in flight: the real ingest path inside an outer transaction kept open
    inflight = connect(settings)
    inflight.execute("BEGIN")
    ingest_batch(inflight, [json.dumps(ev("a2", "2026-01-11T00:00:00Z", input_tokens=500))], settings=settings)
    done: list[CloseResult] = []

    def run_close() -> None:
        with connect(settings) as c:
            done.append(invoices.close_month(c, JAN))

    closer = threading.Thread(target=run_close)
    closer.start()
    time.sleep(1.0)
    assert closer.is_alive(), "the close must wait for the ingest holding the month row"
    inflight.execute("COMMIT")
    inflight.close()
    closer.join(30)
    assert done and done[0].invoices == 1
    snap = conn.execute("SELECT snapshot FROM invoices WHERE org_id = 'acme'").fetchone()
    assert snap is not None
    assert json.loads(snap[0])["lines"][0]["quantity"] == 1500  # both batches on the invoice

    # a batch that starts after the close: late usage on February, never nowhere
    ingest(settings, [ev("a3", "2026-01-12T00:00:00Z", input_tokens=250)])
    feb = conn.execute(
        "SELECT usage_month, quantity FROM invoice_usage WHERE billing_month = '2026-02-01' AND category = 'input'"
    ).fetchall()
    assert feb == [(JAN, Decimal(250))]
    assert _usage_total(conn, JAN) == 1500


def test_ingest_waiting_on_a_close_becomes_late_usage(conn: psycopg.Connection[Any], settings: Settings) -> None:
    add_rate(conn, price_in="1", price_out="2")
    ingest(settings, [ev("a1", "2026-01-10T00:00:00Z", input_tokens=1000)])
    closing = connect(settings)
    closing.execute("BEGIN")
    closing.execute("UPDATE billing_months SET status = 'closed', closed_at = now() WHERE month = %s", (JAN,))
    landed: list[int] = []
    worker = threading.Thread(
        target=lambda: landed.append(ingest(settings, [ev("a2", "2026-01-11T00:00:00Z", input_tokens=7)]).inserted)
    )
    worker.start()
    time.sleep(1.0)
    assert worker.is_alive(), "the ingest must wait for the close holding the month row"
    closing.execute("COMMIT")
    closing.close()
    worker.join(30)
    assert landed == [1]
    row = conn.execute("SELECT billing_month, usage_month FROM events WHERE event_id = 'a2'").fetchone()
    assert row == (date(2026, 2, 1), JAN)


def _old_ingest_job(rconn: redis.Redis, queue: str, enqueued_at: datetime) -> str:
    job = Queue(queue, connection=rconn, serializer=JSONSerializer).enqueue(INGEST_FUNC, [])
    job.enqueued_at = enqueued_at
    job.save()
    return str(job.id)


def test_close_refuses_while_old_ingest_jobs_are_queued(
    conn: psycopg.Connection[Any], settings: Settings, rconn: redis.Redis
) -> None:
    add_rate(conn, price_in="1", price_out="2")
    ingest(settings, [ev("a1", "2026-01-10T00:00:00Z", input_tokens=1000)])
    cutoff = datetime(2026, 2, 2, tzinfo=UTC)  # end of January + 24 h
    queue = Queue(settings.queue, connection=rconn, serializer=JSONSerializer)
    queue.enqueue("worker.scheduler.close_due_months")  # not an ingest job: ignored
    _old_ingest_job(rconn, settings.queue, datetime(2026, 3, 1, tzinfo=UTC))  # after the cutoff: ignored
    assert ingest_backlog(rconn, [settings.queue], cutoff).jobs == 0
    job_id = _old_ingest_job(rconn, settings.queue, datetime(2026, 1, 31, 23, 0, tzinfo=UTC))
    backlog = ingest_backlog(rconn, [settings.queue], cutoff)
    assert backlog.jobs == 1 and backlog.oldest == datetime(2026, 1, 31, 23, 0, tzinfo=UTC)

    with pytest.raises(CloseRefused, match="1 ingest job"):
        close(settings, JAN)
    assert conn.execute("SELECT status FROM billing_months WHERE month = %s", (JAN,)).fetchone() == ("open",)

    queue.remove(job_id)  # drained
    assert close(settings, JAN).invoices == 1
    assert close(settings, JAN).already_closed


def test_forced_close_skips_the_backlog_check(
    conn: psycopg.Connection[Any], settings: Settings, rconn: redis.Redis
) -> None:
    ingest(settings, [ev("a1", "2026-01-10T00:00:00Z", input_tokens=1000)])
    _old_ingest_job(rconn, settings.queue, datetime(2026, 1, 5, tzinfo=UTC))
    with pytest.raises(CloseRefused):
        close(settings, JAN)
    assert not close(settings, JAN, force=True).already_closed


def test_backlog_counts_jobs_awaiting_a_retry(rconn: redis.Redis, settings: Settings) -> None:
    queue = Queue(settings.queue, connection=rconn, serializer=JSONSerializer)
    job_id = _old_ingest_job(rconn, settings.queue, datetime(2026, 1, 31, tzinfo=UTC))
    job = queue.fetch_job(job_id)
    assert job is not None
    queue.remove(job_id)
    queue.schedule_job(job, datetime(2030, 1, 1, tzinfo=UTC))  # as rq's Retry parks a failed attempt
    assert queue.count == 0
    assert ingest_backlog(rconn, [settings.queue], datetime(2026, 2, 2, tzinfo=UTC)).jobs == 1
